"""``systolic deploy``: the virtual board end to end, and the errors of the board path."""

import json
import pathlib
import re

import pytest
import torch
from sw_common import digits_model
from systolic.hw.boards import get_board
from systolic.sw import perfmodel, quantize
from systolic.sw.cli import main
from systolic.sw.compiler import compile_network, largest_batch
from systolic.sw.deploy import built_with, low_latency
from systolic.sw.errors import SystolicError
from systolic.sw.qnet import QNet
from torch import nn


@pytest.fixture(scope="module")
def qnet_path(tmp_path_factory):
    _, _, qnet = digits_model()
    path = tmp_path_factory.mktemp("deploy") / "model.qnet"
    qnet.save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("board", "images"), [("ulx3s-85f", 20), ("icebreaker", 5)])
def test_deploy_virtual_board_is_exact(qnet_path, capsys, board, images):
    """The driver and the serial protocol, bit by bit on the simulated board's UART pins, with
    the board's own configuration (icebreaker: the small preset)."""
    assert main(["deploy", str(qnet_path), "--board", board, "--sim", "--images", str(images),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == images
    assert out["mismatches"] == 0
    assert out["accuracy"] == out["golden_accuracy"]
    assert out["images_per_second"] > 0
    # The cycle count comes back over the UART too (in the DONE reply; deploy skips the
    # per-layer STATS, one exchange less an image): what the performance model predicts.
    # Batches of the largest size the board's memories hold (at most the images), the last
    # one shorter: the cycles the model predicts for each size, shared among their images.
    cfg = get_board(board).config()
    qnet = QNet.load(qnet_path)
    batch = min(largest_batch(qnet, cfg), images)
    assert out["batch"] == batch
    sizes = [min(batch, images - at) for at in range(0, images, batch)]
    total = sum(perfmodel.predict_program(compile_network(qnet, cfg, batch=b)) for b in sizes)
    assert out["cycles_per_image"] == total / images


@pytest.mark.slow
def test_deploy_virtual_board_recovers_from_line_faults(qnet_path, capsys):
    """Twelve frames damaged on the wire, both ways (breaks, framing errors, flipped bits in
    requests and in replies, on WRITE, RUN and READ): the driver resends what the board
    rejected, runs again an image whose RUN reply was lost, and every logit is still exact."""
    assert main(["deploy", str(qnet_path), "--board", "ulx3s-85f", "--sim", "--images", "12",
                 "--inject-faults", "12", "--batch", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["images"], out["mismatches"]) == (12, 0)
    assert out["faults_injected"] == 12
    # Each damaged request is resent once, and so is each request whose reply was damaged,
    # but for the one RUN: its image is run again from its input.
    assert out["rerun_images"] == 1
    assert out["resent_frames"] == 11


@pytest.mark.parametrize(("argv", "message"), [
    (["--board", "zedboard", "--sim"],
     r"systolic: error: Unknown board 'zedboard'; known boards: ulx3s-85f, icebreaker\n"),
    (["--board", "ulx3s-85f", "--inject-faults", "2"],
     r"systolic: error: --inject-faults damages the virtual board's wire: add --sim\n"),
    (["--board", "ulx3s-85f"],
     r"systolic: error: --port is required to deploy to a board \(e\.g\. /dev/ttyUSB0\); "
     r"use --sim for the virtual board\n"),
    (["--board", "icebreaker", "--port", "/dev/ttyUSB9", "--bitstream", "nowhere.bin"],
     r"systolic: error: No bitstream 'nowhere\.bin'; build one with 'systolic build --board "
     r"icebreaker', or leave out --bitstream\n"),
    (["--board", "icebreaker", "--port", "/dev/does-not-exist", "--no-program"],
     r"systolic: error: Cannot open serial port '/dev/does-not-exist' \(.*\); check that the "
     r"board is plugged in"),
])
def test_deploy_errors(qnet_path, capsys, argv, message):
    assert main(["deploy", str(qnet_path), *argv, "--images", "2"]) == 2
    assert re.match(message, capsys.readouterr().err)


def test_low_latency_sets_the_ftdi_timer(tmp_path):
    timer = tmp_path / "ttyUSB0" / "latency_timer"
    timer.parent.mkdir()
    timer.write_text("16\n")
    assert low_latency("/dev/ttyUSB0", sysfs=tmp_path) is None
    assert timer.read_text() == "1"


def test_low_latency_hint_without_permission(tmp_path, monkeypatch):
    timer = tmp_path / "ttyUSB1" / "latency_timer"
    timer.parent.mkdir()
    timer.write_text("16\n")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", refuse)
    assert low_latency("/dev/ttyUSB1", sysfs=tmp_path) == (
        "the USB serial adapter holds each reply up to 16 ms; for several times more images "
        f"a second: echo 1 | sudo tee {timer}")


def test_low_latency_elsewhere(tmp_path):
    assert low_latency("/dev/ttyACM0", sysfs=tmp_path) is None


def test_built_with_reads_the_build_report(tmp_path):
    board = get_board("icebreaker")
    bitstream = tmp_path / "systolic.bin"
    assert built_with(board, bitstream) is None               # no report: the board's defaults
    cfg = board.config().replace(rows=1, cols=2)
    (tmp_path / "report.json").write_text(json.dumps(
        {"board": "icebreaker", "config": cfg.as_dict(), "baud": 115_200}))
    assert built_with(board, bitstream) == (cfg, 115_200)
    with pytest.raises(SystolicError, match=r"^.*systolic\.bin was built for icebreaker, not "
                                            r"ulx3s-85f; pass that --board or build for this "
                                            r"one$"):
        built_with(get_board("ulx3s-85f"), bitstream)


def test_deploy_takes_the_clock_the_bitstream_was_built_for(tmp_path):
    """The virtual board's figures for the board (``on the board``) are at the clock of the
    bitstream's build (the `lenet` preset's ULX3S build runs at 100 MHz, the board's default
    design at 90), its baud rate the build's; without a report, the board's."""
    from systolic.sw.deploy import _configuration

    board = get_board("ulx3s-85f")
    bitstream = tmp_path / "systolic.bit"
    bitstream.write_bytes(b"")
    cfg = board.config("lenet")
    report = {"board": "ulx3s-85f", "config": cfg.as_dict(), "baud": 3_000_000}
    (tmp_path / "report.json").write_text(json.dumps({**report, "clock_mhz": 100.0}))
    assert _configuration(board, bitstream)[:3] == (cfg, 3_000_000, 100.0)
    (tmp_path / "report.json").write_text(json.dumps(report))       # an older report
    assert _configuration(board, bitstream)[:3] == (cfg, 3_000_000, 90.0)
    assert _configuration(board, None)[1:3] == (3_000_000, 90.0)


@pytest.mark.parametrize("where", [["--sim"], ["--port", "/dev/ttyUSB9"]])
def test_deploy_a_network_the_board_cannot_hold(tmp_path, capsys, monkeypatch, where):
    """64 channels of 8x8 outgrow the iCEBreaker's activation memory; the error says what to
    do on a board, where the configuration is the bitstream's, and comes before any build."""
    monkeypatch.chdir(tmp_path)
    split, _, _ = digits_model()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64 * 8 * 8, 10))
    qnet = quantize.quantize(model, split.train.x[:32], input_shape=(1, 8, 8), p_max=16,
                             dataset="digits")
    qnet.save(tmp_path / "wide.qnet")
    assert main(["deploy", str(tmp_path / "wide.qnet"), "--board", "icebreaker", *where,
                 "--images", "1"]) == 2
    assert not (tmp_path / "build").exists()
    assert re.match(
        r"systolic: error: The network does not fit the icebreaker accelerator \(the board's "
        r"default, the small preset: 1x4 array, 1024-word activation and 16384-word weight "
        r"memories\): activations must fit act_depth 1024 words, .*\. On a board the "
        r"configuration is its bitstream's: the icebreaker's iCE40UP5K has no room for a bigger "
        r"array or memories than its small preset's, so use fewer channels or a smaller input; "
        r"or deploy to another board \(ulx3s-85f\)\n$", capsys.readouterr().err)


def test_deploy_fit_advice_fits_the_command(tmp_path, capsys, monkeypatch):
    """deploy takes no --preset: on the ULX3S the advice is a bigger bitstream to build and pass
    with --bitstream, never the compiler's '--preset big' as if deploy took it."""
    monkeypatch.chdir(tmp_path)
    split, _, _ = digits_model()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2400, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2400 * 8 * 8, 10))
    qnet = quantize.quantize(model, split.train.x[:8], input_shape=(1, 8, 8), p_max=16,
                             dataset="digits")
    qnet.save(tmp_path / "wider.qnet")
    assert main(["deploy", str(tmp_path / "wider.qnet"), "--board", "ulx3s-85f", "--sim",
                 "--images", "1"]) == 2
    err = capsys.readouterr().err
    assert re.match(
        r"systolic: error: The network does not fit the ulx3s-85f accelerator \(the board's "
        r"default, the wide preset: 8x16 array, 8192-word activation and 8192-word weight "
        r"memories\): activations must fit act_depth 8192 words, not \d+ \([^;]*; the largest "
        r"[^;]*\)\. On a board the configuration is its bitstream's: build one that holds the "
        r"network \(systolic build --board ulx3s-85f --preset big, or --act-depth N \.\.\.\) "
        r"and pass it with --bitstream, or use fewer channels; or deploy to another board "
        r"\(icebreaker\)\n$", err)


