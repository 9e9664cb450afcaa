"""The convolution engine: on-the-fly im2col into the systolic array, drained through the
requantizers into activation memory. Fully connected layers run as convolutions whose kernel
covers the whole input.

Dataflow, for output channel tile ``t`` and a tile of ``rows`` consecutive output pixels:

* **fill** walks the tile's reduction in blocks ``(ky, kx, cw)``; for each block it reads one
  activation word (``cols`` input channels) per output pixel of the tile, ``rows`` reads, into
  one of two transposer banks. Out-of-image taps (zero padding) read nothing and store 0.
* **feed** copies a full bank into a shift register and presents it to the array one input
  channel per cycle (``cols`` cycles per block), with the weight word of that step read from
  weight memory in the same cycle. Two banks plus the shift register keep the array busy
  every cycle while a bank's round trip (`bank_cycles`: the fill's reads, their landing, the
  feed's load) takes at most the ``2 * cols`` cycles the array takes to consume two blocks:
  every array of 4 columns or more. On narrower ones each pair of blocks takes the round trip.
* **drain**: the array hands back a tile's sums one row (pixel) per cycle as the next tile
  starts; each row goes through the ``rq_lanes`` requantization lanes in ``rq_groups`` cycles
  (one cycle with a lane per column) and is written as one activation word.

Channel tiles follow one another as pixel tiles do: at the map's end the fill walks it again
for the next channel tile, whose first block's ``first`` step drains the previous tile's last
pixel tile; the feed moves on to the next tile's weights as it loads that block, and the drain
to its parameters and output words once the tile's last sums are out. The layer ends with a
flush (one extra ``first`` step) and a settle period. The requantizers' parameters are read
from parameter memory alongside each group of sums.

A *dense* convolution (``dense``, at most ``cols / 2`` input channels;
`systolic.hw.isa.describe_dense_conv`) walks a smaller kernel of one-word pixels, each block
several taps further on (`systolic.hw.isa.dense_layout`; or in raster order, each lane
``taps`` taps on a block, wrapping to the next kernel row on its own: `isa.dense_walk`), but
each lane of a fill read asks for its own pixel: that of the tap the lane carries, through
``act_lanes``, one address per column slice of the activation memory (lane ``l`` of every
word holds channel ``l % cin``, so each slice holds the channel its lane needs). A lane whose
tap is outside the image stores 0; one past the kernel reads whatever is there and weighs 0.

With ``cfg.fused_pool``, a descriptor's ``pool`` max-pools the output 2x2 with stride 2 on the
way to memory (`systolic.hw.isa.fuse_pool`): the pixels leave the requantizer in raster
order, so a window's left pixel waits in a register for its right one, an even row's maxima
wait in a line buffer (one word per window column) for the odd row's, and only the window's
maximum is written, at the pooled map's address the drain works out as it emits the pixel.
"""

import operator
from functools import reduce
from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .array import SystolicArray
from .isa import (
    ACT_READ_LATENCY,
    dense_lane_tap,
    dense_layout,
    dense_raster,
    layer_layout,
    param_layout,
    word_layout,
)
from .pe import capture_cycles
from .replica import delay, hard_register, local_reset
from .requant import Requantizer
from .synth import one_hot

__all__ = ["ConvEngine", "bank_cycles", "dense_prep_cycles", "fill_stages", "fused_pool_stages",
           "select_stages", "weight_addr_stages", "weight_stages", "write_stages"]


#: Rows of sums each first-stage multiplexer of a two-stage selection covers.
_SELECT_CHUNK = 4


def fused_pool_stages(cfg):
    """Cycles a fused pooling's words (`systolic.hw.isa.fuse_pool`) take after the
    requantizer's, beyond a plain convolution's: 3, the requantizer's word in a register, the
    window row's maximum, then the line buffer's word in a register; with ``deep_pipeline``,
    5: the two maxima of a row's pixels (a pair's halves, and the left pixel with the right)
    in registers of their own before the one the window's row takes, and the window's word in
    a register before the activation memory's write port. (The LeNet design's worst paths at
    95 MHz on the ULX3S were those comparators, 16 and 17 levels: `conv.f_word` through a row's
    maximum into the line buffer's data, 3.6 ns of logic and 7.0 of routing; `conv.q_line`
    through the window's maximum into an activation slice's write data, 3.9 and 6.7.) A fused
    layer settles that many cycles longer."""
    return 3 + 2 * cfg.deep_pipeline


def weight_addr_stages(cfg):
    """Registers between the convolution engine's weight address (its adder) and the weight
    memory's own address registers: 1 with ``deep_pipeline``, else 0.

    The address goes to a copy of the memory's address register for each group of its block
    RAM slices, spread over the chip: the adder and that route in one cycle were the worst
    path of the LeNet design's 95 MHz build on the ULX3S (96.57 MHz: `conv.w_tile_base`
    through the adder to a slice's address register, 10.4 ns, 8.7 of it routing). A step's
    weights then come a cycle later, and its activations and flags wait a cycle longer for
    them; a layer settles a cycle longer."""
    return int(cfg.deep_pipeline)


def weight_stages(cfg):
    """Registers between the weight memory's block RAMs and the array: 2 for arrays of more
    than 4 columns (whose weight words span as many block RAM slices, over much of the chip),
    else 1 (the iCEBreaker's, whose logic cells are spent).

    It depends on the array's shape only, not on the target, so that a simulation of a board's
    design (``generic``) counts the board's cycles. The second register sits near the block
    RAMs, so that neither the RAMs' clock-to-output time (5.8 ns on an ECP5 DP16KD) nor the
    route to the array is in a cycle with the other: together they were the ULX3S's worst path
    at 75 MHz (12.9 ns, 7.1 routing). A layer then settles one cycle longer for each stage
    beyond the first."""
    return 2 if cfg.cols > 4 else 1


def select_stages(cfg):
    """Register stages of the drain's selection of a lane's sum among the array's: 2 for arrays
    of more than `_SELECT_CHUNK` rows, else 1 (like `weight_stages`, from the shape alone).

    A lane picks among ``rows * rq_groups`` sums of PEs spread over the array's whole height.
    In one stage that selection's routes were the ULX3S's worst path at 90 MHz (an index
    register to `sel`, 14.0 ns, 12.5 of it routing); in two, each group of
    `_SELECT_CHUNK` rows has its own OR of gated sums and register near its PEs, and a second
    OR takes those. A layer then settles a cycle longer."""
    return 2 if cfg.rows > _SELECT_CHUNK else 1


def write_stages(cfg):
    """Registers between the engine's output words and its activation memory write port: 1
    with ``deep_pipeline``, else 0. The write's enable was decided from the requantizer's
    (or the fused pooling's) valid flags and the word's half, through the choice of a fused
    layer's word or a plain one, and went from there to each column slice's choice of writer
    and its write enable register, all over the chip: on the `lenet --dense-raster` design's
    stalled routes at 105 MHz those nets were failing in every iteration (`bench/ripup.py`).
    With the register the engine's write leaves it from flip-flops. A layer settles a cycle
    longer."""
    return int(cfg.deep_pipeline)


def fill_stages(cfg):
    """Registers between the fill's read addresses and the activation memory: 1 for arrays of
    at least 8 columns, else 0 (like `weight_stages`, from the shape alone).

    A read's address (with dense convolutions, each lane's: the walker's pixel plus the lane's
    tap) goes to a register before the route to the memory's column slices, spread over the
    chip; in one cycle with that route it was the ULX3S's worst path at 90 MHz (conv.block0
    to a slice's address register, 10.4 of 12.7 ns routing). A read's word then lands a cycle
    later (`bank_cycles`), which the two banks hide from the feed: no smaller array gets the
    stage. The layer takes a cycle longer. With ``deep_pipeline``, 2: the route to the column
    slices in two (at 100 MHz on the ULX3S the lanes' addresses into the slices' registers
    were 15 endpoints late, 11.0 ns as placed), a cycle more."""
    return (1 + cfg.deep_pipeline) if cfg.cols >= 8 else 0


def bank_cycles(cfg):
    """Cycles from the fill's start on a transposer bank to its start on the same bank again,
    when the feed is waiting for it: ``rows`` reads, `fill_stages` and ``ACT_READ_LATENCY``
    cycles until the last word lands, one in which the bank is full and the feed copies it
    out, one for the release to reach the fill's ``go`` (two with `deep_pipeline`: the fill
    takes the release from a register of its own).

    The two banks alternate, so the array, which takes ``cols`` cycles a block, is fed every
    cycle when this is at most ``2 * cols`` (every array of at least 4 columns: ``rows <=
    cols``); otherwise a pair of blocks takes this long (`systolic.sw.perfmodel`)."""
    return cfg.rows + fill_stages(cfg) + ACT_READ_LATENCY + 1 + cfg.deep_pipeline


