"""Convolution engine in Amaranth's simulator against the golden model: fast, small arrays."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from systolic.hw import layout
from systolic.hw.array import snapshot_pes
from systolic.hw.config import AcceleratorConfig, preset
from systolic.hw.conv import bank_cycles, fill_stages
from systolic.hw.core import Core
from systolic.hw.isa import (
    Mem,
    describe_conv,
    describe_linear,
    describe_pool,
    drain_steps,
    fuse_pool,
    layer_layout,
    pack_params,
    pad_walk,
)
from systolic.sim.vectors import conv_params
from systolic.sw import arith, perfmodel


def run_core(cfg, x, w, b, m, s, *, stride, pad, relu, out_base=None):
    """Load one conv layer into a `Core`, run it, read the output back; returns (y, cycles)."""
    cout, cin, kh, kw = w.shape
    _, h, wd = x.shape
    xw = layout.pack_activations(cfg, x)
    out_base = len(xw) if out_base is None else out_base
    d = describe_conv(cfg, cin=cin, h=h, w=wd, cout=cout, kh=kh, kw=kw, stride=stride, pad=pad,
                      relu=relu, in_base=0, out_base=out_base)
    n_out = d["out_h"] * d["out_w"] * d["cout_tiles"]
    loads = {Mem.ACT: xw, Mem.WEIGHT: layout.conv_weight_words(cfg, w),
             Mem.PARAM: pack_params(cfg, b, m, s)}
    words, (cycles,) = run_layers(cfg, loads, [d], out_base, n_out)
    return layout.unpack_activations(cfg, words, cout, d["out_h"], d["out_w"]), cycles


CASES = [
    # rows, cols, cin, h, w, cout, k, stride, pad, relu
    (2, 2, 2, 3, 3, 2, 1, 1, 0, False),
    (2, 2, 3, 5, 5, 3, 3, 1, 1, True),
    (2, 4, 5, 6, 7, 6, 3, 2, 1, False),
    (2, 4, 1, 8, 8, 4, 7, 2, 3, False),
    (4, 4, 9, 7, 5, 5, 5, 1, 2, True),
    (4, 4, 16, 4, 4, 10, 4, 1, 0, False),     # fully connected: kernel covers the input
    (2, 2, 3, 5, 5, 3, 2, 2, 0, True),
    (3, 4, 6, 1, 1, 7, 1, 1, 0, True),        # 1x1 spatial: a linear layer after flatten
]


@pytest.mark.parametrize(("rows", "cols", "cin", "h", "w", "cout", "k", "stride", "pad", "relu"),
                         CASES)
def test_conv_matches_golden(rows, cols, cin, h, w, cout, k, stride, pad, relu):
    cfg = AcceleratorConfig(rows=rows, cols=cols, act_depth=1024, weight_depth=1024,
                            param_depth=16)
    rng = np.random.default_rng(hash((rows, cols, cin, h, w, cout, k)) % 2**32)
    x = rng.integers(-128, 128, (cin, h, w)).astype(np.int8)
    wq, b, m, s = conv_params(rng, cin, cout, k)
    y, _ = run_core(cfg, x, wq, b, m, s, stride=stride, pad=pad, relu=relu)
    exp = arith.requantize(arith.conv2d_acc(x, wq, b, stride=stride, padding=pad), m, s,
                           relu=relu)
    assert np.array_equal(y, exp)


def test_saturation_corners():
    """All weights ±127 and inputs at -128 / 127: the largest sums, saturating both ways."""
    cfg = AcceleratorConfig(rows=2, cols=4, act_depth=1024, weight_depth=1024, param_depth=16)
    rng = np.random.default_rng(7)
    x = rng.choice(np.array([-128, 127], np.int8), (8, 5, 5))
    wq, b, _, _ = conv_params(rng, 8, 4, 3, extreme=True)
    m, s = arith.choose_multiplier(np.full(4, 0.05))
    y, _ = run_core(cfg, x, wq, b, m, s, stride=1, pad=1, relu=False)
    exp = arith.requantize(arith.conv2d_acc(x, wq, b, padding=1), m, s)
    assert np.array_equal(y, exp)
    assert (exp == 127).any()
    assert (exp == -128).any()


def run_layers(cfg, loads, descriptors, read_base, n_words):
    """Load ``loads`` ({Mem: words}), run ``descriptors`` in order, read ``n_words`` back."""
    dut = Core(cfg)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    result = {"cycles": []}

    async def bench(ctx):
        for mem, words in loads.items():
            for a, v in enumerate(words):
                ctx.set(dut.load.payload, {"mem": mem, "addr": a, "data": v})
                ctx.set(dut.load.valid, 1)
                await ctx.tick().until(dut.load.ready)
        ctx.set(dut.load.valid, 0)
        for d in descriptors:
            ctx.set(dut.cmd.payload, layer_layout(cfg).const(d))
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            await ctx.tick()
            for _ in range(200_000):
                if not ctx.get(dut.busy):
                    break
                await ctx.tick()
            else:
                raise AssertionError("the engine did not finish")
            result["cycles"].append(ctx.get(dut.cycles))
        ctx.set(dut.rd_data.ready, 1)
        words = []
        for a in range(n_words):
            ctx.set(dut.rd_addr.payload, read_base + a)
            ctx.set(dut.rd_addr.valid, 1)
            await ctx.tick().until(dut.rd_addr.ready)
            ctx.set(dut.rd_addr.valid, 0)
            (data,) = await ctx.tick().sample(dut.rd_data.payload).until(dut.rd_data.valid)
            words.append(data.as_value().value)
        result["words"] = words

    sim.add_testbench(bench)
    sim.run()
    return result["words"], result["cycles"]


@pytest.mark.parametrize("avg", [False, True])
def test_conv_pool_conv_on_chip(avg):
    """A three-layer chain with activations kept in activation memory between layers."""
    cfg = AcceleratorConfig(rows=2, cols=4, act_depth=1024, weight_depth=1024, param_depth=16)
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (3, 7, 7)).astype(np.int8)
    w1, b1, m1, s1 = conv_params(rng, 3, 6, 3)
    w2, b2, m2, s2 = conv_params(rng, 6, 5, 2)
    y1 = arith.requantize(arith.conv2d_acc(x, w1, b1, padding=1), m1, s1, relu=True)
    y2 = (arith.avgpool2d if avg else arith.maxpool2d)(y1, 3, 2)
    y3 = arith.requantize(arith.conv2d_acc(y2, w2, b2), m2, s2)
    d1 = describe_conv(cfg, cin=3, h=7, w=7, cout=6, kh=3, kw=3, pad=1, relu=True,
                       in_base=0, out_base=100, w_base=0, p_base=0)
    d2 = describe_pool(cfg, channels=6, h=7, w=7, kernel=3, stride=2, avg=avg,
                       in_base=100, out_base=300)
    wa = layout.conv_weight_words(cfg, w1)
    d3 = describe_conv(cfg, cin=6, h=3, w=3, cout=5, kh=2, kw=2, in_base=300, out_base=0,
                       w_base=len(wa), p_base=2)
    loads = {
        Mem.ACT: layout.pack_activations(cfg, x),
        Mem.WEIGHT: wa + layout.conv_weight_words(cfg, w2),
        Mem.PARAM: pack_params(cfg, b1, m1, s1) + pack_params(cfg, b2, m2, s2),
    }
    words, cycles = run_layers(cfg, loads, [d1, d2, d3], 0, 2 * 2 * 2)
    assert np.array_equal(layout.unpack_activations(cfg, words, 5, 2, 2), y3)
    assert all(c > 0 for c in cycles)


BATCH_CASES = [
    # rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad
    (2, 4, 0, 3, 3, 5, 5, 6, 3, 1, 1),        # pixel tiles straddle images (25 % 2)
    (3, 4, 0, 4, 5, 4, 6, 5, 3, 2, 0),        # stride 2, no padding, 3 rows
    (2, 4, 2, 2, 2, 3, 3, 4, 2, 1, 1),        # requantization in two groups
    (4, 4, 0, 5, 6, 1, 1, 7, 1, 1, 0),        # one pixel an image: a row an image
    # 8 columns: the fill's addresses are registered (`fill_stages`); the shortest reduction
    # (one block a pixel tile), three channel tiles back to back, tiles straddling images
    (8, 8, 0, 2, 5, 5, 5, 20, 1, 1, 0),
]


def _conv_batch_exact(rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad, *,
                      padded=False, deep=False):
    """Run a batch of random images through one convolution command (its walk padded with
    `pad_walk` if ``padded``): each image's output exactly the golden model's, one after the
    other, and the cycles the performance model's. Returns the descriptor."""
    cfg = AcceleratorConfig(rows=rows, cols=cols, act_depth=1024, weight_depth=1024,
                            param_depth=16, requant_lanes=lanes, deep_pipeline=deep)
    key = (rows, cols, batch, cin, h, w, cout, k) + ((lanes,) if padded else ())
    rng = np.random.default_rng(hash(key) % 2**32)
    xs = rng.integers(-128, 128, (batch, cin, h, w)).astype(np.int8)
    wq, b, m, s = conv_params(rng, cin, cout, k)
    xw = [v for x in xs for v in layout.pack_activations(cfg, x)]
    plain = describe_conv(cfg, cin=cin, h=h, w=w, cout=cout, kh=k, kw=k, stride=stride,
                          pad=pad, relu=True, in_base=0, out_base=len(xw), batch=batch)
    d = pad_walk(cfg, plain) if padded else plain
    per = d["out_h"] * d["out_w"] * d["cout_tiles"]
    loads = {Mem.ACT: xw, Mem.WEIGHT: layout.conv_weight_words(cfg, wq, d["kh"]),
             Mem.PARAM: pack_params(cfg, b, m, s)}
    words, (cycles,) = run_layers(cfg, loads, [d], len(xw), batch * per)
    for i, x in enumerate(xs):
        exp = arith.requantize(arith.conv2d_acc(x, wq, b, stride=stride, padding=pad), m, s,
                               relu=True)
        got = layout.unpack_activations(cfg, words[i * per:(i + 1) * per], cout, d["out_h"],
                                        d["out_w"])
        assert np.array_equal(got, exp), i
    assert cycles == perfmodel.predict_cycles(cfg, d)
    return cfg, plain, d


