"""Residual networks in RTL on the fast harness: residual adds, projection shortcuts (branches)
and global average pooling on the accelerator, every logit (and, traced, every layer's output)
exact against the golden model, every layer's cycles as the performance model predicts."""

import functools

import numpy as np
import pytest
import torch
from net_common import random_images, random_qnet
from systolic.hw.boards import get_board
from systolic.hw.config import preset
from systolic.sw import golden, models, quantize, train
from systolic.sw.compiler import compile_network
from systolic.sw.simulate import simulate

pytestmark = pytest.mark.slow


@functools.cache
def small_resnet():
    """A stem, an identity stack and a projection stack (8, 16 channels) on 8x8 inputs, random
    weights, quantized on random images."""
    train.set_threads()
    torch.manual_seed(3)
    model = models.ResNet(1, [(8, 1), (16, 2)], stem=8, pool=False)
    rng = np.random.default_rng(0)
    calib = (rng.integers(0, 17, (64, 1, 8, 8)) / 16).astype(np.float32)
    return quantize.quantize(model, calib, input_shape=(1, 8, 8), p_max=16, dataset="digits",
                             arch="custom")


def _exact(report, qnet, images):
    np.testing.assert_array_equal(report.logits, golden.run(qnet, images).logits)
    assert report.mismatches == 0
    assert report.model_exact, report.layer_cycles[0].tolist()


def test_small_resnet_traced_in_batches():
    """Adds, a branch and global pooling in batches of two: every layer of every image exact
    (read back as it runs), cycles as predicted."""
    qnet = small_resnet()
    kinds = [lay.kind for lay in compile_network(qnet, preset("default")).layers]
    assert kinds.count("add") == 2
    assert "gap" in kinds
    images = random_images(qnet, 4, seed=2)
    report = simulate(qnet, images, preset("default"), trace=True, batch=2)
    _exact(report, qnet, images)
    assert report.first_difference is None


def test_mlperf_resnet8_big_preset():
    """MLPerf Tiny's ResNet-8 (32x32x3; 16, 32, 64 channels; two projection shortcuts) with
    random weights on the 12x12 preset: exact; its peak activation memory fits the 8192 words."""
    qnet = random_qnet("mlperf-resnet8")
    images = random_images(qnet, 2, seed=4)
    cfg = preset("big")
    report = simulate(qnet, images, cfg)
    _exact(report, qnet, images)
    assert report.program.act_words == 7168


def test_mlperf_resnet8_ulx3s_configuration():
    """ResNet-8 on the ULX3S's own configuration (the `wide` preset's 8x16 array, its memories;
    simulated with inferred multipliers): exact, and its live tensors fill 3,072 of the 8,192
    activation words and its weights 4,880 of the 8,192 weight words of 16 lanes (with dense
    convolutions, as the board builds it: the first layer, three channels, packs taps into a
    word; 4,976 without). Its 1x1 convolution of 16 channels walks its one word: 16 steps are
    as many as the 8 requantization lanes need with the array's snapshot of 28 PEs' sums
    (`systolic.hw.array.snapshot_pes`; 23 without, and a second kernel row of zero
    weights, `systolic.hw.isa.pad_walk`).

    The board's program runs on the preset's design: the board's configuration is the
    preset's, so the program is the board's, entry for entry and word for word."""
    qnet = random_qnet("mlperf-resnet8")
    images = random_images(qnet, 2, seed=5)
    cfg = get_board("ulx3s-85f").config().replace(target="generic")
    assert cfg == preset("wide")
    board = compile_network(qnet, cfg)
    report = simulate(qnet, images, preset("wide"))
    _exact(report, qnet, images)
    assert [lay.entries for lay in report.program.layers] == [lay.entries for lay in board.layers]
    assert (report.program.weights, report.program.params) == (board.weights, board.params)
    assert (board.act_words, cfg.act_depth) == (3072, 8192)
    assert (len(board.weights), cfg.weight_depth) == (4880, 8192)
    assert board.layers[0].fields.get("dense")
    assert [lay.fields["kh"] for lay in board.layers if "1x1" in lay.name] == [1, 1]
    assert len(compile_network(qnet, cfg.replace(dense_conv=False)).weights) == 4976


def test_small_resnet_without_averaging():
    """The element-wise engines without the averaging pooling engine (``pool_avg=False``,
    ``eltwise`` on: a knob of their own): adds, a branch and global pooling exact, cycles as
    predicted."""
    qnet = small_resnet()
    images = random_images(qnet, 2, seed=6)
    report = simulate(qnet, images, preset("default").replace(pool_avg=False))
    _exact(report, qnet, images)
    assert {"add", "gap"} <= {lay.kind for lay in report.program.layers}
