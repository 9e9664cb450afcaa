"""8N1 UART: a receiver and a transmitter with byte streams, and a bridge that pairs them.

The host link of a board: one start bit, eight data bits (least significant first), one stop
bit, no parity. Frames of the host protocol carry their own CRC, so the UART adds no check of
its own beyond the stop bit.

The receiver samples with a bit-period counter (not 16x oversampling: on the iCEBreaker, at
18 MHz and 2 MBd, a bit is only 9 clocks). A falling edge on the synchronized line starts a
character; the start bit is re-checked half a bit later (a glitch shorter than that is
ignored), then every bit is sampled once, a full bit period apart, in the middle of its cell.
The tolerance this leaves is about ±4 % of accumulated clock mismatch over a character, which
is why `divisor` refuses a baud rate error above 2 %.

Line conditions the receiver reports rather than turning into bytes:

* **framing error**: the stop bit reads low. The character is dropped, ``frame_error`` pulses
  and the receiver waits for the line to go high before it looks for the next start bit.
* **break**: the line held low for longer than a character (start, eight data and stop bits).
  ``brk`` pulses once, no byte and no framing error are produced for it, and reception resumes
  with the first start bit after the line returns high.
* **overrun**: a character arrived while the receive FIFO was full. The character is lost and
  the sticky ``overrun`` flag is set until reset.
"""

import functools

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import cdc, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import ConfigError

__all__ = ["MAX_BAUD_ERROR", "MIN_DIVISOR", "UARTBridge", "UARTRx", "UARTTx", "divisor"]

#: Largest relative difference between the requested and the generated baud rate.
MAX_BAUD_ERROR = 0.02
#: Fewest clock cycles per bit: the synchronizer and the start-bit check need a few.
MIN_DIVISOR = 4

_BITS = 8
#: Bit periods the line must stay low for a break: a whole character (10 bits) and one more.
_BREAK_BITS = 11