@pytest.mark.parametrize(("rows", "cols", "lanes", "batch", "cin", "h", "w", "cout", "k",
                          "stride", "pad"), BATCH_CASES)
def test_conv_batch(rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad):
    """A batch of images in one command: each image's output exactly as alone, one after the
    other, and the performance model predicts the cycles."""
    _conv_batch_exact(rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad)


DEEP_CASES = [
    # rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad
    (8, 8, 0, 2, 5, 5, 5, 20, 1, 1, 0),        # two fill stages, tiles straddling images
    (8, 8, 0, 2, 3, 4, 1, 9, 1, 1, 0),         # a map one pixel wide: a row step to the end
    (1, 4, 0, 1, 2, 1, 1, 5, 1, 1, 0),         # one row: a block a tile, no step before it
    (1, 4, 0, 3, 2, 1, 1, 5, 1, 1, 0),
    (2, 4, 0, 3, 3, 5, 5, 6, 3, 1, 1),         # pixel tiles straddle images (25 % 2)
    (4, 4, 0, 2, 5, 5, 5, 6, 3, 1, 1),         # the release a cycle later: every second
                                               # block waits a cycle (`bank_cycles` 9 > 8)
]


@pytest.mark.parametrize(("rows", "cols", "lanes", "batch", "cin", "h", "w", "cout", "k",
                          "stride", "pad"), DEEP_CASES)
