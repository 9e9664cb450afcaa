"""The pooling engine: max and average pooling of a streamed feature map, lane-parallel.

Pooling is separable, so the engine reduces each window in two passes of the same unit, a
`_Window`: first along a row (each input word is combined with the words of the same channel
tile at the one or two previous pixels), then down the columns (each row-reduced word is
combined with the row-reduced words of the same output column and tile in the one or two
previous rows). Each `_Window` keeps its history in a block RAM with a synchronous read port,
so the engine needs a line buffer of one *output* row of row-reduced words, not ``k`` input
rows. `_Finish` turns window sums into averages with the contract's constant multiply,
written as shifts and adds so that no DSP block is spent on it.

Streams carry activation words in the activation memory's order (``isa`` module docstring):
for each pixel in raster order, ``cin_words`` words of ``cols`` int8 channels.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..sw import arith
from .config import AcceleratorConfig
from .isa import Op, layer_layout, word_layout

__all__ = ["PoolEngine", "pool_line_words", "times_const"]

_KMAX = max(arith.POOL_KERNELS)
_TILE_DEPTH = 256           # cin_words is an 8-bit descriptor field


def pool_line_words(cfg: AcceleratorConfig):
    """Line buffer depth in words: the largest ``out_w * cin_words`` a pooling layer may have.

    Four words per pixel of a ``max_dim``-wide map (32 channels with 8 lanes), rounded up to a
    power of two, and never more than half the activation memory: a layer whose output row is
    longer cannot have its input (at least two rows) in the activation memory anyway.
    """
    return min(1 << (4 * cfg.max_dim - 1).bit_length(), cfg.act_depth // 2)


def _sum_bits(cfg, n):
    """Signed width of a sum of ``n`` int8 values."""
    return cfg.data_bits + (n - 1).bit_length()


def times_const(value, const):
    """``value * const`` for a constant ``const > 0``, as a sum of shifted copies of ``value``.

    Written without ``*`` so that synthesis builds adders, not a DSP multiplier.
    """
    terms = [value << bit for bit in range(const.bit_length()) if const >> bit & 1]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


class _Window(wiring.Component):
    """Combine each beat with the beats one and two periods earlier: max or sum, ``k`` of 2 or 3.

    The beat's ``index`` (position in the period) addresses a RAM holding the two previous
    values; the RAM is read when the beat is accepted and written when it leaves. A beat with
    ``emit`` clear updates the history but produces no output.

    Members
    -------
    i : In(stream.Signature(...))
        ``value`` (``lanes`` signed ``in_bits``), ``index``, ``emit`` and ``meta``, passed on.
    o : Out(stream.Signature(...))
        ``value`` (``lanes`` signed ``out_bits``, enough for a sum of three) and ``meta``.
    k3 : In(1)
        Window of three (else two).
    avg : In(1)
        Sum (else maximum).
    busy : Out(1)
        A beat is inside.
    """

    def __init__(self, *, lanes, in_bits, out_bits, depth, meta):
        self._depth = depth
        self._elem = data.ArrayLayout(signed(in_bits), lanes)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "value": self._elem, "index": range(depth), "emit": 1, "meta": meta}))),
            "o": Out(stream.Signature(data.StructLayout({
                "value": data.ArrayLayout(signed(out_bits), lanes), "meta": meta}))),
            "k3": In(1),
            "avg": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.history = history = Memory(
            shape=data.ArrayLayout(self._elem, _KMAX - 1), depth=self._depth, init=[])
        wr = history.write_port()
        rd = history.read_port(transparent_for=(wr,))

        beat = Signal.like(self.i.payload)
        valid = Signal()
        advance = valid & (self.o.ready | ~beat.emit)
        m.d.comb += [
            self.i.ready.eq(~valid | advance),
            self.busy.eq(valid),
            # Read when accepting, so the history is ready while the beat is held.
            rd.addr.eq(self.i.payload.index),
            rd.en.eq(self.i.ready),
            wr.addr.eq(beat.index),
            wr.en.eq(advance),
            wr.data[0].eq(beat.value),
            wr.data[1].eq(rd.data[0]),
            self.o.valid.eq(valid & beat.emit),
            self.o.payload.meta.eq(beat.meta),
        ]
        with m.If(self.i.ready):
            m.d.sync += [valid.eq(self.i.valid), beat.eq(self.i.payload)]

        for lane, out in enumerate(self.o.payload.value):
            c, a, b = beat.value[lane], rd.data[0][lane], rd.data[1][lane]
            total = c + a + Mux(self.k3, b, 0)
            top2 = Mux(a > c, a, c)
            top = Mux(self.k3 & (b > top2), b, top2)
            m.d.comb += out.eq(Mux(self.avg, total, top))
        return m


class _Finish(wiring.Component):
    """Window results to int8: the maximum as is, a sum ``S`` as ``(S * A_N + 2^15) >> 16``.

    Members
    -------
    i : In(stream.Signature(data.ArrayLayout(signed(in_bits), lanes)))
    o : Out(stream.Signature(word)), registered.
    k3, avg : In(1)
        As for `_Window`.
    busy : Out(1)
    """

    def __init__(self, *, lanes, in_bits, word):
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(in_bits), lanes))),
            "o": Out(stream.Signature(word)),
            "k3": In(1),
            "avg": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        mult = {k: arith.AVG_MULT[k * k] for k in arith.POOL_KERNELS}
        half = 1 << (arith.AVG_SHIFT - 1)
        m.d.comb += [self.i.ready.eq(~self.o.valid | self.o.ready), self.busy.eq(self.o.valid)]
        with m.If(self.i.ready):
            m.d.sync += self.o.valid.eq(self.i.valid)
            for s, out in zip(self.i.payload, self.o.payload, strict=True):
                scaled = Mux(self.k3, times_const(s, mult[3]), times_const(s, mult[2]))
                mean = (scaled + half) >> arith.AVG_SHIFT
                m.d.sync += out.eq(Mux(self.avg, mean, s))
        return m


class _Scan(wiring.Component):
    """Accept a layer command, count the input beats and mark where windows end.

    Members
    -------
    cmd : In(stream.Signature(layer_layout(cfg)))
        Accepted when idle (``hold`` low and no layer in progress).
    i : In(stream.Signature(word))
        The input map; accepted only while a layer is in progress.
    o : Out(stream.Signature(...))
        The input beats for the row `_Window`, with its ``index`` (the channel tile) and
        ``emit`` (a window ends at this pixel), and as ``meta`` the column window's ``index``
        (output column and tile) and ``emit`` (a window ends on this row).
    k3, avg : Out(1)
        The layer's window size and operation.
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
            "o": Out(stream.Signature(o_layout)),
            "k3": Out(1),
            "avg": Out(1),
            "active": Out(1),
            "hold": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        bits = self._cfg.dim_bits + 2
        layer = Signal(layer_layout(self._cfg))
        cw = Signal(8)
        x, y, nx, ny, ox, oy = (Signal(bits, name=n) for n in ("x", "y", "nx", "ny", "ox", "oy"))
        vidx = Signal.like(self.o.payload.meta.index)

        emit_h = (x == nx) & (ox != layer.out_w)
        emit_v = (y == ny) & (oy != layer.out_h)
        m.d.comb += [
            self.k3.eq(layer.kh == 3),
            self.avg.eq(layer.op == Op.AVGPOOL),
            self.cmd.ready.eq(~self.active & ~self.hold),
            self.o.valid.eq(self.i.valid & self.active),
            self.i.ready.eq(self.active & self.o.ready),
            self.o.payload.value.eq(self.i.payload),
            self.o.payload.index.eq(cw),
            self.o.payload.emit.eq(emit_h),
            self.o.payload.meta.index.eq(vidx),
            self.o.payload.meta.emit.eq(emit_v),
        ]

        with m.If(self.cmd.valid & self.cmd.ready):
            k = self.cmd.payload.kh
            m.d.sync += [layer.eq(self.cmd.payload), self.active.eq(1),
                         cw.eq(0), x.eq(0), y.eq(0), ox.eq(0), oy.eq(0), vidx.eq(0),
                         nx.eq(k - 1), ny.eq(k - 1)]

        with m.If(self.i.valid & self.i.ready):
            m.d.sync += cw.eq(cw + 1)
            with m.If(emit_h):
                m.d.sync += vidx.eq(vidx + 1)
            with m.If(cw == layer.cin_words - 1):
                m.d.sync += [cw.eq(0), x.eq(x + 1)]
                with m.If(emit_h):
                    m.d.sync += [ox.eq(ox + 1), nx.eq(nx + layer.stride)]
                with m.If(x == layer.in_w - 1):
                    m.d.sync += [x.eq(0), ox.eq(0), nx.eq(layer.kh - 1), vidx.eq(0),
                                 y.eq(y + 1)]
                    with m.If(emit_v):
                        m.d.sync += [oy.eq(oy + 1), ny.eq(ny + layer.stride)]
                    with m.If(y == layer.in_h - 1):
                        m.d.sync += self.active.eq(0)
        return m


