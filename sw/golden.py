"""The golden model: a `QNet` run with the contract's integer primitives (`arith`), and
``systolic eval``.

The golden model *is* the arithmetic contract (``docs/arithmetic.md``): every hardware and
simulator result is compared against `run`, element by element. It computes in int64 with the
contract's range checks, batched over images.
"""

import argparse
import json
from dataclasses import dataclass

import numpy as np

from . import arith
from .qnet import ADD_SHIFT_SPREAD, Add, Branch, Conv, Flatten, GlobalAvgPool, Linear, Pool, QNet

__all__ = [
    "GoldenResult", "add_parser", "evaluate", "global_avgpool", "predict", "residual_add", "run",
    "run_layer",
]


@dataclass(eq=False)
class GoldenResult:
    """Every layer's int8 output for a batch of images.

    Members
    -------
    outputs : list of numpy.ndarray
        int8, one per layer of the `QNet`, each ``(N,) + layer output shape``.
    """

    outputs: list

    @property
    def logits(self):
        """The last layer's int8 outputs, ``(N, classes)``."""
        return self.outputs[-1]

    @property
    def predictions(self):
        """Predicted classes: the first index of the largest logit, int64 ``(N,)``."""
        return np.argmax(self.logits, axis=1)


def residual_add(x1, x2, M, s, *, relu=False):
    """The contract's residual add of two int8 tensors of the same shape.

    With ``S = max(s1, s2)``: ``clamp((((x1 * M1) << (S - s1)) + ((x2 * M2) << (S - s2))
    + 2^(S-1)) >> S, -128, 127)``, then ``max(., 0)`` when ``relu``: each operand brought to the
    output scale by its own multiplier and shift, summed, rounded once, saturated.

    Raises
    ------
    arith.ContractError
        On operands outside int8 or of different shapes, or ``M``, ``s`` outside the contract.
    """
    x1 = np.asarray(x1)
    x2 = np.asarray(x2)
    for name, x in (("first operand", x1), ("second operand", x2)):
        if x.dtype.kind not in "iu":
            raise arith.ContractError(f"residual add {name} must be an integer array, not "
                                      f"{x.dtype}")
        if x.size and (x.min() < arith.INT8_MIN or x.max() > arith.INT8_MAX):
            raise arith.ContractError(f"residual add {name} must lie in [-128, 127]")
    if x1.shape != x2.shape:
        raise arith.ContractError(f"residual add operands must have the same shape, not "
                                  f"{x1.shape} and {x2.shape}")
    (m1, m2), (s1, s2) = (int(v) for v in M), (int(v) for v in s)
    if not (0 <= m1 <= arith.M_MAX and 0 <= m2 <= arith.M_MAX):
        raise arith.ContractError(f"residual add multipliers must lie in [0, {arith.M_MAX}], "
                                  f"not {[m1, m2]}")
    if not all(arith.SHIFT_MIN <= v <= arith.SHIFT_MAX for v in (s1, s2)) \
            or abs(s1 - s2) > ADD_SHIFT_SPREAD:
        raise arith.ContractError(f"residual add shifts must lie in [{arith.SHIFT_MIN}, "
                                  f"{arith.SHIFT_MAX}] and differ by at most "
                                  f"{ADD_SHIFT_SPREAD}, not {[s1, s2]}")
    top = max(s1, s2)
    # |x * M| < 2^22, shifted by at most 16: the sum and its rounding fit 40 bits (int64 here).
    total = ((x1.astype(np.int64) * m1) << (top - s1)) + ((x2.astype(np.int64) * m2) << (top - s2))
    y = (total + (np.int64(1) << (top - 1))) >> top
    return np.clip(y, 0 if relu else arith.INT8_MIN, arith.INT8_MAX).astype(np.int8)


