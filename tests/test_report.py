"""``systolic report`` (`systolic.sw.report`): one self-contained HTML page, its sections there
when their data is, every plot an inline SVG, no address outside the page; the numeric profile
measures what it says; and what users see of ``simulate`` and ``demo``: a quiet standard
output, ``--trace``'s verdict, the demo's files and layer numbers, ``SYSTOLIC_WAVES``
documented."""

import copy
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sw_common import digits_model
from systolic.hw.boards import get_board
from systolic.sw import golden, report
from systolic.sw.cli import main
from systolic.sw.errors import SystolicError

_ROOT = Path(__file__).resolve().parent.parent
BUILD = _ROOT / "tests" / "data" / "icebreaker-build.json"      # a real `build --json`
# HTML elements that have no end tag.
_VOID = {"meta", "br", "img", "input", "link", "hr", "col", "wbr", "source", "area", "base"}


class _Page(HTMLParser):
    """The parts of a page the tests look at: sections and their SVGs, every attribute, and
    whether each element is closed in order (inline SVG's own empty elements included)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.sections, self.attrs, self.errors = [], {}, [], []
        self.text = []

    def handle_starttag(self, tag, attrs):
        self.attrs += attrs
        if tag == "section":
            self.sections[dict(attrs)["id"]] = 0
        if tag == "svg":
            section = next((s for t, s in reversed(self.stack) if t == "section"), None)
            if section is not None:
                self.sections[section] += 1
        if tag not in _VOID:
            self.stack.append((tag, dict(attrs).get("id")))

    def handle_startendtag(self, tag, attrs):
        self.attrs += attrs

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(text):
    page = _Page()
    page.feed(text)
    page.close()
    assert page.errors == []
    assert page.stack == []
    return page


def _self_contained(text):
    """Nothing a browser would fetch, and no address at all outside the page."""
    assert not re.search(r"(?i)\b(https?|ftp|file|data|javascript):", text)
    assert not re.search(r"(?i)<(script|link|img|iframe|object|embed)\b", text)
    assert not re.search(r"(?i)(@import|url\((?!#))", text)     # url(#clip): in the page
    page = _parse(text)
    for name, value in page.attrs:
        if name in ("href", "src", "xlink:href", "action"):
            assert value.startswith("#"), (name, value)
    return page


def test_report_network_profile_build(tmp_path):
    """From a network, test images and a build report: the network, its numeric profile and
    the build, each with its plots; the build's numbers as the report holds them."""
    split, _, qnet = digits_model()
    path = report.write_report(tmp_path / "r.html", qnet=qnet, build=BUILD,
                               images=split.test.q[:50], float_images=split.test.x[:50],
                               labels=split.test.labels[:50])
    text = path.read_text()
    page = _self_contained(text)
    assert page.sections == {"network": 1, "profile": 2, "build": 1}
    words = " ".join(" ".join(page.text).split())
    assert "4,961 / 5,280 (94%)" in words                  # logic cells of the iCE40UP5K
    assert "fmax 21.2 MHz (timing met)" in words
    assert "controller.req \u2192 controller.total" in words    # the critical path
    assert "47.19 ns: 13.59 ns logic (13 levels), 33.60 ns routing" in words
    # Memory on the build's configuration (the small preset, 1x4): the 16-channel 8x8 map of
    # the first convolution is 4 words a pixel.
    assert re.search("conv 1\u219216 3\u00d73 \\+ ReLU 1\u00d78\u00d78 16\u00d78\u00d78 9,216 "
                     "208 [\\d,]+ 256 ", words)


def test_numeric_profile_measures_the_int8_error():
    """The profile's error is the int8 golden model's against the float model, per layer: a
    sound network stays within a few LSB with a cosine near 1; one layer's weights negated in
    the int8 network alone show up at that layer, not before it."""
    split, _, qnet = digits_model()
    images, floats = split.test.q[:40], split.test.x[:40]
    good = report.numeric_profile(qnet, images, floats)
    assert [p["index"] for p in good] == list(range(len(qnet.layers)))
    for p in good:
        assert p["max_lsb"] < 3, p
        assert p["cosine"] > 0.999, p
    # The first layer's error is rounding alone: the input's half LSB through the weights, and
    # the output's half LSB.
    assert good[0]["max_lsb"] <= 1.0
    gold = golden.run(qnet, images).outputs[-1]
    want = np.sqrt(np.mean((_float_logits(qnet, floats) / good[-1]["scale"] - gold) ** 2))
    assert good[-1]["rms_lsb"] == pytest.approx(want, rel=1e-9)

    broken = copy.deepcopy(qnet)
    broken.layers[2].w = (-broken.layers[2].w.astype(np.int16)).clip(-127, 127).astype(np.int8)
    bad = report.numeric_profile(broken, images, floats)
    assert [p["rms_lsb"] for p in bad[:2]] == [p["rms_lsb"] for p in good[:2]]
    assert bad[2]["cosine"] < 0.5
    assert bad[2]["max_lsb"] > 20


