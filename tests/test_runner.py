"""The RTL harness's own behaviour: simulator selection and its error messages."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from systolic.hw.config import AcceleratorConfig
from systolic.hw.isa import describe_pool, pack_descriptor
from systolic.hw.pool import PoolEngine
from systolic.sim.runner import SIMULATORS, SimulationError, run_cocotb, selected_simulators
from systolic.sw.errors import SystolicError

# The configuration of tests/test_pool_rtl.py, so that the simulator build is shared.
CFG = AcceleratorConfig(rows=2, cols=4, act_depth=1024, max_dim=32)


def one_case(expected_delta=0):
    """A 1x2x2 max-pooling layer; ``expected_delta`` corrupts the expected output."""
    cmd = describe_pool(CFG, channels=1, h=2, w=2, kernel=2, stride=1)
    inputs = [[v, 0, 0, 0] for v in (5, -7, 9, 1)]
    return {"name": "tiny", "cmd": pack_descriptor(CFG, cmd), "inputs": inputs,
            "expected": [[9 + expected_delta, 0, 0, 0]], "source": "none", "sink": "none",
            "seed": 0, "reset_after": None}


def run_pool(tmp_path, cases, *, sim="icarus", test_module="test_pool", **kwargs):
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps({"cols": CFG.cols, "latency": PoolEngine.LATENCY,
                                "cases": cases}))
    return run_cocotb(PoolEngine(CFG), name="pool_engine", test_module=test_module, sim=sim,
                      build_key=CFG.as_dict(), extra_env={"SYSTOLIC_VECTORS": path}, **kwargs)


def test_unknown_simulator():
    with pytest.raises(SimulationError,
                       match=r"^Simulator must be one of icarus, verilator, not 'modelsim'$"):
        run_cocotb(PoolEngine(CFG), name="pool_engine", test_module="test_pool",
                   sim="modelsim")


def test_error_is_a_systolic_error():
    with pytest.raises(SystolicError):
        run_cocotb(PoolEngine(CFG), name="pool_engine", test_module="test_pool", sim="vcs")


def test_top_must_be_a_component():
    with pytest.raises(SimulationError,
                       match=r"^top must be an amaranth wiring\.Component, not 42$"):
        run_cocotb(42, name="x", test_module="test_pool")


def test_sim_variable(monkeypatch):
    monkeypatch.delenv("SIM", raising=False)
    assert selected_simulators() == SIMULATORS
    monkeypatch.setenv("SIM", "verilator")
    assert selected_simulators() == ("verilator",)
    monkeypatch.setenv("SIM", "icarus, verilator")
    assert selected_simulators() == ("icarus", "verilator")
    monkeypatch.setenv("SIM", "ghdl")
    with pytest.raises(SimulationError,
                       match=r"^Simulator must be one of icarus, verilator, not 'ghdl'$"):
        selected_simulators()


def test_missing_icarus_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SimulationError, match=r"^Icarus Verilog is not installed; install "
                       r"Icarus Verilog 11 or newer, e\.g\. `apt-get install iverilog`$"):
        run_pool(tmp_path, [one_case()])


@pytest.mark.slow
def test_passing_run_returns_results(tmp_path):
    results = run_pool(tmp_path, [one_case()])
    assert results.name == f"results-run-{os.getpid()}.xml"
    assert results.is_file()
    # The run directory is gone; the results are kept beside the build.
    assert not (results.parent / f"run-{os.getpid()}").exists()


@pytest.mark.slow
def test_failing_cocotb_test_raises(tmp_path):
    with pytest.raises(SimulationError,
                       match=r"(?s)^1 of 1 cocotb tests failed on icarus \((.*)/results\.xml\):"
                             r"\n  pool_layers: .*tiny: 1 of 4 values differ: word 0 lane 0: "
                             r"9 != 10") as e:
        run_pool(tmp_path, [one_case(expected_delta=1)])
    # A failing run keeps its directory, named in the message, for the user to look at.
    run_dir = e.value.args[0].split("(", 1)[1].split(")", 1)[0].rsplit("/", 1)[0]
    assert run_dir.endswith(f"/run-{os.getpid()}")
    assert (Path(run_dir) / "results.xml").is_file()
    shutil.rmtree(run_dir)          # looked at: the suite leaves no run directory behind


@pytest.mark.slow
@pytest.mark.parametrize("sim", selected_simulators())
def test_waves_are_kept(tmp_path, sim, capfd):
    """A passing run with waveforms keeps them in the build directory and says where."""
    results = run_pool(tmp_path, [one_case()], sim=sim, waves=True)
    assert not (results.parent / f"run-{os.getpid()}").exists()
    err = capfd.readouterr().err
    match = re.search(r"systolic: waveforms of 'pool_engine' on \w+: (\S+)$", err, re.M)
    assert match, err
    waves = Path(match[1])
    assert waves.parent == results.parent
    assert waves.is_file()
    assert waves.stat().st_size > 0


def test_unknown_test_module(tmp_path):
    with pytest.raises(SimulationError, match=r"^cocotb test module 'systolic\.sim\.no_such' "
                                              r"not found; put it in sim/"):
        run_pool(tmp_path, [one_case()], test_module="no_such")


@pytest.mark.slow
def test_hung_simulation_is_killed(tmp_path):
    # Far more layers than a simulation can run in a second of wall time.
    cases = [one_case()] * 20000
    with pytest.raises(SimulationError, match=r"^The icarus simulation of 'pool_engine' ended "
                                              r"without results \(killed after 1 s\)") as e:
        run_pool(tmp_path, cases, timeout=1)
    run_dir = Path(re.search(r"the run directory (\S+)$", str(e.value))[1])
    assert run_dir.name == f"run-{os.getpid()}"
    shutil.rmtree(run_dir)
