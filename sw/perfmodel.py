"""Cycle-level performance model of the core: predicted cycles, MACs and PE utilization of each
layer, from the configuration and the layer descriptor alone.

The convolution engine (``hw/conv.py``) runs one output channel tile (``cols`` channels) at a
time. Within a tile, output pixels go in tiles of ``rows``; each pixel tile walks its reduction
in blocks ``(ky, kx, cw)``, and the array consumes one block in ``cols`` cycles (one input
channel a cycle) while the fill reads the next block's ``rows`` words, so the array is fed
every cycle. The output pixels of a batch's images are walked as one sequence, so a pixel
tile may hold the end of one image and the start of the next; and the channel tiles follow
one another as the pixel tiles do, the next tile's first pixel tile draining the previous
tile's last::

    feed = pixel_tiles * kh * kw * cin_words * cols          (a channel tile)
    pixel_tiles = ceil(batch * out_h * out_w / rows)

That holds while the two transposer banks each go round (`systolic.hw.conv.bank_cycles`:
the fill's ``rows`` reads, their landing, the feed's copy, the release's way back; a cycle
more with ``deep_pipeline``) in at most the ``2 * cols`` cycles the array takes for two
blocks: on every array of at least 4 columns (5 with ``deep_pipeline``) and no more rows. On
a narrower one (2x2, 3x3, a 4x4 with ``deep_pipeline`` ...) the fill cannot keep up, and
after the first block every second one waits ``stall = bank_cycles - 2 * cols`` cycles,
over all of a layer's ``B`` blocks (its channel tiles' too, since they follow without a
pause)::

    feed cycles = B * cols + stall * floor((B - 1) / 2)

Around the layer's feed is a fixed overhead: filling the first block (``rows`` reads, and
`systolic.hw.conv.fill_stages` registers before the memory), the
settle period that lets the last results drain through the array and the requantizers
(``rows * G + cols + Requantizer.LATENCY + P + 4 + S``: ``P`` is the PEs' capture,
`systolic.hw.pe.capture_cycles`; a row takes ``G = cols / rq_lanes``
cycles in the requantizer; ``S`` is `systolic.hw.conv.weight_stages`, the registers after
the weight memory's block RAMs, plus `systolic.hw.conv.weight_addr_stages`, those before
its address registers, plus `systolic.hw.conv.select_stages`, those of the drain's
selection of the sums, plus `systolic.hw.conv.write_stages`, those before the activation
memory's write port) and a few cycles of hand-over between the states and of the memories'
pipelines (the activation and weight memories are registered on both sides)::

    conv cycles = cout_tiles * feed + rows + rows * G + cols + LATENCY + P + S + F + CONV_LAYER
                  (+ fused_pool_stages with fused pooling, + dense_prep_cycles when dense)

(``F``: `systolic.hw.conv.fill_stages`.)

The pooling engine (``hw/pool.py``) streams the input map through at one word a cycle, then
drains its pipeline: the row window and the column window of four stages each and the
finishing stage of two (five, five and three with ``deep_pipeline``; two, two and one
without averaging: the small engine; five, five and one without averaging with
``deep_pipeline``), behind the scan's output register (`pool_stages`).
Each unit is busy until its stages have passed on the last word it takes, and the column
window takes only the words that end a row window, the finishing stage only those that end a
window both ways. Floor mode drops the rows and columns past the last window
(``h_used = (out_h - 1) * stride + kh`` rows and ``w_used`` columns are covered), so the last
word a later unit takes may come before the last input word, and the pipeline drains that much
sooner::

    after_h  = cin_words * (in_w - w_used)                            after the last row window
    after_hv = cin_words * ((in_h - h_used) * in_w + in_w - w_used)   after the last window
    tail = max(d1, d1 + d2 - after_h, d1 + d2 + d3 - after_hv)      (d: pool_stages)
    pool cycles = in_h * in_w * cin_words + tail + POOL_LAYER

The residual add (``hw/eltwise.py``) reads its two operands' words alternately, two cycles a
word, after reading its parameters; global average pooling reads a channel tile's pixels one a
cycle, waits for the last one (``GAP_READ_LATENCY``: the activation memory is registered on
both sides, and the engine registers the word again), forms the dividend from the sum in a
cycle, divides in ``GAP_DIV_STEPS`` cycles and writes::

    add cycles = ADD_SETUP + 2 * words + add_latency
    gap cycles = batch * cin_words * (in_h * in_w + GAP_TILE_EXTRA)
    GAP_TILE_EXTRA = GAP_READ_LATENCY + GAP_DIV_STEPS + 2

(structural, both: ``tests/test_eltwise_unit.py`` checks them on the core.) A dense
convolution (`systolic.hw.isa.describe_dense_conv`) walks its `systolic.hw.isa.dense_walk`
(``kh x kw`` blocks of one word, or, in raster order, ``cin_words`` words: the same count of
blocks) and first waits `systolic.hw.conv.dense_prep_cycles` while its
lanes' taps are worked out. A convolution that max-pools its output on the way to memory
(`systolic.hw.isa.fuse_pool`) settles `systolic.hw.conv.fused_pool_stages` cycles longer: its
words leave that many stages later. Every layer also
counts the ``CMD_LATENCY`` cycle in which the core holds its descriptor before the engine
takes it.
A RUN of several entries takes more than its layers' cycles: the controller fetches each
descriptor (a byte a cycle; with ``fetch_ahead``, the next one while a layer runs), issues it
and stores the layer's counter. With ``fetch_ahead`` RUN's DONE counts those cycles too
(`run_cycles`, `predict_run`, `predict_program`; and so a host's images a second), exactly as
modelled on the RTL; without it, the iCEBreaker's, it counts the layers' own.
``CONV_LAYER`` and ``POOL_LAYER`` are the only fitted constants, measured on
the RTL (``cycles`` counter) of lenet-digits and lenet5 layers on 2x4, 8x8 and 12x12 arrays
(the coefficients of ``rows`` and ``cols`` were fitted too and match the structure above); the
model is exact on every layer measured: ``tests/test_perf_rtl.py`` checks every layer kind and
every pooling shape on the core's Verilog, ``tests/test_network_rtl.py`` whole networks, and
the narrow arrays' stalls on 1x1 to 3x3 arrays with one to seven blocks.
"""

