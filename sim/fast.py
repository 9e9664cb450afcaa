"""The fast harness: whole networks on Verilator, with Python touching frames, not cycles.

A cocotb testbench runs Python on every clock edge; a whole network at that pace is a few
images a second. Here the design (the `Controller`, or the `VirtualBoard` with its UART pins)
is compiled by Verilator together with a small C++ harness (``fast_harness.cpp``) that drives
the clock, feeds the request bytes the host queued and collects the reply bytes, and wakes the
host only when a reply is complete. The host side is the ordinary driver: `HarnessLink` is a
`systolic.sw.driver.Link`, so `FramedTransport` and `Driver` run unchanged over it, the same
code that talks to a board over a serial port.

Builds are cached like the cocotb ones (`systolic.sim.runner.build_root`), per design and
harness options; a second run of the same design starts at once.
"""

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import select
import shutil
import struct
import subprocess
import time
import weakref
from pathlib import Path

from amaranth._unused import MustUse

from ..hw.isa import Request
from ..sw import protocol
from ..sw.driver import RESYNC_QUIET_BITS, Link
from .runner import (
    VERILATOR_ARGS,
    SimulationError,
    build_root,
    compiler_cache_env,
    find_verilator,
    locked,
    simulation_verilog,
)

__all__ = ["BAD_STOP", "BREAK", "BYTE", "IDLE", "LINE_FAULT", "STREAM_TIMEOUT_CYCLES", "Harness",
           "HarnessLink", "bare_loop_rate", "build_harness", "damaged", "network_top",
           "verilog_file"]

_HERE = Path(__file__).resolve().parent
_SOURCE = _HERE / "fast_harness.cpp"
_BARE_SOURCE = _HERE / "fast_bare.cpp"

#: Symbol kinds the harness puts on the design's input (see ``fast_harness.cpp``).
BYTE, BAD_STOP, BREAK, IDLE, LINE_FAULT = range(5)
#: The byte-stream controller's frame timeout here (and on the cocotb route, which simulates the
#: same design): the harness queues every frame whole, so no frame pauses for long, and a frame
#: cut short on purpose (fuzzing) is answered soon.
STREAM_TIMEOUT_CYCLES = 1024
#: C++ optimization of the model and harness (Verilator's own default is -Os);
#: ``$SYSTOLIC_FAST_CXX_OPT`` overrides it, and a caller's own choice (the test suite compiles at
#: -O0: its runs are short, and -O0 compiles in a third to a half of -O1's time).
#: ``$SYSTOLIC_FAST_UART_CXX_OPT`` overrides that again for a top with UART pins (a virtual
#: board), whose runs clock `divisor` cycles a bit and so are long even when few.
_CXX_OPT = "-O2"
# Verilator's output for the designs here has a few large functions: -O2 compiles them in about
# a minute on this machine and runs as fast as -O3.


# `network_top`'s designs and what each is made from (its arguments), for `_verilog_text`.
_DESIGN_KEYS = weakref.WeakKeyDictionary()


