"""``systolic build``: its error paths without a toolchain, and one real iCEBreaker build (slow).

The end-to-end build is the board's own configuration, the ``small`` preset (a 1x4 array, one
requantization lane on DSP blocks, weights in SPRAM) at 30 MHz from the PLL: about 5,030 of
the UP5K's 5,280 logic cells, 26 of 30 block RAMs, 2 of 4 SPRAMs, 6 of 8 DSPs; three to six
minutes, and then no time at all for the same design again (the bitstream is reused).
"""

import dataclasses
import json
import os
import threading

import pytest
from systolic.hw import build as build_module
from systolic.hw.boards import fastest_clock
from systolic.hw.build import (
    MAX_SEEDS,
    RIPUP_PATIENCE,
    BuildCancelled,
    BuildError,
    BuildReport,
    TimingError,
    _outreg_counts,
    _reseeded,
    _reusable,
    _run_plan,
    _stage,
    build,
    build_seeds,
    critical_path_summary,
    parse_seeds,
    parse_seeds_text,
    ripup_stalled,
)
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


# The critical path of an 8x8 array on the ECP5-85F as nextpnr's report.json gave it (the
# carry chain's hops shortened to two).
_REPORT_PATH = json.loads("""[
 {"delay": 0.525, "type": "clk-to-q",
  "from": {"cell": "pe_4_6.first_d0_TRELLIS_FF_Q", "loc": [60, 7], "port": "Q"},
  "to": {"cell": "pe_4_6.first_d0_TRELLIS_FF_Q", "loc": [60, 7], "port": "Q"}},
 {"delay": 2.999, "type": "routing", "net": "pe_3_5.first_d2",
  "sources": ["/work/main/hw/pe.py:73"],
  "from": {"cell": "pe_4_6.first_d0_TRELLIS_FF_Q", "loc": [60, 7], "port": "Q"},
  "to": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_5_DI_CCU2C_S0_B0_LUT4_Z", "loc": [36, 19],
         "port": "D"}},
 {"delay": 0.236, "type": "logic",
  "from": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_5_DI_CCU2C_S0_B0_LUT4_Z", "loc": [36, 19],
           "port": "D"},
  "to": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_5_DI_CCU2C_S0_B0_LUT4_Z", "loc": [36, 19],
         "port": "F"}},
 {"delay": 1.07, "type": "routing", "net": "pe_1_7.acc_TRELLIS_FF_Q_5_DI_CCU2C_S0_B0",
  "from": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_5_DI_CCU2C_S0_B0_LUT4_Z", "loc": [36, 19],
           "port": "F"},
  "to": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_5_DI_CCU2C_S0$CCU2_COMB0", "loc": [36, 19],
         "port": "B"}},
 {"delay": 0.448, "type": "logic",
  "from": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_5_DI_CCU2C_S0$CCU2_COMB0", "loc": [36, 19],
           "port": "B"},
  "to": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_30_DI_CCU2C_S0$CCU2_COMB1", "loc": [39, 20],
         "port": "F"}},
 {"delay": 0.13, "type": "routing", "net": "pe_1_7.acc_TRELLIS_FF_Q_30_DI_CCU2C_S0_S1",
  "from": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_30_DI_CCU2C_S0$CCU2_COMB1", "loc": [39, 20],
           "port": "F"},
  "to": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_31", "loc": [39, 20], "port": "DI"}},
 {"delay": 0, "type": "setup",
  "from": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_31", "loc": [39, 20], "port": "DI"},
  "to": {"cell": "pe_1_7.acc_TRELLIS_FF_Q_31", "loc": [39, 20], "port": "DI"}}
]""")


def fake_plan(tmp_path, script):
    (tmp_path / "build_systolic.sh").write_text(script)
    return tmp_path


def test_unknown_board_cli(capsys):
    assert main(["build", "--board", "arty"]) == 2
    err = capsys.readouterr().err
    assert err == ("systolic: error: Unknown board 'arty'; known boards: ulx3s-85f, "
                   "icebreaker\n")


