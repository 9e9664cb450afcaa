"""cocotb tests of `systolic.hw.uart.UARTBridge`: serial line against byte streams.

The pytest side (``tests/test_uart.py``) passes the bridge's divisor and receive FIFO depth in
``$SYSTOLIC_UART`` as JSON: ``{"divisor": int, "fifo_depth": int}``.

The serial model (`systolic.sim.serial.SerialHost`) plays the host: it bit-bangs characters at
a baud rate of its own (slightly off the bridge's, to exercise the sampling point), sends
malformed ones on request, and decodes the bridge's transmitter. `Events` counts the line
condition pulses. Every test checks the bytes exactly, in order, and every reported condition.
"""

import json
import os
import random

import cocotb
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge, Timer, with_timeout
from systolic.sim.serial import SerialHost
from systolic.sim.streams import Backpressure, StreamSink, StreamSource, reset, start_clock

PERIOD_NS = 10


def params():
    return json.loads(os.environ["SYSTOLIC_UART"])


class Events:
    """Counts cycles in which each of ``names`` is high."""

    def __init__(self, dut, clk, names=("frame_error", "brk")):
        self.dut, self.clk = dut, clk
        self.counts = dict.fromkeys(names, 0)
        cocotb.start_soon(self._count())

    async def _count(self):
        while True:
            await RisingEdge(self.clk)
            await ReadOnly()
            for name in self.counts:
                value = getattr(self.dut, name).value
                if value.is_resolvable and int(value):
                    self.counts[name] += 1


class UARTTestbench:
    def __init__(self, dut, *, skew=0.0, sink=Backpressure.NONE, source=Backpressure.NONE,
                 seed=0):
        p = params()
        self.divisor, self.fifo_depth = p["divisor"], p["fifo_depth"]
        self.dut = dut
        self.clk = start_clock(dut, PERIOD_NS)
        self.host = SerialHost(dut.rxd, dut.txd, self.divisor * PERIOD_NS, skew=skew)
        self.sink = StreamSink(dut, "rx", self.clk, pause=sink.pauses(seed))
        self.source = StreamSource(dut, "tx", self.clk, pause=source.pauses(seed + 1))
        self.events = Events(dut, self.clk)

    async def start(self):
        await reset(self.dut, self.clk)
        await ClockCycles(self.clk, 2 * self.divisor)

    def char_ns(self, chars):
        return chars * 10 * self.divisor * PERIOD_NS

    async def receive(self, data, **kwargs):
        """Send ``data`` from the host; return what the bridge's ``rx`` stream delivered."""
        got = cocotb.start_soon(self.sink.recv(len(data)))
        await self.host.send(data, **kwargs)
        return await with_timeout(got, self.char_ns(4), "ns")

    async def quiet(self, chars=3):
        """No byte comes out of ``rx`` for ``chars`` character times."""
        await FallingEdge(self.clk)
        extra = await self.sink.expect_quiet(chars * 10 * self.divisor)
        assert extra == [], f"unexpected bytes {extra}"

    def check_events(self, frame_error=0, brk=0):
        want = {"frame_error": frame_error, "brk": brk}
        assert self.events.counts == want, f"line events {self.events.counts}, not {want}"

    def check_overrun(self, value=0):
        assert int(self.dut.overrun.value) == value, f"overrun is {self.dut.overrun.value}"


def all_bytes(seed):
    data = list(range(256))
    random.Random(seed).shuffle(data)
    return data


@cocotb.test()
async def receive_all_bytes(dut):
    """Every byte value, the host's clock 1.5 % slow then 1.5 % fast, with a stalling sink."""
    tb = UARTTestbench(dut)
    await tb.start()
    for i, (skew, sink) in enumerate(((0.015, Backpressure.RANDOM),
                                      (-0.015, Backpressure.BURSTY))):
        tb.host.skew = skew
        tb.sink.pause = sink.pauses(i)
        data = all_bytes(i)
        got = await tb.receive(data)
        assert got == data, f"skew {skew}: received {got[:16]}..., not {data[:16]}..."
        await tb.quiet()
    tb.check_events()
    tb.check_overrun(0)


