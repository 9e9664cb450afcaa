"""The ConvNet family: named architectures, the validator, specs, training and checkpoints."""

import pytest
import torch
from systolic.sw import data, models, train
from systolic.sw.models import ModelError
from systolic.sw.train import CheckpointError
from torch import nn

SUPPORTED = r"; supported layers: Conv2d \(kernel 1-7, stride 1-2, zero padding 0-3"


def test_named_architectures():
    assert models.check_supported(models.build_model("lenet-digits"), (1, 8, 8)) == [
        (16, 8, 8), (16, 8, 8), (16, 4, 4), (32, 4, 4), (32, 4, 4), (32, 2, 2), (128,), (10,)]
    shapes = models.check_supported(models.build_model("lenet5"), (1, 28, 28))
    assert shapes[5] == (16, 4, 4)
    assert shapes[-1] == (10,)


def test_unknown_architecture():
    with pytest.raises(ModelError, match=r"^architecture must be one of lenet-digits, lenet5, "
                                         r"resnet-mnist, mlperf-resnet8, not 'vgg'$"):
        models.build_model("vgg")


@pytest.mark.parametrize(("layers", "match"), [
    ([nn.Conv2d(1, 4, 9), nn.Flatten(), nn.Linear(4, 10)],
     r"^layer 0 \(Conv2d\(1, 4, kernel_size=\(9, 9\), stride=\(1, 1\)\)\): kernel size must be "
     r"between 1 and 7, not \(9, 9\)"),
    ([nn.Conv2d(1, 4, 3, stride=3), nn.Flatten(), nn.Linear(16, 10)],
     r"^layer 0 \(.*\): stride must be 1 or 2 \(both ways\), not \(3, 3\)"),
    ([nn.Conv2d(1, 4, 3, padding=4), nn.Flatten(), nn.Linear(4, 10)],
     r"^layer 0 \(.*\): padding must be between 0 and 3 \(both ways\), not \(4, 4\)"),
    ([nn.Conv2d(1, 4, 3, padding="same"), nn.Flatten(), nn.Linear(4, 10)],
     r"^layer 0 \(.*\): padding must be an integer, not 'same'"),
    ([nn.Conv2d(1, 4, 3, dilation=2), nn.Flatten(), nn.Linear(4, 10)],
     r"^layer 0 \(.*\): dilation must be 1, not \(2, 2\)"),
    ([nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 10)],
     r"^layer 0 \(.*\): groups must be 1, not 2"),
    ([nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(4, 10)],
     r"^layer 0 \(.*\): padding_mode must be 'zeros', not 'reflect'"),
    ([nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 10)],
     r"^layer 0 \(.*\): in_channels must match the input's 1 channels, not 2"),
    ([nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 10)],
     r"^layer 2 \(ReLU\(\)\): ReLU must directly follow a Conv2d, Linear or Add layer"),
    ([nn.MaxPool2d(4), nn.Flatten(), nn.Linear(4, 10)],
     r"^layer 0 \(MaxPool2d\(.*\)\): pooling window must be square, 2 or 3, not \(4, 4\)"),
    ([nn.MaxPool2d(2, padding=1), nn.Flatten(), nn.Linear(25, 10)],
     r"^layer 0 \(.*\): pooling padding must be 0, not 1"),
    ([nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(16, 10)],
     r"^layer 0 \(AvgPool2d\(.*\)\): ceil_mode must be False, not True"),
    ([nn.AvgPool2d(2, stride=4), nn.Flatten(), nn.Linear(4, 10)],
     r"^layer 0 \(.*\): pooling stride must be 1, 2 or 3 \(both ways\), not \(4, 4\)"),
    ([nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 10)],
     r"^layer 1 \(BatchNorm1d\(.*\)\): BatchNorm1d is not supported"),
    ([nn.Linear(8, 10)],
     r"^layer 0 \(Linear\(.*\)\): Linear input must be flat \(add a Flatten\), not \(1, 8, 8\)"),
    ([nn.Flatten(), nn.Linear(60, 10)],
     r"^layer 1 \(.*\): in_features must match the input's 64 features, not 60"),
    ([nn.Flatten(), nn.Linear(64, 10), nn.ReLU()],
     r"^layer 2 \(ReLU\(\)\): the last layer must be Linear \(it gives the logits\)"),
    ([nn.Flatten(start_dim=2), nn.Linear(64, 10)],
     r"^layer 0 \(Flatten\(.*\)\): Flatten must flatten dimensions 1 to -1"),
])
def test_unsupported_layers_are_named(layers, match):
    with pytest.raises(ModelError, match=match + SUPPORTED):
        models.check_supported(nn.Sequential(*layers), (1, 8, 8))