def divisor(clk_freq, baud):
    """Clock cycles per bit for ``baud`` at ``clk_freq``, checked against `MAX_BAUD_ERROR`.

    Parameters
    ----------
    clk_freq : float
        Clock frequency in Hz.
    baud : float
        Baud rate in bits per second.

    Returns
    -------
    int

    Raises
    ------
    ConfigError
        If either value is not positive, the clock is slower than `MIN_DIVISOR` times the baud
        rate, or the nearest divisor misses the baud rate by more than 2 %.
    """
    for name, v in (("Clock frequency", clk_freq), ("Baud rate", baud)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise ConfigError(f"{name} must be a positive number, not {v!r}")
    d = round(clk_freq / baud)
    if d < MIN_DIVISOR:
        raise ConfigError(
            f"Clock frequency must be at least {MIN_DIVISOR} times the baud rate, not "
            f"{clk_freq / 1e6:g} MHz for {baud:g} Bd; lower the baud rate or raise the clock")
    error = abs(clk_freq / d - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ConfigError(
            f"Baud rate error must be at most {MAX_BAUD_ERROR:.0%}, not {error:.2%} "
            f"({clk_freq / 1e6:g} MHz / {d} = {clk_freq / d:.0f} Bd for {baud:g} Bd); "
            "pick a baud rate that divides the clock more evenly")
    return d


def quiet_if_invalid(init):
    """Decorate ``__init__`` of an elaboratable: if it raises, the half-made object does not
    also warn ``UnusedElaboratable`` when it is collected."""
    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except Exception:
            self._MustUse__silence = True
            raise
    return wrapper


def _check_divisor(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_DIVISOR:
        raise ConfigError(
            f"Divisor must be an integer of at least {MIN_DIVISOR}, not {value!r}")
    return value


class UARTRx(wiring.Component):
    """8N1 receiver with a byte stream out of a small FIFO.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (see `divisor`).
    fifo_depth : int
        Received bytes held while the consumer stalls.

    Members
    -------
    rxd : In(1)
        The serial line, asynchronous to the clock (synchronized by two flip-flops); idles high.
    o_stream : Out(stream.Signature(8))
        Received bytes, in order.
    overrun : Out(1)
        Sticky: a byte was lost because the FIFO was full.
    frame_error : Out(1)
        Pulses for one cycle when a character's stop bit was low; the character is dropped.
    brk : Out(1)
        Pulses for one cycle when the line has been low for longer than a character.
    in_break : Out(1)
        High from the cycle after ``brk`` until the line returns high.

    Raises
    ------
    ConfigError
        If ``divisor`` or ``fifo_depth`` is out of range.
    """

    @quiet_if_invalid
    def __init__(self, divisor, *, fifo_depth=16):
        self._divisor = _check_divisor(divisor)
        if isinstance(fifo_depth, bool) or not isinstance(fifo_depth, int) or fifo_depth < 2:
            raise ConfigError(f"FIFO depth must be an integer of at least 2, not {fifo_depth!r}")
        self._fifo_depth = fifo_depth
        super().__init__({
            "rxd": In(1, init=1),
            "o_stream": Out(stream.Signature(8)),
            "overrun": Out(1),
            "frame_error": Out(1),
            "brk": Out(1),
            "in_break": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        m.submodules.fifo = queue = fifo.SyncFIFOBuffered(width=8, depth=self._fifo_depth)
        wiring.connect(m, wiring.flipped(self.o_stream), queue.r_stream)

        line = Signal(init=1)
        m.submodules.sync_rxd = cdc.FFSynchronizer(self.rxd, line, init=1)

        # Consecutive low cycles, saturating at the break length; independent of the FSM so a
        # break that begins inside a character is seen too.
        limit = _BREAK_BITS * d
        low = Signal(range(limit + 1))
        in_break = Signal()
        m.d.comb += [in_break.eq(low == limit), self.in_break.eq(in_break)]
        with m.If(line):
            m.d.sync += low.eq(0)
        with m.Elif(~in_break):
            m.d.sync += low.eq(low + 1)
        m.d.comb += self.brk.eq(~line & (low == limit - 1))

        count = Signal(range(d))
        bit = Signal(range(_BITS))
        shreg = Signal(_BITS)
        zero_char = Signal()        # the dropped character read all zeros: maybe a break
        with m.If(count != 0):
            m.d.sync += count.eq(count - 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += count.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(count == 0):
                    with m.If(line):
                        m.next = "IDLE"         # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [count.eq(d - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(count == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)), bit.eq(bit + 1),
                                 count.eq(d - 1)]
                    with m.If(bit == _BITS - 1):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(count == 0):
                    with m.If(line):
                        m.d.comb += queue.w_en.eq(1)
                        m.d.comb += queue.w_data.eq(shreg)
                        with m.If(~queue.w_rdy):
                            m.d.sync += self.overrun.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        # A low stop bit: a framing error, unless the line stays low long
                        # enough to be a break; decided when the line returns high.
                        m.d.sync += zero_char.eq(shreg == 0)
                        with m.If(shreg != 0):
                            m.d.comb += self.frame_error.eq(1)
                        m.next = "WAIT_HIGH"
            with m.State("WAIT_HIGH"):
                with m.If(line):
                    m.d.comb += self.frame_error.eq(zero_char & ~in_break)
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter fed by a byte stream.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (see `divisor`).

    Members
    -------
    i_stream : In(stream.Signature(8))
        Bytes to send; one is taken when the previous character's stop bit has been sent.
    txd : Out(1)
        The serial line, driven from a flip-flop; idles high.
    busy : Out(1)
        A character is being sent.

    Raises
    ------
    ConfigError
        If ``divisor`` is out of range.
    """

    @quiet_if_invalid
    def __init__(self, divisor):
        self._divisor = _check_divisor(divisor)
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "txd": Out(1, init=1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        count = Signal(range(d))
        bits = Signal(range(_BITS + 4))     # bits of the character still to send, and one
        shreg = Signal(_BITS + 2)           # start, data and stop bits, sent LSB first
        # ``bits == 0``, kept in a flip-flop: the sender's state machine waits on ``ready``.
        idle = Signal(init=1)
        m.d.comb += [self.busy.eq(~idle), self.i_stream.ready.eq(idle)]
        # A byte taken goes into the shift register only; ``txd`` changes on the bit clock
        # alone (the start bit a cycle later, at once), so that the register at the pin, far
        # from the byte's sender, hangs off a few local flip-flops and nothing of the sender's.
        # The stop bit's period is a cycle short, which gives back that cycle: a character
        # still takes ``10 * divisor + 1`` cycles, the line high for ``divisor + 1`` of them
        # between back-to-back characters.
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [shreg.eq(Cat(0, self.i_stream.payload, 1)), bits.eq(_BITS + 3),
                         count.eq(0), idle.eq(0)]
        with m.Elif(~idle):
            m.d.sync += count.eq(count - 1)
            with m.If(count == 0):
                m.d.sync += [count.eq(Mux(bits == 2, d - 2, d - 1)), bits.eq(bits - 1),
                             idle.eq(bits == 1)]
                with m.If(bits != 1):
                    m.d.sync += [self.txd.eq(shreg[0]), shreg.eq(shreg[1:])]
        return m


class UARTBridge(wiring.Component):
    """A receiver and a transmitter at one baud rate: the byte-stream end of a serial link.

    Parameters
    ----------
    clk_freq : float
        Frequency of the ``sync`` domain in Hz.
    baud : float
        Baud rate in bits per second.
    fifo_depth : int
        Receive FIFO depth in bytes.

    Members
    -------
    rxd : In(1)
        Serial input from the host (asynchronous; idles high).
    txd : Out(1)
        Serial output to the host (idles high).
    rx : Out(stream.Signature(8))
        Bytes received from the host.
    tx : In(stream.Signature(8))
        Bytes to send to the host.
    overrun, frame_error, brk : Out(1)
        The receiver's line conditions (see `UARTRx`).
    line_fault : Out(1)
        A framing error, or a break (high for as long as it lasts), a cycle after the
        receiver reports it: what a frame in flight cannot survive
        (`systolic.hw.controller.Controller.line_fault`).
    tx_busy : Out(1)
        The transmitter is sending a character.

    Attributes
    ----------
    divisor : int
        Clock cycles per bit.

    Raises
    ------
    ConfigError
        If the baud rate cannot be generated from ``clk_freq`` within 2 %.
    """

    @quiet_if_invalid
    def __init__(self, clk_freq, baud, *, fifo_depth=16):
        self.divisor = divisor(clk_freq, baud)
        self._fifo_depth = fifo_depth
        super().__init__({
            "rxd": In(1, init=1),
            "txd": Out(1, init=1),
            "rx": Out(stream.Signature(8)),
            "tx": In(stream.Signature(8)),
            "overrun": Out(1),
            "frame_error": Out(1),
            "brk": Out(1),
            "line_fault": Out(1),
            "tx_busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = UARTRx(self.divisor, fifo_depth=self._fifo_depth)
        m.submodules.tx = tx = UARTTx(self.divisor)
        wiring.connect(m, wiring.flipped(self.rx), rx.o_stream)
        wiring.connect(m, wiring.flipped(self.tx), tx.i_stream)
        m.d.comb += [
            rx.rxd.eq(self.rxd), self.txd.eq(tx.txd), self.tx_busy.eq(tx.busy),
            self.overrun.eq(rx.overrun), self.frame_error.eq(rx.frame_error),
            self.brk.eq(rx.brk),
        ]
        # A cycle late, from a register: the receiver's line conditions come straight off the
        # sampled line through its state decoding, and the controller's every frame state
        # takes ``line_fault`` (an iCEBreaker critical path otherwise). A cycle is nothing
        # next to a character: the fault still falls between the same bytes.
        m.d.sync += self.line_fault.eq(rx.frame_error | rx.brk | rx.in_break)
        return m
