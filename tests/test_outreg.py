"""`systolic.hw.outreg`: which flip-flops move into a DP16KD's output register, and which stay.

The netlist simulation (tests/test_netlist_rtl.py) checks the whole design with the output
registers on, against the golden model; these check the rule on small netlists by hand."""

import json

import pytest
from systolic.hw import outreg

CLK, CE, RST, OTHER_CLK = 2, 3, 4, 5


def _bram(width=9):
    bits = 100
    conns = {"CLKA": [CLK], "CLKB": [CLK], "OCEA": ["1"], "OCEB": ["1"]}
    for p in "AB":
        for i in range(18):
            conns[f"DO{p}{i}"] = [bits]
            bits += 1
    return {"type": "DP16KD",
            "parameters": {"DATA_WIDTH_A": f"{width:032b}", "DATA_WIDTH_B": f"{width:032b}",
                           "REGMODE_A": "NOREG", "REGMODE_B": "NOREG", "CLKAMUX": "CLKA",
                           "CLKBMUX": "CLKB"},
            "port_directions": {k: "output" if k.startswith("DO") else "input" for k in conns},
            "connections": conns}


def _ff(d, q, *, ce=None, lsr="0", clk=CLK):
    conns = {"CLK": [clk], "DI": [d], "LSR": [lsr], "Q": [q]}
    if ce is not None:
        conns["CE"] = [ce]
    return {"type": "TRELLIS_FF",
            "parameters": {"CEMUX": "1 " if ce is None else "CE", "CLKMUX": "CLK",
                           "LSRMUX": "LSR", "REGSET": "RESET", "SRMODE": "LSR_OVER_CE"},
            "port_directions": {"CLK": "input", "DI": "input", "LSR": "input", "CE": "input",
                                "Q": "output"},
            "connections": conns}


def _lut(a, f):
    return {"type": "LUT4", "parameters": {}, "port_directions": {"A": "input", "Z": "output"},
            "connections": {"A": [a], "Z": [f]}}


def _design(cells):
    return {"modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                                "cells": cells, "netnames": {}}}}


def _port_b(bram, n=4):
    return [bram["connections"][f"DOB{i}"][0] for i in range(n)]


def test_plain_flip_flops_move_in():
    bram = _bram()
    cells = {"ram": bram}
    for i, d in enumerate(_port_b(bram)):
        cells[f"q{i}"] = _ff(d, 500 + i, ce=CE)
    design = _design(cells)
    assert outreg.absorb(design) == {"ports": 1, "flip_flops": 4, "kept": 0}
    ram = design["modules"]["top"]["cells"]["ram"]
    assert sorted(design["modules"]["top"]["cells"]) == ["ram"]
    assert (ram["parameters"]["REGMODE_A"], ram["parameters"]["REGMODE_B"]) == ("NOREG",
                                                                               "OUTREG")
    assert ram["connections"]["OCEB"] == [CE]
    assert ram["connections"]["OCEA"] == ["1"]
    assert [ram["connections"][f"DOB{i}"] for i in range(4)] == [[500], [501], [502], [503]]


def test_36_bit_port_sets_both_halves():
    bram = _bram(36)
    cells = {"ram": bram}
    for i in range(2):
        cells[f"a{i}"] = _ff(bram["connections"][f"DOA{i}"][0], 600 + i)
        cells[f"b{i}"] = _ff(bram["connections"][f"DOB{i}"][0], 700 + i)
    design = _design(cells)
    assert outreg.absorb(design) == {"ports": 1, "flip_flops": 4, "kept": 0}
    ram = design["modules"]["top"]["cells"]["ram"]
    assert ram["parameters"]["REGMODE_A"] == ram["parameters"]["REGMODE_B"] == "OUTREG"
    assert ram["connections"]["OCEA"] == ram["connections"]["OCEB"] == ["1"]


@pytest.mark.parametrize("why", ["reset", "set", "two_loads", "logic", "enables", "clock"])
def test_other_loads_keep_the_port_as_it_is(why):
    bram = _bram()
    cells = {"ram": bram}
    outs = _port_b(bram)
    for i, d in enumerate(outs):
        cells[f"q{i}"] = _ff(d, 500 + i, ce=CE)
    if why == "reset":
        cells["q0"] = _ff(outs[0], 500, ce=CE, lsr=RST)
    elif why == "set":
        cells["q0"]["parameters"]["REGSET"] = "SET"
    elif why == "two_loads":
        cells["extra"] = _ff(outs[1], 510, ce=CE)
    elif why == "logic":
        cells["q2"] = _lut(outs[2], 502)
    elif why == "enables":
        cells["q3"] = _ff(outs[3], 503)
    elif why == "clock":
        cells["q3"] = _ff(outs[3], 503, ce=CE, clk=OTHER_CLK)
    design = _design(cells)
    before = json.dumps(design, sort_keys=True)
    assert outreg.absorb(design) == {"ports": 0, "flip_flops": 0, "kept": 1}
    assert json.dumps(design, sort_keys=True) == before


def test_command_line(tmp_path, capsys):
    bram = _bram()
    cells = {"ram": bram, "q": _ff(_port_b(bram)[0], 500)}
    path = tmp_path / "netlist.json"
    path.write_text(json.dumps(_design(cells)))
    assert outreg.main([str(path)]) == 0
    assert "1 block RAM read port given its output register" in capsys.readouterr().out
    assert json.loads(path.read_text())["modules"]["top"]["cells"]["ram"]["parameters"][
        "REGMODE_B"] == "OUTREG"
    assert json.loads((tmp_path / outreg.REPORT).read_text()) == {
        "ports": 1, "flip_flops": 1, "kept": 0}
    path.write_text("{not json")
    assert outreg.main([str(path)]) == 1
    assert "is not a Yosys JSON netlist" in capsys.readouterr().err
