"""The requantizer alone in Amaranth's simulator: every legal shift, extreme sums and
multipliers, ReLU on and off, each lane exactly `arith.requantize` `LATENCY` cycles later."""

import numpy as np
import pytest
from amaranth.lib import data
from amaranth.sim import Simulator
from systolic.hw.config import AcceleratorConfig
from systolic.hw.requant import Requantizer
from systolic.sw import arith

TAG = data.StructLayout({"n": 16})


def vectors(n, seed):
    """``n`` sums (without bias), biases, multipliers and shifts: random, then the corners."""
    rng = np.random.default_rng(seed)
    total = rng.integers(arith.ACC_MIN, arith.ACC_MAX, n, endpoint=True)
    # Most sums small enough that the result is not saturated at every shift.
    small = rng.random(n) < 0.7
    total[small] = rng.integers(-(1 << 20), 1 << 20, small.sum())
    bias = rng.integers(-(1 << 24), 1 << 24, n)
    acc = np.clip(total - bias, arith.ACC_MIN, arith.ACC_MAX)
    bias = total - acc
    m = rng.integers(0, arith.M_MAX, n, endpoint=True)
    s = rng.integers(arith.SHIFT_MIN, arith.SHIFT_MAX, n, endpoint=True)
    s[:arith.SHIFT_MAX] = np.arange(arith.SHIFT_MIN, arith.SHIFT_MAX + 1)
    corners = [(arith.ACC_MIN, 0, arith.M_MAX), (arith.ACC_MAX, 0, arith.M_MAX),
               (arith.ACC_MIN + 1, -1, arith.M_MAX), (0, arith.ACC_MAX, 1), (-1, 0, 0)]
    for i, (a, b, mm) in enumerate(corners):
        for j in range(arith.SHIFT_MIN, arith.SHIFT_MAX + 1):
            k = arith.SHIFT_MAX + i * arith.SHIFT_MAX + j - 1
            acc[k], bias[k], m[k], s[k] = a, b, mm, j
    return acc, bias, m, s


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dsp", [False, True])
def test_requantizer_exact(dsp, relu):
    # The generic target: the ECP5's and iCE40's primitives (DSP blocks, hard registers) are
    # simulated in Verilog (tests/test_dsp.py, and the whole core in the RTL tests).
    cfg = AcceleratorConfig(rows=1, cols=4, requant_lanes=2, requant_dsp=dsp)
    lanes = cfg.rq_lanes
    n = 1200
    acc, bias, m, s = vectors(n, seed=1 + dsp)
    want = arith.requantize(acc + bias, m, s, relu=relu, axis=0)
    dut = Requantizer(cfg, TAG)
    got = {}

    async def bench(ctx):
        ctx.set(dut.relu, relu)
        for cycle in range(n // lanes + Requantizer.LATENCY + 1):
            first = cycle * lanes
            if first < n:
                ctx.set(dut.i_valid, 1)
                ctx.set(dut.i_tag.n, first)
                for i in range(lanes):
                    ctx.set(dut.i_acc[i], int(acc[first + i]))
                    ctx.set(dut.i_params[i].bias, int(bias[first + i]))
                    ctx.set(dut.i_params[i].m, int(m[first + i]))
                    ctx.set(dut.i_params[i].shift, int(s[first + i]))
            else:
                ctx.set(dut.i_valid, 0)
            # The outputs of this cycle are the inputs of LATENCY cycles before.
            if ctx.get(dut.o_valid):
                tag = ctx.get(dut.o_tag.n)
                assert tag == (cycle - Requantizer.LATENCY) * lanes
                for i in range(lanes):
                    got[tag + i] = ctx.get(dut.o_data[i])
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert sorted(got) == list(range(n))
    assert [got[i] for i in range(n)] == want.tolist()
