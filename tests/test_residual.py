"""Residual add and global average pooling: the contract's formulas against independent exact
rational arithmetic, the QNet format, the golden model and the compiler (the hardware:
``tests/test_eltwise_unit.py``, ``tests/test_residual_rtl.py``)."""

import json
import math
import struct
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch
from systolic.hw.config import AcceleratorConfig, ConfigError, preset
from systolic.hw.controller import runnable_ops
from systolic.hw.isa import Op
from systolic.sw import arith, golden, quantize
from systolic.sw.compiler import FitError, compile_network
from systolic.sw.qnet import (
    ADD_SHIFT_SPREAD,
    Add,
    Conv,
    Flatten,
    GlobalAvgPool,
    Linear,
    QNet,
    QnetError,
)

INT8 = np.arange(-128, 128)


def _round_half_up(q):
    return math.floor(q + Fraction(1, 2))


def _add_reference(x1, x2, M, s, relu):
    """round_half_up(x1 * M1 / 2^s1 + x2 * M2 / 2^s2), saturated: exact rationals, no shifts."""
    v = _round_half_up(Fraction(int(x1) * M[0], 2 ** s[0]) + Fraction(int(x2) * M[1], 2 ** s[1]))
    return min(max(v, 0 if relu else -128), 127)


@pytest.mark.parametrize(("M", "s", "relu"), [
    ((16384, 16384), (15, 15), False),                 # a + b
    ((32767, 21845), (15, 16), True),                  # different shifts, ReLU
    ((12345, 30000), (20, 20 + ADD_SHIFT_SPREAD), False),   # the widest spread
    ((30000, 1), (47, 31), False),                     # the largest shift, a tiny multiplier
    ((0, 32767), (1, 1), True),                        # M = 0, the smallest shift
    ((23170, 23170), (14, 14), False),                 # ties: (2x + 1) / 2 patterns
])
def test_residual_add_every_int8_pair(M, s, relu):
    x1, x2 = np.meshgrid(INT8, INT8, indexing="ij")
    got = golden.residual_add(x1.astype(np.int8), x2.astype(np.int8), M, s, relu=relu)
    assert got.dtype == np.int8
    ref = np.vectorize(lambda a, b: _add_reference(a, b, M, s, relu))(x1, x2)
    assert np.array_equal(got.astype(np.int64), ref)


def test_residual_add_rejects_out_of_contract():
    a = np.zeros(4, np.int8)
    with pytest.raises(arith.ContractError, match=r"^residual add shifts must lie in \[1, 47\] "
                                                  r"and differ by at most 16, not \[10, 27\]$"):
        golden.residual_add(a, a, (1, 1), (10, 27))
    with pytest.raises(arith.ContractError, match=r"^residual add multipliers must lie in "
                                                  r"\[0, 32767\], not \[32768, 1\]$"):
        golden.residual_add(a, a, (32768, 1), (10, 10))
    with pytest.raises(arith.ContractError, match=r"^residual add operands must have the same "
                                                  r"shape, not \(4,\) and \(3,\)$"):
        golden.residual_add(a, a[:3], (1, 1), (10, 10))


