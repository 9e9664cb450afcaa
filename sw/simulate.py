"""``systolic simulate``: run a compiled network on the core's RTL and check it against the
golden model, logit by logit, with per-layer cycles against the performance model.

The simulation runs the host driver (`systolic.sw.driver.Driver`) inside a cocotb testbench
(``sim/test_network.py``) on Verilator or Icarus; `simulate` writes the job, runs it and
compares.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import golden, perfmodel
from .compiler import compile_network
from .errors import SystolicError

__all__ = [
    "SimulationReport", "add_parser", "dataset_images", "format_report", "run_rtl", "simulate",
]


@dataclass(eq=False)
class SimulationReport:
    """What `simulate` found; `as_dict` is the ``--json`` output.

    Members
    -------
    program : compiler.Program
    logits, golden_logits : numpy.ndarray
        int8 ``(N, classes)`` from the RTL and from the golden model.
    labels : numpy.ndarray or None
        True classes, when known.
    layer_cycles : numpy.ndarray
        int64 ``(N, layers)``: the core's ``cycles`` for every layer of every image; ``(N, 1)``,
        each image's total, when the per-layer counters were not read (``layer_cycles`` off).
    first_difference : dict or None
        With tracing: the first layer, image and ``(c, y, x)`` where RTL and golden differ.
    wall_seconds : float
        Wall time of the simulation (build included).
    sim : str
        The simulator.
    link : dict
        What the link carried and went through: bytes to load the network (``load_bytes``)
        and per image (``bytes_per_image``, both ways), ``faults`` injected, frames
        ``resent`` and images ``reruns`` by the driver to recover from them.
    """

    program: object
    logits: np.ndarray
    golden_logits: np.ndarray
    labels: np.ndarray | None
    layer_cycles: np.ndarray
    first_difference: dict | None
    wall_seconds: float
    sim: str
    link: dict = field(default_factory=dict)

    @property
    def mismatches(self):
        """Images whose logits differ from the golden model's in any element."""
        return int(np.sum(np.any(self.logits != self.golden_logits, axis=1)))

    def layers(self):
        """Per hardware layer: name, cycles (mean over images), predicted, MACs, utilization
        (none without the per-layer counters)."""
        cfg = self.program.cfg
        rows = []
        if self.layer_cycles.shape[1] != len(self.program.layers):
            return rows
        for j, lay in enumerate(self.program.layers):
            col = self.layer_cycles[:, j]
            cycles = int(col[0]) if np.all(col == col[0]) else float(np.mean(col))
            rows.append({"name": lay.name, "kind": lay.kind, "cycles": cycles,
                         "predicted_cycles": perfmodel.predict_cycles(cfg, lay.fields),
                         "macs": lay.macs,
                         "utilization": perfmodel.utilization(cfg, lay.macs, cycles)})
        return rows

    def as_dict(self):
        n = len(self.logits)
        acc = (lambda p: float(np.mean(p == self.labels))) if self.labels is not None else (
            lambda p: None)
        cycles = float(np.mean(self.layer_cycles.sum(axis=1)))
        cfg = self.program.cfg
        return {
            "images": n, "sim": self.sim, "mismatches": self.mismatches,
            "logit_mismatches": int(np.sum(self.logits != self.golden_logits)),
            "golden_accuracy": acc(np.argmax(self.golden_logits, axis=1)),
            "rtl_accuracy": acc(np.argmax(self.logits, axis=1)),
            "cycles_per_image": cycles, "macs_per_image": self.program.macs,
            "utilization": perfmodel.utilization(cfg, self.program.macs, cycles),
            "config": {"rows": cfg.rows, "cols": cfg.cols, "pes": cfg.pes},
            "layers": self.layers(), "first_difference": self.first_difference,
            "wall_seconds": self.wall_seconds, "link": self.link,
        }


