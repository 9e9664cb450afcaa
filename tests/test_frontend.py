"""The model front end: traced models lowered to the layer chain, BatchNorm folding, the
``.pt2`` command line and the errors for what the accelerator cannot run."""

import json
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from systolic.sw import arith, cli, data, frontend, golden, models, quantize, train
from systolic.sw.models import ModelError
from systolic.sw.qnet import Add, Branch, Conv, Linear
from torch import nn


def _randomize_batchnorm(model, seed=0):
    """Running statistics and affine parameters far from the identity, so folding matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.25 + torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


class BnNet(nn.Module):
    """BatchNorm after convolutions (with and without bias) and after a linear layer, and the
    functional forms: F.relu, torch.relu, in-place ReLU, F.max_pool2d, F.avg_pool2d, view."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(64, 24)
        self.bn3 = nn.BatchNorm1d(24)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.avg_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = x.view(x.size(0), -1)
        x = self.drop(x)
        x = F.relu(self.bn3(self.fc1(x)), inplace=True)
        return self.fc2(x)


class Head(nn.Module):
    """Other forms: a nested Sequential with a stride-2 conv, torch.flatten, adaptive and mean
    pooling over a 2x2 map, BatchNorm without affine parameters."""

    def __init__(self, mean):
        super().__init__()
        self.mean = mean
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1),
                                      nn.BatchNorm2d(8, affine=False), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Identity())
        self.fc = nn.Linear(8 if mean else 32, 10)

    def forward(self, x):
        x = self.features(x)                               # 8 x 4 x 4
        x = F.adaptive_avg_pool2d(x, 2)                    # 8 x 2 x 2
        x = x.mean((2, 3)) if self.mean else torch.flatten(x, 1)
        return self.fc(x)


@pytest.fixture(scope="module")
def split():
    train.set_threads()
    return data.load_digits()


def test_plain_sequential_is_unchanged():
    model = models.build_model("lenet-digits", seed=0)
    assert frontend.lower(model, (1, 8, 8)) is model


@pytest.mark.parametrize("make", [BnNet, lambda: Head(mean=False), lambda: Head(mean=True)],
                         ids=["bn", "head-flatten", "head-mean"])
def test_lowered_model_equals_the_original(split, make):
    torch.manual_seed(1)
    model = _randomize_batchnorm(make()).eval()
    lowered = frontend.lower(model, (1, 8, 8))
    assert all(type(m) in (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)
               for m in lowered)
    x = torch.from_numpy(split.test.x)
    with torch.no_grad():
        want, got = model(x), lowered(x)
    print(f"{type(model).__name__}: max |difference| {float((want - got).abs().max()):.3g} "
          f"(logits up to {float(want.abs().max()):.3g})")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_lowering_leaves_the_model_training_flags_alone():
    model = BnNet().train()
    frontend.lower(model, (1, 8, 8))
    assert all(m.training for m in model.modules())


def test_fold_batchnorm_formula():
    conv = nn.Conv2d(3, 4, 3, bias=False)
    bn = _randomize_batchnorm(nn.BatchNorm2d(4)).eval()
    folded = frontend.fold_batchnorm(conv, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                     bn.bias)
    k = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = conv.weight.double() * k.reshape(4, 1, 1, 1)
    b = (-bn.running_mean.double()) * k + bn.bias.double()
    assert torch.equal(folded.weight.data, w.float())
    assert torch.equal(folded.bias.data, b.float())
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def bn_qnet(split):
    torch.manual_seed(2)
    model = _randomize_batchnorm(BnNet()).eval()
    qnet = quantize.quantize(model, split.train.x[:256], input_shape=(1, 8, 8), p_max=16,
                             dataset="digits")
    return model, qnet


