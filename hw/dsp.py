"""The int8 × int8 → int16 multiplier of a processing element, one hard DSP block per instance.

Every target has the same contract, so the processing element is written once:
``p`` during cycle *t* + `LATENCY` equals ``a * b`` sampled at cycle *t*.

The two pipeline registers (operands in, product out) live *inside* the DSP block on the
FPGA targets. That is the point of instantiating the primitive instead of inferring ``*``:
Yosys maps an inferred multiply to a bare combinational MULT18X18D / SB_MAC16 and leaves the
registers in the fabric, so every multiply path pays two trips through the general routing
(fabric flip-flop → DSP input pins, DSP output pins → fabric flip-flop) on top of the
multiplier's own delay. With the registers in the block the multiplier is a register-to-register
path internal to the DSP, and only the short clock-to-out of the output register and the
setup of the input register touch the fabric.
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..sw import arith
from .config import TARGETS, ConfigError

__all__ = ["LATENCY", "WIDE_LATENCY", "Multiplier", "ScaleMultiplier", "WideMultiplier"]

#: Cycles from ``a``/``b`` sampled to ``p`` valid, for every target.
LATENCY = 2

_DATA_BITS = 8
_PRODUCT_BITS = 2 * _DATA_BITS



def mult18x18d(a18, b18, p36):
    """An ECP5 MULT18X18D computing ``p36 = a18 * b18`` (both signed), with its A/B input
    registers and output register on CLK0/CE0/RST0 and the pipeline register bypassed: a
    latency of 2."""
    ports = {}
    for i in range(18):
        ports[f"i_A{i}"] = a18[i]
        ports[f"i_B{i}"] = b18[i]
        ports[f"i_C{i}"] = Const(0, 1)
    for i in range(36):
        ports[f"o_P{i}"] = p36[i]
    return Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
        p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
        p_REG_INPUTC_CLK="NONE",
        p_REG_PIPELINE_CLK="NONE",
        p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
        p_GSR="DISABLED", p_RESETMODE="SYNC",
        p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED", p_CAS_MATCH_REG="FALSE",
        i_CLK0=ClockSignal("sync"), i_CE0=Const(1, 1), i_RST0=Const(0, 1),
        i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1),
        i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
        **ports,
    )

def _pipelined_product(m, a, b, p, stages):
    """``p = a * b`` through ``stages`` registers (operands, product, then extra product
    stages): the `generic` target's stand-in for a DSP block's registered pipeline."""
    a_q = Signal.like(a, reset_less=True)
    b_q = Signal.like(b, reset_less=True)
    m.d.sync += [a_q.eq(a), b_q.eq(b)]
    q = a_q * b_q
    for i in range(stages - 1):
        r = Signal.like(p, reset_less=True, name=f"product_d{i}")
        m.d.sync += r.eq(q)
        q = r
    m.d.comb += p.eq(q)


class _TargetComponent(wiring.Component):
    """A component built for one of the multiplier targets; an unknown one is an error."""

    def __init__(self, target="generic"):
        if target not in TARGETS:
            self._MustUse__silence = True  # never built, so never "unused"
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
        self.target = target
        super().__init__()


class Multiplier(_TargetComponent):
    """Signed 8 × 8 → 16 bit multiplier with a fixed two-cycle latency.

    Parameters
    ----------
    target : str
        ``generic`` (Amaranth ``*`` between two registers; what RTL simulation uses),
        ``ecp5`` (one ``MULT18X18D`` with its A/B input registers and output register enabled)
        or ``ice40`` (one ``SB_MAC16`` in signed 8 × 8 mode with its input and product
        registers enabled).

    Members
    -------
    a : In(signed(8))
        Multiplicand, sampled every cycle.
    b : In(signed(8))
        Multiplier, sampled every cycle.
    p : Out(signed(16))
        ``a * b`` as sampled `LATENCY` cycles earlier. Exact: the product of two int8 values
        always fits int16.

    Raises
    ------
    ConfigError
        If ``target`` is not one of :data:`systolic.hw.config.TARGETS`.

    Notes
    -----
    The registers have no clock enable and no reset: the processing element qualifies the
    product with its own (equally delayed) control bits. Their power-up contents are
    unspecified, so ``p`` is meaningful only from cycle `LATENCY` on.
    """

    a: In(signed(_DATA_BITS))
    b: In(signed(_DATA_BITS))
    p: Out(signed(_PRODUCT_BITS))

    def elaborate(self, platform):
        return {"generic": self._generic, "ecp5": self._ecp5, "ice40": self._ice40}[self.target]()

    # One method per target; each builds the whole two-stage pipeline. ---------------------

    def _generic(self):
        m = Module()
        _pipelined_product(m, self.a, self.b, self.p, LATENCY)
        return m

    def _ecp5(self):
        # MULT18X18D: 18 × 18 → 36; inputs sign-extended to 18 bits with SIGNEDA/SIGNEDB set,
        # the low 16 bits of P are the exact int16 product. CLK0/CE0/RST0 clock the A and B
        # input registers and the output register; the pipeline register stays bypassed
        # (nextpnr's timing model covers the input and output registers). CLK1-3, CE1-3,
        # RST1-3 and the shift-chain inputs stay unconnected: nextpnr cannot route a constant
        # to a DSP clock pin.
        m = Module()
        a18 = Signal(signed(18))
        b18 = Signal(signed(18))
        p36 = Signal(36)
        m.d.comb += [a18.eq(self.a), b18.eq(self.b), self.p.eq(p36[:_PRODUCT_BITS])]
        m.submodules.mult = mult18x18d(a18, b18, p36)
        return m

    def _ice40(self):
        # SB_MAC16 in 8 × 8 mode: the bottom multiplier takes A[7:0] × B[7:0] and, with
        # A_SIGNED/B_SIGNED, treats them as int8. A_REG/B_REG register the operands,
        # BOT_8x8_MULT_REG the 16-bit product, and BOTOUTPUT_SELECT=2 routes that product
        # register to O[15:0]. The top half of the block is left unused.
        m = Module()
        a16 = Signal(signed(16))
        b16 = Signal(signed(16))
        o = Signal(32)
        m.d.comb += [a16.eq(self.a), b16.eq(self.b), self.p.eq(o[:_PRODUCT_BITS])]
        zero16 = Const(0, 16)
        m.submodules.mac = Instance(
            "SB_MAC16",
            p_NEG_TRIGGER=Const(0, 1),
            p_C_REG=Const(0, 1), p_A_REG=Const(1, 1), p_B_REG=Const(1, 1), p_D_REG=Const(0, 1),
            p_TOP_8x8_MULT_REG=Const(0, 1), p_BOT_8x8_MULT_REG=Const(1, 1),
            p_PIPELINE_16x16_MULT_REG1=Const(0, 1), p_PIPELINE_16x16_MULT_REG2=Const(0, 1),
            p_TOPOUTPUT_SELECT=Const(0, 2), p_TOPADDSUB_LOWERINPUT=Const(0, 2),
            p_TOPADDSUB_UPPERINPUT=Const(0, 1), p_TOPADDSUB_CARRYSELECT=Const(0, 2),
            p_BOTOUTPUT_SELECT=Const(2, 2), p_BOTADDSUB_LOWERINPUT=Const(0, 2),
            p_BOTADDSUB_UPPERINPUT=Const(0, 1), p_BOTADDSUB_CARRYSELECT=Const(0, 2),
            p_MODE_8x8=Const(1, 1), p_A_SIGNED=Const(1, 1), p_B_SIGNED=Const(1, 1),
            i_CLK=ClockSignal("sync"), i_CE=Const(1, 1),
            i_A=a16, i_B=b16,
            i_C=zero16, i_D=zero16,
            i_AHOLD=Const(0, 1), i_BHOLD=Const(0, 1), i_CHOLD=Const(0, 1), i_DHOLD=Const(0, 1),
            i_IRSTTOP=Const(0, 1), i_IRSTBOT=Const(0, 1),
            i_ORSTTOP=Const(0, 1), i_ORSTBOT=Const(0, 1),
            i_OLOADTOP=Const(0, 1), i_OLOADBOT=Const(0, 1),
            i_ADDSUBTOP=Const(0, 1), i_ADDSUBBOT=Const(0, 1),
            i_OHOLDTOP=Const(0, 1), i_OHOLDBOT=Const(0, 1),
            i_CI=Const(0, 1), i_ACCUMCI=Const(0, 1), i_SIGNEXTIN=Const(0, 1),
            o_O=o,
        )
        return m


#: Cycles from ``a``/``b`` sampled to ``p`` valid in a `WideMultiplier`, for every target.
WIDE_LATENCY = 3


class WideMultiplier(_TargetComponent):
    """Signed 32 × unsigned 15 → signed 47 bit multiplier on two DSP blocks, latency 3.

    The requantizer's ``(acc + bias) * M`` when ``requant_dsp`` is set. ``a`` is split into a
    signed high half and an unsigned low half; each half times ``b`` is one 16 × 16 multiply in
    its own DSP block with the operand and product registers inside, and a fabric register
    holds ``(hi << 16) + lo``.

    Parameters
    ----------
    target : str
        ``generic`` (Amaranth ``*`` between three registers), ``ice40`` (two ``SB_MAC16`` in
        16 × 16 mode) or ``ecp5`` (two ``MULT18X18D``).

    Members
    -------
    a : In(signed(32))
    b : In(unsigned(15))
    p : Out(signed(47))
        ``a * b`` as sampled `WIDE_LATENCY` cycles earlier.
    """

    a: In(signed(32))
    b: In(15)
    p: Out(signed(47))

    def elaborate(self, platform):
        m = Module()
        if self.target == "generic":
            _pipelined_product(m, self.a, self.b, self.p, WIDE_LATENCY)
            return m
        p = Signal.like(self.p, reset_less=True)
        m.d.comb += self.p.eq(p)
        hi, lo = Signal(signed(32)), Signal(32)
        block = self._ice40 if self.target == "ice40" else self._ecp5
        block(m, "hi", self.a[16:].as_signed(), True, hi)
        block(m, "lo", self.a[:16], False, lo)
        m.d.sync += p.eq((hi << 16) + lo)
        return m

    def _ice40(self, m, name, a16, a_signed, out):
        # SB_MAC16 in 16 x 16 mode: A_REG/B_REG register the operands,
        # PIPELINE_16x16_MULT_REG2 the 32-bit product, and TOP/BOTOUTPUT_SELECT=3 route that
        # register to O. `b` (M, below 2**15) is unsigned; the low half of `a` is unsigned
        # too (A_SIGNED=0), the high half signed.
        o = Signal(32)
        m.d.comb += out.eq(o)
        zero16 = Const(0, 16)
        m.submodules[name] = Instance(
            "SB_MAC16",
            p_NEG_TRIGGER=Const(0, 1),
            p_C_REG=Const(0, 1), p_A_REG=Const(1, 1), p_B_REG=Const(1, 1), p_D_REG=Const(0, 1),
            p_TOP_8x8_MULT_REG=Const(0, 1), p_BOT_8x8_MULT_REG=Const(0, 1),
            p_PIPELINE_16x16_MULT_REG1=Const(0, 1), p_PIPELINE_16x16_MULT_REG2=Const(1, 1),
            p_TOPOUTPUT_SELECT=Const(3, 2), p_TOPADDSUB_LOWERINPUT=Const(0, 2),
            p_TOPADDSUB_UPPERINPUT=Const(0, 1), p_TOPADDSUB_CARRYSELECT=Const(0, 2),
            p_BOTOUTPUT_SELECT=Const(3, 2), p_BOTADDSUB_LOWERINPUT=Const(0, 2),
            p_BOTADDSUB_UPPERINPUT=Const(0, 1), p_BOTADDSUB_CARRYSELECT=Const(0, 2),
            p_MODE_8x8=Const(0, 1), p_A_SIGNED=Const(int(a_signed), 1), p_B_SIGNED=Const(0, 1),
            i_CLK=ClockSignal("sync"), i_CE=Const(1, 1),
            i_A=a16, i_B=Cat(self.b, Const(0, 1)),
            i_C=zero16, i_D=zero16,
            i_AHOLD=Const(0, 1), i_BHOLD=Const(0, 1), i_CHOLD=Const(0, 1), i_DHOLD=Const(0, 1),
            i_IRSTTOP=Const(0, 1), i_IRSTBOT=Const(0, 1),
            i_ORSTTOP=Const(0, 1), i_ORSTBOT=Const(0, 1),
            i_OLOADTOP=Const(0, 1), i_OLOADBOT=Const(0, 1),
            i_ADDSUBTOP=Const(0, 1), i_ADDSUBBOT=Const(0, 1),
            i_OHOLDTOP=Const(0, 1), i_OHOLDBOT=Const(0, 1),
            i_CI=Const(0, 1), i_ACCUMCI=Const(0, 1), i_SIGNEXTIN=Const(0, 1),
            o_O=o,
        )

    def _ecp5(self, m, name, a16, a_signed, out):
        # MULT18X18D, signed 18 x 18 with the A/B input and output registers (as `Multiplier`);
        # both halves of `a` and `b` are extended to 18 bits so that the signed product is
        # exact.
        a18, b18, p36 = Signal(signed(18)), Signal(signed(18)), Signal(36)
        m.d.comb += [a18.eq(a16.as_signed() if a_signed else a16), b18.eq(self.b),
                     out.eq(p36[:32])]
        m.submodules[name] = mult18x18d(a18, b18, p36)


class ScaleMultiplier(_TargetComponent):
    """Signed 8 × unsigned 15 → signed 24 bit multiplier, latency `LATENCY` (2), one DSP block
    or none.

    An int8 activation times a requantization multiplier ``M`` (the residual add's operands).

    Parameters
    ----------
    target : str
        ``generic`` and ``ice40`` (Amaranth ``*`` between two registers; Yosys maps it to an
        ``SB_MAC16`` with ``-dsp``) or ``ecp5`` (one ``MULT18X18D`` with its input and output
        registers, as `Multiplier`).
    fabric : bool
        On the ECP5, no DSP block: shift-and-add in the fabric, in the same two stages (the
        DSP blocks then go to the requantizer, ``requant_dsp``). The first stage sums ``M``
        shifted by ``a``'s low four bits and, apart, by its high four (the sign bit's term
        subtracted), four terms each; the second adds the two sums, the high one shifted by
        four: a carry chain of 19 to 24 bits a stage after two levels of them.

    Members
    -------
    a : In(signed(8))
    b : In(unsigned(15))
    p : Out(signed(24))
        ``a * b`` as sampled `LATENCY` cycles earlier.
    """

    a: In(signed(_DATA_BITS))
    b: In(arith.M_BITS)
    p: Out(signed(_DATA_BITS + arith.M_BITS + 1))

    def __init__(self, target="generic", *, fabric=False):
        self._fabric = fabric
        super().__init__(target)

    def elaborate(self, platform):
        m = Module()
        if self.target == "ecp5" and self._fabric:
            half = _DATA_BITS // 2
            lo = Signal(arith.M_BITS + half, reset_less=True)
            hi = Signal(signed(arith.M_BITS + half), reset_less=True)
            p = Signal.like(self.p, reset_less=True)

            def terms(bits):
                return [Mux(self.a[i], self.b << (i % half), 0) for i in bits]

            lo_t, hi_t = terms(range(half)), terms(range(half, _DATA_BITS))
            hi_t[-1] = -hi_t[-1]                              # the sign bit weighs -2**7
            m.d.sync += [lo.eq((lo_t[0] + lo_t[1]) + (lo_t[2] + lo_t[3])),
                         hi.eq((hi_t[0] + hi_t[1]) + (hi_t[2] + hi_t[3])),
                         p.eq(lo + (hi << half))]
            m.d.comb += self.p.eq(p)
        elif self.target == "ecp5":
            a18, b18, p36 = Signal(signed(18)), Signal(signed(18)), Signal(36)
            m.d.comb += [a18.eq(self.a), b18.eq(self.b), self.p.eq(p36[:len(self.p)])]
            m.submodules.mult = mult18x18d(a18, b18, p36)
        else:
            _pipelined_product(m, self.a, self.b, self.p, LATENCY)
        return m
