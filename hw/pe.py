"""The processing element: one int8 × int8 multiplier and one int32 accumulator."""

from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import dsp

__all__ = ["ProcessingElement"]


class ProcessingElement(wiring.Component):
    """Output-stationary PE.

    Activations travel right and weights travel down, one PE per cycle; the PE keeps its own
    output's sum. Output-stationary was chosen over weight-stationary because the sums never
    leave the array until a tile is complete: no accumulator memory, no read-modify-write
    traffic, and one drain per tile, which the requantizers can keep up with at any K.

    A ``first`` flag travels with the activation. When it reaches the accumulator (after the
    multiplier's latency), the finished sum moves to ``result`` and the accumulator restarts
    with the new product: tiles run back to back with no bubble.

    Parameters
    ----------
    target : str
        Multiplier implementation (see `systolic.hw.dsp.Multiplier`).

    Members
    -------
    a_in, w_in, first_in : In
        Activation, weight and tile-start flag from the left / top neighbour.
    a_out, w_out, first_out : Out
        The same, registered, to the right / bottom neighbour.
    result : Out(signed(32))
        The sum of the previous tile, valid `CAPTURE` + 1 cycles after ``first`` arrived here.

    Notes
    -----
    The product is registered once more in the fabric before the accumulator: the route out
    of the DSP block and the carry chain then sit in different cycles (at 8×8 on an ECP5-85F,
    that route alone is ~5 ns).

    The accumulator is a 32-bit running sum that is never cleared, in two 16-bit halves, the
    high half one cycle behind the low one: what the low half's sum carries out, less the
    product's sign (-1, 0 or +1), goes through a register to the high half. Each half's loop
    is then a flip-flop, one carry chain of at most 18 bits (on an ECP5, 9 ``CCU2C`` cells
    where 32 bits take 16) and the same flip-flop again, with no multiplexer for a clear and
    no other load on the chain's outputs, so the placer can keep each loop within its slices.
    A tile's sum is the running sum at its end less the running sum at its start (modulo
    2**32, exact whenever the sum fits int32), subtracted off the loop, half by half.
    """

    #: Cycles from ``first`` at the PE's input to the capture of ``result``.
    CAPTURE = dsp.LATENCY + 2

    a_in: In(signed(8))
    w_in: In(signed(8))
    first_in: In(1)
    a_out: Out(signed(8))
    w_out: Out(signed(8))
    first_out: Out(1)
    result: Out(signed(32))

    def __init__(self, target="generic"):
        self._target = target
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = dsp.Multiplier(self._target)
        m.d.comb += [mul.a.eq(self.a_in), mul.b.eq(self.w_in)]
        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.w_out.eq(self.w_in),
            self.first_out.eq(self.first_in),
        ]
        product = Signal(signed(16), reset_less=True)
        m.d.sync += product.eq(mul.p)
        # The flag at the cycle a tile's first product reaches the low half's adder, and a
        # cycle later; derived from `first_out`, so the PE's flag pipeline is the row's own.
        flags = [Signal(name=f"first_d{i}") for i in range(3)]
        m.d.sync += [flags[0].eq(self.first_out), flags[1].eq(flags[0]), flags[2].eq(flags[1])]
        end_lo, end_hi = flags[1], flags[2]
        # The running sum. Reset-less: any start value cancels out of every tile's sum.
        lo = Signal(16, reset_less=True)
        hi = Signal(16, reset_less=True)
        # The low half plus the signed product, in 18 bits: above the low 16 bits is what the
        # high half must add, -1, 0 or +1 (the carry out less the product's sign).
        lo_sum = Signal(signed(18))
        delta = Signal(signed(2), reset_less=True)
        m.d.comb += lo_sum.eq(lo + product)
        m.d.sync += [lo.eq(lo_sum[:16]), delta.eq(lo_sum[16:]), hi.eq(hi + delta)]
        # At a tile boundary: the tile's sum is the running sum less its value at the last one.
        lo_base = Signal(16, reset_less=True)
        hi_base = Signal(16, reset_less=True)
        lo_diff = Signal(signed(17))
        lo_done = Signal(16, reset_less=True)
        borrow = Signal(reset_less=True)
        m.d.comb += lo_diff.eq(lo - lo_base)
        with m.If(end_lo):
            m.d.sync += [lo_done.eq(lo_diff[:16]), borrow.eq(lo_diff[16]), lo_base.eq(lo)]
        with m.If(end_hi):
            m.d.sync += [self.result.eq(Cat(lo_done, hi - hi_base - borrow)), hi_base.eq(hi)]
        return m
