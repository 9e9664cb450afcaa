"""Whole networks on the core's Verilog: the compiled program, run by the host driver in a
cocotb testbench (the reference route, a clock edge at a time), gives the golden model's logits
exactly, every layer's output too, and the per-layer cycles the performance model predicts; the
command line on the fast harness (more of it: ``tests/test_fast_rtl.py``; the demo:
``tests/test_report.py``)."""

import json

import numpy as np
import pytest
from net_common import random_images, random_qnet
from systolic.hw.config import preset
from systolic.sim.runner import selected_simulators
from systolic.sw import golden, perfmodel
from systolic.sw.simulate import simulate

# The fast harness runs networks at scale (every image's cycles as the model predicts, the
# same whatever the data: 24 images in tests/test_fast_rtl.py). Here the cocotb route runs one
# image on one simulator: Icarus where it is selected, whose build of this design the report
# tests share (Verilator's cocotb build of it is a minute of its own; the cocotb testbench and
# its Verilator build are the same for every design, and tests/test_controller_rtl.py runs a
# controller through them).
_SIM = "icarus" if "icarus" in selected_simulators() else selected_simulators()[0]


@pytest.mark.slow
@pytest.mark.parametrize("sim", [_SIM])
def test_lenet_digits_rtl(sim):
    cfg = preset("default")
    qnet = random_qnet("lenet-digits")
    images = random_images(qnet, 1)
    report = simulate(qnet, images, cfg, sim=sim, trace=True)
    want = golden.run(qnet, images).logits
    np.testing.assert_array_equal(report.logits, want)
    assert report.mismatches == 0
    assert report.first_difference is None          # every layer's output, every value
    # The model predicts every layer's cycles exactly.
    predicted = [perfmodel.predict_cycles(cfg, lay.fields) for lay in report.program.layers]
    assert report.layer_cycles[0].tolist() == predicted, [lay.name for lay in report.program.layers]
    # And each layer's run of its own (tracing), the controller's cycles around it included.
    assert report.run_exact, report.run_cycles.tolist()


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
    # The whole run's cycles (the controller's between the layers too) and the layers' own,
    # each exactly as the model predicts.
    assert (d["run_exact"], d["model_exact"]) == (True, True)
    assert d["cycles_per_image"] > sum(row["cycles"] for row in d["layers"])
    assert [row["cycles"] for row in d["layers"]] == [row["predicted_cycles"]
                                                      for row in d["layers"]]
