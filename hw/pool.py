"""The pooling engine: max and average pooling of a streamed feature map, lane-parallel.

Pooling is separable, so the engine reduces each window in two passes of the same unit, a
`_Window`: first along a row (each input word is combined with the words of the same channel
tile at the one or two previous pixels), then down the columns (each row-reduced word is
combined with the row-reduced words of the same output column and tile in the one or two
previous rows). Each `_Window` keeps its history in a block RAM, so the engine needs a line
buffer of one *output* row of row-reduced words, not ``k`` input rows. `_Finish` turns window
sums into averages with a constant multiply written as shifts and adds, so that no DSP block
is spent on it. An engine built without averaging (``cfg.pool_avg`` false) has no sums at all:
its history memories hold int8 lanes and `_Finish` only registers.

The engine is one pipeline that advances as a whole whenever its output register is free
(``en``), so every stage is a plain register and no ready signal ripples back through it.
Block RAM read data goes straight into a register (the block RAM's clock-to-output time is
long on ECP5), and no stage has more than two carry chains in series.

Streams carry activation words in the activation memory's order (``isa`` module docstring):
for each pixel in raster order, ``cin_words`` words of ``cols`` int8 channels.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..sw import arith
from .config import AcceleratorConfig
from .isa import Op, layer_layout, word_layout

__all__ = ["PoolEngine", "pool_latency", "pool_line_words", "pool_stages", "times_const"]

_TILE_DEPTH = 256           # cin_words is an 8-bit descriptor field


def pool_line_words(cfg: AcceleratorConfig):
    """Line buffer depth in words: the largest ``out_w * cin_words`` a pooling layer may have.

    Four words per pixel of a ``max_dim``-wide map (32 channels with 8 lanes), rounded up to a
    power of two, and never more than half the activation memory: a layer whose output row is
    longer cannot have its input (at least two rows) in the activation memory anyway.
    """
    return min(1 << (4 * cfg.max_dim - 1).bit_length(), cfg.act_depth // 2)


def _split(cfg):
    """Whether the windows have two history RAMs and registered RAM inputs (see `_Window`):
    an engine with averaging, or with ``deep_pipeline``. One without either is the small
    engine (the iCEBreaker's, whose UP5K is short of cells, not of levels; on the ECP5 at
    100 MHz its unregistered RAM inputs were 13 of the late endpoints, 11.4 ns). Not the
    target itself: a configuration's cycles must not depend on it, so that a simulation of a
    board (``generic``) runs as the board."""
    return cfg.pool_avg or cfg.deep_pipeline


def pool_stages(cfg: AcceleratorConfig):
    """Stages of the engine's units in pipeline order: the row window with the scan's output
    register, the column window, the finishing stage (`PoolEngine.latency` in all: cycles
    from taking the last input word a window needs to offering its output word)."""
    deep = cfg.deep_pipeline
    window = (4 + deep) if _split(cfg) else 2
    return (1 + window, window, (2 + deep) if cfg.pool_avg else 1)


def pool_latency(cfg: AcceleratorConfig):
    """`PoolEngine.latency` without building the engine: the sum of `pool_stages`."""
    return sum(pool_stages(cfg))


def times_const(value, const):
    """``value * const`` for a constant ``const > 0``, as a sum of shifted copies of ``value``.

    Written without ``*`` so that synthesis builds adders, not a DSP multiplier.
    """
    terms = [value << bit for bit in range(const.bit_length()) if const >> bit & 1]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _seven(total):
    """``7 * S``: the first of `_mean`'s two adders, a pipeline stage before the second."""
    return (total << 3) - total


def _mean(total, seven, k3):
    """``floor((2*S + N) / (2*N))`` of a window sum ``S`` (and ``seven``, `_seven` of it),
    ``N`` = 9 if ``k3`` else 4.

    The contract's hardware form (``arith.AVG_DIV``, ``docs/arithmetic.md``): ``(S + 2) >> 2``
    (``N`` = 4) and ``(455 * S + 2^11) >> 12`` (``N`` = 9), and ``455 * S`` is ``7 * S * 65``:
    two adders instead of six (``tests/test_pool_unit.py`` checks every sum).
    """
    assert arith.AVG_DIV == {4: (1, 2), 9: (455, 12)}, "update the adders"
    return Mux(k3, _ninth(_times65(seven)), _quarter(total))


