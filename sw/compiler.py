"""The compiler: a `QNet` to a `Program` for one accelerator configuration.

A program is everything the host sends to the core (`systolic.hw.core.Core`) to run a network:
the weight and parameter memory images, one packed layer descriptor per layer, where the input
image goes and where the logits come back from. The formats are those of `systolic.hw.isa` and
`systolic.hw.layout`; the compiler only chooses addresses and checks that everything fits.

A program runs a *batch* of images at once: each convolution walks the output pixels of all
of them as one sequence (so a fully connected layer puts one image on each row of the array,
and its weights stream once per batch), each pooling layer takes the images stacked into one
tall map when its windows do not straddle them (else one command an image, or as many as the
map height allows). Activations ping-pong between two regions of activation memory: the
input batch (tensor 0) and every even-numbered layer output live in region A at address 0,
the odd ones in region B right after the largest tensor of region A; a tensor's images lie
one after the other. A flatten layer costs nothing: the next fully connected layer reads the
map's words in memory order, as one pixel (`systolic.hw.isa.describe_linear`).

A network with residual adds or branches (a `Branch` starts from an earlier tensor) has
tensors that live across several layers, so its activation memory is allocated instead: each
tensor (the input batch, each layer's output) from its producer to its last reader, first fit
in address order, freed after its last reader ran (a layer's output never overlaps its
inputs). A branch and a flatten name an existing tensor and cost nothing. `Program.act_words`
is the peak either way.

With ``dense_input``, a first convolution with fewer input channels than the array has
columns is turned into a 1x1 convolution of its *im2col* input: the host sends, for each
output pixel, the ``kh * kw * cin`` values its kernel covers (padding included), so that
every reduction step of the array carries a real product instead of one lane in ``cols``.
The input then takes about ``kh * kw / stride^2`` times the bytes on the link: worth it
where compute, not the link, is the bottleneck (simulation, a fast link), not on a UART.

Where the configuration has ``fused_pool``, a 2x2 max pooling with stride 2 right after a
convolution in a sequential network compiles into the convolution (`systolic.hw.isa.fuse_pool`):
one hardware layer writing the pooled map, named after both ("layer 0 (conv 1->6 5x5) + 1
(maxpool)"; `CompiledLayer.first`). A dense convolution so pooled computes its output
pixels in horizontal pairs on columns it would leave idle (`systolic.hw.isa.pair_pixels`)
where that pays: when a dense convolution reads its output and its channels divide half the
columns (lenet5's conv 1->6 on 12 columns), or when its channels fill fewer tiles of half the
columns than twice their tiles of all of them (lenet5's conv 6->16: three tiles of pairs, not
two of single pixels), each tile then writing half of each output word. Where horizontal pairs
do not pack but vertical ones do (a kernel one row taller in as few reduction words: lenet5's
conv 1->6 5x5 on 16 columns, 6x5 in two words of three rows), and a dense convolution reads
its output, it computes them in vertical pairs (`systolic.hw.isa.pair_rows`), its channels
laid out in each half of the word for the reader (`systolic.hw.isa.vpair_channels`), whose
weights follow that layout.
"""

from dataclasses import dataclass, field

import numpy as np

from ..hw import layout
from ..hw.config import AcceleratorConfig
from ..hw.isa import (
    Mem,
    dense_layout,
    dense_supported,
    dense_walk,
    dense_word_tap,
    describe_add,
    describe_conv,
    describe_dense_conv,
    describe_fc_rows,
    describe_gap,
    describe_linear,
    describe_pool,
    drain_steps,
    fc_bank_depth,
    fc_rows_supported,
    fuse_pool,
    pack_add_params,
    pack_descriptor,
    pad_walk,
    pair_pixels,
    pair_rows,
    pairs_supported,
    vpair_channels,
    vpairs_supported,
)
from ..hw.pool import pool_line_words
from .errors import SystolicError
from .qnet import Add, Branch, Conv, Flatten, GlobalAvgPool, Linear, Pool, QNet

__all__ = ["CompiledLayer", "FitError", "Program", "compile_network", "im2col", "largest_batch"]

_FIELD_MAX = 255            # cout_tiles is an 8-bit descriptor field, and a map's channel words
MAX_BATCH = 255             #: the descriptor's batch field
_BIGGER = "a bigger preset (--preset big)"


class FitError(SystolicError, ValueError):
    """A network that does not fit the accelerator; the message names the layer and the fix."""


@dataclass(eq=False)
class CompiledLayer:
    """One hardware layer of a `Program`: one or more program entries.

    Members
    -------
    index : int
        Index of the layer in ``QNet.layers``.
    name : str
        ``"layer 3 (conv 16->32 3x3)"``: for reports and error messages.
    kind : str
        ``"conv"``, ``"linear"``, ``"maxpool"``, ``"avgpool"``, ``"add"`` or ``"gap"``.
    entries : list of dict
        Descriptor fields (`systolic.hw.isa.describe_conv` / `describe_pool`) of each program
        entry the layer takes: one for a convolution or fully connected layer, one per group
        of stacked images for pooling.
    commands : list of int
        The packed descriptors of `entries`.
    in_shape, out_shape : tuple of int
        ``(C, H, W)`` of one image's input and output maps (a linear layer's output is
        ``(Co, 1, 1)``; a densely packed first convolution's input is its im2col map).
    macs : int
        Multiply-accumulates of the layer, per image (0 for pooling).
    out_words : int
        Activation words of one image's output.
    out_base : int
        Activation address of the first image's output.
    first : int or None
        For a convolution that pools its output on the way to memory
        (`systolic.hw.isa.fuse_pool`), the convolution's index in ``QNet.layers`` (``index``
        is the pooling layer's, whose output the layer writes); else ``None``.
    """

    index: int
    name: str
    kind: str
    entries: list
    commands: list
    in_shape: tuple
    out_shape: tuple
    macs: int
    out_words: int
    out_base: int
    first: int | None = None

    @property
    def fields(self):
        """The first entry's descriptor fields."""
        return self.entries[0]

    @property
    def command(self):
        """The first entry's packed descriptor."""
        return self.commands[0]


