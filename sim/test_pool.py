"""cocotb tests of `systolic.hw.pool.PoolEngine`: many layers in one simulation.

The vectors come from the JSON file named by ``$SYSTOLIC_VECTORS`` (written by
``tests/test_pool_rtl.py``)::

    {"cols": 4, "latency": int (PoolEngine.latency),
     "cases": [{"name": str, "cmd": int (pack_descriptor), "inputs": [[lane, ...], ...],
                "expected": [[lane, ...], ...], "source": str, "sink": str, "seed": int,
                "reset_after": int or null}, ...]}

``source`` and ``sink`` name `Backpressure` patterns. A case with ``reset_after`` asserts reset
once that many input words have been taken, in the middle of the layer, and checks that the
engine is idle afterwards; the next case must then pass exactly.
"""

import json
import os

import cocotb
from amaranth.hdl import signed
from amaranth.lib import data
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge, with_timeout
from systolic.sim.streams import Backpressure, StreamSink, StreamSource, reset, start_clock

PERIOD_NS = 10


class PoolTestbench:
    """Driver (command and input streams), monitor (output stream) and checker for one DUT."""

    def __init__(self, dut, cols):
        self.dut = dut
        self.clk = start_clock(dut, PERIOD_NS)
        word = data.ArrayLayout(signed(8), cols)
        self.cmd = StreamSource(dut, "cmd", self.clk)
        self.source = StreamSource(dut, "i_stream", self.clk, layout=word)
        self.sink = StreamSink(dut, "o_stream", self.clk, layout=word)

    async def run(self, case):
        """Run one layer; return the output words (``None`` for a reset case)."""
        self.source.pause = Backpressure(case["source"]).pauses(case["seed"])
        self.sink.pause = Backpressure(case["sink"]).pauses(case["seed"] + 1)
        await self.cmd.put(case["cmd"])
        receiving = cocotb.start_soon(self.sink.recv(len(case["expected"])))
        sending = cocotb.start_soon(self.source.send(case["inputs"]))
        if case.get("reset_after") is not None:
            await self._reset_mid_layer(case["reset_after"], sending, receiving)
            return None
        await sending
        return await receiving

    async def _reset_mid_layer(self, after, *tasks):
        start = self.source.beats
        while self.source.beats - start < after:
            await RisingEdge(self.clk)
        for task in tasks:
            task.cancel()
        self.source.idle()
        self.sink.idle()
        await reset(self.dut, self.clk)
        await ReadOnly()
        assert int(self.dut.busy.value) == 0, "busy after a reset"
        assert int(self.dut.cmd__ready.value) == 1, "command not accepted after a reset"
        assert int(self.dut.o_stream__valid.value) == 0, "output valid after a reset"
        await RisingEdge(self.clk)


def check(case, got):
    """Compare every lane of every output word; the message locates the first mismatches."""
    want = case["expected"]
    assert len(got) == len(want), f"{case['name']}: {len(got)} words out, not {len(want)}"
    bad = [(i, lane, g, w) for i, (gw, ww) in enumerate(zip(got, want, strict=True))
           for lane, (g, w) in enumerate(zip(gw, ww, strict=True)) if g != w]
    if bad:
        shown = "; ".join(f"word {i} lane {lane}: {g} != {w}" for i, lane, g, w in bad[:8])
        raise AssertionError(
            f"{case['name']}: {len(bad)} of {len(want) * len(want[0])} values differ: {shown}")


@cocotb.test()
async def pool_layers(dut):
    """Every case of the vector file, back to back in one simulation."""
    with open(os.environ["SYSTOLIC_VECTORS"]) as f:
        vectors = json.load(f)
    tb = PoolTestbench(dut, vectors["cols"])
    await reset(dut, tb.clk)
    for case in vectors["cases"]:
        words = len(case["inputs"]) + len(case["expected"])
        t0 = get_sim_time("ns")
        got = await with_timeout(tb.run(case), (100 * words + 1000) * PERIOD_NS, "ns")
        cycles = round((get_sim_time("ns") - t0) / PERIOD_NS)
        dut._log.info("%s: %d words in, %d cycles", case["name"], len(case["inputs"]), cycles)
        if got is None:
            continue
        check(case, got)
        if case["source"] == case["sink"] == "none":
            # One word per cycle: the command, the input and the pipeline's latency, and what
            # the previous layer's windows still drained after its last output word (rows
            # and columns past its last window; `perfmodel.pool_tail` has the exact cycles).
            limit = len(case["inputs"]) + vectors["latency"] + 6
            assert cycles <= limit, f"{case['name']}: {cycles} cycles, more than {limit}"
