"""The stream monitor of `systolic.sim.streams` catches handshake violations, on Icarus and
Verilator: a payload or ``valid`` that changes while a beat waits for ``ready``, and an X or Z
on ``valid`` or ``ready`` (Icarus only: Verilator has no X or Z). Each fails its cocotb test
with a message naming the stream and the cycle; a design that keeps the rules passes."""

import os
import re
import shutil
from pathlib import Path

import pytest
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from systolic.sim.runner import SimulationError, parametrize_simulators, run_cocotb


class RuleBreaker(wiring.Component):
    """A stream source that breaks the handshake rules on request (``mode``, see
    ``sim/test_stream_monitor.py``), and a stream sink whose ``ready`` is the pin ``ext_ready``.
    """

    o_stream: Out(stream.Signature(8))
    i_stream: In(stream.Signature(8))
    mode: In(2)
    ext_valid: In(1)
    ext_ready: In(1)

    def elaborate(self, platform):
        m = Module()
        count, stalled = Signal(8), Signal()
        m.d.sync += stalled.eq(self.o_stream.valid & ~self.o_stream.ready)
        with m.If((self.mode == 1) | (self.o_stream.valid & self.o_stream.ready)):
            m.d.sync += count.eq(count + 1)
        m.d.comb += [
            self.o_stream.payload.eq(count),
            self.o_stream.valid.eq(Mux(self.mode == 3, self.ext_valid,
                                       Mux(self.mode == 2, ~stalled, 1))),
            self.i_stream.ready.eq(self.ext_ready),
        ]
        return m


CYCLE = r"^Stream (\w+), cycle \d+ \(\d+ ns\): "
EXPECTED = {
    "payload_changes_while_stalled": CYCLE + r"payload changed from [01]{8} to [01]{8} while "
                                             r"valid was high and ready low",
    "valid_falls_while_stalled": CYCLE + r"valid fell while a beat \(payload [01]{8}\) waited "
                                         r"for ready",
    "x_on_valid": CYCLE + r"valid must be 0 or 1, not [xX]$",
    "z_on_ready": CYCLE + r"ready must be 0 or 1, not [zZ]$",
}
STREAM = {"z_on_ready": "i_stream"}
FOUR_STATE = ("x_on_valid", "z_on_ready")


@parametrize_simulators
def test_monitor_catches_violations(sim):
    tests = ["keeps_the_rules", *(t for t in EXPECTED if sim == "icarus" or t not in FOUR_STATE)]
    with pytest.raises(SimulationError) as info:
        run_cocotb(RuleBreaker(), name="rule_breaker", test_module="test_stream_monitor",
                   sim=sim, testcase=tests, timeout=120)
    # The failing run kept its directory for a user to look at; the suite leaves none behind.
    results = Path(re.search(r"cocotb tests failed on \w+ \((\S+)\):", str(info.value))[1])
    assert results.parent.name == f"run-{os.getpid()}"
    shutil.rmtree(results.parent)
    failed = dict(re.findall(r"^  (\w+): (.*)$", str(info.value), re.MULTILINE))
    assert set(failed) == set(tests) - {"keeps_the_rules"}, str(info.value)
    for name, message in failed.items():
        match = re.match(EXPECTED[name], message)
        assert match, f"{name}: {message}"
        assert match[1] == STREAM.get(name, "o_stream"), message
