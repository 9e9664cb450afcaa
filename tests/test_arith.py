"""The contract's integer primitives (sw/arith.py) against PyTorch and Python-int references.

Integer results are compared exactly, every element.
"""

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from systolic.sw import arith


def _rand_int8(rng, shape, lo=-128):
    return rng.integers(lo, 128, size=shape).astype(np.int8)


def _torch(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _exact(t):
    """A float64 tensor holding integers (< 2^53) as int64 numpy."""
    a = t.numpy()
    assert np.array_equal(a, np.round(a))
    return a.astype(np.int64)


@pytest.mark.parametrize(("kernel", "stride", "padding"),
                         list(itertools.product(range(1, 8), (1, 2), range(4))))
def test_conv2d_acc_matches_torch(kernel, stride, padding):
    rng = np.random.default_rng(kernel * 100 + stride * 10 + padding)
    for cin, cout in ((1, 8), (3, 1), (int(rng.integers(1, 65)), int(rng.integers(1, 65))),
                      (64, 64)):
        lo = max(kernel - 2 * padding, 1)
        h = int(rng.integers(lo, lo + 8)) | 1            # odd sizes
        w = int(rng.integers(lo, lo + 8)) | 1
        x = _rand_int8(rng, (2, cin, h, w))
        wt = _rand_int8(rng, (cout, cin, kernel, kernel), lo=-127)
        b = rng.integers(-(1 << 20), 1 << 20, size=cout).astype(np.int32)
        got = arith.conv2d_acc(x, wt, b, stride=stride, padding=padding)
        want = _exact(F.conv2d(_torch(x), _torch(wt), _torch(b), stride=stride, padding=padding))
        assert got.dtype == np.int64
        assert np.array_equal(got, want)


def test_conv2d_acc_single_image_and_rectangular_kernel():
    rng = np.random.default_rng(1)
    x = _rand_int8(rng, (5, 9, 7))
    wt = _rand_int8(rng, (16, 5, 3, 5), lo=-127)
    b = rng.integers(-1000, 1000, size=16).astype(np.int32)
    got = arith.conv2d_acc(x, wt, b, stride=2, padding=1)
    want = _exact(F.conv2d(_torch(x[None]), _torch(wt), _torch(b), stride=2, padding=1))[0]
    assert np.array_equal(got, want)


@pytest.mark.parametrize("seed", range(20))
def test_linear_acc_matches_torch(seed):
    rng = np.random.default_rng(seed)
    k, cout = int(rng.integers(1, 1025)), int(rng.integers(1, 129))
    x = _rand_int8(rng, (3, k))
    w = _rand_int8(rng, (cout, k), lo=-127)
    b = rng.integers(arith.ACC_MIN // 2, arith.ACC_MAX // 2, size=cout).astype(np.int32)
    want = _exact(F.linear(_torch(x), _torch(w), _torch(b)))
    assert np.array_equal(arith.linear_acc(x, w, b), want)


def _requantize_ref(acc, M, s, relu):
    y = min(max((acc * M + (1 << (s - 1))) >> s, -128), 127)
    return max(y, 0) if relu else y


@pytest.mark.parametrize("relu", [False, True])
def test_requantize_matches_python_ints(relu):
    rng = np.random.default_rng(2)
    n = 4000
    acc = rng.integers(arith.ACC_MIN, arith.ACC_MAX, size=n, endpoint=True)
    acc[:4] = [arith.ACC_MIN, arith.ACC_MAX, 0, -1]
    M = rng.integers(0, arith.M_MAX, size=n, endpoint=True)
    M[:4] = arith.M_MAX
    s = rng.integers(arith.SHIFT_MIN, arith.SHIFT_MAX, size=n, endpoint=True)
    s[:2] = [arith.SHIFT_MAX, arith.SHIFT_MIN]
    # Small accumulators with large shifts exercise rounding; these exercise every branch.
    acc[n // 2:] //= 1 << rng.integers(0, 31, size=n - n // 2)
    got = arith.requantize(acc, M, s, relu=relu, axis=0)
    want = [_requantize_ref(int(a), int(m), int(sh), relu) for a, m, sh in zip(acc, M, s)]
    assert got.dtype == np.int8
    assert np.array_equal(got, np.array(want, np.int8))


@pytest.mark.parametrize(("kernel", "stride"), list(itertools.product((2, 3), (1, 2, 3))))
def test_pooling_matches_torch(kernel, stride):
    rng = np.random.default_rng(kernel * 10 + stride)
    for c, h, w in ((1, kernel, kernel), (8, 9, 7), (64, 13, 11), (3, 28, 28)):
        x = _rand_int8(rng, (2, c, h, w))
        want_max = _exact(F.max_pool2d(_torch(x), kernel, stride))
        assert np.array_equal(arith.maxpool2d(x, kernel, stride), want_max)
        total = F.avg_pool2d(_torch(x), kernel, stride, divisor_override=1).to(torch.int64)
        n = kernel * kernel
        want_avg = torch.div(2 * total + n, 2 * n, rounding_mode="floor").numpy()
        assert np.array_equal(arith.avgpool2d(x, kernel, stride), want_avg)


@pytest.mark.parametrize("n", sorted(arith.AVG_DIV))
def test_avgpool_hardware_formula_exhaustive(n):
    total = np.arange(-128 * n, 127 * n + 1, dtype=np.int64)
    mult, shift = arith.AVG_DIV[n]
    hardware = (total * mult + (1 << (shift - 1))) >> shift
    rule = (2 * total + n) // (2 * n)
    assert np.array_equal(hardware, rule)
    assert rule.min() >= arith.INT8_MIN
    assert rule.max() <= arith.INT8_MAX


@pytest.mark.parametrize("p_max", [16, 255])
def test_quantize_image_exhaustive(p_max):
    p = np.arange(p_max + 1)
    want = [int(Fraction(127 * int(v), p_max) + Fraction(1, 2)) for v in p]   # floor, >= 0
    got = arith.quantize_image(p, p_max)
    assert got.dtype == np.int8
    assert np.array_equal(got, np.array(want, np.int8))


def test_choose_multiplier_picks_largest_shift():
    rng = np.random.default_rng(3)
    m = np.concatenate([10.0 ** rng.uniform(-12, 4, size=500), [0.0, 2.0 ** -40, 1.0, 16383.0]])
    M, s = arith.choose_multiplier(m)
    for mi, Mi, si in zip(m, M, s):
        assert Mi == int(np.floor(mi * 2.0 ** si + 0.5))
        assert 0 <= Mi <= arith.M_MAX
        assert arith.SHIFT_MIN <= si <= arith.SHIFT_MAX
        assert si == arith.SHIFT_MAX or np.floor(mi * 2.0 ** (si + 1) + 0.5) > arith.M_MAX


def test_choose_multiplier_rejects_large_multiplier():
    with pytest.raises(arith.ContractError, match=r"^requantization multiplier 20000 must be "
                                                  r"below 16383\.5; the output scale is too small"):
        arith.choose_multiplier([1.0, 20000.0])


def test_check_layer_params_rejects_accumulator_overflow():
    w = np.full((2, 64, 7, 7), 127, np.int8)         # 128 * 127 * 3136 fits; with bias it won't
    b = np.array([0, arith.ACC_MAX - 128 * 127 * 64 * 49 + 1], np.int64)
    ok = np.ones(2, np.int64)
    with pytest.raises(arith.ContractError,
                       match=r"^conv1: output channel 1 can overflow the 32-bit accumulator"):
        arith.check_layer_params(w, b, ok, ok, layer="conv1")


def test_check_layer_params_rejects_weight_minus_128():
    w = np.array([[-128, 5]], np.int8)
    with pytest.raises(arith.ContractError,
                       match=r"^fc: weights must lie in \[-127, 127\], not \[-128, 5\]$"):
        arith.check_layer_params(w, [0], [1], [1], layer="fc")