def test_golden_vs_fake_quant_per_layer(split, bn_qnet):
    """As tests/test_golden_vs_torch.py for Sequential: each requantization within 1 LSB of
    PyTorch's fake-quantized layer fed the same int8 input, everything else exact."""
    _, qnet = bn_qnet
    images = split.test.q
    result = golden.run(qnet, images)
    inputs = [images] + result.outputs[:-1]
    for i, layer in enumerate(qnet.layers):
        m = qnet.multipliers(i) if isinstance(layer, Conv | Linear) else None
        fake = quantize.fake_quant_layer(layer, torch.from_numpy(inputs[i].astype(np.float64)),
                                         m)
        diff = np.abs(fake.numpy().astype(np.int64) - result.outputs[i].astype(np.int64))
        if isinstance(layer, Conv | Linear):
            assert diff.max() <= 1, f"layer {i}"
            print(f"layer {i} ({layer.KIND}): {np.mean(diff != 0):.4%} elements 1 LSB off")
        else:
            assert diff.max() == 0, f"layer {i}"


def test_golden_vs_fake_quant_end_to_end(split, bn_qnet):
    model, qnet = bn_qnet
    result = golden.run(qnet, split.test.q)
    fake = quantize.fake_quant_forward(qnet, split.test.q)
    rates = [float(np.mean(f.numpy() != g)) for f, g in zip(fake, result.outputs)]
    agree = float(np.mean(fake[-1].numpy().argmax(axis=1) == result.predictions))
    float_pred = train.logits(model, split.test.x).argmax(dim=1).numpy()
    float_agree = float(np.mean(float_pred == result.predictions))
    print(f"BatchNorm net: per-layer mismatch rates {[f'{r:.3%}' for r in rates]}, top-1 "
          f"agreement with fake-quant {agree:.2%}, with the float model {float_agree:.2%}")
    assert max(rates) < 0.05
    assert agree >= 0.97
    assert float_agree >= 0.9


def test_float_model_in_the_qnet_is_the_folded_one(split, bn_qnet):
    model, qnet = bn_qnet
    x = torch.from_numpy(split.test.x)
    with torch.no_grad():
        torch.testing.assert_close(qnet.float_model()(x), model(x), rtol=1e-5, atol=1e-5)


def test_program_and_module_give_the_same_qnet(split, bn_qnet, tmp_path):
    model, qnet = bn_qnet
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)),
                      tmp_path / "m.pt2")
    program = torch.export.load(tmp_path / "m.pt2")
    assert frontend.example_input_shape(program) == (1, 8, 8)
    again = quantize.quantize(program, split.train.x[:256], p_max=16, dataset="digits")
    assert [type(q) for q in again.layers] == [type(q) for q in qnet.layers]
    for a, b in zip(again.layers, qnet.layers):
        for name in ("w", "b", "M", "s"):
            if hasattr(a, name):
                assert np.array_equal(getattr(a, name), getattr(b, name))


def test_decomposed_program_lowers_too(split):
    # The core ATen opset (run_decompositions): convolution, addmm with a transposed weight,
    # _native_batch_norm_legit_no_training.
    torch.manual_seed(3)
    model = _randomize_batchnorm(BnNet()).eval()
    program = torch.export.export(model, (torch.zeros(1, 1, 8, 8),))
    with warnings.catch_warnings():     # torch's own use of its deprecated pytree API
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                FutureWarning)
        program = program.run_decompositions()
    assert any(n.target is torch.ops.aten.addmm.default for n in program.graph.nodes)
    lowered = frontend.lower(program)
    x = torch.from_numpy(split.test.x)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), model(x), rtol=1e-5, atol=1e-5)


# Errors -------------------------------------------------------------------------------------

class Wrap(nn.Module):
    """``body`` between an input conv and a linear head sized from a trial run."""

    def __init__(self, body, fn=None, features=None):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.body = body
        self.fn = fn
        with torch.no_grad():
            n = features or self._features(torch.zeros(1, 1, 8, 8)).flatten(1).shape[1]
        self.head = nn.Linear(n, 10)

    def _features(self, x):
        x = self.body(self.stem(x))
        return self.fn(x) if self.fn else x

    def forward(self, x):
        return self.head(torch.flatten(self._features(x), 1))


