"""cocotb drivers and monitors for `amaranth.lib.stream` interfaces, written once.

Amaranth 0.5 flattens a ``stream.Signature`` member ``<prefix>`` of a top-level component into
three Verilog ports: ``<prefix>__payload`` (one vector, however structured the payload: a
`data.StructLayout` or `data.ArrayLayout` is packed at its fields' offsets, first field in the
least significant bits), ``<prefix>__valid`` and ``<prefix>__ready``. `StreamSource` drives
such an interface into the design, `StreamSink` takes beats out of it; both pack and unpack
structured payloads when given the payload's layout, and both accept a *pause generator* that
decides, cycle by cycle, whether ``valid`` (source) or ``ready`` (sink) is offered.

A pause generator is any iterator of truthy ("offer this cycle") and falsy ("idle") values,
e.g. ``itertools.cycle([1, 1, 1, 0])``; ``None`` offers every cycle. `Backpressure` names the
patterns tests cross with each other.

Every endpoint also watches its stream, every cycle from its creation to the end of the test,
whether a transfer is under way or not, from the end of the design's first `reset` on:
``valid`` must read 0 or 1, and so must ``ready`` whenever ``valid`` is high (an X or Z is an
error, never taken for 0); and on a stream the design drives (a `StreamSink`'s) a beat offered
and not taken must still be offered, with the same payload, in the next cycle (the rule of
`amaranth.lib.stream`), unless reset intervenes. A violation fails the test with a
`StreamProtocolError` naming the stream and the cycle.

``ready`` is not checked while ``valid`` is low: nothing reads it then, and Icarus leaves
combinational logic of Amaranth's Verilog unevaluated (X) until one of its inputs changes (the
engines step their state machines once out of reset for this reason).
"""

import enum
import itertools
import random

import cocotb
from amaranth.hdl import Shape
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

__all__ = [
    "Backpressure", "StreamProtocolError", "StreamSink", "StreamSource", "bursty_pauses", "pack",
    "random_pauses", "reset", "start_clock", "unpack",
]


# Payload packing ---------------------------------------------------------------------------------

def pack(shape, value):
    """Pack ``value`` into the integer a Verilog port of ``shape`` carries.

    ``shape`` is a `data.Layout` (a mapping for a struct, a sequence for an array), any other
    shape-castable (an int; an `amaranth.lib.enum.Enum` member for an enum shape), or
    ``None`` for a plain integer. Negative values are stored in two's complement.
    """
    if shape is None:
        return int(value)
    if isinstance(shape, data.Layout):
        packed = 0
        if isinstance(shape, data.ArrayLayout):
            items = zip(range(shape.length), value, strict=True)
            fields = ((i, shape[i], v) for i, v in items)
        else:
            fields = ((name, field, value.get(name, 0)) for name, field in shape)
        for _, field, v in fields:
            packed |= pack(field.shape, v) << field.offset
        return packed
    width = Shape.cast(shape).width
    v = int(getattr(value, "value", value))
    lo = -(1 << (width - 1)) if width else 0
    if not lo <= v < (1 << width):
        raise ValueError(f"Payload value must fit {width} bits, not {v!r}")
    return v & ((1 << width) - 1)


def unpack(shape, packed):
    """Inverse of `pack`: a dict (struct), list (array) or int (signed where the shape is)."""
    packed = int(packed)
    if shape is None:
        return packed
    if isinstance(shape, data.Layout):
        if isinstance(shape, data.ArrayLayout):
            return [unpack(shape[i].shape, packed >> shape[i].offset)
                    for i in range(shape.length)]
        return {name: unpack(field.shape, packed >> field.offset) for name, field in shape}
    s = Shape.cast(shape)
    v = packed & ((1 << s.width) - 1)
    if s.signed and v >> (s.width - 1):
        v -= 1 << s.width
    return v


# Pause generators --------------------------------------------------------------------------------

def random_pauses(seed, duty=0.7):
    """Offer in each cycle independently with probability ``duty`` (seeded)."""
    rng = random.Random(seed)
    while True:
        yield rng.random() < duty


def bursty_pauses(seed, max_run=12):
    """Alternate runs of offering and idling, each 1 to ``max_run`` cycles long (seeded)."""
    rng = random.Random(seed)
    while True:
        yield from itertools.repeat(True, rng.randint(1, max_run))
        yield from itertools.repeat(False, rng.randint(1, max_run))


