"""The accelerator's instruction set: opcodes and the layer descriptor, defined once.

The gateware decodes these layouts and the compiler encodes them; neither types a number the
other defines. A layer descriptor carries the shape of one layer plus a few address steps the
compiler derives (so the hardware needs no multipliers outside the array).

Memory layouts (see `describe_conv`):

* activation memory: word ``in_base + (y * W + x) * CW + cw`` holds channels
  ``cw * cols .. cw * cols + cols - 1`` of pixel ``(y, x)``; ``CW = ceil(C / cols)``; unused
  lanes hold 0. A batch of images (a convolution's ``batch``) lies one image after the other,
  ``H * W * CW`` words apart (``in_img_step``), and so do its outputs.
* a fully connected layer reads its input map as one pixel of ``H * W * CW`` words, in memory
  order (`describe_linear`): flattening is a layout, so the map may have any size.
* weight memory: for output channel tile ``t``, the words from ``w_base + t * taps * CW * cols``
  are ``k = ((ky * kw + kx) * CW + cw) * cols + lane`` in order; word ``k`` holds the weights of
  input channel ``cw * cols + lane`` at tap ``(ky, kx)`` for the ``cols`` output channels of the
  tile.
* parameter memory: words ``p_base + t * G .. p_base + t * G + G - 1`` (``G = cols /
  rq_lanes``) hold output channel tile ``t``; word ``p_base + t * G + g`` holds, per lane
  ``i < rq_lanes``, ``bias | M << 32 | s << 47`` of channel ``t * cols + g * rq_lanes + i``.
  A residual add's two operands take one word each, ``M`` and ``s`` in lane 0
  (`pack_add_params`).
* a residual add (`describe_add`) and global average pooling (`describe_gap`) read and write
  tensors in the activation layout above; an add treats its operands as flat runs of words.
"""

from collections.abc import Callable
from dataclasses import dataclass

from amaranth.hdl import signed
from amaranth.lib import crc, data, enum

from .config import AcceleratorConfig

__all__ = [
    "ACT_READ_LATENCY", "CMD_LATENCY", "FRAME_CRC", "FRAME_TIMEOUT_BITS", "IDENTIFY_FIELDS",
    "MAX_PAYLOAD", "PROTOCOL_VERSION",
    "SYNC_REPLY", "SYNC_REQUEST", "Error", "IdentifyField", "Mem", "Op", "Reply", "WRITE_TARGET",
    "identify_payload",
    "Request", "dense_cin_bits", "dense_lane_tap", "dense_layout", "dense_raster",
    "dense_supported", "dense_walk", "dense_word_tap", "drain_steps", "pad_walk",
    "describe_add", "describe_conv", "describe_dense_conv", "describe_gap", "describe_linear",
    "describe_pool", "describe_fc_rows", "fc_bank_depth", "fc_rows_supported",
    "fuse_pool", "pack_add_params", "layer_layout", "pair_pixels",
    "pair_rows", "pairs_supported", "vpair_channels", "vpairs_supported",
    "load_layout", "mem_depth", "mem_word_bytes", "pack_descriptor", "pack_params",
    "param_lane_layout", "param_layout", "word_layout",
]


class Mem(enum.Enum, shape=2):
    """On-chip memories the host (or a testbench) loads."""
    ACT = 0       #: activations: input images, layer outputs
    WEIGHT = 1    #: weight words
    PARAM = 2     #: requantization parameters (bias, M, shift per lane)
    PROGRAM = 3   #: layer descriptors (the controller's program memory)


def load_layout(cfg: AcceleratorConfig):
    """One memory write from the host: which memory, the address and the (widest) data."""
    return data.StructLayout({
        "mem": Mem,
        "addr": max(cfg.act_addr_bits, cfg.weight_addr_bits, cfg.param_addr_bits),
        "data": max(cfg.word_bits, cfg.param_bits),
    })


#: Cycles from an engine's activation memory read (address and enable) to its word: the core's
#: address register, the block RAM's own cycle, then the core's read data register
#: (`systolic.hw.core.Core`).
ACT_READ_LATENCY = 3

#: Cycles from the core taking a layer descriptor to the engine it names taking it: the core's
#: descriptor register (`systolic.hw.core.Core`). Each layer's cycle count includes them.
CMD_LATENCY = 1


class Op(enum.Enum, shape=4):
    """Layer operations the engines execute."""
    CONV = 0      #: convolution or fully connected layer, with requantization and optional ReLU
    MAXPOOL = 1   #: max pooling
    AVGPOOL = 2   #: average pooling, rounding half up
    ADD = 3       #: residual add of two tensors, each with its own multiplier and shift
    GAP = 4       #: global average pooling, rounding half up


def _signed_bits(cfg):
    # Address arithmetic in the convolution engine: wide enough for act_depth and negative
    # origins (padding) and steps.
    return cfg.act_addr_bits + 2


# ---- The host interface: framed byte streams (see docs/protocol.md) ---------------------------

SYNC_REQUEST = 0xA5     #: first byte of a host -> device frame
SYNC_REPLY = 0x5A       #: first byte of a device -> host frame
MAX_PAYLOAD = 1024      #: largest request payload in bytes (the frame buffer's size)
#: On a serial link, a frame that falls silent for this many bit times (1000 characters) is
#: abandoned (TRUNCATED), and a broken one is swallowed until the line has been quiet as long.
FRAME_TIMEOUT_BITS = 10_000
#: The frame check: CRC-16/CCITT-FALSE over the frame after its sync byte, sent high byte first.
FRAME_CRC = crc.catalog.CRC16_CCITT_FALSE


