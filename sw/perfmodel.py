"""Cycle-level performance model of the core: predicted cycles, MACs and PE utilization of each
layer, from the configuration and the layer descriptor alone.

The convolution engine (``hw/conv.py``) runs one output channel tile (``cols`` channels) at a
time. Within a tile, output pixels go in tiles of ``rows``; each pixel tile walks its reduction
in blocks ``(ky, kx, cw)``, and the array consumes one block in ``cols`` cycles (one input
channel a cycle) while the fill reads the next block's ``rows`` words, so the array is fed
every cycle::

    feed = pixel_tiles * kh * kw * cin_words * cols        (pixel_tiles = ceil(out_h*out_w / rows))

Around the feed, each channel tile spends a fixed overhead: filling the first block (``rows``
reads), the settle period that lets the last results drain through the array and the
requantizers (``rows * G + cols + Requantizer.LATENCY + 7``: a row takes ``G = cols /
rq_lanes`` cycles in the requantizer) and a few cycles of hand-over between the states::

    conv cycles = cout_tiles * (feed + rows + rows * G + cols + LATENCY + CONV_TILE)
                  + CONV_LAYER

The pooling engine streams the input map through at one word a cycle::

    pool cycles = in_h * in_w * cin_words + POOL_LAYER

``CONV_TILE``, ``CONV_LAYER`` and ``POOL_LAYER`` are the only fitted constants, measured on
the RTL (``cycles`` counter) of lenet-digits and lenet5 layers on 2x4, 8x8 and 12x12 arrays
(the coefficients of ``rows`` and ``cols`` were fitted too and match the structure above); the
model is exact on every layer measured (``tests/test_network_rtl.py`` checks it).
"""

from ..hw.isa import Op
from ..hw.requant import Requantizer

__all__ = ["CONV_LAYER", "CONV_TILE", "POOL_LAYER", "layer_macs", "predict_cycles",
           "utilization"]

CONV_TILE = 12      #: fitted: per channel tile, beyond the structural overhead
CONV_LAYER = 0      #: fitted: per convolution layer
POOL_LAYER = 8      #: fitted: per pooling layer


def predict_cycles(cfg, fields):
    """Predicted value of the core's ``cycles`` counter for one layer.

    Parameters
    ----------
    cfg : AcceleratorConfig
    fields : dict
        The layer descriptor fields (`systolic.hw.isa.describe_conv` / `describe_pool`).

    Returns
    -------
    int
    """
    R, C, G = cfg.rows, cfg.cols, cfg.rq_groups
    if fields["op"] == Op.CONV:
        pixel_tiles = -(-fields["out_h"] * fields["out_w"] // R)
        feed = pixel_tiles * fields["kh"] * fields["kw"] * fields["cin_words"] * C
        per_tile = feed + R + R * G + C + Requantizer.LATENCY + CONV_TILE
        return fields["cout_tiles"] * per_tile + CONV_LAYER
    return fields["in_h"] * fields["in_w"] * fields["cin_words"] + POOL_LAYER


def layer_macs(fields, cin, cout):
    """Useful multiply-accumulates of a convolution layer (``cin``, ``cout`` channels)."""
    if fields["op"] != Op.CONV:
        return 0
    return fields["out_h"] * fields["out_w"] * fields["kh"] * fields["kw"] * cin * cout


def utilization(cfg, macs, cycles):
    """Fraction of the array's multiplier-cycles that did useful work: ``macs / (cycles * PEs)``."""
    return macs / (cycles * cfg.pes) if cycles else 0.0
