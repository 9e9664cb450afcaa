"""Post-training quantization (and optional quantization-aware fine-tuning) to a `QNet`.

Per the arithmetic contract (``docs/arithmetic.md``):

* the input scale is ``1 / 127`` (``arith.quantize_image``);
* calibration runs the float model on training images and records, per requantized tensor (the
  output of every Conv2d / Linear, after its ReLU when one follows), ``amax = max |activation|``;
  the output scale is ``amax / 127`` (ReLU outputs use [0, 127]);
* weights are symmetric int8 per output channel: ``s_w[c] = max |w[c]| / 127``,
  ``w_q = round(w / s_w)``; the bias is ``b_q = round(b / (s_in * s_w))`` in int32;
* ``(M, s) = arith.choose_multiplier(s_in * s_w / s_out)``; ReLU is fused into the preceding
  layer; pooling and flattening keep the scale;
* a residual add's output scale is calibrated as a layer's; each operand gets its own
  ``(M, s)`` (`add_multipliers`).

Any traceable model is first lowered to that layer chain by `frontend.lower` (BatchNorm folded
into the layer before it, functional forms and identities resolved).

``round`` is round-half-up throughout. `fake_quant_forward` is the float64 PyTorch rendering of a
`QNet` with the real multipliers, which the tests hold the golden model against.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import arith, frontend, models
from .qnet import (
    ADD_SHIFT_SPREAD,
    Add,
    Branch,
    Conv,
    Flatten,
    GlobalAvgPool,
    Linear,
    Pool,
    QNet,
)

__all__ = [
    "add_multipliers", "add_parser", "calibrate", "fake_quant_forward", "fake_quant_layer",
    "load_program", "qat_finetune", "quantize",
]


def _requantized(model):
    """Indices of the Conv2d / Linear / Add layers and of the tensor each one's output scale
    uses."""
    out = []
    for i, layer in enumerate(model):
        if type(layer) in (nn.Conv2d, nn.Linear, models.Add):
            relu = i + 1 < len(model) and type(model[i + 1]) is nn.ReLU
            out.append((i, i + 1 if relu else i, relu))
    return out


def calibrate(model, x, *, batch_size=256):
    """Per-layer ``max |output|`` of the float ``model`` on float images ``x``.

    Returns
    -------
    list of float
        One entry per layer of ``model``: the largest absolute value of its output.
    """
    from tqdm import tqdm

    model.eval()
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    amax = [0.0] * len(model)
    with torch.no_grad():
        # A progress bar on a terminal only (standard error), gone when done.
        for start in tqdm(range(0, len(x), batch_size), desc="calibrating", unit="batch",
                          leave=False, disable=None, file=sys.stderr):
            outputs = models.run_layers(model, x[start:start + batch_size])
            for i, h in enumerate(outputs):
                amax[i] = max(amax[i], float(h.abs().max()))
    return amax


def _round(v):
    return np.floor(v + 0.5)


def _quantize_layer(layer, name, s_in, amax, relu):
    w = layer.weight.detach().double().numpy()
    cout = w.shape[0]
    b = (layer.bias.detach().double().numpy() if layer.bias is not None else np.zeros(cout))
    w_max = np.abs(w.reshape(cout, -1)).max(axis=1)
    w_scale = np.where(w_max > 0, w_max / arith.WEIGHT_MAX, 1.0)
    w_q = _round(w / w_scale.reshape((cout,) + (1,) * (w.ndim - 1)))
    b_q = _round(b / (s_in * w_scale))
    big = np.flatnonzero(np.abs(b_q) > arith.ACC_MAX)
    if big.size:
        c = int(big[0])
        raise arith.ContractError(
            f"{name}: bias of output channel {c} must fit int32 once quantized, not "
            f"{b_q[c]:.4g}; its weights are too small for its bias (retrain with weight decay)")
    out_scale = amax / arith.INT8_MAX if amax > 0 else s_in
    try:
        M, s = arith.choose_multiplier(s_in * w_scale / out_scale)
    except arith.ContractError as e:
        raise arith.ContractError(f"{name}: {e}") from None
    arith.check_layer_params(w_q.astype(np.int64), b_q.astype(np.int64), M, s, layer=name)
    params = dict(w=w_q.astype(np.int8), b=b_q.astype(np.int32), M=M.astype(np.uint16),
                  s=s.astype(np.uint8), relu=relu, out_scale=float(out_scale), w_scale=w_scale)
    if isinstance(layer, nn.Conv2d):
        return Conv(stride=layer.stride[0], pad=layer.padding[0], **params)
    return Linear(**params)


def quantize(model, calib_x, *, input_shape=None, p_max, dataset, arch="custom"):
    """Quantize a trained float model to a `QNet` (see the module documentation).

    Parameters
    ----------
    model : torch.nn.Module or torch.export.ExportedProgram
        A supported ``torch.nn.Sequential`` (`models.check_supported`), or any model
        ``torch.export`` traces into supported operations (`frontend.lower`: BatchNorm after a
        Conv2d or Linear is folded into it, with its running statistics).
    calib_x : array_like
        Float calibration images ``p / p_max``, ``(N,) + input_shape``.
    input_shape : tuple of int
        ``(C, H, W)``; for a program, by default its example input's.
    p_max : int
        Largest raw pixel value.
    dataset, arch : str
        Recorded in the `QNet`.

    Returns
    -------
    QNet
        With the float model's spec and state stored alongside (the lowered ``Sequential``,
        BatchNorm folded).

    Raises
    ------
    models.ModelError
        When the model is not supported, naming the layer or operation, where it is in the
        model and what to use instead.
    arith.ContractError
        When a layer's integer parameters would leave the contract (overflowing bias or
        accumulator, unrepresentable multiplier), naming the layer and channel.
    """
    if input_shape is None and isinstance(model, torch.export.ExportedProgram):
        input_shape = frontend.example_input_shape(model)
    model = frontend.lower(model, input_shape)
    spec = models.model_spec(model, input_shape)
    amax = calibrate(model, calib_x)
    requant = {i: (j, relu) for i, j, relu in _requantized(model)}
    layers, s_in = [], 1 / arith.INT8_MAX
    index = []                  # the QNet layer whose output each float layer's output is
    scales = []                 # the scale of each QNet layer's output
    for i, layer in enumerate(model):
        name = f"layer {i} ({layer!r})"
        if i in requant and type(layer) is models.Add:
            j, relu = requant[i]
            skip = -1 if layer.skip == -1 else index[layer.skip]
            s_skip = 1 / arith.INT8_MAX if skip == -1 else scales[skip]
            out_scale = amax[j] / arith.INT8_MAX if amax[j] > 0 else s_in
            try:
                M, s = add_multipliers(s_in / out_scale, s_skip / out_scale)
            except arith.ContractError as e:
                raise arith.ContractError(f"{name}: {e}") from None
            layers.append(Add(skip, M, s, relu, float(out_scale)))
            s_in = out_scale
        elif i in requant:
            j, relu = requant[i]
            q = _quantize_layer(layer, name, s_in, amax[j], relu)
            s_in = q.out_scale
            layers.append(q)
        elif type(layer) in (nn.MaxPool2d, nn.AvgPool2d):
            layers.append(Pool("max" if type(layer) is nn.MaxPool2d else "avg",
                               spec[i]["kernel_size"], spec[i]["stride"]))
        elif type(layer) is nn.AdaptiveAvgPool2d:
            layers.append(GlobalAvgPool())
        elif type(layer) is models.Branch:
            src = -1 if layer.src == -1 else index[layer.src]
            layers.append(Branch(src))
            s_in = 1 / arith.INT8_MAX if src == -1 else scales[src]
        elif type(layer) is nn.Flatten:
            layers.append(Flatten())
        index.append(len(layers) - 1)
        scales[len(scales):] = [s_in] * (len(layers) - len(scales))
    state = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
    qnet = QNet(layers, tuple(input_shape), int(p_max), dataset, arch, 1 / arith.INT8_MAX,
                spec, state)
    qnet.check()
    return qnet


def fake_quant_layer(layer, x, m, skip=None):
    """One layer of the fake-quantized forward, in float64 on the integer grid.

    ``x`` is an integer-valued float64 tensor (``(N, C, H, W)`` or ``(N, K)``); Conv and Linear
    layers round ``acc * m`` half up with the real multipliers ``m`` (float64 ``(Cout,)``)
    instead of the contract's ``(acc * M + 2^(s-1)) >> s``; an `Add` rounds
    ``x * m[0] + skip * m[1]`` half up; pooling follows the contract.
    Returns an integer-valued float64 tensor.
    """
    if isinstance(layer, Branch):
        return skip
    if isinstance(layer, Add):
        y = torch.floor(x * float(m[0]) + skip * float(m[1]) + 0.5)
        return y.clamp(0 if layer.relu else arith.INT8_MIN, arith.INT8_MAX)
    if isinstance(layer, GlobalAvgPool):
        return torch.floor(x.mean(dim=(2, 3), keepdim=True) + 0.5)
    if isinstance(layer, Conv | Linear):
        w = torch.from_numpy(layer.w.astype(np.float64))
        b = torch.from_numpy(layer.b.astype(np.float64))
        if isinstance(layer, Conv):
            acc = F.conv2d(x, w, b, stride=layer.stride, padding=layer.pad)
            m = torch.as_tensor(m, dtype=torch.float64).reshape(1, -1, 1, 1)
        else:
            acc = F.linear(x, w, b)
            m = torch.as_tensor(m, dtype=torch.float64).reshape(1, -1)
        y = torch.floor(acc * m + 0.5).clamp(0 if layer.relu else arith.INT8_MIN, arith.INT8_MAX)
        return y
    if isinstance(layer, Pool):
        if layer.kind == "max":
            return F.max_pool2d(x, layer.kernel, layer.stride)
        return torch.floor(F.avg_pool2d(x, layer.kernel, layer.stride) + 0.5)
    return x.flatten(1)


def fake_quant_forward(qnet, images):
    """The fake-quantized PyTorch forward of ``qnet`` on int8 ``images``.

    Returns
    -------
    list of torch.Tensor
        Each layer's output, integer-valued float64 (compare with `golden.run`).
    """
    x = first = torch.from_numpy(np.asarray(images).astype(np.float64))
    outputs = []
    for i, layer in enumerate(qnet.layers):
        m, skip = None, None
        if isinstance(layer, Conv | Linear):
            m = qnet.multipliers(i)
        elif isinstance(layer, Add):
            m = qnet.add_multipliers(i)
            skip = first if layer.skip == -1 else outputs[layer.skip]
        elif isinstance(layer, Branch):
            skip = first if layer.src == -1 else outputs[layer.src]
        x = fake_quant_layer(layer, x, m, skip)
        outputs.append(x)
    return outputs


def add_multipliers(m1, m2):
    """``(M, s)`` pairs of a residual add's two real multipliers, per the contract.

    Each is `arith.choose_multiplier`'s; when their shifts differ by more than
    `qnet.ADD_SHIFT_SPREAD`, the larger shift (the smaller multiplier) is brought down to the
    smaller plus the spread, ``M = round_half_up(m * 2^s)`` there (it then fits 15 bits).

    Returns
    -------
    tuple
        ``((M1, M2), (s1, s2))`` as Python ints.
    """
    M, s = arith.choose_multiplier([m1, m2])
    M, s = [int(v) for v in M], [int(v) for v in s]
    lo = min(s)
    for k in range(2):
        if s[k] > lo + ADD_SHIFT_SPREAD:
            s[k] = lo + ADD_SHIFT_SPREAD
            M[k] = int(np.floor((m1, m2)[k] * 2.0 ** s[k] + 0.5))
    return tuple(M), tuple(s)


class _FakeQuant(torch.autograd.Function):
    """Round to a grid in the forward pass; pass the gradient straight through."""

    @staticmethod
    def forward(ctx, x, scale, lo, hi):
        return torch.clamp(torch.floor(x / scale + 0.5), lo, hi) * scale

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


def _qat_forward(model, out_scales):
    """A forward through ``model`` with weights and requantized activations fake-quantized."""
    requant = {j: i for i, j, _ in _requantized(model)}

    def forward(x):
        h = first = _FakeQuant.apply(x, 1 / arith.INT8_MAX, 0, arith.INT8_MAX)
        outs = []
        for j, layer in enumerate(model):
            if type(layer) is models.Add:
                h = layer(h, first if layer.skip == -1 else outs[layer.skip])
            elif type(layer) is models.Branch:
                h = first if layer.src == -1 else outs[layer.src]
            elif type(layer) in (nn.Conv2d, nn.Linear):
                w = layer.weight
                dims = (w.shape[0],) + (1,) * (w.dim() - 1)
                scale = (w.detach().abs().reshape(w.shape[0], -1).amax(dim=1) / arith.WEIGHT_MAX)
                scale = scale.clamp_min(torch.finfo(torch.float32).tiny).reshape(dims)
                wq = _FakeQuant.apply(w, scale, -arith.WEIGHT_MAX, arith.WEIGHT_MAX)
                if type(layer) is nn.Conv2d:
                    h = F.conv2d(h, wq, layer.bias, layer.stride, layer.padding)
                else:
                    h = F.linear(h, wq, layer.bias)
            else:
                h = layer(h)
            if j in requant:
                h = _FakeQuant.apply(h, out_scales[j], arith.INT8_MIN, arith.INT8_MAX)
            outs.append(h)
        return h

    return forward


def qat_finetune(model, split, *, epochs, calib_x, lr=0.005, batch_size=32, seed=0,
                 progress=None, log=print):
    """Quantization-aware fine-tuning of ``model`` in place.

    Weights are fake-quantized per output channel and every requantized activation to its int8
    grid (scales calibrated on ``calib_x`` before fine-tuning), with a straight-through
    estimator; training is `train.train` (SGD with momentum, seeded). Quantize the model again
    afterwards with `quantize`.
    """
    from . import train

    amax = calibrate(model, calib_x)
    out_scales = {j: (amax[j] / arith.INT8_MAX if amax[j] > 0 else 1.0)
                  for _, j, _ in _requantized(model)}
    return train.train(model, split, epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9,
                       weight_decay=0.0, seed=seed, forward=_qat_forward(model, out_scales),
                       progress=progress, log=log)


def load_program(path):
    """Read a program saved with ``torch.export.save`` (a ``.pt2`` file).

    Raises
    ------
    SystolicError
        When the file is missing or is not such a program, in one line.
    """
    from .errors import SystolicError

    path = Path(path)
    if not path.is_file():
        raise SystolicError(f"{path}: file not found; save your model with "
                            "torch.export.save(torch.export.export(model, (example,)), FILE)")
    try:
        return torch.export.load(path)
    except Exception:  # torch raises zip, key, JSON and runtime errors for foreign files
        raise SystolicError(f"{path}: not a program saved by torch.export.save; save your model "
                            "with torch.export.save(torch.export.export(model, (example,)), "
                            "FILE)") from None


def _run(args):
    from . import data, train
    from .errors import SystolicError

    if args.calib < 1:
        raise SystolicError(f"--calib must be at least 1, not {args.calib}")
    if args.qat_epochs < 0:
        raise SystolicError(f"--qat-epochs must be at least 0, not {args.qat_epochs}")
    if not Path(args.output).parent.is_dir():
        raise SystolicError(f"{args.output}: directory "
                            f"{str(Path(args.output).parent)!r} must exist")
    train.set_threads()
    if Path(args.checkpoint).suffix == ".pt2":
        if args.dataset is None:
            raise SystolicError(f"{args.checkpoint}: a program needs the data set to calibrate "
                                "on; pass --dataset digits or --dataset mnist")
        program = load_program(args.checkpoint)
        input_shape = frontend.example_input_shape(program)
        dataset, arch = args.dataset, Path(args.checkpoint).stem
        split = data.load(dataset, args.data_dir)
        if split.train.input_shape != input_shape:
            raise SystolicError(
                f"{args.checkpoint}: the program's input must match the {dataset} images, not "
                f"{input_shape} against {split.train.input_shape}; export it with an example "
                f"input of shape (1, {', '.join(map(str, split.train.input_shape))})")
        model = frontend.lower(program)
        p_max = split.train.p_max
    else:
        ckpt = train.load_checkpoint(args.checkpoint)
        if args.dataset is not None and args.dataset != ckpt.dataset:
            raise SystolicError(f"{args.checkpoint}: --dataset must be the checkpoint's "
                                f"{ckpt.dataset}, not {args.dataset}")
        model, input_shape, dataset, arch, p_max = (ckpt.model, ckpt.input_shape, ckpt.dataset,
                                                    ckpt.arch, ckpt.p_max)
        split = data.load(dataset, args.data_dir)
    calib_x = split.train.x[:args.calib]
    if args.qat_epochs:
        print(f"quantization-aware fine-tuning for {args.qat_epochs} epochs")
        qat_finetune(model, split, epochs=args.qat_epochs, calib_x=calib_x, seed=args.seed)
    qnet = quantize(model, calib_x, input_shape=input_shape, p_max=p_max, dataset=dataset,
                    arch=arch)
    qnet.save(args.output)
    print(f"quantized {arch} with {len(calib_x)} calibration images; wrote {args.output}")


def add_parser(subparsers):
    """Register ``systolic quantize``."""
    p = subparsers.add_parser(
        "quantize", help="quantize a float checkpoint or exported model to an int8 .qnet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Post-training quantization per the arithmetic contract: per-channel int8 "
                    "weights, int32 biases, per-tensor int8 activations calibrated on training "
                    "images, (M, s) requantization pairs. Optionally fine-tune with "
                    "quantization-aware training first. Writes a .qnet (docs/qnet.md) that also "
                    "stores the float weights, for 'systolic eval'. Takes a checkpoint of "
                    "'systolic train', or any model saved with torch.export.save (.pt2): "
                    "BatchNorm is folded into the layer before it, and an operation the "
                    "accelerator cannot run is named with where it is and what to use instead.",
        epilog="examples:\n"
               "  systolic quantize model.pt -o model.qnet\n"
               "  systolic quantize model.pt -o model.qnet --calib 512\n"
               "  systolic quantize model.pt -o model.qnet --qat-epochs 3\n"
               "  systolic quantize lenet5.pt -o lenet5.qnet --data-dir data/mnist\n"
               "  systolic quantize mynet.pt2 --dataset digits -o mynet.qnet")
    p.add_argument("checkpoint", metavar="MODEL.pt|MODEL.pt2",
                   help="float checkpoint from 'systolic train', or a program saved with "
                        "torch.export.save (.pt2; its example input gives the input shape)")
    p.add_argument("--dataset", choices=("digits", "mnist"),
                   help="data set to calibrate on, scaled as the trainer does (p / p_max); "
                        "required for a .pt2 (default for a .pt: the checkpoint's)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.qnet", help=".qnet to write")
    p.add_argument("--calib", type=int, default=256, metavar="N",
                   help="training images to calibrate activation scales on (default: 256)")
    p.add_argument("--qat-epochs", type=int, default=0, metavar="N",
                   help="epochs of quantization-aware fine-tuning (default: 0, none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning data order")
    p.add_argument("--data-dir", metavar="DIR", help="directory of MNIST IDX files")
    p.set_defaults(func=_run)
