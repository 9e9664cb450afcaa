"""Float training (mini-batch SGD with momentum, seeded) and ``.pt`` checkpoints.

Training is reproducible: the initial weights come from `models.build_model` with a seed, and
the data order from a `torch.Generator` seeded with the same seed.

A checkpoint is a plain dict, loadable with ``torch.load(path, weights_only=True)``::

    {"format": "systolic.checkpoint", "version": 1,
     "arch": "lenet-digits" | "custom", "spec": [layer dicts, see models.model_spec],
     "input_shape": [C, H, W], "dataset": "digits" | "mnist", "p_max": 16 | 255,
     "state_dict": {name: float tensor}}

The model is rebuilt from ``spec``, so custom `torch.nn.Sequential` models round-trip too.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tqdm
from torch import nn

from . import data as data_mod
from . import models
from .errors import SystolicError

__all__ = [
    "DEFAULTS", "Checkpoint", "CheckpointError", "EpochStats", "accuracy", "add_parser",
    "load_checkpoint", "logits", "save_checkpoint", "set_threads", "train",
]

CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "systolic.checkpoint", 1

#: Training defaults per data set: ``epochs``, ``batch_size``, ``lr``, ``momentum``,
#: ``weight_decay``.
DEFAULTS = {
    "digits": {"epochs": 20, "batch_size": 32, "lr": 0.05, "momentum": 0.9,
               "weight_decay": 1e-4},
    "mnist": {"epochs": 10, "batch_size": 64, "lr": 0.05, "momentum": 0.9,
              "weight_decay": 1e-4},
}


class CheckpointError(SystolicError, ValueError):
    """A ``.pt`` checkpoint that cannot be read; the message names the file."""


@dataclass(frozen=True)
class EpochStats:
    """One epoch's mean training loss and train/test accuracies (fractions)."""

    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float


@dataclass
class Checkpoint:
    """A trained float model and what it was trained on."""

    model: nn.Sequential
    arch: str
    input_shape: tuple
    dataset: str
    p_max: int


def set_threads():
    """Use one CPU thread: these models are so small that more threads only add overhead (and
    on a busy machine, several times the run time)."""
    torch.set_num_threads(1)


def logits(model, x, *, batch_size=1024):
    """Float logits of ``model`` on float images ``x`` (numpy or tensor), in eval mode."""
    model.eval()
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(model, dataset):
    """Top-1 accuracy (a fraction) of the float ``model`` on a `data.Dataset`."""
    pred = logits(model, dataset.x).argmax(dim=1).numpy()
    return float(np.mean(pred == dataset.labels))