def _times65(seven):
    """``455 * S = 65 * (7 * S)`` from `_seven`'s result (with ``deep_pipeline``, a stage of
    its own)."""
    return (seven << 6) + seven


def _ninth(times455):
    """``floor((2*S + 9) / 18)`` from ``455 * S`` (`_times65`)."""
    return (times455 + (1 << 11)) >> 12


def _quarter(total):
    """``floor((2*S + 4) / 8)`` of a window sum ``S``."""
    return (total + 2) >> 2


def _history(shape, depth):
    """A block RAM whose read data is undefined when the same address is written that cycle.

    ``no_rw_check`` tells Yosys not to add bypass logic after the RAM for that case; the
    windows never use such data (see `_Window`). Simulation returns the old data.
    """
    return Memory(shape=shape, depth=depth, init=[], attrs={"no_rw_check": 1})


class _Window(wiring.Component):
    """Combine each beat with the beats one and two periods earlier: max or sum, ``k`` of 2 or 3.

    Beats arrive in a periodic order of history slots: a beat's slot is its position in the
    period, counted here (from 0 at ``start``; the beat with ``wrap`` set ends a period). Two
    RAMs hold, per slot, the slot's last two values: a beat of an even period is written into
    the first, of an odd one into the second, so that the other holds the value of the period
    before and its own that of the period before that (nothing is read from one block RAM into
    another: on the ECP5 that path is a DP16KD's slow read and a route across the chip). Every
    address, write enable and write datum comes from a register: a beat's slot is read as the
    beat is taken (the slot register counts the beats taken), and the beat is written a cycle
    later from the first stage's registers, whatever the pipeline does then (the stall signal
    reaches the RAMs only as their read enable). The read data goes into registers first (the
    block RAMs' output registers), is put in order in the stage after, and combined in the
    stage after that. When the period is one beat the read collides with the write of the
    previous beat, so such beats take their history from the beats in the pipeline instead.

    Four stages: the beat as taken, the beat with its history as read, the beat with its
    history in order, then the pair (the beat combined with the previous value) and the older
    value; the output combines those two, unregistered (with ``out_reg``, the
    ``deep_pipeline``'s, in a fifth stage, the output register). A beat with ``emit`` clear
    updates the history but produces no output.

    Without ``split`` (the small engine, without averaging: `_split`) the window has one RAM
    holding both values of a slot, the older written back from the read, and neither the first
    stage nor the one of the history as read: the RAM is read a cycle ahead, at the slot of
    the next beat (from the slot counter's next value), and written as a beat is taken, so
    that its history is there when it is; two stages. `pool_stages` counts the stages.

    Members
    -------
    i : In(data.StructLayout(...))
        ``valid``, ``value`` (``lanes`` signed ``in_bits``), ``emit``, ``wrap`` and ``meta``,
        passed on. Taken when ``valid`` and ``en``.
    o : Out(data.StructLayout(...))
        ``valid``, ``value`` (``lanes`` signed ``in_bits`` for the maximum; ``in_bits + 2``, a
        sum of three, with ``sums``) and ``meta``.
    en : In(1)
        The pipeline advances this cycle.
    start : In(1)
        A layer starts: the next beat has slot 0.
    k3 : In(1)
        Window of three (else two).
    avg : In(1)
        Sum (else maximum); ignored without ``sums``.
    busy : Out(1)
        A beat is inside.
    """

    def __init__(self, *, lanes, in_bits, sums, depth, meta, split=True, out_reg=False):
        self._depth, self._sums, self._split = depth, sums, split
        self._out_reg = out_reg
        self._elem = data.ArrayLayout(signed(in_bits), lanes)
        self._pair = data.ArrayLayout(signed(in_bits + sums), lanes)
        out = data.ArrayLayout(signed(in_bits + 2 * sums), lanes)
        super().__init__({
            "i": In(data.StructLayout({
                "valid": 1, "value": self._elem, "emit": 1, "wrap": 1, "meta": meta})),
            "o": Out(data.StructLayout({"valid": 1, "value": out, "meta": meta})),
            "en": In(1),
            "start": In(1),
            "k3": In(1),
            "avg": In(1),
            "busy": Out(1),
        })

    def _op(self, x, y):
        # The sign of the widened difference is the comparison: one carry chain, then a mux.
        top = Mux((x - y)[-1], y, x)
        return Mux(self.avg, x + y, top) if self._sums else top

    def elaborate(self, platform):
        m = Module()
        halves = 2 if self._split else 1
        ports = []
        for half in range(halves):
            shape = self._elem if self._split else data.ArrayLayout(self._elem, 2)
            m.submodules[f"history{half}"] = history = _history(shape, self._depth)
            ports.append((history.write_port(), history.read_port()))

        # The input beat's slot and period, registers (with ``split`` they address the reads;
        # without, the slot's next value does).
        slot, odd = Signal(range(self._depth)), Signal()
        take, slot_next = Signal(), Signal.like(slot)
        m.d.comb += [take.eq(self.en & self.i.valid),
                     slot_next.eq(Mux(take, Mux(self.i.wrap, 0, slot + 1), slot))]
        m.d.sync += [slot.eq(slot_next), odd.eq(odd ^ (take & self.i.wrap))]
        # (Without ``split`` the read at `start` is not for slot 0, but the first beat's history
        # is never used.)
        with m.If(self.start):
            m.d.sync += [slot.eq(0), odd.eq(0)]

        # Stage 1: the beat as taken, its slot and period; the read of its slot's history was
        # issued as it was taken. Its value is written a cycle after it was taken (``wrote``),
        # from these registers, whatever the pipeline does then. A beat that is both first and
        # last of its period has a period of one.
        # (The values are data, reset-less: only the flags are on the chip's reset.)
        # (Without ``split``, no stage: these are the input beat's.)
        valid1, wrote = Signal(), Signal()
        value1 = Signal(self._elem, reset_less=True)
        slot1 = Signal(range(self._depth), reset_less=True)
        single1, emit1, meta1, odd1 = Signal(), Signal(), Signal.like(self.i.meta), Signal()
        beat = [wrote.eq(take), valid1.eq(self.i.valid), value1.eq(self.i.value),
                slot1.eq(slot), odd1.eq(odd), single1.eq((slot == 0) & self.i.wrap),
                emit1.eq(self.i.emit), meta1.eq(self.i.meta)]
        if self._split:
            m.d.sync += beat[0]
            with m.If(self.en):
                m.d.sync += beat[1]
            with m.If(take):
                m.d.sync += beat[2:]
        else:
            m.d.comb += beat
        for half, (wr, rd) in enumerate(ports):
            # The read port holds its data while the pipeline stands still.
            m.d.comb += [rd.addr.eq(slot if self._split else slot_next), rd.en.eq(self.en),
                         wr.addr.eq(slot1)]
            if self._split:
                # ``wrote & (odd1 == half)``, from a register of its own: the enable of the
                # half's block RAMs with no logic before them (the 12x12 build's worst path
                # was ``wrote`` through a LUT to them, 10.8 of 11.8 ns routing).
                wen = Signal(name=f"wen{half}")
                m.d.sync += wen.eq(take & (odd == half))
                m.d.comb += [wr.en.eq(wen), wr.data.eq(value1)]
            else:
                m.d.comb += [wr.en.eq(wrote), wr.data[0].eq(value1), wr.data[1].eq(rd.data[0])]

        # With ``split``, stage "R": the beat and its history as read, nothing else. ``raw``
        # (the two RAMs' words as read) is the block RAMs' own output register, and the route
        # from it ends in a flip-flop: the stage after it puts the words in order. (Read data
        # straight into the comparators was the ULX3S's worst path at 90 MHz: the line
        # buffer's DP16KD to the carry chains, 10.5 ns routing, 7.2 of it one route.)
        # (``odd`` is the beat's period: the value of the period before is ``raw[~odd]``, of
        # the one before that ``raw[odd]``.)
        raw = Signal(data.ArrayLayout(self._elem, 2), reset_less=True)
        if self._split:
            validr, oddr = Signal(), Signal()
            valuer = Signal(self._elem, reset_less=True)
            singler, emitr, metar = Signal(), Signal(), Signal.like(self.i.meta)
            with m.If(self.en):
                m.d.sync += validr.eq(valid1)
            with m.If(self.en & valid1):
                m.d.sync += [raw.eq(Cat(port.data for _, port in ports)), oddr.eq(odd1),
                             valuer.eq(value1), singler.eq(single1), emitr.eq(emit1),
                             metar.eq(meta1)]
        else:
            validr, valuer, singler, emitr, metar = valid1, value1, single1, emit1, meta1
            m.d.comb += raw.eq(Cat(port.data for _, port in ports))

        # Stage 2: the beat, its history in order (``hist[k]``: the slot's value ``k + 1``
        # periods before the beat's), and the values of the previous two beats.
        valid2 = Signal()
        value = Signal(self._elem, reset_less=True)
        hist = Signal(data.ArrayLayout(self._elem, 2), reset_less=True)
        prev = Signal(data.ArrayLayout(self._elem, 2), reset_less=True)
        single, emit2, meta2 = Signal(), Signal(), Signal.like(self.i.meta)
        with m.If(self.en):
            m.d.sync += valid2.eq(validr)
        with m.If(self.en & validr):
            m.d.sync += [
                value.eq(valuer), prev[0].eq(value), prev[1].eq(prev[0]),
                single.eq(singler), emit2.eq(emitr), meta2.eq(metar),
            ]
            for k in range(2):
                m.d.sync += hist[k].eq(Mux(oddr ^ k, raw[0], raw[1]) if self._split else raw[k])

        # Stage 3: the pair (the beat combined with the previous value) and the older value.
        valid3 = Signal()
        pair, older = Signal(self._pair, reset_less=True), Signal(self._elem, reset_less=True)
        emit3, meta3 = Signal(), Signal.like(self.i.meta)
        with m.If(self.en):
            m.d.sync += valid3.eq(valid2)
        with m.If(self.en & valid2):
            m.d.sync += [emit3.eq(emit2), meta3.eq(meta2)]
            for lane in range(len(value)):
                if self._sums:
                    before_last = prev[1][lane]
                else:
                    # max(c, c1, c2) = max(c, max(c1, c2)): the previous beat's pair stands in
                    # for the beat before it, saving a register per lane.
                    before_last = pair[lane]
                m.d.sync += [
                    pair[lane].eq(self._op(value[lane], Mux(single, prev[0][lane],
                                                            hist[0][lane]))),
                    older[lane].eq(Mux(single, before_last, hist[1][lane])),
                ]

        if self._out_reg:
            # Stage 4 (``deep_pipeline``): the output register. Every beat passes through it,
            # whether or not it ends a window, so the window stays busy as long after its last
            # beat whatever that is. (Unregistered, the combined value's route into the next
            # unit's first stage, behind the comparison's carry chain, was 14.1 ns at 100 MHz
            # on the ULX3S.)
            valid4, emit4 = Signal(), Signal()
            value4 = Signal.like(self.o.value, reset_less=True)
            meta4 = Signal.like(self.i.meta)
            with m.If(self.en):
                m.d.sync += valid4.eq(valid3)
            with m.If(self.en & valid3):
                m.d.sync += [emit4.eq(emit3), meta4.eq(meta3)]
                for lane, out in enumerate(value4):
                    m.d.sync += out.eq(Mux(self.k3, self._op(pair[lane], older[lane]),
                                           pair[lane]))
            m.d.comb += [
                self.o.valid.eq(valid4 & emit4),
                self.o.value.eq(value4),
                self.o.meta.eq(meta4),
                self.busy.eq(valid1 | validr | valid2 | valid3 | valid4),
            ]
            return m
        m.d.comb += [
            self.o.valid.eq(valid3 & emit3),
            self.o.meta.eq(meta3),
            self.busy.eq((valid1 | validr if self._split else 0) | valid2 | valid3),
        ]
        for lane, out in enumerate(self.o.value):
            m.d.comb += out.eq(Mux(self.k3, self._op(pair[lane], older[lane]), pair[lane]))
        return m


