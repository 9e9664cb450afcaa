"""The processing element: one int8 × int8 multiplier and one int32 accumulator."""

from amaranth.hdl import Module, Mux, Signal, signed
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
    of the DSP block and the 32-bit carry chain then sit in different cycles (at 8×8 on an
    ECP5-85F, that route alone is ~5 ns). ``first`` clears the accumulator operand rather
    than selecting the product, so the clear folds into the carry chain's own LUTs.
    """

    #: Cycles from ``first`` at the PE's input to the capture of ``result``.
    CAPTURE = dsp.LATENCY + 1

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
        product = Signal(signed(16))
        m.d.sync += product.eq(mul.p)
        # The flag waits as long as the product does.
        first_d = [Signal(name=f"first_d{i}") for i in range(self.CAPTURE)]
        m.d.sync += first_d[0].eq(self.first_in)
        for prev, nxt in zip(first_d, first_d[1:]):
            m.d.sync += nxt.eq(prev)
        acc = Signal(signed(32))
        m.d.sync += acc.eq(Mux(first_d[-1], 0, acc) + product)
        with m.If(first_d[-1]):
            m.d.sync += self.result.eq(acc)
        return m
