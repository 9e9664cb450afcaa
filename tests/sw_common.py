"""Shared by the sw tests: the default digits model, trained and quantized once per session."""

import functools

from systolic.sw import data, models, quantize, train


@functools.cache
def digits_model():
    """``(split, float model, qnet)`` for lenet-digits with the default training, seed 0."""
    train.set_threads()
    split = data.load_digits()
    model = models.build_model("lenet-digits", seed=0)
    train.train(model, split, seed=0, progress=False, log=lambda line: None,
                **train.DEFAULTS["digits"])
    qnet = quantize.quantize(model, split.train.x[:256], input_shape=(1, 8, 8), p_max=16,
                             dataset="digits", arch="lenet-digits")
    return split, model, qnet