def test_conv_batch_deep_pipeline(rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad):
    """With ``deep_pipeline``: the fill's second address stage (8 columns: the cycles the
    model's, one more) and the walker's registered end of the map, whose every update the
    walks above reach (the last on a one-row array, where a tile's only block ends as the
    walker takes its first step)."""
    cfg, _, _ = _conv_batch_exact(rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad,
                                  deep=True)
    assert fill_stages(cfg) == (2 if cols >= 8 else 0)
    # The 4x4 case's fill waits for the release's register (the model's stall, exact above).
    assert (bank_cycles(cfg) > 2 * cols) == ((rows, cols) == (4, 4))


def test_linear_over_flattened_map():
    """A fully connected layer on a 12x12 map (larger than any kernel), as a layout: the
    input's words in memory order, a batch of two."""
    cfg = AcceleratorConfig(rows=2, cols=4, act_depth=2048, weight_depth=4096, param_depth=16)
    rng = np.random.default_rng(5)
    c, h, w, cout, batch = 6, 12, 12, 5, 2
    xs = rng.integers(-128, 128, (batch, c, h, w)).astype(np.int8)
    wl, b, m, s = conv_params(rng, c * h * w, cout, 1)
    wl = wl.reshape(cout, c * h * w)
    xw = [v for x in xs for v in layout.pack_activations(cfg, x)]
    n = len(xw) // batch
    d = describe_linear(cfg, in_words=n, cout=cout, in_base=0, out_base=len(xw), batch=batch)
    loads = {Mem.ACT: xw, Mem.WEIGHT: layout.linear_weight_words(cfg, wl, (c, h, w)),
             Mem.PARAM: pack_params(cfg, b, m, s)}
    words, (cycles,) = run_layers(cfg, loads, [d], len(xw), batch * d["cout_tiles"])
    for i, x in enumerate(xs):
        exp = arith.requantize(arith.conv2d_acc(x, wl.reshape(cout, c, h, w), b), m, s)
        got = layout.unpack_activations(cfg, words[i * 2:(i + 1) * 2], cout, 1, 1)
        assert np.array_equal(got, exp), i
    assert cycles == perfmodel.predict_cycles(cfg, d)


