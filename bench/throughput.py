"""Throughput: the accelerator on a board's clock against PyTorch on this machine, in one run.

    python bench/throughput.py                          # ULX3S clock, its preset, both networks
    python bench/throughput.py --clock 125 --preset big --json
    python bench/throughput.py --networks mlperf-resnet8 --images 20
    python bench/throughput.py --fc-rows 4         # fully connected layers row by row
    python bench/throughput.py --clock 100 --no-pool-avg --no-eltwise --deep-pipeline

For lenet-digits and lenet5 (seeded random weights, quantized on seeded random images: the
cycles do not depend on the weights or the data), the accelerator's cycles per image come from
the RTL: a few images through `systolic.sw.simulate.simulate` (the fast Verilator harness),
every logit checked against the golden model. At the board's clock (``--board``, or
``--clock``) they give batch-1 latency and images a second (one image after another), and per
layer the sustained rate, 2 × MACs over the layer's time. Then a batch as large as the
activation memory holds (`systolic.sw.compiler.largest_batch`), again checked logit for
logit: the accelerator's batched images a second.

PyTorch runs the float model of the same network on one thread (``torch.set_num_threads(1)``)
in the same run: batched (``--batch`` images a call) and one image a call; each is the best of
``--repeats`` timings.

Needs no data set and nothing built beforehand: after ``scripts/setup.sh``, it runs from a
fresh clone.
"""

import argparse
import json
import sys
import time

import numpy as np
import torch
from systolic.hw.boards import BOARDS, get_board
from systolic.hw.build import board_config_from_args
from systolic.hw.generate import add_config_arguments
from systolic.sw import models, quantize
from systolic.sw.compiler import largest_batch
from systolic.sw.errors import SystolicError
from systolic.sw.simulate import simulate

NETWORKS = ("lenet-digits", "lenet5")
P_MAX = 255


def _network(arch, seed):
    """The float model and its `QNet`, both from seeded random weights and images."""
    spec = models.ARCHS[arch]
    model = models.build_model(arch, seed=seed).eval()
    rng = np.random.default_rng(seed)
    calib = rng.integers(0, P_MAX + 1, size=(64, *spec.input_shape)) / P_MAX
    qnet = quantize.quantize(model, calib.astype(np.float32), input_shape=spec.input_shape,
                             p_max=P_MAX, dataset=spec.dataset, arch=arch)
    return model, qnet