@functools.cache
def _sources_digest():
    """What an Amaranth design of this package is made from besides its arguments: the
    package's Python sources and Amaranth's version (read once a process: every build and
    every simulation asks)."""
    h = hashlib.sha256(importlib.metadata.version("amaranth").encode())
    for package in ("hw", "sw", "sim"):
        for f in sorted((_HERE.parent / package).glob("*.py")):
            h.update(f"\n{package}/{f.name}\n".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _silence(obj, seen=None):
    """No "created but never used" warning for ``obj`` and the elaboratables it holds."""
    seen = set() if seen is None else seen
    if id(obj) in seen or not isinstance(obj, MustUse):
        return
    seen.add(id(obj))
    obj._MustUse__silence = True
    for value in vars(obj).values():
        _silence(value, seen)


def _kept_verilog(top, name, key):
    """The file holding ``top``'s Verilog under ``build/sim/verilog``, named by a hash of
    ``key`` (what ``top`` was made from), ``name`` and `_sources_digest`; converted the first
    time."""
    digest = hashlib.sha256(json.dumps([key, name, _sources_digest()]).encode()).hexdigest()
    path = build_root() / "verilog" / f"{name}-{digest[:16]}.v"
    if path.is_file():
        _silence(top)
        return path
    text = simulation_verilog(top, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)               # whole or not at all, whoever writes it first
    return path


def _verilog_text(top, name):
    """``top``'s Verilog. A `network_top` design's is kept in the build directory
    (`_kept_verilog`): converting the default design takes Amaranth 15 to 30 s, and every
    simulation of it would otherwise convert it again to find its build."""
    if isinstance(top, (str, Path)):
        return Path(top).read_text()
    key = _DESIGN_KEYS.get(top)
    if key is None:
        return simulation_verilog(top, name)
    return _kept_verilog(top, name, key).read_text()


def verilog_file(top, name):
    """The Verilog file of a `network_top` design ``top`` (module ``name``) for a simulator
    that takes files: the one the fast harness builds from, converted once and kept, so the
    cocotb route simulates the same design and finds its build without converting it again."""
    return _kept_verilog(top, name, _DESIGN_KEYS[top])


def network_top(cfg, uart=None):
    """The design whole networks are simulated on: ``(top, name, divisor)``.

    The `Controller` with `STREAM_TIMEOUT_CYCLES` (its byte streams; ``divisor`` ``None``),
    or with ``uart = (clk_hz, baud)`` the `VirtualBoard` (its UART pins, ``divisor`` clock
    cycles a bit, a board's frame timeout). `systolic.sw.simulate` and `systolic.sim.fuzz`
    share it, and so share its build (and its Verilog, which `build_harness` converts once).
    """
    from ..hw.controller import Controller
    from ..hw.virtual import VirtualBoard

    if uart is None:
        top, name, divisor = (Controller(cfg, timeout_cycles=STREAM_TIMEOUT_CYCLES),
                              "controller", None)
    else:
        top = VirtualBoard(cfg, clk_freq=uart[0], baud=uart[1])
        name, divisor = "virtual_board", top.bridge.divisor
    _DESIGN_KEYS[top] = ["network_top", cfg.as_dict(), uart and list(uart),
                         STREAM_TIMEOUT_CYCLES]
    return top, name, divisor


def _check_lz4():
    probe = subprocess.run([os.environ.get("CXX", "g++"), "-x", "c++", "-E", "-"],
                           input=b"#include <lz4.h>\n", capture_output=True)
    if probe.returncode != 0:
        raise SimulationError(
            "FST waveforms need LZ4's header (Verilator's FST writer compiles against it); "
            "install it, e.g. `apt-get install liblz4-dev` (scripts/setup.sh does)")


_PORT = re.compile(r"^\s*(input|output|inout)\s+(?:wire\s+|reg\s+)?(\[[^\]]*\]\s*)?"
                   r"(\\\S+|[A-Za-z_][\w$]*)\s*;", re.M)


def _reset_wrapper(text, name):
    """A module ``fast_top`` around ``name`` (in ``text``) that takes its ``rst`` input into a
    register, or ``None`` when ``name`` has no ``clk`` and ``rst`` inputs.

    Verilator runs the logic that depends on a top-level input (its "input combo" region)
    on every ``eval()``, twice a clock. Amaranth's Verilog computes every register's next value
    in an ``always @*`` block ending ``if (rst) ... = reset``, so with ``rst`` an input all of
    the design's next-state logic ran there as well: a quarter of the model's time (the bare
    loop over the default design: 0.82 of its time with the register). The register delays the
    reset by one cycle; the harness clocks one idle cycle after it lets ``rst`` go.
    """
    head = re.search(rf"^module\s+{re.escape(name)}\s*\(", text, re.M)
    if head is None:
        return None
    body = text[head.end():text.index("endmodule", head.end())]
    ports = [(d, w.strip(), n) for d, w, n in _PORT.findall(body)]
    if not {("input", "clk"), ("input", "rst")} <= {(d, n) for d, _, n in ports}:
        return None
    ref = lambda n: n + " " if n.startswith("\\") else n     # noqa: E731 (escaped names)
    lines = [f"module fast_top({', '.join(ref(n) for _, _, n in ports)});"]
    lines += [f"  {d} {w + ' ' if w else ''}{ref(n)};" for d, w, n in ports]
    lines += ["  reg fast_rst = 1'b1;", "  always @(posedge clk) fast_rst <= rst;",
              f"  {ref(name)} {ref(name)} ("
              + ", ".join(f".{ref(n)}({'fast_rst' if n == 'rst' else ref(n)})"
                          for _, _, n in ports) + ");",
              "endmodule", ""]
    return "\n".join(lines)


def build_harness(top, *, name, uart_divisor=None, waves=False, source=_SOURCE, progress=None,
                  models=(), includes=(), defines=None, cxx_opt=None):
    """Compile ``top`` with the harness into an executable; return its path (cached).

    Parameters
    ----------
    top : amaranth.lib.wiring.Component or path
        The `Controller` (``rx``/``tx`` byte streams, ``line_fault``), or with
        ``uart_divisor`` the `VirtualBoard` (``uart_rx``/``uart_tx`` pins); or a Verilog file
        holding such a module (a synthesized netlist, say).
    name : str
        Its Verilog module name.
    uart_divisor : int or None
        Clock cycles a bit on the UART pins; ``None`` for a byte-stream top.
    waves : bool
        Build with FST waveform recording (slower; off until the host asks for it).
    progress : callable or None
        Called with a line of text when a build starts.
    models, includes, defines
        For a netlist (`systolic.hw.netlist.Netlist`): the cell models' Verilog files, their
        include directories and preprocessor defines.
    cxx_opt : str or None
        The C++ optimization (a netlist of cells compiles far faster at ``-O1``); ``None``:
        ``-O2``. ``$SYSTOLIC_FAST_CXX_OPT``, when set, overrides either, and
        ``$SYSTOLIC_FAST_UART_CXX_OPT`` all of them for a top with ``uart_divisor``.

    Raises
    ------
    SimulationError
        When Verilator is missing or the build fails (the log's tail is in the message).
    """
    find_verilator()
    cxx_opt = ((uart_divisor and os.environ.get("SYSTOLIC_FAST_UART_CXX_OPT"))
               or os.environ.get("SYSTOLIC_FAST_CXX_OPT") or cxx_opt or _CXX_OPT)
    if waves:
        _check_lz4()
    text = _verilog_text(top, name)
    cdefs = [f"-DDIVISOR={int(uart_divisor)}", "-DHARNESS_UART"] if uart_divisor else []
    if waves:
        cdefs.append("-DHARNESS_TRACE")
    wrapper = _reset_wrapper(text, name)
    flags = [*VERILATOR_ARGS, "--prefix", "Vtop", "--top-module",
             name if wrapper is None else "fast_top"]
    if waves:
        flags.append("--trace-fst")
    flags += [f"-I{Path(d).resolve()}" for d in includes]
    flags += [f"+define+{k}" + ("" if v is None else f"={v}") for k, v in (defines or {}).items()]
    models = [Path(m).resolve() for m in models]
    harness_text = source.read_text()
    digest = hashlib.sha256(json.dumps([text, wrapper, harness_text, cdefs, flags, cxx_opt,
                                        [m.read_text() for m in models]])
                            .encode()).hexdigest()[:16]
    build_dir = build_root() / f"fast-{name}-{digest}"
    exe = build_dir / "harness"
    with locked(build_dir.with_name(build_dir.name + ".lock")):
        if exe.is_file():
            return exe
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True)
        (build_dir / f"{name}.v").write_text(text)
        sources = [f"{name}.v"]
        if wrapper is not None:
            (build_dir / "fast_top.v").write_text(wrapper)
            sources.append("fast_top.v")
        shutil.copy(source, build_dir / source.name)
        if progress is not None:
            progress(f"building the {name} simulator with Verilator (once per design, "
                     "about a minute)")
        cmd = ["verilator", "--cc", "--exe", "--build", "-j", "2", *flags,
               "-CFLAGS", " ".join([cxx_opt, *cdefs]), "-Mdir", "obj", "-o", "../harness",
               *sources, *map(str, models), source.name]
        log = build_dir / "build.log"
        with open(log, "w") as f:
            done = subprocess.run(cmd, cwd=build_dir, stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, **compiler_cache_env()})
        if done.returncode != 0 or not exe.is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise SimulationError(
                f"Building the fast simulator of {name!r} failed (exit {done.returncode}); "
                f"the build log {log} ends with:\n{tail}")
        shutil.rmtree(build_dir / "obj", ignore_errors=True)    # 100s of MB of objects
    return exe


