"""The boards' designs as built: each board's controller, synthesized by Yosys as the board build
synthesizes it (ECP5: MULT18X18D and DP16KD; iCE40: SB_MAC16, SB_RAM40_4K and SB_SPRAM256KA),
simulated cell by cell on the cell models, runs a whole network through the host driver and
gives the golden model's logits exactly, every one."""

import re

import numpy as np
import pytest
from net_common import random_images, random_qnet
from systolic.hw.config import AcceleratorConfig, preset
from systolic.hw.netlist import NetlistError, board_config, board_netlist
from systolic.sw import golden, perfmodel
from systolic.sw.simulate import simulate

# What CI simulates, per board: its configuration (None: the board's own) and images. The
# ULX3S's 8x8 netlist (75 DP16KD, 64 MULT18X18D, 14k LUTs) takes far longer to build and run
# than CI allows; CI runs a 2x2 array with the same primitives in the same modes, and
# `python bench/netlist.py` runs the board's own design by hand. It leaves out what
# lenet-digits does not run (average pooling, kernels over 3x3): 3,599 LUT4s and 4,055
# flip-flops instead of 4,711 and 4,739, so less C++ to compile. It keeps dense convolutions
# and fused pooling, as the ULX3S's build: lenet-digits' first layer
# runs dense, two taps a word, and both convolutions pool on the way to memory, on the
# synthesized netlist.
# The ULX3S's fully connected layers row by row (`fc_rows`): a 2x8 array, its weight memory in
# two banks of 1024 x 16-bit slices (a DP16KD each, their words in its output registers):
# lenet-digits' 128 -> 10 runs as two channel tiles, one a row.
CASES = {
    "icebreaker": ("icebreaker", None, 1),
    "ulx3s-85f": ("ulx3s-85f", preset("default").replace(
        rows=2, cols=2, act_depth=1024, weight_depth=4096, max_dim=63, max_kernel=3,
        pool_avg=False, eltwise=False, target="ecp5"), 1),
    "ulx3s-85f-fc-rows": ("ulx3s-85f", preset("default").replace(
        rows=2, cols=8, act_depth=1024, weight_depth=2048, max_dim=63, max_kernel=3,
        pool_avg=False, eltwise=False, fc_rows=2, target="ecp5"), 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_netlist_lenet_digits(case):
    # On the fast harness (Verilator, whatever $SIM picks for cocotb): Icarus takes over half
    # an hour an image on a netlist (`bench/netlist.py --sim icarus`).
    board, cfg, n = CASES[case]
    netlist = board_netlist(board, cfg)
    kinds = {"ecp5": ("MULT18X18D", "DP16KD"),
             "ice40": ("SB_MAC16", "SB_RAM40_4K", "SB_SPRAM256KA")}[netlist.family]
    for kind in kinds:                  # the board's primitives are what is simulated
        assert netlist.cells.get(kind, 0) > 0, (kind, netlist.cells)
    if netlist.family == "ecp5":        # block RAM output registers too (`outreg`)
        assert re.search(r'REGMODE_[AB]\("OUTREG"\)', netlist.path.read_text())
    qnet = random_qnet("lenet-digits")
    images = random_images(qnet, n)
    # On the fast harness: the netlist and its cell models compiled with the C++ clock loop.
    report = simulate(qnet, images, AcceleratorConfig.from_dict(netlist.config), sim="fast",
                      netlist=netlist, jobs=1)
    np.testing.assert_array_equal(report.logits, golden.run(qnet, images).logits)
    assert report.mismatches == 0
    # The run's cycles as the model gives them from its layers', on each board's controller:
    # the ECP5's counts every cycle, fetching each descriptor while the layer before runs, on
    # registered program memory reads; the iCE40's sums the layers'.
    assert report.run_cycles.tolist() == [perfmodel.run_cycles(report.program.cfg, row)
                                          for row in report.layer_cycles.tolist()]
    # And every layer's as the model predicts, on the 2x2 too, whose fill cannot keep up with
    # the array (`systolic.hw.conv.bank_cycles`).
    assert report.layer_cycles.tolist() == [
        [perfmodel.predict_layer(report.program.cfg, lay) for lay in report.program.layers]] * n
    assert report.program.layers[0].fields.get("dense", 0) == (board == "ulx3s-85f")
    assert [lay.fields.get("pool", 0) for lay in report.program.layers] == (
        [1, 1, 0] if board == "ulx3s-85f" else [0, 0, 0, 0, 0])
    assert report.program.layers[-1].fields.get("fc_rows", 0) == (case == "ulx3s-85f-fc-rows")


def test_board_config_is_the_boards():
    _, cfg = board_config("icebreaker")
    assert cfg == preset("small").replace(target="ice40")
    _, cfg = board_config("ulx3s-85f")
    assert cfg == preset("wide").replace(target="ecp5")


def test_board_config_rejects_another_family():
    with pytest.raises(NetlistError, match=r"^Configuration target for icebreaker must be "
                                           r"'ice40', not 'ecp5'$"):
        board_netlist("icebreaker", preset("small").replace(target="ecp5"))


def test_unknown_board():
    with pytest.raises(NetlistError, match=re.escape("Unknown board 'de0'; known boards: ")):
        board_netlist("de0")