def _best_seconds(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def torch_rates(model, input_shape, *, batch, single, repeats, seed):
    """PyTorch on one thread: batched images/s, and batch-1 latency (s) and images/s."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *input_shape), generator=gen)
    ones = [x[i:i + 1] for i in range(min(single, batch))]
    with torch.inference_mode():
        model(x)                                            # warm up
        batched = _best_seconds(lambda: model(x), repeats)

        def one_by_one():
            for xi in ones:
                model(xi)

        one_by_one()
        per_image = _best_seconds(one_by_one, repeats) / len(ones)
    return {"batched_images_per_second": batch / batched,
            "batch1_latency_us": per_image * 1e6, "batch1_images_per_second": 1 / per_image}


def measure(arch, cfg, clock_mhz, *, images, batch, single, repeats, seed):
    """One network's record: the accelerator from RTL cycles, PyTorch timed here."""
    model, qnet = _network(arch, seed)
    rng = np.random.default_rng(seed + 1)
    q = rng.integers(0, 128, size=(images, *qnet.input_shape)).astype(np.int8)
    report = simulate(qnet, q, cfg, jobs=1, progress=lambda item: None).as_dict()
    fits = largest_batch(qnet, cfg)
    big = rng.integers(0, 128, size=(fits, *qnet.input_shape)).astype(np.int8)
    batched = simulate(qnet, big, cfg, jobs=1, batch=fits, progress=lambda item: None).as_dict()
    for r in (report, batched):
        if r["mismatches"]:
            raise SystolicError(f"{arch}: {r['mismatches']} of {r['images']} images differ "
                                "from the golden model")
    cycles = report["cycles_per_image"]
    seconds = cycles / (clock_mhz * 1e6)
    layers = []
    for lay in report["layers"]:
        t = lay["cycles"] / (clock_mhz * 1e6)
        layers.append({"name": lay["name"], "kind": lay["kind"], "cycles": lay["cycles"],
                       "macs": lay["macs"], "gops": 2 * lay["macs"] / t / 1e9 if t else None,
                       "utilization": lay["utilization"]})
    accel = {
        "cycles_per_image": cycles, "latency_us": seconds * 1e6,
        "images_per_second": 1 / seconds, "macs_per_image": report["macs_per_image"],
        "batch": fits, "batched_cycles_per_image": batched["cycles_per_image"],
        "batched_images_per_second": clock_mhz * 1e6 / batched["cycles_per_image"],
        "batched_utilization": batched["utilization"],
        "gops": 2 * report["macs_per_image"] / seconds / 1e9,
        "peak_gops": 2 * cfg.pes * clock_mhz / 1e3, "utilization": report["utilization"],
        "act_words": report["act_words"], "act_depth": report["act_depth"],
    }
    cpu = torch_rates(model, qnet.input_shape, batch=batch, single=single, repeats=repeats,
                      seed=seed)
    return {"network": arch, "images_checked": images, "accelerator": accel, "torch": cpu,
            "latency_ratio": cpu["batch1_latency_us"] / accel["latency_us"],
            "batched_ratio": (accel["batched_images_per_second"]
                              / cpu["batched_images_per_second"]),
            "layers": layers}


def format_table(result):
    cfg, clock = result["config"], result["clock_mhz"]
    lines = [f"Accelerator: {cfg['rows']}x{cfg['cols']} PEs at {clock:g} MHz "
             f"({result['clock_source']}), peak {2 * cfg['rows'] * cfg['cols'] * clock / 1e3:.2f}"
             f" GOPS; PyTorch: float model, one thread, this machine",
             "",
             f"{'network':<13} {'cycles':>7} {'accel µs':>9} {'accel img/s':>12} "
             f"{'accel batched img/s':>20} {'torch b1 µs':>12} {'torch b1 img/s':>15} "
             f"{'torch batched img/s':>20} {'b1 speed-up':>12} {'batched ratio':>14}"]
    for r in result["networks"]:
        a, t = r["accelerator"], r["torch"]
        lines.append(f"{r['network']:<13} {a['cycles_per_image']:>7.0f} {a['latency_us']:>9.1f} "
                     f"{a['images_per_second']:>12,.0f} "
                     f"{a['batched_images_per_second']:>11,.0f} (of {a['batch']:>3}) "
                     f"{t['batch1_latency_us']:>12.1f} "
                     f"{t['batch1_images_per_second']:>15,.0f} "
                     f"{t['batched_images_per_second']:>20,.0f} "
                     f"{r['latency_ratio']:>11.2f}x {r['batched_ratio']:>13.2f}x")
    lines += ["", "(b1 speed-up: PyTorch's batch-1 latency over the accelerator's; batched "
              "ratio: the accelerator's batched images/s over PyTorch's)", ""]
    for r in result["networks"]:
        a = r["accelerator"]
        lines.append(f"{r['network']}: {a['macs_per_image']:,} MACs an image, sustained "
                     f"{a['gops']:.2f} GOPS of {a['peak_gops']:.2f} peak (utilization "
                     f"{a['utilization']:.1%}); activation memory at its peak "
                     f"{a['act_words']:,} of {a['act_depth']:,} words; {r['images_checked']} "
                     f"images, then a batch of {a['batch']} ({a['batched_cycles_per_image']:.0f} "
                     f"cycles an image, utilization {a['batched_utilization']:.1%}), every "
                     "logit as the golden model's")
        lines.append(f"  {'layer':<28} {'cycles':>8} {'MACs':>9} {'GOPS':>7} {'util':>6}")
        for lay in r["layers"]:
            gops = "-" if not lay["macs"] or lay["gops"] is None else f"{lay['gops']:.2f}"
            util = "-" if not lay["macs"] or lay["utilization"] is None else (
                f"{lay['utilization']:.0%}")
            lines.append(f"  {lay['name']:<28} {lay['cycles']:>8.0f} "
                         f"{lay['macs']:>9,} {gops:>7} {util:>6}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--board", default="ulx3s-85f", help=f"one of {', '.join(BOARDS)}: its "
                   "clock and preset (default: ulx3s-85f)")
    p.add_argument("--clock", type=float, metavar="MHZ", help="clock instead of the board's")
    # `systolic build`'s configuration options (the board's preset unless --preset), over
    # the board's build; the RTL is simulated on generic multipliers whatever --target says.
    add_config_arguments(p)
    p.set_defaults(preset=None)
    p.add_argument("--networks", default=",".join(NETWORKS),
                   help=f"comma-separated (default: {','.join(NETWORKS)})")
    p.add_argument("--images", type=int, default=3, help="images through the RTL (default 3)")
    p.add_argument("--batch", type=int, default=256, help="PyTorch's batch (default 256)")
    p.add_argument("--single", type=int, default=200,
                   help="images PyTorch runs one at a time per timing (default 200)")
    p.add_argument("--repeats", type=int, default=5, help="timings, best kept (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        board = get_board(args.board)
        # The board's build (its preset with only the features that build has), simulated
        # on generic multipliers as `deploy --sim` does.
        cfg = board_config_from_args(board, args).replace(target="generic")
        clock = (args.clock if args.clock is not None
                 else board.build_defaults(args.preset).clock_mhz)
        if not clock > 0:
            raise SystolicError(f"Clock must be positive, not {clock!r}")
        nets = [n.strip() for n in args.networks.split(",") if n.strip()]
        for n in nets:
            if n not in models.ARCHS:
                raise SystolicError(f"Network must be one of {', '.join(models.ARCHS)}, "
                                    f"not {n!r}")
        result = {
            "board": board.name, "clock_mhz": clock,
            "clock_source": ("--clock" if args.clock is not None
                             else f"{board.name}'s clock for {args.preset}"),
            "preset": args.preset,
            "config": {"rows": cfg.rows, "cols": cfg.cols, "fc_rows": cfg.fc_rows,
                       "pool_avg": cfg.pool_avg, "eltwise": cfg.eltwise,
                       "deep_pipeline": cfg.deep_pipeline, "dense_raster": cfg.dense_raster},
            "networks": [measure(n, cfg, clock, images=args.images, batch=args.batch,
                                 single=args.single, repeats=args.repeats, seed=args.seed)
                         for n in nets],
        }
    except SystolicError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