class _Finish(wiring.Component):
    """Window results to int8 words: the maximum as is, a sum ``S`` as its mean.

    With ``sums`` two stages: the first registers the window results and seven times each
    (`_seven`), the second divides (in one stage, the two adders and their route were the
    12x12 ULX3S design's worst path at 84 MHz; in two, 12.7 ns at 100 MHz on the 8x16); with
    ``deep`` (``deep_pipeline``) three, one adder each (`_seven`, `_times65`, `_ninth`);
    without ``sums``, one, the output register.

    Members
    -------
    i : In(data.StructLayout({"valid": 1, "value": ...}))
        ``lanes`` signed ``in_bits`` window results, taken when ``en``.
    o : Out(stream.Signature(word))
        Registered.
    en : Out(1)
        The pipeline advances: the output register is empty or being taken.
    k3, avg : In(1)
        As for `_Window`.
    busy : Out(1)
    """

    def __init__(self, *, lanes, in_bits, word, sums, deep=False):
        self._sums, self._deep = sums, deep
        super().__init__({
            "i": In(data.StructLayout({
                "valid": 1, "value": data.ArrayLayout(signed(in_bits), lanes)})),
            "o": Out(stream.Signature(word)),
            "en": Out(1),
            "k3": In(1),
            "avg": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.en.eq(~self.o.valid | self.o.ready)
        if not self._sums:
            m.d.comb += self.busy.eq(self.o.valid)
            with m.If(self.en):
                m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.value)]
            return m
        if self._deep:
            return self._elaborate_deep(m)
        valid, held = Signal(), Signal.like(self.i.value, reset_less=True)
        lanes = len(self.i.value)
        width = self.i.value.shape().elem_shape.width + 3
        held7 = Signal(data.ArrayLayout(signed(width), lanes), reset_less=True)
        m.d.comb += self.busy.eq(valid | self.o.valid)
        with m.If(self.en):
            m.d.sync += [valid.eq(self.i.valid), held.eq(self.i.value), self.o.valid.eq(valid)]
            m.d.sync += [h7.eq(_seven(v)) for h7, v in zip(held7, self.i.value, strict=True)]
            for s, s7, out in zip(held, held7, self.o.payload, strict=True):
                m.d.sync += out.eq(Mux(self.avg, _mean(s, s7, self.k3), s))
        return m

    def _elaborate_deep(self, m):
        # Three stages of one adder each: the sums and 7 times each; the sums, 455 times each
        # and the quarters; the choice, in the output register.
        lanes = len(self.i.value)
        width = self.i.value.shape().elem_shape.width
        valid1, valid2 = Signal(), Signal()
        held1 = Signal.like(self.i.value, reset_less=True)
        held2 = Signal.like(self.i.value, reset_less=True)
        seven = Signal(data.ArrayLayout(signed(width + 3), lanes), reset_less=True)
        times455 = Signal(data.ArrayLayout(signed(width + 9), lanes), reset_less=True)
        quarter = Signal(data.ArrayLayout(signed(width - 1), lanes), reset_less=True)
        m.d.comb += self.busy.eq(valid1 | valid2 | self.o.valid)
        with m.If(self.en):
            m.d.sync += [valid1.eq(self.i.valid), valid2.eq(valid1), self.o.valid.eq(valid2),
                         held1.eq(self.i.value), held2.eq(held1)]
            for lane in range(lanes):
                ninth = _ninth(times455[lane])
                m.d.sync += [
                    seven[lane].eq(_seven(self.i.value[lane])),
                    times455[lane].eq(_times65(seven[lane])),
                    quarter[lane].eq(_quarter(held1[lane])),
                    self.o.payload[lane].eq(
                        Mux(self.avg, Mux(self.k3, ninth, quarter[lane]), held2[lane])),
                ]
        return m


