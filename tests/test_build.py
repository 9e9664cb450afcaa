"""``systolic build``: its error paths without a toolchain, and one real iCEBreaker build (slow).

The end-to-end build is the board's own configuration, the ``small`` preset (a 1x4 array, one
requantization lane on DSP blocks, weights in SPRAM) at 18 MHz from the PLL: about 4,700 of
the UP5K's 5,280 logic cells, 25 of 30 block RAMs, 2 of 4 SPRAMs, 6 of 8 DSPs; about a
minute, and then no time at all for the same design again (the bitstream is reused).
"""

import json

import pytest
from systolic.hw.build import BuildError, BuildReport, _reusable, _run_plan, build
from systolic.hw.config import preset
from systolic.sw.cli import main
from systolic.sw.errors import SystolicError

_UTILISATION = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:   14026/   5280   265%
Info: \t        ICESTORM_RAM:     102/     30   340%
Info: \t        ICESTORM_DSP:       8/      8   100%
ERROR: Unable to place cell 'x', no BELs remaining to implement cell type 'ICESTORM_RAM'
"""


def fake_plan(tmp_path, script):
    (tmp_path / "build_systolic.sh").write_text(script)
    return tmp_path


def test_unknown_board_cli(capsys):
    assert main(["build", "--board", "arty"]) == 2
    err = capsys.readouterr().err
    assert err == ("systolic: error: Unknown board 'arty'; known boards: ulx3s-85f, "
                   "icebreaker\n")


def test_unknown_board_api():
    with pytest.raises(SystolicError, match=r"^Unknown board 'de10'; known boards: "):
        build("de10")


def test_bad_seed():
    with pytest.raises(BuildError, match=r"^Seed must be a non-negative integer, not -1$"):
        build("icebreaker", seed=-1)


def test_does_not_fit_names_the_resources(tmp_path):
    (tmp_path / "systolic.tim").write_text(_UTILISATION)      # as nextpnr leaves it
    fake_plan(tmp_path, "exit 1\n")
    with pytest.raises(BuildError, match=(
            r"^The design does not fit the device: logic cells \(ICESTORM_LC\) 14026 of 5280; "
            r"block RAMs \(ICESTORM_RAM\) 102 of 30\. Use fewer array rows/cols \(--rows, "
            r"--cols\) or shallower memories \(--act-depth, --weight-depth\)$")):
        _run_plan(tmp_path, preset("small"))


def test_does_not_fit_suggests_small_preset(tmp_path):
    (tmp_path / "systolic.tim").write_text(_UTILISATION)      # as nextpnr leaves it
    fake_plan(tmp_path, "exit 1\n")
    with pytest.raises(BuildError, match=r"\. Use the `small` preset \(--preset small\) or "):
        _run_plan(tmp_path, preset("default"))


def test_tool_failure_shows_the_log(tmp_path):
    fake_plan(tmp_path, "echo 'ERROR: something broke in yosys' > systolic.rpt\n"
                        "echo 'yosys failed' >&2\nexit 3\n")
    with pytest.raises(BuildError, match=r"^The toolchain failed \(exit code 3\) in .*; end of "
                                         r"its log:\nERROR: something broke in yosys$"):
        _run_plan(tmp_path, preset("small"))


def test_reuse_needs_the_same_design_and_its_bitstream(tmp_path):
    report = BuildReport(
        board="icebreaker", bitstream=tmp_path / "systolic.bin", config={}, clock_mhz=12.0,
        baud=1_000_000, luts=1, ffs=1, dsps=0, brams=0, sprams=0, totals={}, fmax_mhz=20.0,
        target_mhz=12.0, timing_met=True, clocks={}, build_dir=tmp_path, design="abc")
    (tmp_path / "report.json").write_text(json.dumps(report.as_dict()))
    assert _reusable(tmp_path, "abc") is None                   # no bitstream
    (tmp_path / "systolic.bin").write_bytes(b"\xff" * 16)
    assert _reusable(tmp_path, "abd") is None                   # another design
    reused = _reusable(tmp_path, "abc")
    assert reused.reused
    hint = f"iceprog {tmp_path / 'systolic.bin'}"
    assert reused.as_dict() == {**report.as_dict(), "reused": True, "program_hint": hint}
    # Moved (or named by another path): found where it is now.
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    tmp_path.rename(moved)
    reused = _reusable(moved, "abc")
    assert (reused.bitstream, reused.build_dir) == (moved / "systolic.bin", moved)
    (moved / "report.json").write_text("{")
    assert _reusable(moved, "abc") is None                      # a broken report


@pytest.mark.slow
def test_build_icebreaker_end_to_end(tmp_path, capsys):
    out = tmp_path / "ice"
    assert main(["build", "--board", "icebreaker", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("board", "bitstream", "fmax_mhz", "target_mhz", "timing_met", "luts", "ffs",
                "dsps", "brams", "sprams", "totals", "clocks"):
        assert key in report, key
    assert report["board"] == "icebreaker"
    assert report["bitstream"] == str(out / "systolic.bin")
    assert (out / "systolic.bin").stat().st_size > 50_000
    assert report["target_mhz"] == 18.0
    assert report["config"] == preset("small").replace(target="ice40").as_dict()
    assert (report["dsps"], report["sprams"]) == (6, 2)
    assert report["totals"] == {"luts": 5280, "ffs": 5280, "dsps": 8, "brams": 30, "sprams": 4}
    assert 0 < report["luts"] <= 5280
    assert 0 < report["brams"] <= 30
    assert report["fmax_mhz"] > 0
    assert report["timing_met"] == (report["fmax_mhz"] >= 18.0)
    assert report["timing_met"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["luts"] == report["luts"]
    assert "utilization" in on_disk["nextpnr"]
    assert not report["reused"]
    # The same design again: its bitstream is reused, nothing is run.
    built = (out / "systolic.bin").stat().st_mtime_ns
    assert main(["build", "--board", "icebreaker", "-o", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reused"]
    assert {**again, "reused": False} == report
    assert (out / "systolic.bin").stat().st_mtime_ns == built