@cocotb.test()
async def transmit_all_bytes(dut):
    """Every byte value out of ``txd``, fed with gaps; the bit period is the divisor."""
    tb = UARTTestbench(dut, source=Backpressure.RANDOM, seed=5)
    await tb.start()
    data = all_bytes(7)
    await tb.source.send(data)
    await Timer(tb.char_ns(2), unit="ns")
    assert list(tb.host.received) == data
    assert int(dut.tx_busy.value) == 0


@cocotb.test()
async def both_ways_at_once(dut):
    """Full duplex: bytes in and out at the same time, back to back."""
    tb = UARTTestbench(dut, sink=Backpressure.CYCLE, source=Backpressure.NONE)
    await tb.start()
    rng = random.Random(11)
    inbound = [rng.randrange(256) for _ in range(100)]
    outbound = [rng.randrange(256) for _ in range(100)]
    sending = cocotb.start_soon(tb.source.send(outbound))
    got = await tb.receive(inbound)
    await sending
    await Timer(tb.char_ns(2), unit="ns")
    assert got == inbound
    assert list(tb.host.received) == outbound
    tb.check_events()


@cocotb.test()
async def glitches_make_no_bytes(dut):
    """Low pulses shorter than half a bit, between characters, are not start bits."""
    tb = UARTTestbench(dut)
    await tb.start()
    for _ in range(20):
        await tb.host.level(0, 0.3)
        await tb.host.level(1, 1.7)
    await tb.quiet()
    data = [0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80]
    assert await tb.receive(data) == data
    tb.check_events()


@cocotb.test()
async def framing_error_drops_the_character(dut):
    """A low stop bit: ``frame_error`` once per bad character, which is dropped; no break."""
    tb = UARTTestbench(dut)
    await tb.start()
    assert await tb.receive([0x12, 0x34]) == [0x12, 0x34]
    await tb.host.char(0x5A, stop=0)
    await tb.host.level(1, 2)
    tb.check_events(frame_error=1)
    # An all-zero character with a low stop bit is 10 bits low: a framing error, not a break.
    await tb.host.char(0x00, stop=0)
    await tb.host.level(1, 2)
    await tb.quiet()
    tb.check_events(frame_error=2)
    data = [0x56, 0x00, 0x78]
    assert await tb.receive(data) == data
    tb.check_events(frame_error=2)
    tb.check_overrun(0)


@cocotb.test()
async def break_mid_transfer(dut):
    """A break between characters, then one cutting a character short: ``brk`` once each,
    no byte and no framing error for the first, and the bytes after each arrive intact."""
    tb = UARTTestbench(dut)
    await tb.start()
    assert await tb.receive([0x11, 0x22, 0x33]) == [0x11, 0x22, 0x33]
    await tb.host.level(0, 25)                   # 2.5 characters low
    await tb.host.level(1, 1)
    tb.check_events(brk=1)
    after = [0x44, 0x00, 0xFF]
    assert await tb.receive(after) == after
    # A character interrupted by a break after three data bits, all ones.
    await tb.host.char(0x07, data_bits=3)
    await tb.host.level(0, 30)
    await tb.host.level(1, 0.5)
    await tb.quiet()
    # Exactly one framing error, then the break: the receiver reads the cut character as 0x07
    # with a low stop bit 9.5 bits after its start bit, when the line has been low for only
    # 6.5 bits (a break needs 11), and a low stop bit after data that is not all zeros is a
    # framing error at once. The break that follows pulses `brk`, and no second framing error
    # comes when the line returns high (that one is only for an all-zero character).
    tb.check_events(frame_error=1, brk=2)
    after = [0x99, 0x00, 0x66]
    assert await tb.receive(after) == after
    tb.check_overrun(0)


@cocotb.test()
async def overrun_is_sticky(dut):
    """With nobody reading, the FIFO keeps its first bytes; the rest set ``overrun``."""
    tb = UARTTestbench(dut)
    await tb.start()
    n = tb.fifo_depth
    data = list(range(1, n + 4))
    await tb.host.send(data)
    await Timer(tb.char_ns(1), unit="ns")
    tb.check_overrun(1)
    await FallingEdge(tb.clk)       # ready must rise between edges: the FIFO is not empty
    got = await tb.sink.expect_quiet(2 * n)        # everything the FIFO holds
    assert got == data[:n], f"FIFO held {got}, not {data[:n]}"
    await tb.quiet()
    tb.check_overrun(1)
    more = [0xC3, 0x3C]
    assert await tb.receive(more) == more
    tb.check_overrun(1)
    tb.check_events()
