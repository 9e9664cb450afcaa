"""Post-training quantization and quantization-aware fine-tuning."""

import copy

import numpy as np
import pytest
import torch
from sw_common import digits_model
from systolic.sw import arith, golden, models, quantize, train
from systolic.sw.qnet import Conv, Flatten, Linear, Pool
from torch import nn


def test_default_digits_accuracy():
    split, model, qnet = digits_model()
    float_acc = train.accuracy(model, split.test)
    int8_acc = float(np.mean(golden.predict(qnet, split.test.q) == split.test.labels))
    print(f"digits test split: float {float_acc:.2%}, int8 {int8_acc:.2%}")
    assert float_acc >= 0.97
    assert abs(int8_acc - float_acc) <= 0.01


def test_parameters_follow_the_contract():
    split, model, qnet = digits_model()
    assert [type(layer) for layer in qnet.layers] == [Conv, Pool, Conv, Pool, Flatten, Linear]
    amax = quantize.calibrate(model, split.train.x[:256])
    float_layers = [model[0], model[3], model[7]]
    out_tensors = [1, 4, 7]                        # after the ReLUs; the logits have none
    s_in = 1 / 127
    for q, f, j in zip([qnet.layers[i] for i in (0, 2, 5)], float_layers, out_tensors):
        w = f.weight.detach().double().numpy()
        cout = w.shape[0]
        w_scale = np.abs(w.reshape(cout, -1)).max(axis=1) / 127
        assert np.array_equal(q.w_scale, w_scale)
        assert np.array_equal(np.abs(q.w.reshape(cout, -1)).max(axis=1), np.full(cout, 127))
        wshape = (cout,) + (1,) * (w.ndim - 1)
        assert np.array_equal(q.w, np.floor(w / w_scale.reshape(wshape) + 0.5).astype(np.int8))
        b_q = np.floor(f.bias.detach().double().numpy() / (s_in * w_scale) + 0.5)
        assert np.array_equal(q.b, b_q.astype(np.int32))
        assert q.out_scale == amax[j] / 127
        M, s = arith.choose_multiplier(s_in * w_scale / q.out_scale)
        assert np.array_equal(q.M, M.astype(np.uint16))
        assert np.array_equal(q.s, s.astype(np.uint8))
        assert q.relu == (j != 7)
        s_in = q.out_scale
    assert (qnet.layers[1].kind, qnet.layers[1].kernel, qnet.layers[1].stride) == ("max", 2, 2)


def test_relu_outputs_use_the_full_positive_range():
    split, _, qnet = digits_model()
    out = golden.run(qnet, split.train.q[:256]).outputs
    assert out[0].min() == 0
    assert out[0].max() == 127                   # calibration set: the maximum maps to 127


def test_unsupported_layer_is_named():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(models.ModelError,
                       match=r"^tanh at module '1' \(Tanh\): not supported; the accelerator's "
                             r"only activation is ReLU, fused into the Conv2d or Linear before "
                             r"it: use nn\.ReLU or F\.relu$"):
        quantize.quantize(model, np.zeros((4, 1, 8, 8), np.float32), input_shape=(1, 8, 8),
                          p_max=16, dataset="digits")


def _linear(weight, bias, relu=False):
    layer = nn.Linear(len(weight), 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.copy_(torch.tensor([bias]))
    return nn.Sequential(nn.Flatten(), layer, *([nn.ReLU()] if relu else []))


def test_bias_overflowing_int32_is_rejected():
    model = _linear([1e-6, 0, 0, 0], 100.0)
    x = np.ones((2, 1, 2, 2), np.float32)
    with pytest.raises(arith.ContractError,
                       match=r"^layer 1 \(Linear\(in_features=4, out_features=1, bias=True\)\): "
                             r"bias of output channel 0 must fit int32 once quantized, not "):
        quantize.quantize(model, x, input_shape=(1, 2, 2), p_max=16, dataset="digits")


def test_accumulator_overflow_is_rejected():
    # b_q = 2^31 - 1000 fits int32, but with 128 * 127 added the accumulator could overflow.
    bias = (2 ** 31 - 1000) * (1 / 127) * (1 / 127)
    model = _linear([1.0, 0, 0, 0], bias)
    x = np.ones((2, 1, 2, 2), np.float32)
    with pytest.raises(arith.ContractError,
                       match=r"^layer 1 \(Linear\(.*\)\): output channel 0 can overflow the "
                             r"32-bit accumulator"):
        quantize.quantize(model, x, input_shape=(1, 2, 2), p_max=16, dataset="digits")


def test_unrepresentable_multiplier_is_rejected():
    model = _linear([1.0, 0, 0, 0], 0.0)
    x = np.full((2, 1, 2, 2), 1e-9, np.float32)   # tiny activations: a tiny output scale
    with pytest.raises(arith.ContractError,
                       match=r"^layer 1 \(Linear\(.*\)\): requantization multiplier .* must be "
                             r"below 16383\.5"):
        quantize.quantize(model, x, input_shape=(1, 2, 2), p_max=16, dataset="digits")


def test_qat_finetunes_reproducibly():
    split, model, _ = digits_model()
    results = []
    for _ in range(2):
        m = copy.deepcopy(model)
        history = quantize.qat_finetune(m, split, epochs=1, calib_x=split.train.x[:256],
                                        progress=False, log=lambda line: None)
        qnet = quantize.quantize(m, split.train.x[:256], input_shape=(1, 8, 8), p_max=16,
                                 dataset="digits", arch="lenet-digits")
        results.append((history[-1], qnet))
    (h1, q1), (h2, q2) = results
    assert h1 == h2
    assert all(np.array_equal(a.w, b.w) for a, b in zip(q1.layers, q2.layers) if hasattr(a, "w"))
    int8_acc = float(np.mean(golden.predict(q1, split.test.q) == split.test.labels))
    print(f"after 1 QAT epoch: fake-quant test {h1.test_accuracy:.2%}, int8 {int8_acc:.2%}")
    assert int8_acc >= 0.96
    assert abs(h1.test_accuracy - int8_acc) <= 0.01