def _gap_reference(channel):
    return _round_half_up(Fraction(int(channel.astype(np.int64).sum()), channel.size))


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 3), (2, 5), (4, 4), (7, 7), (8, 8), (16, 16)])
def test_global_avgpool_against_exact_rationals(hw):
    rng = np.random.default_rng(hw[0] * 100 + hw[1])
    n = hw[0] * hw[1]
    maps = [rng.integers(-128, 128, (6, 5, *hw)),
            np.full((1, 2, *hw), -128), np.full((1, 2, *hw), 127)]
    # Sums on every half-way point a few steps around zero: S = k * N / 2 (N even).
    if n % 2 == 0:
        flat = np.zeros((1, 8, n), np.int64)
        for c, k in enumerate(range(-4, 4)):
            target = k * n // 2
            flat[0, c, :abs(target) // 127] = 127 * np.sign(target)
            flat[0, c, abs(target) // 127] = target - flat[0, c].sum()
        maps.append(flat.reshape(1, 8, *hw))
    for x in maps:
        x = x.astype(np.int8)
        got = golden.global_avgpool(x)
        assert got.shape == x.shape[:2] + (1, 1)
        ref = [[_gap_reference(x[i, c]) for c in range(x.shape[1])] for i in range(len(x))]
        assert np.array_equal(got[..., 0, 0].astype(np.int64), np.array(ref))
        if hw in ((2, 2), (3, 3)):        # it is average pooling over the whole map
            assert np.array_equal(got, arith.avgpool2d(x, hw[0], 1))


def test_add_multipliers_keep_the_spread():
    (M1, M2), (s1, s2) = quantize.add_multipliers(0.8, 0.6)
    assert (M1, M2, s1, s2) == (*arith.choose_multiplier([0.8, 0.6])[0],
                                *arith.choose_multiplier([0.8, 0.6])[1])
    (M1, M2), (s1, s2) = quantize.add_multipliers(1.5, 1.5 / 2 ** 20)
    assert s2 == s1 + ADD_SHIFT_SPREAD
    assert math.floor(1.5 / 2 ** 20 * 2 ** s2 + 0.5) == M2
    assert (M1, s1) == tuple(int(v[0]) for v in arith.choose_multiplier(1.5))


def _conv(rng, cin, cout, s_in, m, relu):
    w = rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8)
    b = rng.integers(-2000, 2000, cout).astype(np.int32)
    w_scale = np.full(cout, 0.01)
    out_scale = s_in * 0.01 / m
    M, s = arith.choose_multiplier(s_in * w_scale / out_scale)
    return Conv(w, b, M.astype(np.uint16), s.astype(np.uint8), 1, 1, relu, out_scale, w_scale)


def _linear(rng, k, cout, s_in, m):
    w = rng.integers(-127, 128, (cout, k)).astype(np.int8)
    b = rng.integers(-500, 500, cout).astype(np.int32)
    w_scale = np.full(cout, 0.01)
    out_scale = s_in * 0.01 / m
    M, s = arith.choose_multiplier(s_in * w_scale / out_scale)
    return Linear(w, b, M.astype(np.uint16), s.astype(np.uint8), False, out_scale, w_scale)


def _add(skip, s_prev, s_skip, out_scale, relu=True):
    M, s = quantize.add_multipliers(s_prev / out_scale, s_skip / out_scale)
    return Add(skip, M, s, relu, out_scale)


@pytest.fixture(scope="module")
def resnet():
    """A residual block on an 8x8 image: conv-ReLU, conv, add the first conv's output, ReLU;
    then a second add of the input image itself, global average pooling and a linear head."""
    rng = np.random.default_rng(5)
    s0 = 1 / 127
    c0 = _conv(rng, 1, 4, s0, 0.004, True)
    c1 = _conv(rng, 4, 4, c0.out_scale, 0.001, False)
    a2 = _add(0, c1.out_scale, c0.out_scale, 1.3 * c0.out_scale)
    c3 = _conv(rng, 4, 1, a2.out_scale, 0.003, False)
    a4 = _add(-1, c3.out_scale, s0, 0.9 * c3.out_scale, relu=False)
    c5 = _conv(rng, 1, 8, a4.out_scale, 0.004, True)
    head = _linear(rng, 8, 10, c5.out_scale, 0.05)
    net = QNet([c0, c1, a2, c3, a4, c5, GlobalAvgPool(), Flatten(), head], (1, 8, 8), 16,
               "digits", "residual")
    net.check()
    images = rng.integers(0, 128, (64, 1, 8, 8)).astype(np.int8)
    return net, images


def test_golden_runs_the_residual_network(resnet):
    net, images = resnet
    assert net.shapes() == [(4, 8, 8)] * 3 + [(1, 8, 8)] * 2 + [(8, 8, 8), (8, 1, 1), (8,), (10,)]
    out = golden.run(net, images).outputs
    L = net.layers
    assert np.array_equal(out[2], golden.residual_add(out[1], out[0], L[2].M, L[2].s, relu=True))
    assert np.array_equal(out[4], golden.residual_add(out[3], images, L[4].M, L[4].s))
    assert np.array_equal(out[6], golden.global_avgpool(out[5]))
    assert out[2].min() == 0                                # ReLU on the first add only
    assert out[4].min() < 0
    # Every element of both adds against the exact rational formula.
    for i, skip in ((2, out[0]), (4, images)):
        ref = np.vectorize(lambda a, b, i=i: _add_reference(a, b, L[i].M, L[i].s, L[i].relu))
        assert np.array_equal(out[i].astype(np.int64), ref(out[i - 1], skip))
    print(f"add outputs saturated: {np.mean(np.abs(out[2]) == 127):.2%}, "
          f"{np.mean(np.abs(out[4]) >= 127):.2%}")


def test_golden_vs_fake_quant(resnet):
    net, images = resnet
    result = golden.run(net, images)
    fake = quantize.fake_quant_forward(net, images)
    inputs = [images] + result.outputs[:-1]
    for i, layer in enumerate(net.layers):
        m, skip = None, None
        if isinstance(layer, Conv | Linear):
            m = net.multipliers(i)
        elif isinstance(layer, Add):
            m = net.add_multipliers(i)
            skip = torch.from_numpy((images if layer.skip == -1 else result.outputs[layer.skip])
                                    .astype(np.float64))
        one = quantize.fake_quant_layer(layer, torch.from_numpy(inputs[i].astype(np.float64)),
                                        m, skip)
        diff = np.abs(one.numpy() - result.outputs[i].astype(np.float64))
        assert diff.max() <= (1 if isinstance(layer, Conv | Linear | Add) else 0), f"layer {i}"
        print(f"layer {i} ({layer.KIND}): {np.mean(diff != 0):.3%} one LSB off; end to end "
              f"{np.mean(fake[i].numpy() != result.outputs[i]):.3%} differ")


def test_round_trip(resnet, tmp_path):
    net, images = resnet
    net.save(tmp_path / "r.qnet")
    back = QNet.load(tmp_path / "r.qnet")
    assert [type(a) for a in back.layers] == [type(a) for a in net.layers]
    for a, b in zip(net.layers, back.layers):
        if isinstance(a, Add):
            assert (a.skip, a.M, a.s, a.relu, a.out_scale) == (b.skip, b.M, b.s, b.relu,
                                                                b.out_scale)
    for a, b in zip(golden.run(net, images).outputs, golden.run(back, images).outputs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda L: setattr(L[2], "skip", 2),
     r"^layer 2 \(add\): add skip must name an earlier layer \(below 2\) or -1, not 2$"),
    (lambda L: setattr(L[2], "skip", -2),
     r"^layer 2 \(add\): add skip must be a layer index or -1 \(the input\), not -2$"),
    (lambda L: setattr(L[4], "skip", 0),
     r"^layer 4 \(add\): add operands must have the same shape, not \(1, 8, 8\) and "
     r"\(4, 8, 8\) \(the output of 0\)$"),
    (lambda L: setattr(L[2], "s", (10, 27)),
     r"^layer 2 \(add\): add shifts must differ by at most 16, not \[10, 27\]$"),
    (lambda L: setattr(L[2], "M", (40000, 1)),
     r"^layer 2 \(add\): add M must be two integers in \[0, 32767\], not \[40000, 1\]$"),
])
def test_bad_add_layers(resnet, edit, match):
    net, _ = resnet
    layers = [Add(x.skip, x.M, x.s, x.relu, x.out_scale) if isinstance(x, Add) else x
              for x in net.layers]
    edit(layers)
    with pytest.raises(QnetError, match=match):
        QNet(layers, net.input_shape, 16, "digits", "residual").check()


