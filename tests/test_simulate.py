"""``systolic simulate`` without a simulator: the comparison, the first-difference search and
the report, on RTL results made up from the golden model; and the command line's errors."""

import numpy as np
import pytest
from net_common import random_images, random_qnet
from systolic.hw.config import preset
from systolic.sw import cli, data, golden, perfmodel
from systolic.sw.compiler import compile_network
from systolic.sw.simulate import SimulationReport, _first_difference, format_report


def _results(qnet, program, images, gold):
    cycles = [perfmodel.predict_cycles(program.cfg, lay.fields) for lay in program.layers]
    return [{"logits": gold.logits[n].tolist(), "cycles": cycles,
             "outputs": [gold.outputs[lay.index][n].ravel().tolist()
                         for lay in program.layers]}
            for n in range(len(images))]


def test_first_difference_and_report():
    qnet = random_qnet("lenet-digits")
    program = compile_network(qnet, preset("default").replace(fused_pool=False))
    images = random_images(qnet, 3)
    gold = golden.run(qnet, images)
    results = _results(qnet, program, images, gold)
    assert _first_difference(program, gold, results) is None
    # One value of layer 2's output of image 1 corrupted: found at (c, y, x) = (5, 3, 2).
    out = np.array(results[1]["outputs"][2], np.int8).reshape(32, 4, 4)
    out[5, 3, 2] ^= 1
    results[1]["outputs"][2] = out.ravel().tolist()
    diff = _first_difference(program, gold, results)
    assert diff == {"layer": "layer 2 (conv 16->32 3x3)", "image": 1, "c": 5, "y": 3, "x": 2,
                    "rtl": int(out[5, 3, 2]), "golden": int(out[5, 3, 2] ^ 1), "differing": 1}
    logits = gold.logits.copy()
    logits[2, 7] += 1
    cycles = np.array([r["cycles"] for r in results])
    report = SimulationReport(program, logits, gold.logits, np.array([0, 1, 2]), cycles, diff,
                              1.5, "verilator")
    d = report.as_dict()
    assert (d["images"], d["mismatches"], d["logit_mismatches"]) == (3, 1, 1)
    assert d["cycles_per_image"] == sum(r for r in results[0]["cycles"])
    assert [row["cycles"] for row in d["layers"]] == results[0]["cycles"]
    assert d["layers"][2]["utilization"] == 73728 / (results[0]["cycles"][2] * 64)
    text = format_report(report)
    assert text.startswith("3 images on verilator, 8x8 array: 1 mismatching images (1 logits)")
    assert ("first difference: layer 2 (conv 16->32 3x3), image 1, (c, y, x) = (5, 3, 2)"
            in text)


def test_simulate_errors(tmp_path, capsys):
    qnet = random_qnet("lenet5")
    qnet.save(tmp_path / "l5.qnet")
    # lenet5 takes MNIST images: the built-in digits do not fit it.
    assert cli.main(["simulate", str(tmp_path / "l5.qnet"), "--dataset", "digits"]) == 2
    assert capsys.readouterr().err.startswith(
        "systolic: error: network input must match the digits images, not (1, 28, 28)")


@pytest.mark.parametrize(("argv", "message"), [
    (["--preset", "huge"],
     "Unknown preset 'huge'; known presets: default, small, wide, big, lenet"),
    (["--preset", "small", "--dataset", "mnist"], "activations must fit act_depth 1024 words"),
])
def test_simulate_fit_errors(tmp_path, capsys, argv, message, monkeypatch):
    qnet = random_qnet("lenet5")
    qnet.save(tmp_path / "l5.qnet")
    images = random_images(qnet, 2).astype(np.uint8)
    test = data.Dataset("mnist", images, np.zeros(2, np.int64), 255)
    split = data.Split(test, test)
    monkeypatch.setattr(data, "load", lambda name, data_dir=None: split)
    assert cli.main(["simulate", str(tmp_path / "l5.qnet"), *argv]) == 2
    assert capsys.readouterr().err.startswith(f"systolic: error: {message}")


@pytest.mark.parametrize(("images", "jobs", "batch"), [
    (360, 2, 60),       # 180 a process: 3 runs of 60, not 85 + 85 + 10
    (170, 2, 85),       # one run of the largest batch each
    (20, 2, 10),        # fewer images than fit: all of a process's share at once
    (200, 1, 67),       # 3 runs: 67 + 67 + 66
    (1, 2, 1),
])
def test_auto_batch_evens_out_the_processes(images, jobs, batch):
    from systolic.sw.compiler import largest_batch
    from systolic.sw.simulate import resolve_batch

    qnet, cfg = random_qnet("lenet-digits"), preset("default")
    assert largest_batch(qnet, cfg) == 85
    assert resolve_batch("auto", qnet, cfg, images, jobs=jobs) == batch
    assert resolve_batch("7", qnet, cfg, images, jobs=jobs) == 7