@contextlib.contextmanager
def _stdout_to_stderr():
    # The simulator writes its log to file descriptor 1; --json keeps stdout for the result.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_rtl(qnet, images, cfg, *, sim="verilator", trace=False, waves=False, timeout=None,
            uart=None, faults=(), layer_cycles=True):
    """Run ``qnet`` on int8 ``images`` ``(N, C, H, W)`` in the accelerator's RTL (controller
    and core), driven through the framed host protocol; with ``uart = (clk_hz, baud)``, the
    virtual board (`systolic.hw.virtual.VirtualBoard`), driven bit by bit on its UART pins,
    where ``faults`` (see ``sim/test_network.py``) damage frames on the wire. Without
    ``layer_cycles`` the driver reads only each image's total cycles, as on a board.

    Returns
    -------
    dict
        ``images``, per image: ``logits`` (list of int), ``cycles`` (per layer, or the total
        alone without ``layer_cycles``), ``outputs``
        (with ``trace``: every layer's output, flattened ``(C, H, W)``; else ``None``);
        ``wire_bytes``, the bytes of the frames that loaded the network and that ran the
        images; ``faults`` injected, frames ``resent`` and images ``reruns`` by the driver.

    Raises
    ------
    compiler.FitError
        When the network does not fit ``cfg``.
    systolic.sim.runner.SimulationError
        When the simulator is missing, or the simulation fails or times out.
    """
    from ..hw.controller import Controller
    from ..hw.virtual import VirtualBoard
    from ..sim.runner import run_cocotb

    compile_network(qnet, cfg)          # fit errors before building anything
    images = np.asarray(images, np.int8)
    with tempfile.TemporaryDirectory(prefix="systolic-sim-") as tmp:
        tmp = Path(tmp)
        qnet.save(tmp / "net.qnet")
        job = {"qnet": str(tmp / "net.qnet"), "cfg": cfg.as_dict(), "trace": bool(trace),
               "layer_cycles": bool(layer_cycles),
               "images": [im.ravel().tolist() for im in images]}
        if uart is None:
            top, name = Controller(cfg), "controller"
        else:
            top, name = VirtualBoard(cfg, clk_freq=uart[0], baud=uart[1]), "virtual_board"
            job["uart_divisor"] = top.bridge.divisor
            job["faults"] = list(faults)
        (tmp / "job.json").write_text(json.dumps(job))
        if timeout is None:
            timeout = 600 + 5 * len(images) * (10 if sim == "icarus" else 1)
        run_cocotb(top, name=name, test_module="test_network", sim=sim,
                   build_key=[cfg.as_dict(), uart], waves=waves, timeout=timeout,
                   extra_env={"SYSTOLIC_NETWORK": tmp / "job.json",
                              "SYSTOLIC_RESULTS": tmp / "results.json"})
        return json.loads((tmp / "results.json").read_text())


def _first_difference(program, gold, results):
    for j, lay in enumerate(program.layers):
        want = gold.outputs[lay.index]
        for n, r in enumerate(results):
            got = np.array(r["outputs"][j], np.int8).reshape(lay.out_shape)
            w = want[n].reshape(lay.out_shape)
            diff = np.argwhere(got != w)
            if len(diff):
                c, y, x = (int(v) for v in diff[0])
                return {"layer": lay.name, "image": n, "c": c, "y": y, "x": x,
                        "rtl": int(got[c, y, x]), "golden": int(w[c, y, x]),
                        "differing": int(len(diff))}
    return None


def simulate(qnet, images, cfg, *, labels=None, sim="verilator", trace=False, waves=False,
             uart=None, faults=(), layer_cycles=True):
    """Run ``images`` in RTL and compare with the golden model; returns a `SimulationReport`."""
    program = compile_network(qnet, cfg)
    images = np.asarray(images, np.int8)
    gold = golden.run(qnet, images)
    start = time.monotonic()
    out = run_rtl(qnet, images, cfg, sim=sim, trace=trace, waves=waves, uart=uart,
                  faults=faults, layer_cycles=layer_cycles)
    wall = time.monotonic() - start
    results = out["images"]
    link = {k: out[k] for k in ("faults", "resent", "reruns")}
    link["load_bytes"], run_bytes = out["wire_bytes"]
    link["bytes_per_image"] = run_bytes / len(images)
    logits = np.array([r["logits"] for r in results], np.int8).reshape(len(images), -1)
    cycles = np.array([r["cycles"] for r in results], np.int64).reshape(len(images), -1)
    first = _first_difference(program, gold, results) if trace else None
    return SimulationReport(program, logits, gold.logits, labels, cycles, first, wall, sim,
                            link)


def _pct(v):
    return "n/a" if v is None else f"{v:.2%}"