def test_bad_add_in_a_file(resnet, tmp_path):
    net, _ = resnet
    net.save(tmp_path / "r.qnet")
    raw = (tmp_path / "r.qnet").read_bytes()
    hlen = struct.unpack_from("<8sII", raw)[2]
    header = json.loads(raw[16:16 + hlen])
    header["layers"][2]["skip"] = 5
    text = json.dumps(header).encode()
    text += b" " * (-(len(text) + 16) % 8)
    body = struct.pack("<8sII", b"SYSTQNET", 1, len(text)) + text + raw[16 + hlen:-4]
    (tmp_path / "bad.qnet").write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(QnetError, match=r"^.*bad\.qnet: malformed header: layers\[2\] \(add\): "
                                        r"add skip must name an earlier layer \(below 2\) or -1, "
                                        r"not 5$"):
        QNet.load(tmp_path / "bad.qnet")


def test_compiler_takes_residual_and_global_pooling(resnet):
    """The default preset runs both (`systolic.hw.eltwise`); the iCEBreaker's, without the
    element-wise engines, refuses them, naming the layer and the fix."""
    net, _ = resnet
    program = compile_network(net, preset("default"))
    assert {"add"} <= {lay.kind for lay in program.layers}
    with pytest.raises(FitError, match=r"^layer 2 \(add layer 0\): residual adds and global "
                                       r"average pooling need the element-wise engines"):
        compile_network(net, preset("small"))
    gap_only = QNet([net.layers[0], GlobalAvgPool(), Flatten(), _linear(
        np.random.default_rng(0), 4, 10, net.layers[0].out_scale, 0.05)], (1, 8, 8), 16,
        "digits", "gap")
    assert compile_network(gap_only, preset("default")).layers[1].kind == "gap"
    with pytest.raises(FitError, match=r"^layer 1 \(global avgpool\): residual adds and global "
                                       r"average pooling need"):
        compile_network(gap_only, preset("small"))


