"""``systolic deploy``: program a board, load a network over its UART, run dataset images.

The host side is the same `Driver` and `FramedTransport` as in simulation; only the `Link`
changes: `SerialLink` (pyserial) to a board, or, with ``--sim``, the simulated board's UART
pins (`systolic.hw.virtual.VirtualBoard`), bit by bit.
"""

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..hw.boards import BOARDS, get_board
from . import golden
from .compiler import FitError, compile_network, largest_batch
from .driver import RESYNC_QUIET_BITS, Driver, FramedTransport, Link
from .errors import SystolicError
from .protocol import LinkError
from .qnet import QNet

__all__ = [
    "SerialLink", "add_parser", "built_with", "deploy_board", "deploy_sim", "fault_plan",
    "low_latency",
]

#: Clock and baud rate of the virtual board: 8 clock cycles a bit keeps simulations short.
SIM_CLOCK_HZ, SIM_BAUD = 100e6, 12.5e6


class SerialLink(Link):
    """A `Link` over a serial port (pyserial)."""

    def __init__(self, port, baud, *, timeout=5.0):
        import serial

        self._quiet = RESYNC_QUIET_BITS / baud + 0.005
        try:
            self._port = serial.Serial(port, baud, timeout=timeout)
        except (serial.SerialException, ValueError) as e:
            raise SystolicError(
                f"Cannot open serial port {port!r} ({e}); check that the board is plugged in "
                "and name its port with --port (e.g. /dev/ttyUSB0, COM3)") from None
        self._name = port

    @contextlib.contextmanager
    def _port_errors(self):
        import serial

        try:
            yield
        except serial.SerialException as e:
            raise SystolicError(f"Serial port {self._name} failed ({e}); was the board "
                                "unplugged?") from None

    async def send(self, data):
        with self._port_errors():
            self._port.write(data)
            self._port.flush()              # on the wire before the reply's clock starts

    async def recv(self, count):
        with self._port_errors():
            data = self._port.read(count)
        if len(data) != count:
            raise LinkError(
                f"The board on {self._name} stopped answering ({len(data)} of {count} bytes); "
                "is it programmed with this build, and at the same baud rate?")
        return data

    async def resync(self):
        deadline = time.monotonic() + 2.0
        timeout, self._port.timeout = self._port.timeout, self._quiet
        try:
            with self._port_errors():
                while self._port.read(4096):
                    if time.monotonic() > deadline:
                        raise SystolicError(
                            f"The board on {self._name} does not stop sending; is the baud "
                            "rate right, and is this the board's port?")
        finally:
            self._port.timeout = timeout

    def close(self):
        self._port.close()


#: Where Linux shows a USB serial adapter's settings (``ftdi_sio``: the boards' FTDI chips).
USB_SERIAL_SYSFS = Path("/sys/bus/usb-serial/devices")


def low_latency(port, sysfs=USB_SERIAL_SYSFS):
    """Set the latency timer of the FTDI adapter behind ``port`` to 1 ms.

    An FTDI chip holds received bytes for up to its latency timer (16 ms by default) before it
    sends them to the host: with three replies an image, 48 ms an image. Returns a hint for the
    user when the timer is longer and cannot be set (no permission), else ``None`` (set, or
    no such adapter: another OS, another chip).
    """
    timer = sysfs / Path(os.path.realpath(port)).name / "latency_timer"
    try:
        ms = int(timer.read_text())
    except (OSError, ValueError):
        return None
    if ms <= 1:
        return None
    try:
        timer.write_text("1")
    except OSError:
        return (f"the USB serial adapter holds each reply up to {ms} ms; for several times "
                f"more images a second: echo 1 | sudo tee {timer}")
    return None