def test_board_config_from_the_command_line():
    """`systolic build --board B` builds the board's configuration (its preset with only the
    features its build has, multipliers in its DSP blocks); options override it."""
    import argparse

    from systolic.hw.boards import get_board

    sub = argparse.ArgumentParser().add_subparsers()
    build_module.add_parser(sub)

    def config(*argv):
        args = sub.choices["build"].parse_args(argv)
        return build_module.board_config_from_args(get_board(args.board), args)

    assert config("--board", "ulx3s-85f") == get_board("ulx3s-85f").config()
    assert config("--board", "ulx3s-85f") == preset("wide").replace(target="ecp5")
    assert config("--board", "icebreaker") == preset("small").replace(target="ice40")
    assert config("--board", "ulx3s-85f", "--no-fused-pool", "--preset", "big") == preset(
        "big").replace(target="ecp5", fused_pool=False)
    assert config("--board", "ulx3s-85f", "--target", "generic").target == "generic"


def test_build_defaults_from_the_command_line():
    """A preset the board has a closed build of (`Board.preset_builds`) builds at that
    build's clock, seed and timing margin unless given; the margin goes with its clock only;
    other presets take the board's clock and seed, no margin."""
    import argparse

    from systolic.hw.boards import get_board

    sub = argparse.ArgumentParser().add_subparsers()
    build_module.add_parser(sub)

    def defaults(*argv):
        args = sub.choices["build"].parse_args(["--board", "ulx3s-85f", *argv])
        spec = get_board(args.board)
        build_module.board_config_from_args(spec, args)
        build_module.build_defaults_from_args(spec, args)
        return args.clock, args.seed, args.timing_margin

    assert defaults() == (90.0, 5, 0.0)
    assert defaults("--preset", "wide") == (90.0, 5, 0.0)
    assert defaults("--preset", "lenet") == (105.0, 16, 1.5)
    assert defaults("--preset", "lenet", "--clock", "90") == (90.0, 16, 0.0)
    assert defaults("--preset", "lenet", "--timing-margin", "1", "--seed", "3") == (105.0, 3, 1.0)
    assert defaults("--preset", "lenet", "--seeds", "1,2")[:1] == (105.0,)
    assert defaults("--preset", "lenet", "--seeds", "1,2")[1] is None


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


def test_no_legal_placement_names_the_fullest_resource(tmp_path):
    """A design that fits on paper but that the placer cannot legalise (the iCEBreaker's, at
    96 % of its logic cells, on some netlists): the fullest resource and what to try."""
    (tmp_path / "systolic.tim").write_text(
        "Info: Device utilisation:\n"
        "Info: \t         ICESTORM_LC:    5080/   5280    96%\n"
        "Info: \t        ICESTORM_RAM:      20/     30    66%\n"
        "Info: Strict legalising 4172 cells...\n"
        "ERROR: Unable to find legal placement for all cells, design is probably at "
        "utilisation limit.\n")
    fake_plan(tmp_path, "exit 125\n")
    with pytest.raises(BuildError, match=(
            r"^The design does not fit the device: nextpnr could not find a legal placement; "
            r"its fullest resource is logic cells \(ICESTORM_LC\) 5080 of 5280, 96 %\. Try a "
            r"--seed other than 1, or use fewer array rows/cols \(--rows, --cols\)$")):
        _run_plan(tmp_path, preset("small"), seed=1)


def test_tool_failure_shows_the_log(tmp_path):
    fake_plan(tmp_path, "echo 'ERROR: something broke in yosys' > systolic.rpt\n"
                        "echo 'yosys failed' >&2\nexit 3\n")
    with pytest.raises(BuildError, match=r"^The toolchain failed \(exit code 3\) in .*; end of "
                                         r"its log:\nERROR: something broke in yosys$"):
        _run_plan(tmp_path, preset("small"))