def _float_logits(qnet, floats):
    import torch

    with torch.no_grad():
        return qnet.float_model()(torch.from_numpy(floats)).double().numpy()


def test_report_needs_something(tmp_path, capsys):
    assert main(["report", "-o", str(tmp_path / "r.html")]) == 2
    assert re.match(r"systolic: error: give a simulation report \(simulate --json > sim.json\)"
                    r", --qnet FILE.qnet or --build report.json\n$", capsys.readouterr().err)
    (tmp_path / "x.qnet").write_bytes(b"\xfe\x00")
    assert main(["report", str(tmp_path / "x.qnet")]) == 2
    assert re.match(r"systolic: error: simulation report '.*x.qnet' must be a JSON file "
                    r"\('systolic simulate --json' output\); a network goes in with --qnet\n$",
                    capsys.readouterr().err)


@pytest.mark.slow
def test_report_from_simulate_json_and_a_build(tmp_path, capfd):
    """``systolic report`` on what ``simulate --json`` printed (the iCEBreaker's small preset)
    and the iCEBreaker's build report: every section, the confusion matrix of the RTL's
    predictions, the board's rates from the build's clock and baud rate."""
    split, _, qnet = digits_model()
    qnet.save(tmp_path / "m.qnet")
    assert main(["simulate", str(tmp_path / "m.qnet"), "--preset", "small", "--images", "6",
                 "--json"]) == 0
    sim = json.loads(capfd.readouterr().out)
    assert sim["predictions"] == np.argmax(golden.run(qnet, split.test.q[:6]).logits,
                                           axis=1).tolist()
    assert sim["labels"] == split.test.labels[:6].tolist()
    (tmp_path / "sim.json").write_text(json.dumps(sim))
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "sim.json"), "--qnet", str(tmp_path / "m.qnet"),
                 "--build", str(BUILD), "-o", str(out)]) == 0
    assert capfd.readouterr().out == f"wrote {out}\n"
    page = _self_contained(out.read_text())
    assert page.sections == {"network": 1, "performance": 1, "profile": 2, "accuracy": 1,
                             "build": 1, "board": 1}
    words = " ".join(" ".join(page.text).split())
    assert "6 images on fast, 1\u00d74 array: 0 differ from the golden model" in words
    rates = report.board_rates(sim["cycles_per_image"], sim["link"]["bytes_per_image"],
                               18.0, 2_000_000)
    assert f"images/s the array allows {rates['compute_per_second']:,.0f}" in words
    assert f"latency of one image {1e3 * rates['latency_seconds']:.2f} ms" in words
    for row in sim["layers"]:
        assert f"{row['name']} {row['cycles']:,.0f}" in words