def global_avgpool(x):
    """Each channel's mean over its whole ``H x W`` map, rounded half up:
    ``floor((2*S + N) / (2*N))`` with ``S`` the channel's sum and ``N = H * W``.

    ``x`` is int8 ``(N, C, H, W)`` or ``(C, H, W)``; the result keeps the rank, ``H = W = 1``.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise arith.ContractError(f"activations must be an integer array, not {x.dtype}")
    if x.size and (x.min() < arith.INT8_MIN or x.max() > arith.INT8_MAX):
        raise arith.ContractError("activations must lie in [-128, 127]")
    n = x.shape[-1] * x.shape[-2]
    total = x.astype(np.int64).sum(axis=(-2, -1), keepdims=True)
    return ((2 * total + n) // (2 * n)).astype(np.int8)


def run_layer(layer, x, skip=None):
    """One layer on an int8 batch ``x`` (``(N, C, H, W)`` or ``(N, K)``); returns int8.

    ``skip`` is an `Add` layer's second operand (the output of its ``skip`` layer), or a
    `Branch` layer's output (the output of its ``src`` layer).

    Raises
    ------
    arith.ContractError
        When the input or an accumulator leaves the contract's ranges.
    """
    if isinstance(layer, Conv):
        acc = arith.conv2d_acc(x, layer.w, layer.b, stride=layer.stride, padding=layer.pad)
        return arith.requantize(acc, layer.M, layer.s, relu=layer.relu, axis=1)
    if isinstance(layer, Linear):
        acc = arith.linear_acc(x, layer.w, layer.b)
        return arith.requantize(acc, layer.M, layer.s, relu=layer.relu, axis=1)
    if isinstance(layer, Pool):
        pool = arith.maxpool2d if layer.kind == "max" else arith.avgpool2d
        return pool(x, layer.kernel, layer.stride)
    if isinstance(layer, Flatten):
        return x.reshape(len(x), -1)
    if isinstance(layer, GlobalAvgPool):
        return global_avgpool(x)
    if isinstance(layer, Add | Branch):
        if skip is None:
            raise TypeError(f"an {type(layer).__name__} layer needs its other operand")
        if isinstance(layer, Branch):
            return skip
        return residual_add(x, skip, layer.M, layer.s, relu=layer.relu)
    raise TypeError(f"layer must be a Conv, Linear, Pool, GlobalAvgPool, Add, Branch or "
                    f"Flatten, not "
                    f"{type(layer).__name__}")


def run(qnet: QNet, images):
    """Run the network on int8 images.

    Parameters
    ----------
    qnet : QNet
        The network; checked against the contract first.
    images : numpy.ndarray
        int8 ``(N,) + qnet.input_shape``, from ``arith.quantize_image`` (or `data.Dataset.q`).

    Returns
    -------
    GoldenResult

    Raises
    ------
    arith.ContractError
        When the images have the wrong dtype or shape, or a parameter is outside the contract.
    """
    images = np.asarray(images)
    expected = (len(images),) + tuple(qnet.input_shape)
    if images.dtype != np.int8 or images.shape != expected:
        raise arith.ContractError(
            f"images must be int8 {expected}, not {images.dtype} {images.shape}")
    qnet.check()
    outputs, x = [], images
    for layer in qnet.layers:
        skip = None
        if isinstance(layer, Add | Branch):
            src = layer.skip if isinstance(layer, Add) else layer.src
            skip = images if src == -1 else outputs[src]
        x = run_layer(layer, x, skip)
        outputs.append(x)
    return GoldenResult(outputs)


def predict(qnet, images):
    """Predicted classes of int8 ``images`` (see `run`)."""
    return run(qnet, images).predictions


def evaluate(qnet, dataset, float_model):
    """Float and int8 top-1 accuracy and agreement on a `data.Dataset`, as a JSON-ready dict."""
    from . import train

    float_pred = train.logits(float_model, dataset.x).argmax(dim=1).numpy()
    int8_pred = predict(qnet, dataset.q)
    n = len(dataset)
    counts = {"float_correct": int(np.sum(float_pred == dataset.labels)),
              "int8_correct": int(np.sum(int8_pred == dataset.labels)),
              "agree": int(np.sum(float_pred == int8_pred))}
    return {"dataset": dataset.name, "images": n,
            "float_accuracy": counts["float_correct"] / n,
            "int8_accuracy": counts["int8_correct"] / n,
            "agreement": counts["agree"] / n, **counts}


def _run(args):
    from . import data, train
    from .errors import SystolicError

    train.set_threads()
    qnet = QNet.load(args.qnet)
    name = args.dataset or qnet.dataset
    test = data.load(name, args.data_dir).test
    if test.input_shape != tuple(qnet.input_shape) or test.p_max != qnet.p_max:
        raise SystolicError(
            f"{args.qnet}: network input must match the {name} images, not {qnet.input_shape} "
            f"with p_max {qnet.p_max} against {test.input_shape} with p_max {test.p_max}")
    model = train.load_checkpoint(args.model).model if args.model else qnet.float_model()
    result = evaluate(qnet, test, model)
    if args.json:
        print(json.dumps(result))
    else:
        n = result["images"]
        print(f"{args.qnet} on the {name} test split ({n} images):")
        print(f"  float accuracy  {result['float_accuracy']:7.2%}  ({result['float_correct']}/{n})")
        print(f"  int8 accuracy   {result['int8_accuracy']:7.2%}  ({result['int8_correct']}/{n})")
        print(f"  top-1 agreement {result['agreement']:7.2%}  ({result['agree']}/{n})")


def add_parser(subparsers):
    """Register ``systolic eval``."""
    p = subparsers.add_parser(
        "eval", help="float and int8 (golden model) accuracy of a .qnet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a .qnet on its data set's test split: the float accuracy (from "
                    "the float weights the .qnet stores, or from --model), the int8 accuracy "
                    "of the golden model (the bit-exact arithmetic contract the hardware "
                    "implements) and how often the two agree on the top-1 class.",
        epilog="examples:\n"
               "  systolic eval model.qnet\n"
               "  systolic eval model.qnet --json\n"
               "  systolic eval lenet5.qnet --data-dir data/mnist\n"
               "  systolic eval model.qnet --model model.pt    # float weights from a checkpoint")
    p.add_argument("qnet", metavar="FILE.qnet", help="quantized network")
    p.add_argument("--dataset", choices=("digits", "mnist"),
                   help="data set (default: the one the network was trained on)")
    p.add_argument("--data-dir", metavar="DIR", help="directory of MNIST IDX files")
    p.add_argument("--model", metavar="FILE.pt",
                   help="float checkpoint to compare with (default: the float weights stored "
                        "in the .qnet)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: float_accuracy, int8_accuracy, agreement "
                        "(fractions), images, float_correct, int8_correct, agree")
    p.set_defaults(func=_run)
