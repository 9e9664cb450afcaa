"""Requantization: bias add, ``(acc * M + 2^(s-1)) >> s``, ReLU and int8 saturation.

`Requantizer` has ``cfg.rq_lanes`` lanes. With one lane per column a row of sums goes through in
one cycle; with fewer, the row goes through in ``cfg.rq_groups`` cycles, one group of lanes'
worth of channels a cycle. Each sum comes with its channel's parameters, so consecutive sums
may belong to different channels.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from ..sw import arith
from .dsp import WIDE_LATENCY, WideMultiplier
from .isa import param_lane_layout, param_layout
from .replica import hard_register

__all__ = ["Requantizer"]

PRODUCT = signed(arith.PRODUCT_BITS)


class _Lane(wiring.Component):
    """One requantization pipeline (latency `Requantizer.LATENCY`).

    ``param`` arrives with ``acc``; the multiplier and shift travel down the pipeline with the
    value they belong to. Two ways to multiply by ``M``:

    * ``fabric``: a shift-and-add tree written out explicitly, with the rounding constant as its
      sixteenth term; synthesis maps no DSP block here, so every DSP on the chip belongs to the
      systolic array.
    * ``dsp``: a `WideMultiplier` (two DSP blocks), then the rounding constant in an adder.
    """

    def __init__(self, cfg):
        self._cfg = cfg
        super().__init__({
            "acc": In(signed(arith.ACC_BITS)),
            "param": In(param_lane_layout(cfg)),
            "relu": In(1),
            "out": Out(signed(8)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        # shift_at[k]: the shift of the value k cycles after the input.
        shift_at = [self.param.shift]
        for k in range(5):
            d = Signal.like(self.param.shift, name=f"shift_d{k + 1}", reset_less=True)
            m.d.sync += d.eq(shift_at[-1])
            shift_at.append(d)
        m_d1 = Signal.like(self.param.m, reset_less=True)
        m.d.sync += m_d1.eq(self.param.m)

        # Stage 1: bias.
        x = Signal(signed(arith.ACC_BITS), reset_less=True)
        m.d.sync += x.eq(self.acc + self.param.bias)
        if cfg.requant_dsp:
            # Stages 2-4: the multiply. Stage 5: the rounding constant.
            m.submodules.mul = mul = WideMultiplier(cfg.target)
            m.d.comb += [mul.a.eq(x), mul.b.eq(m_d1)]
            total = Signal(PRODUCT, reset_less=True)
            shift = shift_at[1 + WIDE_LATENCY]
            m.d.sync += total.eq(mul.p + ((Const(1, PRODUCT) << shift) >> 1))
        else:
            # Stages 2-5: sixteen terms (M's bits, then the rounding constant), four adder levels.
            rounding = Signal(PRODUCT)
            m.d.comb += rounding.eq((Const(1, PRODUCT) << shift_at[1]) >> 1)
            terms = [Mux(m_d1[i], x.as_signed() << i, 0) for i in range(arith.M_BITS)]
            terms.append(rounding)
            level = 0
            while len(terms) > 1:
                nxt = []
                for i in range(0, len(terms), 2):
                    s = Signal(PRODUCT, name=f"sum{level}_{i // 2}", reset_less=True)
                    m.d.sync += s.eq(terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i])
                    nxt.append(s)
                terms, level = nxt, level + 1
            total = terms[0]
        # Stages 6 and 7: the shift, by the shift's multiple of eight, then by the rest (a
        # barrel shift of the whole product in one stage was the ULX3S's worst path at 90 MHz).
        # Stage 8: saturation (and ReLU as a clamp at 0).
        # Saturation from the sign and the bits above an int8's (wide ORs and ANDs) rather
        # than two comparisons of the whole product (carry chains of its width). `relu`
        # holds still for a layer; it goes through a register of the lane's own (on the ECP5
        # one Yosys cannot merge with the other lanes': merged, one flip-flop drove all the
        # lanes' outputs, a 12.4 ns route on the ULX3S).
        coarse = Signal(PRODUCT, reset_less=True)
        m.d.sync += coarse.eq(total >> Cat(Const(0, 3), shift_at[5][3:]))
        fine = Signal(3, name="shift_d6", reset_less=True)
        m.d.sync += fine.eq(shift_at[5][:3])
        shifted = Signal(PRODUCT, reset_less=True)
        m.d.sync += shifted.eq(coarse >> fine)
        if cfg.target == "ecp5":
            relu = hard_register(m, self.relu, name="relu", target=cfg.target)
        else:
            relu = Signal()
            m.d.sync += relu.eq(self.relu)
        negative, high = shifted[-1], shifted[7:]
        out = Signal(signed(8), reset_less=True)       # data: no reset (see `hard_register`)
        m.d.comb += self.out.eq(out)
        with m.If(~negative & high.any()):
            m.d.sync += out.eq(arith.INT8_MAX)
        with m.Elif(negative & relu):
            m.d.sync += out.eq(0)
        with m.Elif(negative & ~high.all()):
            m.d.sync += out.eq(arith.INT8_MIN)
        with m.Else():
            m.d.sync += out.eq(shifted)
        return m


class Requantizer(wiring.Component):
    """``cfg.rq_lanes`` requantization lanes in parallel, with a tag carried alongside.

    ``relu`` must hold still while data is in flight (it changes only between layers).

    Members
    -------
    i_valid, i_acc, i_tag : In
        ``rq_lanes`` int32 sums (without bias), and their tag.
    i_params : In(param_layout(cfg))
        Bias, multiplier and shift of each of those sums' channels.
    relu : In(1)
        Clamp at 0.
    o_valid, o_data, o_tag : Out
        The int8 results, `LATENCY` cycles later.
    """

    LATENCY = 8
    _TAG_SLOTS = 8      # a power of two above LATENCY - 1: ``ptr`` wraps round by itself
    assert _TAG_SLOTS > LATENCY - 1
    assert _TAG_SLOTS & (_TAG_SLOTS - 1) == 0

    def __init__(self, cfg, tag_shape):
        self._cfg = cfg
        super().__init__({
            "i_valid": In(1),
            "i_acc": In(data.ArrayLayout(signed(arith.ACC_BITS), cfg.rq_lanes)),
            "i_tag": In(tag_shape),
            "i_params": In(param_layout(cfg)),
            "relu": In(1),
            "o_valid": Out(1),
            "o_data": Out(data.ArrayLayout(signed(8), cfg.rq_lanes)),
            "o_tag": Out(tag_shape),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        for i in range(cfg.rq_lanes):
            m.submodules[f"lane{i}"] = lane = _Lane(cfg)
            m.d.comb += [
                lane.acc.eq(self.i_acc[i]),
                lane.param.eq(self.i_params[i]),
                lane.relu.eq(self.relu),
                self.o_data[i].eq(lane.out),
            ]
        valid, tag = self.i_valid, self.i_tag
        for i in range(self.LATENCY):
            v = Signal(name=f"valid_d{i}")
            m.d.sync += v.eq(valid)
            valid = v
        m.d.comb += self.o_valid.eq(valid)
        if cfg.target == "ice40":
            # On the iCE40, whose logic cells are what the design runs out of, the tag waits
            # in a block RAM (of which it has a few to spare) instead of `LATENCY` registers:
            # written every cycle at ``ptr``, read back from where it was written `LATENCY` - 1
            # cycles before, so that the read port's register puts it out `LATENCY` cycles
            # after it went in (and before it is written over, `_TAG_SLOTS` cycles after).
            slots = self._TAG_SLOTS
            m.submodules.tags = tags = memory.Memory(
                shape=self.i_tag.shape(), depth=slots, init=[],
                attrs={"ram_style": "block", "no_rw_check": 1})
            wr, rd = tags.write_port(), tags.read_port()
            ptr = Signal(range(slots))
            m.d.sync += ptr.eq(ptr + 1)
            m.d.comb += [wr.en.eq(1), wr.addr.eq(ptr), wr.data.eq(tag),
                         rd.addr.eq(ptr - (self.LATENCY - 1)), self.o_tag.eq(rd.data)]
        else:
            for i in range(self.LATENCY):
                t = Signal.like(self.i_tag, name=f"tag_d{i}", reset_less=True)   # o_valid says
                m.d.sync += t.eq(tag)
                tag = t
            m.d.comb += self.o_tag.eq(tag)
        return m
