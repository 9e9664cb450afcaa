"""The model front end: any traceable PyTorch model lowered to the supported layer chain.

`lower` takes a ``torch.nn.Module`` (traced with ``torch.export.export``) or an
``ExportedProgram`` (for instance one read back with ``torch.export.load``) and walks its graph
into the flat ``torch.nn.Sequential`` (or, with residual adds, `models.Chain`) that
`models.check_supported` accepts, so quantization, the ``.qnet`` file, the golden model and the
compiler take it as they take the trainer's models. It understands modules and their
functional forms:

* convolution (``nn.Conv2d``, ``F.conv2d``), fully connected layers (``nn.Linear``,
  ``F.linear``, ``addmm`` / ``mm`` with constant weights);
* ``BatchNorm2d`` after a convolution and ``BatchNorm1d`` after a linear layer, folded into that
  layer's weights and bias with the running statistics (eval mode);
* ReLU (``nn.ReLU``, ``F.relu``, ``torch.relu``, in place or not, ``clamp(min=0)``);
* max and average pooling (modules, ``F.max_pool2d``, ``F.avg_pool2d``; adaptive pooling and
  ``x.mean((2, 3))`` when they amount to a 2x2 or 3x3 window; average pooling over the whole
  map is global average pooling);
* flattening before a linear layer (``nn.Flatten``, ``torch.flatten(x, 1)``,
  ``x.view(n, -1)``, ``x.reshape(n, -1)``);
* a residual add ``a + b`` (``torch.add``, ``+=``) of the latest result and an earlier output
  of the same shape, ReLU may follow, and branches from an earlier output (a projection
  shortcut: a `models.Branch` starts the layers on it); global average pooling
  (``x.mean((2, 3))``, ``F.adaptive_avg_pool2d(x, 1)``, ``nn.AdaptiveAvgPool2d(1)``), on the
  golden model and the accelerator alike;
* ``Dropout`` and other identities (ignored: the model is lowered as in eval mode), and a
  softmax or log-softmax over the classes at the very end (dropped: it keeps the argmax, and
  the accelerator's logits are the scores before it).

Anything else (another activation, a grouped, depthwise or dilated convolution, concatenation,
upsampling, explicit padding, ...) raises `models.ModelError` naming the
operation, where it is in the user's model (module path and source line, as ``torch.export``
records them) and the nearest supported rewrite.

A plain ``nn.Sequential`` of the supported layers is returned unchanged, so its errors are the
validator's.
"""

import operator
import os
import re

import torch
from torch import nn

from . import models
from .models import ModelError

__all__ = ["example_input_shape", "fold_batchnorm", "lower"]

_aten = torch.ops.aten
_PLAIN = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten,
          nn.AdaptiveAvgPool2d, models.Add, models.Branch)
#: Source files that are not the user's: torch's and ours (a `models.Chain`'s loop).
_NOT_USER = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))

_ACTIVATION = ("the accelerator's only activation is ReLU, fused into the Conv2d or Linear "
               "before it: use nn.ReLU or F.relu")
