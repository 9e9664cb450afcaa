"""Convolution engine in Amaranth's simulator against the golden model: fast, small arrays."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from systolic.hw import layout
from systolic.hw.config import AcceleratorConfig
from systolic.hw.core import Core
from systolic.hw.isa import Mem, describe_conv, layer_layout, pack_params
from systolic.sw import arith


def random_conv(rng, cin, cout, k, *, extreme=False):
    if extreme:
        w = rng.choice(np.array([-127, 127], np.int8), (cout, cin, k, k))
    else:
        w = rng.integers(-127, 128, (cout, cin, k, k)).astype(np.int8)
    b = rng.integers(-5000, 5000, cout)
    m, s = arith.choose_multiplier(rng.uniform(0.0002, 0.01, cout))
    return w, b, m, s


def run_core(cfg, x, w, b, m, s, *, stride, pad, relu, out_base=None):
    """Load one conv layer into a `Core`, run it, read the output back; returns (y, cycles)."""
    cout, cin, kh, kw = w.shape
    _, h, wd = x.shape
    xw = layout.pack_activations(cfg, x)
    out_base = len(xw) if out_base is None else out_base
    d = describe_conv(cfg, cin=cin, h=h, w=wd, cout=cout, kh=kh, kw=kw, stride=stride, pad=pad,
                      relu=relu, in_base=0, out_base=out_base)
    n_out = d["out_h"] * d["out_w"] * d["cout_tiles"]
    dut = Core(cfg)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    result = {}

    async def bench(ctx):
        for mem, words in ((Mem.ACT, xw), (Mem.WEIGHT, layout.conv_weight_words(cfg, w)),
                           (Mem.PARAM, pack_params(cfg, b, m, s))):
            for a, v in enumerate(words):
                ctx.set(dut.load.payload, {"mem": mem, "addr": a, "data": v})
                ctx.set(dut.load.valid, 1)
                await ctx.tick().until(dut.load.ready)
        ctx.set(dut.load.valid, 0)
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
        result["cycles"] = ctx.get(dut.cycles)
        ctx.set(dut.rd_data.ready, 1)
        words = []
        for a in range(n_out):
            ctx.set(dut.rd_addr.payload, out_base + a)
            ctx.set(dut.rd_addr.valid, 1)
            await ctx.tick().until(dut.rd_addr.ready)
            ctx.set(dut.rd_addr.valid, 0)
            (data,) = await ctx.tick().sample(dut.rd_data.payload).until(dut.rd_data.valid)
            words.append(data.as_value().value)
        result["words"] = words

    sim.add_testbench(bench)
    sim.run()
    y = layout.unpack_activations(cfg, result["words"], cout, d["out_h"], d["out_w"])
    return y, result["cycles"]


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
    wq, b, m, s = random_conv(rng, cin, cout, k)
    y, _ = run_core(cfg, x, wq, b, m, s, stride=stride, pad=pad, relu=relu)
    exp = arith.requantize(arith.conv2d_acc(x, wq, b, stride=stride, padding=pad), m, s,
                           relu=relu)
    assert np.array_equal(y, exp)


def test_saturation_corners():
    """All weights ±127 and inputs at -128 / 127: the largest sums, saturating both ways."""
    cfg = AcceleratorConfig(rows=2, cols=4, act_depth=1024, weight_depth=1024, param_depth=16)
    rng = np.random.default_rng(7)
    x = rng.choice(np.array([-128, 127], np.int8), (8, 5, 5))
    wq, b, _, _ = random_conv(rng, 8, 4, 3, extreme=True)
    m, s = arith.choose_multiplier(np.full(4, 0.05))
    y, _ = run_core(cfg, x, wq, b, m, s, stride=1, pad=1, relu=False)
    exp = arith.requantize(arith.conv2d_acc(x, wq, b, padding=1), m, s)
    assert np.array_equal(y, exp)
    assert (exp == 127).any()
    assert (exp == -128).any()
