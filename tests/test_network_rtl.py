"""Whole networks on the core's Verilog: the compiled program, run by the host driver in a
cocotb testbench (the reference route, a clock edge at a time), gives the golden model's logits
exactly, every layer's output too, and the per-layer cycles the performance model predicts; the
command line and the demo on the fast harness (more of it: ``tests/test_fast_rtl.py``)."""

import json

import numpy as np
import pytest
from net_common import random_images, random_qnet
from systolic.hw.config import preset
from systolic.sim.runner import selected_simulators
from systolic.sw import golden, perfmodel
from systolic.sw.simulate import simulate

# The fast harness runs networks at scale (every image's cycles as the model predicts: 24 images
# in tests/test_fast_rtl.py). Here two images on Verilator show that the cycles do not depend on
# the data; Icarus runs one (the test 45 s here, against 52 to 67 s with two).
IMAGES = {"verilator": 2, "icarus": 1}


@pytest.mark.slow
@pytest.mark.parametrize("sim", selected_simulators())
def test_lenet_digits_rtl(sim):
    cfg = preset("default")
    qnet = random_qnet("lenet-digits")
    images = random_images(qnet, IMAGES[sim])
    report = simulate(qnet, images, cfg, sim=sim, trace=True)
    want = golden.run(qnet, images).logits
    np.testing.assert_array_equal(report.logits, want)
    assert report.mismatches == 0
    assert report.first_difference is None          # every layer's output, every value
    # Cycles do not depend on the data, and the model predicts every layer's exactly.
    assert np.all(report.layer_cycles == report.layer_cycles[0])
    predicted = [perfmodel.predict_cycles(cfg, lay.fields) for lay in report.program.layers]
    assert report.layer_cycles[0].tolist() == predicted, [lay.name for lay in report.program.layers]


@pytest.mark.slow
def test_simulate_cli_json(tmp_path, capfd):
    """``systolic simulate --json`` prints one JSON object, the simulator's log elsewhere."""
    from systolic.sw import cli

    qnet = random_qnet("lenet-digits", seed=3)
    qnet.save(tmp_path / "m.qnet")
    sim = "fast"
    assert cli.main(["simulate", str(tmp_path / "m.qnet"), "--images", "2", "--json"]) == 0
    out, _ = capfd.readouterr()
    d = json.loads(out)
    assert (d["images"], d["mismatches"], d["sim"]) == (2, 0, sim)
    assert d["rtl_accuracy"] == d["golden_accuracy"]
    assert d["cycles_per_image"] == sum(row["cycles"] for row in d["layers"])
    assert [row["cycles"] for row in d["layers"]] == [row["predicted_cycles"]
                                                      for row in d["layers"]]


@pytest.mark.slow
def test_demo(tmp_path):
    from systolic.sw.demo import run_demo

    lines = []
    result = run_demo(tmp_path / "demo", images=3, epochs=1, log=lines.append)
    assert result["mismatches"] == 0
    assert result["images"] == 3
    for name in ("systolic.v", "manifest.json", "model.qnet", "model.pt", "report.txt",
                 "report.json"):
        assert (tmp_path / "demo" / name).is_file()
    assert (tmp_path / "demo" / "systolic.v").read_text().count("module systolic(") == 1
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["images"] == 3
    assert any(line.startswith("3 images on ") for line in lines)