@pytest.mark.slow
def test_deploy_sim_report(tmp_path, capsys):
    """``deploy --sim --report``: the virtual board's page, its rates from the board's clock
    and baud rate; the per-layer counters are not read on a board, and the page says so."""
    _, _, qnet = digits_model()
    qnet.save(tmp_path / "m.qnet")
    out = tmp_path / "d.html"
    assert main(["deploy", str(tmp_path / "m.qnet"), "--board", "ulx3s-85f", "--sim",
                 "--images", "3", "--report", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    page = _self_contained(out.read_text())
    assert page.sections == {"network": 1, "performance": 0, "profile": 2, "accuracy": 1,
                             "board": 1}
    words = " ".join(" ".join(page.text).split())
    assert "The per-layer counters were not read in this run." in words
    board = get_board("ulx3s-85f")
    rates = report.board_rates(summary["cycles_per_image"], summary["wire_bytes_per_image"],
                               board.clock_mhz, board.baud)
    assert f"images/s the line allows {rates['line_per_second']:,.0f}" in words
    assert main(["deploy", str(tmp_path / "m.qnet"), "--board", "ulx3s-85f", "--port", "x",
                 "--report", str(out)]) == 2
    assert re.match(r"systolic: error: --report writes the virtual board's report: add --sim",
                    capsys.readouterr().err)


def _stdout_lines(argv, cwd):
    done = subprocess.run([sys.executable, "-m", "systolic.sw.cli", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines(), done.stderr


# What only a simulator's own log holds: cocotb's and the GPI's lines, Verilator's and
# Icarus's warnings and build output.
_SIM_LOG = re.compile(r"(?i)\b(cocotb|gpi|vpi|vvp|iverilog|verilator|%warning)\b|\d+\.\d+ns ")


def _small_qnet():
    """A network of a few hundred weights for the digits (conv 1->4 3x3 + ReLU, 2x2 max
    pooling, linear 64->10): on Icarus, a few seconds where lenet-digits takes minutes."""
    import torch
    from systolic.sw import quantize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 4 * 4, 10))
    calib = np.random.default_rng(0).random((32, 1, 8, 8)).astype(np.float32)
    return quantize.quantize(model, calib, input_shape=(1, 8, 8), p_max=16, dataset="digits")


@pytest.mark.slow
def test_simulate_is_quiet_and_trace_says_all_match(tmp_path):
    """On the cocotb route (Icarus, the most talkative), standard output holds the summary
    alone; with --trace and no difference it says that every layer matched. (The network does
    not matter here: lenet-digits runs on Icarus in tests/test_network_rtl.py.)"""
    _small_qnet().save(tmp_path / "m.qnet")
    lines, _ = _stdout_lines(["simulate", "m.qnet", "--images", "1", "--sim", "icarus",
                              "--trace"], tmp_path)
    assert not [line for line in lines if _SIM_LOG.search(line)]
    assert lines[0].startswith("1 images on icarus, 8x8 array: 0 mismatching images")
    assert lines[-1] == "--trace: all 2 layers of 1 images match the golden model, every value"


@pytest.mark.slow
def test_demo_report_files_and_quiet(tmp_path):
    """The demo, as the README runs it (on the fast harness): its images exact; no simulator log
    on standard output (the cocotb route's: `test_simulate_is_quiet_and_trace_says_all_match`);
    its layer table numbered as the network is (the flatten layer too); its last line names
    every file it wrote; the Verilog of the core; report.html with every section a simulation
    gives."""
    lines, _ = _stdout_lines(["demo", "-o", "d", "--images", "3", "--epochs", "1"], tmp_path)
    assert not [line for line in lines if _SIM_LOG.search(line)]
    summary = next(line for line in lines if line.startswith("3 images on "))
    assert re.match(r"3 images on [^:]*, 8x16 array: 0 mismatching images \(0 logits\)", summary)
    assert json.loads((tmp_path / "d" / "report.json").read_text())["images"] == 3
    assert (tmp_path / "d" / "systolic.v").read_text().count("module systolic(") == 1
    # (A fused pooling is named beside its convolution: "layer 0 (conv ...) + 1 (maxpool)".)
    numbers = [int(n) for line in lines if line.startswith("  layer ")
               for n in re.findall(r"(?:layer|\+) (\d+) \(", line)]
    assert numbers == list(range(6))
    written = {p.name for p in (tmp_path / "d").iterdir()}
    assert written == {"model.pt", "model.qnet", "systolic.v", "manifest.json", "report.txt",
                       "report.json", "report.html"}
    last = lines[-1]
    assert re.fullmatch(r"wrote .* into d in \d+ s", last)
    named = set(re.findall(r"[\w.]+\.(?:pt|qnet|v|json|txt|html)\b", last))
    assert named == written
    page = _self_contained((tmp_path / "d" / "report.html").read_text())
    assert page.sections == {"network": 1, "performance": 1, "profile": 2, "accuracy": 1,
                             "board": 1}


def test_simulator_log_keeps_stdout_for_the_summary(tmp_path, monkeypatch, capfd):
    """What a simulator writes on file descriptor 1 goes to the build directory's log, removed
    after a run that succeeded and named by the error of one that failed."""
    from systolic.sw.simulate import simulator_log

    monkeypatch.setenv("SYSTOLIC_BUILD_DIR", str(tmp_path))
    with simulator_log() as say:
        os.write(1, b"     0.00ns INFO     cocotb.regression   Running tests\n")
        say("for the terminal")
    assert capfd.readouterr().out == "for the terminal\n"
    assert list((tmp_path / "logs").iterdir()) == []

    def failing():
        with simulator_log():
            os.write(1, b"why it failed\n")
            raise SystolicError("The simulation failed")

    with pytest.raises(SystolicError, match=r"^The simulation failed \(the simulator's log: "
                                            r".*/logs/simulate-\d+\.log\)$") as info:
        failing()
    log = Path(re.search(r"log: (.*)\)$", str(info.value)).group(1))
    assert log.read_text() == "why it failed\n"
    assert capfd.readouterr().out == ""


def test_waveforms_documented():
    """Where waveforms go and SYSTOLIC_WAVES: in simulate --help and the README, not only in
    a docstring."""
    from systolic.sw.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["simulate"]
    text = " ".join(sub.format_help().split())
    assert "SYSTOLIC_WAVES=1" in text
    for words in ("build/sim", "controller.fst", "controller-run-PID.vcd", "--waves-file"):
        assert words in text
    readme = " ".join((_ROOT / "README.md").read_text().split())
    for words in ("`SYSTOLIC_WAVES=1`", "`controller.fst`", "`./systolic-waves.fst`"):
        assert words in readme