class Backpressure(enum.Enum):
    """Named valid/ready patterns; `pauses` makes a fresh pause generator for one of them."""

    NONE = "none"        #: offer every cycle
    CYCLE = "cycle"      #: three cycles out of four
    RANDOM = "random"    #: each cycle with probability 0.6
    BURSTY = "bursty"    #: long runs on and off

    def pauses(self, seed=0):
        """A pause generator for this pattern (``None`` for `NONE`), seeded by ``seed``."""
        match self:
            case Backpressure.NONE:
                return None
            case Backpressure.CYCLE:
                return itertools.cycle([1, 1, 1, 0])
            case Backpressure.RANDOM:
                return random_pauses(seed, duty=0.6)
            case Backpressure.BURSTY:
                return bursty_pauses(seed)


# Drivers -----------------------------------------------------------------------------------------

def _port(dut, prefix, name):
    try:
        return getattr(dut, f"{prefix}__{name}")
    except AttributeError:
        raise AttributeError(
            f"The design has no port {prefix}__{name}; a stream member {prefix!r} of an "
            f"Amaranth component becomes {prefix}__payload, __valid and __ready") from None


class StreamProtocolError(AssertionError):
    """A stream broke the valid/ready handshake: an X or Z on ``valid`` or ``ready``, or a beat
    the design offered withdrawn or changed before it was taken."""


#: Reset signals `reset` has been through in this simulation. Before that a four-state
#: simulator may show X where the design is not yet defined: memories, and (Icarus, on
#: Amaranth's Verilog) logic whose inputs have not changed since time zero.
_reset_done = set()


class _Watch:
    """Check the streams of one clock once a cycle (one task for all of them).

    The signals are read once they have settled after the falling edge: what the next rising
    edge will see, whether a driver changed them at the rising edge or, as `expect_quiet`
    does, at the falling one.
    """

    _by_clock = {}

    def __init__(self, clk):
        self.clk = clk
        self.endpoints = []
        self.cycle = 0          #: cycles since the test's first endpoint on this clock
        self.task = cocotb.start_soon(self._run())

    @classmethod
    def add(cls, endpoint):
        """Watch ``endpoint``, with the running watch of its clock (a new one in a new test)."""
        watch = cls._by_clock.get(endpoint.clk)
        if watch is None or watch.task.done():
            watch = cls._by_clock[endpoint.clk] = cls(endpoint.clk)
        watch.endpoints.append(endpoint)
        return watch

    async def _run(self):
        while True:
            await FallingEdge(self.clk)
            await ReadOnly()
            self.cycle += 1
            for endpoint in self.endpoints:
                endpoint._check()


class _Endpoint:
    def __init__(self, dut, prefix, clk, pause, layout, *, design_drives):
        self.name = prefix
        self.clk = clk
        self.payload = _port(dut, prefix, "payload")
        self.valid = _port(dut, prefix, "valid")
        self.ready = _port(dut, prefix, "ready")
        self.pause = pause
        self.layout = layout
        self.beats = 0          #: handshakes completed
        self._design_drives = design_drives
        try:
            self._rst = dut.rst
        except AttributeError:
            self._rst = None
        self._held = None       # the payload of a beat offered and not taken last cycle
        self._watch = _Watch.add(self)

    def _offer(self):
        return True if self.pause is None else bool(next(self.pause))

    def _error(self, what):
        return StreamProtocolError(f"Stream {self.name}, cycle {self._watch.cycle} "
                                   f"({get_sim_time('ns'):.0f} ns): {what}")

    def _high(self, signal):
        """``signal`` (valid or ready) is 1; an X or Z is a `StreamProtocolError`."""
        v = signal.value
        if not v.is_resolvable:
            which = "valid" if signal is self.valid else "ready"
            raise self._error(f"{which} must be 0 or 1, not {v}")
        return int(v) == 1

    def _check(self):
        """The check of one cycle: a resolvable ``valid`` (and ``ready`` with it), and a stalled
        beat held (if the design drives the stream). Nothing is checked before the design's
        first `reset` has finished, nor while its reset is held."""
        if self._rst is not None:
            rst = self._rst.value
            if self._rst not in _reset_done or not rst.is_resolvable or int(rst):
                self._held = None
                return
        valid = self._high(self.valid)
        ready = valid and self._high(self.ready)
        if not self._design_drives:
            return
        payload = self.payload.value
        if self._held is not None:
            if not valid:
                raise self._error(
                    f"valid fell while a beat (payload {self._held}) waited for ready; a beat "
                    "offered must stay offered until it is taken")
            if payload != self._held:
                raise self._error(
                    f"payload changed from {self._held} to {payload} while valid was high and "
                    "ready low; it must hold until the beat is taken")
        self._held = payload if valid and not ready else None