def format_report(report, *, float_accuracy=None):
    """The comparison table as text."""
    d = report.as_dict()
    lines = [f"{d['images']} images on {d['sim']}, {d['config']['rows']}x{d['config']['cols']} "
             f"array: {d['mismatches']} mismatching images ({d['logit_mismatches']} logits) "
             "vs the golden model"]
    if float_accuracy is not None:
        lines.append(f"  float accuracy   {_pct(float_accuracy)}")
    lines += [f"  golden accuracy  {_pct(d['golden_accuracy'])}",
              f"  RTL accuracy     {_pct(d['rtl_accuracy'])}",
              f"  cycles/image     {d['cycles_per_image']:.0f} ({d['macs_per_image']} MACs, "
              f"utilization {d['utilization']:.1%})",
              f"  wall time        {d['wall_seconds']:.1f} s",
              "",
              f"  {'layer':34s} {'cycles':>8s} {'model':>8s} {'error':>7s} {'MACs':>8s} "
              f"{'util':>6s}"]
    for row in d["layers"]:
        err = (row["predicted_cycles"] - row["cycles"]) / row["cycles"]
        lines.append(f"  {row['name']:34s} {row['cycles']:8.0f} {row['predicted_cycles']:8d} "
                     f"{err:+7.2%} {row['macs']:8d} {row['utilization']:6.1%}")
    if d["first_difference"]:
        f = d["first_difference"]
        lines.append(f"first difference: {f['layer']}, image {f['image']}, (c, y, x) = "
                     f"({f['c']}, {f['y']}, {f['x']}): RTL {f['rtl']}, golden {f['golden']} "
                     f"({f['differing']} values differ in that layer and image)")
    return "\n".join(lines)


def dataset_images(qnet, dataset, data_dir, n):
    """The first ``n`` test images (int8) and labels of the network's data set."""
    from . import data

    name = dataset or qnet.dataset
    test = data.load(name, data_dir).test
    if test.input_shape != tuple(qnet.input_shape) or test.p_max != qnet.p_max:
        raise SystolicError(
            f"network input must match the {name} images, not {qnet.input_shape} with p_max "
            f"{qnet.p_max} against {test.input_shape} with p_max {test.p_max}")
    if n < 1:
        raise SystolicError(f"--images must be at least 1, not {n}")
    return test.q[:n], test.labels[:n]


def _run(args):
    from ..hw.config import preset
    from .qnet import QNet

    qnet = QNet.load(args.qnet)
    cfg = preset(args.preset)
    images, labels = dataset_images(qnet, args.dataset, args.data_dir, args.images)
    quiet = _stdout_to_stderr() if args.json else contextlib.nullcontext()
    with quiet:
        report = simulate(qnet, images, cfg, labels=labels, sim=args.sim, trace=args.trace,
                          waves=args.waves)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(format_report(report))
    if report.mismatches:
        raise SystolicError(f"{report.mismatches} of {len(images)} images differ from the "
                            "golden model" + ("" if args.trace else "; rerun with --trace to "
                                              "find the first differing value"))


def add_parser(subparsers):
    """Register ``systolic simulate``."""
    p = subparsers.add_parser(
        "simulate", help="run a .qnet on the accelerator's RTL and check it against the golden "
                         "model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile a .qnet for an accelerator preset, run test images through the "
                    "core's Verilog in a cocotb testbench (Verilator or Icarus), and compare "
                    "every logit with the golden model exactly. Reports accuracies, cycles per "
                    "image and per layer against the performance model, MACs and PE "
                    "utilization. Exits with status 2 when any logit differs.",
        epilog="examples:\n"
               "  systolic simulate model.qnet\n"
               "  systolic simulate model.qnet --images 200 --json\n"
               "  systolic simulate model.qnet --images 3 --sim icarus --trace\n"
               "  systolic simulate lenet5.qnet --preset big --data-dir data/mnist")
    p.add_argument("qnet", metavar="FILE.qnet", help="quantized network")
    p.add_argument("--preset", default="default",
                   help="accelerator preset: default (8x8), small (2x4), big (12x12)")
    p.add_argument("--images", type=int, default=20, metavar="N",
                   help="test images to run (default: 20)")
    p.add_argument("--sim", choices=("verilator", "icarus"), default="verilator",
                   help="simulator (default: verilator)")
    p.add_argument("--waves", action="store_true", help="record waveforms")
    p.add_argument("--trace", action="store_true",
                   help="read back every layer's output and name the first differing value")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: images, mismatches, golden_accuracy, "
                        "rtl_accuracy, cycles_per_image, layers, ...")
    p.add_argument("--dataset", choices=("digits", "mnist"),
                   help="data set (default: the one the network was trained on)")
    p.add_argument("--data-dir", metavar="DIR", help="directory of MNIST IDX files")
    p.set_defaults(func=_run)