PADDED_CASES = [
    # rows, cols, requant_lanes, batch, cin, h, w, cout, k, stride, pad
    (2, 4, 1, 2, 3, 3, 4, 6, 1, 1, 0),        # 4 steps of 8: the last row's padding row is
                                              # past the image (stored 0), tiles straddle
    (3, 4, 1, 3, 2, 4, 3, 5, 1, 2, 1),        # 3 rows: 12 steps, a 1x1 kernel walks 3 rows
    (4, 6, 3, 2, 5, 4, 4, 4, 1, 1, 0),        # two groups and a snapshot PE: 8 steps of
                                              # 4 * 2, a word is 6
]


@pytest.mark.parametrize(("rows", "cols", "lanes", "batch", "cin", "h", "w", "cout", "k",
                          "stride", "pad"), PADDED_CASES)
def test_conv_padded_walk(rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad):
    """A reduction shorter than the requantization lanes need (`drain_steps`) walks more
    kernel rows, their weights 0 (`pad_walk`): exact, image after image, and the performance
    model predicts the cycles."""
    cfg, plain, d = _conv_batch_exact(rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad,
                                      padded=True)
    assert d["kh"] > k
    assert d["out_h"] == plain["out_h"]
    assert d["kh"] * d["kw"] * d["cin_words"] * cols >= drain_steps(cfg)


SNAPSHOT_CASES = [
    # rows, cols, requant_lanes, batch, cin, h, w, cout, k, stride, pad
    (4, 8, 4, 2, 8, 4, 5, 8, 1, 1, 0),        # 8 steps: 11 without the snapshot of 6 PEs
    (3, 6, 3, 2, 6, 4, 3, 9, 1, 1, 0),        # 6 steps: 8 without, two channel tiles
]


