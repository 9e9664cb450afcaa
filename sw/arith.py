"""The arithmetic contract (``docs/arithmetic.md``) in code: constants and integer layer operations.

Everything here is exact integer arithmetic in int64 numpy arrays with explicit range checks,
because numpy integer arithmetic wraps silently. The golden model, the compiler and the
hardware configuration import their constants from this module and nowhere else.

Tensors are ``(C, H, W)`` for one image, or ``(N, C, H, W)`` for a batch; linear layers take
``(K,)`` or ``(N, K)``.
"""

import numpy as np

from .errors import SystolicError

__all__ = [
    "ACC_BITS", "ACC_MAX", "ADD_SHIFT_SPREAD", "ACC_MIN", "AVG_DIV", "DATA_BITS", "INT8_MAX",
    "INT8_MIN", "M_BITS", "M_MAX", "POOL_KERNELS", "POOL_STRIDES", "SHIFT_BITS", "SHIFT_MAX",
    "SHIFT_MIN", "WEIGHT_MAX", "ContractError", "accumulator_bound",
    "avgpool2d", "check_layer_params", "choose_multiplier", "conv2d_acc", "linear_acc",
    "maxpool2d", "quantize_image", "requantize",
]

DATA_BITS = 8                   #: activations and weights are int8
INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127                #: weights are symmetric, in [-127, 127]
ACC_BITS = 32                   #: accumulator and bias width
ACC_MIN, ACC_MAX = -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1
M_BITS = 15                     #: requantization multiplier, unsigned
M_MAX = (1 << M_BITS) - 1
SHIFT_BITS = 6                  #: requantization shift field width
SHIFT_MIN, SHIFT_MAX = 1, 47    #: legal requantization shifts
PRODUCT_BITS = ACC_BITS + M_BITS + 1  #: acc * M plus the rounding constant: 48 bits signed

POOL_KERNELS = (2, 3)           #: square pooling windows
POOL_STRIDES = (1, 2, 3)
#: Average pooling's division in hardware: N -> (A_N, k_N), y = (S * A_N + 2^(k_N - 1)) >> k_N,
#: equal to round_half_up(S / N) for every |S| <= 9 * 128 (tests/test_arith.py checks them all).
AVG_DIV = {4: (1, 2), 9: (455, 12)}
#: A residual add's two shifts differ by at most this much (``docs/arithmetic.md``).
ADD_SHIFT_SPREAD = 16

CONV_KERNELS = range(1, 8)      #: convolution kernel sizes 1..7
CONV_STRIDES = (1, 2)


class ContractError(SystolicError, ValueError):
    """A tensor or parameter lies outside the arithmetic contract."""



def _as_int64(a, name):
    a = np.asarray(a)
    if a.dtype.kind not in "iub":
        raise ContractError(f"{name} must be an integer array, not {a.dtype}")
    return a.astype(np.int64)


def _check_range(a, lo, hi, name):
    if a.size and (a.min() < lo or a.max() > hi):
        raise ContractError(
            f"{name} must lie in [{lo}, {hi}], not [{int(a.min())}, {int(a.max())}]")