@dataclass(eq=False)
class Program:
    """A network compiled for one `AcceleratorConfig` and a batch size.

    Members
    -------
    cfg : AcceleratorConfig
    layers : list of CompiledLayer
        The hardware layers, in execution order (flatten layers compile to nothing).
    weights, params : list of int
        Weight and parameter memory images, from address 0 (the same for every batch size).
    input_shape : tuple of int
        ``(C, H, W)`` of an input image.
    input_base : int
        Where the batch's input goes: image ``b`` from ``input_base + b * image_words``.
    output_base : int
        Activation address of the first image's logits; image ``b``'s follow
        ``b * output_words`` later.
    classes : int
        Number of logits.
    act_words : int
        Activation memory words the program uses: the peak, all its live tensors at once.
    w_bases : list of int or None
        Weight memory base of each layer (``None`` for pooling).
    w_words : list of int or None
        Weight memory words each layer's weights take (``None`` for pooling).
    weight_spans : list of (int, int)
        The ``[start, end)`` ranges of `weights` that hold layers' words (the rest, between
        the banks' stripes of row-by-row layers, is never read and not written to the
        device).
    batch : int
        Images the program runs at once.
    dense : tuple or None
        ``(kh, kw, stride, pad)`` of the first convolution when its input goes densely
        packed (`im2col`), else ``None``.
    dense_conv : bool
        Whether the first layer runs as a dense convolution on chip
        (`systolic.hw.isa.describe_dense_conv`): its input is stored with channel ``l % C``
        in lane ``l`` (`input_words`; a packed WRITE repeats the channels so). Later layers
        may run dense too (their descriptor's ``dense``).
    """

    cfg: AcceleratorConfig
    layers: list
    weights: list
    params: list
    input_shape: tuple
    input_base: int
    output_base: int
    classes: int
    act_words: int
    w_bases: list = field(default_factory=list)
    batch: int = 1
    dense: tuple | None = None
    source: object = field(default=None, repr=False)
    dense_conv: bool = False
    w_words: list = field(default_factory=list)
    weight_spans: list = None

    def __post_init__(self):
        if self.weight_spans is None:
            self.weight_spans = [(0, len(self.weights))]

    def loads(self):
        """The network's memory writes ``(Mem, addr, data)``: weights (those in
        `weight_spans`), then parameters."""
        return ([(Mem.WEIGHT, a, self.weights[a]) for lo, hi in self.weight_spans
                 for a in range(lo, hi)]
                + [(Mem.PARAM, a, v) for a, v in enumerate(self.params)])

    @property
    def commands(self):
        """The program memory image: every layer's entries in order."""
        return [c for lay in self.layers for c in lay.commands]

    def entry_range(self, i):
        """``(start, count)``: the program entries of hardware layer ``i``."""
        start = sum(len(lay.commands) for lay in self.layers[:i])
        return start, len(self.layers[i].commands)

    def with_batch(self, batch):
        """This network compiled for another batch size (same weights and parameters)."""
        if batch == self.batch:
            return self
        qnet, dense, dense_conv, fc_rows = self.source
        return compile_network(qnet, self.cfg, batch=batch, dense_input=dense,
                               dense_conv=dense_conv, fc_rows=fc_rows)

    def _check_image(self, image):
        image = np.asarray(image)
        if image.dtype != np.int8 or image.shape != tuple(self.input_shape):
            raise SystolicError(f"image must be int8 {tuple(self.input_shape)}, not "
                                f"{image.dtype} {image.shape}")
        return image

    @property
    def input_map(self):
        """``(C, H, W)`` of the input as stored: the image, or its im2col map when dense."""
        return self.layers[0].in_shape

    @property
    def image_words(self):
        """Activation words of one image's input."""
        return _words(self.cfg.cols, self.input_map)

    def input_words(self, image):
        """Activation words of one int8 ``(C, H, W)`` image, to be written from `input_base`
        (image ``b`` of a batch: ``b * image_words`` further).

        Raises
        ------
        SystolicError
            When the image is not int8 of the network's input shape.
        """
        image = self._check_image(image)
        if self.dense is not None:
            image = im2col(image, *self.dense)
        if self.dense_conv:         # channel l % C in lane l
            image = image[np.arange(self.cfg.cols) % image.shape[0]]
        return layout.pack_activations(self.cfg, image)

    @property
    def input_lanes(self):
        """Bytes a word of the input takes in a WRITE frame (`hw.isa.WRITE_TARGET`): its
        channels, when fewer than ``cols`` (the other lanes are zero); else 0, whole words."""
        return _input_lanes(self.cfg, self.input_map[0])

    @property
    def output_words(self):
        """Activation words holding one image's logits."""
        return -(-self.classes // self.cfg.cols)

    def decode_output(self, words):
        """The int8 logits ``(classes,)`` from the `output_words` words read at `output_base`."""
        return self.decode_layer(len(self.layers) - 1, words).reshape(self.classes)

    def decode_layer(self, i, words):
        """The int8 ``(C, H, W)`` output of hardware layer ``i`` for one image from its
        words."""
        c, h, w = self.layers[i].out_shape
        if len(words) != _words(self.cfg.cols, (c, h, w)):
            raise SystolicError(f"{self.layers[i].name}: output must be "
                                f"{_words(self.cfg.cols, (c, h, w))} words, not {len(words)}")
        return layout.unpack_activations(self.cfg, words, c, h, w)

    @property
    def macs(self):
        """Multiply-accumulates per image."""
        return sum(lay.macs for lay in self.layers)


def im2col(x, kh, kw, stride, pad):
    """The im2col map of an int8 ``(C, H, W)`` image for a ``kh x kw`` convolution: channel
    ``(ky * kw + kx) * C + c`` of output pixel ``(oy, ox)`` is input channel ``c`` at
    ``(oy * stride + ky - pad, ox * stride + kx - pad)`` (0 outside the image)."""
    c, h, w = x.shape
    xp = np.zeros((c, h + 2 * pad, w + 2 * pad), np.int8)
    xp[:, pad:pad + h, pad:pad + w] = x
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    cols = [xp[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
            for ky in range(kh) for kx in range(kw)]
    return np.concatenate(cols, axis=0)


def _input_lanes(cfg, channels):
    """Bytes a pixel of a ``channels``-channel input takes in a packed WRITE, or 0 for whole
    words (`hw.isa.WRITE_TARGET`: ``lanes`` is below ``min(cols, 16)``)."""
    return channels if channels < min(cfg.cols, 16) else 0


def _words(cols, shape):
    c, h, w = shape
    return h * w * -(-c // cols)


def _layer_name(i, layer):
    if isinstance(layer, Conv):
        co, ci, kh, kw = layer.w.shape
        return f"layer {i} (conv {ci}->{co} {kh}x{kw})"
    if isinstance(layer, Linear):
        return f"layer {i} (linear {layer.w.shape[1]}->{layer.w.shape[0]})"
    if isinstance(layer, Pool):
        return f"layer {i} ({layer.kind}pool {layer.kernel}x{layer.kernel} /{layer.stride})"
    if isinstance(layer, Add):
        return f"layer {i} (add {'input' if layer.skip == -1 else f'layer {layer.skip}'})"
    if isinstance(layer, GlobalAvgPool):
        return f"layer {i} (global avgpool)"
    return f"layer {i} ({type(layer).__name__.lower()})"


def _check_dims(cfg, name, shape, what):
    c, h, w = shape
    if max(h, w) > cfg.max_dim:
        raise FitError(f"{name}: {what} map {h}x{w} must be at most max_dim {cfg.max_dim} "
                       f"wide and high, not {max(h, w)}; downsample the input or use a "
                       "configuration with a larger max_dim")
    words = -(-c // cfg.cols)
    if words > _FIELD_MAX:
        raise FitError(f"{name}: {what} channels must be at most {_FIELD_MAX * cfg.cols} "
                       f"({_FIELD_MAX} words of {cfg.cols}), not {c}; use fewer channels or "
                       f"{_BIGGER}")


def _check_kernel(cfg, name, kh, kw):
    if max(kh, kw) > cfg.max_kernel:
        raise FitError(f"{name}: kernel size must be at most max_kernel {cfg.max_kernel}, not "
                       f"{kh}x{kw}; use a smaller kernel (or two stacked ones)")


def _dense_first(cfg, layer, shape):
    """Whether the first layer's input goes densely packed: a convolution with fewer input
    channels than columns, whose im2col map takes fewer reduction steps."""
    if not isinstance(layer, Conv):
        return False
    co, ci, kh, kw = layer.w.shape
    k = ci * kh * kw
    return ci < cfg.cols and -(-k // cfg.cols) < kh * kw * -(-ci // cfg.cols)


def _is_graph(qnet):
    """Whether a network has tensors read by more than the next layer (adds, branches)."""
    return any(isinstance(layer, Add | Branch) for layer in qnet.layers)


def _dense_plan(cfg, qnet, plan, host_dense, input_shared):
    """The convolutions that run dense on chip (`systolic.hw.isa.describe_dense_conv`), and
    those that repeat their output channels across the word for one (a set of plan indices,
    and a dict of plan indices: the producer's, its reader's).

    A dense convolution needs channel ``l % C`` of its input in lane ``l``: the network's input
    has it when written packed (fewer channels than a word, and read by nothing else); a map
    has it when its producer, a convolution of ``C <= cols / 2`` channels (one tile) reached
    through pooling layers only, computes every channel ``cols / C`` times over, or, computing
    its pixels in vertical pairs, in the layout `systolic.hw.isa.vpair_channels` gives, which
    the reader's weights then follow. (Only in sequential networks, past the first layer:
    there a layer's one reader is the next.)
    """
    chip, repeat = set(), {}
    for n, (_, layer, _in_shape, _, _) in enumerate(plan):
        if not isinstance(layer, Conv):
            continue
        _, ci, kh, kw = layer.w.shape
        if not dense_supported(cfg, cin=ci, kh=kh, kw=kw):
            continue
        p = n - 1
        while p >= 0 and isinstance(plan[p][1], Pool):
            p -= 1
        if p < 0:
            if not (host_dense or input_shared or _is_graph(qnet)
                    and n > 0) and _input_lanes(cfg, ci):      # written packed, so repeated
                chip.add(n)
        elif not _is_graph(qnet) and isinstance(plan[p][1], Conv):
            chip.add(n)
            repeat[p] = n
    return chip, repeat


def _fusable(cfg, qnet, plan, fused, layer):
    """Whether pooling ``layer`` runs fused into the convolution the plan ends with
    (`systolic.hw.isa.fuse_pool`): 2x2 max pooling with stride 2 of a convolution's output
    that nothing else reads (a sequential network), where ``cfg.fused_pool``."""
    return (cfg.fused_pool and isinstance(layer, Pool) and layer.kind == "max"
            and layer.kernel == 2 and layer.stride == 2 and not _is_graph(qnet)
            and bool(plan) and isinstance(plan[-1][1], Conv) and len(plan) - 1 not in fused)


def _plan(qnet, cfg, dense_input, dense_conv=True):
    """Pass 1: ``[(index, layer, in_shape, out_shape, srcs)]`` of the hardware layers, the
    dense packing of the first layer's input (or ``None``), the plan indices of the
    convolutions that run dense on chip and of those that repeat their channels for one
    (`_dense_plan`), and ``{plan index: the convolution's index}`` of the convolutions that
    pool their output (`_fusable`; their entry's ``index`` and ``out_shape`` are the pooling
    layer's). ``srcs`` are the tensors the layer reads (0: the input; hardware layer ``n``'s
    output is tensor ``n + 1``), its main input first."""
    shape = tuple(qnet.input_shape)
    plan, dense, fused = [], None, {}
    tensor_of, shape_of = {-1: 0}, {0: shape}      # qnet index -> tensor; tensor -> shape
    cur = 0
    # The input goes densely packed only when the first layer is its one reader.
    input_shared = any(isinstance(lay, Add) and lay.skip == -1
                       or isinstance(lay, Branch) and lay.src == -1 for lay in qnet.layers)
    for i, layer in enumerate(qnet.layers):
        name = _layer_name(i, layer)
        srcs = [cur]
        if isinstance(layer, Flatten):
            tensor_of[i] = cur
            continue                        # the map keeps its (C, H, W) layout in memory
        if isinstance(layer, Branch):
            cur = tensor_of[layer.src]
            shape = shape_of[cur]
            tensor_of[i] = cur
            continue                        # the layers after it read an existing tensor
        if isinstance(layer, Conv):
            out = layer.out_shape(shape)
        elif isinstance(layer, Linear):
            out = (layer.w.shape[0], 1, 1)
            k = int(np.prod(shape))
            if k != layer.w.shape[1]:
                raise FitError(f"{name}: input must have {layer.w.shape[1]} values, not {k}")
        elif isinstance(layer, Pool):
            if not (cfg.pool or _fusable(cfg, qnet, plan, fused, layer)):
                raise FitError(f"{name}: this pooling needs the pooling engine (only a 2x2 "
                               "max pooling with stride 2 right after a convolution runs "
                               "fused into it); use a configuration with pool=True (--pool)")
            if layer.kind == "avg" and not cfg.pool_avg:
                raise FitError(f"{name}: this configuration's pooling engine only takes the "
                               "maximum (pool_avg=False); use max pooling in the model or a "
                               "configuration with pool_avg=True (the default, wide and big "
                               "presets; --pool-avg)")
            out = layer.out_shape(shape)
        elif isinstance(layer, Add | GlobalAvgPool):
            if not cfg.eltwise:
                raise FitError(f"{name}: residual adds and global average pooling need the "
                               "element-wise engines; use a configuration with eltwise=True "
                               "(the default, wide and big presets; --eltwise)")
            out = layer.out_shape(shape)
            if isinstance(layer, Add):
                srcs.append(tensor_of[layer.skip])
        else:
            raise FitError(f"{name}: layer type must be Conv, Linear, Pool, GlobalAvgPool, Add, "
                           f"Branch or Flatten, not {type(layer).__name__}")
        in_shape = shape
        if not plan and dense_input and not input_shared and _dense_first(cfg, layer, shape):
            co, ci, kh, kw = layer.w.shape
            dense = (kh, kw, layer.stride, layer.pad)
            in_shape = (ci * kh * kw, out[1], out[2])
            shape_of[0] = in_shape
        if _fusable(cfg, qnet, plan, fused, layer):
            # The convolution before pools its output on the way to memory: one layer.
            j, conv, conv_in, _, conv_srcs = plan[-1]
            plan[-1] = (i, conv, conv_in, out, conv_srcs)
            fused[len(plan) - 1] = j
        else:
            plan.append((i, layer, in_shape, out, srcs))
        cur = len(plan)
        tensor_of[i], shape_of[cur] = cur, out
        shape = out
    chip, repeat = set(), {}
    if dense_conv and cfg.dense_conv:
        chip, repeat = _dense_plan(cfg, qnet, plan, dense is not None, input_shared)
    return plan, dense, chip, repeat, fused


def _tensor_words(cfg, plan):
    """Words of one image of each tensor: the input (as stored), then each layer's output."""
    return [_words(cfg.cols, plan[0][2])] + [_words(cfg.cols, p[3]) for p in plan]


def _allocate(cfg, qnet, plan, batch):
    """Activation bases of every tensor for ``batch`` images, and the words used (the peak).

    A `Sequential` network ping-pongs (tensor 0 and even layers' outputs at 0, odd ones after
    the largest of those); a graph's tensors are allocated first fit with liveness.
    """
    sizes = [batch * w for w in _tensor_words(cfg, plan)]
    if not _is_graph(qnet):
        size_a, size_b = max(sizes[0::2]), max(sizes[1::2] or [0])
        return [0 if t % 2 == 0 else size_a for t in range(len(sizes))], size_a + size_b
    last = {t: n for n, p in enumerate(plan) for t in p[4]}
    last[len(plan)] = len(plan)                      # the logits stay
    bases, live, peak = [0], {0: (0, sizes[0])}, sizes[0]
    for n in range(len(plan)):
        for t in [t for t in live if last.get(t, -1) < n]:
            del live[t]
        at = 0
        for lo, hi in sorted(live.values()):
            if at + sizes[n + 1] <= lo:
                break
            at = max(at, hi)
        live[n + 1] = (at, at + sizes[n + 1])
        bases.append(at)
        peak = max(peak, at + sizes[n + 1])
    return bases, peak


def largest_batch(qnet, cfg, *, dense_input=False, dense_conv=True):
    """The largest batch of ``qnet`` that fits ``cfg``'s activation and program memories
    (at most `MAX_BATCH`); 0 when not even one image fits."""
    plan, *_ = _plan(qnet, cfg, dense_input, dense_conv)
    batch = min(MAX_BATCH, cfg.act_depth // _allocate(cfg, qnet, plan, 1)[1])
    while batch > 0 and _entries(cfg, plan, batch) > cfg.program_depth:
        batch -= 1
    return batch


def _pool_groups(cfg, layer, in_shape, batch):
    """Images per pooling command: all the batch stacked into one tall map when the windows
    tile each image's rows exactly (``h % stride == 0`` and ``kernel <= stride``), as many as
    ``max_dim`` rows allow; else one image a command."""
    h = in_shape[1]
    if h % layer.stride or layer.kernel > layer.stride:
        return [1] * batch
    per = max(1, cfg.max_dim // h)
    return [min(per, batch - b) for b in range(0, batch, per)]


def _entries(cfg, plan, batch):
    return sum(len(_pool_groups(cfg, layer, shape, batch)) if isinstance(layer, Pool) else 1
               for _, layer, shape, _, _ in plan)


class _WeightsFull(FitError):
    """The weights do not fit once the fully connected layers' stripes are in."""


def compile_network(qnet: QNet, cfg: AcceleratorConfig, *, batch=1,
                    dense_input=False, dense_conv=True, fc_rows=True) -> Program:
    """Compile ``qnet`` for the accelerator ``cfg``.

    Parameters
    ----------
    qnet : QNet
        A network that passes ``qnet.check()``.
    cfg : AcceleratorConfig
    batch : int
        Images run at once (1 to `MAX_BATCH`; `largest_batch` tells what fits).
    dense_input : bool
        Send a first convolution with few input channels its im2col input (see the module's
        description): fewer cycles, more bytes on the link.
    dense_conv : bool
        Run convolutions of few input channels as dense convolutions on chip where
        ``cfg.dense_conv`` allows it (`systolic.hw.isa.describe_dense_conv`, `_dense_plan`;
        the first one not with ``dense_input``): a first layer as few cycles as with
        ``dense_input``, without the bytes. On by default.
    fc_rows : bool
        Where ``cfg.fc_rows`` allows it and the batch is one image, run each fully connected
        layer of two or more channel tiles row by row (`systolic.hw.isa.describe_fc_rows`):
        ``fc_rows`` times the weights a cycle. Its weights are then a stripe of its channel
        tiles, tile ``t`` in bank ``t % fc_rows`` of the weight memory, skewed
        (`systolic.hw.layout.fc_rows_weight_words`). A program of a larger batch lays its
        weights out as ever, and so do its smaller batches (`Program.with_batch`): every
        batch size of a program shares one weight image. Where the other layers' weights
        would not fit beside the stripes, the network compiles without them. On by default.

    Returns
    -------
    Program

    Raises
    ------
    FitError
        When a layer is not supported or something does not fit the configuration: kernel
        size, map size, channel count, pooling line buffer, activation, weight or parameter
        memory, the batch. The message names the layer and what to change.
    """
    qnet.check()
    if not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise FitError(f"batch must be an integer from 1 to {MAX_BATCH}, not {batch!r}")
    if fc_rows and cfg.fc_rows and batch == 1:
        try:
            return _compile(qnet, cfg, batch, dense_input, dense_conv, True)
        except _WeightsFull:
            pass
    return _compile(qnet, cfg, batch, dense_input, dense_conv, False)


def _fc_stripes(cfg, plan):
    """``{plan index: [(first tile, tiles, offset), ...]}``: where each fully connected layer
    that may run row by row (`systolic.hw.isa.fc_rows_supported` for one image) keeps its
    runs of up to ``fc_rows`` channel tiles, offsets within the weight memory's banks (the
    run's tile ``r`` in bank ``r``), from the banks' first words up; layers whose stripes no
    longer fit are left out."""
    depth, used, stripes = fc_bank_depth(cfg), [0] * cfg.fc_rows, {}
    for n, (_, layer, in_shape, _, _) in enumerate(plan):
        if not isinstance(layer, Linear):
            continue
        in_words, co = _words(cfg.cols, in_shape), layer.w.shape[0]
        if not fc_rows_supported(cfg, in_words=in_words, cout=co, batch=1):
            continue
        tiles, size = -(-co // cfg.cols), (in_words + 2) * cfg.cols
        runs, trial = [], list(used)
        for first in range(0, tiles, cfg.fc_rows):
            count = min(cfg.fc_rows, tiles - first)
            at = max(trial[:count])
            trial[:count] = [at + size] * count
            runs.append((first, count, at))
        if max(trial) <= depth:
            used, stripes[n] = trial, runs
    return stripes


class _WeightImage:
    """The weight memory's image as the compiler fills it: stripes at fixed places, then each
    other layer's words at the first gap that holds them."""

    def __init__(self):
        self.words, self.spans = [], []

    def place(self, base, words):
        end = base + len(words)
        if end > len(self.words):
            self.words += [0] * (end - len(self.words))
        self.words[base:end] = words
        self.spans = sorted(self.spans + [(base, end)])

    def first_fit(self, size):
        at = 0
        for lo, hi in self.spans:
            if lo - at >= size:
                return at
            at = max(at, hi)
        return at

    def merged_spans(self):
        out = []
        for lo, hi in self.spans:
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        return out


def _compile(qnet, cfg, batch, dense_input, dense_conv, fc_rows):
    plan, dense, chip, repeat, fused = _plan(qnet, cfg, dense_input, dense_conv)

    # Activation memory: ping-pong regions, or a graph's allocation.
    tensors = [plan[0][2]] + [p[3] for p in plan]
    sizes = _tensor_words(cfg, plan)
    bases, used = _allocate(cfg, qnet, plan, batch)
    if used > cfg.act_depth:
        big = max(range(len(tensors)), key=lambda j: sizes[j])
        where = ("the input image" if big == 0
                 else f"the output of {_layer_name(plan[big - 1][0], plan[big - 1][1])}")
        fits = largest_batch(qnet, cfg, dense_input=dense_input, dense_conv=dense_conv)
        if batch > 1 and fits:
            raise FitError(
                f"a batch of {batch} images must fit act_depth {cfg.act_depth} words, not "
                f"{used} ({used // batch} words an image); the "
                f"largest batch that fits is {fits}")
        how = ("the live tensors at their peak" if _is_graph(qnet) else
               f"two ping-pong buffers of {bases[1]} and {used - bases[1]} words")
        raise FitError(
            f"activations must fit act_depth {cfg.act_depth} words, not {used} "
            f"({how}; the largest is {where}, "
            f"{tensors[big]} in {sizes[big]} words); use {_BIGGER}, fewer channels or a "
            "smaller input")
    entries = _entries(cfg, plan, batch)
    if entries > cfg.program_depth:
        fits = largest_batch(qnet, cfg, dense_input=dense_input, dense_conv=dense_conv)
        raise FitError(
            f"the program must fit program_depth {cfg.program_depth} entries, not {entries} "
            f"(a batch of {batch}); " + (f"the largest batch that fits is {fits}" if fits
                                         else "raise program_depth"))

    # Pass 2: descriptors and memory images.
    layers, params, w_bases, w_words = [], [], [], []
    # The row-by-row layers' stripes first, each run's tile r in bank r; the other layers'
    # words go around them.
    stripes = _fc_stripes(cfg, plan) if fc_rows else {}
    image = _WeightImage()
    stripe_words = {}                                   # {plan index: its banks' words}
    for n, stripe in stripes.items():
        _, layer, in_shape, _, _ = plan[n]
        banks = layout.fc_rows_weight_words(cfg, layer.w, in_shape)
        stripe_words[n] = sum(len(b) for b in banks)
        for first, count, at in stripe:
            for r in range(count):
                image.place(r * fc_bank_depth(cfg) + at, banks[first + r])
    # {a dense convolution's plan index: the channel of each lane of its input map}, where a
    # row-paired convolution (`pair_rows`) wrote that map.
    lane_channels = {}
    for n, (i, layer, in_shape, out, srcs) in enumerate(plan):
        name = _layer_name(i, layer)
        if n in fused:
            name = f"{_layer_name(fused[n], layer)} + {i} (maxpool)"
        src, dst = bases[srcs[0]], bases[n + 1]
        c, h, w = in_shape
        _check_dims(cfg, name, in_shape, "input")
        _check_dims(cfg, name, out, "output")
        if isinstance(layer, Conv | Linear):
            co = layer.w.shape[0]
            b, m, sh = layer.b, layer.M, layer.s
            common = dict(relu=layer.relu, in_base=src, out_base=dst, w_base=0,
                          p_base=len(params), batch=batch)
            words = None
            if isinstance(layer, Linear):
                kind = "linear"
                in_words = _words(cfg.cols, in_shape)
                macs = co * layer.w.shape[1]
                if n in stripes:
                    # Row by row, fc_rows channel tiles a run (its stripe placed above).
                    g = cfg.rq_groups
                    runs = [describe_fc_rows(cfg, in_words=in_words, tiles=count,
                                             relu=layer.relu, in_base=src, out_base=dst + first,
                                             w_base=at, p_base=len(params) + first * g)
                            for first, count, at in stripes[n]]
                    fields = runs[0]
                    w_bases.append(stripes[n][0][2])
                    w_words.append(stripe_words[n])
                else:
                    fields = pad_walk(cfg, describe_linear(cfg, in_words=in_words, cout=co,
                                                           **common))
                    words = layout.linear_weight_words(cfg, layer.w, in_shape, fields["kh"])
            else:
                kind = "conv"
                _, ci, kh, kw = layer.w.shape
                _check_kernel(cfg, name, kh, kw)
                wq = layer.w
                # A dense, pooled convolution: output pixels in pairs where it pays
                # (`pair_pixels`), its channels repeated if a dense convolution reads them.
                paired = (n in chip and n in fused
                          and pairs_supported(cfg, cin=ci, cout=co, kh=kh, kw=kw,
                                              stride=layer.stride, repeat=n in repeat))
                # Else in vertical pairs (`pair_rows`) where those pack, for a dense reader.
                lanes = _reader_lanes(cfg, plan, repeat.get(n), co)
                vpaired = (not paired and n in chip and n in fused and lanes
                           and vpairs_supported(cfg, cin=ci, cout=co, kh=kh, kw=kw,
                                                stride=layer.stride, lanes=lanes))
                if n == 0 and dense is not None:
                    wq = wq.transpose(0, 2, 3, 1).reshape(co, ci * kh * kw, 1, 1)
                    fields = describe_conv(cfg, cin=c, h=h, w=w, cout=co, kh=1, kw=1, **common)
                elif paired:
                    fields = pair_pixels(cfg, cin=ci, h=h, w=w, cout=co, kh=kh, kw=kw,
                                         pad=layer.pad, repeat=n in repeat, **common)
                elif vpaired:
                    fields = pair_rows(cfg, cin=ci, h=h, w=w, cout=co, kh=kh, kw=kw,
                                       lanes=lanes, pad=layer.pad, **common)
                elif n in chip:
                    fields = describe_dense_conv(cfg, cin=ci, h=h, w=w, cout=co, kh=kh,
                                                 kw=kw, stride=layer.stride, pad=layer.pad,
                                                 **common)
                else:
                    fields = describe_conv(cfg, cin=c, h=h, w=w, cout=co, kh=kh, kw=kw,
                                           stride=layer.stride, pad=layer.pad, **common)
                wo = w + 2 * layer.pad - kw + 1 if paired else fields["out_w"]
                ho = h + 2 * layer.pad - kh + 1 if vpaired else fields["out_h"]
                macs = ho * wo * co * ci * kh * kw
                if n in fused and not (paired or vpaired):
                    fields = fuse_pool(cfg, fields)
                if paired:
                    wq, b, m, sh = _pair_weights(cfg, wq, b, m, sh, repeat=n in repeat)
                elif vpaired:
                    lane_channels[repeat[n]] = vpair_channels(cfg, co, lanes)
                    wq, b, m, sh = _vpair_weights(cfg, wq, b, m, sh, lane_channels[repeat[n]])
                elif n in repeat:         # every channel cols / co times over
                    again = np.arange(cfg.cols) % co
                    wq, b, m, sh = wq[again], b[again], m[again], sh[again]
                if n in chip:
                    # Its words, walk rows and all (long enough: `dense_walk`).
                    words = layout.conv_weight_words(
                        cfg, _dense_weights(cfg, wq, lane_channels.get(n)))
                else:
                    fields = pad_walk(cfg, fields)
                    words = layout.conv_weight_words(cfg, wq, fields["kh"])
            assert fields["kh"] * fields["kw"] * fields["cin_words"] * cfg.cols >= drain_steps(
                cfg)
            if words is not None:
                base = image.first_fit(len(words))
                fields = {**fields, "w_base": base}
                image.place(base, words)
                w_bases.append(base)
                w_words.append(len(words))
                if base + len(words) > cfg.weight_depth:
                    error = _WeightsFull if stripes else FitError
                    raise error(
                        f"{name}: weights must fit weight_depth {cfg.weight_depth} words, not "
                        f"{base + len(words)} (this layer needs {len(words)}); use "
                        f"{_BIGGER} or fewer channels")
            params += layout.pack_params(cfg, b, m, sh)
            if len(params) > cfg.param_words:
                raise FitError(
                    f"{name}: parameters must fit param_depth {cfg.param_depth} channel "
                    f"tiles, not {len(params) // cfg.rq_groups}; use {_BIGGER} or fewer "
                    "output channels")
            entries = runs if n in stripes else [fields]
        elif isinstance(layer, Add):
            kind, macs = "add", 0
            words = batch * _words(cfg.cols, in_shape)
            entries = [describe_add(cfg, words=words, relu=layer.relu, in_base=src,
                                    skip_base=bases[srcs[1]], out_base=dst,
                                    p_base=len(params))]
            params += pack_add_params(cfg, layer.M, layer.s)
            w_bases.append(None)
            w_words.append(None)
            if len(params) > cfg.param_words:
                raise FitError(
                    f"{name}: parameters must fit {cfg.param_words} parameter words, not "
                    f"{len(params)}; use {_BIGGER}")
        elif isinstance(layer, GlobalAvgPool):
            kind, macs = "gap", 0
            entries = [describe_gap(cfg, channels=c, h=h, w=w, batch=batch, in_base=src,
                                    out_base=dst)]
            w_bases.append(None)
            w_words.append(None)
        else:
            kind = f"{layer.kind}pool"
            entries, done = [], 0
            in_words, out_words = _words(cfg.cols, in_shape), _words(cfg.cols, out)
            for group in _pool_groups(cfg, layer, in_shape, batch):
                fields = describe_pool(cfg, channels=c, h=h * group, w=w, kernel=layer.kernel,
                                       stride=layer.stride, avg=layer.kind == "avg",
                                       in_base=src + done * in_words,
                                       out_base=dst + done * out_words)
                entries.append(fields)
                done += group
            line = pool_line_words(cfg)
            if fields["out_w"] * fields["cin_words"] > line:
                raise FitError(
                    f"{name}: an output row must fit the pooling line buffer of {line} words, "
                    f"not {fields['out_w']} pixels x {fields['cin_words']} words; use fewer "
                    f"channels, a narrower map or {_BIGGER}")
            w_bases.append(None)
            w_words.append(None)
            macs = 0
        commands = []
        for fields in entries:
            try:
                commands.append(pack_descriptor(cfg, fields))
            except ValueError as e:
                raise FitError(f"{name}: the layer descriptor does not fit ({e}); use "
                               f"{_BIGGER} or a smaller layer") from None
        layers.append(CompiledLayer(i, name, kind, entries, commands, in_shape, out, macs,
                                    _words(cfg.cols, out), dst, fused.get(n)))
    last = layers[-1]
    return Program(cfg, layers, image.words, params, tuple(qnet.input_shape), 0,
                   last.out_base, last.out_shape[0], used, w_bases, batch, dense,
                   (qnet, dense_input, dense_conv, fc_rows), 0 in chip, w_words,
                   image.merged_spans())


def _pair_weights(cfg, w, b, m, s, *, repeat):
    """A ``(Co, C, kh, kw)`` kernel and its parameters as `systolic.hw.isa.pair_pixels` lays
    them out: ``tiles * cols`` output channels of a ``kh x (kw + 1)`` kernel, column ``j`` of
    tile ``t`` computing real channel ``ch[t, j]`` (none: 0) shifted ``j // (cols / 2)``
    columns right, ``ch[0, j] = j % Co`` with ``repeat``, else ``t * cols / 2 + j % (cols /
    2)``."""
    co = w.shape[0]
    half = cfg.cols // 2
    j = np.arange(cfg.cols)
    if repeat:
        ch = (j % co)[None]
    else:
        ch = np.arange(-(-co // half))[:, None] * half + j % half
        ch = np.where(ch < co, ch, -1)
    return _shifted_weights(cfg, w, b, m, s, ch.reshape(-1), axis=3)


def _shifted_weights(cfg, w, b, m, s, ch, *, axis):
    """A ``(Co, C, kh, kw)`` kernel and its parameters as the output channels ``ch`` of a
    pair (`_pair_weights`, `_vpair_weights`): output channel ``n`` is real channel ``ch[n]``
    (none where negative: 0), its kernel one larger along ``axis`` (3: a column, 2: a row)
    and shifted along it by the half of the word its column is in, ``(n % cols) // (cols /
    2)``."""
    shape = list(w.shape)
    shape[0], shape[axis] = len(ch), shape[axis] + 1
    out = np.zeros(shape, w.dtype)
    bo, mo, so = (np.zeros(len(ch), v.dtype) for v in (b, m, s))
    for n, c in enumerate(ch):
        if c >= 0:
            off = (n % cfg.cols) // (cfg.cols // 2)
            window = [slice(None)] * 3
            window[axis - 1] = slice(off, off + w.shape[axis])
            out[(n, *window)] = w[c]
            bo[n], mo[n], so[n] = b[c], m[c], s[c]
    return out, bo, mo, so


def _reader_lanes(cfg, plan, reader, cin):
    """The lanes of the dense convolution at plan index ``reader`` (`dense_layout`), reading
    a map of ``cin`` channels; 0 if there is none."""
    if reader is None:
        return 0
    kw = plan[reader][1].w.shape[3]
    rows, taps = dense_layout(cfg, kw, cin)
    return rows * taps * cin


def _vpair_weights(cfg, w, b, m, s, channels):
    """A ``(Co, C, kh, kw)`` kernel and its parameters as `systolic.hw.isa.pair_rows` lays
    them out: ``cols`` output channels of a ``(kh + 1) x kw`` kernel, column ``j`` computing
    real channel ``channels[j % (cols / 2)]`` shifted ``j // (cols / 2)`` rows down."""
    ch = [channels[j % (cfg.cols // 2)] for j in range(cfg.cols)]
    return _shifted_weights(cfg, w, b, m, s, ch, axis=2)


def _dense_weights(cfg, w, channels=None):
    """A ``(Co, C, kh, kw)`` kernel as the 1x1 convolution of ``words * cols`` channels a
    dense convolution's weight words are (`systolic.hw.isa.describe_dense_conv`): channel
    ``j * cols + l`` holds channel ``c`` of the tap lane ``l`` carries in word ``j``
    (`systolic.hw.isa.dense_word_tap`), 0 past the kernel. With ``channels`` (its input map
    written by a row-paired convolution, `systolic.hw.isa.vpair_channels`), lane ``l`` holds
    channel ``channels[l % (cols / 2)]`` of its tap instead of ``c``."""
    co, ci, kh, kw = w.shape
    walk_h, walk_w, n = dense_walk(cfg, kh, kw, ci)
    words = walk_h * walk_w * n
    out = np.zeros((co, words * cfg.cols, 1, 1), w.dtype)
    for j in range(words):
        for lane in range(cfg.cols):
            tap = dense_word_tap(cfg, kh, kw, ci, j, lane)
            if tap is None:
                continue
            ky, kx, c = tap
            if channels is not None:
                c = channels[lane % (cfg.cols // 2)]
            out[:, j * cfg.cols + lane, 0, 0] = w[:, c, ky, kx]
    return out