def _iterations(*counts):
    """nextpnr router2 log lines: one an iteration, ``(overused, tmgfail)`` each."""
    return "".join(f"Info:     iter={i} wires=652181 overused={u} overuse={u} tmgfail={t} "
                   "archfail=NA\n" for i, (u, t) in enumerate(counts))


def test_ripup_stall_detection():
    p = RIPUP_PATIENCE
    assert ripup_stalled(_iterations(*[(30, 0)] * 5, *[(0, 12)] * p)) is None
    assert ripup_stalled(_iterations(*[(30, 0)] * 5, *[(0, 12)] * (p + 1))) == (0, 12)
    # A new low of failing arcs, or of over-used wires, starts the count again.
    assert ripup_stalled(_iterations(*[(0, 12)] * p, (0, 11), *[(0, 11)] * (p - 1))) is None
    assert ripup_stalled(_iterations(*[(3, 12)] * p, (2, 12), *[(2, 12)] * (p - 1))) is None
    # An over-used wire that comes and goes is no progress: the 8x16 at 90 MHz went from
    # iteration 50 to 220 and on with 1 to 8 over-used wires and 92 to 160 failing arcs.
    swing = [(1 + i % 8, 92 + (7 * i) % 60) for i in range(p + 1)]
    assert ripup_stalled(_iterations(*[(2000 // (i + 1), 400) for i in range(50)],
                                     *swing)) == swing[-1]
    assert ripup_stalled(_iterations(*swing[:-1])) is None
    # A design that routes and closes, as the ULX3S's default did at 84 MHz.
    assert ripup_stalled(_iterations(*[(1000 - 10 * i, 0) for i in range(60)], (0, 0))) is None


@pytest.mark.parametrize(("used", "state"), [
    (0, r"nextpnr routed the design, but its timing-driven rip-up made no progress in 150 "
        r"iterations, 12 connections still too slow,"),
    (2, r"nextpnr's router went 150 iterations without fewer over-used wires or failing "
        r"connections \(2 wires still over-used, 12 connections still too slow\)")])
def test_stalled_router_is_stopped(tmp_path, used, state):
    """nextpnr's rip-up going round in circles, routed or not: the build stops it and fails,
    naming the clock, what is left and what to try, and leaves no tool running."""
    lines = _iterations(*[(used, 12)] * (RIPUP_PATIENCE + 1)).replace("\n", "\\n")
    fake_plan(tmp_path, f"echo $$ > pid\nprintf '{lines}' > systolic.tim\nsleep 600\n")
    with pytest.raises(TimingError, match=(
            rf"^Timing not met at 90 MHz: {state} and was stopped \(log: .*systolic.tim\)\. "
            r"Try a lower --clock or another --seed; `python bench/ripup.py .*` names the "
            r"nets it kept re-routing$")):
        _run_plan(tmp_path, preset("default"), 90, poll_s=0.05)
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)


def test_a_cancelled_build_stops_its_tools(tmp_path):
    """A sweep's other seeds, once one has met timing: the tools stop, `BuildCancelled`."""
    fake_plan(tmp_path, "echo $$ > pid\nsleep 600\n")
    cancel = threading.Event()

    def later():
        while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text().strip():
            cancel.wait(0.01)
        cancel.set()
    threading.Thread(target=later, daemon=True).start()
    with pytest.raises(BuildCancelled, match=r"^The build in .* was stopped: another seed met "
                                             r"timing first$"):
        _run_plan(tmp_path, preset("small"), poll_s=0.05, cancel=cancel)
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)


def test_interrupted_build_stops_its_tools(tmp_path):
    """Ctrl-C during the toolchain stage (the tools run in a session of their own, where the
    terminal's interrupt does not reach them): they are stopped too."""
    fake_plan(tmp_path, "echo $$ > pid\nsleep 600\n")

    def ctrl_c():
        # The interrupt where Ctrl-C lands: in `_stage`'s wait, once the tools run. (Raised
        # from its status callback: `_thread.interrupt_main` does not reach a test that an
        # xdist worker runs, and the test then waited out the script's 600 s.)
        if (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip():
            raise KeyboardInterrupt
        return ""
    with pytest.raises(KeyboardInterrupt):
        _stage("toolchain", lambda: _run_plan(tmp_path, preset("small")), progress=False,
               watch=ctrl_c)
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)


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


