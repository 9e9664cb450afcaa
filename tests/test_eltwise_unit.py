"""The residual add and global average pooling engines, in the real `Core` under Amaranth's
simulator, against independent integer formulas (Python integers, not the golden model's
numpy): every element exact, and the cycles the performance model predicts."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from systolic.hw.config import AcceleratorConfig
from systolic.hw.core import Core
from systolic.hw.eltwise import GAP_DIV_STEPS
from systolic.hw.isa import Mem, describe_add, describe_gap, pack_add_params, pack_descriptor
from systolic.hw.layout import pack_activations, unpack_activations
from systolic.sw import arith, perfmodel

CFG = AcceleratorConfig(rows=2, cols=4, act_depth=1024, max_dim=32, param_depth=16)


def run_core(cfg, loads, fields, out_base, out_words):
    """Load ``loads`` (``(Mem, addr, value)``), run one descriptor, read ``out_words`` words
    back from ``out_base``; returns ``(words, cycles)``."""
    dut = Core(cfg)
    result = {}

    async def bench(ctx):
        for mem, addr, value in loads:
            ctx.set(dut.load.payload, {"mem": mem, "addr": addr, "data": value})
            ctx.set(dut.load.valid, 1)
            await ctx.tick().until(dut.load.ready)
        ctx.set(dut.load.valid, 0)
        ctx.set(dut.cmd.payload.as_value(), pack_descriptor(cfg, fields))
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick().until(dut.cmd.ready)
        ctx.set(dut.cmd.valid, 0)
        await ctx.tick()
        for _ in range(100_000):
            if not ctx.get(dut.busy):
                break
            await ctx.tick()
        result["cycles"] = ctx.get(dut.cycles)
        words = []
        ctx.set(dut.rd_data.ready, 1)
        for a in range(out_base, out_base + out_words):
            ctx.set(dut.rd_addr.payload, a)
            ctx.set(dut.rd_addr.valid, 1)
            await ctx.tick().until(dut.rd_addr.ready)
            ctx.set(dut.rd_addr.valid, 0)
            while not ctx.get(dut.rd_data.valid):
                await ctx.tick()
            words.append(ctx.get(dut.rd_data.payload.as_value()))
            await ctx.tick()
        result["words"] = words

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result["words"], result["cycles"]


def add_reference(a, b, ms, ss, relu):
    """The contract's residual add, one Python integer at a time."""
    top = max(ss)
    out = []
    for x, y in zip(a.ravel().tolist(), b.ravel().tolist(), strict=True):
        t = ((x * ms[0]) << (top - ss[0])) + ((y * ms[1]) << (top - ss[1])) + (1 << (top - 1))
        v = min(max(t >> top, 0 if relu else -128), 127)
        out.append(v)
    return np.array(out, np.int64).reshape(a.shape)


