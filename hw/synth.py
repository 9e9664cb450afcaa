"""Out-of-context synthesis and place-and-route of one component with the YoWASP toolchain.

`synthesize` turns an Amaranth component into a `SynthReport`: resources used against the
device's totals and the clock frequency nextpnr achieved against the one it was asked for.
It runs Yosys (``synth_ecp5`` / ``synth_ice40 -dsp``) and nextpnr from the Python environment's
``bin`` directory (falling back to ``PATH``), keeping every input, output and log in
``workdir``.

A component's ports are not pins. On ECP5 nextpnr places and routes it out of context
(``--out-of-context``: no I/O buffers, ports stay dangling nets, no global clock promotion).
nextpnr-ice40 has no such mode, so there the component is wrapped in `PortFolder`, which
feeds every input from one shift register and XOR-folds every output bit, through registers,
onto a few pins: nothing can be optimized away and the wrapper adds no path slower than one
LUT between two flip-flops.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..sw.errors import SystolicError

__all__ = ["DEVICES", "ECP5_LUTS_OPTS", "FAMILIES", "FSM_ONE_HOT", "PortFolder", "SynthError",
           "SynthReport", "ecp5_classic_luts", "find_tool", "log_tail", "one_hot", "parse_report",
           "run_tool", "synthesize"]

#: The Yosys command that lets a state register marked ``fsm_encoding = "one-hot"`` be
#: recoded: `fsm_detect` passes over a register with an initial value, and Amaranth gives
#: every register one. The register's reset still puts the machine in its first state.
FSM_ONE_HOT = "setattr -unset init a:fsm_encoding=one-hot"

#: Yosys 0.70's `abc9` (`synth_ecp5`'s LUT mapping) fails an assertion reintegrating the
#: board designs now and then (`GetSize(conn.first) == GetSize(conn.second)` in rtlil.cc:
#: the 12x12 design, and the 8x16's with the controller's per-lane copies of a WRITE's lane
#: count); the classic `abc` maps the same logic. `synth_ecp5` with these options runs up to
#: its LUT mapping, and `ecp5_classic_luts` carries on from there.
ECP5_LUTS_OPTS = "-run :map_luts"


def ecp5_classic_luts(top):
    """The Yosys commands after ``synth_ecp5 {ECP5_LUTS_OPTS}``: the classic `abc` maps the
    LUTs, and `synth_ecp5` goes on from its cell mapping. One definition for the board build
    and the netlist simulations (`systolic.hw.netlist`), so that both map the same way."""
    return ("techmap -map +/lattice/latches_map.v\n"
            "abc -lut 4:7 -dress\n"
            "clean\n"
            f"synth_ecp5 -top {top} -run map_cells:\n")


def one_hot(fsm, target):
    """Ask for ``fsm`` (an Amaranth ``m.FSM()``, after its block) to be built one-hot on the
    ECP5: a flip-flop a state, so that a state's logic starts from a flip-flop rather than
    from a decoder of the state register, whose fan-out it spreads (`FSM_ONE_HOT` lets Yosys
    recode it). Elsewhere nothing changes: the iCE40 is short of cells, not of levels."""
    if target == "ecp5":
        fsm.state.attrs["fsm_encoding"] = "one-hot"

#: Devices each family's nextpnr accepts (the ``--<device>`` flag) and its default package.
DEVICES = {
    "ecp5": {"12k": "CABGA381", "25k": "CABGA381", "45k": "CABGA381", "85k": "CABGA381",
             "um-25k": "CABGA381", "um-45k": "CABGA381", "um-85k": "CABGA381",
             "um5g-25k": "CABGA381", "um5g-45k": "CABGA381", "um5g-85k": "CABGA381"},
    "ice40": {"up5k": "sg48", "up3k": "sg48", "u4k": "sg48", "hx8k": "ct256", "lp8k": "cm81",
              "hx4k": "tq144", "hx1k": "tq144", "lp4k": "cm81", "lp1k": "cm81",
              "lp384": "qn32"},
}
FAMILIES = tuple(DEVICES)

# nextpnr's cell types, per family, for each resource the report counts.
_CELLS = {
    "ecp5": {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "dsps": "MULT18X18D",
             "brams": "DP16KD"},
    "ice40": {"luts": "ICESTORM_LC", "ffs": None, "dsps": "ICESTORM_DSP",
              "brams": "ICESTORM_RAM", "sprams": "ICESTORM_SPRAM"},
}


class SynthError(SystolicError):
    """A tool is missing or failed; the message quotes the end of its log."""


@dataclass
class SynthReport:
    """What one synthesis and place-and-route run used and achieved.

    Attributes
    ----------
    name, family, device, package : str
        The design's top-level name and where it was placed.
    luts : int
        ECP5: LUT4 slots (``TRELLIS_COMB``, including carry-chain halves). iCE40: logic cells
        (``ICESTORM_LC``, each a LUT4 and a flip-flop).
    ffs : int
        Flip-flops in the fabric (ECP5 ``TRELLIS_FF``; iCE40 ``SB_DFF*`` cells after synthesis).
        Registers inside DSP blocks are not counted.
    dsps : int
        ``MULT18X18D`` (ECP5) or ``SB_MAC16`` / ``ICESTORM_DSP`` (iCE40) blocks.
    brams : int
        ``DP16KD`` (ECP5) or ``ICESTORM_RAM`` (iCE40) block RAMs.
    sprams : int
        ``ICESTORM_SPRAM`` (iCE40 UltraPlus; 0 on ECP5).
    fmax_mhz : float or None
        Lowest achieved frequency over the design's clocks; None if it has no clocked paths.
    target_mhz : float
        The frequency nextpnr was constrained to (``--freq``).
    timing_met : bool
        ``fmax_mhz >= target_mhz`` (True for a design without clocked paths).
    totals : dict of str to int
        Device capacity for ``luts``, ``ffs``, ``dsps``, ``brams`` and ``sprams``.
    utilization : dict of str to dict
        nextpnr's raw ``utilization`` record: cell type → ``{"used": n, "available": m}``.
    fmax : dict of str to dict
        nextpnr's raw ``fmax`` record: clock → ``{"achieved": f, "constraint": f}``.
    critical_path : list of dict
        The slowest clock's critical path from nextpnr's report: segments with ``type``
        (``clk-to-q``, ``logic``, ``routing``, ``setup``), ``delay`` in ns, ``from``/``to``.
    workdir : pathlib.Path
        Where the Verilog, netlists, reports and logs are.
    out_of_context : bool
        Whether the component was placed out of context (else wrapped in `PortFolder`).
    """

    name: str
    family: str
    device: str
    package: str
    luts: int
    ffs: int
    dsps: int
    brams: int
    sprams: int
    fmax_mhz: float | None
    target_mhz: float
    timing_met: bool
    totals: dict
    utilization: dict = field(repr=False)
    fmax: dict = field(repr=False)
    critical_path: list = field(repr=False)
    workdir: Path = field(repr=False)
    out_of_context: bool = True

    def summary(self):
        """One line: resources against totals and fmax against target."""
        fmax = "n/a" if self.fmax_mhz is None else f"{self.fmax_mhz:.1f}"
        verdict = "met" if self.timing_met else "FAILED"
        return (f"{self.name} on {self.family}-{self.device}: "
                f"LUT {self.luts}/{self.totals['luts']}, FF {self.ffs}/{self.totals['ffs']}, "
                f"DSP {self.dsps}/{self.totals['dsps']}, BRAM {self.brams}/{self.totals['brams']}; "
                f"fmax {fmax} MHz, target {self.target_mhz:g} MHz ({verdict})")

    def format_critical_path(self, min_delay=0.15):
        """The critical path, one segment a line: type, delay, running total (ns), from -> to.

        Runs of segments shorter than ``min_delay`` (carry-chain hops) are folded into one line.
        """
        lines, total, skipped, skipped_ns = [], 0.0, 0, 0.0
        for seg in self.critical_path:
            delay = seg.get("delay", 0.0)
            total += delay
            if delay < min_delay and seg.get("type") not in ("clk-to-q", "setup"):
                skipped, skipped_ns = skipped + 1, skipped_ns + delay
                continue
            if skipped:
                lines.append(f"{'...':>9} {skipped_ns:6.2f} {total - delay:6.2f}  "
                             f"({skipped} short segments)")
                skipped, skipped_ns = 0, 0.0
            src, dst = seg.get("from", {}), seg.get("to", {})
            lines.append(f"{seg.get('type', '?'):>9} {delay:6.2f} {total:6.2f}  "
                         f"{src.get('cell', '?')}.{src.get('port', '?')} -> "
                         f"{dst.get('cell', '?')}.{dst.get('port', '?')}")
        return "\n".join(lines)


class PortFolder(wiring.Component):
    """Wrap a component so its ports fit a package: inputs by shift register, outputs folded.

    Every input bit of ``component`` is one stage of a shift register fed from ``si``; every
    output bit is registered, then XOR-reduced four to one per register stage until at most
    ``width`` bits remain on ``so``. Each bit of the component therefore reaches a pin and none
    of its logic can be optimized away; the wrapper's own paths are one LUT between flip-flops.

    Parameters
    ----------
    component : wiring.Component
        The design, clocked by the ``sync`` domain.
    width : int
        Output pins.

    Members
    -------
    si : In(1)
        Serial input of the shift register.
    so : Out(width)
        Folded outputs.
    """

    def __init__(self, component, width=8):
        self.component = component
        self.width = width
        super().__init__({"si": In(1), "so": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.component
        ins, outs = [], []
        for _path, member, value in dut.signature.flatten(dut):
            # A port of a struct or enum shape is a view: its bits are what get folded.
            (ins if member.flow == wiring.Flow.In else outs).append(Value.cast(value))
        n_in = sum(len(v) for v in ins)
        if n_in:
            chain = Signal(n_in, reset_less=True)
            m.d.sync += chain.eq(Cat(self.si, chain[:-1]))
            offset = 0
            for v in ins:
                m.d.comb += v.eq(chain[offset:offset + len(v)])
                offset += len(v)
        level = Signal(len(Cat(*outs)), reset_less=True)
        m.d.sync += level.eq(Cat(*outs))
        while len(level) > self.width:
            n = (len(level) + 3) // 4
            nxt = Signal(n, reset_less=True)
            m.d.sync += [nxt[i].eq(level[4 * i:4 * i + 4].xor()) for i in range(n)]
            level = nxt
        m.d.comb += self.so.eq(level)
        return m


def synthesize(component, *, family="ecp5", device=None, package=None, clock_mhz=150,
               workdir, name="top", out_of_context=None, seed=1, progress=True):
    """Synthesize, place and route ``component``; return what it used and how fast it runs.

    Parameters
    ----------
    component : wiring.Component
        The design, clocked by the ``sync`` domain; its ports come from its signature.
    family : str
        ``ecp5`` or ``ice40``.
    device : str, optional
        nextpnr device flag without dashes (``85k``, ``25k``, ``up5k``, ...); default ``85k``
        for ECP5 and ``up5k`` for iCE40.
    package : str, optional
        Device package; default ``CABGA381`` (ECP5) or the device's usual one (``sg48`` for
        the UP5K).
    clock_mhz : float
        Frequency nextpnr is constrained to; the report says whether it was met.
    workdir : str or os.PathLike
        Directory for the Verilog, netlists, reports and logs (created if missing).
    name : str
        Top-level module name.
    out_of_context : bool, optional
        Place the bare component out of context (ECP5 only; the default there). When False, or
        on iCE40, the component is wrapped in `PortFolder`.
    seed : int
        nextpnr placer seed.
    progress : bool
        Show a status line while nextpnr runs (on a terminal).

    Returns
    -------
    SynthReport

    Raises
    ------
    SynthError
        If the family, device or clock is invalid, a tool is missing, or a tool fails.
    """
    if family not in DEVICES:
        raise SynthError(f"Family must be one of {', '.join(FAMILIES)}, not {family!r}")
    device = device or {"ecp5": "85k", "ice40": "up5k"}[family]
    if device not in DEVICES[family]:
        raise SynthError(f"Device for {family} must be one of {', '.join(DEVICES[family])}, "
                         f"not {device!r}")
    package = package or DEVICES[family][device]
    if not isinstance(clock_mhz, int | float) or not 1 <= clock_mhz <= 1000:
        raise SynthError(f"Clock frequency must be between 1 and 1000 MHz, not {clock_mhz!r}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise SynthError(f"Top-level name must be a Verilog identifier, not {name!r}")
    if out_of_context is None:
        out_of_context = family == "ecp5"
    if out_of_context and family != "ecp5":
        raise SynthError(f"Out-of-context place and route is available for ecp5 only, "
                         f"not {family!r}; pass out_of_context=False")

    # Find both tools before spending time on conversion and synthesis.
    yosys, nextpnr = find_tool("yosys"), find_tool(f"nextpnr-{family}")

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    top = component if out_of_context else PortFolder(component)
    (workdir / f"{name}.v").write_text(verilog.convert(top, name=name))

    (workdir / "synth.ys").write_text(_yosys_script(family, name))
    run_tool(yosys, "yosys", ["-q", "-l", "yosys.log", "-s", "synth.ys"], workdir, "yosys.log")

    pnr_args = [f"--{device}", "--package", package, "--json", f"{name}.json",
                "--freq", f"{clock_mhz:g}", "--report", "report.json", "--timing-allow-fail",
                "--seed", str(seed), "--log", "nextpnr.log"]
    if family == "ecp5":
        pnr_args += ["--out-of-context"] if out_of_context else ["--lpf-allow-unconstrained"]
    else:
        pnr_args += ["--pcf-allow-unconstrained"]
    run_tool(nextpnr, f"nextpnr-{family}", pnr_args, workdir, "nextpnr.log", progress=progress)

    return parse_report(workdir, name=name, family=family, device=device, package=package,
                  clock_mhz=float(clock_mhz), out_of_context=out_of_context)


def _yosys_script(family, name):
    if family == "ecp5":
        synth = [f"synth_ecp5 -top {name}"]
    else:
        # `synth_ice40 -dsp` infers SB_MAC16 for `*`, but its ice40_dsp pass also takes every
        # SB_MAC16 instantiated by hand and rewrites its parameters (registers off, 16 x 16
        # mode), silently changing function and latency. The hand-made ones are hidden under
        # another cell type for the passes after flattening and restored at the end.
        synth = [
            f"synth_ice40 -dsp -top {name} -run begin:coarse",
            "copy SB_MAC16 HARD_SB_MAC16",
            "chtype -set HARD_SB_MAC16 t:SB_MAC16",
            f"synth_ice40 -dsp -top {name} -run coarse:",
            "chtype -set SB_MAC16 t:HARD_SB_MAC16",
            "delete *HARD_SB_MAC16",
        ]
    return "\n".join([f"read_verilog -sv {name}.v", *synth, "tee -q -o stat.json stat -json",
                      f"write_json {name}.json", ""])


# Tools ------------------------------------------------------------------------------------------

def find_tool(name):
    """The YoWASP tool ``name`` (``yosys``, ``nextpnr-ecp5``, ...): next to this Python, else on
    ``PATH``; `SynthError` naming the package to install if neither has it."""
    exe = f"yowasp-{name}"
    local = Path(sys.executable).parent / exe
    if local.exists():
        return str(local)
    found = shutil.which(exe)
    if found is None:
        raise SynthError(f"{exe} not found next to {sys.executable} or on PATH; "
                         f"install it with `pip install yowasp-{name.split('-')[0]}"
                         f"{'' if name == 'yosys' else '-' + name.split('-')[1]}`")
    return found


def log_tail(path, lines=20):
    """The last ``lines`` lines of the log at ``path`` (``(no log)`` if unreadable)."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def run_tool(exe, tool, args, cwd, log, *, progress=False):
    """Run ``exe args`` in ``cwd``, its output into ``<tool>.out``; `SynthError` quoting the end
    of ``log`` (or of that output) if it fails. ``progress`` shows a status line."""
    out = Path(cwd) / f"{tool}.out"
    with open(out, "w") as stdout:
        proc = subprocess.Popen([exe, *args], cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT,
                                env={**os.environ, "YOWASP_MTIME": "0"})
        if progress:
            _spin(proc, Path(cwd) / log, tool)
        rc = proc.wait()
    if rc != 0:
        tail = log_tail(Path(cwd) / log) if (Path(cwd) / log).exists() else log_tail(out)
        raise SynthError(f"{tool} failed with exit code {rc} in {cwd}; end of its log:\n{tail}")