@pytest.mark.parametrize(("rows", "cols", "lanes", "batch", "cin", "h", "w", "cout", "k",
                          "stride", "pad"), SNAPSHOT_CASES)
def test_conv_row_snapshot(rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad):
    """Where the drain's groups would outlast some PEs' sums (`snapshot_pes`), the array keeps
    a snapshot of those, and a reduction of only ``rows * rq_groups`` steps runs unpadded:
    exact, tiles back to back, and the cycles the performance model's. (Without the snapshot
    those PEs' sums are the next tile's by the time the lanes take them.)"""
    cfg, plain, d = _conv_batch_exact(rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad)
    assert snapshot_pes(cfg)
    assert d["kh"] * d["kw"] * d["cin_words"] * cols == drain_steps(cfg) == rows * cfg.rq_groups
    assert pad_walk(cfg, plain) is plain


def test_snapshot_only_where_it_helps():
    """The presets: only the 8x16 array with 8 lanes (a word of 16 steps, which needed 23)
    has snapshot PEs, 28 of its 128, below the diagonal of its first group of 8 columns; the
    others' sums hold long enough in the PEs."""
    snap = snapshot_pes(preset("wide"))
    assert snap == {(r, c) for r in range(8) for c in range(r)}
    assert {name: len(snapshot_pes(preset(name))) for name in ("small", "default", "big")} \
        == {"small": 0, "default": 0, "big": 0}
    assert drain_steps(preset("wide")) == 16


def test_linear_padded_walk():
    """A fully connected layer of one input word, shorter than the lanes need: its second
    walked row is past the one-pixel input, stored 0, and its weights are zero words."""
    cfg = AcceleratorConfig(rows=2, cols=4, act_depth=256, weight_depth=256, param_depth=16,
                            requant_lanes=1)
    rng = np.random.default_rng(9)
    c, cout, batch = 3, 6, 3
    xs = rng.integers(-128, 128, (batch, c, 1, 1)).astype(np.int8)
    wl, b, m, s = conv_params(rng, c, cout, 1)
    wl = wl.reshape(cout, c)
    xw = [v for x in xs for v in layout.pack_activations(cfg, x)]
    d = pad_walk(cfg, describe_linear(cfg, in_words=1, cout=cout, in_base=0,
                                      out_base=len(xw), batch=batch))
    assert d["kh"] == 2
    words = layout.linear_weight_words(cfg, wl, (c, 1, 1), d["kh"])
    assert len(words) == d["cout_tiles"] * d["w_tile_words"]
    loads = {Mem.ACT: xw, Mem.WEIGHT: words, Mem.PARAM: pack_params(cfg, b, m, s)}
    out, (cycles,) = run_layers(cfg, loads, [d], len(xw), batch * d["cout_tiles"])
    for i, x in enumerate(xs):
        exp = arith.requantize(arith.conv2d_acc(x, wl.reshape(cout, c, 1, 1), b), m, s)
        got = layout.unpack_activations(cfg, out[i * 2:(i + 1) * 2], cout, 1, 1)
        assert np.array_equal(got, exp), i
    assert cycles == perfmodel.predict_cycles(cfg, d)


RQ_CASES = [
    # rows, cols, requant_lanes, requant_dsp, cin, h, w, cout, k, stride, pad, relu
    (1, 4, 1, True, 3, 6, 6, 6, 3, 1, 1, True),      # the small preset's shape
    (1, 4, 1, False, 2, 5, 5, 5, 1, 1, 0, False),    # one block per tile: shortest reduction
    (1, 4, 2, True, 9, 4, 4, 7, 4, 1, 0, False),     # fully connected
    (2, 4, 2, False, 5, 6, 7, 6, 3, 2, 1, True),     # two rows, two groups
    (3, 6, 3, True, 4, 5, 5, 8, 3, 1, 1, False),     # three rows, two groups of three
    (2, 4, 4, True, 3, 5, 5, 4, 3, 1, 1, True),      # one lane per column, on DSP blocks
]