def test_element_wise_engines_without_averaging(resnet):
    """The element-wise engines are a knob of their own (``eltwise``), not the averaging pooling
    engine's: a configuration that pools by maximum only still runs residual adds and global
    pooling (and the controller's RUN takes ADD and GAP, not AVGPOOL), and one without them
    refuses the add, naming the fix."""
    net, _ = resnet
    max_only = preset("default").replace(pool_avg=False)
    assert {"add"} <= {lay.kind for lay in compile_network(net, max_only).layers}
    assert runnable_ops(max_only) == [Op.CONV, Op.MAXPOOL, Op.ADD, Op.GAP]
    assert runnable_ops(preset("default")) == [Op.CONV, Op.MAXPOOL, Op.AVGPOOL, Op.ADD, Op.GAP]
    assert runnable_ops(preset("default").replace(eltwise=False)) == [
        Op.CONV, Op.MAXPOOL, Op.AVGPOOL]
    assert runnable_ops(preset("small")) == [Op.CONV, Op.MAXPOOL]
    with pytest.raises(FitError, match=r"^layer 2 \(add layer 0\): residual adds and global "
                                       r"average pooling need the element-wise engines; use a "
                                       r"configuration with eltwise=True \(the default, wide "
                                       r"and big presets; --eltwise\)$"):
        compile_network(net, max_only.replace(eltwise=False))
    with pytest.raises(ConfigError, match=r"^eltwise must be True or False, not 1$"):
        preset("default").replace(eltwise=1)
    # A build report from before the knob: the engines were there with averaging.
    for name in ("default", "small"):
        old = {k: v for k, v in preset(name).as_dict().items() if k != "eltwise"}
        assert AcceleratorConfig.from_dict(old) == preset(name)
    old = {k: v for k, v in max_only.as_dict().items() if k != "eltwise"}
    assert AcceleratorConfig.from_dict(old) == max_only.replace(eltwise=False)


def test_reference_formula_by_hand():
    # The reference itself: a few hand-computed values.
    assert _add_reference(1, 1, (1, 1), (1, 1), False) == 1       # 0.5 + 0.5 = 1
    assert _add_reference(1, 0, (1, 1), (1, 1), False) == 1       # 0.5 rounds up
    assert _add_reference(-1, 0, (1, 1), (1, 1), False) == 0      # -0.5 rounds up to 0
    assert _add_reference(-3, 0, (1, 1), (1, 1), False) == -1     # -1.5 rounds up to -1
    assert _add_reference(127, 127, (32767, 32767), (15, 15), False) == 127