def _dense_tables(cfg, kw_bits, key_bits):
    """A dense convolution's lane taps (`systolic.hw.isa.dense_lane_tap`) and word layout
    (`systolic.hw.isa.dense_layout`) as tables of the key ``kw | cin << kw_bits`` (its
    descriptor's ``dkw`` and ``dcin``), ``2 ** key_bits`` entries each, 0 where a lane is past
    the word's taps (it weighs 0) or the key is no dense convolution's: ``{"dy": [lane's
    table, ...], "dx": [...], "rows": table, "taps": table}``."""
    C = cfg.cols
    tables = {"dy": [[0] * (1 << key_bits) for _ in range(C)],
              "dx": [[0] * (1 << key_bits) for _ in range(C)],
              "rows": [0] * (1 << key_bits), "taps": [0] * (1 << key_bits)}
    for kw in range(2, cfg.max_kernel + 1):
        for cin in range(1, C // 2 + 1):
            key = kw | cin << kw_bits
            tables["rows"][key], tables["taps"][key] = dense_layout(cfg, kw, cin)
            for k in range(C):
                tap = dense_lane_tap(cfg, kw, cin, k)
                if tap is not None:
                    tables["dy"][k][key], tables["dx"][k][key] = tap[:2]
    return tables


def dense_prep_cycles(cfg):
    """Cycles a dense convolution (`systolic.hw.isa.describe_dense_conv`) waits before its
    first channel tile, while each lane's tap offset is worked out from the descriptor (a
    cycle more with `deep_pipeline`: the lane's row offset goes into a register of its own
    before the add of its column)."""
    return cfg.cols // 2 + 2 + cfg.deep_pipeline


class ConvEngine(wiring.Component):
    """Runs one convolution or fully connected layer per command.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Members
    -------
    cmd : In(stream.Signature(layer_layout(cfg)))
        Layer descriptors (`systolic.hw.isa.describe_conv`); accepted when idle. The engine
        does not copy the descriptor: the sender holds ``payload`` unchanged until ``busy``
        falls (the controller's program register does), which saves a descriptor-wide
        register.
    busy : Out(1)
        A layer is in progress.
    act_read, act_write : memory port signatures
        Activation memory; a read's word arrives `ACT_READ_LATENCY` cycles after it.
    weight_read, param_read : memory port signatures
        Weight and requantization parameter memories. The weight memory registers
        ``weight_read.addr`` (`systolic.hw.core.SinglePortMemory`, ``registered``): a word
        arrives two cycles after its address; a parameter word the cycle after.
    dense : Out(1)
        (With ``cfg.dense_conv``.) A dense convolution is running: column slice ``l`` of the
        activation memory is to read ``act_lanes[l]`` instead of ``act_read.addr``.
    act_lanes : Out(ArrayLayout(act_addr_bits, cols))
        (With ``cfg.dense_conv``.) Each lane's read address, with ``act_read.en``.
    weight_rows, fc_rows
        (With ``cfg.fc_rows``, the weight memory a `systolic.hw.core.BankedWeights`, whose
        words arrive a cycle later.) ``fc_rows``: the layer runs row by row (its descriptor's
        ``fc_rows``, `systolic.hw.isa.describe_fc_rows`): the memory's bank ``r`` reads ``r``
        cycles after bank 0, and row ``1 <= r < cfg.fc_rows`` of the array takes its weights
        from ``weight_rows[r]``, the bank's word, and its parameters from channel tile ``r``'s.
    """

    def __init__(self, cfg):
        self._cfg = cfg
        word = word_layout(cfg)
        super().__init__({
            "cmd": In(stream.Signature(layer_layout(cfg))),
            "busy": Out(1),
            "act_read": In(memory.ReadPort.Signature(addr_width=cfg.act_addr_bits, shape=word)),
            "act_write": In(memory.WritePort.Signature(addr_width=cfg.act_addr_bits,
                                                       shape=word)),
            "weight_read": In(memory.ReadPort.Signature(addr_width=cfg.weight_addr_bits,
                                                        shape=word)),
            "param_read": In(memory.ReadPort.Signature(addr_width=cfg.param_addr_bits,
                                                       shape=param_layout(cfg))),
            **({"dense": Out(1),
                "act_lanes": Out(data.ArrayLayout(cfg.act_addr_bits, cfg.cols))}
               if cfg.dense_conv else {}),
            # Which halves of ``act_write``'s word to write (bit 1: the upper ``cols / 2``
            # lanes): both, but one a channel tile with the descriptor's ``halves``.
            **({"act_halves": Out(2)} if cfg.fused_pool else {}),
            **({"weight_rows": In(data.ArrayLayout(word, cfg.fc_rows)), "fc_rows": Out(1)}
               if cfg.fc_rows else {}),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        R, C = cfg.rows, cfg.cols
        m = Module()
        # The array and the requantizer have resets of their own (`local_reset`, on the
        # ECP5): each a copy near its registers, not a route from the engine's.
        array = SystolicArray(cfg)
        m.submodules.array = local_reset(m, array, name="array", target=cfg.target)
        fused = cfg.fused_pool
        # A pixel's sums through the requantizer: whether and where its word goes, and (with
        # fused pooling) where the pixel sits in its 2x2 window and the window's column.
        tag = data.StructLayout({
            "valid": 1, "last": 1, "addr": cfg.act_addr_bits,
            **({"px": 1, "py": 1, "col": max(cfg.dim_bits - 1, 1), "half": 1}
               if fused else {}),
        })
        rq = Requantizer(cfg, tag)
        m.submodules.requant = local_reset(m, rq, name="requant", target=cfg.target)

        # The command's payload is held by the sender for the whole layer (see `cmd`).
        desc = self.cmd.payload
        sb = desc.origin.shape().width
        coord = signed(cfg.dim_bits + 2)

        # The descriptor's last indices, from registers: the walkers compare their counters
        # with these, not with a field minus one (an adder before each comparison). The
        # descriptor is valid in the cycle the command is taken, so these are from START on.
        last = data.StructLayout({
            "ox": cfg.dim_bits, "oy": cfg.dim_bits + 1, "cw": len(desc.cin_words),
            "kx": cfg.kernel_bits, "ky": cfg.kernel_bits,
            **({"words": 8} if fused else {}),
        })
        last = Signal(last, reset_less=True)           # loaded at START (data)
        m.d.sync += [last.ox.eq(desc.out_w - 1), last.oy.eq(desc.out_h - 1),
                     last.cw.eq(desc.cin_words - 1), last.kx.eq(desc.kw - 1),
                     last.ky.eq(desc.kh - 1)]
        # And the indices before them: a walker counter stepping from ``last_m1`` reaches its
        # last index (see `ends` below).
        walk = ("ox", "oy", "cw", "kx", "ky")
        last_m1 = Signal(data.StructLayout({k: last.shape()[k].shape for k in walk}),
                         reset_less=True)
        m.d.sync += [last_m1.ox.eq(desc.out_w - 2), last_m1.oy.eq(desc.out_h - 2),
                     last_m1.cw.eq(desc.cin_words - 2), last_m1.kx.eq(desc.kw - 2),
                     last_m1.ky.eq(desc.kh - 2)]
        # The tap offset's step from a kernel row's last tap to the next row's first
        # (``1 + tap_row_step``), from a register: the walker's and the dense lanes' offset
        # adders then start from flip-flops, not from another adder (the dense lanes' offsets
        # were the deepest endpoints after the controller's in the 8x16's 90 MHz build).
        row_inc = Signal((1 + desc.tap_row_step).shape(), name="row_inc", reset_less=True)
        m.d.sync += row_inc.eq(1 + desc.tap_row_step)
        # Output words a pixel (with ``halves`` two channel tiles share a word).
        out_words = desc.cout_tiles
        if fused:
            m.d.sync += last.words.eq(Mux(desc.halves, (desc.cout_tiles + 1) >> 1,
                                          desc.cout_tiles))
            out_words = last.words

        # ---- Sequencer state ---------------------------------------------------------------
        # Channel tiles follow one another without a pause: the fill walks the map again for
        # the next tile as it would a next pixel tile (`rewind`; `ft_left`: tiles from the
        # fill's on), the feed moves on to the tile's weights as it loads its first block
        # (`w_tile_base`), and the drain to its parameters and output words once the tile's
        # last pixel tile is out (`drain_rewind`). START is the first such rewind of each:
        # the registers it reads are set up for it when the command is taken.
        ft_left, ft_last = Signal(8), Signal()
        rewind, drain_rewind = Signal(), Signal()
        to_start = Signal()                             # the next state is START
        # The drain's next channel tile: its first output word (with ``halves`` two tiles
        # share a word), the parity of the drain's tile, their first parameter words.
        td_base = Signal(cfg.act_addr_bits)
        td_odd = Signal()
        w_tile_base = Signal(cfg.weight_addr_bits)
        p_tile = Signal(cfg.param_addr_bits)            # the drain's tile's first parameter word
        p_next = Signal(cfg.param_addr_bits)            # ... and the next tile's
        settle_cycles = (R * cfg.rq_groups + C + Requantizer.LATENCY + 4 + capture_cycles(cfg)
                         + weight_stages(cfg) + weight_addr_stages(cfg) + select_stages(cfg)
                         + write_stages(cfg))
        settle = Signal(range(settle_cycles + 1 + fused * fused_pool_stages(cfg)))
        # Pixel walker: the next output pixel of the layer and its input window origin.
        ox, oy = Signal(cfg.dim_bits), Signal(cfg.dim_bits + 1)
        wbase, iy0, ix0 = Signal(signed(sb)), Signal(coord), Signal(coord)
        # The walker's image in the batch and the next image's input origin.
        img = Signal(range(256 + 1))
        img1 = Signal.like(img)                         # img + 1
        # ``img < batch`` and ``img1 < batch``, set with them.
        img_in, img1_in = Signal(), Signal()
        next_origin = Signal(signed(sb))
        # Block counters inside a pixel tile.
        ky, kx = Signal(cfg.kernel_bits), Signal(cfg.kernel_bits)
        cw = Signal.like(desc.cin_words)
        # The drain's output pixel (it walks the map as the walker does, later).
        dx, dy = Signal(cfg.dim_bits), Signal(cfg.dim_bits + 1)
        # Whether each walker and drain counter is at its last index, a register set with the
        # counter (`to_zero`, `step`): FILL and the drain decide from flip-flops, not from
        # comparisons of counters with `last` (which made it the slowest logic of the chip:
        # five levels to the enable of `img`; for the drain, the fused pool's address enables).
        counters = {"ox": ox, "oy": oy, "cw": cw, "kx": kx, "ky": ky, "dx": dx, "dy": dy}
        limit = {**{k: k for k in walk}, "dx": "ox", "dy": "oy"}   # their `last` fields
        ends = {k: Signal(name=f"{k}_end") for k in counters}

        def to_zero(*names):
            return [a for k in names
                    for a in (counters[k].eq(0), ends[k].eq(last[limit[k]] == 0))]

        def step(k):
            c = counters[k]
            return [c.eq(c + 1), ends[k].eq(c == last_m1[limit[k]])]

        def step_or_zero(k, up):
            """`step` if ``up``, else `to_zero`, in one assignment of each register."""
            c, lim = counters[k], limit[k]
            return [c.eq(Mux(up, c + 1, 0)),
                    ends[k].eq(Mux(up, c == last_m1[lim], last[lim] == 0))]
        r = Signal(range(R))
        # FILL decides from flip-flops (see `ends`): ``r == R - 1`` and the state itself are
        # registers too (decoded from the state register and compared, they were the first
        # two of five levels to the walker counters' enables).
        r_last, filling = Signal(), Signal()
        tap_off = Signal(signed(sb))
        block0 = Signal()                               # filling the tile's first block
        block0_next = Signal()                          # (its next value: see `walk`)
        tile0 = Signal()                                # ... of a channel tile after the first
        have_prev = Signal()                            # a finished tile awaits draining
        # Per-row window info of the current tile, rotating so row r is at index 0 in cycle r.
        info = data.StructLayout({"base": signed(sb), "iy0": coord, "ix0": coord, "valid": 1})
        # (Written in a tile's first block before it is read: reset-less.)
        rows_info = [Signal(info, name=f"rowinfo{i}", reset_less=True) for i in range(R)]

        # ---- Dense convolutions: each lane's tap ---------------------------------------------
        # Worked out every cycle from the held descriptor (settled by the end of PREP): the
        # lane's tap (dy, dx) in a block (a lane past the word's taps keeps what it had: it
        # weighs 0), the offsets of rows 0, 1, ... of a block, and so the lane's address
        # offset from the window's origin. In the walk, the lane's kernel row and column
        # (`kyl`, `kxl`) and its address offset (`tapl`) move with the walker's block.
        # (All reset-less: worked out every cycle, or set at the layer's start. The chip's
        # reset is for control state; each of these is a copy per lane, spread over the die.)
        dense = cfg.dense_conv
        dmode = Signal()                                # running a dense convolution
        zw = C if dense else 1                          # bits of a fill read's zero mask
        if dense:
            sb_shape = signed(sb)
            d_dy = [Signal(range(C), name=f"dense_dy{k}", reset_less=True) for k in range(C)]
            d_kx = [Signal(cfg.kernel_bits, name=f"dense_kx{k}", reset_less=True) for k in range(C)]
            d_rows, d_taps = Signal(range(C + 1)), Signal(range(C + 1))
            if cfg.deep_pipeline:
                # Tables of the descriptor's kernel width and channels (`_dense_tables`), each
                # lane's looked up from a copy of them of its own, into flip-flop primitives
                # (which synthesis does not make enables and resets of): a function of seven
                # bits each. As a case of the descriptor, a lane past the word's taps keeping
                # its value, the decoding went into the registers' enables and resets, five
                # levels from the descriptor, the slowest logic of the engine as synthesized.
                key = Cat(desc.dkw, desc.dcin)
                tables = _dense_tables(cfg, len(desc.dkw), len(key))
                shared = hard_register(m, key, name="dense_key", target=cfg.target,
                                       reset_less=True)
                m.d.comb += [d_rows.eq(hard_register(
                                 m, Array(tables["rows"])[shared], name="dense_rows",
                                 target=cfg.target, reset_less=True)),
                             d_taps.eq(hard_register(
                                 m, Array(tables["taps"])[shared], name="dense_taps",
                                 target=cfg.target, reset_less=True))]
                for k in range(C):
                    own = hard_register(m, key, name=f"dense_key{k}", target=cfg.target,
                                        reset_less=True)
                    m.d.comb += [
                        d_dy[k].eq(hard_register(m, Array(tables["dy"][k])[own],
                                                 name=f"dense_tdy{k}", target=cfg.target,
                                                 reset_less=True)),
                        d_kx[k].eq(hard_register(m, Array(tables["dx"][k])[own],
                                                 name=f"dense_tdx{k}", target=cfg.target,
                                                 reset_less=True))]
            else:
                m.d.sync += [d_rows.eq(0), d_taps.eq(0)]
                with m.Switch(Cat(desc.dkw, desc.dcin)):
                    for kw_ in range(2, cfg.max_kernel + 1):
                        for cin in range(1, C // 2 + 1):
                            with m.Case(kw_ | cin << len(desc.dkw)):
                                for k in range(C):
                                    tap = dense_lane_tap(cfg, kw_, cin, k)
                                    if tap is not None:
                                        m.d.sync += [d_dy[k].eq(tap[0]), d_kx[k].eq(tap[1])]
                                rows, taps = dense_layout(cfg, kw_, cin)
                                m.d.sync += [d_rows.eq(rows), d_taps.eq(taps)]
            row_off = [Signal(sb_shape, name=f"dense_row{j}", reset_less=True)
                       for j in range(max(C // 2, 1))]
            for j in range(1, len(row_off)):
                m.d.sync += row_off[j].eq(row_off[j - 1] + desc.in_w)
            d_off = [Signal(sb_shape, name=f"dense_off{k}", reset_less=True) for k in range(C)]
            for k in range(C):
                if cfg.deep_pipeline:
                    # The row offset chosen into a register, then the add: in one cycle, the
                    # choice among C / 2 rows and the adder's carry chain were 16 levels, the
                    # worst path of the `lenet` design's 97.63 MHz build.
                    d_row = Signal(sb_shape, name=f"dense_rsel{k}", reset_less=True)
                    m.d.sync += [d_row.eq(Array(row_off)[d_dy[k]]), d_off[k].eq(d_row + d_kx[k])]
                else:
                    m.d.sync += d_off[k].eq(Array(row_off)[d_dy[k]] + d_kx[k])
            kyl = [Signal(range(cfg.max_kernel + C + 1), name=f"dense_ky{k}", reset_less=True)
                   for k in range(C)]
            kxl = [Signal(range(cfg.max_kernel + C + 1), name=f"dense_kx{k}", reset_less=True)
                   for k in range(C)]
            tapl = [Signal(sb_shape, name=f"dense_tap{k}", reset_less=True) for k in range(C)]
            if dense_raster(cfg):
                # A walk in raster order (`systolic.hw.isa.dense_walk`: ``cin_words`` words, the
                # walker's input-word steps): each lane ``taps`` taps on at each step, wrapping
                # to the next kernel row when that passes the kernel's width. The lane's next
                # row and column (`dense_kys`, `dense_kxs`) and its address step (`dense_inc`)
                # are worked out in the cycle after each step, its next address
                # (`dense_tapn`) in the one after that (a block takes three cycles or more): at
                # the step, the lane's registers load from registers, through no adder.
                twrap = Signal(signed(len(kxl[0]) + 1), name="dense_twrap", reset_less=True)
                m.d.sync += twrap.eq(d_taps - desc.dkw)
                ky_step = [Signal.like(kyl[k], name=f"dense_kys{k}", reset_less=True)
                           for k in range(C)]
                kx_step = [Signal.like(kxl[k], name=f"dense_kxs{k}", reset_less=True)
                           for k in range(C)]
                tap_inc = [Signal(sb_shape, name=f"dense_inc{k}", reset_less=True)
                           for k in range(C)]
                tap_next = [Signal(sb_shape, name=f"dense_tapn{k}", reset_less=True)
                            for k in range(C)]
                for k in range(C):
                    wrapped = Signal(signed(len(twrap) + 1), name=f"dense_kxw{k}")
                    wrap = wrapped >= 0
                    m.d.comb += wrapped.eq(kxl[k] + twrap)
                    m.d.sync += [ky_step[k].eq(kyl[k] + wrap),
                                 kx_step[k].eq(Mux(wrap, wrapped, kxl[k] + d_taps)),
                                 tap_inc[k].eq(Mux(wrap, row_inc, d_taps)),
                                 tap_next[k].eq(tapl[k] + tap_inc[k])]
            prep = Signal(range(dense_prep_cycles(cfg) + 1))
            m.d.comb += self.dense.eq(dmode)

        # ---- Transposer banks and the feed shift register ----------------------------------
        # ``tile``: the block is the first of a channel tile after the layer's first (its
        # ``drain`` ends the previous channel tile).
        meta = data.StructLayout({"first": 1, "drain": 1, "flush": 1, "tile": 1})
        banks = [[Signal(C * 8, name=f"bank{b}_{i}", reset_less=True) for i in range(R)]
                 for b in range(2)]
        claimed = Signal(2)                             # the fill has read a bank's last row
        full = Signal(2)                                # ... and its word has arrived
        # (Its next value, which the feed's per-row copies of the load decision start from.)
        full_next = Signal(2)
        m.d.comb += full_next.eq(full)
        m.d.sync += full.eq(full_next)
        bank_meta = [Signal(meta, name=f"bank{b}_meta") for b in range(2)]
        f = Signal()                                    # bank being filled
        g = Signal()                                    # bank to feed next

        # ---- Fill ----------------------------------------------------------------------------
        walker = Signal(info)
        m.d.comb += [
            walker.base.eq(wbase), walker.iy0.eq(iy0), walker.ix0.eq(ix0),
            walker.valid.eq(img_in),
        ]
        cur = Signal(info)
        m.d.comb += cur.eq(Mux(block0, walker, rows_info[0]))
        # Which lanes of a fill read are outside the map, and so stored as 0: the read's
        # coordinates go into registers (every cycle; only a fill cycle's are used) and are
        # compared with the map's bounds in the next cycle, on their way with the read (the
        # mask is needed only when its word lands). In one cycle, the walker's choice, the
        # coordinate adders and the comparisons' carry chains were the convolution engine's
        # deepest logic with dense convolutions (seven levels).
        def fill_addr(port, value, name):
            """A fill read's address to the memory, through `fill_stages` registers
            (reset-less: an address, loaded every cycle)."""
            for stage in range(fill_stages(cfg)):
                q = Signal(len(Value.cast(port)), name=f"{name}_d{stage}" if stage else name,
                           reset_less=True)
                m.d.sync += q.eq(value)
                value = q
            m.d.comb += port.eq(value)

        def coord_reg(value, name):
            r = Signal(value.shape(), name=name, reset_less=True)
            m.d.sync += r.eq(value)
            return r
        iy, ix = coord_reg(cur.iy0 + ky, "fill_iy"), coord_reg(cur.ix0 + kx, "fill_ix")
        fill_valid = coord_reg(cur.valid, "fill_valid")
        inb = Signal()
        m.d.comb += inb.eq(fill_valid & (iy >= 0) & (iy < desc.in_h) & (ix >= 0)
                           & (ix < desc.in_w))
        zero = Signal(zw)                  # lanes of the read a cycle before to store as 0
        if dense:
            lane_out = Signal(C)
            for k in range(C):
                # Each lane picks the walker's pixel or the row's itself, from a copy of
                # `block0` of its own (`hard_register` of its next value): the lanes' address
                # registers sit by the memory's column slices, across the die, and one
                # `block0` choosing for them all was the 75 MHz build's worst path once the
                # banks' enables were copied (block0 -> a lane's address, 8 levels, 10.9 of
                # 12.7 ns routing).
                first = hard_register(m, block0_next, name=f"block0_{k}", target=cfg.target)
                cur_k = Signal(info, name=f"cur{k}")
                m.d.comb += cur_k.eq(Mux(first, walker, rows_info[0]))
                # Only taps outside the image need their lane zeroed: taps past the kernel
                # and lanes past the word's taps weigh 0. (Negative coordinates, seen
                # unsigned, are past any map: one comparison a coordinate.)
                iy_k = coord_reg(cur_k.iy0 + kyl[k], f"fill_iy{k}")
                ix_k = coord_reg(cur_k.ix0 + kxl[k], f"fill_ix{k}")
                m.d.comb += [
                    lane_out[k].eq(~(fill_valid & (iy_k.as_unsigned() < desc.in_h)
                                     & (ix_k.as_unsigned() < desc.in_w))),
                ]
                fill_addr(self.act_lanes[k], (cur_k.base + tapl[k])[:cfg.act_addr_bits],
                          f"lane_addr{k}")
            m.d.comb += zero.eq(Mux(dmode, lane_out, Mux(inb, 0, (1 << C) - 1)))
        else:
            m.d.comb += zero.eq(~inb)
        # What a fill cycle asks for lands ACT_READ_LATENCY cycles later: the request's
        # bookkeeping follows it through as many registers.
        # (The zero mask joins a cycle later, computed from the read's registered coordinates.)
        cap, cap_last, cap_bank = Signal(), Signal(), Signal()
        cap_meta = Signal(meta)
        m.d.sync += cap.eq(0)
        assert ACT_READ_LATENCY >= 2
        landing = Cat(cap, zero, cap_last, cap_bank, cap_meta)
        for k in range(ACT_READ_LATENCY - 1 + fill_stages(cfg)):
            before = landing
            later = Signal.like(landing, name=f"cap_d{k + 1}")
            m.d.sync += later.eq(landing)
            landing = later
        # On arrays of more than 4 columns, whose banks' bytes are as spread as the memory's
        # column slices (see the feed), each pair of bytes takes its write enable from a copy
        # of the last stage's flag and bank of its own: from one register, the route to a
        # far row's enables was the 8x16's worst path at 75 MHz (cap_d3 -> bank1_1, 12.3 of
        # 13.1 ns routing).
        spread = weight_stages(cfg) >= 2
        land_group = 2 if spread else C
        l_cap, l_zero = landing[0], landing[1:1 + zw]
        l_last, l_bank = landing[1 + zw], landing[2 + zw]
        l_meta = meta(landing[3 + zw:])
        word_in = self.act_read.data.as_value()
        if dense:
            word_in = Cat(Mux(l_zero[k], 0, word_in.word_select(k, 8)) for k in range(C))
        else:
            word_in = Mux(l_zero, 0, word_in)
        for k in range(0, C, land_group):
            land = (hard_register(m, Cat(before[0], before[2 + zw]), name=f"land{k}",
                                  target=cfg.target) if spread else Cat(l_cap, l_bank))
            part = slice(8 * k, 8 * (k + land_group))
            for b in range(2):
                with m.If(land[0] & (land[1] == b)):
                    for i in range(R - 1):
                        m.d.sync += banks[b][i][part].eq(banks[b][i + 1][part])
                    m.d.sync += banks[b][R - 1][part].eq(word_in[part])
        with m.If(l_cap):
            for b in range(2):
                with m.If(l_bank == b):
                    with m.If(l_last):
                        m.d.comb += full_next[b].eq(1)
                        m.d.sync += bank_meta[b].eq(l_meta)

        # The walker's step between output pixels, in input columns: two pixels a pair.
        x_stride = Mux(desc.pairs, desc.stride << 1, desc.stride) if fused else desc.stride
        # ... and between rows of output pixels, in input rows: two rows a row of pairs.
        y_stride = Mux(desc.vpairs, desc.stride << 1, desc.stride) if fused else desc.stride

        # After this cycle's step, does the walker still point inside the output map?
        more = Signal()
        line_end = ends["ox"]
        img_end = line_end & ends["oy"]
        # With ``deep_pipeline`` the walker keeps ``Mux(img_end, img1_in, img_in)`` in a
        # register of its own (`w_more`), set wherever its terms are (`walker_more`): from the
        # five flip-flops behind it, `more` went through `rewind` to the enables of the
        # walker's 80 registers, the ULX3S's next_origin at 100 MHz 11.1 ns as placed, 16
        # endpoints late.
        w_more = Signal() if cfg.deep_pipeline else None
        map1 = (last.ox == 0) & (last.oy == 0)          # a map of one pixel: always at its end
        if w_more is None:
            m.d.comb += more.eq(Mux(block0 & img_end, img1_in, img_in))
        else:
            m.d.comb += more.eq(Mux(block0, w_more, img_in))

        def walker_more(at_end, next_in, this_in):
            """`w_more`'s next value, given the walker's next ``img_end``, ``img1_in`` and
            ``img_in`` (nothing without ``deep_pipeline``)."""
            return [] if w_more is None else [w_more.eq(Mux(at_end, next_in, this_in))]
        # The walker's step at the end of the block (`r_last`), one-hot: the tile's last block,
        # the next kernel row, the next tap in the row, the next input word. With two rows or
        # more they are registers, worked out from the end flags in the cycle after those
        # change (they change only at a block's end, and the next is at least two cycles
        # later): each walker counter's and dense lane's enable is then one LUT of `adv`
        # (below) and one of these flip-flops (from the flags, it was the default ULX3S
        # build's worst path at 91 MHz: a flag to a dense lane's enable, three levels).
        # (`k_ky`: the last block or the next row, when the kernel row counters move.)
        k_last, k_row, k_col, k_cw, k_ky = kinds = [
            Signal(name=f"step_{n}") for n in ("last", "row", "col", "cw", "ky")]
        cw_e, kx_e, ky_e = ends["cw"], ends["kx"], ends["ky"]
        kinds_next = [cw_e & kx_e & ky_e, cw_e & kx_e & ~ky_e, cw_e & ~kx_e, ~cw_e, cw_e & kx_e]
        domain = m.d.sync if R >= 2 else m.d.comb
        domain += [k.eq(v) for k, v in zip(kinds, kinds_next, strict=True)]

        # ---- Feed ----------------------------------------------------------------------------
        sr = [Signal(C * 8, name=f"feed{i}", reset_less=True) for i in range(R)]
        sr_meta = Signal(meta)
        sr_left = Signal(range(C + 1))                  # steps still to present
        w_off = Signal(cfg.weight_addr_bits)
        a_reg = Signal(data.ArrayLayout(signed(8), R), reset_less=True)
        first_reg, drain_reg, wvalid_reg, tile_reg = Signal(), Signal(), Signal(), Signal()
        release = Signal(2)                             # banks the feed copies out this cycle

        # `sr_left <= 1` from a register: `load` is one LUT from registers.
        at_last = Signal(init=1)
        load = Signal()
        m.d.comb += load.eq(at_last & full.bit_select(g, 1))
        stepping = (sr_left != 0) & ~sr_meta.flush
        at_last_next = Mux(load, C <= 1, Mux(stepping, sr_left <= 2, 1))
        m.d.sync += at_last.eq(at_last_next)
        # The shift register's load and step decisions enable each of its rows * cols * 8
        # bits, spread over the whole array: each row decides for itself, from its own
        # copies of the registers they are made from (`hard_register`: synthesis keeps them
        # apart), so that no one net reaches them all. (A single such net was the ULX3S's
        # critical path: conv.full -> feed, 13.3 ns, 12.3 of it routing.)
        g_next = g ^ load
        step_next = Mux(load, ~Mux(g, bank_meta[1].flush, bank_meta[0].flush),
                        stepping & (sr_left >= 2))
        # On arrays of more than 4 columns (`weight_stages` 2) a row's bytes are as spread as
        # the activation memory's column slices their banks are filled from: across the die
        # on the ULX3S (feed_ctl2 to the far end of feed2, 9.9 ns of one route, was the 8x16's
        # worst path at 90 MHz). There the shift register works a cycle behind these
        # decisions (`lag`), each pair of its bytes from a copy of the row's copy: one of
        # the registers the activations wait in for their weights moved before it (`a_q`
        # below), so a step reaches the array when it did. The bank it loads holds still: it
        # takes new words ACT_READ_LATENCY cycles after the release at the earliest.
        lag = weight_stages(cfg) >= 2
        group = 2 if lag else C                         # bytes a copy enables
        row_load, row_step, row_g = [], [], []
        # (The pairs' copies are reset-less: loaded every cycle, they hold the row copy's
        # reset value after the chip's reset, which lasts microseconds.)
        for i in range(R):
            copy = hard_register(m, Cat(~at_last_next, full_next, g_next, step_next),
                                 name=f"feed_ctl{i}", target=cfg.target)
            loads, steps, gs = [], [], []
            for k in range(0, C, group):
                c = hard_register(m, copy, name=f"feed_ctl{i}_{k}", target=cfg.target,
                                  reset_less=True) if lag else copy
                loads.append(~c[0] & Mux(c[3], c[2], c[1]))
                gs.append(c[3])
                steps.append(c[4])
            row_load.append(loads)
            row_g.append(gs)
            row_step.append(steps)
        m.d.sync += [first_reg.eq(0), drain_reg.eq(0), wvalid_reg.eq(0), tile_reg.eq(0)]
        for i in range(R):
            m.d.sync += a_reg[i].eq(0)
        # ``sr_left == C`` (no step since the load) and, with it, a ``first`` tile's weights
        # starting again: registers set at the load and cleared at the next step, so that the
        # weight address (an adder) starts from them, not from a comparison.
        step0, restart = Signal(), Signal()
        # The step's weight address: the weight memory registers it (a copy per group of its
        # block RAMs). What it reads outside steps is never used (the weight's valid flag is 0).
        # On the wide arrays `restart` picks after the adder, not before it: the sum goes to
        # block RAM slices across the die, and `restart` through the carry chain and that
        # route was the 90 MHz build's worst path at 89.7 MHz (11 levels, 9.3 ns routing).
        # With `weight_addr_stages` the sum goes into a register first.
        w_addr = (Mux(restart, w_tile_base, w_tile_base + w_off) if lag
                  else w_tile_base + Mux(restart, 0, w_off))
        wa = weight_addr_stages(cfg)
        m.d.comb += self.weight_read.addr.eq(delay(m, w_addr, wa, name="w_addr",
                                                   reset_less=True))
        with m.If(sr_left != 0):
            m.d.sync += [sr_left.eq(sr_left - 1), step0.eq(0), restart.eq(0)]
            with m.If(sr_meta.flush):
                m.d.sync += [first_reg.eq(1), drain_reg.eq(1), sr_left.eq(0)]
            with m.Else():
                m.d.sync += [
                    first_reg.eq(restart),
                    drain_reg.eq(sr_meta.drain & step0),
                    tile_reg.eq(sr_meta.tile & step0),
                    wvalid_reg.eq(1),
                ]
                m.d.sync += w_off.eq(Mux(restart, 1, w_off + 1))
        for i in range(R):
            if not lag:
                with m.If(row_step[i][0]):
                    m.d.sync += [a_reg[i].eq(sr[i][:8]), sr[i].eq(sr[i] >> 8)]
                with m.If(row_load[i][0]):
                    m.d.sync += sr[i].eq(Mux(row_g[i][0], banks[1][i], banks[0][i]))
                continue
            shifted = sr[i] >> 8
            with m.If(row_step[i][0]):
                m.d.sync += a_reg[i].eq(sr[i][:8])
            for n, k in enumerate(range(0, C, group)):
                part = slice(8 * k, 8 * (k + group))
                loaded = Mux(row_g[i][n], banks[1][i], banks[0][i])
                with m.If(row_step[i][n]):
                    m.d.sync += sr[i][part].eq(shifted[part])
                with m.If(row_load[i][n]):
                    m.d.sync += sr[i][part].eq(loaded[part])
        with m.If(load):
            for b in range(2):
                with m.If(g == b):
                    m.d.sync += [sr_meta.eq(bank_meta[b]), restart.eq(bank_meta[b].first)]
                    m.d.comb += release[b].eq(1)
                    # A channel tile's first block: its weights follow the previous tile's.
                    with m.If(bank_meta[b].tile):
                        m.d.sync += w_tile_base.eq(w_tile_base + desc.w_tile_words)
            m.d.sync += [sr_left.eq(C), g.eq(~g), step0.eq(1)]
        # The weight memory is registered on both sides, as the activation memory is (its
        # address bits fan out to every block RAM of it): a step's weight word is in `w_q`
        # 2 + `weight_stages` cycles after the step (its address is registered in the memory
        # at the step's end, as `a_reg` is), and the activations and flags wait as long less
        # one cycle for it.
        ws = weight_stages(cfg)
        # (A `BankedWeights` memory has the first of these registers: its banks' own.)
        w_in = delay(m, self.weight_read.data.as_value(), ws - 1 - bool(cfg.fc_rows), name="w_r",
                     reset_less=True)
        a_q = delay(m, a_reg, ws + wa + 1 - lag, name="a", reset_less=True)
        first_q = delay(m, first_reg, ws + wa + 1, name="first")
        drain_q = delay(m, drain_reg, ws + wa + 1, name="drain")
        tile_q = delay(m, tile_reg, ws + wa + 1, name="tile")
        wvalid_q = delay(m, wvalid_reg, ws + wa, name="wvalid")
        w_q = Signal(C * 8, reset_less=True)
        m.d.sync += w_q.eq(Mux(wvalid_q, w_in, 0))
        m.d.comb += [array.a.eq(a_q), array.first.eq(first_q), array.w.eq(w_q)]
        # A row-by-row layer: the descriptor's flag, in a register of the engine's (loaded
        # as the command is taken; the memory's banks and the array's rows take copies).
        fcm = Signal()
        if cfg.fc_rows:
            m.d.comb += [self.fc_rows.eq(fcm), array.fc.eq(fcm),
                         array.w_rows.eq(self.weight_rows)]

        # ---- Drain ---------------------------------------------------------------------------
        # A `first` step with `drain` ends a pixel tile; row 0 of its sums is ready
        # `row_ready_delay(0)` cycles later and row r one cycle after row r - 1. The rows go to
        # the requantizer one group of `rq_lanes` channels a cycle, row by row: row r's group g
        # `r * G + g` cycles after row 0 (never before the row is ready, since G >= 1; and
        # before the next tile replaces it, which the configuration's check guarantees).
        # `emit` and the row and group it emits (`er`, `eg`) are registers, set a cycle ahead
        # from the pulse's previous stage (they count the emitted sums and give the parameter
        # word's address and the tags; the sums themselves are picked by tokens, below).
        L, G = cfg.rq_lanes, cfg.rq_groups
        ready0 = array.row_ready_delay(0)
        assert ready0 >= 2
        dpipe = Signal(ready0)                          # dpipe[k]: pulse of k+1 cycles ago
        m.d.sync += dpipe.eq(Cat(first_q & drain_q, dpipe[:-1]))
        start_next = dpipe[ready0 - 2]                  # the pulse is ready next cycle
        # Whether the pulse's pixel tile is its channel tile's last (`tile`): the drain then
        # moves on to the next channel tile (`switch`) as it emits that tile's last sums.
        tpipe = Signal(ready0 - 1)
        m.d.sync += tpipe.eq(Cat(first_q & drain_q & tile_q, tpipe[:-1]))
        er, eg = Signal(range(max(R, 2))), Signal(range(max(G, 2)))
        emit = Signal()
        # ``eg == G - 1`` and ``er == R - 1``, registers set with `eg` and `er` (compared, they
        # were the first levels of the 12x12 build's deepest paths: `switch` to the drain's
        # rewind of its pixel counters).
        row_end = Signal(init=G == 1)
        er_last = Signal(init=R == 1)
        tile_end = Signal()                             # the drain ends a channel tile
        # ``switch`` is ``emit & row_end & er_last & tile_end``, a register set a cycle ahead
        # from the next values of its terms, and so is `drain_rewind`, which it sets: the
        # AND of the drain's counters went on to the enables of the drain's address
        # registers, across the die (the 8x16 build at 90 MHz: `eg` to `p_next`, 14.3 of
        # 15.7 ns routing).
        switch = Signal()
        er_next, eg_next = Signal.like(er), Signal.like(eg)
        emit_next, tile_end_next = Signal(), Signal()
        m.d.comb += [
            eg_next.eq(Mux(start_next | (emit & row_end), 0, Mux(emit, eg + 1, eg))),
            er_next.eq(Mux(start_next, 0, Mux(emit & row_end & ~er_last, er + 1, er))),
            emit_next.eq(start_next | (emit & ~(row_end & er_last))),
            tile_end_next.eq(Mux(start_next, tpipe[ready0 - 2], tile_end & ~switch)),
        ]
        switch_next = emit_next & (eg_next == G - 1) & (er_next == R - 1) & tile_end_next
        m.d.sync += [eg.eq(eg_next), er.eq(er_next), emit.eq(emit_next),
                     tile_end.eq(tile_end_next), switch.eq(switch_next),
                     row_end.eq(eg_next == G - 1), er_last.eq(er_next == R - 1)]
        # Each lane picks its sum by a one-hot token that walks the lane's sums in the order
        # they are emitted (row by row, group by group): token `r * G + g` is set in the cycle
        # that emits row r's group g, and gates that sum into an OR. Each token is a flip-flop
        # of its own (`hard_register`, so that synthesis keeps one per lane) that drives the 32
        # gates of its sum only, and takes its input from the token before it: no register
        # drives multiplexers all over the array. (A drain ends before the next one starts,
        # which the compiler checks, so one token walks at a time.)
        # With two stages (`select_stages`), the rows are taken `_SELECT_CHUNK` at a time: the
        # first stage ORs the gated sums of each chunk into a register of the chunk's own, the
        # second ORs the chunks' registers (all but one of them zero) a cycle later.
        sel = Signal(data.ArrayLayout(signed(32), L), reset_less=True)
        two = select_stages(cfg) == 2
        chunk = min(_SELECT_CHUNK, R) if two else R
        for lane in range(L):
            sums = [array.results[r][g * L + lane] for r in range(R) for g in range(G)]
            if len(sums) == 1:
                gated = sums
            else:
                # (The token's registers are reset-less: it walks out of them in
                # ``R * G`` cycles, and the chip's reset lasts microseconds.) With two
                # stages each sum is gated by a copy of its token register (the same input,
                # kept apart): the chain's register sits between its sum and the next one's,
                # which may be rows apart, and its route to the gates was the 90 MHz build's
                # worst path (tok0_6 -> sel0_rows0, 9.1 ns one route).
                token = start_next
                gated = []
                for i, s in enumerate(sums):
                    gate = hard_register(m, token, name=f"gate{lane}_{i}", target=cfg.target,
                                         reset_less=True) if two else None
                    token = hard_register(m, token, name=f"tok{lane}_{i}", target=cfg.target,
                                          reset_less=True)
                    gated.append(Mux(token if gate is None else gate, s, 0))
            parts = []
            for k in range(0, R * G, chunk * G):
                picked = reduce(operator.or_, gated[k:k + chunk * G])
                if not two:
                    m.d.sync += sel[lane].eq(picked)
                    continue
                part = Signal(signed(32), name=f"sel{lane}_rows{k // G}", reset_less=True)
                m.d.sync += part.eq(picked)
                parts.append(part)
            if two:
                m.d.sync += sel[lane].eq(reduce(operator.or_, parts))
        sel_valid = Signal()
        sel_tag = Signal(tag)
        out_addr = Signal(cfg.act_addr_bits)
        dx_end, dy_end = ends["dx"], ends["dy"]
        dimg = Signal.like(img)
        m.d.sync += sel_valid.eq(emit)
        if fused:
            # Fused 2x2 max pooling: the pixel's word goes to its window's address, `paddr`
            # (`prow`: that of the window row's first); pixels past the last whole window
            # (an odd width's last column, an odd height's last row) go nowhere.
            # With ``pairs`` every pixel is a whole window row (a pair; the walk dropped an odd
            # width's last column already); with ``vpairs`` a whole window column (the walk
            # dropped an odd height's last row), and each row of pairs a row of windows.
            paddr, prow = Signal(cfg.act_addr_bits), Signal(cfg.act_addr_bits)
            keep = ~((dx_end & ~last.ox[0] & ~desc.pairs)
                     | (dy_end & ~last.oy[0] & ~desc.vpairs))
            # Whether the pixel ends its window's row, ``dx[0] | pairs``: a register set with
            # ``dx`` (the next window's address is an adder after it).
            right = Signal()
        def rewind_drain(base):
            """The drain's pixel back to the map's first, whose word is at ``base``."""
            return [out_addr.eq(base), *to_zero("dx", "dy"), dimg.eq(0)] + (
                [paddr.eq(base), prow.eq(base), right.eq(desc.pairs)] if fused else [])

        # The group's parameter word is read in the emit cycle; sums and parameters then meet
        # in registers (block RAM data goes into a register before any logic). Its address,
        # ``p_tile + eg``, comes from a register set a cycle ahead from `eg_next`: the adder
        # was in the cycle of the route to the parameter memory's block RAMs, the ULX3S's worst
        # path at 90 MHz (12.2 ns, 10.4 routing). `p_tile` changes as the drain emits a
        # channel tile's last sums (`switch`), and the next drain may start in that cycle:
        # its first word is then the next tile's (`p_next`).
        # Row by row (`fcm`), row r's parameters are channel tile r's: ``r * G`` further on.
        p_addr = Signal.like(self.param_read.addr, reset_less=True)
        p_row = Mux(fcm, er_next * G, 0) if cfg.fc_rows else 0
        m.d.sync += p_addr.eq(Mux(switch, p_next, p_tile) + eg_next + p_row)
        m.d.comb += self.param_read.addr.eq(p_addr)
        # (With two selection stages, the parameters, the valid bit and the tag wait a cycle
        # more for the sums.)
        wait = select_stages(cfg) - 1
        params_at = delay(m, self.param_read.data, wait, name="params", reset_less=True)
        valid_at = delay(m, sel_valid, wait, name="sel_valid")
        tag_at = delay(m, sel_tag, wait, name="sel_tag")
        rq_acc = Signal.like(sel)
        rq_params = Signal(param_layout(cfg), reset_less=True)
        rq_valid, rq_tag = Signal(), Signal(tag)
        m.d.sync += [rq_acc.eq(sel), rq_params.eq(params_at), rq_valid.eq(valid_at),
                     rq_tag.eq(tag_at)]
        with m.If(emit):
            m.d.sync += [
                sel_tag.valid.eq(dimg < desc.batch),
                sel_tag.addr.eq(out_addr),
                sel_tag.last.eq(row_end),
            ]
            if fused:
                # (With ``vpairs``, each pixel's word is folded into its window column's
                # maximum: the window's left column goes into the line buffer, its right
                # one meets it there.)
                m.d.sync += [sel_tag.px.eq(right | desc.vpairs),
                             sel_tag.py.eq(Mux(desc.vpairs, dx[0], dy[0])),
                             sel_tag.col.eq(Mux(desc.pairs, dx, dx[1:])),
                             sel_tag.half.eq(td_odd)]
                with m.If(desc.pool):
                    m.d.sync += [sel_tag.valid.eq((dimg < desc.batch) & keep),
                                 sel_tag.addr.eq(paddr)]
                with m.If(row_end):
                    # The next pixel's window: one further after an odd column; at a line's
                    # end, back to the row's first after an even line, on after an odd one.
                    nxt = (paddr + Mux(right, out_words, 0))[:cfg.act_addr_bits]
                    with m.If(~dx_end):
                        m.d.sync += paddr.eq(nxt)
                    with m.Elif(dy[0] | desc.vpairs):
                        m.d.sync += [paddr.eq(nxt), prow.eq(nxt)]
                    with m.Else():
                        m.d.sync += paddr.eq(prow)
            with m.If(row_end):
                m.d.sync += out_addr.eq(out_addr + out_words)
                with m.If(dx_end):
                    m.d.sync += to_zero("dx")
                    if fused:
                        m.d.sync += right.eq(desc.pairs)
                    with m.If(dy_end):
                        m.d.sync += [*to_zero("dy"), dimg.eq(dimg + 1)]
                    with m.Else():
                        m.d.sync += step("dy")
                with m.Else():
                    m.d.sync += step("dx")
                    if fused:
                        m.d.sync += right.eq(~dx[0] | desc.pairs)
        # The channel tile's last sums: the drain goes on with the next tile's first pixel.
        # (`drain_rewind`: a register, set a cycle ahead of `switch` and of START.)
        m.d.sync += drain_rewind.eq(switch_next | to_start)
        with m.If(drain_rewind):
            # (Entering tile ``t``, the next one's words are ``t % 2`` further on with
            # ``halves``: tiles 0 and 1 share words.)
            m.d.sync += [p_tile.eq(p_next), p_next.eq(p_next + G), td_odd.eq(~td_odd),
                         td_base.eq(td_base + (Mux(desc.halves, ~td_odd, 1) if fused else 1)),
                         *rewind_drain(td_base)]
        m.d.comb += [
            rq.i_valid.eq(rq_valid),
            rq.i_acc.eq(rq_acc),
            rq.i_tag.eq(rq_tag),
            rq.i_params.eq(rq_params),
            rq.relu.eq(desc.relu),
        ]
        # Groups of an output word are collected until its last one arrives.
        word_out = rq.o_valid & rq.o_tag.valid & rq.o_tag.last
        if G == 1:
            word = rq.o_data.as_value()
        else:
            collected = Signal((G - 1) * L * 8)
            with m.If(rq.o_valid):
                m.d.sync += collected.eq(Cat(collected[L * 8:], rq.o_data))
            word = Cat(collected, rq.o_data)
        # The write (with `write_stages`, into registers before the port: `aw_*`).
        aw, aw_halves = self.act_write, (self.act_halves if fused else None)
        if write_stages(cfg):
            aw = SimpleNamespace(en=Signal(name="aw_en"),
                                 addr=Signal.like(self.act_write.addr, name="aw_addr"),
                                 data=Signal.like(self.act_write.data, name="aw_data"))
            aw_halves = Signal(2, name="aw_halves") if fused else None
            for name, port, value in (
                    ("en", self.act_write.en, aw.en), ("addr", self.act_write.addr, aw.addr),
                    ("data", self.act_write.data, aw.data),
                    *([("halves", self.act_halves, aw_halves)] if fused else [])):
                reg = Signal.like(port, name=f"aw_{name}_q",
                                  reset_less=name != "en")    # (data: no reset)
                m.d.sync += reg.eq(value)
                m.d.comb += port.eq(reg)

        def plain():
            """The requantizer's word straight to memory."""
            return [aw.en.eq(word_out), aw.addr.eq(rq.o_tag.addr), aw.data.eq(word)]

        if fused:
            # Fused 2x2 max pooling (the descriptor's ``pool``): a window's left pixel waits
            # in `left`; at its right one the row's maximum goes on, with the line buffer's
            # word for the column read; an upper row's maximum goes into the line buffer, a
            # lower row's maximum with the line buffer's is the window's word.
            # The requantizer's word and tag go into registers first, so that the lanes'
            # outputs, spread with the lanes, and the comparators are in different cycles
            # (together: the ULX3S's worst path at 75 MHz, 13.7 ns, 9.9 of it routing).
            f_out = Signal()
            f_word = Signal(C * 8, reset_less=True)
            f_tag = Signal.like(rq.o_tag, reset_less=True)
            m.d.sync += [f_out.eq(word_out), f_word.eq(word), f_tag.eq(rq.o_tag)]
            def vmax(a, b, n=C):
                return Cat(Mux(a.word_select(k, 8).as_signed() > b.word_select(k, 8).as_signed(),
                               a.word_select(k, 8), b.word_select(k, 8)) for k in range(n))

            def fold(a):
                """A pair's word: the maximum of its halves, in both (``pairs``, ``vpairs``)."""
                if C % 2:
                    return a
                half = vmax(a[:C * 4], a[C * 4:], C // 2)
                return Cat(half, half)

            m.submodules.pool_line = line = memory.Memory(
                shape=C * 8, depth=max(cfg.max_dim // 2, 2), init=[])
            lw, lr = line.write_port(), line.read_port()
            left = Signal(C * 8, reset_less=True)
            # (Names given: closures' variables escape the inference from tuples.)
            h_valid, h_py = Signal(name="h_valid"), Signal(name="h_py")
            h_max = Signal(C * 8, reset_less=True)
            h_addr = Signal(cfg.act_addr_bits, reset_less=True)
            h_col = Signal.like(lr.addr, reset_less=True)
            h_half = Signal(reset_less=True, name="h_half")
            q_half = Signal(reset_less=True, name="q_half")

            def row_max(tag, pair, both):
                """A window row's maximum: its pair's (``pairs``, ``vpairs``) or both pixels'."""
                return [h_valid.eq(1), h_py.eq(tag.py),
                        h_max.eq(Mux(desc.pairs | desc.vpairs, pair, both)),
                        h_addr.eq(tag.addr), h_col.eq(tag.col), h_half.eq(tag.half)]

            m.d.sync += h_valid.eq(0)
            # With ``deep_pipeline`` the right pixel's two maxima go into registers, `g_*`,
            # and the row's one of them a cycle later.
            g_tag = f_tag
            if cfg.deep_pipeline:
                g_valid, g_tag = Signal(), Signal.like(f_tag, reset_less=True)
                g_pair, g_both = Signal(C * 8, reset_less=True), Signal(C * 8, reset_less=True)
                m.d.sync += g_valid.eq(0)
            with m.If(f_out & desc.pool):
                with m.If(~f_tag.px):
                    m.d.sync += left.eq(f_word)
                with m.Else():
                    if cfg.deep_pipeline:
                        m.d.sync += [g_valid.eq(1), g_tag.eq(f_tag), g_pair.eq(fold(f_word)),
                                     g_both.eq(vmax(left, f_word))]
                    else:
                        m.d.sync += row_max(f_tag, fold(f_word), vmax(left, f_word))
            if cfg.deep_pipeline:
                with m.If(g_valid):
                    m.d.sync += row_max(g_tag, g_pair, g_both)
            m.d.comb += [
                lr.addr.eq(g_tag.col), lr.en.eq(1),
                lw.addr.eq(h_col), lw.data.eq(h_max), lw.en.eq(h_valid & ~h_py),
            ]
            # The line buffer's word goes into a register before any logic (block RAM on the
            # ECP5: its read is slow), the lower row's maximum waiting beside it.
            q_valid, q_line = Signal(), Signal(C * 8, reset_less=True)
            q_max = Signal(C * 8, reset_less=True)
            q_addr = Signal(cfg.act_addr_bits, reset_less=True)
            m.d.sync += [q_valid.eq(h_valid & h_py), q_line.eq(lr.data), q_max.eq(h_max),
                         q_addr.eq(h_addr), q_half.eq(h_half)]
            # The window's word (with ``deep_pipeline`` in a register first: `r_*`).
            r_valid, r_addr, r_half = q_valid, q_addr, q_half
            if cfg.deep_pipeline:
                r_valid, r_half = Signal(), Signal(reset_less=True)
                r_word = Signal(C * 8, reset_less=True)
                r_addr = Signal.like(q_addr, reset_less=True)
                m.d.sync += [r_valid.eq(q_valid), r_word.eq(vmax(q_line, q_max)),
                             r_addr.eq(q_addr), r_half.eq(q_half)]
            with m.If(desc.pool):
                m.d.comb += [aw.en.eq(r_valid),
                             aw.addr.eq(r_addr),
                             aw.data.eq(r_word if cfg.deep_pipeline
                                                    else vmax(q_line, q_max))]
            with m.Else():
                m.d.comb += plain()
            # A channel tile with ``halves`` writes half `t % 2` of its words (`pair_pixels`):
            # the half its words' tag carries (the next tile's may be on their way).
            half = Mux(desc.pool, r_half, rq.o_tag.half)
            m.d.comb += aw_halves.eq(Mux(desc.halves, Mux(half, 0b10, 0b01), 0b11))
        else:
            m.d.comb += plain()

        # ---- Sequencer FSM ---------------------------------------------------------------
        # The feed releases banks; the fill (or FLUSH) claims them, the bank `f` (after the
        # capture above). Their next values are worked out here, and from them whether the
        # fill may go on in the next cycle, `go`, a register: the enable of every walker
        # register and lane tap, a net spread over the engine (decoded from `filling`,
        # `claimed` and `f` it was the first of five levels to those enables).
        claim, start_fill, filling_done = Signal(), Signal(), Signal()
        claimed_next, f_next, filling_next = Signal(2), Signal(), Signal()
        go = Signal()
        # With `deep_pipeline` the claims see the feed's release a cycle later, from a register
        # by the sequencer (`released`): the feed's bank pointer, at the array's edge, through
        # its load decision and the claims into `go_next` and every copy of the walker's
        # advance flag was the worst path of the `lenet` design's 100 MHz build (`conv.g` to
        # `conv.dense_adv6`, 9.9 ns, 8.3 of it routing). The bank is free a cycle later
        # (`bank_cycles`: within the array's two blocks, ``2 * cols``, on arrays of at least
        # 5 columns and no more rows; the model counts the wait elsewhere). The feed's own
        # `full` still clears with the release.
        released = release
        if cfg.deep_pipeline:
            released = Signal(2)
            m.d.sync += released.eq(release)
        for b in range(2):
            m.d.comb += claimed_next[b].eq((claimed[b] & ~released[b]) | (claim & (f == b)))
            with m.If(release[b]):
                m.d.comb += full_next[b].eq(0)
        m.d.comb += [f_next.eq(f ^ claim),
                     filling_next.eq(start_fill | (filling & ~filling_done))]
        go_next = Signal()
        m.d.comb += go_next.eq(filling_next & ~claimed_next.bit_select(f_next, 1))
        m.d.sync += [claimed.eq(claimed_next), f.eq(f_next), filling.eq(filling_next),
                     go.eq(go_next)]
        # `r_last`'s next value (the walker's and START's decisions below), and from it and
        # `go`'s, ``go & r_last`` as registers of their own, `adv`: the walker's block step,
        # the enable of its counters and of every dense lane (each lane its own copy). With
        # `go` and `r_last` decoded with the step's kind, that enable was four levels of logic.
        r_last_next = Signal()
        m.d.comb += r_last_next.eq(r_last)
        m.d.sync += r_last.eq(r_last_next)
        # With `deep_pipeline`, ``r == R - 2`` is a register too (`r_pen`), and `r_last_next`
        # one LUT of four registers: START clears it, `go` sets it from `r_pen` unless it is
        # the block's end (``go & r_last``, which is `adv`: it clears it), else it holds. As
        # the decisions below pick it (`go`, `adv`, START, the comparison of `r`), it was two
        # levels ahead of `adv`'s copies, across the engine.
        pen = cfg.deep_pipeline and R >= 2
        r_pen = Signal(init=R == 2)
        # The sequencer's bank claims take a copy of `adv` of their own (`adv_seq`): the
        # walker's copies sit by its counters and lanes, the bank registers by the feed, and
        # the loop from `adv` through the claim to `go_next` and back crossed that distance
        # twice (the 8x16 build at 90 MHz: 6.8 and 5.8 ns of routing, 15.1 ns in all).
        # Likewise ``go & block0``, the walker's pixel step, as a register of its own, `walk`:
        # the enable of the walker's pixel, image and origin registers (``go``, ``block0`` and
        # the end flags, it was the 8x16's worst path at 90 MHz: the route from `block0`,
        # which also selects the fill's row info, to `next_origin`'s enables, 12.3 of 13.5 ns).
        m.d.comb += block0_next.eq(block0)
        m.d.sync += block0.eq(block0_next)
        walk = hard_register(m, go_next & block0_next, name="walk", target=cfg.target)
        if R >= 2:
            adv_d = go_next & r_last_next
            adv = hard_register(m, adv_d, name="adv", target=cfg.target)
            adv_seq = hard_register(m, adv_d, name="adv_seq", target=cfg.target)
            adv_l = [hard_register(m, adv_d, name=f"dense_adv{k}", target=cfg.target)
                     for k in range(C)] if dense else []
        else:
            adv = adv_seq = Signal()
            m.d.comb += adv.eq(go & r_last)
            adv_l = [adv] * C if dense else []
        # The fill's read address, whether it reads or not: what it reads outside FILL is
        # never captured (``cap``), and the address does not wait on FILL's decisions.
        m.d.comb += [self.act_read.en.eq(1), self.param_read.en.eq(1)]
        fill_addr(self.act_read.addr, (cur.base + tap_off)[:cfg.act_addr_bits], "fill_addr")
        busy = Signal()
        m.d.comb += self.busy.eq(busy)

        def rewind_walker():
            """The walker's pixel back to the batch's first."""
            return [
                *to_zero("ox", "oy"), wbase.eq(desc.origin), img.eq(0), img1.eq(1),
                img_in.eq(desc.batch != 0), img1_in.eq(desc.batch > 1),
                *walker_more(map1, desc.batch > 1, desc.batch != 0),
                next_origin.eq(desc.origin + desc.in_img_step),
                iy0.eq(-desc.pad), ix0.eq(-desc.pad),
            ]

        def reset_walker():
            lanes = ([kyl[k].eq(d_dy[k]) for k in range(C)] + [kxl[k].eq(d_kx[k]) for k in range(C)]
                     + [tapl[k].eq(d_off[k]) for k in range(C)]) if dense else []
            return lanes + [
                *to_zero("cw", "kx", "ky"),
                r.eq(0), *([r_pen.eq(R == 2)] if pen else []), tap_off.eq(0),
                tile0.eq(0), have_prev.eq(0), tile_end.eq(0),
            ]

        # FILL: the walker's work, gated by `go` (FILL's `filling` is set and cleared with the
        # state's entry and exit), not by the state register.
        with m.If(go):
            m.d.sync += [
                cap.eq(1), cap_bank.eq(f),
                cap_last.eq(r_last),
                cap_meta.first.eq(block0), cap_meta.drain.eq(block0 & have_prev),
                cap_meta.flush.eq(0), cap_meta.tile.eq(tile0),
            ]
            # Rotate the row info; the tile's first block records it from the walker.
            for i in range(R - 1):
                m.d.sync += rows_info[i].eq(rows_info[i + 1])
            m.d.sync += rows_info[R - 1].eq(cur)
            with m.If(~r_last):
                m.d.sync += r.eq(r + 1)
                if pen:
                    m.d.sync += r_pen.eq((r == R - 3) if R >= 3 else 0)
                else:
                    m.d.comb += r_last_next.eq(r == R - 2)
        # In a tile's first block, the walker's next pixel (``go & block0``).
        with m.If(walk):
            with m.If(img_end):
                m.d.sync += [*to_zero("ox", "oy"), img.eq(img1), img1.eq(img1 + 1),
                             img_in.eq(img1_in), img1_in.eq(img1 + 1 < desc.batch),
                             *walker_more(map1, img1 + 1 < desc.batch, img1_in),
                             wbase.eq(next_origin),
                             next_origin.eq(next_origin + desc.in_img_step),
                             ix0.eq(-desc.pad), iy0.eq(-desc.pad)]
            with m.Elif(line_end):
                m.d.sync += [*to_zero("ox"), *step("oy"),
                             *walker_more((last.ox == 0) & (oy == last_m1.oy), img1_in, img_in),
                             wbase.eq(wbase + desc.y_step),
                             ix0.eq(-desc.pad), iy0.eq(iy0 + y_stride)]
            with m.Else():
                m.d.sync += [*step("ox"), wbase.eq(wbase + desc.x_step),
                             *walker_more((ox == last_m1.ox) & ends["oy"], img1_in, img_in),
                             ix0.eq(ix0 + x_stride)]
        # The block's end (``go & r_last``): the walker's next block.
        with m.If(adv_seq):
            m.d.comb += claim.eq(1)
        with m.If(adv):
            m.d.sync += [r.eq(0), tile0.eq(0), *([r_pen.eq(R == 2)] if pen else [])]
            m.d.comb += block0_next.eq(0)
            if not pen:
                m.d.comb += r_last_next.eq(R == 1)
            # Each counter in one assignment under one condition of registers (`adv` and the
            # kind): its enable one LUT.
            m.d.sync += [*step_or_zero("cw", k_cw),
                         tap_off.eq(Mux(k_last, 0, tap_off + Mux(k_row, row_inc, 1)))]
            with m.If(~k_cw):
                m.d.sync += step_or_zero("kx", k_col)
            with m.If(k_ky):
                m.d.sync += step_or_zero("ky", k_row)
            with m.If(k_last):
                m.d.sync += have_prev.eq(1)
                m.d.comb += block0_next.eq(1)
                with m.If(~more):
                    # The map's end: on with the next channel tile, or the layer's end.
                    with m.If(ft_last):
                        m.d.comb += filling_done.eq(1)
                    with m.Else():
                        m.d.comb += rewind.eq(1)
                        m.d.sync += tile0.eq(1)
        # Each dense lane's kernel row, column and address offset, on its own copy of `adv`:
        # back to the lane's first tap after the last block, the next kernel rows after a
        # row, the next taps of the row after a tap.
        for k in range(C if dense else 0):
            with m.If(adv_l[k] & k_ky):
                m.d.sync += kyl[k].eq(Mux(k_last, d_dy[k], kyl[k] + d_rows))
            with m.If(adv_l[k] & ~k_cw):
                m.d.sync += [
                    kxl[k].eq(Mux(k_col, kxl[k] + d_taps, d_kx[k])),
                    tapl[k].eq(Mux(k_last, d_off[k], tapl[k] + Mux(
                        k_row, row_inc, d_taps))),
                ]
            if dense_raster(cfg):
                # (An input-word step happens only in a raster walk: a dense convolution's
                # walk by rows has one word a pixel.) On the lane's own copy of `adv` and
                # the step's kind, a register, as the steps above: a copy of `adv & k_cw` a
                # lane of its own (`dense_radv`) doubled the fan-out of `adv`'s cone, five
                # levels from the walker's end flags, and that design did not close at 105
                # MHz on the ULX3S.
                with m.If(adv_l[k] & k_cw):
                    m.d.sync += [kxl[k].eq(kx_step[k]), kyl[k].eq(ky_step[k]),
                                 tapl[k].eq(tap_next[k])]

        # The walker back to the map's first pixel, for the next channel tile or, from START,
        # the first (after the walker's steps above, which it overrides).
        with m.If(rewind):
            m.d.sync += [*rewind_walker(), ft_left.eq(ft_left - 1), ft_last.eq(ft_left == 1)]

        # SETTLE counts down once the feed is empty (no bank claimed, nothing left to step):
        # a register, from the cycle before (the feed sits at the array's edge, far from the
        # sequencer; the comparison was on the ULX3S's worst path at 90 MHz, sr_left -> t).
        # FLUSH clears it, so it is set in SETTLE only once the feed has taken the flush
        # bank and run dry; the countdown starts one lower to end in the same cycle.
        feed_empty = Signal()
        m.d.sync += feed_empty.eq((claimed == 0) & (sr_left == 0))

        with m.FSM() as fsm:
            with m.State("RESET"):
                # One cycle out of reset: the state register changes once, which Icarus needs
                # to evaluate the outputs decoded from it (cmd.ready read X until then).
                m.next = "IDLE"
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    if cfg.fc_rows:
                        m.d.sync += fcm.eq(self.cmd.payload.fc_rows)
                    m.d.sync += [busy.eq(1), w_tile_base.eq(self.cmd.payload.w_base),
                                 p_next.eq(self.cmd.payload.p_base),
                                 td_base.eq(self.cmd.payload.out_base), td_odd.eq(1),
                                 ft_left.eq(self.cmd.payload.cout_tiles)]
                    if dense:
                        m.d.sync += [dmode.eq(self.cmd.payload.dense),
                                     prep.eq(dense_prep_cycles(cfg) - 1)]
                        with m.If(self.cmd.payload.dense):
                            m.next = "PREP"
                        with m.Else():
                            m.d.comb += to_start.eq(1)
                            m.next = "START"
                    else:
                        m.d.comb += to_start.eq(1)
                        m.next = "START"
            if dense:
                with m.State("PREP"):
                    # The lanes' taps and offsets settle (see above).
                    m.d.sync += prep.eq(prep - 1)
                    with m.If(prep == 0):
                        m.d.comb += to_start.eq(1)
                        m.next = "START"
            with m.State("START"):
                m.d.sync += reset_walker()
                m.d.comb += block0_next.eq(1)
                if not pen:
                    m.d.comb += r_last_next.eq(R == 1)
                m.d.comb += rewind.eq(1)
                m.d.comb += start_fill.eq(1)
                m.next = "FILL"
            with m.State("FILL"):
                with m.If(filling_done):
                    m.next = "FLUSH"
            with m.State("FLUSH"):
                # A bank with no data: one extra `first` step ends the channel tile's last tile.
                with m.If(~claimed.bit_select(f, 1)):
                    for b in range(2):
                        with m.If(f == b):
                            m.d.comb += full_next[b].eq(1)
                            m.d.sync += [bank_meta[b].flush.eq(1), bank_meta[b].first.eq(1),
                                         bank_meta[b].drain.eq(1)]
                    # (A fused pooling's words come `fused_pool_stages` cycles later.)
                    m.d.comb += claim.eq(1)
                    m.d.sync += [feed_empty.eq(0), settle.eq(settle_cycles - 1 + (
                        Mux(desc.pool, fused_pool_stages(cfg), 0) if fused else 0))]
                    m.next = "SETTLE"
            with m.State("SETTLE"):
                with m.If(feed_empty):
                    m.d.sync += settle.eq(settle - 1)
                    with m.If(settle == 0):
                        m.d.sync += [busy.eq(0), dmode.eq(0)]
                        m.next = "IDLE"
        one_hot(fsm, cfg.target)
        if pen:
            m.d.comb += r_last_next.eq(~fsm.ongoing("START")
                                       & Mux(go, ~r_last & r_pen, r_last))
        return m