@pytest.mark.parametrize(("rows", "cols", "lanes", "dsp", "cin", "h", "w", "cout", "k", "stride",
                          "pad", "relu"), RQ_CASES)
def test_conv_requant_lanes(rows, cols, lanes, dsp, cin, h, w, cout, k, stride, pad, relu):
    """Fewer requantization lanes than columns, and the DSP multiply: exact, and the
    performance model predicts the cycles."""
    cfg = AcceleratorConfig(rows=rows, cols=cols, act_depth=1024, weight_depth=1024,
                            param_depth=16, requant_lanes=lanes, requant_dsp=dsp)
    rng = np.random.default_rng(hash((rows, cols, lanes, cin, h, w, cout, k)) % 2**32)
    x = rng.integers(-128, 128, (cin, h, w)).astype(np.int8)
    wq, b, m, s = conv_params(rng, cin, cout, k)
    y, cycles = run_core(cfg, x, wq, b, m, s, stride=stride, pad=pad, relu=relu)
    exp = arith.requantize(arith.conv2d_acc(x, wq, b, stride=stride, padding=pad), m, s,
                           relu=relu)
    assert np.array_equal(y, exp)
    d = describe_conv(cfg, cin=cin, h=h, w=w, cout=cout, kh=k, kw=k, stride=stride, pad=pad)
    assert cycles == perfmodel.predict_cycles(cfg, d)


@pytest.mark.parametrize(("stages", "carry"), [(1, 1), (2, 1), (2, 2)])
@pytest.mark.parametrize("extreme", [False, True])
def test_pe_sums_exact(extreme, stages, carry):
    """One PE, tiles back to back: every tile's int32 sum exactly, ``capture`` + 1 cycles
    after the next tile's ``first``, with one or two product registers and one or two carry
    registers between the halves (`carry_stages`; tiles then at least that long, as
    `isa.drain_steps` makes them); with ``extreme``, long tiles of ±128 × -128 products,
    whose sums cross both 16-bit halves' boundaries in both directions."""
    from systolic.hw.pe import ProcessingElement

    rng = np.random.default_rng(11 + extreme)
    tiles = []
    for _ in range(12):
        k = int(rng.integers(carry, 700 if extreme else 20))
        if extreme:
            a = rng.choice(np.array([-128, 127]), k) * (1 if rng.random() < 0.5 else -1)
            a = np.clip(a, -128, 127)
            w = np.full(k, -128)
        else:
            a, w = rng.integers(-128, 128, k), rng.integers(-128, 128, k)
        tiles.append((a.astype(np.int64), w.astype(np.int64)))
    pe = ProcessingElement(product_stages=stages, carry_stages=carry)
    assert pe.capture == 1 + stages + carry
    got = []

    async def bench(ctx):
        starts = []
        cycle = 0
        for a, w in [*tiles, (np.zeros(1, np.int64), np.zeros(1, np.int64))]:
            for i in range(len(a)):
                ctx.set(pe.a_in, int(a[i]))
                ctx.set(pe.w_in, int(w[i]))
                ctx.set(pe.first_in, int(i == 0))
                if i == 0:
                    starts.append(cycle)
                await ctx.tick()
                cycle += 1
                for s in starts[1:]:
                    if cycle == s + pe.capture + 1:
                        got.append(ctx.get(pe.result))
        ctx.set(pe.first_in, 0)
        for _ in range(pe.capture + 1):
            await ctx.tick()
            cycle += 1
            if cycle == starts[-1] + pe.capture + 1:
                got.append(ctx.get(pe.result))

    sim = Simulator(pe)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == [int(np.dot(a, w)) for a, w in tiles]