_REWRITES = {
    **dict.fromkeys(
        ("sigmoid", "tanh", "gelu", "silu", "hardswish", "hardsigmoid", "elu", "selu", "celu",
         "leaky_relu", "prelu", "rrelu", "softplus", "mish", "hardtanh", "relu6", "log_sigmoid",
         "logsigmoid", "softsign", "tanhshrink", "threshold", "glu"), _ACTIVATION),
    **dict.fromkeys(
        ("softmax", "_softmax", "log_softmax", "_log_softmax"),
        "the logits are the last Linear layer's outputs and the class their argmax: a softmax "
        "is only dropped as the model's last operation, over the classes"),
    **dict.fromkeys(
        ("cat", "concat", "concatenate", "stack"),
        "concatenation joins branches, and the accelerator runs a chain of layers: widen one "
        "convolution instead of concatenating branches"),
    **dict.fromkeys(
        ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "rsub"),
        "the only element-wise arithmetic is a residual add, a + b of the latest result and an "
        "earlier layer's output (or the input) of the same shape; fold a constant offset or "
        "scale into the Conv2d or Linear before it"),
    **dict.fromkeys(
        ("upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_nearest_"
         "exact2d", "_upsample_bilinear2d_aa", "upsample_nearest1d", "pixel_shuffle",
         "conv_transpose2d", "conv_transpose1d", "col2im"),
        "the accelerator keeps or shrinks feature maps, never enlarges them: feed the larger "
        "input to a stride-1 Conv2d instead of upsampling"),
    **dict.fromkeys(
        ("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "circular_pad2d",
         "_pad_circular"),
        "use the Conv2d's own zero padding (padding=0..3, padding_mode='zeros') instead"),
    **dict.fromkeys(
        ("layer_norm", "group_norm", "instance_norm", "native_layer_norm",
         "native_group_norm", "local_response_norm"),
        "use a BatchNorm directly after a Conv2d or Linear (it is folded into that layer)"),
    **dict.fromkeys(
        ("conv1d", "conv3d"), "use Conv2d on (C, H, W) inputs"),
    **dict.fromkeys(
        ("max_pool1d", "max_pool3d", "avg_pool1d", "avg_pool3d"),
        "use MaxPool2d or AvgPool2d (square window 2-3, stride 1-3)"),
    **dict.fromkeys(
        ("permute", "transpose", "t", "squeeze", "unsqueeze", "expand", "repeat", "narrow",
         "slice", "select", "index", "split", "chunk", "unbind", "roll", "flip"),
        "the only reshaping is flattening (C, H, W) before a Linear layer: "
        "torch.flatten(x, 1) or x.view(x.size(0), -1)"),
}
_SUPPORTED_OPS = (
    "supported operations: Conv2d / F.conv2d (kernel 1-7, stride 1-2, zero padding 0-3, no "
    "dilation or groups), Linear / F.linear, BatchNorm directly after either (folded), ReLU / "
    "F.relu directly after either, MaxPool2d / AvgPool2d and their functional forms (square "
    "window 2-3, stride 1-3, no padding), flatten / view(n, -1) before a Linear, Dropout "
    "(ignored), a final softmax (dropped), a residual add of an earlier output and global "
    "average pooling; the last layer is a Linear (the logits)")


def example_input_shape(program):
    """``(C, H, W)`` of the single image input of an ``ExportedProgram``.

    Taken from the program's example input (or, when it has none, its input's traced shape).

    Raises
    ------
    ModelError
        When the program does not take exactly one ``(N, C, H, W)`` float tensor.
    """
    inputs = [n for n in program.graph.nodes if n.op == "placeholder"
              and n.name in program.graph_signature.user_inputs]
    if len(inputs) != 1:
        raise ModelError(f"the program must take one input, the images, not {len(inputs)}")
    val = inputs[0].meta.get("val")
    example = getattr(program, "example_inputs", None)
    if example and example[0] and isinstance(example[0][0], torch.Tensor):
        val = example[0][0]
    if val is None or val.dim() != 4 or not val.is_floating_point():
        shape = None if val is None else tuple(val.shape)
        raise ModelError(f"the program's input must be float images (N, C, H, W), not {shape}")
    try:
        return tuple(int(d) for d in val.shape[1:])
    except (TypeError, ValueError, RuntimeError):
        raise ModelError("the program's input must have a fixed (C, H, W) shape") from None