LINE = r"test_frontend\.py:\d+ `.*`"
ERRORS = [
    ("depthwise", lambda: Wrap(nn.Conv2d(4, 4, 3, groups=4)),
     r"^conv2d at module 'body' \(Conv2d\), " + LINE + r": a depthwise convolution \(groups=4\) "
     r"is not supported; use groups=1 \(a full convolution"),
    ("grouped", lambda: Wrap(nn.Conv2d(4, 8, 3, groups=2)),
     r"^conv2d at module 'body' \(Conv2d\), .*: a grouped convolution \(groups=2\) is not "
     r"supported; use groups=1"),
    ("dilation", lambda: Wrap(nn.Conv2d(4, 4, 3, dilation=2)),
     r"^conv2d at module 'body' \(Conv2d\), .*: a dilated convolution \(dilation=\(2, 2\)\) is "
     r"not supported; use dilation=1: a 3x3 kernel dilated by 2 covers 5x5"),
    ("sigmoid", lambda: Wrap(nn.Sigmoid()),
     r"^sigmoid at module 'body' \(Sigmoid\), .*: not supported; the accelerator's only "
     r"activation is ReLU"),
    ("gelu", lambda: Wrap(nn.Identity(), F.gelu),
     r"^gelu at " + LINE + r": not supported; the accelerator's only activation is ReLU"),
    ("concatenation", lambda: Wrap(nn.Identity(), lambda x: torch.cat([x, x], 1)),
     r"^cat at " + LINE + r": not supported; concatenation joins branches, and the accelerator "
     r"runs a chain of layers: widen one convolution instead"),
    ("add before relu", lambda: Wrap(nn.Identity(), lambda x: x + F.relu(x)),
     r"^add at " + LINE + r": it adds conv2d, a Conv2d or Linear output before the BatchNorm or "
     r"ReLU that follows it, which the lowering does not keep; add the output after its "
     r"BatchNorm and ReLU$"),
    ("branch before relu", lambda: Wrap(nn.Identity(), lambda x: F.relu(x) + x.flatten().sum()),
     r"^flatten at " + LINE + r": it takes conv2d, a Conv2d or Linear output before the "
     r"BatchNorm or ReLU that follows it, which the lowering does not keep; branch from the "
     r"output after its BatchNorm and ReLU$"),
    ("add a constant", lambda: Wrap(nn.Identity(), lambda x: x + 1.0),
     r"^add at " + LINE + r": adding a constant is not supported; the only element-wise "
     r"arithmetic is a residual add"),
    ("multiply", lambda: Wrap(nn.Identity(), lambda x: x * x),
     r"^mul at " + LINE + r": not supported; the only element-wise arithmetic is a residual "
     r"add"),
    ("upsampling", lambda: Wrap(nn.Upsample(scale_factor=2)),
     r"^upsample_nearest2d at module 'body' \(Upsample\), .*: not supported; the accelerator "
     r"keeps or shrinks feature maps"),
    ("pre-activation batchnorm", lambda: Wrap(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4))),
     r"^batch_norm at module 'body\.1' \(BatchNorm2d\), .*: a BatchNorm must directly follow a "
     r"Conv2d or Linear layer \(it is folded into that layer's weights and bias\); move it"),
    ("relu after pooling", lambda: Wrap(nn.Sequential(nn.MaxPool2d(2), nn.ReLU())),
     r"^relu at module 'body\.1' \(ReLU\), .*: a ReLU must directly follow a Conv2d, Linear or "
     r"residual add \(the hardware fuses it there\); move the ReLU before the pooling"),
    ("softmax", lambda: Wrap(nn.Softmax(1)),
     r"^softmax at module 'body' \(Softmax\), .*: not supported; the logits are the last Linear "
     r"layer's outputs and the class their argmax: a softmax is only dropped as the model's "
     r"last operation, over the classes$"),
    ("channel mean", lambda: Wrap(nn.Identity(), lambda x: x.mean(1, keepdim=True)),
     r"^mean at " + LINE + r": a mean over dimensions \[1\] of \(1, 4, 8, 8\) is not "
     r"supported \(only over H and W: global average pooling\); x\.mean\(\(2, 3\)\)"),
    ("kernel 9", lambda: Wrap(nn.Conv2d(4, 4, 9, padding=4), nn.BatchNorm2d(4)),
     r"^layer 1 \(Conv2d\(4, 4, kernel_size=\(9, 9\), .*\)\) from module 'body' \(Conv2d\), .* \+ "
     r"module 'fn' \(BatchNorm2d\), .*: kernel size must be between 1 and 7, not \(9, 9\); "
     r"supported layers: Conv2d"),
]