def test_block_ram_output_registers_in_the_report(tmp_path):
    # The ECP5 build's `outreg` step leaves its counts beside the netlist; the report takes
    # them, and says nothing of them where the step did not run or left no valid counts.
    assert _outreg_counts(tmp_path) == {}
    (tmp_path / "outreg.json").write_text('{"ports": 123, "flip_flops": 784}')
    assert _outreg_counts(tmp_path) == {}
    (tmp_path / "outreg.json").write_text('{"ports": 123, "flip_flops": 784, "kept": 4}')
    counts = _outreg_counts(tmp_path)
    assert counts == {"ports": 123, "flip_flops": 784, "kept": 4}
    report = dataclasses.replace(_missed_report(tmp_path), bram_output_registers=counts)
    assert "  BRAM output registers on 123 of 127 read ports" in report.table().splitlines()
    assert "BRAM output registers" not in _missed_report(tmp_path).table()


def test_critical_path_summary():
    assert critical_path_summary(_REPORT_PATH, "clk") == {
        "clock": "clk",
        "from": "pe_4_6.first_d0", "to": "pe_1_7.acc",
        "from_cell": "pe_4_6.first_d0_TRELLIS_FF_Q.Q", "to_cell": "pe_1_7.acc_TRELLIS_FF_Q_31.DI",
        "delay_ns": 5.408, "logic_ns": 1.209, "routing_ns": 4.199, "logic_levels": 2,
    }
    assert critical_path_summary([]) == {}


def _missed_report(tmp_path):
    return BuildReport(
        board="icebreaker", bitstream=tmp_path / "systolic.bin",
        config={"rows": 1, "cols": 4}, clock_mhz=18.0, baud=1_000_000, luts=1, ffs=1, dsps=6,
        brams=0, sprams=0, totals={}, fmax_mhz=15.25, target_mhz=18.0, timing_met=False,
        clocks={"clk": {"achieved": 15.25, "constraint": 18.0}}, build_dir=tmp_path,
        critical_path=critical_path_summary(_REPORT_PATH, "clk"), peak_gops=0.144)


def test_timing_margin_report(tmp_path):
    # With --timing-margin nextpnr's constraint is the margin's; the report's is the clock's.
    from systolic.hw.build import _own_constraint

    assert _own_constraint(96.9, 95.0, 0.02) == 95.0
    assert _own_constraint(25.0, 95.0, 0.02) == 25.0      # another clock: nextpnr's
    assert _own_constraint(96.9, 95.0, 0.0) == 96.9
    report = dataclasses.replace(_missed_report(tmp_path), timing_margin=0.05)
    assert "  nextpnr aimed 5 % above the clock: 18.90 MHz (--timing-margin)" in (
        report.table().splitlines())
    assert report.as_dict()["timing_margin"] == 0.05


def test_fastest_clock():
    # What a missed build's error suggests: a clock the board's PLL makes within the fmax.
    assert fastest_clock("ulx3s-85f", 98.96) == 97      # no PLL output near 98; 97 is 96.875
    assert fastest_clock("ulx3s-85f", 91.54) == 91
    assert fastest_clock("icebreaker", 15.25) == 12     # its PLL starts at 16: the oscillator
    assert fastest_clock("icebreaker", 31.6) == 31
    assert fastest_clock("ulx3s-85f", 24.0) is None     # below the 25 MHz oscillator: none