def quantize_image(pixels, p_max):
    """Map raw pixels in ``[0, p_max]`` to int8 ``round_half_up(127 * p / p_max)``.

    The input scale is exactly ``1 / 127``.
    """
    p = _as_int64(pixels, "pixels")
    _check_range(p, 0, p_max, "pixels")
    return ((127 * p + p_max // 2) // p_max).astype(np.int8)


def choose_multiplier(m):
    """Return ``(M, s)`` with ``M / 2**s ≈ m``: the largest ``s <= 47`` with ``M <= 32767``.

    ``m`` is a float or an array of floats (one per output channel). Raises `ContractError`
    when a multiplier is negative, not finite or too large to represent.
    """
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ContractError(f"requantization multipliers must be finite and >= 0, not {m!r}")
    M = np.zeros(m.shape, np.int64)
    s = np.full(m.shape, SHIFT_MAX, np.int64)
    for i, mi in enumerate(m):
        for shift in range(SHIFT_MAX, SHIFT_MIN - 1, -1):
            q = int(np.floor(mi * 2.0 ** shift + 0.5))
            if q <= M_MAX:
                M[i], s[i] = q, shift
                break
        else:
            raise ContractError(
                f"requantization multiplier {mi:.6g} must be below {M_MAX / 2 ** SHIFT_MIN}; "
                "the output scale is too small for this layer's inputs and weights")
    return M, s


def check_layer_params(w, b, M, s, *, layer="layer"):
    """Reject integer layer parameters outside the contract, naming the layer and channel.

    ``w`` has the output channel first; ``b``, ``M`` and ``s`` have one entry per output channel.
    """
    w = _as_int64(w, f"{layer}: weights")
    b = _as_int64(b, f"{layer}: bias")
    M = _as_int64(M, f"{layer}: multiplier")
    s = _as_int64(s, f"{layer}: shift")
    cout = w.shape[0]
    for name, a in (("bias", b), ("multiplier", M), ("shift", s)):
        if a.shape != (cout,):
            raise ContractError(f"{layer}: {name} must have shape ({cout},), not {a.shape}")
    _check_range(w, -WEIGHT_MAX, WEIGHT_MAX, f"{layer}: weights")
    _check_range(b, ACC_MIN, ACC_MAX, f"{layer}: bias")
    _check_range(M, 0, M_MAX, f"{layer}: multiplier M")
    _check_range(s, SHIFT_MIN, SHIFT_MAX, f"{layer}: shift s")
    bound = accumulator_bound(w, b)
    bad = np.flatnonzero(bound > ACC_MAX)
    if bad.size:
        c = int(bad[0])
        raise ContractError(
            f"{layer}: output channel {c} can overflow the {ACC_BITS}-bit accumulator "
            f"(|bias| + 128 * sum|w| = {int(bound[c])} > {ACC_MAX}); "
            "reduce the layer's fan-in or retrain with weight decay")


def accumulator_bound(w, b):
    """Worst-case ``|acc|`` per output channel: ``|b| + 128 * sum |w|``."""
    w = _as_int64(w, "weights")
    b = _as_int64(b, "bias")
    return np.abs(b) + 128 * np.abs(w.reshape(w.shape[0], -1)).sum(axis=1)


def _batch(x, ndim):
    x = _as_int64(x, "activations")
    single = x.ndim == ndim - 1
    return (x[None] if single else x), single


def conv2d_acc(x, w, b, *, stride=1, padding=0):
    """int32 accumulators of a convolution: ``(N, Cout, Ho, Wo)`` (or without ``N``).

    Exact: products and sums are formed in float64 only while every partial sum is an integer
    below 2^53 (guaranteed by the int32 bound, which is checked), so BLAS can be used.
    """
    x, single = _batch(x, 4)
    w = _as_int64(w, "weights")
    b = _as_int64(b, "bias")
    _check_range(x, INT8_MIN, INT8_MAX, "activations")
    n, cin, h, wd = x.shape
    cout, wcin, kh, kw = w.shape
    if wcin != cin:
        raise ContractError(f"weights expect {wcin} input channels, not {cin}")
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ContractError(
            f"a {kh}x{kw} kernel does not fit a {h}x{wd} input with padding {padding}")
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    win = win[:, :, ::stride, ::stride][:, :, :ho, :wo]          # N, Cin, Ho, Wo, kh, kw
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cin * kh * kw)
    acc = cols.astype(np.float64) @ w.reshape(cout, -1).T.astype(np.float64)
    acc = acc.astype(np.int64).reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)
    acc = acc + b[None, :, None, None]
    _check_range(acc, ACC_MIN, ACC_MAX, "accumulators")
    return acc[0] if single else acc


def linear_acc(x, w, b):
    """int32 accumulators of a fully connected layer: ``(N, Cout)`` or ``(Cout,)``."""
    x, single = _batch(x, 2)
    w = _as_int64(w, "weights")
    b = _as_int64(b, "bias")
    _check_range(x, INT8_MIN, INT8_MAX, "activations")
    if w.shape[1] != x.shape[1]:
        raise ContractError(f"weights expect {w.shape[1]} inputs, not {x.shape[1]}")
    acc = (x.astype(np.float64) @ w.T.astype(np.float64)).astype(np.int64) + b
    _check_range(acc, ACC_MIN, ACC_MAX, "accumulators")
    return acc[0] if single else acc


def requantize(acc, M, s, *, relu=False, axis=-3):
    """``clamp((acc * M + 2^(s-1)) >> s, -128, 127)``, then ``max(., 0)`` when ``relu``.

    ``M`` and ``s`` are per output channel, broadcast along ``axis`` of ``acc`` (the channel
    axis: -3 for ``(..., C, H, W)``, -1 for linear outputs).
    """
    acc = _as_int64(acc, "accumulators")
    M = _as_int64(M, "multiplier")
    s = _as_int64(s, "shift")
    _check_range(acc, ACC_MIN, ACC_MAX, "accumulators")
    _check_range(M, 0, M_MAX, "multiplier M")
    _check_range(s, SHIFT_MIN, SHIFT_MAX, "shift s")
    shape = [1] * acc.ndim
    shape[axis] = -1
    M = M.reshape(shape)
    s = s.reshape(shape)
    y = (acc * M + (np.int64(1) << (s - 1))) >> s     # |acc * M| < 2^46: no int64 overflow
    y = np.clip(y, 0 if relu else INT8_MIN, INT8_MAX)
    return y.astype(np.int8)


def _pool_windows(x, kernel, stride):
    if kernel not in POOL_KERNELS:
        raise ContractError(f"pooling window must be one of {POOL_KERNELS}, not {kernel!r}")
    if stride not in POOL_STRIDES:
        raise ContractError(f"pooling stride must be one of {POOL_STRIDES}, not {stride!r}")
    x = _as_int64(x, "activations")
    _check_range(x, INT8_MIN, INT8_MAX, "activations")
    h, w = x.shape[-2:]
    if h < kernel or w < kernel:
        raise ContractError(f"a {kernel}x{kernel} pooling window does not fit a {h}x{w} input")
    win = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(-2, -1))
    return win[..., ::stride, ::stride, :, :]


def maxpool2d(x, kernel, stride):
    """Exact int8 max pooling, no padding, floor mode."""
    return _pool_windows(x, kernel, stride).max(axis=(-2, -1)).astype(np.int8)


def avgpool2d(x, kernel, stride):
    """Average pooling rounding half up: ``floor((2*S + N) / (2*N))`` with ``N = kernel**2``."""
    total = _pool_windows(x, kernel, stride).sum(axis=(-2, -1))
    n = kernel * kernel
    return ((2 * total + n) // (2 * n)).astype(np.int8)