def fold_batchnorm(layer, mean, var, eps, gamma=None, beta=None):
    """A copy of ``layer`` (``Conv2d`` or ``Linear``) with a BatchNorm after it folded in.

    ``y = gamma * (layer(x) - mean) / sqrt(var + eps) + beta`` per output channel (the running
    statistics: eval mode) becomes one layer with weights ``w * k`` and bias
    ``(b - mean) * k + beta``, ``k = gamma / sqrt(var + eps)``, computed in float64. ``gamma``
    and ``beta`` default to 1 and 0 (``affine=False``). The folded layer always has a bias.
    """
    w = layer.weight.detach().double()
    cout = w.shape[0]
    b = (layer.bias.detach().double() if layer.bias is not None
         else torch.zeros(cout, dtype=torch.float64))
    gamma = torch.ones(cout, dtype=torch.float64) if gamma is None else gamma.detach().double()
    beta = torch.zeros(cout, dtype=torch.float64) if beta is None else beta.detach().double()
    k = gamma / torch.sqrt(var.detach().double() + eps)
    if isinstance(layer, nn.Conv2d):
        folded = nn.Conv2d(layer.in_channels, cout, layer.kernel_size, layer.stride,
                           layer.padding, bias=True)
    else:
        folded = nn.Linear(layer.in_features, cout, bias=True)
    with torch.no_grad():
        folded.weight.copy_(w * k.reshape((cout,) + (1,) * (w.dim() - 1)))
        folded.bias.copy_((b - mean.detach().double()) * k + beta)
    return folded.eval()


def lower(model, input_shape=None):
    """Lower ``model`` to a supported ``torch.nn.Sequential`` (see the module documentation).

    Parameters
    ----------
    model : torch.nn.Module or torch.export.ExportedProgram
        A plain ``Sequential`` of the supported layers is returned as it is; any other module
        is traced by ``torch.export.export`` in eval mode (its training flags are restored
        afterwards) on a zero image batch of ``input_shape``.
    input_shape : tuple of int, optional
        ``(C, H, W)``; for a program, by default its example input's.

    Returns
    -------
    torch.nn.Sequential or models.Chain
        In eval mode, with BatchNorm folded and identities dropped; the same function as
        ``model`` in eval mode (up to float rounding of the folding). A `models.Chain` when
        the model has residual adds.

    Raises
    ------
    ModelError
        Naming the unsupported operation, where it is in ``model`` and the nearest supported
        rewrite; or when ``torch.export`` cannot trace the model.
    """
    if isinstance(model, torch.export.ExportedProgram):
        program = model
        shape = example_input_shape(program)
        if input_shape is not None and tuple(input_shape) != shape:
            raise ModelError(f"input shape must be the program's example input's {shape}, "
                             f"not {tuple(input_shape)}")
    elif isinstance(model, nn.Module):
        if input_shape is None:
            raise ModelError("pass input_shape=(C, H, W) to trace a torch.nn.Module")
        shape = tuple(input_shape)
        if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ModelError(f"input shape must be (C, H, W) of positive integers, not "
                             f"{shape!r}")
        if isinstance(model, nn.Sequential) and all(type(m) in _PLAIN for m in model):
            return model        # the trainer's models, and what lower returns
        program = _export(model, shape)
    else:
        raise ModelError(f"model must be a torch.nn.Module or a torch.export.ExportedProgram, "
                         f"not {type(model).__name__}")
    layers, where = _Walker(program).walk()
    chain = any(type(m) in (models.Add, models.Branch) for m in layers)
    seq = (models.Chain if chain else nn.Sequential)(*layers).eval()
    models.check_supported(seq, shape, where=where)
    return seq


def _export(model, shape):
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return torch.export.export(model, (torch.zeros((1,) + shape),))
    except Exception as e:  # torch.export raises many kinds (user, unsupported, runtime) errors
        first = _plain(str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"torch.export could not trace the model ({type(e).__name__}: "
                         f"{first}); its forward must run on a (1, {', '.join(map(str, shape))}) "
                         "image batch without data-dependent control flow") from None
    finally:
        for m, training in flags.items():
            m.training = training


def _plain(text):
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _op_name(node):
    target = node.target
    if hasattr(target, "overloadpacket"):          # an ATen operator overload
        return target.overloadpacket.__name__
    return getattr(target, "__name__", str(target))


def _where(node):
    """``module 'a.b' (Conv2d), model.py:12 `x = self.b(x)``` from what torch.export recorded."""
    parts = []
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        if path and not path.startswith("_"):       # not torch's own placeholder entries
            parts.append(f"module '{path}' ({cls.rsplit('.', 1)[-1]})")
    frames = re.findall(r'File "([^"]+)", line (\d+), in \S+\n +(.*)',
                        node.meta.get("stack_trace") or "")
    user = [f for f in frames if not os.path.abspath(f[0]).startswith(_NOT_USER)]
    if user:
        file, line, code = user[-1]
        parts.append(f"{os.path.basename(file)}:{line} `{code.strip()}`")
    return ", ".join(parts) or f"graph node {node.name}"


