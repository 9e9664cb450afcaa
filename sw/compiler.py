"""The compiler: a `QNet` to a `Program` for one accelerator configuration.

A program is everything the host sends to the core (`systolic.hw.core.Core`) to run a network:
the weight and parameter memory images, one packed layer descriptor per layer, where the input
image goes and where the logits come back from. The formats are those of `systolic.hw.isa` and
`systolic.hw.layout`; the compiler only chooses addresses and checks that everything fits.

Activations ping-pong between two regions of activation memory: the input image (tensor 0) and
every even-numbered layer output live in region A at address 0, the odd ones in region B right
after the largest tensor of region A. A flatten layer costs nothing: the next fully connected
layer reads the ``(C, H, W)`` map as a convolution whose kernel covers it.
"""

from dataclasses import dataclass, field

import numpy as np

from ..hw import layout
from ..hw.config import AcceleratorConfig
from ..hw.isa import Mem, describe_conv, describe_pool, pack_descriptor
from ..hw.pool import pool_line_words
from .errors import SystolicError
from .qnet import Conv, Flatten, Linear, Pool, QNet

__all__ = ["CompiledLayer", "FitError", "Program", "compile_network"]

_FIELD_MAX = 255            # cin_words and cout_tiles are 8-bit descriptor fields
_BIGGER = "a bigger preset (--preset big)"


class FitError(SystolicError, ValueError):
    """A network that does not fit the accelerator; the message names the layer and the fix."""


@dataclass(eq=False)
class CompiledLayer:
    """One hardware layer of a `Program`.

    Members
    -------
    index : int
        Index of the layer in ``QNet.layers``.
    name : str
        ``"layer 3 (conv 16->32 3x3)"``: for reports and error messages.
    kind : str
        ``"conv"``, ``"linear"``, ``"maxpool"`` or ``"avgpool"``.
    fields : dict
        Descriptor fields (`systolic.hw.isa.describe_conv` / `describe_pool`).
    command : int
        The packed descriptor.
    in_shape, out_shape : tuple of int
        ``(C, H, W)`` of the input and output maps (a linear layer's output is ``(Co, 1, 1)``).
    macs : int
        Multiply-accumulates of the layer (0 for pooling).
    out_words : int
        Activation words of the output.
    """

    index: int
    name: str
    kind: str
    fields: dict
    command: int
    in_shape: tuple
    out_shape: tuple
    macs: int
    out_words: int

    @property
    def out_base(self):
        """Activation address of the layer's output."""
        return self.fields["out_base"]


