"""A stand-in benchmark subject: an R × C grid of output-stationary int8 MAC processing elements.

Only for measuring what the multiplier primitive does to fmax and resources before the real
array (`systolic.hw.array`) exists; it is not part of the accelerator. Each PE passes its
activation right and its weight down through one register each, multiplies them with a
`Multiplier` and accumulates the product into 32 bits; a ``first`` bit that travels with the
activation makes the accumulator load the product instead of adding it.

``retimed=True`` is the variant the 8 × 8 measurements point to: one more fabric register on the
product (the DSP-to-fabric route gets a cycle of its own) and the ``first`` flag folded into the
adder's operand (``(acc & ~first) + p`` fits the carry chain's LUTs, so no multiplexer follows
the 32-bit carry chain).
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from systolic.hw.dsp import LATENCY, Multiplier

__all__ = ["MacGrid", "MacPE"]

ACC_BITS = 32


class MacPE(wiring.Component):
    """One output-stationary MAC: ``acc = a*w`` when ``first``, else ``acc + a*w``.

    Members
    -------
    a_in, w_in, first_in : In
        Activation (from the left), weight (from above), start-of-dot-product flag.
    a_out, w_out, first_out : Out
        The same, one cycle later, for the right and lower neighbours.
    acc : Out(signed(32))
        Running dot product; the product of cycle *t* is in it from cycle *t* + LATENCY + 1.
    """

    a_in: In(signed(8))
    w_in: In(signed(8))
    first_in: In(1)
    a_out: Out(signed(8))
    w_out: Out(signed(8))
    first_out: Out(1)
    acc: Out(signed(ACC_BITS))

    def __init__(self, target, retimed=False):
        self.target = target
        self.retimed = retimed
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = Multiplier(self.target)
        m.d.comb += [mul.a.eq(self.a_in), mul.b.eq(self.w_in)]
        m.d.sync += [self.a_out.eq(self.a_in), self.w_out.eq(self.w_in),
                     self.first_out.eq(self.first_in)]
        product = mul.p
        if self.retimed:
            product = Signal.like(mul.p, name="p_fabric", reset_less=True)
            m.d.sync += product.eq(mul.p)
        # The flag is delayed as far as the product, so both reach the accumulator together.
        first = self.first_in
        for i in range(LATENCY + self.retimed):
            delayed = Signal(name=f"first_d{i + 1}")
            m.d.sync += delayed.eq(first)
            first = delayed
        if self.retimed:
            kept = Signal.like(self.acc)
            m.d.comb += kept.eq(Mux(first, 0, self.acc))
            m.d.sync += self.acc.eq(kept + product)
        else:
            with m.If(first):
                m.d.sync += self.acc.eq(product)
            with m.Else():
                m.d.sync += self.acc.eq(self.acc + product)
        return m


class MacGrid(wiring.Component):
    """``rows`` × ``cols`` `MacPE` grid: activations enter on the left, weights at the top.

    Members
    -------
    a : In(ArrayLayout(signed(8), rows))
        One activation per row, with ``first`` one flag per row.
    w : In(ArrayLayout(signed(8), cols))
        One weight per column.
    acc : Out(ArrayLayout(signed(32), rows * cols))
        Every PE's accumulator, row-major.
    """

    def __init__(self, rows, cols, target="ecp5", retimed=False):
        self.rows, self.cols, self.target, self.retimed = rows, cols, target, retimed
        super().__init__({
            "a": In(data.ArrayLayout(signed(8), rows)),
            "first": In(rows),
            "w": In(data.ArrayLayout(signed(8), cols)),
            "acc": Out(data.ArrayLayout(signed(ACC_BITS), rows * cols)),
        })

    def elaborate(self, platform):
        m = Module()
        pes = [[MacPE(self.target, self.retimed) for _ in range(self.cols)]
               for _ in range(self.rows)]
        for r in range(self.rows):
            for c in range(self.cols):
                pe = pes[r][c]
                m.submodules[f"pe_{r}_{c}"] = pe
                left = pes[r][c - 1] if c else None
                up = pes[r - 1][c] if r else None
                m.d.comb += [
                    pe.a_in.eq(left.a_out if left else self.a[r]),
                    pe.first_in.eq(left.first_out if left else self.first[r]),
                    pe.w_in.eq(up.w_out if up else self.w[c]),
                    self.acc[r * self.cols + c].eq(pe.acc),
                ]
        return m