def _is_tensor(node):
    """Whether ``node`` computes a tensor (or several), not a size or a check."""
    return isinstance(node.meta.get("val"), torch.Tensor | tuple | list)


_SOFTMAX = (_aten.softmax.int, _aten._softmax.default, _aten.log_softmax.int,
            _aten._log_softmax.default)
_IDENTITIES = (_aten.dropout.default, _aten.dropout_.default, _aten.feature_dropout.default,
               _aten.alpha_dropout.default, _aten.feature_alpha_dropout.default,
               _aten.clone.default, _aten.contiguous.default, _aten.alias.default,
               _aten.detach.default, _aten.detach_.default)


class _Walker:
    """Walks an ExportedProgram's graph in order, keeping the chain's last activation."""

    def __init__(self, program):
        self.program = program
        sig = program.graph_signature
        self.values = {}
        names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                 **sig.inputs_to_lifted_tensor_constants}
        state = {**program.state_dict, **program.constants}
        self.user_inputs = set(sig.user_inputs)
        self.user_outputs = list(sig.user_outputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in names:
                self.values[node] = state[names[node.name]]
        self.layers, self.where = [], []
        self.current = None         # the chain's last activation node
        self.tail = None            # index of the Conv2d / Linear a BatchNorm may fold into
        self.relu_ok = False        # whether a ReLU may follow (a Conv2d, Linear or Add)
        self.index = {}             # activation node -> the lowered layer whose output it is

    # -- helpers --------------------------------------------------------------------------

    def fail(self, node, problem, rewrite=None):
        op = _op_name(node)
        rewrite = rewrite or _REWRITES.get(op) or _SUPPORTED_OPS
        raise ModelError(f"{op} at {_where(node)}: {problem}; {rewrite}")

    def const(self, node, arg, what):
        if arg is None:
            return None
        if isinstance(arg, torch.fx.Node):
            if arg not in self.values:
                self.fail(node, f"its {what} must be a constant (a parameter or buffer), not "
                                f"computed from the input")
            return self.values[arg]
        return arg

    def emit(self, node, layer, *, tail=False, relu_ok=None):
        self.layers.append(layer.eval())
        self.where.append(_where(node))
        self.tail = len(self.layers) - 1 if tail else None
        self.relu_ok = tail if relu_ok is None else relu_ok

    def forget(self, i):
        """Layer ``i``'s output is replaced (by a folded BatchNorm or a fused ReLU): the nodes
        that named it no longer have a value an `Add` could read."""
        self.index = {n: j for n, j in self.index.items() if j != i}

    @staticmethod
    def shape(node):
        val = node.meta.get("val")
        return tuple(val.shape) if isinstance(val, torch.Tensor) else None

    # -- the walk -------------------------------------------------------------------------

    def walk(self):
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                if node.name in self.user_inputs:
                    self.current = node
                    self.index[node] = -1
                continue
            if node.op == "output":
                self.finish(node)
                continue
            if node.op != "call_function":
                self.fail(node, f"graph operation {node.op} is not supported")
            if not _is_tensor(node):
                continue        # shape arithmetic and checks of a dynamic batch size
            inputs = [a for a in node.all_input_nodes]
            if all(a in self.values for a in inputs):
                self.fold_constant(node)
                continue
            acts = [a for a in inputs if a not in self.values and _is_tensor(a)]
            if not acts:
                self.fail(node, "a tensor computed from the input's size is not supported")
            if node.target in (_aten.add.Tensor, _aten.add_.Tensor):
                self.add(node)
                self.advance(node)
                continue
            if len(acts) > 1:
                self.fail(node, f"it combines {len(acts)} activations "
                                f"({', '.join(a.name for a in acts)})")
            if acts[0] is not self.current:
                self.branch(node, acts[0])
            self.step(node)
        return self.layers, self.where

    def fold_constant(self, node):
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: self.values[n])
        with torch.no_grad():
            self.values[node] = node.target(*args, **kwargs)

    def finish(self, node):
        outs = []
        torch.fx.node.map_arg(node.args[0], outs.append)
        outs = [a for a in outs if a.name in self.user_outputs]
        if len(outs) != 1 or outs[0] is not self.current:
            self.fail(node, f"the model must return one tensor, the logits, not {len(outs)}",
                      "return the last Linear layer's output")

    def advance(self, node):
        self.current = node
        if node not in self.index:
            self.index[node] = len(self.layers) - 1

    def step(self, node):
        t = node.target
        a = list(node.args)
        kw = node.kwargs
        if t is operator.getitem:
            if a[1] != 0:
                self.fail(node, f"only the first result of {a[0].name} can be used, not "
                                f"result {a[1]}")
        elif t in (_aten.conv2d.default, _aten.conv2d.padding, _aten.convolution.default):
            self.conv(node, a)
        elif t is _aten.linear.default:
            self.linear(node, self.const(node, a[1], "weight"),
                        self.const(node, a[2] if len(a) > 2 else kw.get("bias"), "bias"))
        elif t in (_aten.addmm.default, _aten.mm.default):
            bias, x, w = (a[0], a[1], a[2]) if t is _aten.addmm.default else (None, a[0], a[1])
            if x is not self.current or (len(a) > 3 or kw):
                self.fail(node, "only x @ W + b with constant W and b is a linear layer")
            self.linear(node, self.const(node, w, "weight").t(), self.const(node, bias, "bias"))
        elif t in (_aten.batch_norm.default,
                   _aten._native_batch_norm_legit_no_training.default):
            self.batchnorm(node, a)
        elif t in (_aten.relu.default, _aten.relu_.default):
            self.relu(node)
        elif t in (_aten.clamp.default, _aten.clamp_min.default, _aten.clamp_.default):
            lo = a[1] if len(a) > 1 else kw.get("min")
            hi = a[2] if len(a) > 2 else kw.get("max")
            if lo != 0 or hi is not None:
                self.fail(node, f"only clamp(min=0) (a ReLU) is supported, not min={lo} "
                                f"max={hi}", _ACTIVATION)
            self.relu(node)
        elif t in (_aten.max_pool2d.default, _aten.max_pool2d_with_indices.default):
            self.pool(node, nn.MaxPool2d, a, ["kernel_size", "stride", "padding", "dilation",
                                              "ceil_mode"])
        elif t is _aten.avg_pool2d.default:
            self.pool(node, nn.AvgPool2d, a, ["kernel_size", "stride", "padding", "ceil_mode",
                                              "count_include_pad", "divisor_override"])
        elif t in (_aten.adaptive_avg_pool2d.default, _aten._adaptive_avg_pool2d.default,
                   _aten.adaptive_max_pool2d.default):
            self.adaptive(node, nn.AvgPool2d if "avg" in str(t) else nn.MaxPool2d, a[1])
        elif t in (_aten.mean.dim, _aten.mean.default):
            self.mean(node, a, kw)
        elif t in (_aten.flatten.using_ints, _aten.view.default, _aten.reshape.default,
                   _aten._unsafe_view.default):
            self.flatten(node)
        elif t in _SOFTMAX:
            if not self.final_softmax(node):
                self.fail(node, "not supported")
        elif t not in _IDENTITIES:
            self.fail(node, "not supported")
        self.advance(node)

    # -- operations -----------------------------------------------------------------------

    def final_softmax(self, node):
        """Whether ``node`` is a softmax or log-softmax over the classes whose result is the
        model's output: it keeps the argmax, so the logits before it stand for it."""
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        shape = self.shape(node.args[0])
        return (shape is not None and len(shape) == 2 and dim in (1, -1)
                and [u.op for u in node.users] == ["output"])

    def conv(self, node, a):
        names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
        if node.target is _aten.convolution.default:
            names = names[:6] + ["transposed", "output_padding", "groups"]
        args = {**dict(zip(names, a)), **node.kwargs}
        if args.get("transposed"):
            self.fail(node, "a transposed convolution is not supported",
                      _REWRITES["conv_transpose2d"])
        w = self.const(node, args["weight"], "weight")
        b = self.const(node, args.get("bias"), "bias")
        if w.dim() != 4:
            self.fail(node, f"weights must be 4-D (a 2-D convolution), not {tuple(w.shape)}",
                      _REWRITES["conv1d"])
        groups = int(args.get("groups", 1))
        cin = w.shape[1] * groups
        if groups != 1:
            kind = "depthwise" if groups == cin else "grouped"
            self.fail(node, f"a {kind} convolution (groups={groups}) is not supported",
                      "use groups=1 (a full convolution; for a depthwise-separable block, one "
                      "full 3x3 convolution in place of the depthwise and pointwise pair)")
        dilation = _pair(args.get("dilation", 1))
        if dilation != (1, 1):
            k = w.shape[2]
            self.fail(node, f"a dilated convolution (dilation={dilation}) is not supported",
                      f"use dilation=1: a {k}x{k} kernel dilated by {dilation[0]} covers "
                      f"{dilation[0] * (k - 1) + 1}x{dilation[0] * (k - 1) + 1}, which a "
                      "stride or an extra convolution or pooling covers too")
        padding = args.get("padding", 0)
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same" and all(k % 2 for k in w.shape[2:]) \
                    and w.shape[2] == w.shape[3]:
                padding = w.shape[2] // 2
            else:
                self.fail(node, f"padding={padding!r} with a {tuple(w.shape[2:])} kernel is not "
                                "supported", "use an integer zero padding, the same both ways")
        layer = nn.Conv2d(cin, w.shape[0], tuple(w.shape[2:]), _pair(args.get("stride", 1)),
                          _pair(padding), bias=b is not None)
        with torch.no_grad():
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
        self.emit(node, layer, tail=True)

    def linear(self, node, w, b):
        layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
        self.emit(node, layer, tail=True)

    def batchnorm(self, node, a):
        if self.tail is None:
            self.fail(node, "a BatchNorm must directly follow a Conv2d or Linear layer (it is "
                            "folded into that layer's weights and bias)",
                      "move it directly after a Conv2d or Linear, or remove it")
        gamma, beta, mean, var = (self.const(node, x, n) for x, n in zip(
            a[1:5], ("weight", "bias", "running_mean", "running_var")))
        if mean is None or var is None:
            self.fail(node, "a BatchNorm without running statistics "
                            "(track_running_stats=False) cannot be folded",
                      "use track_running_stats=True")
        eps = a[7] if node.target is _aten.batch_norm.default else a[6]
        self.forget(self.tail)
        self.layers[-1] = fold_batchnorm(self.layers[-1], mean, var, float(eps), gamma, beta)
        self.where[-1] += f" + {_where(node)}"

    def relu(self, node):
        if not self.relu_ok:
            self.fail(node, "a ReLU must directly follow a Conv2d, Linear or residual add (the "
                            "hardware fuses it there)",
                      "move the ReLU before the pooling (for max pooling the result is the "
                      "same) or after a Conv2d or Linear")
        self.forget(len(self.layers) - 1)
        self.emit(node, nn.ReLU())

    def branch(self, node, src):
        """``node`` computes on an earlier result ``src``: a new branch starts there (a
        projection shortcut, say); an `Add` must join it to the other."""
        if src not in self.index:
            self.fail(node, f"it takes {src.name}, a Conv2d or Linear output before the "
                            "BatchNorm or ReLU that follows it, which the lowering does not keep",
                      "branch from the output after its BatchNorm and ReLU")
        self.emit(node, models.Branch(self.index[src]))
        self.where[-1] = f"the branch into {_where(node)}"
        self.current = src

    def add(self, node):
        a, kw = list(node.args), node.kwargs
        alpha = a[2] if len(a) > 2 else kw.get("alpha", 1)
        x, y = a[0], a[1]
        if not all(isinstance(v, torch.fx.Node) and v not in self.values for v in (x, y)):
            self.fail(node, "adding a constant is not supported")
        if alpha != 1:
            self.fail(node, f"a residual add must have alpha=1, not {alpha}")
        if self.current not in (x, y):
            self.fail(node, f"it adds {x.name} and {y.name}, neither of them the latest result "
                            f"{self.current.name}",
                      "add each branch's result as soon as it is computed")
        other = y if x is self.current else x
        if other not in self.index:
            self.fail(node, f"it adds {other.name}, a Conv2d or Linear output before the "
                            "BatchNorm or ReLU that follows it, which the lowering does not keep",
                      "add the output after its BatchNorm and ReLU")
        self.emit(node, models.Add(self.index[other]), relu_ok=True)

    def pool(self, node, cls, a, names):
        args = dict(zip(names, a[1:]))
        args.update(node.kwargs)
        if not args.get("stride"):
            args["stride"] = args["kernel_size"]
        if "dilation" in args:
            args["dilation"] = _one(args["dilation"])
        kernel, stride = _one(args.pop("kernel_size")), _one(args.pop("stride"))
        args["padding"] = _one(args.get("padding", 0))
        shape, out = self.shape(node.args[0]), self.shape(node)
        if cls is nn.AvgPool2d and shape is not None and out is not None \
                and _pair(kernel) == tuple(shape[-2:]) and tuple(out[-2:]) == (1, 1) \
                and _pair(kernel)[0] not in (2, 3) and args["padding"] == 0:
            self.emit(node, nn.AdaptiveAvgPool2d(1))     # a window over the whole map: global
            return
        self.emit(node, cls(kernel, stride, **args))

    def adaptive(self, node, cls, size):
        shape = self.shape(node.args[0])
        out = _pair(size)
        h, w = shape[-2:]
        if (h, w) == tuple(out):
            return
        if h == w and out[0] == out[1] and out[0] and h % out[0] == 0 \
                and h // out[0] in (2, 3):
            self.emit(node, cls(h // out[0]))
            return
        if tuple(out) == (1, 1) and cls is nn.AvgPool2d:
            self.emit(node, nn.AdaptiveAvgPool2d(1))
            return
        self.fail(node, f"adaptive pooling of a {h}x{w} map to {tuple(out)} is not supported "
                        "(only when it is a 2x2 or 3x3 window)",
                  "pool with MaxPool2d or AvgPool2d (window 2-3) down to the size, then Flatten")

    def mean(self, node, a, kw):
        shape = self.shape(node.args[0])
        dims = a[1] if len(a) > 1 else kw.get("dim")
        keep = a[2] if len(a) > 2 else kw.get("keepdim", False)
        if shape is None or len(shape) != 4 or dims is None \
                or sorted(d % 4 for d in dims) != [2, 3]:
            self.fail(node, f"a mean over dimensions {dims} of {shape} is not supported (only "
                            "over H and W: global average pooling)",
                      "x.mean((2, 3)) or F.adaptive_avg_pool2d(x, 1)")
        if shape[2] == shape[3] and shape[2] in (2, 3):
            self.emit(node, nn.AvgPool2d(shape[2]))
        else:
            self.emit(node, nn.AdaptiveAvgPool2d(1))
        if not keep:
            self.emit(node, nn.Flatten())

    def flatten(self, node):
        src, dst = self.shape(node.args[0]), self.shape(node)
        if src == dst:
            return
        if src is not None and dst is not None and len(src) == 4 and len(dst) == 2 \
                and _static(dst[1]) == _static(src[1]) * _static(src[2]) * _static(src[3]):
            self.emit(node, nn.Flatten())
            return
        self.fail(node, f"reshaping {src} to {dst} is not supported",
                  _REWRITES["permute"])


def _static(d):
    try:
        return int(d)
    except (TypeError, ValueError, RuntimeError):
        return -1


def _one(v):
    """``v`` as one int when it is the same both ways, else as a pair."""
    v = _pair(v)
    return v[0] if v[0] == v[1] else v


def _pair(v):
    if isinstance(v, list | tuple):
        return tuple(v) * 2 if len(v) == 1 else tuple(v)
    return (v, v)
