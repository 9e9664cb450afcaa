"""The ConvNet family the accelerator runs, the named architectures and the validator.

A supported model is a flat `torch.nn.Sequential` of:

* ``Conv2d``: kernel 1..7 (each side), stride 1 or 2 (same both ways), zero padding 0..3 (same
  both ways), bias or none, no dilation, no groups;
* ``ReLU``: only directly after a ``Conv2d`` or ``Linear`` (the hardware fuses it);
* ``MaxPool2d`` / ``AvgPool2d``: square window 2 or 3, stride 1..3, no padding, floor mode;
* ``Flatten`` (all of ``C, H, W``), then ``Linear`` layers, the last of which gives the logits.

A `Chain` (a ``Sequential`` whose layers may also read an earlier layer's output) may besides
hold a residual `Add` (the previous output plus an earlier one of the same shape; ReLU may follow
it), a `Branch` (the layers after it start again from an earlier output: a projection
shortcut) and global average pooling (``AdaptiveAvgPool2d(1)``). The golden model and the
accelerator (its element-wise engines, with the averaging pooling engine) run these.

Any other model (BatchNorm, functional forms, a ``torch.export`` program) is first lowered to
such a ``Sequential`` or `Chain` by `frontend.lower`.

A model is described by a *spec*, a list of plain dicts (one per layer) that `model_spec` and
`model_from_spec` convert; checkpoints and ``.qnet`` files store it, so any supported model,
named or custom, can be rebuilt.
"""

from dataclasses import dataclass

import torch
from torch import nn

from . import arith
from .errors import SystolicError

__all__ = [
    "ARCHS", "CONV_PADDINGS", "SUPPORTED", "Add", "Arch", "Branch", "Chain", "ModelError",
    "ResNet", "ResidualStack", "build_model", "check_supported", "model_from_spec", "model_spec",
    "run_layers",
]

CONV_PADDINGS = range(0, 4)     #: zero padding 0..3

SUPPORTED = (
    "supported layers: Conv2d (kernel 1-7, stride 1-2, zero padding 0-3, no dilation or "
    "groups), ReLU (directly after Conv2d, Linear or Add), MaxPool2d and AvgPool2d (square window "
    "2-3, stride 1-3, no padding, floor mode), Flatten, Linear (the last layer), residual Add, "
    "Branch, AdaptiveAvgPool2d(1)")


class ModelError(SystolicError, ValueError):
    """A model the accelerator cannot run; the message names the layer and what is supported."""


class Branch(nn.Module):
    """The start of a branch in a `Chain`: its output is layer ``src``'s output (``-1``: the
    chain's input), the input of the layers after it."""

    def __init__(self, src):
        super().__init__()
        self.src = src

    def forward(self, x, other):
        return other

    def extra_repr(self):
        return f"src={self.src}"


class Add(nn.Module):
    """A residual add in a `Chain`: the previous layer's output plus layer ``skip``'s output
    (``-1``: the chain's input)."""

    def __init__(self, skip):
        super().__init__()
        self.skip = skip

    def forward(self, x, other):
        return x + other

    def extra_repr(self):
        return f"skip={self.skip}"


def run_layers(model, x):
    """Every layer's output of ``model`` (a ``Sequential`` or `Chain`) on the batch ``x``."""
    outputs = []
    h = x
    for layer in model:
        if isinstance(layer, Add | Branch):
            src = layer.skip if isinstance(layer, Add) else layer.src
            h = layer(h, x if src == -1 else outputs[src])
        else:
            h = layer(h)
        outputs.append(h)
    return outputs


class Chain(nn.Sequential):
    """A ``Sequential`` whose `Add` layers add an earlier layer's output (a residual)."""

    def forward(self, x):
        return run_layers(self, x)[-1]


@dataclass(frozen=True)
class Arch:
    """A named architecture: its builder, input shape and the data set it is meant for."""

    name: str
    input_shape: tuple
    dataset: str
    description: str
    build: object

    def __call__(self):
        return self.build()


def _lenet_digits():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 10))


def _lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