class Harness:
    """A running harness: the design, clocked in C++, at the end of a pipe.

    Parameters
    ----------
    exe : path
        From `build_harness`.
    waves : path or None
        Where the FST file goes (a harness built with ``waves``); recording starts with
        `trace`.
    timeout : float
        Wall-clock seconds one command may take before the harness is taken to have hung.

    Members
    -------
    cycles : int
        Cycles simulated so far (`info`).
    """

    def __init__(self, exe, *, waves=None, timeout=600):
        self.timeout = timeout
        self.log = Path(exe).with_name(f"run-{os.getpid()}.log")
        args = [str(exe)] + ([str(waves)] if waves else [])
        self._err = open(self.log, "wb")            # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b"X")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        self._err.close()
        # Kept when it may say why the harness failed: not after a clean exit, nor empty.
        with contextlib.suppress(OSError):
            if self.proc.returncode == 0 or self.log.stat().st_size == 0:
                self.log.unlink()

    def _write(self, data):
        try:
            self.proc.stdin.write(data)
        except OSError:
            self._died()

    def _read(self, n):
        out = bytearray()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.proc.kill()
                raise SimulationError(
                    f"The fast simulator did not answer within {self.timeout} s; killed it")
            chunk = os.read(fd, n - len(out))
            if not chunk:
                self._died()
            out += chunk
        return bytes(out)

    def _died(self):
        self.proc.wait()
        self._err.flush()
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise SimulationError(
            f"The fast simulator exited (status {self.proc.returncode}); its log {self.log} "
            f"ends with:\n{tail}")

    def _ask(self, data, n):
        self._write(data)
        with contextlib.suppress(OSError):
            self.proc.stdin.flush()
        return self._read(n)

    def queue(self, symbols):
        """Queue ``(kind, value)`` symbols for the design's input (sent as it clocks)."""
        symbols = list(symbols)
        self._write(b"S" + struct.pack("<I", len(symbols))
                    + b"".join(struct.pack("<BI", k, v) for k, v in symbols))

    def recv(self, count, budget):
        """Clock until ``count`` bytes came out or ``budget`` cycles passed; return them."""
        head = self._ask(b"R" + struct.pack("<IQ", count, budget), 5)
        _, n = struct.unpack("<BI", head)
        return self._read(n)

    def quiet(self, cycles, budget):
        """Clock until the input is sent and nothing came out for ``cycles``; return how many
        bytes were dropped."""
        status, dropped = struct.unpack("<BI", self._ask(
            b"Q" + struct.pack("<QQ", cycles, budget), 5))
        if status:
            raise SimulationError(f"The design kept sending for {budget} cycles")
        return dropped

    def clock(self, cycles):
        """Clock ``cycles`` cycles."""
        self._ask(b"C" + struct.pack("<Q", cycles), 1)

    def trace(self, on):
        """Start or stop recording waveforms (a harness built with ``waves``)."""
        if self._ask(b"T" + struct.pack("<B", bool(on)), 1)[0]:
            raise SimulationError("This fast simulator was built without waveforms")

    def info(self):
        """``(cycles, seconds)``: cycles simulated so far, and the time spent clocking them."""
        cycles, ns = struct.unpack("<QQ", self._ask(b"I", 16))
        return cycles, ns / 1e9


