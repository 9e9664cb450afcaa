"""Element-wise engines beside the pooling engine: the residual add and global average pooling.

Both read activation memory through the core's single read port and write their results back
(``docs/arithmetic.md``, *Residual add* and *Global average pooling*), lane-parallel, one
word of ``cols`` int8 channels at a time.

`AddEngine` reads the two operands' words alternately (the activation memory has one read
port), so it takes two cycles a word; each lane has one 8x15-bit multiplier that serves both
operands in turn. Rather than the contract's 40-bit aligned sum, it computes the same value in
25 bits: with ``p_hi`` the product whose shift is the larger (``S``), ``p_lo`` the other's
(shift ``lo``) and ``d = S - lo``, nested floors give ::

    (p_hi + (p_lo << d) + 2^(S-1)) >> S  =  ((((p_hi >> d) + p_lo) >> (lo - 1)) + 1) >> 1

(``floor((x + 2^(k-1)) / 2^k) = floor((floor(x / 2^(k-1)) + 1) / 2)``, and ``floor((x + k *
2^d) / 2^d) = floor(x / 2^d) + k``): a right shift of up to ``arith.ADD_SHIFT_SPREAD`` of one
product, a 25-bit sum, a right shift by ``lo - 1`` and the rounding bit; no 48-bit datapath.
Its parameters (``M`` and ``s`` of each operand) come from parameter memory. The datapath is a
pipeline of plain registers with no backpressure: the memory write at its end never stalls.

`GapEngine` sums each channel tile of a map over its ``H * W`` pixels (one word a cycle), then
divides: ``round_half_up(S / N) = floor((2*S + N) / (2*N))`` is computed as ``floor((2*S +
257*N) / (2*N)) - 128`` (the dividend ``X`` is then 0 to ``511*N``, the quotient 0 to 255) by a
non-restoring divider, eight steps of one adder per lane: exact for every ``N`` by construction,
with no per-``N`` constants. With ``D = 256*N`` and ``R = X``, each step takes ``R' = R - D``
if ``R >= 0``, else ``R + D``, records the quotient bit ``R' >= 0`` and doubles: ``R = 2*R'``.
Its bits are a restoring divider's (where that one keeps ``r``, this one holds ``2*r - 2*D``,
and the next step adds ``D`` back: the same ``2*r - D`` as the restoring step's trial), but the
adder's result goes straight to the register, not through a choice decided by its own carry.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..sw import arith
from . import dsp
from .config import AcceleratorConfig
from .isa import ACT_READ_LATENCY, layer_layout, param_layout, word_layout
from .replica import hard_register
from .synth import one_hot

__all__ = ["ADD_LATENCY", "AddEngine", "GAP_DIV_STEPS", "GAP_READ_LATENCY", "GAP_TILE_EXTRA",
           "GapEngine", "add_latency"]

#: Cycles from issuing the read of an add's last second-operand word to its result's write
#: (one more with ``deep_pipeline``: `add_latency`).
ADD_LATENCY = ACT_READ_LATENCY + 8
#: Quotient bits of the global pooling divider: ``floor((2*S + 257*N) / (2*N))`` is 0 to 255.
GAP_DIV_STEPS = 8
#: Cycles from the global pooling engine's read to its word in the engine's own register: the
#: activation memory's `ACT_READ_LATENCY`, then one. (The block RAMs' output registers sit in
#: their columns, the engine's adders elsewhere: the route from one to the other, with the
#: sum's carry chain behind it, was the ULX3S's worst path at 90 MHz, 8.3 of 11.0 ns routing.)
GAP_READ_LATENCY = ACT_READ_LATENCY + 1
#: Cycles a global pooling's channel tile takes beyond one a pixel read: the wait for the last
#: word (``GAP_READ_LATENCY - 1``), its sum (LAST), the dividend (DIVIDEND), the division and
#: the write (WRITE).
GAP_TILE_EXTRA = GAP_READ_LATENCY - 1 + 1 + 1 + GAP_DIV_STEPS + 1


def add_latency(cfg: AcceleratorConfig):
    """`ADD_LATENCY`, and a cycle more with ``cfg.deep_pipeline`` (the clamp a stage after the
    rounding)."""
    return ADD_LATENCY + cfg.deep_pipeline


def _act_ports(cfg):
    word = word_layout(cfg)
    return {
        "act_read": In(memory.ReadPort.Signature(addr_width=cfg.act_addr_bits, shape=word)),
        "act_write": In(memory.WritePort.Signature(addr_width=cfg.act_addr_bits, shape=word)),
    }


class AddEngine(wiring.Component):
    """Residual add of two int8 tensors, each lane ``clamp(((a*M_a << (S - s_a)) + (b*M_b << (S
    - s_b)) + 2^(S-1)) >> S)``, optionally clamped at 0 (ReLU), ``S = max(s_a, s_b)``.

    Members
    -------
    cmd : In(stream.Signature(layer_layout(cfg)))
        The descriptor (`systolic.hw.isa.describe_add`): ``in_base`` (first operand),
        ``origin`` (second operand), ``out_base``, ``cin_words`` (words of each tensor),
        ``p_base`` (lane 0 of word ``p_base`` holds ``M_a``, ``s_a``; of ``p_base + 1``,
        ``M_b``, ``s_b``) and ``relu``. Accepted when idle.
    busy : Out(1)
        From the cycle after the command is accepted until the last word is written.
    act_read, act_write, param_read : memory port signatures
        Activation memory (synchronous read), parameter memory (read at the start).
    """

    def __init__(self, cfg):
        self._cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(layer_layout(cfg))),
            "busy": Out(1),
            **_act_ports(cfg),
            "param_read": In(memory.ReadPort.Signature(addr_width=cfg.param_addr_bits,
                                                       shape=param_layout(cfg))),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        a = cfg.act_addr_bits
        cmd = self.cmd.payload
        m_a, m_b = Signal(cfg.m_bits), Signal(cfg.m_bits)
        s_a, s_b = Signal(cfg.shift_bits), Signal(cfg.shift_bits)
        lo_m1 = Signal(cfg.shift_bits)                      # min(s_a, s_b) - 1
        spread = Signal(range(arith.ADD_SHIFT_SPREAD + 1))  # |s_a - s_b|
        hi_b = Signal()                                     # s_b > s_a: b's product is p_hi
        spread_ba, spread_ab = Signal.like(spread), Signal.like(spread)
        a_m1, b_m1 = Signal.like(lo_m1), Signal.like(lo_m1)
        m.d.sync += [spread.eq(Mux(hi_b, spread_ba, spread_ab)), lo_m1.eq(Mux(hi_b, a_m1, b_m1))]
        relu = Signal()
        ptr_a, ptr_b, ptr_y = Signal(a), Signal(a), Signal(a)
        left = Signal(a + 1)                                # words still to read
        phase = Signal()                                    # reading the second operand
        p_addr = Signal(cfg.param_addr_bits)
        latency = add_latency(cfg)
        pipe = Signal(latency)                              # a word in flight, per stage

        m.d.comb += [self.act_read.en.eq(0), self.param_read.addr.eq(p_addr),
                     self.param_read.en.eq(0)]
        with m.FSM() as fsm:
            with m.State("START"):
                # One cycle out of reset: the state register changes once, which Icarus needs
                # to evaluate the outputs decoded from it (cmd.ready, the read enables).
                m.next = "IDLE"
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [
                        ptr_a.eq(cmd.in_base), ptr_b.eq(cmd.origin), ptr_y.eq(cmd.out_base),
                        left.eq(cmd.cin_words), relu.eq(cmd.relu), p_addr.eq(cmd.p_base),
                        phase.eq(0), self.busy.eq(1),
                    ]
                    m.next = "PARAM_A"
            with m.State("PARAM_A"):
                m.d.comb += self.param_read.en.eq(1)
                m.d.sync += p_addr.eq(p_addr + 1)
                m.next = "PARAM_B"
            with m.State("PARAM_B"):
                m.d.comb += self.param_read.en.eq(1)
                lane0 = self.param_read.data[0]
                m.d.sync += [m_a.eq(lane0.m), s_a.eq(lane0.shift)]
                m.next = "SHIFTS"
            with m.State("SHIFTS"):
                lane0 = self.param_read.data[0]
                m.d.sync += [m_b.eq(lane0.m), s_b.eq(lane0.shift)]
                m.next = "ALIGN"
            with m.State("ALIGN"):
                # The comparison and both ways of each difference side by side; the choice
                # between them a cycle later (below), before the pipeline needs it.
                m.d.sync += [hi_b.eq(s_b > s_a), spread_ba.eq(s_b - s_a),
                             spread_ab.eq(s_a - s_b), a_m1.eq(s_a - 1), b_m1.eq(s_b - 1)]
                m.next = "READ"
            with m.State("READ"):
                m.d.comb += [self.act_read.en.eq(1),
                             self.act_read.addr.eq(Mux(phase, ptr_b, ptr_a))]
                m.d.sync += phase.eq(~phase)
                with m.If(phase):
                    m.d.sync += [ptr_a.eq(ptr_a + 1), ptr_b.eq(ptr_b + 1), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(~pipe.any()):
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"

        # The pipeline, by cycles after a word's read (L = ACT_READ_LATENCY): L the word,
        # L + 1 the word in a register of the fabric (the activation memory's block RAMs and
        # the DSP blocks are columns apart: the route from one to the other was the ULX3S's
        # worst path at 75 MHz, 12.0 of 13.1 ns), times its operand's M in a DSP block
        # (`dsp.ScaleMultiplier`); L + 3 the product,
        # into a register in the fabric (the DSP blocks sit in their own rows, far from the
        # rest: the route from one to the shifter was the ULX3S's worst path at 90 MHz,
        # 6.5 ns); L + 4 shifted right by the spread if it is p_hi; L + 5 kept (first
        # operand) or summed (second); L + 6 the sum shifted right by lo - 1; L + 7 rounded
        # and clamped; the write takes it in cycle L + 8 (ADD_LATENCY). With
        # ``deep_pipeline`` L + 7 rounded, its limits tested beside, L + 8 clamped, the write
        # in L + 9 (rounding, tests and clamp in one stage: 11.7 ns at 100 MHz on the ULX3S).
        reading = Signal()
        m.d.comb += reading.eq(self.act_read.en)
        tag = Signal(latency)                               # second operand, per stage
        m.d.sync += [pipe.eq(Cat(reading, pipe[:-1])), tag.eq(Cat(phase & reading, tag[:-1]))]
        word_at = ACT_READ_LATENCY                          # tag[k]: a word read k + 1 ago
        prod_at = word_at + dsp.LATENCY + 1                # the product's register
        prod_bits = cfg.data_bits + cfg.m_bits + 1
        # `spread` and `lo_m1` settle a cycle after ALIGN, the first read's cycle: the first
        # word's product needs them `prod_at` cycles after it.
        assert prod_at >= 1
        # The product's shift, a cycle ahead of it (the tag a stage earlier), in a register:
        # the barrel shifter then starts from flip-flops. It and the sum's shift (`lo_m1`,
        # copied a cycle after it settles) are registers of each lane's own, which synthesis
        # keeps apart: one register drove every lane's shifter, across the array's width
        # (the 12x12 ULX3S design's worst path, lo_m1 -> shifted5, 11.5 ns of routing).
        part_shift_d = Mux(tag[prod_at - 1] == hi_b, spread, 0)
        for lane in range(cfg.cols):
            part_shift = hard_register(m, part_shift_d, name=f"part_shift{lane}",
                                       target=cfg.target, reset_less=True)
            lo_shift = hard_register(m, lo_m1, name=f"lo_m1_{lane}", target=cfg.target,
                                     reset_less=True)
            m.submodules[f"mul{lane}"] = mul = dsp.ScaleMultiplier(
                cfg.target, fabric=cfg.requant_dsp)
            word = Signal(signed(cfg.data_bits), name=f"word{lane}", reset_less=True)
            m.d.sync += word.eq(self.act_read.data[lane])
            m.d.comb += [mul.a.eq(word), mul.b.eq(Mux(tag[word_at], m_b, m_a))]
            prod = Signal(signed(prod_bits), name=f"prod{lane}", reset_less=True)
            m.d.sync += prod.eq(mul.p)
            part = Signal(signed(prod_bits), name=f"part{lane}", reset_less=True)
            first = Signal(signed(prod_bits), name=f"first{lane}", reset_less=True)
            total = Signal(signed(prod_bits + 1), name=f"total{lane}", reset_less=True)
            shifted = Signal(signed(prod_bits + 1), name=f"shifted{lane}", reset_less=True)
            y = Signal(signed(cfg.data_bits), name=f"y{lane}", reset_less=True)
            m.d.sync += part.eq(prod >> part_shift)
            # The enables of ``first`` and ``total`` (``pipe[prod_at + 1]``, with the tag
            # clear or set) are flip-flops of the lane's own, a stage of ``pipe`` and ``tag``
            # early: from one LUT each they drove 400 flip-flops across the array's width.
            keep = hard_register(m, pipe[prod_at] & ~tag[prod_at], name=f"keep{lane}",
                                 target=cfg.target)
            add = hard_register(m, pipe[prod_at] & tag[prod_at], name=f"add{lane}",
                                target=cfg.target)
            with m.If(keep):
                m.d.sync += first.eq(part)
            with m.If(add):
                m.d.sync += total.eq(first + part)
            m.d.sync += shifted.eq(total >> lo_shift)
            # ``rounded = (shifted + 1) >> 1`` clamped: its limits tested on ``shifted`` itself,
            # beside the rounding's adder rather than after it (``rounded > INT8_MAX`` is
            # ``shifted >= 2 * INT8_MAX + 1``, ``rounded < low`` is ``shifted < 2 * low - 1``).
            rounded = Signal(signed(prod_bits + 1), name=f"rounded{lane}")
            m.d.comb += rounded.eq((shifted + 1) >> 1)
            low = Mux(relu, 0, arith.INT8_MIN)
            above = shifted >= 2 * arith.INT8_MAX + 1
            below = Mux(relu, shifted < -1, shifted < 2 * arith.INT8_MIN - 1)
            if cfg.deep_pipeline:
                # Only the low 8 bits of the rounded sum reach ``y``: the clamp decides the rest.
                rounded_q = Signal(signed(cfg.data_bits), name=f"rounded_q{lane}",
                                   reset_less=True)
                above_q = Signal(name=f"above{lane}", reset_less=True)
                below_q = Signal(name=f"below{lane}", reset_less=True)
                m.d.sync += [rounded_q.eq(rounded), above_q.eq(above), below_q.eq(below)]
                rounded, above, below = rounded_q, above_q, below_q
            m.d.sync += y.eq(Mux(above, arith.INT8_MAX, Mux(below, low, rounded)))
            m.d.comb += self.act_write.data[lane].eq(y)
        assert prod_at + 5 + cfg.deep_pipeline == latency
        m.d.comb += [self.act_write.en.eq(pipe[-1] & tag[-1]), self.act_write.addr.eq(ptr_y)]
        with m.If(self.act_write.en):
            m.d.sync += ptr_y.eq(ptr_y + 1)
        one_hot(fsm, cfg.target)
        return m


class GapEngine(wiring.Component):
    """Global average pooling: each channel's ``round_half_up(S / N)`` over a map's ``N = H *
    W`` pixels, for each of a batch of maps stored one after the other.

    Members
    -------
    cmd : In(stream.Signature(layer_layout(cfg)))
        The descriptor (`systolic.hw.isa.describe_gap`): ``in_base``, ``out_base``, ``in_h``,
        ``in_w``, ``cin_words`` and ``batch``. Accepted when idle.
    busy : Out(1)
        From the cycle after the command is accepted until the last word is written.
    act_read, act_write : memory port signatures
        Activation memory (synchronous read).
    """

    def __init__(self, cfg):
        self._cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(layer_layout(cfg))),
            "busy": Out(1),
            **_act_ports(cfg),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        a, dim = cfg.act_addr_bits, cfg.dim_bits
        cmd = self.cmd.payload
        nb = a + 1                                          # N <= act_depth
        in_w, in_h, cin_words = Signal(dim), Signal(dim), Signal(a + 1)
        x, y, cw, images = Signal(dim), Signal(dim), Signal(a + 1), Signal(8)
        tile, rd, nxt, wr = Signal(a), Signal(a), Signal(a), Signal(a)
        n = Signal(nb)                                      # pixels of the tile so far
        step = Signal(range(GAP_DIV_STEPS + 1))
        n_bias = Signal(nb + 9)                             # 257 * N
        wait = Signal(range(GAP_READ_LATENCY))
        got = Signal(GAP_READ_LATENCY)                      # got[-1]: a read's word arrives
        acc_bits = cfg.data_bits + nb
        # X < 512*N and D = 256*N: every R' is in [-D, D), every R in [-2*D, 2*D).
        d_bits = nb + GAP_DIV_STEPS
        r_bits = d_bits + 2
        lanes = range(cfg.cols)
        # Data, reset-less (the sums are cleared when a command is taken and after each tile).
        word = [Signal(signed(cfg.data_bits), name=f"word{i}", reset_less=True) for i in lanes]
        acc = [Signal(signed(acc_bits), name=f"acc{i}", reset_less=True) for i in lanes]
        rem = [Signal(signed(r_bits), name=f"rem{i}", reset_less=True) for i in lanes]
        quo = [Signal(GAP_DIV_STEPS, name=f"quo{i}", reset_less=True) for i in lanes]
        # D, set in LAST: a copy of each lane's own from DIVIDEND on (synthesis keeps them apart:
        # one register drove the sixteen lanes' adders across the array's width).
        divisor = Signal(d_bits)

        m.d.comb += [self.act_read.en.eq(0), self.act_read.addr.eq(rd), self.act_write.en.eq(0),
                     self.act_write.addr.eq(wr)]
        m.d.sync += got.eq(Cat(self.act_read.en, got[:-1]))
        trial = []
        for i in lanes:
            # ``R - D`` as ``R + ~D + 1``: one adder, its operand and carry-in chosen by R's sign.
            lane_d = hard_register(m, divisor, name=f"divisor{i}", target=cfg.target,
                                   reset_less=True)
            d_ext = Signal(signed(r_bits), name=f"d_ext{i}")
            m.d.comb += d_ext.eq(lane_d)
            neg = rem[i][-1]
            trial.append(Signal(signed(r_bits), name=f"trial{i}"))
            m.d.comb += trial[i].eq(rem[i] + Mux(neg, d_ext, ~d_ext) + ~neg)
            m.d.sync += word[i].eq(self.act_read.data[i])
            with m.If(got[-1]):
                m.d.sync += acc[i].eq(acc[i] + word[i])
            # ``quo - 128`` as int8: the quotient's top bit flipped.
            m.d.comb += self.act_write.data[i].eq(quo[i] ^ 0x80)
        # ``x == 1``, ``y == 1`` and the same of the map's width and height, as flip-flops set
        # with ``x`` and ``y``: READ's end decided from registers. (From the comparators, five
        # levels to the state register, whose decodings reach every lane's divider: the
        # ULX3S's worst path at 75 MHz, 10.9 of 12.7 ns routing.)
        x_end, y_end, w_one, h_one = Signal(), Signal(), Signal(), Signal()
        with m.FSM() as fsm:
            with m.State("START"):
                # One cycle out of reset: the state register changes once, which Icarus needs
                # to evaluate the outputs decoded from it (cmd.ready, the read enables).
                m.next = "IDLE"
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [
                        in_w.eq(cmd.in_w), in_h.eq(cmd.in_h), cin_words.eq(cmd.cin_words),
                        x.eq(cmd.in_w), y.eq(cmd.in_h), cw.eq(cmd.cin_words),
                        images.eq(cmd.batch), tile.eq(cmd.in_base), rd.eq(cmd.in_base),
                        wr.eq(cmd.out_base), n.eq(0), self.busy.eq(1),
                        x_end.eq(cmd.in_w == 1), y_end.eq(cmd.in_h == 1),
                        w_one.eq(cmd.in_w == 1), h_one.eq(cmd.in_h == 1),
                    ]
                    m.d.sync += [acc[i].eq(0) for i in lanes]
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += self.act_read.en.eq(1)
                m.d.sync += [rd.eq(rd + cin_words), n.eq(n + 1), x.eq(x - 1), x_end.eq(x == 2)]
                with m.If(x_end):
                    m.d.sync += [x.eq(in_w), x_end.eq(w_one), y.eq(y - 1), y_end.eq(y == 2)]
                    with m.If(y_end):
                        m.d.sync += [y.eq(in_h), y_end.eq(h_one)]
                        with m.If(cw == cin_words):
                            m.d.sync += nxt.eq(rd + cin_words)   # the next image's first word
                        m.next = "WAIT"
            with m.State("WAIT"):
                # The last word is on its way (GAP_READ_LATENCY - 1 cycles).
                m.d.sync += [n_bias.eq((n << 8) + n), wait.eq(wait + 1)]
                with m.If(wait == GAP_READ_LATENCY - 2):
                    m.d.sync += wait.eq(0)
                    m.next = "LAST"
            with m.State("LAST"):
                # The last word is summed this cycle.
                m.d.sync += [step.eq(GAP_DIV_STEPS), divisor.eq(n << GAP_DIV_STEPS)]
                m.next = "DIVIDEND"
            with m.State("DIVIDEND"):
                # The dividend from the sum's register: the sum and the dividend were two
                # carry chains in one cycle, the ULX3S's worst path at 75 MHz (11.7 ns).
                for i in lanes:
                    m.d.sync += rem[i].eq((acc[i] << 1) + n_bias)
                m.next = "DIVIDE"
            with m.State("DIVIDE"):
                m.d.sync += step.eq(step - 1)
                for i in lanes:
                    m.d.sync += [rem[i].eq(trial[i] << 1),
                                 quo[i].eq(Cat(~trial[i][-1], quo[i][:-1]))]
                with m.If(step == 1):
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += self.act_write.en.eq(1)
                m.d.sync += [wr.eq(wr + 1), n.eq(0), cw.eq(cw - 1), tile.eq(tile + 1),
                             rd.eq(tile + 1)]
                m.d.sync += [acc[i].eq(0) for i in lanes]
                m.next = "READ"
                with m.If(cw == 1):
                    m.d.sync += [cw.eq(cin_words), images.eq(images - 1), tile.eq(nxt),
                                 rd.eq(nxt)]
                    with m.If(images == 1):
                        m.d.sync += self.busy.eq(0)
                        m.next = "IDLE"
        one_hot(fsm, cfg.target)
        return m