@pytest.mark.parametrize(("make", "match"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_unsupported_operations_are_named(make, match):
    with pytest.raises(ModelError, match=match) as exc:
        frontend.lower(make().eval(), (1, 8, 8))
    assert "\n" not in str(exc.value)


def test_untraceable_model():
    class Branchy(nn.Module):
        def forward(self, x):
            return x.flatten(1) if x.sum() > 0 else -x.flatten(1)

    with pytest.raises(ModelError, match=r"^torch\.export could not trace the model \(.*\); its "
                                         r"forward must run on a \(1, 1, 8, 8\) image batch"):
        frontend.lower(Branchy(), (1, 8, 8))


def test_not_a_model():
    with pytest.raises(ModelError, match=r"^model must be a torch\.nn\.Module or a "
                                         r"torch\.export\.ExportedProgram, not str$"):
        frontend.lower("model.pt2", (1, 8, 8))


# The command line ---------------------------------------------------------------------------

def _main(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_quantizes_a_program(capsys, tmp_path, split, bn_qnet):
    model, qnet = bn_qnet
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)),
                      tmp_path / "bnnet.pt2")
    code, out, err = _main(capsys, "quantize", tmp_path / "bnnet.pt2", "--dataset", "digits",
                           "-o", tmp_path / "bnnet.qnet")
    assert (code, err) == (0, "")
    assert out == f"quantized bnnet with 256 calibration images; wrote {tmp_path}/bnnet.qnet\n"
    code, out, err = _main(capsys, "eval", tmp_path / "bnnet.qnet", "--json")
    assert (code, err) == (0, "")
    assert '"images": 360' in out
    from systolic.sw.qnet import QNet
    loaded = QNet.load(tmp_path / "bnnet.qnet")
    assert loaded.arch == "bnnet"
    assert np.array_equal(golden.run(loaded, split.test.q).logits,
                          golden.run(qnet, split.test.q).logits)