def test_not_sequential():
    with pytest.raises(ModelError, match=r"^model must be a torch.nn.Sequential, not Linear; "
                                         r"supported layers:"):
        models.check_supported(nn.Linear(3, 4), (1, 8, 8))


def test_spec_round_trip():
    model = nn.Sequential(nn.Conv2d(1, 8, (3, 5), stride=2, padding=2, bias=False), nn.ReLU(),
                          nn.AvgPool2d(3, 1), nn.Flatten(), nn.Linear(48, 10))
    spec = models.model_spec(model, (1, 8, 8))
    assert spec[0] == {"type": "Conv2d", "in_channels": 1, "out_channels": 8,
                       "kernel_size": [3, 5], "stride": 2, "padding": 2, "bias": False}
    assert spec[2] == {"type": "AvgPool2d", "kernel_size": 3, "stride": 1}
    rebuilt = models.model_from_spec(spec, (1, 8, 8))
    assert repr(rebuilt) == repr(model)


def test_bad_spec():
    with pytest.raises(ModelError, match=r"^model spec layer type must be a supported layer, "
                                         r"not 'LSTM'"):
        models.model_from_spec([{"type": "LSTM"}], (1, 8, 8))
    with pytest.raises(ModelError, match=r"^model spec entry 0 is malformed"):
        models.model_from_spec([{"type": "Linear", "in_features": 3}], (1, 8, 8))


def test_training_is_reproducible():
    split = data.load_digits()
    states = []
    for _ in range(2):
        model = models.build_model("lenet-digits", seed=3)
        history = train.train(model, split, epochs=1, batch_size=64, lr=0.05, momentum=0.9,
                              weight_decay=1e-4, seed=3, progress=False, log=lambda line: None)
        states.append((history, model.state_dict()))
    (h1, s1), (h2, s2) = states
    assert h1 == h2
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_checkpoint_round_trip(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2, 3), nn.Flatten(),
                          nn.Linear(32, 10))
    path = tmp_path / "c.pt"
    train.save_checkpoint(path, model, arch="custom", input_shape=(1, 8, 8), dataset="digits",
                          p_max=16)
    raw = torch.load(path, weights_only=True)
    assert (raw["arch"], raw["input_shape"], raw["dataset"], raw["p_max"]) == \
        ("custom", [1, 8, 8], "digits", 16)
    ckpt = train.load_checkpoint(path)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), model(x))
    assert (ckpt.arch, ckpt.input_shape, ckpt.dataset, ckpt.p_max) == \
        ("custom", (1, 8, 8), "digits", 16)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match=r"^.*none\.pt: checkpoint file not found; train "
                                              r"one with 'systolic train -o FILE\.pt'$"):
        train.load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"^.*junk\.pt: not a systolic checkpoint: it is "
                                              r"not a PyTorch file; train one with 'systolic "
                                              r"train -o FILE\.pt'$"):
        train.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"^.*other\.pt: not a systolic checkpoint"):
        train.load_checkpoint(tmp_path / "other.pt")


@pytest.mark.parametrize("kind", ["random", "module"])
def test_foreign_file_is_one_line(tmp_path, kind):
    # Issue 14: torch's text (several lines, terminal escapes, advice to pass weights_only=False)
    # must not reach the user.
    path = tmp_path / "junk.pt"
    if kind == "random":
        path.write_bytes(bytes(range(256)) * 3)
    else:
        torch.save(nn.Linear(2, 3), path)
    with pytest.raises(CheckpointError) as exc:
        train.load_checkpoint(path)
    message = str(exc.value)
    assert "\n" not in message
    assert "\x1b" not in message
    assert "weights_only" not in message
    assert message.startswith(f"{path}: not a systolic checkpoint: ")
    assert "'systolic train -o FILE.pt'" in message
    if kind == "module":
        assert "pickled Python objects (a saved module?)" in message


