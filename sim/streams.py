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
"""

import enum
import itertools
import random

from amaranth.hdl import Shape
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

__all__ = [
    "Backpressure", "StreamSink", "StreamSource", "bursty_pauses", "pack", "random_pauses",
    "reset", "start_clock", "unpack",
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


class _Endpoint:
    def __init__(self, dut, prefix, clk, pause, layout):
        self.clk = clk
        self.payload = _port(dut, prefix, "payload")
        self.valid = _port(dut, prefix, "valid")
        self.ready = _port(dut, prefix, "ready")
        self.pause = pause
        self.layout = layout
        self.beats = 0          #: handshakes completed

    def _offer(self):
        return True if self.pause is None else bool(next(self.pause))

    @staticmethod
    def _high(signal):
        v = signal.value
        return v.is_resolvable and int(v) == 1


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
        super().__init__(dut, prefix, clk, pause, layout)
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
        super().__init__(dut, prefix, clk, pause, layout)
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
    Clock(clk, period_ns, unit="ns").start()
    return clk


async def reset(dut, clk, cycles=2, name="rst"):
    """Hold ``dut.<name>`` (Amaranth's synchronous reset) high for ``cycles`` clock edges."""
    rst = getattr(dut, name)
    rst.value = 1
    await ClockCycles(clk, cycles)
    rst.value = 0
    await RisingEdge(clk)
