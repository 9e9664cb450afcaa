"""The processing element: one int8 × int8 multiplier and one int32 accumulator."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import dsp
from .replica import hard_register

__all__ = ["ProcessingElement", "capture_cycles", "carry_stages", "product_stages"]


def product_stages(cfg):
    """Registers in the fabric between a PE's multiplier and its accumulator: 2 for arrays of
    at least 8 columns, else 1 (from the array's shape alone, like the convolution engine's
    stages, so that a simulation of a board's design counts the board's cycles).

    With one, the product's register sits between the DSP block's output and the carry chain,
    each route about half of the way: the 8x8 array out of context closed at 192 to 202 MHz
    over five placer seeds (the register to the chain, 3.1 to 3.6 ns of routing). With two,
    206 to 214 MHz over three. The iCEBreaker's 1x4 array keeps one: its logic cells are
    spent."""
    return 2 if cfg.cols >= 8 else 1


def carry_stages(cfg):
    """Registers on the carry from a PE's low half to its high half: 1, and 2 with
    ``deep_pipeline``. The low half's chain sits by the PE's DSP block and the high half's by
    what reads ``result`` (the requantization lanes, across the die): on the ULX3S's 8x16
    `lenet` design the one register's route to the high half's chain was the worst path of
    two builds (7.8 and 8.7 ns of routing, 94.45 MHz at 95 and 98.96 at 100 on placer seed
    5). With two, each register can sit at its own end."""
    return 1 + bool(cfg.deep_pipeline)


def _capture(stages, carry=1):
    return dsp.LATENCY + stages + carry - 1


def capture_cycles(cfg):
    """`ProcessingElement.capture` of ``cfg``'s PEs."""
    return _capture(product_stages(cfg), carry_stages(cfg))


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
        The sum of the previous tile, valid ``capture`` + 1 cycles after ``first`` arrived here.
    w_alt, alt : In
        (With ``alt_weight``.) While ``alt``, ``w_out`` takes ``w_alt`` instead of ``w_in``:
        the weights of the PE below come from elsewhere (the row's own bank in a row-by-row
        fully connected layer, `systolic.hw.array.SystolicArray`).

    Notes
    -----
    The product is registered once more in the fabric before the accumulator: the route out
    of the DSP block and the carry chain then sit in different cycles (at 8×8 on an ECP5-85F,
    that route alone is ~5 ns).

    The 32-bit accumulator is two 16-bit halves, the high half one cycle behind the low one:
    what the low half's sum carries out, less the product's sign (-1, 0 or +1), goes through
    a register to the high half. The longest carry chain is then 18 bits (on an ECP5, 9
    ``CCU2C`` cells where 32 bits take 16), and the two chains place independently.

    Each half restarts by clearing its register (a synchronous reset, the flip-flops' own
    reset pin) in the cycle before the new tile's first term reaches its adder, taking the
    adder's output as the finished sum in that same cycle: no multiplexer sits between an
    accumulator and its carry chain. The low half of the finished sum waits a cycle for the
    high half, and ``result`` takes both at once.

    Only the flags are reset: the operands, the accumulator and ``result`` are data, ignored
    until a ``first`` flag has passed. (Every register on the chip's reset adds a load to one
    net spread over the whole die; the data registers were 90 % of them.)
    """

    def __init__(self, target="generic", *, product_stages=1, carry_stages=1,
                 alt_weight=False, own_flags=False):
        self._target, self._stages, self._alt = target, product_stages, alt_weight
        self._own_flags, self._carry = own_flags, carry_stages
        #: Cycles from ``first`` at the PE's input to the capture of ``result``.
        self.capture = _capture(product_stages, carry_stages)
        members = {"a_in": In(signed(8)), "w_in": In(signed(8)), "first_in": In(1),
                   "a_out": Out(signed(8)), "w_out": Out(signed(8)), "first_out": Out(1),
                   "result": Out(signed(32))}
        if alt_weight:
            members.update(w_alt=In(signed(8)), alt=In(1))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = dsp.Multiplier(self._target)
        m.d.comb += [mul.a.eq(self.a_in), mul.b.eq(self.w_in)]
        # The operands and the sum are data: reset-less (see Notes), so the chip's reset
        # reaches only the flags.
        a_q = Signal(signed(8), reset_less=True)
        w_q = Signal(signed(8), reset_less=True)
        result = Signal(signed(32), reset_less=True)
        w_next = Mux(self.alt, self.w_alt, self.w_in) if self._alt else self.w_in
        m.d.sync += [a_q.eq(self.a_in), w_q.eq(w_next), self.first_out.eq(self.first_in)]
        m.d.comb += [self.a_out.eq(a_q), self.w_out.eq(w_q), self.result.eq(result)]
        product = mul.p
        for k in range(self._stages):
            product_k = Signal(signed(16), name=f"product{k}" if k else "product",
                               reset_less=True)
            m.d.sync += product_k.eq(product)
            product = product_k
        # The restart flags of the two halves, a cycle apart (see Notes); derived from
        # `first_out`, so the PE's flag pipeline is the row's own. Each is equivalent to the
        # `first_out` of a PE further along the row (``first_d0`` to the next one's,
        # ``restart_lo`` to the one after ...), and Yosys merges equivalent registers: the
        # PE's 48 enables and resets are then driven from three PEs away (on the ECP5, with
        # the other PEs' loads, 81 of them: the 8x16's slowest arcs at 100 MHz as placed,
        # 12.3 ns). With ``own_flags`` (on the ECP5, `hard_register`: flip-flop primitives,
        # which Yosys does not merge) each PE has its own.
        def flag(d, name):
            if self._own_flags:
                return hard_register(m, d, name=name, target=self._target)
            q = Signal(name=name)
            m.d.sync += q.eq(d)
            return q

        restart = self.first_out
        for k in range(self._stages - 1):
            restart = flag(restart, f"first_d{k}")
        restart_lo = flag(restart, "restart_lo")
        restart_hi = restart_lo
        for k in range(self._carry - 1):
            restart_hi = flag(restart_hi, f"restart_mid{k}")
        restart_hi = flag(restart_hi, "restart_hi")
        # Reset-less: what they hold before the first tile's restart is discarded.
        lo = Signal(16, reset_less=True)
        hi = Signal(16, reset_less=True)
        # The low half plus the signed product, in 18 bits: above the low 16 bits is what the
        # high half must add, -1, 0 or +1 (the carry out less the product's sign).
        lo_sum = Signal(signed(18))
        delta = Signal(signed(2), reset_less=True)
        hi_sum = Signal(16)
        # With more than one carry register (`carry_stages`), the high half is that many
        # cycles behind; ``lo_done`` waits as long (a tile is `isa.drain_steps` >= 2 steps).
        carry = delta
        for k in range(self._carry - 1):
            carry_k = Signal(signed(2), name=f"delta{k + 1}", reset_less=True)
            m.d.sync += carry_k.eq(carry)
            carry = carry_k
        m.d.comb += [lo_sum.eq(lo + product), hi_sum.eq(hi + carry)]
        m.d.sync += [lo.eq(lo_sum[:16]), delta.eq(lo_sum[16:]), hi.eq(hi_sum)]
        lo_done = Signal(16, reset_less=True)
        with m.If(restart_lo):
            m.d.sync += [lo.eq(0), lo_done.eq(lo_sum[:16])]
        with m.If(restart_hi):
            m.d.sync += [hi.eq(0), result.eq(Cat(lo_done, hi_sum))]
        return m
