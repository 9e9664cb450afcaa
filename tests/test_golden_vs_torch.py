"""The golden model against PyTorch: the fake-quantized forward and the float model.

How fast the golden model runs is measured by ``bench/sw_speed.py``, not asserted here.
"""

import numpy as np
import pytest
import torch
from sw_common import digits_model
from systolic.sw import arith, golden, quantize, train
from systolic.sw.qnet import Conv, Linear
from torch import nn


def _custom_qnet(split):
    """An untrained model using what lenet-digits does not: stride 2, padding 0/2, avg pooling,
    rectangular inputs to pooling, hidden linear layers."""
    model = nn.Sequential(
        nn.Conv2d(1, 24, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, stride=1),
        nn.Conv2d(24, 40, 3, stride=2), nn.Conv2d(40, 8, 1), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Flatten(), nn.Linear(8, 33), nn.ReLU(), nn.Linear(33, 10))
    torch.manual_seed(7)
    for p in model.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    return quantize.quantize(model, split.train.x[:256], input_shape=(1, 8, 8), p_max=16,
                             dataset="digits")


@pytest.fixture(scope="module")
def qnets():
    split, _, qnet = digits_model()
    return split, {"lenet-digits": qnet, "custom": _custom_qnet(split)}


@pytest.mark.parametrize("name", ["lenet-digits", "custom"])
def test_single_layers_within_one_lsb(qnets, name):
    split, nets = qnets
    qnet = nets[name]
    images = split.test.q
    result = golden.run(qnet, images)
    inputs = [images] + result.outputs[:-1]
    for i, layer in enumerate(qnet.layers):
        m = qnet.multipliers(i) if isinstance(layer, Conv | Linear) else None
        fake = quantize.fake_quant_layer(layer, torch.from_numpy(inputs[i].astype(np.float64)), m)
        diff = np.abs(fake.numpy().astype(np.int64) - result.outputs[i].astype(np.int64))
        if isinstance(layer, Conv | Linear):
            assert diff.max() <= 1, f"layer {i}"
            print(f"{name} layer {i} ({layer.KIND}): {np.mean(diff != 0):.4%} elements 1 LSB off")
        else:
            assert diff.max() == 0, f"layer {i}"


@pytest.mark.parametrize("name", ["lenet-digits", "custom"])
def test_end_to_end_mismatch_rate(qnets, name):
    split, nets = qnets
    qnet = nets[name]
    result = golden.run(qnet, split.test.q)
    fake = quantize.fake_quant_forward(qnet, split.test.q)
    rates = [float(np.mean(f.numpy() != g)) for f, g in zip(fake, result.outputs)]
    agree = float(np.mean(fake[-1].numpy().argmax(axis=1) == result.predictions))
    print(f"{name}: per-layer mismatch rates {[f'{r:.3%}' for r in rates]}, "
          f"top-1 agreement {agree:.2%}")
    assert max(rates) < 0.05
    assert agree >= 0.97


def test_golden_tracks_float_model():
    split, model, qnet = digits_model()
    float_pred = train.logits(model, split.test.x).argmax(dim=1).numpy()
    assert np.mean(golden.predict(qnet, split.test.q) == float_pred) >= 0.97


def test_golden_is_batch_consistent():
    split, _, qnet = digits_model()
    result = golden.run(qnet, split.test.q)
    one = golden.run(qnet, split.test.q[5:6])
    for batch, single in zip(result.outputs, one.outputs):
        assert np.array_equal(batch[5:6], single)
    assert [o.dtype for o in result.outputs] == [np.int8] * len(qnet.layers)
    assert [o.shape[1:] for o in result.outputs] == qnet.shapes()


def test_golden_rejects_wrong_images():
    split, _, qnet = digits_model()
    with pytest.raises(arith.ContractError,
                       match=r"^images must be int8 \(360, 1, 8, 8\), not uint8 \(360, 1, 8, 8\)$"):
        golden.run(qnet, split.test.images)
