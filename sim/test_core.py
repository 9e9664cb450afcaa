"""cocotb tests of `systolic.hw.core.Core`: whole layers through its streams, against the golden
model, many cases in one simulation.

The vectors come from the JSON file named by ``$SYSTOLIC_VECTORS`` (written by
``tests/test_core_rtl.py``)::

    {"load_addr_bits": int,
     "cases": [{"name": str,
                "loads": [[mem, addr, data], ...],     # memory writes (Mem value, int, int)
                "cmds": [int, ...],                    # packed layer descriptors, in order
                "predicted_cycles": [int, ...],        # optional: sw.perfmodel, per layer
                "read_base": int, "expected": [int, ...],   # activation words to read back
                "source": str, "sink": str, "seed": int,    # Backpressure patterns
                "reset_after": int or null}, ...]}     # cycles into the first layer

Every layer of a case with ``predicted_cycles`` must take exactly that many cycles (the core's
``cycles`` counter); the test fails after the last case, listing every layer that did not. With
``$SYSTOLIC_RESULTS`` set, the cycles of every layer of every passing case (and the predicted
ones) are written there as JSON.

A case with ``reset_after`` asserts reset that many cycles into its first layer and checks the
core is idle and ready afterwards; the next case must then pass exactly. Memories keep their
contents across a reset, as block RAM does.
"""

import json
import os

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, with_timeout
from systolic.sim.streams import Backpressure, StreamSink, StreamSource, reset, start_clock

PERIOD_NS = 10


class CoreTestbench:
    """Drivers for the load, command and read-back streams; monitor for read-back data."""

    def __init__(self, dut, addr_bits):
        self.dut = dut
        self.addr_bits = addr_bits
        self.clk = start_clock(dut, PERIOD_NS)
        self.load = StreamSource(dut, "load", self.clk)
        self.cmd = StreamSource(dut, "cmd", self.clk)
        self.rd_addr = StreamSource(dut, "rd_addr", self.clk)
        self.rd_data = StreamSink(dut, "rd_data", self.clk)
        self.layer_cycles = []

    def _layout_word(self, mem, addr, data):
        # The load payload (isa.load_layout): mem (2 bits), addr, data, from bit 0 up.
        return mem | addr << 2 | data << (2 + self.addr_bits)

    async def wait_idle(self):
        # `busy` rises in the second cycle after the command is taken.
        await ClockCycles(self.clk, 2)
        while True:
            await ReadOnly()
            if int(self.dut.busy.value) == 0:
                break
            await RisingEdge(self.clk)
        self.layer_cycles.append(int(self.dut.cycles.value))
        await RisingEdge(self.clk)

    async def run(self, case):
        """Load, execute, read back; returns the words read (``None`` for a reset case)."""
        self.load.pause = Backpressure(case["source"]).pauses(case["seed"])
        self.rd_addr.pause = Backpressure(case["source"]).pauses(case["seed"] + 1)
        self.rd_data.pause = Backpressure(case["sink"]).pauses(case["seed"] + 2)
        await self.load.send([self._layout_word(*beat) for beat in case["loads"]])
        for i, cmd in enumerate(case["cmds"]):
            await self.cmd.put(cmd)
            if i == 0 and case.get("reset_after") is not None:
                await ClockCycles(self.clk, case["reset_after"])
                await reset(self.dut, self.clk)
                await ReadOnly()
                assert int(self.dut.busy.value) == 0, "busy after a reset"
                assert int(self.dut.cmd__ready.value) == 1, "commands refused after a reset"
                assert int(self.dut.load__ready.value) == 1, "loads refused after a reset"
                await RisingEdge(self.clk)
                return None
            await self.wait_idle()
        n = len(case["expected"])
        receiving = cocotb.start_soon(self.rd_data.recv(n))
        await self.rd_addr.send([case["read_base"] + i for i in range(n)])
        return await receiving


def check_cycles(case, measured):
    """The layers of ``case`` whose cycles differ from the prediction, as messages."""
    predicted = case.get("predicted_cycles")
    if predicted is None:
        return []
    return [f"{case['name']} layer {i}: {m} cycles, predicted {p}"
            for i, (m, p) in enumerate(zip(measured, predicted, strict=True)) if m != p]


def check(case, got):
    """Compare every word (all lanes at once: the words are the packed int8 lanes)."""
    want = case["expected"]
    assert len(got) == len(want), f"{case['name']}: {len(got)} words, not {len(want)}"
    bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    if bad:
        shown = "; ".join(f"word {i}: {got[i]:#x} != {want[i]:#x}" for i in bad[:6])
        raise AssertionError(f"{case['name']}: {len(bad)} of {len(want)} words differ: {shown}")


@cocotb.test()
async def core_layers(dut):
    """Every case of the vector file, back to back in one simulation."""
    with open(os.environ["SYSTOLIC_VECTORS"]) as f:
        vectors = json.load(f)
    tb = CoreTestbench(dut, vectors["load_addr_bits"])
    await reset(dut, tb.clk)
    report, wrong_cycles = [], []
    for case in vectors["cases"]:
        t0 = get_sim_time("ns")
        budget = 50 * (len(case["loads"]) + len(case["expected"])) + case.get("budget", 200_000)
        got = await with_timeout(tb.run(case), budget * PERIOD_NS, "ns")
        cycles = round((get_sim_time("ns") - t0) / PERIOD_NS)
        dut._log.info("%s: %d cycles in all, layer cycles %s", case["name"], cycles,
                      tb.layer_cycles[-len(case["cmds"]):])
        if got is not None:
            check(case, [int(w) for w in got])
            measured = tb.layer_cycles[-len(case["cmds"]):]
            wrong_cycles += check_cycles(case, measured)
            report.append({"name": case["name"], "layer_cycles": measured,
                           "predicted_cycles": case.get("predicted_cycles")})
    if "SYSTOLIC_RESULTS" in os.environ:
        with open(os.environ["SYSTOLIC_RESULTS"], "w") as f:
            json.dump(report, f)
    if wrong_cycles:
        raise AssertionError(
            f"{len(wrong_cycles)} layers took other cycles than sw.perfmodel predicts: "
            + "; ".join(wrong_cycles[:12]))