@pytest.mark.parametrize(("conv", "problem"), [
    ({"kernel_size": [9, 9]}, r"kernel size must be between 1 and 7, not \(9, 9\)"),
    ({"kernel_size": [3, 3], "dilation": 2}, r"dilation must be 1, not \(2, 2\)"),
])
def test_checkpoint_with_unsupported_layer(tmp_path, conv, problem):
    spec = [{"type": "Conv2d", "in_channels": 1, "out_channels": 2, "stride": 1, "padding": 0,
             "bias": True, **conv}, {"type": "Flatten"}, {"type": "Linear", "in_features": 8,
                                                          "out_features": 10, "bias": True}]
    torch.save({"format": "systolic.checkpoint", "version": 1, "arch": "custom", "spec": spec,
                "input_shape": [1, 8, 8], "dataset": "digits", "p_max": 16, "state_dict": {}},
               tmp_path / "c.pt")
    with pytest.raises(CheckpointError,
                       match=r"^.*c\.pt: the checkpoint's model is not supported: layer 0 "
                             r"\(Conv2d\(.*\)\): " + problem + SUPPORTED):
        train.load_checkpoint(tmp_path / "c.pt")


def _chain(*layers):
    return models.Chain(*layers)


def test_chain_spec_round_trip():
    model = _chain(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                   models.Add(1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Linear(4, 10))
    assert models.check_supported(model, (1, 8, 8))[3:6] == [(4, 8, 8), (4, 8, 8), (4, 1, 1)]
    spec = models.model_spec(model, (1, 8, 8))
    assert spec[3] == {"type": "Add", "skip": 1}
    assert spec[5] == {"type": "AdaptiveAvgPool2d", "output_size": 1}
    rebuilt = models.model_from_spec(spec, (1, 8, 8))
    assert type(rebuilt) is models.Chain
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        h = torch.relu(model[0](x))
        want = model[7](torch.relu(model[2](h) + h).mean((2, 3)))
        torch.testing.assert_close(rebuilt(x), want)


@pytest.mark.parametrize(("layers", "match"), [
    ([nn.Conv2d(1, 4, 3, padding=1), models.Add(-1), nn.Flatten(), nn.Linear(256, 10)],
     r"^layer 1 \(Add\(skip=-1\)\): the operands must have the same shape, not \(4, 8, 8\) and "
     r"\(1, 8, 8\) \(the output of layer -1\)"),
    ([nn.Conv2d(1, 4, 3, padding=1), models.Add(1), nn.Flatten(), nn.Linear(256, 10)],
     r"^layer 1 \(Add\(skip=1\)\): skip must be an earlier layer's index \(below 1\) or -1 \(the "
     r"input\), not 1"),
    ([nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), models.Add(0), nn.Flatten(),
      nn.Linear(256, 10)],
     r"^layer 3 \(Add\(skip=0\)\): skip must not be layer 0: its output before the ReLU that "
     r"follows is not kept; use layer 1's output"),
    ([nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10)],
     r"^layer 1 \(AdaptiveAvgPool2d\(output_size=2\)\): adaptive pooling must be to 1x1 "
     r"\(global\), not 2"),
])
def test_bad_chains(layers, match):
    with pytest.raises(ModelError, match=match + SUPPORTED):
        models.check_supported(_chain(*layers), (1, 8, 8))


def test_add_needs_a_chain():
    with pytest.raises(ModelError, match=r"^layer 1 \(Add\(skip=-1\)\): a residual Add needs a "
                                         r"models\.Chain, not a plain Sequential"):
        models.check_supported(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), models.Add(-1),
                                             nn.Flatten(), nn.Linear(64, 10)), (1, 8, 8))


@pytest.mark.parametrize(("arch", "stacks", "branches"), [
    ("resnet-mnist", [(16, 14, 14), (32, 7, 7), (32, 7, 7)], 1),
    ("mlperf-resnet8", [(16, 32, 32), (32, 16, 16), (64, 8, 8)], 2),
])
def test_residual_architectures_lower_to_chains(arch, stacks, branches):
    from systolic.sw import frontend

    a = models.ARCHS[arch]
    chain = frontend.lower(models.build_model(arch, seed=0).eval(), a.input_shape)
    assert type(chain) is models.Chain
    out = models.check_supported(chain, a.input_shape)
    assert [out[i] for i, m in enumerate(chain) if type(m) is models.Add] == stacks
    assert sum(type(m) is models.Branch for m in chain) == branches
    c = stacks[-1][0]
    assert out[-3:] == [(c, 1, 1), (c,), (10,)]


def test_batchnorm_model_checkpoint_round_trip(tmp_path):
    model = models.build_model("resnet-mnist", seed=1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    train.save_checkpoint(tmp_path / "r.pt", model, arch="resnet-mnist", input_shape=(1, 28, 28),
                          dataset="mnist", p_max=255)
    ckpt = train.load_checkpoint(tmp_path / "r.pt")
    assert type(ckpt.model) is models.Chain
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), model(x), rtol=1e-5, atol=1e-5)