@pytest.mark.parametrize(("setup", "argv", "message"), [
    ("random", ["quantize", "junk.pt", "-o", "x.qnet"],
     r"junk\.pt: not a systolic checkpoint: it is not a PyTorch file; train one with 'systolic "
     r"train -o FILE\.pt'$"),
    ("module", ["quantize", "junk.pt", "-o", "x.qnet"],
     r"junk\.pt: not a systolic checkpoint: it holds pickled Python objects \(a saved module\?\)"),
    ("random", ["quantize", "junk.pt2", "--dataset", "digits", "-o", "x.qnet"],
     r"junk\.pt2: not a program saved by torch\.export\.save; save your model with "),
    ("random", ["quantize", "junk.pt2", "-o", "x.qnet"],
     r"junk\.pt2: a program needs the data set to calibrate on; pass --dataset digits or "
     r"--dataset mnist$"),
    ("sigmoid", ["quantize", "junk.pt2", "--dataset", "digits", "-o", "x.qnet"],
     r"sigmoid at module '2' \(Sigmoid\): not supported; the accelerator's only activation is "
     r"ReLU"),
    ("mnist-shaped", ["quantize", "junk.pt2", "--dataset", "digits", "-o", "x.qnet"],
     r"junk\.pt2: the program's input must match the digits images, not \(1, 28, 28\) against "
     r"\(1, 8, 8\); export it with an example input of shape \(1, 1, 8, 8\)$"),
])
def test_cli_errors_are_one_line(capsys, tmp_path, monkeypatch, setup, argv, message):
    monkeypatch.chdir(tmp_path)
    name = argv[1]
    if setup == "random":
        (tmp_path / name).write_bytes(bytes(range(256)) * 4)
    elif setup == "module":
        torch.save(nn.Linear(2, 3), tmp_path / name)
    else:
        shape = (1, 1, 28, 28) if setup == "mnist-shaped" else (1, 1, 8, 8)
        model = nn.Sequential(nn.Flatten(), nn.Linear(shape[2] * shape[3], 10), nn.Sigmoid())
        if setup == "mnist-shaped":
            model = model[:2]
        torch.export.save(torch.export.export(model, (torch.zeros(shape),)), tmp_path / name)
    code, out, err = _main(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "\x1b" not in err
    assert re.match(r"^systolic: error: " + message, err), err


def test_readme_example_runs(capsys, tmp_path, monkeypatch):
    """The README's own-model example, as written (one epoch instead of five), then the
    commands it lists."""
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Your own model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "epochs=5" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("epochs=5", "epochs=1"), "mynet.py", "exec"),
         {"__name__": "mynet"})
    capsys.readouterr()
    assert _main(capsys, "quantize", "mynet.pt2", "--dataset", "digits", "-o",
                 "mynet.qnet")[0] == 0
    code, out, err = _main(capsys, "eval", "mynet.qnet")
    assert (code, err) == (0, "")
    print(out)
    assert "int8 accuracy" in out


@pytest.mark.slow
def test_lowered_model_on_the_rtl(split, bn_qnet):
    """A BatchNorm net, lowered and quantized, runs on the RTL (the fast harness) exactly."""
    from systolic.hw.config import preset
    from systolic.sw.simulate import simulate

    _, qnet = bn_qnet
    images = split.test.q[:6]
    report = simulate(qnet, images, preset("default"), sim="fast", trace=True)
    np.testing.assert_array_equal(report.logits, golden.run(qnet, images).logits)
    assert report.mismatches == 0
    assert report.first_difference is None


def test_cli_qat_on_a_program(capsys, tmp_path, split):
    """Quantization-aware fine-tuning of a program: on its lowered chain (BatchNorm folded,
    then frozen in the weights)."""
    torch.manual_seed(4)
    model = BnNet()
    train.train(model, split, epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-4,
                progress=False, log=lambda line: None)
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, 1, 8, 8),)),
                      tmp_path / "q.pt2")
    code, out, err = _main(capsys, "quantize", tmp_path / "q.pt2", "--dataset", "digits",
                           "--qat-epochs", "1", "--calib", "64", "-o", tmp_path / "q.qnet")
    assert (code, err) == (0, "")
    assert out.startswith("quantization-aware fine-tuning for 1 epochs\n")
    assert out.endswith(f"quantized q with 64 calibration images; wrote {tmp_path}/q.qnet\n")
    code, out, _ = _main(capsys, "eval", tmp_path / "q.qnet", "--json")
    assert code == 0
    print(out)
    assert json.loads(out)["int8_accuracy"] >= 0.9


# Residual networks (the golden model here; in RTL: tests/test_residual_rtl.py) -------------

class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + x)


