"""The systolic command line: the train -> quantize -> eval flow, help and error reporting.

How long the flow takes is measured by ``bench/sw_speed.py``, not asserted here.
"""

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from systolic.sw import cli
from test_data import _write_set


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """Run the documented first flow once: train, quantize, eval --json (in process)."""
    tmp = tmp_path_factory.mktemp("cli")
    assert cli.main(["train", "-o", str(tmp / "m.pt")]) == 0
    assert cli.main(["quantize", str(tmp / "m.pt"), "-o", str(tmp / "m.qnet")]) == 0
    return tmp


def _main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_flow_accuracy(flow, capsys):
    code, out, _ = _main(capsys, "eval", str(flow / "m.qnet"), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["images"] == 360
    assert result["float_accuracy"] >= 0.97
    assert abs(result["int8_accuracy"] - result["float_accuracy"]) <= 0.01
    assert result["agreement"] == result["agree"] / 360


def test_eval_text_and_checkpoint(flow, capsys):
    code, out, _ = _main(capsys, "eval", str(flow / "m.qnet"), "--model", str(flow / "m.pt"))
    assert code == 0
    assert "float accuracy" in out
    assert "int8 accuracy" in out
    assert "top-1 agreement" in out


def test_quantize_with_qat(flow, capsys):
    code, out, _ = _main(capsys, "quantize", str(flow / "m.pt"), "-o", str(flow / "q.qnet"),
                         "--qat-epochs", "1", "--calib", "128")
    assert code == 0
    assert "quantized lenet-digits with 128 calibration images" in out


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "quantize", "eval"):
        assert name in out
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        assert "examples:" in capsys.readouterr().out


BENCH = sorted((Path(__file__).resolve().parent.parent / "bench").glob("[a-z]*.py"))


@pytest.mark.parametrize("script", BENCH, ids=[p.stem for p in BENCH])
def test_bench_help(script, monkeypatch, capsys):
    """Every benchmark's ``--help`` runs and says what it measures (an option two argument
    groups both define fails here, not when someone first runs the benchmark)."""
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(script.parent))
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(script), run_name="__main__")
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "missing.qnet"], r"missing\.qnet: file not found; make one with"),
    (["train", "-o", "no/such/dir/m.pt"],
     r"no/such/dir/m\.pt: directory 'no/such/dir' must exist$"),
    (["quantize", "missing.pt", "-o", "x.qnet"], r"missing\.pt: checkpoint file not found"),
    (["train", "--dataset", "mnist", "-o", "x.pt"],
     r"the mnist data set needs a directory of IDX files; pass --data-dir DIR"),
    (["train", "--dataset", "mnist", "--data-dir", "nowhere", "-o", "x.pt"],
     r"MNIST directory must exist, not 'nowhere'"),
])
def test_errors_are_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err
    assert err.count("\n") == 1
    assert re.match(r"^systolic: error: (.*/)?" + message, err)


def test_corrupt_qnet(capsys, tmp_path, flow):
    raw = bytearray((flow / "m.qnet").read_bytes())
    raw[200] ^= 0xFF
    (tmp_path / "c.qnet").write_bytes(bytes(raw))
    code, _, err = _main(capsys, "eval", str(tmp_path / "c.qnet"))
    assert code == 2
    assert err.startswith("systolic: error: ")
    assert "c.qnet: checksum mismatch: the file is corrupt" in err


def test_arch_dataset_mismatch(capsys, tmp_path):
    _write_set(tmp_path, "train", 20)
    _write_set(tmp_path, "t10k", 20)
    code, _, err = _main(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path),
                         "--arch", "lenet-digits", "-o", str(tmp_path / "x.pt"))
    assert code == 2
    assert err.startswith("systolic: error: architecture lenet-digits takes (1, 8, 8) inputs, "
                          "not the (1, 28, 28) images of mnist; choose --arch lenet5")


def test_subprocess_error_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    proc = subprocess.run([sys.executable, "-m", "systolic.sw.cli", "eval", "nope.qnet"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2
    assert proc.stderr == ("systolic: error: nope.qnet: file not found; make one with "
                           "'systolic quantize MODEL.pt -o FILE.qnet'\n")
    assert proc.stdout == ""