#: WRITE's first payload byte: the memory, and for activations the bytes each word takes in
#: the frame, its low lanes (``lanes``, 1 to ``min(cols, 16) - 1``; the word's other lanes
#: repeat them, lane ``l`` holding lane ``l % lanes``), or 0 for whole words. A network's
#: input with fewer channels than ``cols`` goes in that many bytes a pixel instead of
#: ``cols``; repeated, a one-channel map's pixel is in every column slice of the memory, where
#: a dense convolution's lanes read it (`describe_dense_conv`).
WRITE_TARGET = data.StructLayout({"mem": 4, "lanes": 4})


class Request(enum.Enum, shape=8):
    """Host -> device frame types."""
    WRITE = 0x01    #: mem, addr (2), count (2), count words: load a memory
    READ = 0x02     #: addr (2), count (2): read activation words back
    RUN = 0x03      #: start, count: execute program entries start .. start+count-1
    STATUS = 0x04   #: no payload: last error, program length, cycles of the last run
    STATS = 0x05    #: start, count: the cycle counter of each program entry's last run
    IDENTIFY = 0x06  #: no payload: the protocol version and the accelerator's configuration


class Reply(enum.Enum, shape=8):
    """Device -> host frame types: exactly one per request frame."""
    ACK = 0x81      #: WRITE applied
    DATA = 0x82     #: READ or STATS data
    DONE = 0x83     #: RUN finished: total cycles (4)
    STATUS = 0x84   #: last error, program length, cycles of the last run (4)
    IDENTITY = 0x85  #: IDENTIFY's answer: `IDENTIFY_FIELDS`
    ERROR = 0xFF    #: error code, request type: nothing was changed (but see BAD_DESCRIPTOR)


class Error(enum.Enum, shape=8):
    """Error codes of an ERROR reply (and of STATUS's last error, which is sticky: the last
    ERROR's code until the next one)."""
    NONE = 0
    BAD_CRC = 1         #: the frame check failed
    UNKNOWN_REQUEST = 2  #: the request type is not one of `Request`
    BAD_LENGTH = 3      #: the payload length does not match the request, or the reply's
                        #: (a READ's) would pass MAX_PAYLOAD
    TRUNCATED = 4       #: the frame stopped arriving before its end
    BAD_ADDRESS = 5     #: the access would run past the end of a memory or the program
    BAD_MEMORY = 6      #: WRITE names no memory
    BAD_DESCRIPTOR = 7  #: RUN met an entry it cannot execute (the ones before it ran)
    LINE_FAULT = 8      #: the serial line broke the frame (a framing error or a break)


#: The protocol's version: IDENTITY's first byte. Raised when a request, reply or layout
#: changes in a way an existing client would misread.
PROTOCOL_VERSION = 7


@dataclass(frozen=True)
class IdentifyField:
    """One field of the IDENTITY reply: ``size`` bytes, little-endian, unsigned.

    ``value(cfg, ops)`` is the field for configuration ``cfg`` whose engines execute the
    operations ``ops`` (`systolic.hw.controller.runnable_ops`).
    """
    name: str
    size: int
    value: Callable
    doc: str


def _op_mask(ops):
    return sum(1 << Op(op).value for op in ops)


#: The IDENTITY reply's payload, field after field: the gateware sends it as constants, the
#: host parses it (`systolic.sw.protocol.parse_identity`) and the protocol document's table
#: is generated from it.
IDENTIFY_FIELDS = (
    IdentifyField("version", 1, lambda c, o: PROTOCOL_VERSION,
                  "protocol version (`PROTOCOL_VERSION`); the fields after it are this version's"),
    IdentifyField("rows", 1, lambda c, o: c.rows, "array rows: output pixels computed at once"),
    IdentifyField("cols", 1, lambda c, o: c.cols,
                  "array columns: lanes of an activation or weight word, output channels of a "
                  "tile"),
    IdentifyField("data_bits", 1, lambda c, o: c.data_bits, "bits of a lane (int8: 8)"),
    IdentifyField("acc_bits", 1, lambda c, o: c.acc_bits, "bits of a parameter lane's `bias`"),
    IdentifyField("m_bits", 1, lambda c, o: c.m_bits, "bits of a parameter lane's `M`"),
    IdentifyField("shift_bits", 1, lambda c, o: c.shift_bits,
                  "bits of a parameter lane's shift `s`"),
    IdentifyField("act_depth", 4, lambda c, o: c.act_depth, "activation memory depth, words"),
    IdentifyField("weight_depth", 4, lambda c, o: c.weight_depth, "weight memory depth, words"),
    IdentifyField("param_words", 4, lambda c, o: c.param_words,
                  "parameter memory depth, words (`cols / rq_lanes` words a channel tile)"),
    IdentifyField("program_depth", 2, lambda c, o: c.program_depth,
                  "program memory depth, layer descriptors"),
    IdentifyField("word_bytes", 1, lambda c, o: mem_word_bytes(c, Mem.ACT),
                  "bytes of an activation or weight word in a frame"),
    IdentifyField("param_bytes", 1, lambda c, o: mem_word_bytes(c, Mem.PARAM),
                  "bytes of a parameter word in a frame"),
    IdentifyField("descriptor_bytes", 1, lambda c, o: mem_word_bytes(c, Mem.PROGRAM),
                  "bytes of a layer descriptor in a frame"),
    IdentifyField("rq_lanes", 1, lambda c, o: c.rq_lanes,
                  "requantization lanes: channels a parameter word holds"),
    IdentifyField("max_kernel", 1, lambda c, o: c.max_kernel,
                  "largest kernel height or width (sets `kernel_bits`)"),
    IdentifyField("max_dim", 2, lambda c, o: c.max_dim,
                  "largest feature map height or width (sets `dim_bits`)"),
    IdentifyField("ops", 2, lambda c, o: _op_mask(o),
                  "operations RUN executes: bit `n` set for operation `n` (see Operations)"),
    IdentifyField("max_payload", 2, lambda c, o: MAX_PAYLOAD,
                  "largest request payload, and reply payload, in bytes"),
    IdentifyField("dense_conv", 1, lambda c, o: int(c.dense_conv) | dense_raster(c) << 1,
                  "bit 0 set if a convolution descriptor's `dense` runs convolutions of few "
                  "channels dense (its `dense`, `dkh`, `dkw` and `dcin` fields exist); bit 1 "
                  "set if a dense convolution may also walk its taps in raster order "
                  "(`cin_words` words; see below)"),
    IdentifyField("fused_pool", 1, lambda c, o: int(c.fused_pool),
                  "1 if a convolution descriptor's `pool` max-pools its output 2x2 with stride 2 "
                  "(the field exists)"),
    IdentifyField("fc_rows", 1, lambda c, o: int(c.fc_rows),
                  "rows a convolution descriptor's `fc_rows` runs a fully connected layer of one "
                  "image on, row by row, each from its own bank of the weight memory (0: none; "
                  "else the field exists)"),
)