import itertools

from ..hw.controller import fetch_cycles
from ..hw.conv import (
    bank_cycles,
    dense_prep_cycles,
    fill_stages,
    fused_pool_stages,
    select_stages,
    weight_addr_stages,
    weight_stages,
    write_stages,
)
from ..hw.eltwise import GAP_TILE_EXTRA, add_latency
from ..hw.isa import CMD_LATENCY, Op
from ..hw.pe import capture_cycles
from ..hw.pool import pool_stages
from ..hw.requant import Requantizer

__all__ = ["ADD_SETUP", "CONV_LAYER", "POOL_LAYER", "feed_cycles", "layer_macs",
           "pool_tail", "pool_words", "predict_cycles", "predict_layer", "predict_program",
           "predict_run", "run_cycles", "utilization"]

CONV_LAYER = 11     #: fitted: per convolution layer, beyond the structural overhead
POOL_LAYER = 4      #: fitted: per pooling layer, beyond the pipeline's tail
#: Residual add: two parameter reads, the latch of the second, aligning the shifts, going idle.
ADD_SETUP = 5



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
    return CMD_LATENCY + _engine_cycles(cfg, fields)


def _engine_cycles(cfg, fields):
    """Cycles from the engine taking the descriptor to the end of the layer."""
    R, C, G = cfg.rows, cfg.cols, cfg.rq_groups
    if fields["op"] == Op.CONV:
        pixel_tiles = -(-fields.get("batch", 1) * fields["out_h"] * fields["out_w"] // R)
        blocks = (fields["cout_tiles"] * pixel_tiles * fields["kh"] * fields["kw"]
                  * fields["cin_words"])
        ends = (R + R * G + C + Requantizer.LATENCY + capture_cycles(cfg) + CONV_LAYER
                + weight_stages(cfg) + weight_addr_stages(cfg) + select_stages(cfg)
                + write_stages(cfg) + fill_stages(cfg)
                + fused_pool_stages(cfg) * fields.get("pool", 0))
        prep = dense_prep_cycles(cfg) if fields.get("dense") else 0
        return feed_cycles(cfg, blocks) + ends + prep
    if fields["op"] == Op.ADD:
        return ADD_SETUP + 2 * fields["cin_words"] + add_latency(cfg)
    if fields["op"] == Op.GAP:
        pixels = fields["in_h"] * fields["in_w"]
        per_tile = pixels + GAP_TILE_EXTRA
        return fields["batch"] * fields["cin_words"] * per_tile
    return pool_words(fields) + pool_tail(cfg, fields) + POOL_LAYER


def feed_cycles(cfg, blocks):
    """Cycles the array takes for a convolution's ``blocks`` reduction blocks (all its channel
    tiles'): ``cols`` each, and on an array too narrow for the fill to keep up, every second
    one after the first waits ``bank_cycles - 2 * cols`` more."""
    stall = max(0, bank_cycles(cfg) - 2 * cfg.cols)
    return blocks * cfg.cols + stall * ((blocks - 1) // 2)


def predict_layer(cfg, layer):
    """Predicted cycles of a compiled layer (`systolic.sw.compiler.CompiledLayer`): the sum of
    its program entries' (a pooling layer may take one per group of images)."""
    return sum(predict_cycles(cfg, fields) for fields in layer.entries)


def predict_program(program):
    """Predicted cycles of a whole `systolic.sw.compiler.Program` (one batch) in one RUN, as
    DONE reports it: the layers' own and the controller's between them (`predict_run`)."""
    return predict_run(program.cfg, [f for lay in program.layers for f in lay.entries])


def predict_run(cfg, entries, *, stopped=False):
    """Predicted total of a RUN of the program entries ``entries`` (descriptor fields, in
    order), as DONE (and STATUS) report it: `run_cycles` of their `predict_cycles`."""
    return run_cycles(cfg, [predict_cycles(cfg, fields) for fields in entries], stopped=stopped)


def run_cycles(cfg, layers, *, stopped=False):
    """The total of a RUN whose entries' counters (the layers' own cycles) are ``layers``, as
    DONE (and STATUS) report it. ``stopped``: after them it met an entry the accelerator cannot
    execute (BAD_DESCRIPTOR), whose fetch and decoding count too.

    With ``fetch_ahead`` the controller (``hw/controller.py``) counts every cycle from the
    run's start to its reply. Besides the layers' ``N`` it takes ``L + 2`` cycles to fetch the
    first entry and decode it (``L``: `systolic.hw.controller.fetch_cycles`); it fetches each
    next one while a layer runs (so only a layer shorter than a fetch waits for it), and takes
    a cycle to issue a layer, one to see the core start, one to see it stop and four to store
    its counter::

        run = L + 2 + sum(max(N + 8, L + 9) for all but the last) + max(N_last + 7, 8)

    A RUN of no entries takes one cycle; one that stops counts ``max(N + 8, L + 9)`` for each
    of its layers after the first fetch's ``L + 2``.

    Without ``fetch_ahead`` (the iCEBreaker, short of logic cells) the total is the layers'
    counters summed (stopped or not); the run takes ``L + 9`` cycles more for each entry, and
    one more, which nothing counts.
    """
    if not cfg.fetch_ahead:
        return sum(layers)
    load = fetch_cycles(cfg)
    if stopped:
        return load + 2 + sum(max(c + 8, load + 9) for c in layers)
    if len(layers) == 0:
        return 1
    return load + 2 + sum(max(c + 8, load + 9) for c in layers[:-1]) + max(layers[-1] + 7, 8)


def pool_words(fields):
    """Input words of a pooling layer: the engine takes one a cycle."""
    return fields["in_h"] * fields["in_w"] * fields["cin_words"]


def pool_tail(cfg, fields):
    """Cycles the pooling engine stays busy after taking the last input word of a layer.

    Each unit of the pipeline is busy until its stages have passed on the last word it takes;
    a unit that takes its last word ``after`` words before the end of the input drains that
    many cycles sooner.
    """
    k, stride, cw = fields["kh"], fields["stride"], fields["cin_words"]
    in_h, in_w = fields["in_h"], fields["in_w"]
    w_left = in_w - ((fields["out_w"] - 1) * stride + k)    # columns past the last window
    h_left = in_h - ((fields["out_h"] - 1) * stride + k)    # rows past the last window
    after = (0,                                 # the row window takes every word
             cw * w_left,                       # the column window: ends of row windows
             cw * (h_left * in_w + w_left))     # the finish: ends of whole windows
    depth = itertools.accumulate(pool_stages(cfg))
    return max(d - a for d, a in zip(depth, after, strict=True))


def layer_macs(fields, cin, cout):
    """Useful multiply-accumulates of a convolution layer (``cin``, ``cout`` channels)."""
    if fields["op"] != Op.CONV:
        return 0
    return fields["out_h"] * fields["out_w"] * fields["kh"] * fields["kw"] * cin * cout


def utilization(cfg, macs, cycles):
    """Fraction of the array's multiplier-cycles that did useful work: ``macs / (cycles * PEs)``."""
    return macs / (cycles * cfg.pes) if cycles else 0.0