@dataclass(eq=False)
class Program:
    """A network compiled for one `AcceleratorConfig`.

    Members
    -------
    cfg : AcceleratorConfig
    layers : list of CompiledLayer
        The hardware layers, in execution order (flatten layers compile to nothing).
    weights, params : list of int
        Weight and parameter memory images, from address 0.
    input_shape : tuple of int
        ``(C, H, W)`` of the input image, stored from `input_base`.
    input_base : int
    output_base : int
        Activation address of the logits.
    classes : int
        Number of logits.
    act_words : int
        Activation memory words the program uses.
    w_bases : list of int or None
        Weight memory base of each layer (``None`` for pooling).
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

    def loads(self):
        """The network's memory writes ``(Mem, addr, data)``: weights, then parameters."""
        return ([(Mem.WEIGHT, a, v) for a, v in enumerate(self.weights)]
                + [(Mem.PARAM, a, v) for a, v in enumerate(self.params)])

    def input_words(self, image):
        """Activation words of one int8 ``(C, H, W)`` image, to be written from `input_base`.

        Raises
        ------
        SystolicError
            When the image is not int8 of the network's input shape.
        """
        image = np.asarray(image)
        if image.dtype != np.int8 or image.shape != tuple(self.input_shape):
            raise SystolicError(f"image must be int8 {tuple(self.input_shape)}, not "
                                f"{image.dtype} {image.shape}")
        return layout.pack_activations(self.cfg, image)

    @property
    def input_lanes(self):
        """Bytes a word of the input takes in a WRITE frame (`hw.isa.WRITE_TARGET`): its
        channels, when fewer than ``cols`` (the other lanes are zero); else 0, whole words."""
        channels = self.input_shape[0]
        return channels if channels < min(self.cfg.cols, 16) else 0

    @property
    def output_words(self):
        """Activation words holding the logits."""
        return -(-self.classes // self.cfg.cols)

    def decode_output(self, words):
        """The int8 logits ``(classes,)`` from the `output_words` words read at `output_base`."""
        return self.decode_layer(len(self.layers) - 1, words).reshape(self.classes)

    def decode_layer(self, i, words):
        """The int8 ``(C, H, W)`` output of hardware layer ``i`` from its words."""
        c, h, w = self.layers[i].out_shape
        if len(words) != _words(self.cfg.cols, (c, h, w)):
            raise SystolicError(f"{self.layers[i].name}: output must be "
                                f"{_words(self.cfg.cols, (c, h, w))} words, not {len(words)}")
        return layout.unpack_activations(self.cfg, words, c, h, w)

    @property
    def macs(self):
        """Multiply-accumulates per image."""
        return sum(lay.macs for lay in self.layers)


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


def _check_kernel(cfg, name, kh, kw, linear_input=None):
    if max(kh, kw) <= cfg.max_kernel:
        return
    if linear_input is not None:
        c, h, w = linear_input
        raise FitError(
            f"{name}: a fully connected layer runs as a convolution covering its {c}x{h}x{w} "
            f"input, so the map must be at most {cfg.max_kernel}x{cfg.max_kernel}, not "
            f"{h}x{w}; pool or stride the map down before the linear layer")
    raise FitError(f"{name}: kernel size must be at most max_kernel {cfg.max_kernel}, not "
                   f"{kh}x{kw}; use a smaller kernel (or two stacked ones)")


def compile_network(qnet: QNet, cfg: AcceleratorConfig) -> Program:
    """Compile ``qnet`` for the accelerator ``cfg``.

    Parameters
    ----------
    qnet : QNet
        A network that passes ``qnet.check()``.
    cfg : AcceleratorConfig

    Returns
    -------
    Program

    Raises
    ------
    FitError
        When a layer is not supported or something does not fit the configuration: kernel
        size, map size, channel count, pooling line buffer, activation, weight or parameter
        memory. The message names the layer and what to change.
    """
    qnet.check()
    # Pass 1: shapes and layer kinds; Flatten folds into the next linear layer.
    shape = tuple(qnet.input_shape)
    plan = []           # (index, layer, in_shape (C, H, W), out_shape (C, H, W))
    for i, layer in enumerate(qnet.layers):
        name = _layer_name(i, layer)
        if isinstance(layer, Flatten):
            continue                        # the map keeps its (C, H, W) layout in memory
        if isinstance(layer, Conv):
            out = layer.out_shape(shape)
        elif isinstance(layer, Linear):
            out = (layer.w.shape[0], 1, 1)
            k = int(np.prod(shape))
            if k != layer.w.shape[1]:
                raise FitError(f"{name}: input must have {layer.w.shape[1]} values, not {k}")
        elif isinstance(layer, Pool):
            if not cfg.pool:
                raise FitError(f"{name}: pooling needs the pooling engine; use a configuration "
                               "with pool=True")
            if layer.kind == "avg" and not cfg.pool_avg:
                raise FitError(f"{name}: this configuration's pooling engine only takes the "
                               "maximum (pool_avg=False); use max pooling in the model or a "
                               "configuration with pool_avg=True (the default and big presets)")
            out = layer.out_shape(shape)
        else:
            raise FitError(f"{name}: layer type must be Conv, Linear, Pool or Flatten, not "
                           f"{type(layer).__name__}")
        plan.append((i, layer, shape, out))
        shape = out

    # Activation regions: tensor 0 (input) and even layer outputs in A, odd ones in B.
    tensors = [tuple(qnet.input_shape)] + [p[3] for p in plan]
    sizes = [_words(cfg.cols, s) for s in tensors]
    size_a = max(sizes[0::2])
    size_b = max(sizes[1::2])
    bases = (0, size_a)
    if size_a + size_b > cfg.act_depth:
        big = max(range(len(tensors)), key=lambda j: sizes[j])
        where = ("the input image" if big == 0
                 else f"the output of {_layer_name(plan[big - 1][0], plan[big - 1][1])}")
        raise FitError(
            f"activations must fit act_depth {cfg.act_depth} words, not {size_a + size_b} "
            f"(two ping-pong buffers of {size_a} and {size_b} words; the largest is {where}, "
            f"{tensors[big]} in {sizes[big]} words); use {_BIGGER}, fewer channels or a "
            "smaller input")

    # Pass 2: descriptors and memory images.
    layers, weights, params, w_bases = [], [], [], []
    for n, (i, layer, in_shape, out) in enumerate(plan):
        name = _layer_name(i, layer)
        src, dst = bases[n % 2], bases[(n + 1) % 2]
        c, h, w = in_shape
        _check_dims(cfg, name, in_shape, "input")
        _check_dims(cfg, name, out, "output")
        if isinstance(layer, Conv | Linear):
            if isinstance(layer, Conv):
                wq, kind = layer.w, "conv"
                _check_kernel(cfg, name, wq.shape[2], wq.shape[3])
                stride, pad = layer.stride, layer.pad
            else:
                wq, kind = layout.linear_as_conv(layer.w, in_shape), "linear"
                _check_kernel(cfg, name, h, w, linear_input=in_shape)
                stride, pad = 1, 0
            co, _, kh, kw = wq.shape
            fields = describe_conv(cfg, cin=c, h=h, w=w, cout=co, kh=kh, kw=kw, stride=stride,
                                   pad=pad, relu=layer.relu, in_base=src, out_base=dst,
                                   w_base=len(weights), p_base=len(params))
            steps = kh * kw * fields["cin_words"] * cfg.cols
            need = cfg.cols + (cfg.rows - 1) * (cfg.rq_groups - 1)
            if steps < need:
                raise FitError(
                    f"{name}: its {steps}-step reduction is shorter than the {need} steps the "
                    f"{cfg.rq_lanes} requantization lane(s) need to drain a {cfg.rows}x"
                    f"{cfg.cols} tile; use a configuration with more requant_lanes or fewer "
                    "rows")
            w_bases.append(len(weights))
            weights += layout.conv_weight_words(cfg, wq)
            params += layout.pack_params(cfg, layer.b, layer.M, layer.s)
            macs = out[1] * out[2] * co * c * kh * kw
            if len(weights) > cfg.weight_depth:
                raise FitError(
                    f"{name}: weights must fit weight_depth {cfg.weight_depth} words, not "
                    f"{len(weights)} (this layer needs {len(weights) - w_bases[-1]}); use "
                    f"{_BIGGER} or fewer channels")
            if len(params) > cfg.param_words:
                raise FitError(
                    f"{name}: parameters must fit param_depth {cfg.param_depth} channel "
                    f"tiles, not {len(params) // cfg.rq_groups}; use {_BIGGER} or fewer "
                    "output channels")
        else:
            kind = f"{layer.kind}pool"
            fields = describe_pool(cfg, channels=c, h=h, w=w, kernel=layer.kernel,
                                   stride=layer.stride, avg=layer.kind == "avg",
                                   in_base=src, out_base=dst)
            line = pool_line_words(cfg)
            if fields["out_w"] * fields["cin_words"] > line:
                raise FitError(
                    f"{name}: an output row must fit the pooling line buffer of {line} words, "
                    f"not {fields['out_w']} pixels x {fields['cin_words']} words; use fewer "
                    f"channels, a narrower map or {_BIGGER}")
            w_bases.append(None)
            macs = 0
        try:
            command = pack_descriptor(cfg, fields)
        except ValueError as e:
            raise FitError(f"{name}: the layer descriptor does not fit ({e}); use "
                           f"{_BIGGER} or a smaller layer") from None
        layers.append(CompiledLayer(i, name, kind, fields, command, in_shape, out, macs,
                                    _words(cfg.cols, out)))
    last = layers[-1]
    return Program(cfg, layers, weights, params, tuple(qnet.input_shape), 0, last.out_base,
                   last.out_shape[0], size_a + size_b, w_bases)