class ResNet(nn.Module):
    """BatchNorm, two identity-shortcut residual blocks, max pooling between them, global
    average pooling by x.mean((2, 3)) over a 4x4 map, a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = Block(8)
        self.block2 = Block(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.block2(F.max_pool2d(self.block1(x), 2))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def resnet(split):
    torch.manual_seed(6)
    model = _randomize_batchnorm(ResNet()).eval()
    qnet = quantize.quantize(model, split.train.x[:256], input_shape=(1, 8, 8), p_max=16,
                             dataset="digits")
    return model, qnet


def test_residual_network_lowers(split, resnet):
    model, qnet = resnet
    lowered = frontend.lower(model, (1, 8, 8))
    assert isinstance(lowered, models.Chain)
    assert [m.skip for m in lowered if isinstance(m, models.Add)] == [1, 7]
    assert type(lowered[13]) is nn.AdaptiveAvgPool2d
    x = torch.from_numpy(split.test.x)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(qnet.float_model()(x), model(x), rtol=1e-5, atol=1e-5)
    assert [q.KIND for q in qnet.layers] == ["conv", "conv", "conv", "add", "pool", "conv",
                                             "conv", "add", "gap", "flatten", "linear"]
    assert [q.skip for q in qnet.layers if isinstance(q, Add)] == [0, 4]


def test_residual_network_golden_vs_fake_quant(split, resnet):
    model, qnet = resnet
    images = split.test.q
    result = golden.run(qnet, images)
    inputs = [images] + result.outputs[:-1]
    for i, layer in enumerate(qnet.layers):
        m, skip = None, None
        if isinstance(layer, Conv | Linear):
            m = qnet.multipliers(i)
        elif isinstance(layer, Add):
            m = qnet.add_multipliers(i)
            skip = torch.from_numpy(result.outputs[layer.skip].astype(np.float64))
        fake = quantize.fake_quant_layer(layer, torch.from_numpy(inputs[i].astype(np.float64)),
                                         m, skip)
        diff = np.abs(fake.numpy() - result.outputs[i].astype(np.float64))
        assert diff.max() <= (1 if isinstance(layer, Conv | Linear | Add) else 0), f"layer {i}"
    fake = quantize.fake_quant_forward(qnet, images)
    rates = [float(np.mean(f.numpy() != g)) for f, g in zip(fake, result.outputs)]
    float_pred = train.logits(model, split.test.x).argmax(dim=1).numpy()
    print(f"residual net: per-layer mismatch rates {[f'{r:.3%}' for r in rates]}; top-1 "
          f"agreement with the float model {np.mean(float_pred == result.predictions):.2%}")
    assert max(rates) < 0.05
    assert np.mean(fake[-1].numpy().argmax(axis=1) == result.predictions) >= 0.97


def test_residual_program_through_the_command_line(capsys, tmp_path, split, resnet):
    model, qnet = resnet
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)),
                      tmp_path / "res.pt2")
    code, _, err = _main(capsys, "quantize", tmp_path / "res.pt2", "--dataset", "digits",
                         "-o", tmp_path / "res.qnet")
    assert (code, err) == (0, "")
    code, out, err = _main(capsys, "eval", tmp_path / "res.qnet", "--json")
    assert (code, err) == (0, "")
    from systolic.sw.qnet import QNet
    back = QNet.load(tmp_path / "res.qnet")
    assert np.array_equal(golden.run(back, split.test.q).logits,
                          golden.run(qnet, split.test.q).logits)
    # And in RTL, exactly: every logit as the golden model's, every layer's cycles as the
    # performance model predicts (residual add and global pooling included).
    code, out, err = _main(capsys, "simulate", tmp_path / "res.qnet", "--images", "8",
                           "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["images"], report["mismatches"], report["model_exact"]) == (8, 0, True)
    assert {"add", "gap"} <= {row["kind"] for row in report["layers"]}


def test_residual_qat(split):
    torch.manual_seed(7)
    model = ResNet()
    train.train(model, split, epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-4,
                progress=False, log=lambda line: None)
    lowered = frontend.lower(model.eval(), (1, 8, 8))
    history = quantize.qat_finetune(lowered, split, epochs=1, calib_x=split.train.x[:64],
                                    progress=False, log=lambda line: None)
    qnet = quantize.quantize(lowered, split.train.x[:64], input_shape=(1, 8, 8), p_max=16,
                             dataset="digits")
    int8 = float(np.mean(golden.predict(qnet, split.test.q) == split.test.labels))
    print(f"residual net after 1 QAT epoch: fake-quant {history[-1].test_accuracy:.2%}, "
          f"int8 {int8:.2%}")
    assert int8 >= 0.85
    assert abs(history[-1].test_accuracy - int8) <= 0.03


def test_resnet8_topology_in_the_golden_model():
    """models' mlperf-resnet8: the MLPerf Tiny image-classification topology."""
    model = _randomize_batchnorm(models.build_model("mlperf-resnet8", seed=8)).eval()
    rng = np.random.default_rng(8)
    pixels = rng.integers(0, 256, (48, 3, 32, 32))
    x = (pixels / 255).astype(np.float32)
    lowered = frontend.lower(model, (3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(lowered(torch.from_numpy(x)), model(torch.from_numpy(x)),
                                   rtol=1e-4, atol=1e-5)
    qnet = quantize.quantize(model, x, input_shape=(3, 32, 32), p_max=255, dataset="random",
                             arch="resnet8")
    kinds = [q.KIND for q in qnet.layers]
    assert kinds.count("add") == 3
    assert kinds.count("branch") == 2
    assert kinds[-3:] == ["gap", "flatten", "linear"]
    images = arith.quantize_image(pixels, 255)
    result = golden.run(qnet, images)
    inputs = [images] + result.outputs[:-1]
    for i, layer in enumerate(qnet.layers):
        m, other = None, None
        if isinstance(layer, Conv | Linear):
            m = qnet.multipliers(i)
        elif isinstance(layer, Add | Branch):
            src = layer.skip if isinstance(layer, Add) else layer.src
            other = torch.from_numpy(result.outputs[src].astype(np.float64))
            m = qnet.add_multipliers(i) if isinstance(layer, Add) else None
        fake = quantize.fake_quant_layer(layer, torch.from_numpy(inputs[i].astype(np.float64)),
                                         m, other)
        diff = np.abs(fake.numpy() - result.outputs[i].astype(np.float64))
        assert diff.max() <= (1 if isinstance(layer, Conv | Linear | Add) else 0), f"layer {i}"
    fake = quantize.fake_quant_forward(qnet, images)
    float_pred = train.logits(model, x).argmax(dim=1).numpy()
    print(f"resnet8 ({len(qnet.layers)} layers: {kinds}): end-to-end mismatch rates "
          f"{max(float(np.mean(f.numpy() != g)) for f, g in zip(fake, result.outputs)):.2%} "
          f"at most; top-1 agreement with fake-quant "
          f"{np.mean(fake[-1].numpy().argmax(axis=1) == result.predictions):.2%}, with float "
          f"{np.mean(float_pred == result.predictions):.2%}")
    assert np.mean(fake[-1].numpy().argmax(axis=1) == result.predictions) >= 0.9


def test_program_exported_in_training_mode_lowers_as_in_eval_mode():
    torch.manual_seed(9)
    model = _randomize_batchnorm(BnNet()).train()
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),))
    lowered = frontend.lower(program)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_lowered_chain_is_its_own_lowering():
    chain = frontend.lower(_randomize_batchnorm(ResNet()).eval(), (1, 8, 8))
    assert frontend.lower(chain, (1, 8, 8)) is chain


def test_final_log_softmax_is_dropped(split):
    """As in PyTorch's MNIST example: the argmax is the same without it."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10),
                          nn.LogSoftmax(dim=1)).eval()
    lowered = frontend.lower(model, (1, 8, 8))
    assert [type(m) for m in lowered] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]
    x = torch.from_numpy(split.test.x)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), model[:4](x))
        assert torch.equal(lowered(x).argmax(1), model(x).argmax(1))


def test_program_with_a_dynamic_batch_size(split):
    torch.manual_seed(10)
    model = _randomize_batchnorm(BnNet()).eval()
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (torch.zeros(4, 1, 8, 8),),
                                  dynamic_shapes={"x": {0: batch}})
    assert any(n.target is torch.ops.aten.sym_size.int for n in program.graph.nodes)
    assert frontend.example_input_shape(program) == (1, 8, 8)
    x = torch.from_numpy(split.test.x)
    with torch.no_grad():
        torch.testing.assert_close(frontend.lower(program)(x), model(x), rtol=1e-5, atol=1e-5)