class PoolEngine(wiring.Component):
    """Max or average pooling of one layer per command, on a stream of activation words.

    Square windows of 2 or 3, stride 1 to 3, no padding, floor mode: rows and columns past
    the last window are consumed and dropped. Every lane (channel) is pooled independently;
    results follow ``docs/arithmetic.md`` exactly. Throughput is one word per cycle in and
    out; both streams may stall at any time.

    Parameters
    ----------
    cfg : AcceleratorConfig
        Lanes per word (``cols``) and the descriptor widths. The line buffer holds
        `pool_line_words` words; the compiler must keep ``out_w * cin_words`` within it.

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
        super().__init__({
            "cmd": In(stream.Signature(layer_layout(cfg))),
            "i_stream": In(stream.Signature(word_layout(cfg))),
            "o_stream": Out(stream.Signature(word_layout(cfg))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        row_bits, window_bits = _sum_bits(cfg, _KMAX), _sum_bits(cfg, _KMAX * _KMAX)
        column = data.StructLayout({"index": range(self.line_words), "emit": 1})
        m.submodules.rows = rows = _Window(
            lanes=cfg.cols, in_bits=cfg.data_bits, out_bits=row_bits, depth=_TILE_DEPTH,
            meta=column)
        m.submodules.columns = columns = _Window(
            lanes=cfg.cols, in_bits=row_bits, out_bits=window_bits, depth=self.line_words,
            meta=data.StructLayout({}))
        m.submodules.finish = finish = _Finish(
            lanes=cfg.cols, in_bits=window_bits, word=word_layout(cfg))
        m.submodules.scan = scan = _Scan(cfg, o_layout=rows.i.payload.shape())

        wiring.connect(m, wiring.flipped(self.cmd), scan.cmd)
        wiring.connect(m, wiring.flipped(self.i_stream), scan.i)
        wiring.connect(m, scan.o, rows.i)
        m.d.comb += [
            columns.i.valid.eq(rows.o.valid),
            rows.o.ready.eq(columns.i.ready),
            columns.i.payload.value.eq(rows.o.payload.value),
            columns.i.payload.index.eq(rows.o.payload.meta.index),
            columns.i.payload.emit.eq(rows.o.payload.meta.emit),
        ]
        m.d.comb += [
            finish.i.valid.eq(columns.o.valid),
            columns.o.ready.eq(finish.i.ready),
            finish.i.payload.eq(columns.o.payload.value),
        ]
        wiring.connect(m, finish.o, wiring.flipped(self.o_stream))
        for unit in (rows, columns, finish):
            m.d.comb += [unit.k3.eq(scan.k3), unit.avg.eq(scan.avg)]
        m.d.comb += [
            scan.hold.eq(rows.busy | columns.busy | finish.busy),
            self.busy.eq(scan.active | scan.hold),
        ]
        return m
