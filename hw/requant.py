"""Requantization: bias add, ``(acc * M + 2^(s-1)) >> s``, ReLU and int8 saturation, per lane."""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..sw import arith
from .isa import param_layout

__all__ = ["Requantizer"]

PRODUCT = signed(arith.PRODUCT_BITS)


class _Lane(wiring.Component):
    """One output channel's requantization pipeline (latency `Requantizer.LATENCY`).

    The multiply by ``M`` is a shift-and-add tree written out explicitly, with the rounding
    constant as its sixteenth term: synthesis maps no DSP block here, so every DSP on the chip
    belongs to the systolic array.
    """

    def __init__(self, cfg):
        super().__init__({
            "acc": In(signed(arith.ACC_BITS)),
            "param": In(param_layout(cfg).elem_shape),
            "relu": In(1),
            "out": Out(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        m_bits = arith.M_BITS
        # Stage 1: bias.
        x = Signal(signed(arith.ACC_BITS))
        m.d.sync += x.eq(self.acc + self.param.bias)
        # Stages 2-5: sixteen terms (M's bits, then the rounding constant), four adder levels.
        rounding = Signal(PRODUCT)
        m.d.comb += rounding.eq((Const(1, PRODUCT) << self.param.shift) >> 1)
        terms = [Mux(self.param.m[i], x.as_signed() << i, 0) for i in range(m_bits)]
        terms.append(rounding)
        level = 0
        while len(terms) > 1:
            nxt = []
            for i in range(0, len(terms), 2):
                s = Signal(PRODUCT, name=f"sum{level}_{i // 2}")
                m.d.sync += s.eq(terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i])
                nxt.append(s)
            terms, level = nxt, level + 1
        # Stage 6: the shift. Stage 7: saturation (and ReLU as a clamp at 0).
        shifted = Signal(PRODUCT)
        m.d.sync += shifted.eq(terms[0] >> self.param.shift)
        lo = Mux(self.relu, 0, arith.INT8_MIN)
        with m.If(shifted > arith.INT8_MAX):
            m.d.sync += self.out.eq(arith.INT8_MAX)
        with m.Elif(shifted < lo):
            m.d.sync += self.out.eq(lo)
        with m.Else():
            m.d.sync += self.out.eq(shifted)
        return m


class Requantizer(wiring.Component):
    """``cols`` requantization lanes in parallel, with a tag carried alongside.

    The parameters and ``relu`` must hold still while data is in flight (they change only
    between channel tiles, when the pipeline is empty).

    Members
    -------
    i_valid, i_acc, i_tag : In
        A row of ``cols`` int32 sums (without bias) and its tag.
    params : In(param_layout(cfg))
        Bias, multiplier and shift of each lane.
    relu : In(1)
        Clamp at 0.
    o_valid, o_data, o_tag : Out
        The int8 results, `LATENCY` cycles later.
    """

    LATENCY = 7

    def __init__(self, cfg, tag_shape):
        self._cfg = cfg
        super().__init__({
            "i_valid": In(1),
            "i_acc": In(data.ArrayLayout(signed(arith.ACC_BITS), cfg.cols)),
            "i_tag": In(tag_shape),
            "params": In(param_layout(cfg)),
            "relu": In(1),
            "o_valid": Out(1),
            "o_data": Out(data.ArrayLayout(signed(8), cfg.cols)),
            "o_tag": Out(tag_shape),
        })

    def elaborate(self, platform):
        m = Module()
        for i in range(self._cfg.cols):
            m.submodules[f"lane{i}"] = lane = _Lane(self._cfg)
            m.d.comb += [
                lane.acc.eq(self.i_acc[i]),
                lane.param.eq(self.params[i]),
                lane.relu.eq(self.relu),
                self.o_data[i].eq(lane.out),
            ]
        valid, tag = self.i_valid, self.i_tag
        for i in range(self.LATENCY):
            v, t = Signal(name=f"valid_d{i}"), Signal.like(self.i_tag, name=f"tag_d{i}")
            m.d.sync += [v.eq(valid), t.eq(tag)]
            valid, tag = v, t
        m.d.comb += [self.o_valid.eq(valid), self.o_tag.eq(tag)]
        return m
