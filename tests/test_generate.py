"""``systolic generate``: Verilog and manifest, and its errors."""

import json
import re

import pytest
from systolic.hw.config import PRESETS, AcceleratorConfig, ConfigError, preset
from systolic.hw.pool import pool_stages
from systolic.sw.cli import main


def test_generate_writes_verilog_and_manifest(tmp_path, capsys):
    main(["generate", "--preset", "small", "-o", str(tmp_path), "--json"])
    man = json.loads(capsys.readouterr().out)
    text = (tmp_path / "systolic.v").read_text()
    assert "module systolic(" in text
    assert man == json.loads((tmp_path / "manifest.json").read_text())
    cfg = PRESETS["small"]
    assert man["config"]["rows"] == cfg.rows
    assert man["dsps"]["count"] == cfg.dsps == cfg.rows * cfg.cols + 2 * cfg.rq_lanes
    names = {p["name"]: p for p in man["ports"]}
    assert names["rx__payload"] == {"name": "rx__payload", "direction": "in", "width": 8}
    assert names["tx__valid"]["direction"] == "out"
    assert {m["name"] for m in man["memories"]} >= {"act", "weights", "params", "program"}


def test_generate_overrides(tmp_path, capsys):
    main(["generate", "--rows", "4", "--cols", "8", "--target", "ecp5", "-o", str(tmp_path),
          "--json"])
    man = json.loads(capsys.readouterr().out)
    assert (man["config"]["rows"], man["config"]["cols"]) == (4, 8)
    # 32 PEs and the residual add's 8 multipliers: as many as the Verilog instantiates.
    assert man["dsps"] == {"count": 40, "kind": "MULT18X18D"}
    text = (tmp_path / "systolic.v").read_text()
    assert len(re.findall(r"^\s*MULT18X18D #\(", text, re.M)) == 40


@pytest.mark.parametrize(("argv", "message"), [
    (["--preset", "huge"], r"systolic: error: Unknown preset 'huge'; known presets: default, "
                           r"small, wide, big, lenet\n"),
    (["--rows", "8", "--cols", "4"], r"systolic: error: Array rows must not exceed cols "
                                     r"\(8 > 4\)"),
    (["--act-depth", "1000"], r"systolic: error: act_depth must be a power of two between 16 "
                              r"and 2\*\*20, not 1000\n"),
])
def test_generate_rejects_bad_configs(tmp_path, capsys, argv, message):
    assert main(["generate", *argv, "-o", str(tmp_path)]) == 2
    assert re.match(message, capsys.readouterr().err)


def test_config_checks():
    with pytest.raises(ConfigError, match=r"^Array cols must be an integer between 1 and 32, "
                                          r"not 0$"):
        AcceleratorConfig(cols=0)
    with pytest.raises(ConfigError, match=r"^target must be one of generic, ecp5, ice40, "
                                          r"not 'xilinx'$"):
        AcceleratorConfig(target="xilinx")
    assert preset("big").pes == 144
    with pytest.raises(ConfigError, match=r"^deep_pipeline must be True or False, not 1$"):
        AcceleratorConfig(deep_pipeline=1)


def test_generate_deep_pipeline(tmp_path, capsys):
    # The knob reaches the manifest, and the Verilog has the stages: the mean's third stage's
    # registers (times455) are there only with it.
    for flag, present in (("--deep-pipeline", True), ("--no-deep-pipeline", False)):
        out = tmp_path / flag
        main(["generate", "--preset", "wide", flag, "-o", str(out), "--json"])
        man = json.loads(capsys.readouterr().out)
        assert man["config"]["deep_pipeline"] is present
        assert ("times455" in (out / "systolic.v").read_text()) is present
    # Without averaging and the element-wise engines it still adds the pooling windows' stages
    # (two history RAMs a window instead of one), and the model counts them.
    out = tmp_path / "max-only"
    main(["generate", "--preset", "wide", "--no-pool-avg", "--no-eltwise", "--deep-pipeline",
          "-o", str(out), "--json"])
    man = json.loads(capsys.readouterr().out)
    assert (man["config"]["deep_pipeline"], man["config"]["pool_avg"]) == (True, False)
    assert pool_stages(preset("wide").replace(pool_avg=False, eltwise=False,
                                              deep_pipeline=True)) == (6, 5, 1)
    assert len(re.findall(r"reg \[\d+:0\] history[01] \[", (out / "systolic.v").read_text())) == 4


def test_memory_contents_emitted_as_amaranth_does():
    """`systolic.hw._meminit` writes the RTLIL (and so the Verilog) Amaranth's own emitter
    writes, byte for byte: negative and wide rows, a depth that is not a power of two, a memory
    left at zero, one with no rows given."""
    from amaranth.back import rtlil
    from amaranth.hdl import Module, signed
    from amaranth.lib import memory
    from systolic.hw import _meminit

    def design():
        m, ports = Module(), []
        for i, (shape, depth, init) in enumerate([
                (signed(8), 5, [-128, 127, -1, 0, 3]), (64, 12, [2**64 - 1, 1, 2**63]),
                (16, 300, []), (3, 7, [5, 6])]):
            mem = m.submodules[f"mem{i}"] = memory.Memory(shape=shape, depth=depth, init=init)
            port = mem.read_port()
            m.d.comb += port.addr.eq(i)
            ports.append(port.data)
        return m, ports

    assert rtlil.ModuleEmitter.emit_memory is _meminit.emit_memory      # installed by hw
    m, ports = design()
    ours = rtlil.convert(m, ports=ports)
    try:
        rtlil.ModuleEmitter.emit_memory = _meminit._ORIGINAL
        m, ports = design()
        theirs = rtlil.convert(m, ports=ports)
    finally:
        rtlil.ModuleEmitter.emit_memory = _meminit.emit_memory
    assert "$meminit_v2" in ours
    assert ours == theirs
