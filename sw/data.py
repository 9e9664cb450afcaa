"""Data sets: scikit-learn's 8x8 digits (embedded, the default) and MNIST from IDX files.

Raw pixels stay integers. A `Dataset` holds them as uint8 ``(N, 1, H, W)`` with their
``p_max``; the float model sees ``x = p / p_max`` and the integer model sees
``arith.quantize_image(p, p_max)`` (``docs/arithmetic.md``, *The input image*).

Splits are fixed, so every run of every tool sees the same images:

* ``digits``: scikit-learn's ``load_digits`` (1,797 images, pixels 0..16), stratified 80/20
  train/test with seed 0 (1,437 train, 360 test).
* ``mnist``: IDX files in a directory the user names. With ``train-*`` and ``t10k-*`` sets the
  training set trains and the t10k set tests. With only the t10k set (the 10,000-image test
  set), or when a split is asked for, the first 8,000 t10k images train and the last 2,000 test.
"""

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import arith
from .errors import SystolicError

__all__ = [
    "DATASETS", "MNIST_SPLIT", "DataError", "Dataset", "Split", "load", "load_digits",
    "load_mnist", "read_idx",
]

DATASETS = ("digits", "mnist")
MNIST_SPLIT = 8000              #: t10k images that train when one IDX set is split
_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}   # ubyte data, 3 or 1 dimensions


class DataError(SystolicError, ValueError):
    """A data set that cannot be loaded; the message names the file and the fix."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images with their labels, pixels kept as integers.

    Parameters
    ----------
    name : str
        Data set name (``"digits"`` or ``"mnist"``), recorded in checkpoints and ``.qnet`` files.
    images : numpy.ndarray
        Raw pixels, uint8 ``(N, 1, H, W)``, in ``[0, p_max]``.
    labels : numpy.ndarray
        Class indices, int64 ``(N,)``.
    p_max : int
        Largest possible pixel value: 16 for digits, 255 for MNIST.

    Raises
    ------
    DataError
        When the arrays do not have these types and shapes.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    p_max: int

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1] != 1:
            raise DataError(
                f"images must be uint8 (N, 1, H, W), not {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise DataError(
                f"labels must have shape ({len(self.images)},), not {self.labels.shape}")
        if self.images.size and int(self.images.max()) > self.p_max:
            raise DataError(
                f"pixels must lie in [0, {self.p_max}], not up to {int(self.images.max())}")

    def __len__(self):
        return len(self.images)

    @property
    def input_shape(self):
        """``(C, H, W)`` of one image."""
        return tuple(int(d) for d in self.images.shape[1:])

    @property
    def x(self):
        """Float images ``p / p_max``, float32 ``(N, 1, H, W)``: what the float model sees."""
        return self.images.astype(np.float32) / np.float32(self.p_max)

    @property
    def q(self):
        """int8 images ``round_half_up(127 * p / p_max)``: what the integer model sees."""
        return arith.quantize_image(self.images, self.p_max)


@dataclass(frozen=True)
class Split:
    """A fixed train/test split of one data set."""

    train: Dataset
    test: Dataset


def load_digits(*, test_fraction=0.2, seed=0):
    """scikit-learn's 8x8 digits, split stratified by class.

    Parameters
    ----------
    test_fraction : float
        Fraction of the 1,797 images held out for testing.
    seed : int
        Seed of the split; the default split (0.2, seed 0) is the project's.

    Returns
    -------
    Split
        ``p_max = 16``; images ``(N, 1, 8, 8)``.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    images = digits.images.astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels)
    return Split(
        Dataset("digits", images[idx_train], labels[idx_train], 16),
        Dataset("digits", images[idx_test], labels[idx_test], 16))


