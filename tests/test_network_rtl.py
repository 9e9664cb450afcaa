"""Whole networks on the core's Verilog: the compiled program, run by the host driver in a
cocotb testbench, gives the golden model's logits exactly, every layer's output too, and the
per-layer cycles the performance model predicts."""

import numpy as np
import pytest
from net_common import random_images, random_qnet
from systolic.hw.config import preset
from systolic.sim.runner import selected_simulators
from systolic.sw import golden, perfmodel
from systolic.sw.simulate import simulate

IMAGES = {"verilator": 10, "icarus": 3}


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
    # Cycles do not depend on the data, and the model predicts them within 2%.
    assert np.all(report.layer_cycles == report.layer_cycles[0])
    for lay, cycles in zip(report.program.layers, report.layer_cycles[0]):
        predicted = perfmodel.predict_cycles(cfg, lay.fields)
        assert abs(predicted - cycles) <= 0.02 * cycles, (lay.name, cycles, predicted)