def identify_payload(cfg, ops):
    """The IDENTITY reply's payload (bytes) for ``cfg`` executing ``ops``."""
    return b"".join(f.value(cfg, ops).to_bytes(f.size, "little") for f in IDENTIFY_FIELDS)


def mem_word_bytes(cfg, mem):
    """Bytes per word of memory ``mem`` in a WRITE frame (little-endian words)."""
    bits = {Mem.ACT: cfg.word_bits, Mem.WEIGHT: cfg.word_bits, Mem.PARAM: cfg.param_bits,
            Mem.PROGRAM: layer_layout(cfg).size}[Mem(mem)]
    return -(-bits // 8)


def mem_depth(cfg, mem):
    """Depth of memory ``mem`` in words."""
    return {Mem.ACT: cfg.act_depth, Mem.WEIGHT: cfg.weight_depth, Mem.PARAM: cfg.param_words,
            Mem.PROGRAM: cfg.program_depth}[Mem(mem)]


def word_layout(cfg: AcceleratorConfig):
    """An activation or weight word: ``cfg.cols`` int8 lanes, lane 0 in the low bits."""
    return data.ArrayLayout(signed(cfg.data_bits), cfg.cols)


def layer_layout(cfg: AcceleratorConfig):
    """The layer descriptor layout for ``cfg``."""
    a = cfg.act_addr_bits
    sb = _signed_bits(cfg)
    return data.StructLayout({
        "op": Op,
        "relu": 1,
        "in_base": a,
        "out_base": a,
        "w_base": cfg.weight_addr_bits,
        "p_base": cfg.param_addr_bits,
        "in_h": cfg.dim_bits,
        "in_w": cfg.dim_bits,
        "out_h": cfg.dim_bits,
        "out_w": cfg.dim_bits,
        "kh": cfg.kernel_bits,
        "kw": cfg.kernel_bits,
        "stride": 2,
        "pad": 3,
        # CW of the input: words per input pixel (a fully connected layer's input is one
        # pixel of all the map's words, so this is as wide as an activation address)
        "cin_words": cfg.act_addr_bits + 1,
        "cout_tiles": 8,         # channel tiles of the output: words per output pixel (two
                                 # tiles a word with ``halves``)
        "batch": 8,              # images, one after the other in memory (a convolution's)
        # Derived by the compiler (describe_conv):
        "origin": signed(sb),        # address of input pixel (-pad, -pad)
        "x_step": signed(sb),        # address step to the next output pixel in a row
        "y_step": signed(sb),        # address step from the last pixel of a row to the next row
        "tap_row_step": signed(sb),  # step from tap (ky, kw-1, CW-1) to (ky+1, 0, 0), minus 1
        "w_tile_words": cfg.weight_addr_bits + 1,
        "in_img_step": cfg.act_addr_bits + 1,   # words from one image's input to the next's
        # A dense convolution (`describe_dense_conv`; only where ``cfg.dense_conv``): the
        # kernel's true height and width and the input's channels, ``kh`` and ``kw`` above
        # being the walk's.
        **({"dense": 1, "dkh": cfg.kernel_bits, "dkw": cfg.kernel_bits,
            "dcin": dense_cin_bits(cfg)} if cfg.dense_conv else {}),
        # Max-pool the output 2x2 with stride 2 on the way to memory (`fuse_pool`), a dense
        # convolution's output pixels computed two at a time (`pair_pixels`), and each of
        # its channel tiles written into one half of the output words (``halves``); only where
        # ``cfg.fused_pool``. Or its output pixels in vertical pairs (``vpairs``,
        # `pair_rows`; last, so that the fields before it keep their offsets).
        **({"pool": 1, "pairs": 1, "halves": 1, "vpairs": 1} if cfg.fused_pool else {}),
        # A fully connected layer of one image, each row of the array a channel tile of it
        # (`describe_fc_rows`; only where ``cfg.fc_rows``; last, as ``vpairs``).
        **({"fc_rows": 1} if cfg.fc_rows else {}),
    })


def dense_cin_bits(cfg):
    """Bits of a dense convolution's channel count (at most ``cols / 2``): those of ``cols``."""
    return cfg.cols.bit_length()


def param_lane_layout(cfg: AcceleratorConfig):
    """One output channel's requantization parameters: a bias, a multiplier and a shift."""
    return data.StructLayout({
        "bias": signed(cfg.acc_bits),
        "m": cfg.m_bits,
        "shift": cfg.shift_bits,
    })


def param_layout(cfg: AcceleratorConfig):
    """One parameter word: ``cfg.rq_lanes`` lanes of `param_lane_layout`."""
    return data.ArrayLayout(param_lane_layout(cfg), cfg.rq_lanes)


def pack_params(cfg, bias, m, shift):
    """Parameter words (a list of integers, ``cfg.rq_groups`` per channel tile) for
    per-channel arrays.

    Channels past the last one are padded with zero bias, ``M = 0`` and shift 1: they compute 0.
    """
    lane = param_lane_layout(cfg)
    lane_bits = lane.size
    words = []
    n = len(bias)
    for w in range(-(-n // cfg.cols) * cfg.rq_groups):
        word = 0
        for i in range(cfg.rq_lanes):
            c = w * cfg.rq_lanes + i
            b, mm, s = (int(bias[c]), int(m[c]), int(shift[c])) if c < n else (0, 0, 1)
            v = ((b & ((1 << cfg.acc_bits) - 1)) << lane["bias"].offset
                 | mm << lane["m"].offset | s << lane["shift"].offset)
            word |= v << (i * lane_bits)
        words.append(word)
    return words


# Fields holding two's complement values.
_SIGNED = ("origin", "x_step", "y_step", "tap_row_step")


def _ceil_div(a, b):
    return -(-a // b)


def describe_conv(cfg, *, cin, h, w, cout, kh, kw, stride=1, pad=0, relu=False,
                  in_base=0, out_base=0, w_base=0, p_base=0, batch=1):
    """Descriptor fields (a dict) for a convolution of ``batch`` ``(cin, h, w)`` inputs, stored
    one after the other from ``in_base``; the outputs follow each other from ``out_base``.

    A fully connected layer is a 1x1 convolution of a one-pixel input holding all the words
    of its input map (`describe_linear`).
    """
    cw = _ceil_div(cin, cfg.cols)
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (w + 2 * pad - kw) // stride + 1
    return {
        "op": Op.CONV, "relu": int(relu),
        "in_base": in_base, "out_base": out_base, "w_base": w_base, "p_base": p_base,
        "in_h": h, "in_w": w, "out_h": ho, "out_w": wo, "kh": kh, "kw": kw,
        "stride": stride, "pad": pad, "cin_words": cw, "cout_tiles": _ceil_div(cout, cfg.cols),
        "origin": in_base - (pad * w + pad) * cw,
        "x_step": stride * cw,
        "y_step": (stride * w - (wo - 1) * stride) * cw,
        "tap_row_step": (w - kw) * cw,
        "w_tile_words": kh * kw * cw * cfg.cols,
        "batch": batch, "in_img_step": h * w * cw,
    }


def dense_layout(cfg, kw, cin):
    """How a dense convolution (`describe_dense_conv`) of ``cin`` channels and kernel width
    ``kw`` packs its reduction words: ``(rows, taps)``, a word holding ``taps`` taps of each of
    ``rows`` kernel rows, ``cin`` lanes a tap. Whole rows when they fit (``kw * cin <=
    cols``: ``rows = cols // (kw * cin)``, ``taps = kw``), else ``taps = cols // cin`` taps of
    one row."""
    if kw * cin <= cfg.cols:
        return cfg.cols // (kw * cin), kw
    return 1, cfg.cols // cin


def drain_steps(cfg):
    """The fewest reduction steps (words times ``cols``) a convolution or fully connected
    layer may take a pixel tile: the requantization lanes take a tile's rows in ``rows *
    rq_groups`` cycles before the next tile's drain starts, and a row's sums, which appear
    over ``cols`` cycles (the columns' skew), must all be there at once. (Each row's sums
    must also hold until the lanes take them; where they would not, the array keeps a
    snapshot of them, `systolic.hw.array.snapshot_pes`.)"""
    return max(cfg.rows * cfg.rq_groups, cfg.cols)


def pad_walk(cfg, fields):
    """A convolution's or fully connected layer's descriptor fields (`describe_conv`,
    `describe_linear`) with as many more kernel rows walked as make its reduction at least
    `drain_steps`, so that the requantization lanes keep up (``fields`` itself when it is long
    enough). The rows past the kernel weigh 0 (their weight words are zero words: the layer's
    weights padded to ``kh`` rows); their pixels are read and weighed 0, or, outside the
    image, not read and stored as 0. The output map's size stays that of the kernel."""
    per_row = fields["kw"] * fields["cin_words"] * cfg.cols
    kh = max(fields["kh"], _ceil_div(drain_steps(cfg), per_row))
    if kh == fields["kh"]:
        return fields
    return {**fields, "kh": kh, "w_tile_words": kh * per_row}


def dense_raster(cfg):
    """Whether the convolution engine of ``cfg`` can walk a dense convolution's reduction words
    in raster order (`dense_walk`): ``cfg.dense_raster``, which the configuration allows only
    with ``dense_conv`` and three rows or more (each lane's next step is made in the two
    cycles after its last, and a block takes ``rows`` cycles)."""
    return cfg.dense_raster


def _row_walk(cfg, kh, kw, cin):
    """``(walk_h, walk_w)``: a dense convolution's words walked by rows (`dense_walk`)."""
    rows, taps = dense_layout(cfg, kw, cin)
    walk_w = _ceil_div(kw, taps)
    walk_h = max(_ceil_div(kh, rows), _ceil_div(drain_steps(cfg), walk_w * cfg.cols))
    return walk_h, walk_w


def dense_walk(cfg, kh, kw, cin):
    """``(kh, kw, cin_words)``: a dense convolution's walk of its reduction words, as its
    descriptor's fields (`describe_dense_conv`).

    By rows, ``(walk_h, walk_w, 1)``: a kernel of one-word pixels, each step in a row
    ``taps`` kernel columns right, each row ``rows`` kernel rows down (`dense_layout`). In
    raster order, ``(1, 1, n)``: word ``j`` holds taps ``j * taps`` to ``j * taps + taps -
    1`` of the kernel in raster order, each lane wrapping to the next kernel row on its own
    (where the engine can, `dense_raster`, a word holds taps of one row and they do not divide
    the kernel's width, so that it takes fewer words: a 5x5 kernel of 6 channels on 16 lanes,
    two taps a word, 13 words instead of 5 rows of 3). A kernel whose words are fewer than
    `drain_steps` asks walks more words (their weights 0, their pixels read and weighed 0),
    so that the requantization lanes keep up."""
    walk_h, walk_w = _row_walk(cfg, kh, kw, cin)
    rows, taps = dense_layout(cfg, kw, cin)
    if dense_raster(cfg) and rows == 1 and kw % taps:
        n = max(_ceil_div(kh * kw, taps), _ceil_div(drain_steps(cfg), cfg.cols))
        if n < walk_h * walk_w:
            return 1, 1, n
    return walk_h, walk_w, 1


def dense_word_tap(cfg, kh, kw, cin, word, lane):
    """``(ky, kx, c)``: the kernel tap and input channel lane ``lane`` of reduction word
    ``word`` of a dense convolution (`dense_walk`) carries; ``None`` for a lane past the
    word's taps or a tap past the kernel (those weigh 0)."""
    tap = dense_lane_tap(cfg, kw, cin, lane)
    if tap is None:
        return None
    dy, dx, c = tap
    rows, taps = dense_layout(cfg, kw, cin)
    _, walk_w, n = dense_walk(cfg, kh, kw, cin)
    if n > 1:                                   # raster order (rows == 1, dy == 0)
        ky, kx = divmod(word * taps + dx, kw)
    else:
        y, g = divmod(word, walk_w)
        ky, kx = y * rows + dy, g * taps + dx
    return (ky, kx, c) if ky < kh and kx < kw else None


def dense_lane_tap(cfg, kw, cin, lane):
    """``(dy, dx, c)``: the kernel tap lane ``lane`` of a dense convolution's reduction word
    carries, counted from the word's first tap, and its input channel; ``None`` for a lane
    past the word's taps."""
    rows, taps = dense_layout(cfg, kw, cin)
    if lane >= rows * taps * cin:
        return None
    p, c = divmod(lane, cin)
    return (*divmod(p, taps), c)


def dense_supported(cfg, *, cin, kh, kw):
    """Whether a convolution can run dense (`describe_dense_conv`) on ``cfg``: at least two
    taps a word, and fewer words than a plain walk's ``kh * kw``."""
    if not (cfg.dense_conv and 1 <= cin <= cfg.cols // 2
            and 2 <= kw <= cfg.max_kernel and kh <= cfg.max_kernel):
        return False
    walk_h, walk_w, n = dense_walk(cfg, kh, kw, cin)
    rows, taps = dense_layout(cfg, kw, cin)
    # (The descriptor's kernel height holds max_kernel; the engine's lane kernel rows count
    # to max_kernel + cols, in raster order to the last word's last tap's.)
    return (walk_h * walk_w * n < kh * kw and walk_h <= cfg.max_kernel
            and walk_h * rows <= cfg.max_kernel + cfg.cols
            and (n * taps - 1) // kw <= cfg.max_kernel + cfg.cols)


def describe_dense_conv(cfg, *, cin, h, w, cout, kh, kw, stride=1, pad=0, relu=False,
                        in_base=0, out_base=0, w_base=0, p_base=0, batch=1):
    """Descriptor fields (a dict) for a *dense* convolution of ``batch`` ``(cin, h, w)``
    inputs (``cin <= cols / 2``): its reduction packs several taps into each word, lane ``l``
    carrying channel ``c`` of tap ``(dy, dx)`` from the word's first (`dense_lane_tap`), so
    that ``kh x kw`` taps take `dense_walk` steps of ``cols`` lanes instead of ``kh * kw``.

    Each lane reads its own pixel, from its own column slice of the activation memory: the
    input map's words must hold channel ``l % cin`` in lane ``l`` (a packed WRITE of ``cin``
    lanes repeats them so, `WRITE_TARGET`; a convolution of ``cin`` output channels computes
    them so when its weights repeat). The walk is that of a ``dense_walk`` kernel over one-word
    pixels: each step in a row moves ``taps`` pixels right, each row ``rows`` rows down
    (`dense_layout`); or, in raster order, ``cin_words`` words, each lane ``taps`` taps on
    from the word before, wrapping to the next kernel row on its own. Weight words are laid
    out as for a 1x1 convolution of ``words * cols`` input channels, channel ``j * cols + l``
    holding channel ``c`` of the tap ``(ky, kx)`` lane ``l`` carries in word ``j``
    (`dense_word_tap`; 0 past the kernel).
    """
    if not dense_supported(cfg, cin=cin, kh=kh, kw=kw):
        raise ValueError(f"a {kh}x{kw} convolution of {cin} channel(s) does not run dense "
                         f"on {cfg}")
    fields = describe_conv(cfg, cin=cin, h=h, w=w, cout=cout, kh=kh, kw=kw, stride=stride,
                           pad=pad, relu=relu, in_base=in_base, out_base=out_base,
                           w_base=w_base, p_base=p_base, batch=batch)
    rows, taps = dense_layout(cfg, kw, cin)
    walk_h, walk_w, n = dense_walk(cfg, kh, kw, cin)
    # The lanes' step at the end of a row of words, minus 1 (by rows: ``rows`` rows down from
    # the row's last word; in raster order, a lane's wrap: a row down, ``kw - taps`` left).
    row_step = taps + w - kw if n > 1 else rows * w - (walk_w - 1) * taps
    fields.update(kh=walk_h, kw=walk_w, cin_words=n, dkh=kh, dkw=kw, dcin=cin, dense=1,
                  tap_row_step=row_step - 1, w_tile_words=walk_h * walk_w * n * cfg.cols)
    return fields


def fuse_pool(cfg, fields):
    """The convolution descriptor ``fields`` (`describe_conv`, `describe_dense_conv`) with its
    output max-pooled 2x2 with stride 2 on the way to memory (``cfg.fused_pool``): the map it
    writes from ``out_base`` is ``(out_h // 2, out_w // 2)`` (the last row and column of an odd
    height or width dropped), in the activation layout, image after image (with ``pairs``,
    `pair_pixels`: ``(out_h // 2, out_w)``, ``out_w`` counting pairs; with ``vpairs``,
    `pair_rows`: ``(out_h, out_w // 2)``, ``out_h`` counting pairs)."""
    if not cfg.fused_pool:
        raise ValueError(f"{cfg} has no fused pooling (fused_pool=False)")
    width = fields["out_w"] * (2 if fields.get("pairs") else 1)
    height = fields["out_h"] * (2 if fields.get("vpairs") else 1)
    if height < 2 or width < 2:
        raise ValueError(f"a {height}x{width} map has no 2x2 window")
    return {**fields, "pool": 1}


def pairs_supported(cfg, *, cin, cout, kh, kw, stride, repeat=True):
    """Whether a dense convolution (`describe_dense_conv`) can compute its output pixels two at
    a time (`pair_pixels`): stride 1 and a kernel one column wider packing into as few
    reduction words (so that a pair costs what a pixel did). With ``repeat`` (its map read by
    a dense convolution, lane ``l`` holding channel ``l % cout``) ``cout`` must divide
    ``cols / 2``, so that the halves of a word, and the lanes of each, repeat its channels;
    without, it must pay: its channels in fewer tiles of ``cols / 2`` than twice their tiles
    of ``cols`` (16 channels on 12 columns: 3 tiles of pairs, not 2 tiles of single pixels)."""
    half = cfg.cols // 2
    if not (cfg.fused_pool and cfg.cols % 2 == 0 and stride == 1 and cout >= 1
            and kw + 1 <= cfg.max_kernel
            and dense_supported(cfg, cin=cin, kh=kh, kw=kw)
            and dense_supported(cfg, cin=cin, kh=kh, kw=kw + 1)
            and _row_walk(cfg, kh, kw + 1, cin) == _row_walk(cfg, kh, kw, cin)):
        return False
    if repeat:
        return half % cout == 0
    return _ceil_div(cout, half) < 2 * _ceil_div(cout, cfg.cols)


def pair_pixels(cfg, *, cin, h, w, cout, kh, kw, pad=0, relu=False, in_base=0, out_base=0,
                w_base=0, p_base=0, batch=1, repeat=True):
    """Descriptor fields (a dict) for a dense convolution (`describe_dense_conv`) of ``cout``
    channels whose output is max-pooled 2x2 with stride 2 (`fuse_pool`), computing the output
    pixels in horizontal pairs (`pairs_supported`).

    The array computes a ``kh x (kw + 1)`` kernel: column ``j`` the pair's left pixel for
    ``j < cols / 2``, its right one above, its kernel column ``dx`` holding the real kernel's
    ``dx - j // (cols / 2)`` (0 outside it). The walk steps two pixels a pair (``out_w``
    pairs: an odd width's last column is dropped, as pooling drops it); the pooling takes each
    word's two halves as the window's two columns and puts their maximum into both halves.

    With ``repeat`` there is one channel tile, column ``j`` computing channel ``j % cout``,
    and the whole word is written: lane ``l`` holds channel ``l % cout``, what a dense
    convolution reading the map needs. Without, channel tile ``t`` computes channels
    ``t * cols / 2 + j % (cols / 2)`` (0 past ``cout``) and writes only half ``t % 2`` of word
    ``t // 2`` of each pixel (``halves``): the map is in the activation layout.
    """
    if not pairs_supported(cfg, cin=cin, cout=cout, kh=kh, kw=kw, stride=1, repeat=repeat):
        raise ValueError(f"a {kh}x{kw} convolution of {cin}->{cout} channels does not run in "
                         f"pixel pairs on {cfg}" + ("" if repeat else " that pay"))
    tiles = 1 if repeat else _ceil_div(cout, cfg.cols // 2)
    fields = describe_dense_conv(cfg, cin=cin, h=h, w=w, cout=tiles * cfg.cols, kh=kh,
                                 kw=kw + 1, pad=pad, relu=relu, in_base=in_base,
                                 out_base=out_base, w_base=w_base, p_base=p_base, batch=batch)
    wo = w + 2 * pad - kw + 1
    pairs = wo // 2
    fields.update(out_w=pairs, x_step=2, y_step=w - (pairs - 1) * 2, pairs=1,
                  halves=int(not repeat))
    return fuse_pool(cfg, fields)


def vpair_channels(cfg, cout, lanes):
    """The channels a row-paired convolution (`pair_rows`) computes in each half of its columns,
    ``s`` (``cols / 2`` of them, ``s[j] = j`` for ``j < cout``), so that the dense convolution
    reading its map finds each of its taps' ``cout`` channels once: lane ``l`` of the map
    holds channel ``s[l % (cols / 2)]``, and each group of ``cout`` lanes from lane 0 up to
    ``lanes`` (the reader's, `dense_layout`) must hold all ``cout`` channels. ``None`` if no
    ``s`` does (``cout`` past ``cols / 2``)."""
    half = cfg.cols // 2
    if not 1 <= cout <= half:
        return None
    groups = [range(g * cout, (g + 1) * cout) for g in range(min(lanes, cfg.cols) // cout)]
    s = list(range(cout)) + [None] * (half - cout)

    def fits():
        for group in groups:
            seen = [s[lane % half] for lane in group if s[lane % half] is not None]
            if len(seen) != len(set(seen)):
                return False
        return True

    def fill(j):                # the remaining entries, each tried with every channel
        if j == half:
            return True
        for c in range(cout):
            s[j] = c
            if fits() and fill(j + 1):
                return True
        s[j] = None
        return False

    return tuple(s) if fits() and fill(cout) else None


def vpairs_supported(cfg, *, cin, cout, kh, kw, stride, lanes):
    """Whether a dense convolution (`describe_dense_conv`) whose map a dense convolution
    reads (``lanes``: `vpair_channels`) can compute its output pixels in vertical pairs
    (`pair_rows`): stride 1, a kernel one row taller packing into as few reduction words,
    its channels laid out so for the reader (`vpair_channels`), and a requantizer that
    takes two cycles or more a word (``rq_groups``: the pooling's line buffer, written with a
    pair's maximum, is read for the next pair's a cycle after at the soonest)."""
    if not (cfg.fused_pool and cfg.cols % 2 == 0 and stride == 1 and cfg.rq_groups >= 2
            and kh + 1 <= cfg.max_kernel
            and dense_supported(cfg, cin=cin, kh=kh, kw=kw)
            and dense_supported(cfg, cin=cin, kh=kh + 1, kw=kw)
            and _row_walk(cfg, kh + 1, kw, cin) == _row_walk(cfg, kh, kw, cin)):
        return False
    return vpair_channels(cfg, cout, lanes) is not None


def pair_rows(cfg, *, cin, h, w, cout, kh, kw, lanes, pad=0, relu=False, in_base=0,
              out_base=0, w_base=0, p_base=0, batch=1):
    """Descriptor fields (a dict) for a dense convolution (`describe_dense_conv`) of ``cout``
    channels whose output is max-pooled 2x2 with stride 2 (`fuse_pool`) and read by a dense
    convolution of ``lanes`` lanes, computing its output pixels in vertical pairs
    (`vpairs_supported`).

    The array computes a ``(kh + 1) x kw`` kernel: column ``j`` the pair's upper pixel for
    ``j < cols / 2``, its lower one above, its kernel row ``dy`` holding the real kernel's
    ``dy - j // (cols / 2)`` (0 outside it), column ``j`` computing channel ``s[j % (cols /
    2)]`` (`vpair_channels`). The walk steps two input rows from a row of pairs to the next
    (``out_h`` pairs: an odd height's last row is dropped, as pooling drops it); the pooling
    takes each word's two halves as the window's two rows and puts their maximum into both
    halves, then the maximum of two pixels side by side, and writes the whole word: lane
    ``l`` holds channel ``s[l % (cols / 2)]``.
    """
    if not vpairs_supported(cfg, cin=cin, cout=cout, kh=kh, kw=kw, stride=1, lanes=lanes):
        raise ValueError(f"a {kh}x{kw} convolution of {cin}->{cout} channels does not run in "
                         f"row pairs on {cfg}")
    fields = describe_dense_conv(cfg, cin=cin, h=h, w=w, cout=cfg.cols, kh=kh + 1, kw=kw,
                                 pad=pad, relu=relu, in_base=in_base, out_base=out_base,
                                 w_base=w_base, p_base=p_base, batch=batch)
    ho = h + 2 * pad - kh + 1
    wo = fields["out_w"]
    fields.update(out_h=ho // 2, y_step=2 * w - (wo - 1), vpairs=1, halves=0)
    return fuse_pool(cfg, fields)


def describe_linear(cfg, *, in_words, cout, relu=False, in_base=0, out_base=0, w_base=0,
                    p_base=0, batch=1):
    """Descriptor fields (a dict) for a fully connected layer whose input is the ``in_words``
    activation words of a map (any shape: flattening is a layout, the words in memory order),
    for each of ``batch`` images."""
    return describe_conv(cfg, cin=in_words * cfg.cols, h=1, w=1, cout=cout, kh=1, kw=1,
                         relu=relu, in_base=in_base, out_base=out_base, w_base=w_base,
                         p_base=p_base, batch=batch)


def fc_bank_depth(cfg):
    """Words of each of the weight memory's ``cfg.fc_rows`` banks: bank ``r`` holds addresses
    ``r * depth`` to ``(r + 1) * depth - 1`` and feeds row ``r`` of the array in a row-by-row
    fully connected layer (`describe_fc_rows`)."""
    return cfg.weight_depth // cfg.fc_rows


def fc_rows_supported(cfg, *, in_words, cout, batch):
    """Whether a fully connected layer of ``in_words`` input words and ``cout`` outputs can run
    row by row (`describe_fc_rows`) on ``cfg``, and takes fewer steps so: one image, at least
    two channel tiles (in runs of up to ``fc_rows``), and its weights (``in_words + 2`` words
    of ``cols`` steps a bank) within a bank."""
    return (cfg.fc_rows >= 2 and batch == 1 and _ceil_div(cout, cfg.cols) >= 2
            and (in_words + 2) * cfg.cols <= fc_bank_depth(cfg))


def describe_fc_rows(cfg, *, in_words, tiles, relu=False, in_base=0, out_base=0, w_base=0,
                     p_base=0):
    """Descriptor fields (a dict) for ``tiles`` channel tiles (``tiles <= cfg.fc_rows``) of a
    fully connected layer of one image, run *row by row* (``fc_rows``; `fc_rows_supported`):
    row ``r`` of the array computes tile ``r``, each from its own weight bank, so the tiles
    take ``(in_words + 1) * cols`` steps where `describe_linear`'s take ``tiles * in_words *
    cols``. A layer of more tiles takes a descriptor for each ``fc_rows`` of them, each from
    its own tile's output word and parameters.

    The walk is a 1x1 convolution of a ``1 x tiles`` map whose pixels are all the input
    (``x_step`` 0), output pixel ``r`` being word ``r`` from ``out_base``: ``cout_tiles`` 1,
    parameters of tile ``r`` from ``p_base + r * rq_groups``, where the drain of row ``r``
    reads them. Its reduction is one word longer than the input (``cin_words = in_words +
    1``; the extra word, read past the input, weighs 0): bank ``r >= 1`` delivers lane ``c``'s
    weights ``c`` steps late (`systolic.hw.layout.fc_rows_weight_words`), and the last lane
    needs ``cols - 1`` steps more. ``w_base`` is the tiles' first word in bank 0 (``w_base +
    (in_words + 2) * cols <= fc_bank_depth``); bank ``r`` holds tile ``r``'s words from
    ``w_base + r * fc_bank_depth``."""
    if not 1 <= tiles <= cfg.fc_rows:
        raise ValueError(f"a row-by-row run takes 1 to {cfg.fc_rows} channel tiles, not {tiles}")
    steps = in_words + 1
    return {
        "op": Op.CONV, "relu": int(relu),
        "in_base": in_base, "out_base": out_base, "w_base": w_base, "p_base": p_base,
        "in_h": 1, "in_w": tiles, "out_h": 1, "out_w": tiles, "kh": 1, "kw": 1,
        "stride": 1, "pad": 0, "cin_words": steps, "cout_tiles": 1,
        "origin": in_base, "x_step": 0, "y_step": 0, "tap_row_step": 0,
        "w_tile_words": steps * cfg.cols, "batch": 1, "in_img_step": in_words,
        "fc_rows": 1,
    }


def describe_pool(cfg, *, channels, h, w, kernel, stride, avg=False, in_base=0, out_base=0):
    """Descriptor fields (a dict) for max or average pooling of a ``(channels, h, w)`` input."""
    cw = _ceil_div(channels, cfg.cols)
    return {
        "op": Op.AVGPOOL if avg else Op.MAXPOOL, "relu": 0,
        "in_base": in_base, "out_base": out_base, "w_base": 0, "p_base": 0,
        "in_h": h, "in_w": w, "out_h": (h - kernel) // stride + 1,
        "out_w": (w - kernel) // stride + 1, "kh": kernel, "kw": kernel,
        "stride": stride, "pad": 0, "cin_words": cw, "cout_tiles": cw,
        "origin": 0, "x_step": 0, "y_step": 0, "tap_row_step": 0, "w_tile_words": 0,
        "batch": 1, "in_img_step": 0,
    }


def describe_add(cfg, *, words, relu=False, in_base=0, skip_base=0, out_base=0, p_base=0):
    """Descriptor fields (a dict) for a residual add of two tensors of ``words`` activation
    words each (a batch's images one after the other, so any shape): the first operand from
    ``in_base``, the second from ``skip_base`` (in ``origin``), the sum to ``out_base``. Lane 0
    of parameter words ``p_base`` and ``p_base + 1`` holds each operand's ``M`` and ``s``
    (`pack_add_params`)."""
    return {
        "op": Op.ADD, "relu": int(relu),
        "in_base": in_base, "out_base": out_base, "w_base": 0, "p_base": p_base,
        "in_h": 1, "in_w": 1, "out_h": 1, "out_w": 1, "kh": 1, "kw": 1, "stride": 1, "pad": 0,
        "cin_words": words, "cout_tiles": 0,
        "origin": skip_base, "x_step": 0, "y_step": 0, "tap_row_step": 0, "w_tile_words": 0,
        "batch": 1, "in_img_step": 0,
    }


def pack_add_params(cfg, m, shift):
    """The two parameter words of a residual add (`describe_add`): operand ``j``'s multiplier
    ``m[j]`` and shift ``shift[j]`` in lane 0 of word ``j``."""
    return [pack_params(cfg, [0], [mj], [sj])[0] for mj, sj in zip(m, shift, strict=True)]


def describe_gap(cfg, *, channels, h, w, batch=1, in_base=0, out_base=0):
    """Descriptor fields (a dict) for global average pooling of ``batch`` ``(channels, h, w)``
    maps stored one after the other from ``in_base``; the ``(channels, 1, 1)`` outputs follow
    each other from ``out_base``."""
    cw = _ceil_div(channels, cfg.cols)
    return {
        "op": Op.GAP, "relu": 0,
        "in_base": in_base, "out_base": out_base, "w_base": 0, "p_base": 0,
        "in_h": h, "in_w": w, "out_h": 1, "out_w": 1, "kh": 1, "kw": 1, "stride": 1, "pad": 0,
        "cin_words": cw, "cout_tiles": cw,
        "origin": 0, "x_step": 0, "y_step": 0, "tap_row_step": 0, "w_tile_words": 0,
        "batch": batch, "in_img_step": h * w * cw,
    }


def pack_descriptor(cfg, fields):
    """The descriptor as an integer, for a testbench or the host driver to send."""
    layout = layer_layout(cfg)
    value = 0
    for name, field in layout:
        v = fields.get(name, 0)
        if isinstance(v, Op):
            v = v.value
        width = field.width
        if name in _SIGNED:
            if not -(1 << (width - 1)) <= v < (1 << (width - 1)):
                raise ValueError(f"descriptor field {name} = {v} does not fit {width} signed bits")
            v &= (1 << width) - 1
        elif not 0 <= v < (1 << width):
            raise ValueError(f"descriptor field {name} = {v} does not fit {width} bits")
        value |= v << field.offset
    return value
