"""How fast whole networks simulate: the fast harness against a bare Verilator loop over the
same design, and against the cocotb route, measured in one run.

    python bench/fastsim.py                        # lenet-digits, default preset, 360 images
    python bench/fastsim.py --batch 1              # one image a run only
    python bench/fastsim.py --model lenet5.qnet --preset big --data-dir ../shared/data/mnist

Without ``--model``, lenet-digits with seeded random weights, quantized on the digits training
images. Every logit is checked against the golden model. Prints, for the bare loop (the design
clocked with idle inputs, no harness: the ceiling), the fast harness on one process and on
``--jobs`` processes, and the cocotb route on Verilator: simulated cycles a second and images a
second, and the harness's share of the bare loop's pace. Runs on several processes are also
set against the bare loop run in as many processes at once: what this machine gives each of
them when all run together.
"""

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from systolic.hw.config import preset
from systolic.hw.controller import Controller
from systolic.sim.fast import bare_loop_rate
from systolic.sw import data, models, quantize, train
from systolic.sw.qnet import QNet
from systolic.sw.simulate import dataset_images, resolve_batch, simulate


def _network(args):
    if args.model:
        return QNet.load(args.model)
    train.set_threads()
    split = data.load_digits()
    model = models.build_model("lenet-digits", seed=0)
    return quantize.quantize(model, split.train.x[:256], input_shape=(1, 8, 8),
                             p_max=split.train.p_max, dataset="digits", arch="lenet-digits")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a .qnet (default: lenet-digits, random weights)")
    p.add_argument("--preset", default="default")
    p.add_argument("--images", type=int, default=360, help="test images (default 360)")
    p.add_argument("--jobs", type=int, default=2, help="processes of the parallel run")
    p.add_argument("--cocotb-images", type=int, default=10,
                   help="images on the cocotb route (0: skip it)")
    p.add_argument("--data-dir", help="MNIST IDX files, for a network trained on MNIST")
    p.add_argument("--bare-cycles", type=int, default=3_000_000)
    p.add_argument("--batch", default="auto", metavar="N|auto",
                   help="images per run on the fast routes (default: auto, the largest batch "
                        "that fits; the cocotb route runs one image a run)")
    args = p.parse_args(argv)

    qnet = _network(args)
    cfg = preset(args.preset)
    images, labels = dataset_images(qnet, None, args.data_dir, args.images)
    say = lambda line: print(line, file=sys.stderr)    # noqa: E731
    rows = []

    def run(name, sim, n, jobs, batch=1):
        start = time.monotonic()      # the cocotb route's wall time, its build done before
        r = simulate(qnet, images[:n], cfg, labels=labels[:n], sim=sim, jobs=jobs, batch=batch,
                     progress=lambda item: isinstance(item, str) and say(item))
        d = r.as_dict()
        if d["mismatches"]:
            raise SystemExit(f"{name}: {d['mismatches']} images differ from the golden model")
        seconds = d.get("run_seconds") or (time.monotonic() - start)
        d["images_per_second"] = n / seconds
        cycles = d.get("sim_cycles") or None
        per_process = cycles / seconds / d["jobs"] if cycles else None
        rows.append((name, n, d["images_per_second"], per_process,
                     d.get("sim_cycles_per_second"), d["jobs"]))
        return d

    say("building and timing the bare loop")
    simulate(qnet, images[:1], cfg, jobs=1, progress=lambda item: None)     # builds the harness
    bare = bare_loop_rate(Controller(cfg), name="controller", cycles=args.bare_cycles)
    # The same loop in --jobs processes at once: what the machine gives each of several
    # processes (shared caches, memory and, on a virtual machine, the host), the fair ceiling
    # for the harness's runs on several processes.
    with ThreadPoolExecutor(args.jobs) as pool:
        rates = list(pool.map(lambda _: bare_loop_rate(Controller(cfg), name="controller",
                                                       cycles=args.bare_cycles),
                              range(args.jobs)))
    bare_n = sum(rates) / len(rates)
    batch = resolve_batch(args.batch, qnet, cfg, args.images, jobs=args.jobs)
    first = run("fast, 1 process", "fast", args.images, 1)
    run(f"fast, {args.jobs} processes", "fast", args.images, args.jobs)
    if batch > 1:
        run(f"fast, batches of {batch}", "fast", args.images, 1, batch)
        run(f"fast, {args.jobs} procs, batch {batch}", "fast", args.images, args.jobs, batch)
    if args.cocotb_images:
        say("building the cocotb route's simulator")
        simulate(qnet, images[:1], cfg, sim="verilator")        # its build, not timed
        run("cocotb on Verilator", "verilator", args.cocotb_images, None)

    print(f"{qnet.arch} on the {args.preset} preset ({cfg.rows}x{cfg.cols}), "
          f"{first['cycles_per_image']:.0f} cycles an image, every logit checked")
    print(f"  {'route':24s} {'images':>6s} {'images/s':>9s} {'cycles/s':>10s} "
          f"{'clocking':>10s} {'of bare':>8s} {'of bare, same processes':>24s}")
    print(f"  {'bare Verilator loop':24s} {'':>6s} {'':>9s} {bare:10.0f} {bare:10.0f} "
          f"{1:8.0%}")
    if args.jobs > 1:
        print(f"  {f'bare loop, {args.jobs} at once':24s} {'':>6s} {'':>9s} {bare_n:10.0f} "
              f"{bare_n:10.0f} {bare_n / bare:8.0%} {1:24.0%}")
    for name, n, ips, cps, clocking, jobs in rows:
        share = f"{cps / bare:8.0%}" if cps else f"{'':>8s}"
        if cps:
            share += f" {cps / (bare_n if jobs > 1 else bare):24.0%}"
        print(f"  {name:24s} {n:6d} {ips:9.2f} "
              + (f"{cps:10.0f} {clocking:10.0f} " if cps else f"{'':>10s} {'':>10s} ")
              + share)
    print("  (cycles/s: simulated cycles over the run's wall time, per process; clocking: "
          "while in C++; of bare: against one bare loop alone; of bare, same processes: "
          f"against the bare loop run in as many processes at once, {args.jobs} or 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
