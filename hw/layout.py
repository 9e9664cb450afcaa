"""Memory images: how tensors are laid out in the accelerator's on-chip memories.

The formats are the ones `systolic.hw.isa` documents; these numpy functions are the only code
that produces or reads them, for the compiler and the testbenches alike.
"""

import numpy as np

from .isa import pack_params

__all__ = [
    "conv_weight_words", "fc_rows_weight_words", "linear_as_conv", "linear_weight_words",
    "pack_activations",
    "pack_params", "unpack_activations",
]


def _words_from_lanes(lanes):
    """``(n, cols)`` int8 lanes to a list of ``n`` integers (lane 0 in the low byte)."""
    b = np.ascontiguousarray(lanes.astype(np.int8)).view(np.uint8)
    return [int.from_bytes(row.tobytes(), "little") for row in b]


def _lanes_from_words(words, cols):
    raw = b"".join(int(w).to_bytes(cols, "little") for w in words)
    return np.frombuffer(raw, np.int8).reshape(len(words), cols)


def pack_activations(cfg, x):
    """Words for a ``(C, H, W)`` int8 tensor: pixel-major, ``ceil(C / cols)`` words a pixel."""
    c, h, w = x.shape
    cw = -(-c // cfg.cols)
    lanes = np.zeros((h, w, cw * cfg.cols), np.int8)
    lanes[:, :, :c] = np.asarray(x).transpose(1, 2, 0)
    return _words_from_lanes(lanes.reshape(h * w * cw, cfg.cols))


def unpack_activations(cfg, words, c, h, w):
    """The ``(C, H, W)`` int8 tensor stored in ``words`` (as written by `pack_activations`)."""
    cw = -(-c // cfg.cols)
    lanes = _lanes_from_words(words, cfg.cols).reshape(h, w, cw * cfg.cols)
    return lanes[:, :, :c].transpose(2, 0, 1).copy()


def conv_weight_words(cfg, wq, walk_kh=None):
    """Weight words for ``(Cout, Cin, kh, kw)`` int8 weights, in the engine's reading order.

    ``walk_kh`` (at least ``kh``): kernel rows the engine walks, those past the kernel's
    weighing 0 (`systolic.hw.isa.pad_walk`)."""
    return _words_from_lanes(_conv_weight_lanes(cfg, wq, walk_kh))


def _conv_weight_lanes(cfg, wq, walk_kh=None):
    """`conv_weight_words` as ``(words, cols)`` int8 lanes."""
    co, ci, kh, kw = wq.shape
    cw, cot = -(-ci // cfg.cols), -(-co // cfg.cols)
    rows = walk_kh or kh
    full = np.zeros((cot * cfg.cols, cw * cfg.cols, rows, kw), np.int8)
    full[:co, :ci, :kh] = wq
    # Tile t, then (ky, kx, cw, lane), then the tile's output channels across the word.
    k = full.reshape(cot, cfg.cols, cw * cfg.cols, rows, kw).transpose(0, 3, 4, 2, 1)
    return k.reshape(-1, cfg.cols)


def linear_weight_words(cfg, w, in_shape, walk_kh=None):
    """Weight words of a fully connected layer's ``(Cout, C*H*W)`` weights (PyTorch's
    flattening order) for its input read as one pixel of all the ``(C, H, W)`` map's words in
    memory order (`systolic.hw.isa.describe_linear`): input word ``(y * W + x) * CW + cw``,
    lane ``l`` is channel ``cw * cols + l`` of pixel ``(y, x)``; padding lanes weigh 0."""
    return conv_weight_words(cfg, _linear_as_1x1(cfg, w, in_shape), walk_kh)


def _linear_as_1x1(cfg, w, in_shape):
    """A fully connected layer's weights as the 1x1 kernel of `linear_weight_words`."""
    co = w.shape[0]
    c, h, wd = in_shape
    cw = -(-c // cfg.cols)
    full = np.zeros((co, cw * cfg.cols, h, wd), np.int8)
    full[:, :c] = np.asarray(w).reshape(co, c, h, wd)
    return full.transpose(0, 2, 3, 1).reshape(co, h * wd * cw * cfg.cols, 1, 1)


def fc_rows_weight_words(cfg, w, in_shape):
    """A fully connected layer's weights for row-by-row runs (`systolic.hw.isa.describe_fc_rows`):
    a list of ``T = ceil(Cout / cols)`` lists of ``K + 2 * cols`` words (``K``: the input's
    words times ``cols``, the steps of `linear_weight_words`' tiles), one for each channel
    tile; the tiles run ``cfg.fc_rows`` at a time, tile ``t`` on row ``t % fc_rows`` from that
    row's bank of the weight memory.

    The first row of a run is fed as any layer's weights are, skewed by the array (column ``c``
    a step behind column ``c - 1``): its tile's words are as they are, then zero words. The
    other rows are fed unskewed, so their words come skewed: word ``a``, lane ``c`` holds the
    tile's weight of step ``a - c`` (0 where that is not a step): lane ``c`` reads its last
    step ``c`` words after lane 0. The walk's last ``cols`` steps read a word past the input
    (whatever is there) and weigh 0: lane ``c`` reads their weights up to ``2 * cols - 1``
    words after the tile's, all zero. ``w``, ``in_shape``: as `linear_weight_words`."""
    cols = cfg.cols
    tiles = -(-w.shape[0] // cols)
    lanes = _conv_weight_lanes(cfg, _linear_as_1x1(cfg, w, in_shape)).reshape(tiles, -1, cols)
    steps = lanes.shape[1]
    banks = np.zeros((tiles, steps + 2 * cols, cols), np.int8)
    for t in range(tiles):
        if t % cfg.fc_rows == 0:
            banks[t, :steps] = lanes[t]
        else:
            for c in range(cols):
                banks[t, c:c + steps, c] = lanes[t, :, c]
    return [_words_from_lanes(b) for b in banks]


def linear_as_conv(w, in_shape):
    """A fully connected layer's ``(Cout, C*H*W)`` weights as a conv kernel over ``(C, H, W)``."""
    return np.asarray(w).reshape(w.shape[0], *in_shape)