def gap_reference(x):
    """``floor((2*S + N) / (2*N))`` per channel, Python integers."""
    c, h, w = x.shape
    n = h * w
    return np.array([(2 * int(x[i].astype(np.int64).sum()) + n) // (2 * n) for i in range(c)],
                    np.int64).reshape(c, 1, 1)


ADD_CASES = [
    # (shape, batch, M, s, relu)
    ((6, 3, 5), 1, (20000, 31000), (16, 17), False),
    ((4, 2, 2), 3, (32767, 32767), (1, 1), False),           # saturates both ways
    ((5, 4, 3), 2, (12345, 30000), (20, 36), True),          # the widest spread
    ((3, 2, 2), 1, (32767, 1), (47, 31), False),             # S = 47: 2^46 to round
    ((8, 1, 3), 1, (0, 9000), (5, 14), True),                # M = 0
    ((7, 3, 3), 2, (29001, 17), (9, 1), False),              # the first operand's shift larger
    ((4, 5, 2), 1, (1, 1), (1, 1), True),                    # halves: (a + b) / 2
    ((6, 2, 3), 1, (4321, 27000), (40, 40), False),          # both rounded to 0 or -1 away
]


@pytest.mark.parametrize("deep", [False, True], ids=["plain", "deep"])
@pytest.mark.parametrize(("shape", "batch", "ms", "ss", "relu"), ADD_CASES)
def test_add_engine(shape, batch, ms, ss, relu, deep):
    # ``deep_pipeline``: the clamp a stage after the rounding, a cycle more (the model's).
    cfg = CFG.replace(deep_pipeline=deep)
    rng = np.random.default_rng(hash((shape, ms)) % 2**32)
    a = rng.integers(-128, 128, (batch,) + shape).astype(np.int8)
    b = rng.integers(-128, 128, (batch,) + shape).astype(np.int8)
    a.flat[:2], b.flat[:2] = (-128, 127), (-128, 127)
    words = len(pack_activations(cfg, a[0]))
    a_base, b_base, y_base = 3, 3 + batch * words + 5, 700
    loads = []
    for base, t in ((a_base, a), (b_base, b)):
        for n in range(batch):
            for k, v in enumerate(pack_activations(cfg, t[n])):
                loads.append((Mem.ACT, base + n * words + k, v))
    p_base = 5
    loads += [(Mem.PARAM, p_base + j, v) for j, v in enumerate(pack_add_params(cfg, ms, ss))]
    fields = describe_add(cfg, words=batch * words, relu=relu, in_base=a_base,
                          skip_base=b_base, out_base=y_base, p_base=p_base)
    got, cycles = run_core(cfg, loads, fields, y_base, batch * words)
    for n in range(batch):
        out = unpack_activations(cfg, got[n * words:(n + 1) * words], *shape)
        np.testing.assert_array_equal(out, add_reference(a[n], b[n], ms, ss, relu))
    assert cycles == perfmodel.predict_cycles(cfg, fields)


GAP_CASES = [
    # (shape, batch, fill)
    ((6, 3, 5), 1, "random"),
    ((4, 8, 8), 2, "random"),
    ((9, 1, 1), 3, "random"),
    ((5, 7, 9), 1, "max"),
    ((5, 7, 9), 1, "min"),
    ((3, 2, 2), 2, "halves"),
]


@pytest.mark.parametrize(("shape", "batch", "fill"), GAP_CASES)
def test_gap_engine(shape, batch, fill):
    cfg = CFG
    rng = np.random.default_rng(len(shape) * 7 + batch)
    x = rng.integers(-128, 128, (batch,) + shape).astype(np.int8)
    if fill == "max":
        x[:] = 127
    elif fill == "min":
        x[:] = -128
    elif fill == "halves":                  # sums at exact halves: 2, -2, 6 over N = 4
        x[:] = 0
        x[:, 0, 0, :] = 1
        x[:, 1, 0, :] = -1
        x[:, 2, 0, 0], x[:, 2, 1, 0] = 3, 3
    words = len(pack_activations(cfg, x[0]))
    out_words = len(pack_activations(cfg, np.zeros((shape[0], 1, 1), np.int8)))
    in_base, out_base = 7, 600
    loads = [(Mem.ACT, in_base + n * words + k, v)
             for n in range(batch) for k, v in enumerate(pack_activations(cfg, x[n]))]
    fields = describe_gap(cfg, channels=shape[0], h=shape[1], w=shape[2], batch=batch,
                          in_base=in_base, out_base=out_base)
    got, cycles = run_core(cfg, loads, fields, out_base, batch * out_words)
    for n in range(batch):
        out = unpack_activations(cfg, got[n * out_words:(n + 1) * out_words], shape[0], 1, 1)
        np.testing.assert_array_equal(out, gap_reference(x[n]))
    assert cycles == perfmodel.predict_cycles(cfg, fields)


def test_gap_divider_exhaustive():
    """The divider's arithmetic, ``floor((2*S + 257*N) / (2*N)) - 128`` in eight non-restoring
    steps (the engine's: ``R' = R -/+ D`` by R's sign, bit ``R' >= 0``, ``R = 2*R'``, ``D =
    256*N``), equals ``round_half_up(S / N)`` for every sum of every map up to 16 x 16 pixels,
    and its remainders stay in ``[-2*D, 2*D)``, the engine's register."""
    for n in range(1, 257):
        s = np.arange(-128 * n, 127 * n + 1, dtype=np.int64)
        rem = 2 * s + 257 * n
        d = (2 * n) << (GAP_DIV_STEPS - 1)
        quo = np.zeros_like(s)
        for _ in range(GAP_DIV_STEPS):
            assert rem.min() >= -2 * d
            assert rem.max() < 2 * d
            trial = np.where(rem < 0, rem + d, rem - d)
            quo = 2 * quo + (trial >= 0)
            rem = 2 * trial
        np.testing.assert_array_equal(quo - 128, (2 * s + n) // (2 * n))
        assert (quo - 128).min() >= arith.INT8_MIN
        assert (quo - 128).max() <= arith.INT8_MAX


def test_add_datapath_identity():
    """The add engine's 25-bit form, ``((((p_hi >> d) + p_lo) >> (lo - 1)) + 1) >> 1``, equals
    the contract's ``(p_hi + (p_lo << d) + 2^(S-1)) >> S`` on a million random products and
    shifts, every spread and every shift included."""
    rng = np.random.default_rng(11)
    n = 1_000_000
    p_hi = rng.integers(-128 * 32767, 127 * 32767 + 1, n)
    p_lo = rng.integers(-128 * 32767, 127 * 32767 + 1, n)
    lo = rng.integers(arith.SHIFT_MIN, arith.SHIFT_MAX + 1, n)
    d = rng.integers(0, arith.ADD_SHIFT_SPREAD + 1, n)
    top = np.minimum(lo + d, arith.SHIFT_MAX)
    d = top - lo
    contract = [(int(h) + (int(q) << int(k)) + (1 << (int(t) - 1))) >> int(t)
                for h, q, k, t in zip(p_hi, p_lo, d, top, strict=True)]
    engine = ((((p_hi >> d) + p_lo) >> (lo - 1)) + 1) >> 1
    np.testing.assert_array_equal(engine, np.array(contract, np.int64))