def _program(board, bitstream):
    """Load ``bitstream`` into ``board`` with its usual programmer."""
    if board.family == "ecp5":
        tools = ["openFPGALoader", "openfpgaloader-cli"]
        args = ["-b", "ulx3s", str(bitstream)]
    else:
        tools = ["iceprog"]
        args = [str(bitstream)]
    tool = next((t for t in tools if shutil.which(t)), None)
    if tool is None:
        raise SystolicError(
            f"No programmer for {board.name}: install {tools[0]} (Debian: apt-get install "
            f"{'openfpgaloader' if board.family == 'ecp5' else 'fpga-icestorm'}), or program "
            f"the board yourself ({board.program_hint.format(bitstream=bitstream)}) and "
            "pass --no-program")
    result = subprocess.run([tool, *args], capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
        raise SystolicError(f"{shlex.join([tool, *args])} failed:\n{tail}")


def _summary(qnet, images, labels, logits, seconds, extra, *, baud, bytes_per_image):
    gold = golden.run(qnet, images)
    mismatches = int(np.sum(np.any(logits != gold.logits, axis=1)))
    pred = logits.argmax(axis=1)
    return {
        "images": len(images),
        "mismatches": mismatches,
        "accuracy": float(np.mean(pred == labels)),
        "golden_accuracy": float(np.mean(gold.predictions == labels)),
        "images_per_second": len(images) / seconds if seconds > 0 else None,
        # 8N1: ten bits a byte. What the UART alone allows, with no latency between frames.
        "wire_bytes_per_image": bytes_per_image,
        "baud": baud,
        "line_limited_images_per_second": baud / 10 / bytes_per_image,
        **extra,
    }


#: What `fault_plan` damages, in turn: (request frame, kind of damage).
_FAULTS = [("WRITE", "break"), ("RUN", "reply"), ("READ", "framing"), ("WRITE", "flip"),
           ("RUN", "break"), ("WRITE", "reply"), ("READ", "reply"), ("RUN", "flip"),
           ("WRITE", "framing"), ("READ", "flip"), ("RUN", "framing"), ("READ", "break")]


def fault_plan(count):
    """``count`` faults for the virtual board's wire (``sim/test_network.py``): breaks,
    framing errors, flipped bits in requests and in replies, on every kind of request; fault
    ``i`` (from 0) on frame ``i + 1`` (from 0) of its kind, so they spread over the
    images."""
    return [{"request": _FAULTS[i % len(_FAULTS)][0], "kind": _FAULTS[i % len(_FAULTS)][1],
             "nth": i + 1} for i in range(count)]


#: Per FPGA family, what a network too big for a board's bitstream can do there. deploy takes
#: no preset: the configuration is the bitstream's, so the advice is to build another one, where
#: the FPGA has room for it (the iCE40UP5K is nearly full with the small preset).
_BIGGER_BITSTREAM = {
    "ecp5": "build one that holds the network (systolic build --board {board} --preset big, "
            "or --act-depth N ...) and pass it with --bitstream, or use fewer channels",
    "ice40": "the {board}'s iCE40UP5K has no room for a bigger array or memories than its "
             "{preset} preset's, so use fewer channels or a smaller input",
}


def _compile(qnet, cfg, board, source, batch=1, images=1):
    """`compile_network` for ``batch`` images (``None``: the largest batch that fits, at most
    ``images``), its fit errors saying what to do on a board (not the compiler's ``--preset``
    advice, which is for ``simulate``). The input goes as it is, not densely packed: on a
    serial line the bytes, not the array's cycles, take the time."""
    try:
        if batch is None:
            batch = max(1, min(largest_batch(qnet, cfg), images))
        return compile_network(qnet, cfg, batch=batch)
    except FitError as e:
        problem, advice, _ = str(e).rpartition("; use ")
        others = ", ".join(b for b in BOARDS if b != board.name)
        todo = _BIGGER_BITSTREAM[board.family].format(board=board.name, preset=board.preset)
        raise SystolicError(
            f"The network does not fit the {board.name} accelerator ({source}: "
            f"{cfg.rows}x{cfg.cols} array, {cfg.act_depth}-word activation and "
            f"{cfg.weight_depth}-word weight memories): {problem if advice else e}. On a "
            f"board the configuration is its bitstream's: {todo}; or deploy to another board "
            f"({others})") from None


def _configuration(board, bitstream):
    """The configuration, baud rate and clock (MHz) to deploy with, and where they come from:
    the build report beside ``bitstream``, or the board's defaults."""
    if bitstream is None:
        return (board.config(), board.baud, board.clock_mhz,
                f"the board's default, the {board.preset} preset")
    if not Path(bitstream).is_file():
        raise SystolicError(f"No bitstream {str(bitstream)!r}; build one with 'systolic "
                            f"build --board {board.name}', or leave out --bitstream")
    built = _built(board, bitstream)
    if built is None:
        return (board.config(), board.baud, board.clock_mhz,
                f"the board's default, the {board.preset} preset: {bitstream} has no build "
                "report beside it")
    return *built, f"as {bitstream} was built"


def deploy_sim(qnet, images, labels, board, *, sim="fast", faults=0, bitstream=None, batch=1,
               report_path=None):
    """Run ``images`` on the virtual board, ``faults`` frames damaged on the wire (see
    `fault_plan`), in the configuration ``bitstream`` was built with (else the board's), in
    batches of ``batch`` (``None``: the largest that fits); returns the summary dict. With
    ``report_path``, also writes the HTML report there (`systolic.sw.report`; the bitstream's
    build report in it when there is one)."""
    from . import simulate

    cfg, baud, clock_mhz, source = _configuration(board, bitstream)
    batch = _compile(qnet, cfg, board, source, batch, len(images)).batch
    cfg = cfg.replace(target="generic")
    start = time.monotonic()
    with simulate._stdout_to_stderr():          # the simulator's chatter is not the report
        report = simulate.simulate(qnet, images, cfg, labels=labels, sim=sim,
                                   uart=(SIM_CLOCK_HZ, SIM_BAUD), faults=fault_plan(faults),
                                   layer_cycles=False,     # as deploy_board
                                   progress=simulate.progress_bar(len(images)), batch=batch)
    # The simulation's pace, its build excluded.
    seconds = report.speed.get("run_seconds", time.monotonic() - start)
    d = report.as_dict()
    if report_path is not None:
        from .report import write_report

        beside = None if bitstream is None else Path(bitstream).parent / "report.json"
        write_report(report_path, simulation=report, qnet=qnet, cfg=cfg, images=images,
                     board=board.name, build=beside if beside and beside.is_file() else None,
                     title=f"systolic deploy --sim: {qnet.arch} on {board.name}")
    return _summary(qnet, images, labels, report.logits, seconds, {
        "board": f"{board.name} (virtual, {sim})", "cycles_per_image": d["cycles_per_image"],
        "batch": batch,
        "faults_injected": report.link["faults"], "resent_frames": report.link["resent"],
        "rerun_images": report.link["reruns"],
        "clock_mhz": clock_mhz,
        "note": "images_per_second is the simulation's, not a board's"},
        baud=baud, bytes_per_image=report.link["bytes_per_image"])


def built_with(board, bitstream):
    """The accelerator configuration and baud rate of ``bitstream``, from the report
    ``systolic build`` wrote beside it; ``None`` if there is none.

    Raises
    ------
    SystolicError
        If the report says the bitstream is another board's.
    """
    built = _built(board, bitstream)
    return None if built is None else built[:2]


def _built(board, bitstream):
    """`built_with`, and the clock (MHz) the bitstream was built for (the `lenet` preset's
    ULX3S build runs at 105, the board's default design at 90): the board's if the report
    has none (a report from before the clock was in it)."""
    from ..hw.config import AcceleratorConfig

    try:
        report = json.loads((Path(bitstream).parent / "report.json").read_text())
        cfg, baud = AcceleratorConfig.from_dict(report["config"]), int(report["baud"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if report.get("board") != board.name:
        raise SystolicError(f"{bitstream} was built for {report.get('board')}, not "
                            f"{board.name}; pass that --board or build for this one")
    try:
        clock = float(report["clock_mhz"])
    except (ValueError, KeyError, TypeError):
        clock = 0.0
    return cfg, baud, clock if clock > 0 else board.clock_mhz


def default_bitstream(board):
    """Where ``systolic build --board B`` puts the bitstream: ``build/B/systolic.bit|bin``."""
    return Path("build") / board.name / ("systolic.bit" if board.family == "ecp5"
                                         else "systolic.bin")


def deploy_board(qnet, images, labels, board, *, port, baud=None, bitstream=None,
                 program=True, log=print, batch=1):
    """Program ``board`` and run ``images``.

    The bitstream is ``bitstream``, else the last ``systolic build`` of the board (in
    `default_bitstream`'s place), else one built now with the board's defaults. The network
    is compiled for the configuration the bitstream was built with, and spoken to at its
    baud rate, as its build report says (else the board's defaults).
    """
    if bitstream is None and default_bitstream(board).is_file():
        bitstream = default_bitstream(board)
        log(f"using {bitstream}, the last build for {board.name}")
    cfg, built_baud, _, source = _configuration(board, bitstream)
    # Before any build: it may not fit.
    program_ = _compile(qnet, cfg, board, source, batch, len(images))
    if program and bitstream is None:
        from ..hw.build import build

        log(f"building the {board.name} bitstream into {default_bitstream(board).parent} "
            "(a few minutes)")
        report = build(board.name, cfg, baud=baud)     # status lines on a terminal (stderr)
        bitstream, built_baud = report.bitstream, report.baud
    if baud is not None and baud != built_baud:
        log(f"warning: {bitstream or 'the board'} runs its UART at {built_baud} Bd, not the "
            f"--baud {baud} asked for; the board will not answer unless it was built so")
    baud = baud or built_baud
    if program:
        log(f"programming {board.name} with {bitstream}")
        _program(board, bitstream)
    link = SerialLink(port, baud)
    hint = low_latency(port)
    if hint:
        log(hint)
    try:
        transport = FramedTransport(link, cfg)
        driver = Driver(program_, transport, layer_cycles=False)
        asyncio.run(driver.load_network())
        loaded = transport.wire_bytes
        start = time.monotonic()
        results = asyncio.run(_run_images(driver, images))
        seconds = time.monotonic() - start
    finally:
        link.close()
    logits = np.array([r.logits for r in results], np.int8)
    return _summary(qnet, images, labels, logits, seconds, {
        "board": board.name,
        "cycles_per_image": float(np.mean([r.cycles / r.batch for r in results])),
        "batch": program_.batch,
        "resent_frames": transport.resent, "rerun_images": driver.reruns},
        baud=baud, bytes_per_image=(transport.wire_bytes - loaded) / len(images))


async def _run_images(driver, images):
    """`Driver.infer_batch` on each batch of images, with a progress bar (on a terminal)."""
    from .simulate import progress_bar

    bar = progress_bar(len(images))
    results = []
    step = driver.program.batch
    for at in range(0, len(images), step):
        results += await driver.infer_batch(images[at:at + step])
        bar(len(results))
    return results


def _batch_arg(text):
    try:
        return int(text)
    except ValueError:
        raise SystolicError(f"--batch must be a number or auto, not {text!r}") from None


def _run(args):
    from .simulate import dataset_images

    board = get_board(args.board)
    qnet = QNet.load(args.model)
    images, labels = dataset_images(qnet, args.dataset, args.data_dir, args.images)
    if args.report and not args.sim:
        raise SystolicError("--report writes the virtual board's report: add --sim (on a "
                            "board, 'systolic report --qnet ... --build ...')")
    if args.inject_faults and not args.sim:
        raise SystolicError("--inject-faults damages the virtual board's wire: add --sim")
    if args.inject_faults < 0:
        raise SystolicError(f"--inject-faults must be at least 0, not {args.inject_faults}")
    if not args.sim and args.port is None:
        raise SystolicError("--port is required to deploy to a board (e.g. /dev/ttyUSB0); "
                            "use --sim for the virtual board")
    batch = None if args.batch == "auto" else _batch_arg(args.batch)
    if args.sim:
        summary = deploy_sim(qnet, images, labels, board, sim=args.simulator,
                             faults=args.inject_faults, bitstream=args.bitstream, batch=batch,
                             report_path=args.report)
    else:
        log = (lambda s: print(s, file=sys.stderr)) if args.json else print
        summary = deploy_board(qnet, images, labels, board, port=args.port, baud=args.baud,
                               bitstream=args.bitstream, program=not args.no_program, log=log,
                               batch=batch)
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{summary['images']} images on {summary['board']}: {summary['mismatches']} "
          "differ from the golden model")
    print(f"  accuracy          {summary['accuracy']:.2%} "
          f"(golden {summary['golden_accuracy']:.2%})")
    print(f"  cycles/image      {summary['cycles_per_image']:.0f} (batches of "
          f"{summary['batch']})")
    print(f"  images/second     {summary['images_per_second']:.1f}"
          + (" (simulation)" if args.sim else ""))
    print(f"  on the wire       {summary['wire_bytes_per_image']:.0f} bytes/image: at most "
          f"{summary['line_limited_images_per_second']:.0f} images/second at "
          f"{summary['baud']} Bd")
    if args.sim:
        compute = summary["clock_mhz"] * 1e6 / summary["cycles_per_image"]
        serial = 1 / (1 / compute + 1 / summary["line_limited_images_per_second"])
        print(f"  on the board      the array: {compute:.0f} images/second at "
              f"{summary['clock_mhz']:g} MHz; line, then array: {serial:.0f}")
    if args.sim and args.inject_faults:
        print(f"  link              {summary['faults_injected']} faults injected, "
              f"{summary['resent_frames']} frames resent, {summary['rerun_images']} images "
              "run again")
    elif summary["resent_frames"] or summary["rerun_images"]:
        print(f"  link              {summary['resent_frames']} frames resent, "
              f"{summary['rerun_images']} images run again (line errors: check the cable)")
    if summary["mismatches"]:
        raise SystolicError(f"{summary['mismatches']} images differ from the golden model")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "deploy", help="program a board and run a network on it over its UART",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Program the board (with --bitstream, or the last 'systolic build' in "
                    "build/BOARD, or a bitstream built there now), load the compiled "
                    "network over the serial port with the framed protocol, run dataset "
                    "images and compare every logit with the golden model. The network is "
                    "compiled for the configuration, and the port opened at the baud rate, "
                    "of the bitstream's build report (report.json beside it). Line errors are "
                    "recovered from by resending. --sim runs the same driver and protocol "
                    "against the simulated board, bit by bit on its UART pins.",
        epilog="examples:\n"
               "  systolic deploy model.qnet --board ulx3s-85f --port /dev/ttyUSB0\n"
               "  systolic deploy model.qnet --board icebreaker --port /dev/ttyUSB1 "
               "--bitstream build/icebreaker/systolic.bin\n"
               "  systolic deploy model.qnet --board ulx3s-85f --sim --images 20\n"
               "  systolic deploy model.qnet --board ulx3s-85f --sim --inject-faults 8\n")
    p.add_argument("model", help="the quantized network (.qnet)")
    p.add_argument("--board", required=True, metavar="B",
                   help=f"one of {', '.join(BOARDS)}")
    p.add_argument("--port", help="serial port of the board's UART (e.g. /dev/ttyUSB0)")
    p.add_argument("--baud", type=int,
                   help="baud rate (default: the bitstream's build report's, or the board's)")
    p.add_argument("--images", type=int, default=20, help="test images (default 20)")
    p.add_argument("--dataset", help="data set (default: the one the model was trained on)")
    p.add_argument("--data-dir", help="directory of MNIST IDX files")
    p.add_argument("--bitstream",
                   help="the bitstream to program, whose build report (report.json beside it) "
                        "gives the configuration and baud rate (default: build/BOARD's, the "
                        "last 'systolic build', else one built now); with --sim, the "
                        "configuration to simulate")
    p.add_argument("--batch", default="auto", metavar="N|auto",
                   help="images per run: one WRITE, RUN and READ exchange a batch, each layer "
                        "taking the whole batch at once (default: auto, the largest batch "
                        "the bitstream's memories hold)")
    p.add_argument("--no-program", action="store_true",
                   help="the board is already programmed: only talk to it")
    p.add_argument("--sim", action="store_true", help="the virtual board, in RTL simulation")
    from .simulate import SIMULATORS

    p.add_argument("--simulator", choices=SIMULATORS, default="fast",
                   help="simulator for --sim: " + "; ".join(f"{k}: {v}"
                                                             for k, v in SIMULATORS.items()))
    p.add_argument("--inject-faults", type=int, default=0, metavar="N",
                   help="with --sim: damage N frames on the wire (breaks, framing errors, "
                        "flipped bits, both ways) to watch the driver recover")
    p.add_argument("--report", metavar="FILE.html",
                   help="with --sim: also write the HTML report (see 'systolic report')")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)