POOL_CASES = [
    # rows, cols, requant_lanes, batch, cin, h, w, cout, k, stride, pad, relu
    (2, 4, 0, 1, 3, 6, 6, 4, 3, 1, 1, True),         # even map: every pixel in a window
    (2, 4, 0, 2, 2, 7, 5, 6, 3, 1, 1, False),        # odd both ways: the last row and column
                                                     # dropped; negative values; two tiles
    (3, 4, 0, 3, 3, 5, 5, 5, 3, 2, 1, True),         # stride 2: a 3x3 map, one window an
                                                     # image; tiles straddle images
    (2, 4, 2, 2, 5, 4, 6, 7, 3, 1, 0, False),        # requantization in two groups
    (4, 4, 0, 2, 2, 9, 2, 3, 2, 1, 1, False),        # a pooled map one window wide
]


@pytest.mark.parametrize(("rows", "cols", "lanes", "batch", "cin", "h", "w", "cout", "k",
                          "stride", "pad", "relu"), POOL_CASES)
@pytest.mark.parametrize("deep", [False, True], ids=["plain", "deep"])
def test_conv_fused_pool(rows, cols, lanes, batch, cin, h, w, cout, k, stride, pad, relu, deep):
    """A convolution that max-pools its output 2x2 /2 on the way to memory (`fuse_pool`): each
    image's pooled map exactly the golden model's convolution then pooling, one after the
    other from ``out_base``, nothing written past them, and the performance model predicts
    the cycles. With ``deep_pipeline`` the comparators have registers of their own
    (`fused_pool_stages`: two cycles more)."""
    cfg = AcceleratorConfig(rows=rows, cols=cols, act_depth=1024, weight_depth=1024,
                            param_depth=16, requant_lanes=lanes, deep_pipeline=deep)
    rng = np.random.default_rng(hash((rows, cols, lanes, batch, cin, h, w, cout)) % 2**32)
    xs = rng.integers(-128, 128, (batch, cin, h, w)).astype(np.int8)
    wq, b, m, s = conv_params(rng, cin, cout, k)
    xw = [v for x in xs for v in layout.pack_activations(cfg, x)]
    d = fuse_pool(cfg, describe_conv(cfg, cin=cin, h=h, w=w, cout=cout, kh=k, kw=k,
                                     stride=stride, pad=pad, relu=relu, in_base=0,
                                     out_base=len(xw), batch=batch))
    ph, pw = d["out_h"] // 2, d["out_w"] // 2
    per = ph * pw * d["cout_tiles"]
    loads = {Mem.ACT: xw, Mem.WEIGHT: layout.conv_weight_words(cfg, wq),
             Mem.PARAM: pack_params(cfg, b, m, s)}
    # Read on past the outputs: the memory there must still hold 0.
    words, (cycles,) = run_layers(cfg, loads, [d], len(xw), batch * per + 8)
    for i, x in enumerate(xs):
        exp = arith.maxpool2d(arith.requantize(arith.conv2d_acc(x, wq, b, stride=stride,
                                                                padding=pad), m, s, relu=relu),
                              2, 2)
        got = layout.unpack_activations(cfg, words[i * per:(i + 1) * per], cout, ph, pw)
        assert np.array_equal(got, exp), i
    assert words[batch * per:] == [0] * 8
    assert cycles == perfmodel.predict_cycles(cfg, d)
    plain = perfmodel.predict_cycles(cfg, {**d, "pool": 0})
    # The last channel tile's words come three (five) cycles later.
    assert cycles == plain + (5 if deep else 3)


def test_fuse_pool_refuses():
    cfg = AcceleratorConfig(rows=2, cols=4)
    d = describe_conv(cfg, cin=1, h=3, w=3, cout=4, kh=3, kw=3)
    with pytest.raises(ValueError, match="a 1x1 map has no 2x2 window"):
        fuse_pool(cfg, d)
    with pytest.raises(ValueError, match=r"has no fused pooling \(fused_pool=False\)"):
        fuse_pool(cfg.replace(fused_pool=False), d)