class ResidualStack(nn.Module):
    """Two 3x3 convolutions with BatchNorm, the first strided, and a shortcut added before the
    last ReLU: the input itself, or a strided 1x1 convolution when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.proj is None else self.proj(x)))


class ResNet(nn.Module):
    """A stem (3x3 convolution, BatchNorm, ReLU, optionally 2x2 max pooling), residual stacks,
    global average pooling and one linear layer. Lowered (`frontend.lower`) to a `Chain`."""

    def __init__(self, cin, stacks, *, stem=16, pool=False, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(cin, stem, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(stem)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        widths = [stem] + [c for c, _ in stacks]
        self.stacks = nn.Sequential(*(ResidualStack(a, b, st) for a, b, (_, st) in
                                      zip(widths, widths[1:], stacks)))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(self.gap(self.stacks(x)), 1))


def _resnet_mnist():
    return ResNet(1, [(16, 1), (32, 2), (32, 1)], pool=True)


def _mlperf_resnet8():
    return ResNet(3, [(16, 1), (32, 2), (64, 2)])


ARCHS = {a.name: a for a in (
    Arch("lenet-digits", (1, 8, 8), "digits",
         "two 3x3 conv + max-pool stages (16, 32 channels), one linear layer", _lenet_digits),
    Arch("lenet5", (1, 28, 28), "mnist",
         "LeCun 1998: two 5x5 conv + max-pool stages (6, 16 channels), three linear layers",
         _lenet5),
    Arch("resnet-mnist", (1, 28, 28), "mnist",
         "3x3 conv + BatchNorm stem, 2x2 max-pool, three residual stacks (16, 32, 32 channels; "
         "a projection shortcut), global average pooling, one linear layer", _resnet_mnist),
    Arch("mlperf-resnet8", (3, 32, 32), "cifar10",
         "the MLPerf Tiny image-classification topology: three residual stacks (16, 32, 64 "
         "channels), global average pooling, dense 10; no data set here: random weights; "
         "7,168 activation words: the big preset", _mlperf_resnet8),
)}


def build_model(arch, *, seed=None):
    """A freshly initialised model of the named architecture (one of `ARCHS`).

    With ``seed``, the initial weights are reproducible (``torch.manual_seed(seed)`` first).

    Raises
    ------
    ModelError
        When ``arch`` is not a known name.
    """
    if arch not in ARCHS:
        raise ModelError(f"architecture must be one of {', '.join(ARCHS)}, not {arch!r}")
    if seed is not None:
        torch.manual_seed(seed)
    return ARCHS[arch]()


def _pair(v):
    return tuple(v) if isinstance(v, tuple | list) else (v, v)


class _LayerProblem(Exception):
    def __init__(self, i, layer, problem):
        super().__init__(i, layer, problem)
        self.i, self.layer, self.problem = i, layer, problem


def _fail(i, layer, problem):
    raise _LayerProblem(i, layer, problem)


def _check_conv(i, layer, shape):
    if len(shape) != 3:
        _fail(i, layer, f"Conv2d input must be (C, H, W), not {shape}")
    kh, kw = _pair(layer.kernel_size)
    sh, sw = _pair(layer.stride)
    if isinstance(layer.padding, str):
        _fail(i, layer, f"padding must be an integer, not {layer.padding!r}")
    ph, pw = _pair(layer.padding)
    if kh not in arith.CONV_KERNELS or kw not in arith.CONV_KERNELS:
        _fail(i, layer, f"kernel size must be between 1 and 7, not {(kh, kw)}")
    if sh != sw or sh not in arith.CONV_STRIDES:
        _fail(i, layer, f"stride must be 1 or 2 (both ways), not {(sh, sw)}")
    if ph != pw or ph not in CONV_PADDINGS:
        _fail(i, layer, f"padding must be between 0 and 3 (both ways), not {(ph, pw)}")
    if _pair(layer.dilation) != (1, 1):
        _fail(i, layer, f"dilation must be 1, not {layer.dilation}")
    if layer.groups != 1:
        _fail(i, layer, f"groups must be 1, not {layer.groups}")
    if layer.padding_mode != "zeros":
        _fail(i, layer, f"padding_mode must be 'zeros', not {layer.padding_mode!r}")
    c, h, w = shape
    if layer.in_channels != c:
        _fail(i, layer, f"in_channels must match the input's {c} channels, not {layer.in_channels}")
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        _fail(i, layer, f"the kernel must fit the {h}x{w} input")
    return (layer.out_channels, ho, wo)


def _check_pool(i, layer, shape):
    if len(shape) != 3:
        _fail(i, layer, f"pooling input must be (C, H, W), not {shape}")
    k = _pair(layer.kernel_size)
    st = _pair(layer.kernel_size if layer.stride is None else layer.stride)
    if k[0] != k[1] or k[0] not in arith.POOL_KERNELS:
        _fail(i, layer, f"pooling window must be square, 2 or 3, not {k}")
    if st[0] != st[1] or st[0] not in arith.POOL_STRIDES:
        _fail(i, layer, f"pooling stride must be 1, 2 or 3 (both ways), not {st}")
    if _pair(layer.padding) != (0, 0):
        _fail(i, layer, f"pooling padding must be 0, not {layer.padding}")
    if layer.ceil_mode:
        _fail(i, layer, "ceil_mode must be False, not True")
    if isinstance(layer, nn.MaxPool2d):
        if _pair(layer.dilation) != (1, 1):
            _fail(i, layer, f"pooling dilation must be 1, not {layer.dilation}")
        if layer.return_indices:
            _fail(i, layer, "return_indices must be False, not True")
    elif layer.divisor_override is not None:
        _fail(i, layer, f"divisor_override must be None, not {layer.divisor_override!r}")
    c, h, w = shape
    if h < k[0] or w < k[0]:
        _fail(i, layer, f"the pooling window must fit the {h}x{w} input")
    return (c, (h - k[0]) // st[0] + 1, (w - k[0]) // st[0] + 1)


def check_supported(model, input_shape, *, where=None):
    """Check that the accelerator can run ``model`` on inputs of ``input_shape``.

    Parameters
    ----------
    model : torch.nn.Sequential
        The model; see the module documentation for what is supported.
    input_shape : tuple of int
        ``(C, H, W)`` of one input image.
    where : list of str, optional
        Where each layer came from in the user's model (the front end's module path and source
        line), named in errors.

    Returns
    -------
    list of tuple
        Each layer's output shape (without the batch dimension).

    Raises
    ------
    ModelError
        Naming the first offending layer (index and repr) and listing what is supported.
    """
    if not isinstance(model, nn.Sequential):
        raise ModelError(f"model must be a torch.nn.Sequential, not {type(model).__name__}; "
                         f"{SUPPORTED}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ModelError(f"input shape must be (C, H, W) of positive integers, not {shape!r}")
    if len(model) == 0:
        raise ModelError(f"model must have at least one layer; {SUPPORTED}")
    try:
        return _check_layers(model, shape)
    except _LayerProblem as e:
        origin = f" from {where[e.i]}" if where is not None else ""
        raise ModelError(f"layer {e.i} ({e.layer!r}){origin}: {e.problem}; {SUPPORTED}") from None


def _check_layers(model, shape):
    shapes = []
    previous = None
    first = shape
    for i, layer in enumerate(model):
        if type(layer) is Add:
            _check_add(model, i, layer, first, shapes, shape)
        elif type(layer) is Branch:
            _check_source(model, i, layer, layer.src, "src")
            shape = first if layer.src == -1 else shapes[layer.src]
        elif type(layer) is nn.AdaptiveAvgPool2d:
            if _pair(layer.output_size) != (1, 1):
                _fail(i, layer, f"adaptive pooling must be to 1x1 (global), not "
                                f"{layer.output_size}")
            if len(shape) != 3:
                _fail(i, layer, f"global pooling input must be (C, H, W), not {shape}")
            shape = (shape[0], 1, 1)
        elif type(layer) is nn.Conv2d:
            shape = _check_conv(i, layer, shape)
        elif type(layer) is nn.Linear:
            if len(shape) != 1:
                _fail(i, layer, f"Linear input must be flat (add a Flatten), not {shape}")
            if layer.in_features != shape[0]:
                _fail(i, layer,
                      f"in_features must match the input's {shape[0]} features, "
                      f"not {layer.in_features}")
            shape = (layer.out_features,)
        elif type(layer) is nn.ReLU:
            if type(previous) not in (nn.Conv2d, nn.Linear, Add):
                _fail(i, layer, "ReLU must directly follow a Conv2d, Linear or Add layer")
        elif type(layer) in (nn.MaxPool2d, nn.AvgPool2d):
            shape = _check_pool(i, layer, shape)
        elif type(layer) is nn.Flatten:
            if (layer.start_dim, layer.end_dim) != (1, -1):
                _fail(i, layer, "Flatten must flatten dimensions 1 to -1")
            if len(shape) != 3:
                _fail(i, layer, f"Flatten input must be (C, H, W), not {shape}")
            shape = (shape[0] * shape[1] * shape[2],)
        else:
            _fail(i, layer, f"{type(layer).__name__} is not supported")
        shapes.append(shape)
        previous = layer
    if type(model[-1]) is not nn.Linear:
        _fail(len(model) - 1, model[-1], "the last layer must be Linear (it gives the logits)")
    return shapes


def _check_source(model, i, layer, src, name):
    if not isinstance(model, Chain):
        what = "residual Add" if type(layer) is Add else "Branch"
        _fail(i, layer, f"a {what} needs a models.Chain, not a plain Sequential")
    if not isinstance(src, int) or isinstance(src, bool) or not -1 <= src < i:
        _fail(i, layer, f"{name} must be an earlier layer's index (below {i}) or -1 (the "
                        f"input), not {src!r}")
    if src >= 0 and type(model[src]) in (nn.Conv2d, nn.Linear, Add) \
            and type(model[src + 1]) is nn.ReLU:
        _fail(i, layer, f"{name} must not be layer {src}: its output before the ReLU that "
                        f"follows is not kept; use layer {src + 1}'s output")


def _check_add(model, i, layer, first, shapes, shape):
    _check_source(model, i, layer, layer.skip, "skip")
    other = first if layer.skip == -1 else shapes[layer.skip]
    if other != shape:
        _fail(i, layer, f"the operands must have the same shape, not {shape} and {other} (the "
                        f"output of layer {layer.skip})")


def model_spec(model, input_shape):
    """The spec of a supported model: one plain dict per layer (JSON- and checkpoint-safe).

    Raises
    ------
    ModelError
        When the model is not supported (see `check_supported`).
    """
    check_supported(model, input_shape)
    spec = []
    for layer in model:
        kind = type(layer).__name__
        if kind == "Conv2d":
            spec.append({
                "type": kind, "in_channels": layer.in_channels,
                "out_channels": layer.out_channels, "kernel_size": list(_pair(layer.kernel_size)),
                "stride": _pair(layer.stride)[0], "padding": _pair(layer.padding)[0],
                "bias": layer.bias is not None})
        elif kind == "Linear":
            spec.append({"type": kind, "in_features": layer.in_features,
                         "out_features": layer.out_features, "bias": layer.bias is not None})
        elif kind in ("MaxPool2d", "AvgPool2d"):
            stride = layer.kernel_size if layer.stride is None else layer.stride
            spec.append({"type": kind, "kernel_size": _pair(layer.kernel_size)[0],
                         "stride": _pair(stride)[0]})
        elif kind == "Add":
            spec.append({"type": kind, "skip": layer.skip})
        elif kind == "Branch":
            spec.append({"type": kind, "src": layer.src})
        elif kind == "AdaptiveAvgPool2d":
            spec.append({"type": kind, "output_size": 1})
        else:
            spec.append({"type": kind})
    return spec


def model_from_spec(spec, input_shape):
    """Build the (untrained) model a spec describes, and check it is supported.

    Raises
    ------
    ModelError
        When the spec is malformed or describes an unsupported model.
    """
    layers = []
    try:
        for entry in spec:
            args = {k: v for k, v in entry.items() if k != "type"}
            kind = entry["type"]
            if kind == "Conv2d":
                args["kernel_size"] = tuple(args["kernel_size"])
                layers.append(nn.Conv2d(**args))
            elif kind == "Linear":
                layers.append(nn.Linear(**args))
            elif kind in ("MaxPool2d", "AvgPool2d", "ReLU", "Flatten", "AdaptiveAvgPool2d"):
                layers.append(getattr(nn, kind)(**args))
            elif kind == "Add":
                layers.append(Add(**args))
            elif kind == "Branch":
                layers.append(Branch(**args))
            else:
                raise ModelError(f"model spec layer type must be a supported layer, not {kind!r}; "
                                 f"{SUPPORTED}")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"model spec entry {len(layers)} is malformed ({e})") from None
    model = (Chain if any(type(m) in (Add, Branch) for m in layers) else nn.Sequential)(*layers)
    check_supported(model, tuple(input_shape))
    return model

