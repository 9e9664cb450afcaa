"""The RTL harness's own behaviour: simulator selection and its error messages."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out
from systolic.hw.config import AcceleratorConfig
from systolic.hw.isa import describe_pool, pack_descriptor
from systolic.hw.pool import PoolEngine, pool_latency
from systolic.sim.runner import (
    SIMULATORS,
    SimulationError,
    build_root,
    compiler_cache_env,
    find_verilator,
    run_cocotb,
    selected_simulators,
    simulation_verilog,
)
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
    path.write_text(json.dumps({"cols": CFG.cols, "latency": pool_latency(CFG),
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


@pytest.mark.slow
def test_verilator_builds_share_compiled_objects(tmp_path, monkeypatch):
    """ccache sits in front of Verilator's C++ compiler (`compiler_cache_env`): a build of a
    design in another checkout, with its own Verilator (another absolute path to the runtime's
    sources and headers), compiles nothing, every object a cache hit (Verilator's runtime is
    the same objects in every build)."""
    monkeypatch.delenv("OBJCACHE", raising=False)
    monkeypatch.setenv("CCACHE_DIR", str(tmp_path / "cache"))
    env = compiler_cache_env()
    assert Path(env["OBJCACHE"]).is_file()
    assert env["CCACHE_DIR"] == str(tmp_path / "cache")
    find_verilator()
    for d in ("a", "b"):
        checkout = tmp_path / d
        root = checkout / "venv" / "verilator"
        shutil.copytree(os.environ["VERILATOR_ROOT"], root, symlinks=True)
        (checkout / "build").mkdir()
        (checkout / "top.v").write_text("module top(input clk); initial $finish; endmodule\n")
        done = subprocess.run(
            ["verilator", "--cc", "--exe", "--build", "--main", "-CFLAGS", "-O0", "../top.v",
             "-Mdir", "obj"], cwd=checkout / "build", capture_output=True, text=True,
            env={**os.environ, **env, "CCACHE_BASEDIR": str(checkout),
                 "VERILATOR_ROOT": str(root),
                 "PATH": os.pathsep.join([str(root / "bin"), os.environ["PATH"]]),
                 "CCACHE_STATSLOG": str(tmp_path / f"{d}.stats")})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    stats = (tmp_path / "b.stats").read_text().splitlines()
    compiled = [line for line in stats if line.startswith("# ")]
    results = [line for line in stats if line and not line.startswith(("# ", "local_storage"))]
    assert len(compiled) >= 3, stats          # verilated.cpp, verilated_threads.cpp, the model
    # The checkout's own runtime, named relative to it (``CCACHE_BASEDIR``) as in the other.
    assert compiled[:2] == [f"# ../../venv/verilator/include/{f}.cpp"
                            for f in ("verilated", "verilated_threads")], compiled
    assert results == ["direct_cache_hit"] * len(compiled), stats


def test_compiler_cache_left_to_the_user(monkeypatch, tmp_path):
    monkeypatch.setenv("OBJCACHE", "")                  # the user's choice: no cache
    assert compiler_cache_env() == {}
    monkeypatch.delenv("OBJCACHE")
    monkeypatch.setenv("CCACHE_DIR", str(tmp_path))
    assert compiler_cache_env()["CCACHE_DIR"] == str(tmp_path)
    monkeypatch.delenv("CCACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert compiler_cache_env()["CCACHE_DIR"] == str(tmp_path / "c" / "systolic" / "ccache")
    base = Path(compiler_cache_env()["CCACHE_BASEDIR"])     # the checkout: its builds, its venv
    assert build_root().resolve().is_relative_to(base)
    assert Path(sys.prefix).resolve().is_relative_to(base)
    monkeypatch.setenv("CCACHE_BASEDIR", "/elsewhere")
    assert "CCACHE_BASEDIR" not in compiler_cache_env()


class _TwoMemories(wiring.Component):
    """A memory that starts all zero and one that starts with data, each read by address."""

    addr: In(9)
    zero: Out(8)
    data: Out(8)

    def elaborate(self, platform):
        m = Module()
        # (`table` is a Verilog keyword: its name is escaped, ``\\table ``.)
        m.submodules.table = zeros = memory.Memory(shape=8, depth=300, init=[])
        m.submodules.stored = stored = memory.Memory(shape=8, depth=4, init=[0, 7, 0, 9])
        z, t = zeros.read_port(domain="comb"), stored.read_port(domain="comb")
        m.d.comb += [z.addr.eq(self.addr), t.addr.eq(self.addr[:2]),
                     self.zero.eq(z.data), self.data.eq(t.data)]
        return m


def test_simulation_verilog_zeroes_memories_by_a_loop(tmp_path):
    """The zeroed memory's 300 rows become one loop; the other memory's rows stay as Amaranth
    wrote them; and on Icarus every row reads back as the design starts (0, not X)."""
    text = simulation_verilog(_TwoMemories(), "two")
    assert re.findall(r"(?m)^  initial for \(\\(\w+)\$init = 0; \\\1\$init < (\d+);", text) == [
        ("table", "300")]
    assert "table [299] = " not in text
    assert re.search(r"stored\[1\] = 8'h07;\n\s+stored\[2\] = 8'h00;\n\s+stored\[3\] = 8'h09;",
                     text)
    (tmp_path / "two.v").write_text(text)
    (tmp_path / "tb.v").write_text(
        "module tb; reg [8:0] addr; wire [7:0] zero, data;\n"
        "  two dut(.addr(addr), .zero(zero), .data(data));\n"
        "  integer a; initial begin for (a = 0; a < 300; a = a + 1) begin addr = a; #1;\n"
        '    $display("%0d %b %0d", a, zero, data); end $finish; end\nendmodule\n')
    subprocess.run(["iverilog", "-g2012", "-o", "sim.vvp", "tb.v", "two.v"], cwd=tmp_path,
                   check=True)
    out = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout.split("\n")
    rows = [line.split() for line in out if re.match(r"\d+ ", line)]
    assert rows == [[str(a), "00000000", str([0, 7, 0, 9][a % 4])] for a in range(300)]