@pytest.mark.parametrize("json_flag", [True, False])
def test_missed_timing_exits_nonzero(tmp_path, monkeypatch, capsys, json_flag):
    monkeypatch.setattr(build_module, "build", lambda *args, **kwargs: _missed_report(tmp_path))
    argv = ["build", "--board", "icebreaker", "-o", str(tmp_path)] + ["--json"] * json_flag
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err == ("systolic: error: Timing not met: fmax 15.2 MHz for a 18 MHz clock; "
                   "critical path pe_4_6.first_d0 -> pe_1_7.acc: 5.41 ns (1.21 ns logic, "
                   "4.20 ns routing). Try --clock 12 or another --seed\n")
    if json_flag:                               # the report is still printed, whole
        assert json.loads(out) == _missed_report(tmp_path).as_dict()
    else:
        assert "critical path pe_4_6.first_d0 -> pe_1_7.acc: 5.41 ns" in out
        assert "peak   0.14 GOPS (1x4 PEs, 2 ops a cycle each)" in out


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
    assert report["target_mhz"] == 30.0
    assert report["config"] == preset("small").replace(target="ice40").as_dict()
    assert (report["dsps"], report["sprams"]) == (6, 2)
    assert report["totals"] == {"luts": 5280, "ffs": 5280, "dsps": 8, "brams": 30, "sprams": 4}
    assert 0 < report["luts"] <= 5280
    assert 0 < report["brams"] <= 30
    assert report["fmax_mhz"] > 0
    assert report["timing_met"] == (report["fmax_mhz"] >= 30.0)
    assert report["timing_met"]
    assert report["peak_gops"] == 2 * 4 * 30.0 / 1000
    path = report["critical_path"]
    assert set(path) == {"clock", "from", "to", "from_cell", "to_cell", "delay_ns", "logic_ns",
                         "routing_ns", "logic_levels"}
    assert path["from"]
    assert path["to"]
    assert path["logic_ns"] + path["routing_ns"] == pytest.approx(path["delay_ns"], abs=2e-3)
    assert path["delay_ns"] == pytest.approx(1000 / report["fmax_mhz"], rel=0.05)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["luts"] == report["luts"]
    assert "utilization" in on_disk["nextpnr"]
    page = (out / "report.html").read_text()            # the same, as `systolic report` draws it
    assert '<section id="build">' in page
    assert f"{report['luts']:,} / 5,280" in page
    assert not report["reused"]
    # The same design again: its bitstream is reused, nothing is run.
    built = (out / "systolic.bin").stat().st_mtime_ns
    assert main(["build", "--board", "icebreaker", "-o", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reused"]
    assert {**again, "reused": False} == report
    assert (out / "systolic.bin").stat().st_mtime_ns == built


@pytest.mark.parametrize(("text", "seeds"), [
    ("4", [4]), ("1-4", [1, 2, 3, 4]), ("1,3,5-8", [1, 3, 5, 6, 7, 8]), (" 2 - 3 , 0", [2, 3, 0]),
    ("7,1-2", [7, 1, 2]), (f"0-{MAX_SEEDS - 1}", list(range(MAX_SEEDS)))])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(("text", "message"), [
    ("", r"^Seeds must be non-negative integers and ranges separated by commas \(e\.g\. 1-4 or "
         r"1,3,5-8\), not ''$"),
    ("1,,2", r"not '1,,2'$"), ("-1", r"not '-1'$"), ("a", r"not 'a'$"), ("1-2-3", r"not '1-2-3'$"),
    ("4-1", r"^Seed range '4-1' runs backwards; write 1-4$"),
    ("1-3,2", r"^Seed 2 given more than once in '1-3,2'$"),
    ("1,1,2,2", r"^Seeds 1, 2 given more than once in '1,1,2,2'$"),
    ("5,5", r"^Seed 5 given more than once in '5,5'$"),
    (f"0-{MAX_SEEDS}", rf"^At most {MAX_SEEDS} seeds in a sweep, not '0-{MAX_SEEDS}'$"),
    (f"0-{MAX_SEEDS - 1},{MAX_SEEDS}", rf"^At most {MAX_SEEDS} seeds in a sweep, not "
                                       rf"{MAX_SEEDS + 1}$")])
def test_parse_seeds_refuses(text, message):
    with pytest.raises(BuildError, match=message):
        parse_seeds(text)


def test_parse_seeds_text():
    for seeds in ([4], [1, 2], [1, 2, 3], [1, 3, 5, 6, 7, 8], [7, 1, 2, 3], [0, 2, 4]):
        text = parse_seeds_text(seeds)
        assert parse_seeds(text) == seeds
    assert parse_seeds_text([1, 2, 3, 4, 7]) == "1-4,7"
    assert parse_seeds_text([1, 2, 5]) == "1,2,5"


def test_reseeded_plan():
    from amaranth.build.run import BuildPlan

    plan = BuildPlan("build_systolic")
    plan.add_file("systolic.il", "module x ... --seed 4 ... end")
    plan.add_file("build_systolic.sh", "yosys\nnextpnr --report r.json --seed 4 --router r2\n")
    plan.add_file("build_systolic.json", '{"commands": [["nextpnr", "--seed", "4", "--x"]]}')
    other = _reseeded(plan, 4, 11)
    assert other.files == {"systolic.il": "module x ... --seed 4 ... end",
                           "build_systolic.sh": "yosys\nnextpnr --report r.json --seed 11 "
                                                "--router r2\n",
                           "build_systolic.json": '{"commands": [["nextpnr", "--seed", "11", '
                                                  '"--x"]]}'}
    assert _reseeded(plan, 4, 4) is plan
    with pytest.raises(BuildError, match=r"^Internal error: the build script build_systolic\.sh "
                                         r"does not name placer seed 3 once$"):
        _reseeded(plan, 3, 5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seeds": []}, r"^Seeds must be a non-empty list of seeds, not \[\]$"),
    ({"seeds": "1-4"}, r"^Seeds must be a non-empty list of seeds, not '1-4'$"),
    ({"seeds": [1, -2]}, r"^Seed must be a non-negative integer, not -2$"),
    ({"seeds": [1, 1]}, r"^Seeds must differ, not \[1, 1\]$"),
    ({"seeds": [1, 2], "jobs": 0}, r"^Jobs must be a positive integer, not 0$"),
    ({"seeds": [1, 2], "jobs": True}, r"^Jobs must be a positive integer, not True$")])
def test_build_seeds_refuses(tmp_path, kwargs, message):
    with pytest.raises(BuildError, match=message):
        build_seeds("icebreaker", build_dir=tmp_path, progress=False, **kwargs)


def test_seeds_options_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:                  # argparse's usage error
        main(["build", "--board", "icebreaker", "--seed", "1", "--seeds", "1-2"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.endswith(
        "systolic build: error: argument --seeds: not allowed with argument --seed\n")
    assert main(["build", "--board", "icebreaker", "--jobs", "2", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("systolic: error: --jobs runs several seeds at once: give "
                                       "them with --seeds (e.g. --seeds 1-4 --jobs 2)\n")
    assert main(["build", "--board", "icebreaker", "--seeds", "3-1", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("systolic: error: Seed range '3-1' runs backwards; write "
                                       "1-3\n")


@pytest.mark.slow
def test_seed_sweep_icebreaker(tmp_path, capsys):
    """Two seeds of the iCEBreaker's design at once, each in its own directory: the first to
    meet timing is the build; the other finished below the clock, met it too, or was stopped.
    The same sweep again is the same build, reused."""
    out = tmp_path / "sweep"
    assert main(["build", "--board", "icebreaker", "-o", str(out), "--seeds", "1,3",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["timing_met"]
    outcomes = report["seeds"]
    assert [o["seed"] for o in outcomes] == [1, 3]
    assert [o["build_dir"] for o in outcomes] == [str(out / "seed-1"), str(out / "seed-3")]
    (win,) = [o for o in outcomes if o["build_dir"] == report["build_dir"]]
    assert win["status"] == "met"
    assert win["fmax_mhz"] == report["fmax_mhz"] >= 30.0
    assert report["bitstream"] == str(out / f"seed-{win['seed']}" / "systolic.bin")
    assert (out / f"seed-{win['seed']}" / "systolic.bin").stat().st_size > 50_000
    (other,) = [o for o in outcomes if o is not win]
    assert other["status"] in ("met", "missed", "stopped")
    if other["status"] == "missed":
        assert other["fmax_mhz"] < 30.0
    elif other["status"] == "met":
        assert other["fmax_mhz"] >= 30.0
    else:
        assert other["fmax_mhz"] is None
        assert not (out / f"seed-{other['seed']}" / "systolic.bin").exists()
    assert json.loads((out / "seeds.json").read_text()) == {"winner": win["seed"],
                                                            "seeds": outcomes}
    on_disk = json.loads((out / f"seed-{win['seed']}" / "report.json").read_text())
    assert on_disk["fmax_mhz"] == report["fmax_mhz"]
    assert not report["reused"]
    # Again: the winner's bitstream is found, nothing runs, the other seed's directory is
    # left as it was.
    other_dir = out / f"seed-{other['seed']}"
    before = {p.name: p.stat().st_mtime_ns for p in other_dir.iterdir()}
    assert main(["build", "--board", "icebreaker", "-o", str(out), "--seeds", "1,3"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in other_dir.iterdir()} == before
    table = capsys.readouterr().out
    assert "(up to date: reused, --force rebuilds)" in table
    assert "  seeds  " in table
    assert f"{win['seed']} met {win['fmax_mhz']:.1f} MHz" in table


@pytest.mark.parametrize("json_flag", [True, False])
def test_seed_sweep_that_misses_exits_nonzero(tmp_path, monkeypatch, capsys, json_flag):
    """No seed met the clock: the report is the fastest build's, and the command fails naming
    every seed's outcome, where the fastest is, its critical path and what to try."""
    seeds = [{"seed": 1, "status": "missed", "fmax_mhz": 14.5, "build_dir": str(tmp_path / "s1"),
              "message": ""},
             {"seed": 2, "status": "missed", "fmax_mhz": 15.25, "build_dir": str(tmp_path),
              "message": ""},
             {"seed": 3, "status": "failed", "fmax_mhz": None, "build_dir": str(tmp_path / "s3"),
              "message": "The design does not fit the device"}]
    report = dataclasses.replace(_missed_report(tmp_path), seeds=seeds)
    monkeypatch.setattr(build_module, "build_seeds", lambda *args, **kwargs: report)
    argv = (["build", "--board", "icebreaker", "-o", str(tmp_path), "--seeds", "1-3"]
            + ["--json"] * json_flag)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err == (
        "systolic: error: Timing not met at 18 MHz on any of seeds 1-3: 1 missed 14.5 MHz; 2 "
        "missed 15.2 MHz; 3 failed (The design does not fit the device). The fastest, seed 2 "
        f"(fmax 15.2 MHz), is in {tmp_path}; its critical path pe_4_6.first_d0 -> pe_1_7.acc: "
        "5.41 ns (1.21 ns logic, 4.20 ns routing). Try --clock 12 or more --seeds\n")
    if json_flag:
        assert json.loads(out) == report.as_dict()
    else:
        assert "  seeds  1 missed 14.5 MHz, 2 missed 15.2 MHz, 3 failed" in out.splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("board", ["icebreaker", "ulx3s-85f"])
def test_reseeded_plan_is_the_seeds_own(board):
    """A sweep elaborates once and gives each seed the plan reseeded: file for file what the
    board's plan for that seed is, and so the same design (hash) as a build of that seed."""
    from systolic.hw.boards import BoardTop, get_board
    from systolic.hw.build import _design_hash, _toolchain_env, prepare_plan

    spec = get_board(board)
    top = BoardTop(spec)
    with _toolchain_env(spec.family):
        plans = {s: prepare_plan(spec.family, spec.platform(), top, s) for s in (1, 7)}
    reseeded = _reseeded(plans[1], 1, 7)
    assert reseeded.files == plans[7].files
    assert reseeded.files != plans[1].files
    assert (_design_hash(reseeded, spec.family, 7) == _design_hash(plans[7], spec.family, 7)
            != _design_hash(plans[1], spec.family, 1))