class HarnessLink(Link):
    """A `systolic.sw.driver.Link` to a `Harness`: the controller's byte streams, or with
    ``divisor`` the virtual board's UART pins, 8N1, as a USB serial adapter drives them.

    Parameters
    ----------
    harness : Harness
    divisor : int or None
        Clock cycles a bit of the UART; ``None`` for a byte-stream top.
    budget : int
        Cycles a reply may take to come (a RUN's reply comes when the program has run):
        a reply that has not come by then is lost (`protocol.LinkError`).
    faults : list of dict
        On the UART pins: damage the ``nth`` (from 0) request frame of type ``request``
        (``"WRITE"``, ``"RUN"``, ...): ``"break"`` (the line held low in the middle of it),
        ``"framing"`` (a character with a low stop bit), ``"flip"`` (a bit of it inverted) or
        ``"reply"`` (a bit of its reply inverted). The driver must recover from each.

    Members
    -------
    injected : int
        Faults injected so far.
    """

    def __init__(self, harness, *, divisor=None, budget=50_000_000, faults=()):
        self.harness = harness
        self.divisor = divisor
        self.budget = budget
        self.faults = {(Request[f["request"]].value, f["nth"]): f["kind"] for f in faults}
        if self.faults and divisor is None:
            raise SimulationError("Faults are injected on a UART's pins: give a divisor")
        self.sent = {}
        self.injected = 0
        self._damage_reply = False

    async def send(self, data):
        data = bytes(data)
        key = (data[1], self.sent.get(data[1], 0)) if len(data) > 1 else None
        if key is not None:
            self.sent[data[1]] = key[1] + 1
        kind = self.faults.pop(key, None)
        if kind is None:
            self.harness.queue((BYTE, b) for b in data)
            return
        self.injected += 1
        if kind == "reply":
            self._damage_reply = True
            self.harness.queue((BYTE, b) for b in data)
        else:
            self.harness.queue(damaged(data, kind, at=min(5, len(data) - 1)))

    async def recv(self, count):
        data = self.harness.recv(count, self.budget)
        if len(data) < count:
            raise protocol.LinkError(
                f"The reply stopped after {len(data)} of {count} bytes ({self.budget} cycles "
                "without it)")
        if self._damage_reply:
            # The reply's type byte: the frame check fails, the length still holds.
            self._damage_reply = False
            data = data[:1] + bytes([data[1] ^ 0x01]) + data[2:]
        return data

    async def resync(self):
        bit = self.divisor or 1
        self.harness.quiet(RESYNC_QUIET_BITS * bit, self.budget)


def damaged(data, kind, at):
    """The symbols of ``data`` with the damage ``kind`` at byte ``at`` (as
    `systolic.sim.serial.SerialHost.send_damaged` does on a cocotb line)."""
    head = [(BYTE, b) for b in data[:at]]
    if kind == "break":
        return [*head, (BREAK, 30), (IDLE, 2), *((BYTE, b) for b in data[at:])]
    if kind == "framing":
        return [*head, (BAD_STOP, data[at]), (IDLE, 1), *((BYTE, b) for b in data[at + 1:])]
    if kind == "flip":
        return [*head, (BYTE, data[at] ^ 0x10), *((BYTE, b) for b in data[at + 1:])]
    raise ValueError(f"Damage must be break, framing or flip, not {kind!r}")


def bare_loop_rate(top, *, name, cycles=2_000_000):
    """Cycles a second of a bare Verilator loop clocking ``top`` (inputs idle, no harness):
    the ceiling the harness is measured against. Built with the same flags."""
    exe = build_harness(top, name=name, source=_BARE_SOURCE)
    out = subprocess.run([str(exe), str(cycles)], capture_output=True, text=True, check=True)
    done, seconds = out.stdout.split()
    return int(done) / float(seconds)
