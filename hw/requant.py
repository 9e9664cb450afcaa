"""Requantization: bias add, ``(acc * M + 2^(s-1)) >> s``, ReLU and int8 saturation.

`Requantizer` has ``cfg.rq_lanes`` lanes. With one lane per column a row of sums goes through in
one cycle; with fewer, the row goes through in ``cfg.rq_groups`` cycles, one group of lanes'
worth of channels a cycle, and each lane picks the parameters of the channel it is working on
stage by stage (a group index travels down its pipeline with the data).
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..sw import arith
from .dsp import WIDE_LATENCY, WideMultiplier
from .isa import param_lane_layout

__all__ = ["Requantizer"]

PRODUCT = signed(arith.PRODUCT_BITS)


class _Lane(wiring.Component):
    """One requantization pipeline (latency `Requantizer.LATENCY`).

    ``params[g]`` are the parameters of the channel this lane handles in group ``g``; ``group``
    names the group of the sum entering now. Two ways to multiply by ``M``:

    * ``fabric``: a shift-and-add tree written out explicitly, with the rounding constant as its
      sixteenth term; synthesis maps no DSP block here, so every DSP on the chip belongs to the
      systolic array.
    * ``dsp``: a `WideMultiplier` (two DSP blocks), then the rounding constant in an adder.
    """

    def __init__(self, cfg):
        self._cfg = cfg
        groups = cfg.rq_groups
        super().__init__({
            "acc": In(signed(arith.ACC_BITS)),
            "params": In(data.ArrayLayout(param_lane_layout(cfg), groups)),
            "group": In(range(max(groups, 2))),
            "relu": In(1),
            "out": Out(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        groups = cfg.rq_groups
        # group_at[k]: the group of the value entering stage k + 1 (k cycles after the input).
        group_at = [self.group]
        for k in range(Requantizer.LATENCY):
            g = Signal.like(self.group, name=f"group_d{k}")
            m.d.sync += g.eq(group_at[-1])
            group_at.append(g)

        def param(stage):
            if groups == 1:
                return self.params[0]
            return self.params[group_at[stage]]

        # Stage 1: bias.
        x = Signal(signed(arith.ACC_BITS))
        m.d.sync += x.eq(self.acc + param(0).bias)
        if cfg.requant_dsp:
            # Stages 2-4: the multiply. Stage 5: the rounding constant.
            m.submodules.mul = mul = WideMultiplier(cfg.target)
            m.d.comb += [mul.a.eq(x), mul.b.eq(param(1).m)]
            total = Signal(PRODUCT)
            shift = param(1 + WIDE_LATENCY).shift
            m.d.sync += total.eq(mul.p + ((Const(1, PRODUCT) << shift) >> 1))
        else:
            # Stages 2-5: sixteen terms (M's bits, then the rounding constant), four adder levels.
            rounding = Signal(PRODUCT)
            p = param(1)
            m.d.comb += rounding.eq((Const(1, PRODUCT) << p.shift) >> 1)
            terms = [Mux(p.m[i], x.as_signed() << i, 0) for i in range(arith.M_BITS)]
            terms.append(rounding)
            level = 0
            while len(terms) > 1:
                nxt = []
                for i in range(0, len(terms), 2):
                    s = Signal(PRODUCT, name=f"sum{level}_{i // 2}")
                    m.d.sync += s.eq(terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i])
                    nxt.append(s)
                terms, level = nxt, level + 1
            total = terms[0]
        # Stage 6: the shift. Stage 7: saturation (and ReLU as a clamp at 0).
        shifted = Signal(PRODUCT)
        m.d.sync += shifted.eq(total >> param(5).shift)
        lo = Mux(self.relu, 0, arith.INT8_MIN)
        with m.If(shifted > arith.INT8_MAX):
            m.d.sync += self.out.eq(arith.INT8_MAX)
        with m.Elif(shifted < lo):
            m.d.sync += self.out.eq(lo)
        with m.Else():
            m.d.sync += self.out.eq(shifted)
        return m


class Requantizer(wiring.Component):
    """``cfg.rq_lanes`` requantization lanes in parallel, with a tag carried alongside.

    The parameters and ``relu`` must hold still while data is in flight (they change only
    between channel tiles, when the pipeline is empty).

    Members
    -------
    i_valid, i_acc, i_group, i_tag : In
        ``rq_lanes`` int32 sums (without bias) of channels ``i_group * rq_lanes ..`` of the
        channel tile, and their tag.
    params : In(ArrayLayout(param_lane_layout(cfg), cfg.cols))
        Bias, multiplier and shift of each channel of the tile.
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
            "i_acc": In(data.ArrayLayout(signed(arith.ACC_BITS), cfg.rq_lanes)),
            "i_group": In(range(max(cfg.rq_groups, 2))),
            "i_tag": In(tag_shape),
            "params": In(data.ArrayLayout(param_lane_layout(cfg), cfg.cols)),
            "relu": In(1),
            "o_valid": Out(1),
            "o_data": Out(data.ArrayLayout(signed(8), cfg.rq_lanes)),
            "o_tag": Out(tag_shape),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        lanes, groups = cfg.rq_lanes, cfg.rq_groups
        for i in range(lanes):
            m.submodules[f"lane{i}"] = lane = _Lane(cfg)
            m.d.comb += [
                lane.acc.eq(self.i_acc[i]),
                lane.group.eq(self.i_group),
                lane.relu.eq(self.relu),
                self.o_data[i].eq(lane.out),
            ]
            for g in range(groups):
                m.d.comb += lane.params[g].eq(self.params[g * lanes + i])
        valid, tag = self.i_valid, self.i_tag
        for i in range(self.LATENCY):
            v, t = Signal(name=f"valid_d{i}"), Signal.like(self.i_tag, name=f"tag_d{i}")
            m.d.sync += [v.eq(valid), t.eq(tag)]
            valid, tag = v, t
        m.d.comb += [self.o_valid.eq(valid), self.o_tag.eq(tag)]
        return m