class _Scan(wiring.Component):
    """Accept a layer command, count the input beats and mark where windows and periods end.

    Counters run down to the end of a tile, row, map or window, so every test is against a
    constant.

    Members
    -------
    cmd : In(stream.Signature(layer_layout(cfg)))
        Accepted when idle (``hold`` low and no layer in progress).
    i : In(stream.Signature(word))
        The input map; accepted only while a layer is in progress, when ``en``.
    o : Out(data.StructLayout(...))
        The input beats for the row `_Window`: ``valid``, ``value``, ``emit`` (a window ends at
        this pixel), ``wrap`` (the pixel's last tile), and as ``meta`` the column window's
        ``emit`` (a window ends on this row) and ``wrap`` (the row's last row-reduced beat).
    start : Out(1)
        A command is accepted this cycle.
    en : In(1)
        The pipeline advances this cycle.
    k3, avg : Out(1)
        The layer's window size and operation (``avg`` only if ``cfg.pool_avg``).
    active : Out(1)
        A layer is in progress: not all of its input has been accepted yet.
    hold : In(1)
        The rest of the engine still holds beats of the previous layer.
    """

    def __init__(self, cfg, *, o_layout):
        self._cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(layer_layout(cfg))),
            "i": In(stream.Signature(word_layout(cfg))),
            "o": Out(o_layout),
            "start": Out(1),
            "en": In(1),
            "k3": Out(1),
            "avg": Out(1),
            "active": Out(1),
            "hold": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, cmd = self._cfg, self.cmd.payload
        dim = cfg.dim_bits
        # The layer's reload values.
        cin_words, in_w, out_w = Signal(8), Signal(dim), Signal(dim)
        first_gap, step_gap = Signal(2), Signal(2)          # kh - 1, stride - 1
        # Counters: words left in the pixel, pixels left in the row, rows left in the map,
        # pixels (rows) until the next window ends, windows left in the row (map).
        cw, x, y = Signal(8), Signal(dim), Signal(dim)
        gx, gy, ox, oy = Signal(2), Signal(2), Signal(dim), Signal(dim)
        # cw == 1, registered: it picks the row window's next history slot.
        tile_last, one_word = Signal(), Signal()

        row_last, map_last = x == 1, y == 1
        emit_h = (gx == 0) & (ox != 0)
        emit_v = (gy == 0) & (oy != 0)
        # Ready for a command from a register: idle in the last cycle, and not started then.
        # (Nothing starts the engine but a command, so it is idle now too; its ready comes a
        # cycle after it falls idle, sooner than the core hands it another command.) The
        # start goes to every counter and window register of the engine.
        idle = Signal(init=1)
        m.d.sync += idle.eq(~self.active & ~self.hold & ~self.start)
        m.d.comb += [
            self.start.eq(self.cmd.valid & self.cmd.ready),
            self.cmd.ready.eq(idle),
            self.i.ready.eq(self.active & self.en),
            self.o.valid.eq(self.i.valid & self.active),
            self.o.value.eq(self.i.payload),
            self.o.emit.eq(emit_h),
            self.o.wrap.eq(tile_last),
            self.o.meta.emit.eq(emit_v),
            self.o.meta.wrap.eq(emit_h & (ox == 1) & tile_last),
        ]

        with m.If(self.start):
            m.d.sync += [
                self.k3.eq(cmd.kh == 3),
                self.avg.eq((cmd.op == Op.AVGPOOL) if cfg.pool_avg else 0),
                cin_words.eq(cmd.cin_words), in_w.eq(cmd.in_w), out_w.eq(cmd.out_w),
                first_gap.eq(cmd.kh - 1), step_gap.eq(cmd.stride - 1),
                cw.eq(cmd.cin_words), x.eq(cmd.in_w), y.eq(cmd.in_h),
                one_word.eq(cmd.cin_words == 1), tile_last.eq(cmd.cin_words == 1),
                gx.eq(cmd.kh - 1), gy.eq(cmd.kh - 1), ox.eq(cmd.out_w), oy.eq(cmd.out_h),
                self.active.eq(1),
            ]

        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [cw.eq(cw - 1), tile_last.eq(cw == 2)]
            with m.If(tile_last):
                m.d.sync += [cw.eq(cin_words), tile_last.eq(one_word), x.eq(x - 1),
                             gx.eq(gx - 1)]
                with m.If(gx == 0):
                    m.d.sync += gx.eq(step_gap)
                with m.If(emit_h):
                    m.d.sync += ox.eq(ox - 1)
                with m.If(row_last):
                    m.d.sync += [x.eq(in_w), gx.eq(first_gap), ox.eq(out_w),
                                 y.eq(y - 1), gy.eq(gy - 1)]
                    with m.If(gy == 0):
                        m.d.sync += gy.eq(step_gap)
                    with m.If(emit_v):
                        m.d.sync += oy.eq(oy - 1)
                    with m.If(map_last):
                        m.d.sync += self.active.eq(0)
        return m


