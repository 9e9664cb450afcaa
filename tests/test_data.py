"""Data sets: the digits split and the MNIST IDX loader."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from systolic.sw import arith, data
from systolic.sw.data import DataError

# The real MNIST test set: where $SYSTOLIC_MNIST_DIR says (CI sets it, to ../shared's, so a
# set-up without it fails there), else beside the repository where there is one. The product
# does not depend on it, so a machine without either runs the synthetic IDX tests only.
SHARED_MNIST = Path(os.environ.get(
    "SYSTOLIC_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))


def _idx(kind, array):
    magic = 0x803 if kind == "images" else 0x801
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + \
        array.astype(np.uint8).tobytes()


def _write_set(directory, prefix, n, *, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
        blob = _idx(kind, array)
        name = f"{prefix}-{kind}-idx{ndim}-ubyte"
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (directory / name).write_bytes(blob)
    return images, labels


def test_digits_split():
    split = data.load_digits()
    assert (len(split.train), len(split.test)) == (1437, 360)
    assert split.train.images.dtype == np.uint8
    assert split.train.images.shape[1:] == (1, 8, 8)
    assert split.train.p_max == 16
    assert split.test.images.max() == 16
    per_class = np.bincount(split.train.labels) + np.bincount(split.test.labels)
    assert np.all(np.abs(np.bincount(split.test.labels) - 0.2 * per_class) < 1)   # stratified
    again = data.load_digits()
    assert np.array_equal(again.test.images, split.test.images)
    assert np.array_equal(split.test.x, split.test.images.astype(np.float32) / 16)
    assert np.array_equal(split.test.q, arith.quantize_image(split.test.images, 16))


def test_mnist_single_set_is_split(tmp_path):
    images, labels = _write_set(tmp_path, "t10k", 50, gz=False)
    split = data.load_mnist(tmp_path, split=40)
    assert np.array_equal(split.train.images[:, 0], images[:40])
    assert np.array_equal(split.test.labels, labels[40:])
    assert split.test.p_max == 255
    assert split.train.labels.dtype == np.int64


def test_mnist_train_and_test_sets(tmp_path):
    train_images, _ = _write_set(tmp_path, "train", 30, seed=1)
    test_images, _ = _write_set(tmp_path, "t10k", 20, seed=2)
    split = data.load_mnist(tmp_path)
    assert np.array_equal(split.train.images[:, 0], train_images)
    assert np.array_equal(split.test.images[:, 0], test_images)
    forced = data.load_mnist(tmp_path, split=15)
    assert np.array_equal(forced.train.images[:, 0], test_images[:15])


@pytest.mark.skipif(not SHARED_MNIST.is_dir() and "SYSTOLIC_MNIST_DIR" not in os.environ,
                    reason="no MNIST test set in ../shared and no $SYSTOLIC_MNIST_DIR")
def test_real_mnist():
    split = data.load("mnist", SHARED_MNIST)
    assert (len(split.train), len(split.test)) == (8000, 2000)
    assert split.train.images.shape[1:] == (1, 28, 28)
    assert split.train.images.max() == 255
    assert np.array_equal(np.bincount(split.train.labels, minlength=10) > 700, [True] * 10)


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match=r"^MNIST directory must exist, not '.*nowhere'; pass "
                                        r"--data-dir with the directory holding"):
        data.load_mnist(tmp_path / "nowhere")


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match=r"^.*: no MNIST files found; the directory must hold "
                                        r"t10k-images-idx3-ubyte\[\.gz\]"):
        data.load_mnist(tmp_path)


def test_missing_labels(tmp_path):
    _write_set(tmp_path, "t10k", 5)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"^.*: MNIST t10k set is incomplete: missing "
                                        r"t10k-labels-idx1-ubyte\[\.gz\]; put both"):
        data.load_mnist(tmp_path)


def test_bad_magic(tmp_path):
    _write_set(tmp_path, "t10k", 5, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\0\0\x08\x01" + path.read_bytes()[4:])
    with pytest.raises(DataError, match=r"^.*t10k-images-idx3-ubyte: IDX magic number must be "
                                        r"0x00000803 \(images\), not 0x00000801; is this an "
                                        r"MNIST images file\?$"):
        data.load_mnist(tmp_path)


def test_truncated_raw(tmp_path):
    _write_set(tmp_path, "t10k", 5, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"^.*t10k-images-idx3-ubyte: IDX file of dimensions "
                                        r"\[5, 28, 28\] must hold 3936 bytes, not 3935; the file "
                                        r"is truncated or corrupt, download it again$"):
        data.load_mnist(tmp_path)


def test_truncated_gzip(tmp_path):
    _write_set(tmp_path, "t10k", 5)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"^.*t10k-labels-idx1-ubyte\.gz: gzip data is corrupt "
                                        r"or truncated .*; download the file again$"):
        data.load_mnist(tmp_path)


def test_count_mismatch(tmp_path):
    _write_set(tmp_path, "t10k", 5, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx("labels", np.zeros(4)))
    with pytest.raises(DataError, match=r"^.*t10k-labels-idx1-ubyte: label count must equal the "
                                        r"image count 5 of t10k-images-idx3-ubyte, not 4$"):
        data.load_mnist(tmp_path)


def test_bad_split(tmp_path):
    _write_set(tmp_path, "t10k", 5)
    with pytest.raises(DataError, match=r"^MNIST split must be between 1 and 4 \(the t10k set "
                                        r"holds 5 images\), not 5$"):
        data.load_mnist(tmp_path, split=5)


def test_unknown_dataset():
    with pytest.raises(DataError, match=r"^data set must be one of digits, mnist, not 'cifar'$"):
        data.load("cifar")
    with pytest.raises(DataError, match=r"^the mnist data set needs a directory of IDX files; "
                                        r"pass --data-dir DIR$"):
        data.load("mnist")
