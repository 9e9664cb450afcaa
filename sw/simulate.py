"""``systolic simulate``: run a compiled network on the core's RTL and check it against the
golden model, logit by logit, with per-layer cycles against the performance model.

The simulation runs the host driver (`systolic.sw.driver.Driver`) against the controller's
Verilog in one of two ways (`SIMULATORS`):

- ``fast`` (the default): Verilator with a C++ harness that clocks the design and wakes Python
  only when a reply frame is complete (`systolic.sim.fast`); the images are shared among
  ``jobs`` simulator processes, one per core.
- ``verilator`` or ``icarus``: a cocotb testbench (``sim/test_network.py``), Python on every
  clock edge: a hundred times slower, kept as the reference route the unit tests share.
"""

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from . import golden, perfmodel
from .compiler import compile_network
from .errors import SystolicError

__all__ = [
    "SIMULATORS", "SimulationReport", "add_parser", "building", "dataset_images",
    "format_report", "parse_window", "resolve_batch", "run_rtl", "simulate",
]

#: How a network can be simulated: name -> what it is (the ``--sim`` choices).
SIMULATORS = {
    "fast": "Verilator clocked from C++, Python per frame (default)",
    "verilator": "cocotb on Verilator, Python per clock edge (slow)",
    "icarus": "cocotb on Icarus Verilog, Python per clock edge (slowest)",
}


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
        int64 ``(N, layers)``: the core's ``cycles`` for every layer of the run (batch) of
        every image (the layers' own); ``(N, 1)``, the run's total, when the per-layer
        counters were not read (``layer_cycles`` off).
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
    speed : dict
        The fast simulator's pace: ``sim_cycles`` simulated, ``sim_cycles_per_second``
        (while clocking), ``jobs``, ``run_seconds`` (wall time, the build excluded);
        ``waves``, the waveform file, when one was written.
    batch_sizes : numpy.ndarray or None
        int64 ``(N,)``: the size of each image's batch (``None``: 1).
    run_cycles : numpy.ndarray or None
        int64 ``(N,)``: the whole run's cycles (RUN's DONE: with ``fetch_ahead`` the
        controller's between the layers included, without it the layers' sum; with tracing,
        the sum of the layers' runs), of every image's run.
    traced : bool
        Whether each layer ran on its own (tracing), not the program in one run.
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
    speed: dict = field(default_factory=dict)
    batch_sizes: np.ndarray | None = None
    run_cycles: np.ndarray | None = None
    traced: bool = False

    @property
    def batches(self):
        """int64 ``(N,)``: the size of the batch each image ran in."""
        if self.batch_sizes is None:
            return np.ones(len(self.logits), np.int64)
        return self.batch_sizes

    def _predicted(self):
        """int64 ``(N, layers)``: the performance model's cycles for each image's run."""
        variants = {}
        rows = []
        for b in self.batches:
            if b not in variants:
                prog = self.program.with_batch(int(b))
                variants[b] = [perfmodel.predict_layer(prog.cfg, lay) for lay in prog.layers]
            rows.append(variants[b])
        return np.array(rows, np.int64)

    def _predicted_runs(self):
        """int64 ``(N,)``: the performance model's whole-run cycles for each image's run
        (`perfmodel.predict_run`)."""
        variants = {}
        for b in self.batches:
            if b not in variants:
                prog = self.program.with_batch(int(b))
                variants[b] = (sum(perfmodel.predict_run(prog.cfg, lay.entries)
                                   for lay in prog.layers) if self.traced
                               else perfmodel.predict_program(prog))
        return np.array([variants[b] for b in self.batches], np.int64)

    @property
    def model_exact(self):
        """Whether every layer of every run took exactly the performance model's cycles
        (``None`` without the per-layer counters), and so did every whole run."""
        if self.layer_cycles.shape[1] != len(self.program.layers):
            return None
        return bool(np.all(self.layer_cycles == self._predicted())
                    and self.run_exact is not False)

    @property
    def run_exact(self):
        """Whether every run took exactly the performance model's cycles, the controller's
        between layers included (``None`` when the runs' totals are not known)."""
        if self.run_cycles is None:
            return None
        return bool(np.all(self.run_cycles == self._predicted_runs()))

    @property
    def mismatches(self):
        """Images whose logits differ from the golden model's in any element."""
        return int(np.sum(np.any(self.logits != self.golden_logits, axis=1)))

    def layers(self):
        """Per hardware layer: name, cycles and predicted cycles (an image's share of its
        run's, the mean over images), MACs, utilization (none without the per-layer
        counters)."""
        cfg = self.program.cfg
        rows = []
        if self.layer_cycles.shape[1] != len(self.program.layers):
            return rows

        def share(col):
            v = float(np.mean(col / self.batches))
            return int(v) if v.is_integer() else v

        predicted = self._predicted()
        for j, lay in enumerate(self.program.layers):
            cycles = share(self.layer_cycles[:, j])
            rows.append({"name": lay.name, "kind": lay.kind, "cycles": cycles,
                         "predicted_cycles": share(predicted[:, j]),
                         "macs": lay.macs,
                         "utilization": perfmodel.utilization(cfg, lay.macs, cycles)})
        return rows

    def as_dict(self):
        n = len(self.logits)
        acc = (lambda p: float(np.mean(p == self.labels))) if self.labels is not None else (
            lambda p: None)
        # Each run's total counts once (its images share it): exact, then one division.
        totals = self.layer_cycles.sum(axis=1) if self.run_cycles is None else self.run_cycles
        runs = sum(Fraction(int(t), int(b)) for t, b in zip(totals, self.batches, strict=True))
        cycles = float(runs / n)
        cfg = self.program.cfg
        return {
            "images": n, "sim": self.sim, "mismatches": self.mismatches,
            "logit_mismatches": int(np.sum(self.logits != self.golden_logits)),
            "golden_accuracy": acc(np.argmax(self.golden_logits, axis=1)),
            "rtl_accuracy": acc(np.argmax(self.logits, axis=1)),
            # Per image, for a confusion matrix (`systolic.sw.report`).
            "predictions": np.argmax(self.logits, axis=1).tolist(),
            "labels": None if self.labels is None else np.asarray(self.labels).tolist(),
            "cycles_per_image": cycles, "macs_per_image": self.program.macs,
            "utilization": perfmodel.utilization(cfg, self.program.macs, cycles),
            "batch": self.program.batch, "dense_input": self.program.dense is not None,
            "dense_conv": self.program.dense_conv,
            # Activation memory the program uses at its peak (a batch), of the configuration's.
            "act_words": self.program.act_words, "act_depth": cfg.act_depth,
            "model_exact": self.model_exact, "run_exact": self.run_exact,
            "config": {"rows": cfg.rows, "cols": cfg.cols, "pes": cfg.pes},
            "layers": self.layers(), "first_difference": self.first_difference,
            "wall_seconds": self.wall_seconds,
            "images_per_second": n / self.speed.get("run_seconds", self.wall_seconds),
            "link": self.link, **self.speed,
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


@contextlib.contextmanager
def simulator_log(verbose=False):
    """Keep what simulators print on standard output (cocotb's log, a build's output) off the
    terminal: it goes to ``logs/simulate-<pid>.log`` in the build directory
    (`systolic.sim.runner.build_root`), which is removed after a run that succeeded; a
    `SystolicError` raised inside names it. Yields ``say(line)``, which prints on the real
    standard output. With ``verbose`` nothing is redirected."""
    if verbose:
        yield print
        return
    from ..sim.runner import build_root

    log = build_root() / "logs" / f"simulate-{os.getpid()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    saved = os.dup(1)
    console = os.fdopen(os.dup(saved), "w")

    def say(line):
        console.write(f"{line}\n")
        console.flush()

    keep = False
    with open(log, "wb") as f:
        os.dup2(f.fileno(), 1)
        try:
            yield say
        except SystolicError as e:
            sys.stdout.flush()
            keep = log.stat().st_size > 0
            if keep:
                e.args = (f"{e} (the simulator's log: {log})",)
            raise
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            console.close()
            if not keep:
                log.unlink(missing_ok=True)


def run_rtl(qnet, images, cfg, *, sim="fast", trace=False, waves=None, timeout=None,
            uart=None, faults=(), layer_cycles=True, jobs=None, progress=None,
            waves_file=None, netlist=None, batch=1, dense_input=False, dense_conv=True,
            cxx_opt=None):
    """Run ``qnet`` on int8 ``images`` ``(N, C, H, W)`` in the accelerator's RTL (controller
    and core), driven through the framed host protocol; with ``uart = (clk_hz, baud)``, the
    virtual board (`systolic.hw.virtual.VirtualBoard`), driven bit by bit on its UART pins,
    where ``faults`` (see `systolic.sim.fast.HarnessLink`) damage frames on the wire. Without
    ``layer_cycles`` the driver reads only each image's total cycles, as on a board.

    Parameters
    ----------
    sim : str
        One of `SIMULATORS`.
    waves : None, True, or (first, stop) image range
        Record waveforms of those images (``True``: all), as FST with ``fast`` (the file's
        path is in the result's ``speed``), as the cocotb runner does otherwise.
    waves_file : path or None
        ``fast``: the FST file (default: ``systolic-waves.fst`` in the current directory).
    netlist : systolic.hw.netlist.Netlist or None
        Simulate this synthesized netlist (a board's controller, cell by cell on its cell
        models) instead of the design's Verilog; ``cfg`` must be the one it was built with.
    jobs : int or None
        ``fast``: simulator processes sharing the images (default: one per core, one with
        ``faults`` or ``waves``).
    batch : int
        Images per run (`compiler.compile_network`; `compiler.largest_batch` tells what fits).
    dense_input : bool
        Send the first convolution its im2col input (`compiler.compile_network`).
    dense_conv : bool
        Run a one-channel first convolution dense on chip where the configuration can
        (`compiler.compile_network`; the default).
    cxx_opt : str or None
        ``fast``: the C++ optimization of the simulator, if this run builds it (see
        `systolic.sim.fast.build_harness`; each level is a build of its own). ``None``: -O2,
        the fastest to run; ``"-O0"`` builds in about half the time, for a few images.
    progress : callable or None
        ``fast``: called with a line of text when the simulator is built, and with the
        number of images done (an int) as they finish.

    Returns
    -------
    dict
        ``images``, per image: ``logits`` (list of int), ``cycles`` (per layer, or the total
        alone without ``layer_cycles``, of the run it was part of), ``batch`` (that run's
        images), ``outputs``
        (with ``trace``: every layer's output, flattened ``(C, H, W)``; else ``None``);
        ``wire_bytes``, the bytes of the frames that loaded the network and that ran the
        images; ``faults`` injected, frames ``resent`` and images ``reruns`` by the driver;
        with ``fast``, ``speed`` (see `SimulationReport`).

    Raises
    ------
    compiler.FitError
        When the network does not fit ``cfg``.
    systolic.sim.runner.SimulationError
        When the simulator is missing, or the simulation fails or times out.
    """
    if sim not in SIMULATORS:
        raise SystolicError(f"Simulator must be one of {', '.join(SIMULATORS)}, not {sim!r}")
    # Fit errors before building anything.
    program = compile_network(qnet, cfg, batch=batch, dense_input=dense_input,
                              dense_conv=dense_conv)
    images = _check_images(images, program)
    if netlist is not None and (uart is not None or waves):
        raise SystolicError("A netlist is simulated on its byte streams, without waveforms")
    if sim != "fast" and (batch != 1 or dense_input):
        raise SystolicError(f"--sim {sim} runs one image at a time, as compiled for the "
                            "cocotb testbench: use --sim fast for batches and dense input")
    if sim == "fast":
        return _run_fast(program, images, trace=trace, waves=waves, uart=uart, faults=faults,
                         layer_cycles=layer_cycles, jobs=jobs, progress=progress,
                         timeout=timeout, waves_file=waves_file, netlist=netlist,
                         cxx_opt=cxx_opt)
    if netlist is not None:
        from ..hw.netlist import simulate_netlist

        return simulate_netlist(netlist, qnet, images, sim=sim, trace=trace, timeout=timeout,
                                layer_cycles=layer_cycles)
    return _run_cocotb(qnet, images, cfg, sim=sim, trace=trace, waves=bool(waves),
                       timeout=timeout, uart=uart, faults=faults, layer_cycles=layer_cycles)


def _build_fast(cfg, cxx_opt=None):
    """A spawned process's work for `building`: the fast simulator of ``cfg``, into the cache.
    A failure is left for `simulate` to meet again and report, with the build's log."""
    from ..sim.fast import build_harness, network_top
    os.setpgrp()                # Verilator's processes with it, for `building` to stop them
    try:
        top, name, divisor = network_top(cfg)
        build_harness(top, name=name, uart_divisor=divisor, cxx_opt=cxx_opt)
    except Exception:           # simulate builds again and says why
        pass


@contextlib.contextmanager
def building(cfg, *, cxx_opt=None):
    """Build the fast simulator of ``cfg`` (with ``cxx_opt``, as `run_rtl` takes it) in
    another process while the ``with`` body runs.

    Verilator's build of a design takes about a minute, once per design (it is cached), and
    needs nothing but the configuration; `systolic demo` trains and quantizes meanwhile. On
    leaving the body the build is awaited, so a `simulate` of ``cfg`` after it finds it ready
    (a build that failed is tried again there, and its error reported). If the body raises,
    the build is stopped. The body gets the building process (`multiprocessing.Process`):
    ``is_alive()`` tells whether it is still at work.
    """
    import multiprocessing

    # spawn, not fork: the parent may have started torch's threads.
    proc = multiprocessing.get_context("spawn").Process(target=_build_fast, args=(cfg, cxx_opt),
                                                        daemon=True)
    proc.start()
    try:
        yield proc
    except BaseException:
        with contextlib.suppress(ProcessLookupError):     # not its own group yet
            os.killpg(proc.pid, signal.SIGTERM)
        proc.terminate()
        raise
    finally:
        proc.join()


def _check_images(images, program):
    """``images`` as int8 ``(N, C, H, W)``; anything else is a clear error, not a cast."""
    arr = np.asarray(images)
    shape = tuple(program.input_shape)
    if arr.ndim != 1 + len(shape) or arr.shape[1:] != shape or len(arr) < 1:
        raise SystolicError(f"images must be an array of shape (N, {', '.join(map(str, shape))})"
                            f" with N >= 1, not {arr.shape}")
    if arr.dtype != np.int8:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < -128 or arr.max() > 127:
            raise SystolicError(
                f"images must be int8 (quantized: `QNet.quantize_input` or a data set's `q`), "
                f"not {arr.dtype} in [{arr.min()}, {arr.max()}]")
        arr = arr.astype(np.int8)
    return arr


def _recv_budget(program, divisor):
    # Cycles a reply may take: the whole program's predicted run with a wide margin, plus the
    # longest reply on the wire.
    run = sum(perfmodel.predict_cycles(program.cfg, lay.fields) for lay in program.layers)
    return 4 * run + 20 * (divisor or 1) * 1100 + 100_000


def _run_fast(program, images, *, trace, waves, uart, faults, layer_cycles, jobs, progress,
              timeout, waves_file, netlist, cxx_opt=None):
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ..sim.fast import Harness, HarnessLink, build_harness, network_top
    from .driver import Driver, FramedTransport

    cfg = program.cfg
    window = None
    if waves:
        window = (0, len(images)) if waves is True else tuple(waves)
    if jobs is None:
        jobs = 1 if (faults or window) else min(len(images), os.cpu_count() or 1, 2)
    jobs = max(1, min(int(jobs), len(images)))
    if (faults or window) and jobs > 1:
        raise SystolicError("faults and waveforms need one simulator process: jobs=1")
    say = progress if progress is not None else (lambda _: None)
    if netlist is None:
        top, name, divisor = network_top(cfg, uart)
        exe = build_harness(top, name=name, uart_divisor=divisor, waves=window is not None,
                            progress=say, cxx_opt=cxx_opt)
    else:
        divisor = None
        exe = build_harness(netlist.path, name=netlist.name, models=netlist.models,
                            includes=netlist.includes, defines=netlist.defines,
                            cxx_opt="-O1", progress=say)
    budget = _recv_budget(program, divisor)
    started = time.monotonic()
    fst = Path(waves_file or "systolic-waves.fst").resolve()
    lock = threading.Lock()
    done = [0]

    def worker(part):
        first, chunk = part
        with Harness(exe, waves=fst if window else None,
                     timeout=timeout or 600) as harness:
            link = HarnessLink(harness, divisor=divisor, budget=budget,
                               faults=faults if first == 0 else ())
            transport = FramedTransport(link, cfg)
            driver = Driver(program, transport, layer_cycles=layer_cycles)

            async def go():
                await driver.load_network()
                loaded = transport.wire_bytes
                results = []
                step = program.batch
                for at in range(0, len(chunk), step):
                    n, stop = first + at, first + min(at + step, len(chunk))
                    if window is not None and n <= window[0] < stop:
                        harness.trace(True)
                    results += await driver.infer_batch(chunk[at:at + step], trace=trace)
                    if window is not None and n < window[1] <= stop:
                        harness.trace(False)
                    with lock:
                        done[0] += stop - n
                        say(done[0])
                return results, loaded

            results, loaded = asyncio.run(go())
            cycles, seconds = harness.info()
        return {"results": results, "loaded": loaded, "run": transport.wire_bytes - loaded,
                "resent": transport.resent, "reruns": driver.reruns,
                "faults": link.injected, "cycles": cycles, "seconds": seconds}

    # Each process's share in whole batches.
    size = -(-len(images) // jobs)
    size = -(-size // program.batch) * program.batch
    parts = [(i, images[i:i + size]) for i in range(0, len(images), size)]
    with ThreadPoolExecutor(len(parts)) as pool:
        outs = list(pool.map(worker, parts))
    results = [r for out in outs for r in out["results"]]
    cycles = sum(out["cycles"] for out in outs)
    seconds = sum(out["seconds"] for out in outs)
    speed = {"sim_cycles": cycles, "sim_cycles_per_second": cycles / seconds if seconds else None,
             "jobs": len(parts), "run_seconds": time.monotonic() - started}
    if window is not None:
        speed["waves"] = str(fst)
    return {"images": [{"logits": r.logits.tolist(), "cycles": r.layer_cycles or [r.cycles],
                        "run_cycles": r.cycles, "batch": r.batch,
                        "outputs": None if r.layer_outputs is None
                        else [o.ravel().tolist() for o in r.layer_outputs]} for r in results],
            "resent": sum(out["resent"] for out in outs),
            "reruns": sum(out["reruns"] for out in outs),
            "faults": sum(out["faults"] for out in outs),
            "wire_bytes": [outs[0]["loaded"], sum(out["run"] for out in outs)],
            "speed": speed}


def _run_cocotb(qnet, images, cfg, *, sim, trace, waves, timeout, uart, faults, layer_cycles):
    from ..sim.fast import network_top, verilog_file
    from ..sim.runner import run_cocotb

    with tempfile.TemporaryDirectory(prefix="systolic-sim-") as tmp:
        tmp = Path(tmp)
        qnet.save(tmp / "net.qnet")
        job = {"qnet": str(tmp / "net.qnet"), "cfg": cfg.as_dict(), "trace": bool(trace),
               "layer_cycles": bool(layer_cycles),
               "images": [im.ravel().tolist() for im in images]}
        # The fast harness's design (`network_top`: its byte-stream controller times a frame
        # out after `STREAM_TIMEOUT_CYCLES` quiet cycles, which the testbench's whole frames
        # never reach), so both routes simulate one design, converted once.
        top, name, divisor = network_top(cfg, uart)
        if uart is not None:
            job["uart_divisor"] = divisor
            job["faults"] = list(faults)
        (tmp / "job.json").write_text(json.dumps(job))
        if timeout is None:
            timeout = 600 + 5 * len(images) * (10 if sim == "icarus" else 1)
        source = verilog_file(top, name)
        run_cocotb(sources=[source], name=name, test_module="test_network", sim=sim,
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


def simulate(qnet, images, cfg, *, labels=None, sim="fast", trace=False, waves=None,
             uart=None, faults=(), layer_cycles=True, jobs=None, progress=None,
             waves_file=None, netlist=None, batch=1, dense_input=False, dense_conv=True,
             cxx_opt=None):
    """Run ``images`` in RTL and compare with the golden model; returns a `SimulationReport`.

    The arguments are `run_rtl`'s; ``labels`` are the images' true classes, when known.
    """
    program = compile_network(qnet, cfg, batch=batch, dense_input=dense_input,
                              dense_conv=dense_conv)
    images = _check_images(images, program)
    gold = golden.run(qnet, images)
    start = time.monotonic()
    out = run_rtl(qnet, images, cfg, sim=sim, trace=trace, waves=waves, uart=uart,
                  faults=faults, layer_cycles=layer_cycles, jobs=jobs, progress=progress,
                  waves_file=waves_file, netlist=netlist, batch=batch, dense_input=dense_input,
                  dense_conv=dense_conv, cxx_opt=cxx_opt)
    wall = time.monotonic() - start
    results = out["images"]
    link = {k: out[k] for k in ("faults", "resent", "reruns")}
    link["load_bytes"], run_bytes = out["wire_bytes"]
    link["bytes_per_image"] = run_bytes / len(images)
    logits = np.array([r["logits"] for r in results], np.int8).reshape(len(images), -1)
    cycles = np.array([r["cycles"] for r in results], np.int64).reshape(len(images), -1)
    sizes = np.array([r.get("batch", 1) for r in results], np.int64)
    runs = np.array([r["run_cycles"] for r in results], np.int64)
    first = _first_difference(program, gold, results) if trace else None
    return SimulationReport(program, logits, gold.logits, labels, cycles, first, wall, sim,
                            link, out.get("speed", {}), sizes, runs, bool(trace))


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
              f"utilization {d['utilization']:.1%}; batches of {d['batch']}"
              + (", dense input" if d["dense_input"] else "")
              + (", first layer dense on chip" if d["dense_conv"] else "") + ")",
              f"  wall time        {d['wall_seconds']:.1f} s"
              + (f" ({d['images_per_second']:.1f} images/s, "
                 f"{d['sim_cycles_per_second'] / 1e3:.0f}k cycles/s in each of "
                 f"{d['jobs']} simulator processes)" if d.get("sim_cycles_per_second") else ""),
              "",
              f"  {'layer':40s} {'cycles':>8s} {'model':>8s} {'error':>7s} {'MACs':>8s} "
              f"{'util':>6s}"]
    last = -1
    for row, lay in zip(d["layers"], report.program.layers, strict=True):
        # A flatten layer compiles to nothing; its row keeps the numbers those of the network.
        for i in range(last + 1, lay.index if lay.first is None else lay.first):
            lines.append(f"  {f'layer {i} (flatten)':40s} {'-':>8s} {'-':>8s} {'':7s} "
                         f"{'-':>8s} {'':6s}  (no pass of its own)")
        last = lay.index
        err = (row["predicted_cycles"] - row["cycles"]) / row["cycles"]
        lines.append(f"  {row['name']:40s} {row['cycles']:8.0f} {row['predicted_cycles']:8.0f} "
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


def progress_bar(total, *, log=None):
    """A ``progress`` callback for `simulate`: lines of text go to ``log`` (default: standard
    error), image counts to a tqdm bar on standard error (shown on a terminal only)."""
    from tqdm import tqdm

    bar = None

    def progress(item):
        nonlocal bar
        if isinstance(item, str):
            (log or (lambda line: print(line, file=sys.stderr)))(item)
            return
        if bar is None:
            bar = tqdm(total=total, unit="image", desc="simulating", leave=False,
                       disable=None, file=sys.stderr)
        bar.update(item - bar.n)
        if item >= total:
            bar.close()

    return progress


def parse_window(text, images):
    """``--waves`` text (``N``, ``N:M``, ``all``) as a ``(first, stop)`` range of images.

    Raises
    ------
    SystolicError
        For text of another form, or a range outside ``0 .. images``.
    """
    if text == "all":
        return (0, images)
    try:
        first, _, stop = text.partition(":")
        window = (int(first), int(stop) if stop else int(first) + 1)
    except ValueError:
        raise SystolicError(f"--waves must be N, N:M or all (images to record), not {text!r}"
                            ) from None
    if not 0 <= window[0] < window[1] <= images:
        raise SystolicError(f"--waves must name images within 0..{images}, not {text!r}")
    return window


def resolve_batch(text, qnet, cfg, images, *, dense_input=False, dense_conv=True, jobs=None):
    """``--batch`` text (a number or ``auto``) as a batch size. ``auto``: the smallest batch
    that runs each simulator process's share of the images in as few runs as the largest
    batch fitting the accelerator's memories would, so the processes get equal work (360
    images on two processes, 42 fitting: 5 runs of 36 each, not 210 images against 150)."""
    from .compiler import FitError, largest_batch

    if text != "auto":
        try:
            return int(text)
        except ValueError:
            raise SystolicError(f"--batch must be a number or auto, not {text!r}") from None
    fits = largest_batch(qnet, cfg, dense_input=dense_input, dense_conv=dense_conv)
    if fits == 0:
        compile_network(qnet, cfg, dense_input=dense_input,
                        dense_conv=dense_conv)                  # raises the fit error
        raise FitError("the network does not fit")
    share = -(-images // max(1, min(jobs or 2, images)))
    runs = -(-share // fits)
    return max(1, -(-share // runs))


def _run(args):
    from ..hw.config import preset
    from .qnet import QNet

    qnet = QNet.load(args.qnet)
    cfg = preset(args.preset)
    if args.fused_pool is not None:
        cfg = cfg.replace(fused_pool=args.fused_pool)
    if args.fc_rows is not None:
        cfg = cfg.replace(fc_rows=args.fc_rows)
    images, labels = dataset_images(qnet, args.dataset, args.data_dir, args.images)
    waves = None if args.waves is None else parse_window(args.waves, len(images))
    batch = resolve_batch(args.batch, qnet, cfg, len(images), dense_input=args.dense_input,
                          dense_conv=args.dense_conv, jobs=args.jobs)
    quiet = _stdout_to_stderr() if args.json and args.verbose else simulator_log(
        args.verbose)
    with quiet:
        report = simulate(qnet, images, cfg, labels=labels, sim=args.sim, trace=args.trace,
                          waves=waves, waves_file=args.waves_file, jobs=args.jobs,
                          batch=batch, dense_input=args.dense_input,
                          dense_conv=args.dense_conv, progress=progress_bar(len(images)))
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(format_report(report))
        if args.trace and report.first_difference is None:
            print(f"--trace: all {len(report.program.layers)} layers of {len(images)} images "
                  "match the golden model, every value")
    if args.report:
        from .report import dataset_float_images, write_report

        path = write_report(args.report, simulation=report, qnet=qnet, cfg=cfg, images=images,
                            float_images=dataset_float_images(qnet, args.dataset, args.data_dir,
                                                              len(images)))
        print(f"report: {path}", file=sys.stderr)
    if report.speed.get("waves"):
        print(f"waveforms of images {waves[0]}..{waves[1] - 1}: {report.speed['waves']}",
              file=sys.stderr)
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
                    "accelerator's Verilog (the controller and core, driven by the host driver "
                    "over the framed protocol), and compare every logit with the golden model "
                    "exactly. Reports accuracies, cycles per image and per layer against the "
                    "performance model, MACs and PE utilization, and the simulator's pace. "
                    "Exits with status 2 when any logit differs.\n\n"
                    "The default simulator, fast, is Verilator with a C++ harness that clocks "
                    "the design and wakes Python once per reply frame, with one simulator "
                    "process per core (--jobs). The first run of a design builds it (about a "
                    "minute; cached under build/sim). --sim verilator or icarus run the same "
                    "driver in a cocotb testbench, a clock edge at a time: the reference "
                    "route, a hundred times slower.\n\n"
                    "Waveforms: --waves records the chosen images; fast writes FST to "
                    "--waves-file, verilator and icarus write into the design's build "
                    "directory under build/sim (or $SYSTOLIC_BUILD_DIR): icarus "
                    "controller.fst, verilator controller-run-PID.vcd. The path is printed "
                    "either way. SYSTOLIC_WAVES=1 in the environment records waveforms of every "
                    "cocotb run (the test suite's too) the same way.",
        epilog="examples:\n"
               "  systolic simulate model.qnet\n"
               "  systolic simulate model.qnet --images 360 --json\n"
               "  systolic simulate model.qnet --images 3 --trace\n"
               "  systolic simulate model.qnet --images 10 --waves 3     # image 3 as FST\n"
               "  systolic simulate model.qnet --images 3 --sim icarus\n"
               "  systolic simulate lenet5.qnet --preset big --data-dir data/mnist")
    p.add_argument("qnet", metavar="FILE.qnet", help="quantized network")
    from ..hw.config import preset_help

    p.add_argument("--preset", default="default", metavar="P",
                   help=f"accelerator preset: {preset_help()} (default: default)")
    p.add_argument("--images", type=int, default=20, metavar="N",
                   help="test images to run (default: 20)")
    p.add_argument("--sim", choices=SIMULATORS, default="fast",
                   help="simulator: " + "; ".join(f"{k}: {v}" for k, v in SIMULATORS.items()))
    p.add_argument("--jobs", type=int, metavar="N",
                   help="fast: simulator processes sharing the images (default: one per core "
                        "of two)")
    p.add_argument("--waves", nargs="?", const="0", metavar="N[:M]|all",
                   help="record waveforms of images N to M-1 (default: image 0); fast writes "
                        "FST to --waves-file and prints its path")
    p.add_argument("--waves-file", metavar="FILE.fst",
                   help="fast: where the waveforms go (default: ./systolic-waves.fst)")
    p.add_argument("--batch", default="auto", metavar="N|auto",
                   help="images per run: each layer takes the whole batch at once, so a fully "
                        "connected layer puts an image on each row of the array (default: "
                        "auto: as few runs as the largest batch that fits the memories allows, "
                        "evened out among the simulator processes)")
    p.add_argument("--dense-input", action=argparse.BooleanOptionalAction, default=False,
                   help="send a first convolution with few input channels its im2col input: "
                        "every reduction step of the array does real work, for kh*kw times the "
                        "input's bytes on the link. Fewer array cycles (what a chip with a fast "
                        "host link would run), a slower simulation (default: off)")
    p.add_argument("--dense-conv", action=argparse.BooleanOptionalAction, default=True,
                   help="run a first convolution of one input channel dense on chip: whole "
                        "kernel rows in each reduction step, each lane reading its own pixel, "
                        "so a 3x3 kernel takes 2 steps of the array instead of 9, with no more "
                        "bytes on the link (default: on, where the preset has dense_conv)")
    p.add_argument("--fused-pool", action=argparse.BooleanOptionalAction, default=None,
                   help="run a 2x2 stride-2 max pooling after a convolution in the "
                        "convolution's write path, no pass of its own (default: where the "
                        "preset has fused_pool, every one but small)")
    p.add_argument("--fc-rows", type=int, metavar="N",
                   help="run a fully connected layer of one image on N rows at a time, each a "
                        "channel tile from its own weight bank (0: none; default: the "
                        "preset's, 0 in every preset)")
    p.add_argument("--trace", action="store_true",
                   help="read back every layer's output and name the first differing value")
    p.add_argument("--report", metavar="FILE.html",
                   help="also write the HTML report (see 'systolic report') to FILE.html")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the simulator's own output (cocotb's log); by default it goes to "
                        "a log file in the build directory, named when something fails")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: images, mismatches, golden_accuracy, "
                        "rtl_accuracy, cycles_per_image, layers, ...")
    p.add_argument("--dataset", choices=("digits", "mnist"),
                   help="data set (default: the one the network was trained on)")
    p.add_argument("--data-dir", metavar="DIR", help="directory of MNIST IDX files")
    p.set_defaults(func=_run)