def train(model, split, *, epochs, batch_size, lr, momentum, weight_decay, seed=0,
          forward=None, progress=None, log=print):
    """Train ``model`` in place with mini-batch SGD with momentum and cross-entropy loss.

    Parameters
    ----------
    model : torch.nn.Sequential
        The model; initialise it with a seed (`models.build_model`) for reproducibility.
    split : data.Split
        Trains on ``split.train``; reports accuracy on both halves after every epoch.
    epochs, batch_size : int
        Passes over the training set, and images per step.
    lr, momentum, weight_decay : float
        SGD parameters; the learning rate follows a cosine schedule down to 0.
    seed : int
        Seed of the data order.
    forward : callable, optional
        ``forward(x) -> logits`` to train through instead of ``model`` (quantization-aware
        training passes a fake-quantized forward); must use ``model``'s parameters.
    progress : bool, optional
        Show a tqdm progress bar; by default only on a terminal.
    log : callable
        Called with one line of text per epoch.

    Returns
    -------
    list of EpochStats
    """
    forward = model if forward is None else forward
    x = torch.from_numpy(split.train.x)
    y = torch.from_numpy(split.train.labels)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    steps = epochs * -(-len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    loss_fn = nn.CrossEntropyLoss()
    history = []
    with tqdm.tqdm(total=steps, desc="train", unit="step", disable=None if progress is None
                   else not progress, leave=False) as bar:
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                opt.zero_grad()
                loss = loss_fn(forward(x[idx]), y[idx])
                loss.backward()
                opt.step()
                schedule.step()
                total += loss.item() * len(idx)
                bar.update()
            model.eval()
            with torch.no_grad():
                accs = [float(np.mean(
                    forward(torch.from_numpy(d.x)).argmax(dim=1).numpy() == d.labels))
                    for d in (split.train, split.test)]
            stats = EpochStats(epoch, total / len(x), *accs)
            history.append(stats)
            bar.set_postfix(loss=f"{stats.loss:.4f}", test=f"{stats.test_accuracy:.2%}")
            log(f"epoch {epoch:3d}/{epochs}: loss {stats.loss:.4f}, train accuracy "
                f"{stats.train_accuracy:.2%}, test accuracy {stats.test_accuracy:.2%}")
    return history


def save_checkpoint(path, model, *, arch, input_shape, dataset, p_max):
    """Write ``model`` and its metadata as a ``.pt`` checkpoint (see the module documentation).

    A model that is not a plain supported ``Sequential`` (BatchNorm, residual stacks) is stored
    lowered (`frontend.lower`: BatchNorm folded, as quantization sees it).

    Raises
    ------
    models.ModelError
        When the model is not supported by the accelerator.
    CheckpointError
        When the directory of ``path`` does not exist.
    """
    from . import frontend

    model = frontend.lower(model, tuple(input_shape))     # BatchNorm folded, as quantize sees it
    spec = models.model_spec(model, input_shape)
    if not Path(path).parent.is_dir():
        raise CheckpointError(f"{path}: directory {str(Path(path).parent)!r} must exist")
    torch.save({
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": arch, "spec": spec,
        "input_shape": list(input_shape), "dataset": dataset, "p_max": int(p_max),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }, path)


def load_checkpoint(path):
    """Read a checkpoint written by `save_checkpoint` and rebuild its model (in eval mode).

    Raises
    ------
    CheckpointError
        When the file is missing, not a checkpoint (the message says what it is instead), of
        another version, describes a model the accelerator cannot run (naming the layer and what
        is supported) or is inconsistent.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found; train one with "
                              "'systolic train -o FILE.pt'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip and runtime errors for foreign files
        # torch's own text is several lines with terminal escapes and advice (weights_only=False)
        # that does not apply here: name what the file is instead.
        if "Unsupported global" in str(e):
            what = ("it holds pickled Python objects (a saved module?); save a model of your own "
                    "with torch.export.save and quantize the .pt2, or train one with "
                    "'systolic train -o FILE.pt'")
        else:
            what = "it is not a PyTorch file; train one with 'systolic train -o FILE.pt'"
        raise CheckpointError(f"{path}: not a systolic checkpoint: {what}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a systolic checkpoint; train one with "
                              "'systolic train -o FILE.pt'")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version must be {CHECKPOINT_VERSION}, not "
                              f"{ckpt.get('version')!r}; train the model again")
    try:
        shape = tuple(int(d) for d in ckpt["input_shape"])
        model = models.model_from_spec(ckpt["spec"], shape)
        model.load_state_dict(ckpt["state_dict"])
        result = Checkpoint(model.eval(), str(ckpt["arch"]), shape, str(ckpt["dataset"]),
                            int(ckpt["p_max"]))
    except models.ModelError as e:
        raise CheckpointError(f"{path}: the checkpoint's model is not supported: {e}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: checkpoint is inconsistent ({e})") from None
    return result


def _run(args):
    if not Path(args.output).parent.is_dir():
        raise CheckpointError(f"{args.output}: directory "
                              f"{str(Path(args.output).parent)!r} must exist")
    set_threads()
    split = data_mod.load(args.dataset, args.data_dir)
    arch = args.arch or next(a.name for a in models.ARCHS.values() if a.dataset == args.dataset)
    model = models.build_model(arch, seed=args.seed)
    expected = models.ARCHS[arch].input_shape
    if split.train.input_shape != expected:
        raise models.ModelError(
            f"architecture {arch} takes {expected} inputs, not the {split.train.input_shape} "
            f"images of {args.dataset}; choose --arch "
            + " or ".join(a.name for a in models.ARCHS.values() if a.dataset == args.dataset))
    hp = {k: getattr(args, k) if getattr(args, k) is not None else v
          for k, v in DEFAULTS[args.dataset].items()}
    print(f"training {arch} on {args.dataset}: {len(split.train)} train, {len(split.test)} test "
          f"images; {', '.join(f'{k} {v}' for k, v in hp.items())}, seed {args.seed}")
    history = train(model, split, seed=args.seed, **hp)
    save_checkpoint(args.output, model, arch=arch, input_shape=expected, dataset=args.dataset,
                    p_max=split.train.p_max)
    print(f"float test accuracy {history[-1].test_accuracy:.2%}; wrote {args.output}")


def add_parser(subparsers):
    """Register ``systolic train``."""
    p = subparsers.add_parser(
        "train", help="train a float ConvNet and save a .pt checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a float ConvNet with seeded mini-batch SGD with momentum (cosine "
                    "learning rate) and save a .pt checkpoint for 'systolic quantize'. Runs "
                    "are reproducible: the same seed gives the same weights.",
        epilog="examples:\n"
               "  systolic train -o model.pt                   # lenet-digits on digits\n"
               "  systolic train --epochs 50 --seed 1 -o model.pt\n"
               "  systolic train --dataset mnist --data-dir data/mnist -o lenet5.pt\n"
               "\ndata sets: digits (scikit-learn 8x8, built in); mnist (IDX files in "
               "--data-dir; a lone t10k set\nis split: first 8,000 images train, last 2,000 "
               "test)\narchitectures:\n" + "\n".join(
                   f"  {a.name:16s}{a.input_shape} for {a.dataset}: {a.description}"
                   for a in models.ARCHS.values()))
    p.add_argument("-o", "--output", required=True, metavar="FILE.pt",
                   help="checkpoint to write")
    p.add_argument("--dataset", choices=data_mod.DATASETS, default="digits",
                   help="data set (default: digits)")
    p.add_argument("--data-dir", metavar="DIR", help="directory of MNIST IDX files")
    p.add_argument("--arch", choices=list(models.ARCHS),
                   help="architecture (default: lenet-digits for digits, lenet5 for mnist)")
    p.add_argument("--epochs", type=int, help="passes over the training set "
                   "(default: 20 for digits, 10 for mnist)")
    p.add_argument("--batch-size", type=int, help="images per step (default: 32 / 64)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: 0.05)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay (default: 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data order "
                   "(default: 0)")
    p.set_defaults(func=_run)