class PoolEngine(wiring.Component):
    """Max or average pooling of one layer per command, on a stream of activation words.

    Square windows of 2 or 3, stride 1 to 3, no padding, floor mode: rows and columns past
    the last window are consumed and dropped. Every lane (channel) is pooled independently;
    results follow ``docs/arithmetic.md`` exactly. Throughput is one word per cycle in and
    out; both streams may stall at any time.

    Without ``cfg.pool_avg`` the engine only takes maxima: an ``AVGPOOL`` command is run as
    ``MAXPOOL`` (same stream lengths, so nothing hangs; the result is the window maximum). The
    controller and the compiler reject such layers before they get here.

    Parameters
    ----------
    cfg : AcceleratorConfig
        Lanes per word (``cols``), the descriptor widths and ``pool_avg``. The line buffer holds
        `pool_line_words` words; the compiler must keep ``out_w * cin_words`` within it.

    Attributes
    ----------
    latency : int
        Cycles from taking the last input word a window needs to offering its output word, when
        the output is not stalled: the sum of `pool_stages`.

    Members
    -------
    cmd : In(stream.Signature(layer_layout(cfg)))
        The layer descriptor (``describe_pool``): ``op`` (``MAXPOOL`` or ``AVGPOOL``),
        ``in_h``, ``in_w``, ``out_h``, ``out_w``, ``kh`` (the window), ``stride`` and
        ``cin_words``. Accepted only while the engine is idle.
    i_stream : In(stream.Signature(word_layout(cfg)))
        The input map: ``in_h * in_w * cin_words`` words, pixels in raster order, each pixel's
        channel tiles in order.
    o_stream : Out(stream.Signature(word_layout(cfg)))
        The output map, ``out_h * out_w * cin_words`` words in the same order.
    busy : Out(1)
        A layer is in progress: from the accepted command until the last input word is taken
        and the last output word delivered.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self._cfg = cfg
        self.line_words = pool_line_words(cfg)
        self.latency = pool_latency(cfg)
        super().__init__({
            "cmd": In(stream.Signature(layer_layout(cfg))),
            "i_stream": In(stream.Signature(word_layout(cfg))),
            "o_stream": Out(stream.Signature(word_layout(cfg))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        sums = cfg.pool_avg
        m = Module()
        split = _split(cfg)
        deep = cfg.deep_pipeline and split
        m.submodules.rows = rows = _Window(
            lanes=cfg.cols, in_bits=cfg.data_bits, sums=sums, depth=_TILE_DEPTH,
            meta=data.StructLayout({"emit": 1, "wrap": 1}), split=split, out_reg=deep)
        m.submodules.columns = columns = _Window(
            lanes=cfg.cols, in_bits=cfg.data_bits + 2 * sums, sums=sums, depth=self.line_words,
            meta=data.StructLayout({}), split=split, out_reg=deep)
        m.submodules.finish = finish = _Finish(
            lanes=cfg.cols, in_bits=cfg.data_bits + 4 * sums, word=word_layout(cfg), sums=sums,
            deep=deep)
        m.submodules.scan = scan = _Scan(cfg, o_layout=rows.i.shape())

        wiring.connect(m, wiring.flipped(self.cmd), scan.cmd)
        wiring.connect(m, wiring.flipped(self.i_stream), scan.i)
        wiring.connect(m, finish.o, wiring.flipped(self.o_stream))
        # The scan's beats reach the row window through a register: the window's slot counter
        # (and, without ``split``, its history RAMs' write enables) take them, and the scan's
        # counters sat far from them (the ULX3S's worst path at 90 MHz once: scan -> the
        # window's write enable -> the scan's counters, 14.1 ns, 12.6 of it routing).
        beat = Signal(rows.i.shape(), reset_less=True)
        beat_valid = Signal()
        with m.If(finish.en):
            m.d.sync += [beat.eq(scan.o), beat_valid.eq(scan.o.valid)]
        m.d.comb += [
            rows.i.eq(beat),
            rows.i.valid.eq(beat_valid),
            columns.i.valid.eq(rows.o.valid),
            columns.i.value.eq(rows.o.value),
            columns.i.emit.eq(rows.o.meta.emit),
            columns.i.wrap.eq(rows.o.meta.wrap),
            finish.i.valid.eq(columns.o.valid),
            finish.i.value.eq(columns.o.value),
            scan.en.eq(finish.en),
        ]
        for window in (rows, columns):
            m.d.comb += [window.en.eq(finish.en), window.start.eq(scan.start)]
        for unit in (rows, columns, finish):
            m.d.comb += [unit.k3.eq(scan.k3), unit.avg.eq(scan.avg)]
        m.d.comb += [
            scan.hold.eq(beat_valid | rows.busy | columns.busy | finish.busy),
            self.busy.eq(scan.active | scan.hold),
        ]
        return m