def read_idx(path, kind):
    """Read one IDX file of unsigned bytes, gzipped (by content) or raw.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    kind : {"images", "labels"}
        Images must be 3-dimensional ``(N, H, W)``, labels 1-dimensional ``(N,)``.

    Returns
    -------
    numpy.ndarray
        uint8 array of the header's dimensions.

    Raises
    ------
    DataError
        When the file cannot be read, is not a valid gzip stream, has the wrong magic number
        or is shorter or longer than its header says.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{path}: gzip data is corrupt or truncated ({e}); download the file again"
            ) from None
    magic = _IDX_MAGIC[kind]
    ndim = magic & 0xFF
    if len(raw) < 4 + 4 * ndim:
        raise DataError(
            f"{path}: IDX header must be {4 + 4 * ndim} bytes, not {len(raw)}; "
            "the file is truncated, download it again")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path}: IDX magic number must be {magic:#010x} ({kind}), not {found:#010x}; "
            f"is this an MNIST {kind} file?")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path}: IDX file of dimensions {dims} must hold {expected} bytes, not {len(raw)}; "
            "the file is truncated or corrupt, download it again")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(directory, prefix, kind):
    ndim = 3 if kind == "images" else 1
    for name in (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}-idx{ndim}-ubyte.gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _read_set(directory, prefix):
    paths = {kind: _find(directory, prefix, kind) for kind in ("images", "labels")}
    missing = [f"{prefix}-{k}-idx{3 if k == 'images' else 1}-ubyte[.gz]"
               for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"{directory}: MNIST {prefix} set is incomplete: missing {', '.join(missing)}; "
            "put both the images and the labels file of a set in the directory")
    images = read_idx(paths["images"], "images")
    labels = read_idx(paths["labels"], "labels")
    if len(images) != len(labels):
        raise DataError(
            f"{paths['labels']}: label count must equal the image count {len(images)} of "
            f"{paths['images'].name}, not {len(labels)}")
    if labels.size and labels.max() > 9:
        raise DataError(
            f"{paths['labels']}: labels must lie in [0, 9], not up to {int(labels.max())}")
    return images[:, None].copy(), labels.astype(np.int64)


def load_mnist(data_dir, *, split=None):
    """MNIST from the IDX files in ``data_dir``.

    Files are named as distributed, ``{train,t10k}-images-idx3-ubyte`` and
    ``{train,t10k}-labels-idx1-ubyte``, each optionally gzipped (``.gz``).

    Parameters
    ----------
    data_dir : str or pathlib.Path
        Directory holding a t10k set, and optionally a train set.
    split : int, optional
        Split the t10k set: its first ``split`` images train, the rest test. The default is to
        use the train set when present, and otherwise to split at `MNIST_SPLIT` (8,000).

    Returns
    -------
    Split
        ``p_max = 255``; images ``(N, 1, 28, 28)``.

    Raises
    ------
    DataError
        When the directory or a file is missing or invalid (see `read_idx`), or ``split`` leaves
        no image to train or test on.
    """
    directory = Path(data_dir)
    if not directory.is_dir():
        raise DataError(
            f"MNIST directory must exist, not {str(directory)!r}; pass --data-dir with the "
            "directory holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    if _find(directory, "t10k", "images") is None and _find(directory, "t10k", "labels") is None:
        raise DataError(
            f"{directory}: no MNIST files found; the directory must hold "
            "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] (and optionally the "
            "train-* set)")
    test_images, test_labels = _read_set(directory, "t10k")
    has_train = _find(directory, "train", "images") or _find(directory, "train", "labels")
    if split is None and has_train:
        train_images, train_labels = _read_set(directory, "train")
        return Split(Dataset("mnist", train_images, train_labels, 255),
                     Dataset("mnist", test_images, test_labels, 255))
    at = MNIST_SPLIT if split is None else split
    if not 0 < at < len(test_images):
        raise DataError(
            f"MNIST split must be between 1 and {len(test_images) - 1} (the t10k set holds "
            f"{len(test_images)} images), not {at!r}")
    return Split(Dataset("mnist", test_images[:at], test_labels[:at], 255),
                 Dataset("mnist", test_images[at:], test_labels[at:], 255))


def load(name, data_dir=None):
    """Load data set ``name`` (one of `DATASETS`) with its fixed split.

    Raises
    ------
    DataError
        When ``name`` is unknown, or MNIST is asked for without ``data_dir``.
    """
    if name == "digits":
        return load_digits()
    if name == "mnist":
        if data_dir is None:
            raise DataError(
                "the mnist data set needs a directory of IDX files; pass --data-dir DIR")
        return load_mnist(data_dir)
    raise DataError(f"data set must be one of {', '.join(DATASETS)}, not {name!r}")