def _spin(proc, log, tool):
    from tqdm import tqdm

    start = time.monotonic()
    with tqdm(total=None, desc=tool, bar_format="{desc}: {elapsed} {postfix}", disable=None,
              leave=False) as bar:
        while proc.poll() is None:
            time.sleep(0.5)
            phase = ""
            for line in reversed(log_tail(log, 40).splitlines()):
                if line.startswith("Info: ") and ("Running" in line or "Routing" in line
                                                  or "placer" in line or "Packing" in line):
                    phase = line[6:60]
                    break
            bar.set_postfix_str(phase, refresh=False)
            bar.update(0)
            bar.refresh()
        bar.set_postfix_str(f"done in {time.monotonic() - start:.0f} s")


# Report -----------------------------------------------------------------------------------------

def parse_report(workdir, *, name, family, device, package, clock_mhz, out_of_context):
    """The `SynthReport` of the nextpnr run in ``workdir`` (its ``report.json``, and Yosys's
    ``stat.json`` on iCE40); `SynthError` if the report is missing."""
    try:
        report = json.loads((workdir / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise SynthError(f"nextpnr's report {workdir / 'report.json'} is missing or not JSON "
                         f"({e}); end of its log:\n{log_tail(workdir / 'nextpnr.log')}") from None
    util = report.get("utilization", {})

    def used(cell):
        return util.get(cell, {}).get("used", 0) if cell else 0

    def avail(cell):
        return util.get(cell, {}).get("available", 0) if cell else 0

    cells = _CELLS[family]
    if family == "ice40":
        ffs = _yosys_ffs(workdir / "stat.json", name)
        ff_total = avail("ICESTORM_LC")
    else:
        ffs, ff_total = used(cells["ffs"]), avail(cells["ffs"])

    fmax = report.get("fmax", {})
    achieved = [c["achieved"] for c in fmax.values() if "achieved" in c]
    fmax_mhz = min(achieved) if achieved else None
    critical = []
    if fmax:
        slowest = min(fmax, key=lambda c: fmax[c].get("achieved", float("inf")))
        for cp in report.get("critical_paths", []):
            if cp.get("from", "").endswith(slowest) or cp.get("to", "").endswith(slowest):
                critical = cp.get("path", [])
                break
    return SynthReport(
        name=name, family=family, device=device, package=package,
        luts=used(cells["luts"]), ffs=ffs, dsps=used(cells["dsps"]),
        brams=used(cells["brams"]), sprams=used(cells.get("sprams")),
        fmax_mhz=fmax_mhz, target_mhz=clock_mhz,
        timing_met=fmax_mhz is None or fmax_mhz >= clock_mhz,
        totals={"luts": avail(cells["luts"]), "ffs": ff_total, "dsps": avail(cells["dsps"]),
                "brams": avail(cells["brams"]), "sprams": avail(cells.get("sprams"))},
        utilization=util, fmax=fmax, critical_path=critical, workdir=workdir,
        out_of_context=out_of_context,
    )


def _yosys_ffs(stat_path, name):
    try:
        stat = json.loads(Path(stat_path).read_text())
    except (OSError, ValueError):
        return 0
    module = stat.get("design", {}) or stat.get("modules", {}).get(f"\\{name}", {})
    cells = module.get("num_cells_by_type", {})
    return sum(n for cell, n in cells.items() if cell.startswith("SB_DFF"))