class StreamSource(_Endpoint):
    """Drive beats into the design's stream sink ``<prefix>__*``.

    Parameters
    ----------
    dut : cocotb handle
        The top level.
    prefix : str
        Name of the stream member, e.g. ``"i_stream"``.
    clk : cocotb handle
        The clock the stream is synchronous to.
    pause : iterator or None
        Pause generator: ``valid`` is offered only in cycles where it yields a truthy value.
    layout : shape-castable or None
        Payload layout; beats are then dicts / lists, packed with `pack`.
    """

    def __init__(self, dut, prefix, clk, pause=None, layout=None):
        super().__init__(dut, prefix, clk, pause, layout, design_drives=False)
        self.valid.value = 0

    async def put(self, beat):
        """Offer one beat until the design takes it; returns after the accepting clock edge.

        ``valid`` is dropped on return, unless another `put` follows in the same time step.
        """
        value = pack(self.layout, beat)
        while True:
            offer = self._offer()
            self.valid.value = int(offer)
            if offer:
                self.payload.value = value
            # Sample the handshake once everything has settled, just before the next edge.
            await ReadOnly()
            taken = offer and self._high(self.ready)
            await RisingEdge(self.clk)
            if taken:
                self.beats += 1
                self.valid.value = 0
                return

    async def send(self, beats):
        """Send every beat of ``beats`` in order."""
        for beat in beats:
            await self.put(beat)

    def idle(self):
        """Drop ``valid`` (after the sending task was killed, e.g. across a reset)."""
        self.valid.value = 0


class StreamSink(_Endpoint):
    """Take beats from the design's stream source ``<prefix>__*``.

    Parameters are those of `StreamSource`; ``pause`` gates ``ready``.
    """

    def __init__(self, dut, prefix, clk, pause=None, layout=None):
        super().__init__(dut, prefix, clk, pause, layout, design_drives=True)
        self.ready.value = 0

    async def recv(self, count):
        """Return the next ``count`` beats (unpacked with the layout, if any)."""
        beats = []
        while len(beats) < count:
            offer = self._offer()
            self.ready.value = int(offer)
            await ReadOnly()
            if offer and self._high(self.valid):
                beats.append(unpack(self.layout, self.payload.value))
            await RisingEdge(self.clk)
        self.ready.value = 0
        self.beats += len(beats)
        return beats

    async def expect_quiet(self, cycles):
        """Offer ``ready`` for ``cycles`` cycles; return the beats that appear (should be none)."""
        beats = []
        self.ready.value = 1
        for _ in range(cycles):
            await ReadOnly()
            if self._high(self.valid):
                beats.append(unpack(self.layout, self.payload.value))
            await RisingEdge(self.clk)
        self.ready.value = 0
        return beats

    def idle(self):
        """Drop ``ready``."""
        self.ready.value = 0


# Clock and reset ---------------------------------------------------------------------------------

def start_clock(dut, period_ns=10, name="clk"):
    """Start a free-running clock on ``dut.<name>`` and return its handle."""
    clk = getattr(dut, name)
    # Toggled by the simulator interface in C (cocotb's ``cpp_clock``), not by a Python
    # coroutine woken twice a cycle: the performance model's sweep on Verilator (a cocotb
    # wake-up on every edge, every stream watched every cycle) runs in 12 s instead of 27.
    # cocotb picks it by itself only when writes may be inertial; they need not be here: the
    # testbenches write synchronous inputs after an edge, and the UART line, written on its
    # own timer (`sim.serial`), is an asynchronous input that the design synchronizes.
    Clock(clk, period_ns, unit="ns", impl="gpi").start()
    return clk


async def reset(dut, clk, cycles=2, name="rst"):
    """Hold ``dut.<name>`` (Amaranth's synchronous reset) high for ``cycles`` clock edges, then
    wait one more; the stream monitors check the design's streams from then on."""
    rst = getattr(dut, name)
    rst.value = 1
    await ClockCycles(clk, cycles)
    rst.value = 0
    await RisingEdge(clk)
    _reset_done.add(rst)
