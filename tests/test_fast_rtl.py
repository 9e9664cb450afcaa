"""The fast harness (`systolic.sim.fast`): whole networks on Verilator clocked from C++, the host
driver a frame at a time. Same driver, same protocol, same golden comparison as the cocotb
route (``tests/test_network_rtl.py``), so this is where the suite runs networks at scale:
lenet-digits on the default preset, lenet5 on the 12x12 one, waveforms, and the harness's own
failure paths. (The virtual board's UART with faults on the wire: ``tests/test_deploy.py``,
``tests/test_fuzz.py``.)"""

import asyncio

import numpy as np
import pytest
from net_common import random_images, random_qnet
from systolic.hw.config import preset
from systolic.sim.fast import BYTE, Harness, HarnessLink, build_harness, network_top
from systolic.sw import golden, perfmodel, protocol
from systolic.sw.errors import SystolicError
from systolic.sw.simulate import parse_window, simulate

pytestmark = pytest.mark.slow


def _exact(report, qnet, images):
    np.testing.assert_array_equal(report.logits, golden.run(qnet, images).logits)
    assert report.mismatches == 0
    if report.layer_cycles.shape[1] == len(report.program.layers):
        assert report.model_exact, report.layer_cycles[0].tolist()
    else:
        # Each run's total: the model's for its batch size.
        for row, b in zip(report.layer_cycles, report.batches, strict=True):
            assert row[0] == perfmodel.predict_program(report.program.with_batch(int(b)))


def test_lenet_digits_fast_two_processes():
    """Every logit of 24 images exact, shared between two simulator processes, and every layer
    of every image taking exactly the cycles the performance model predicts."""
    qnet = random_qnet("lenet-digits")
    images = random_images(qnet, 24, seed=7)
    report = simulate(qnet, images, preset("default"), jobs=2)
    _exact(report, qnet, images)
    d = report.as_dict()
    assert (d["sim"], d["jobs"], d["images"]) == ("fast", 2, 24)
    assert d["sim_cycles"] >= 24 * d["cycles_per_image"]


def test_lenet_digits_fast_trace_and_waves(tmp_path):
    """The iCEBreaker's configuration (a 1x4 array, one requantization lane on DSP blocks, a
    max-only pooling engine): every layer's output of every image read back and exact, cycles
    as predicted; image 1's waveforms as FST."""
    qnet = random_qnet("lenet-digits", seed=4)
    images = random_images(qnet, 3, seed=3)
    fst = tmp_path / "w.fst"
    report = simulate(qnet, images, preset("small"), trace=True, waves=(1, 2),
                      waves_file=fst)
    _exact(report, qnet, images)
    assert report.first_difference is None
    assert report.speed["waves"] == str(fst)
    head = fst.read_bytes()[:1]
    assert head == b"\x00"                  # an FST file begins with its header block (type 0)
    assert fst.stat().st_size > 1000


def test_lenet5_big_preset_fast():
    """lenet5 (28x28 MNIST-shaped input) on the 12x12 preset, in batches of three: exact,
    cycles as predicted. (Dense input is covered on the default preset: here its frames are 26
    times longer and would take most of the test's time.)"""
    qnet = random_qnet("lenet5")
    images = random_images(qnet, 6, seed=5)
    report = simulate(qnet, images, preset("big"), batch=3)
    _exact(report, qnet, images)
    assert report.batches.tolist() == [3] * 6


def test_batch_identical_to_single_runs():
    """Eleven images in batches of four (4 + 4 + 3: the last runs the network compiled for
    three) give exactly the logits of eleven single runs, and of the golden model; every
    layer's output of a traced batch is exact too."""
    qnet = random_qnet("lenet-digits", seed=2)
    images = random_images(qnet, 11, seed=9)
    cfg = preset("default")
    single = simulate(qnet, images, cfg, jobs=1)
    batched = simulate(qnet, images, cfg, jobs=1, batch=4, dense_input=True)
    np.testing.assert_array_equal(batched.logits, single.logits)
    _exact(single, qnet, images)
    _exact(batched, qnet, images)
    assert batched.batches.tolist() == [4] * 8 + [3] * 3
    assert batched.as_dict()["utilization"] > single.as_dict()["utilization"]
    traced = simulate(qnet, images[:5], cfg, jobs=1, batch=5, trace=True)
    _exact(traced, qnet, images[:5])
    assert traced.first_difference is None


def test_linear_after_wide_map():
    """A fully connected layer after a 16-channel 12x12 map (flattening as a layout, wider
    than any kernel the engine walks): exact against the golden model, in batches."""
    import torch
    from systolic.sw import quantize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 12 * 12, 10))
    rng = np.random.default_rng(0)
    calib = rng.random((32, 1, 12, 12)).astype(np.float32)
    qnet = quantize.quantize(model, calib, input_shape=(1, 12, 12), p_max=255,
                             dataset="mnist", arch="custom")
    images = rng.integers(0, 128, (6, 1, 12, 12)).astype(np.int8)
    report = simulate(qnet, images, preset("default"), batch=3, jobs=1)
    _exact(report, qnet, images)
    assert report.program.layers[-1].fields["cin_words"] == 12 * 12 * 2


def test_lost_reply_is_a_link_error_not_a_hang():
    """A reply that never comes (a request the controller answers with fewer bytes than asked
    for) ends within the cycle budget as a `protocol.LinkError`."""
    cfg = preset("default")
    top, name, _ = network_top(cfg)
    exe = build_harness(top, name=name)
    with Harness(exe) as harness:
        link = HarnessLink(harness, budget=20_000)

        async def ask():
            await link.send(protocol.status_request())
            return await link.recv(200)

        with pytest.raises(protocol.LinkError, match="reply stopped after"):
            asyncio.run(ask())
        cycles, _ = harness.info()
        assert 20_000 <= cycles < 40_000
        # The harness is still in step: a STATUS request gets its whole reply.
        harness.queue((BYTE, b) for b in protocol.status_request())
        head = harness.recv(4, 10_000)
        assert head[0] == 0x5A
        rest = harness.recv(int.from_bytes(head[2:4], "little") + 2, 10_000)
        (reply,) = protocol.ReplyParser().feed(head + rest)
        reply.check()


def test_float_images_are_refused():
    qnet = random_qnet("lenet-digits")
    images = random_images(qnet, 2).astype(np.float32) / 127
    with pytest.raises(SystolicError, match=r"^images must be int8 \(quantized"):
        simulate(qnet, images, preset("default"))
    with pytest.raises(SystolicError, match=r"^images must be an array of shape \(N, 1, 8, 8\)"):
        simulate(qnet, np.zeros((2, 8, 8), np.int8), preset("default"))


@pytest.mark.parametrize(("text", "window"), [("0", (0, 1)), ("2:5", (2, 5)), ("all", (0, 6))])
def test_waves_window(text, window):
    assert parse_window(text, 6) == window


@pytest.mark.parametrize("text", ["6", "3:2", "x", "1:9"])
def test_waves_window_errors(text):
    with pytest.raises(SystolicError, match=r"^--waves must"):
        parse_window(text, 6)