def test_deploy_uses_the_last_build(qnet_path, tmp_path, capsys, monkeypatch):
    """Without --bitstream, the board's last build (build/BOARD) is programmed and its report
    gives the configuration and the baud rate."""
    monkeypatch.chdir(tmp_path)
    board = get_board("icebreaker")
    (tmp_path / "build" / "icebreaker").mkdir(parents=True)
    (tmp_path / "build" / "icebreaker" / "systolic.bin").write_bytes(b"\xff" * 16)
    (tmp_path / "build" / "icebreaker" / "report.json").write_text(json.dumps(
        {"board": "icebreaker", "config": board.config().as_dict(), "baud": 115_200}))
    assert main(["deploy", str(qnet_path), "--board", "icebreaker", "--port", "/dev/ttyUSB9",
                 "--no-program", "--baud", "230400", "--images", "1"]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "using build/icebreaker/systolic.bin, the last build for icebreaker",
        "warning: build/icebreaker/systolic.bin runs its UART at 115200 Bd, not the --baud "
        "230400 asked for; the board will not answer unless it was built so"]
    assert err.startswith("systolic: error: Cannot open serial port '/dev/ttyUSB9'")


@pytest.mark.slow
def test_deploy_virtual_board_report(qnet_path, capsys):
    assert main(["deploy", str(qnet_path), "--board", "icebreaker", "--sim",
                 "--images", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 images on icebreaker (virtual, fast): 0 differ from the golden model"
    assert re.fullmatch(r"  cycles/image      \d+ \(batches of 2\)", lines[2])
    # One RUN and one READ exchange for the batch of two: 102 bytes an image, not 127 alone.
    assert re.fullmatch(r"  on the wire       102 bytes/image: at most 2956 images/second at "
                        r"3000000 Bd", lines[4])
    assert re.fullmatch(r"  on the board      the array: \d+ images/second at 30 MHz; line, "
                        r"then array: \d+", lines[5])
