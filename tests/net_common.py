"""Shared by the compiler and network RTL tests: quantized networks without training."""

import functools

import numpy as np
from systolic.sw import models, quantize, train


@functools.cache
def random_qnet(arch, seed=0):
    """``arch`` (a name of `models.ARCHS`) with seeded random weights, quantized on random
    images: a valid `QNet` in a fraction of a second."""
    train.set_threads()
    a = models.ARCHS[arch]
    model = models.build_model(arch, seed=seed)
    p_max = 16 if a.dataset == "digits" else 255
    rng = np.random.default_rng(seed)
    calib = (rng.integers(0, p_max + 1, (64, *a.input_shape)) / p_max).astype(np.float32)
    return quantize.quantize(model, calib, input_shape=a.input_shape, p_max=p_max,
                             dataset=a.dataset, arch=arch)


def random_images(qnet, n, seed=1):
    """``n`` random int8 images for ``qnet`` in the contract's input range [0, 127]."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 128, (n, *qnet.input_shape)).astype(np.int8)
