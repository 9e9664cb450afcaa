"""Whole-network utilization of the array, layer by layer, before and after the dataflow
options, measured in RTL (the fast harness) in one run.

    python bench/dataflow.py                                  # lenet-digits, default preset
    python bench/dataflow.py --arch lenet5 --preset big
    python bench/dataflow.py --model lenet5.qnet --preset big --data-dir ../shared/data/mnist

For each mode — one image a run (what the accelerator did before batching), batches of the
largest size that fits, batches with the first convolution's input densely packed by the host
(``--dense-input``), batches with a one-channel first convolution run dense on chip
(``--dense-conv``, the default where the preset has it), these four with every pooling a pass
of the pooling engine (``fused_pool=False``), and last the preset as it is, 2x2 max pooling
fused into the convolution before it (and a dense convolution of few output channels computing
pixel pairs, `systolic.hw.isa.pair_pixels`) — the network runs on ``--images`` images; every
logit is checked against the golden model and every layer's cycles against the performance
model. Prints each layer's cycles per image and utilization (MACs / (cycles x PEs)), the whole
network's, the bytes the link carried per image and the simulated cycles per image (array and
link), so the trade of dense input is in view. Without ``--model``, the architecture with
seeded random weights and random images (cycles do not depend on the values).
"""

import argparse
import json
import sys

import numpy as np
from systolic.hw.config import preset
from systolic.sw import models, quantize, train
from systolic.sw.compiler import largest_batch
from systolic.sw.qnet import QNet
from systolic.sw.simulate import dataset_images, simulate


def _network(args):
    if args.model:
        qnet = QNet.load(args.model)
        images, _ = dataset_images(qnet, None, args.data_dir, args.images)
        return qnet, images
    train.set_threads()
    arch = models.ARCHS[args.arch]
    rng = np.random.default_rng(0)
    p_max = 16 if arch.dataset == "digits" else 255
    calib = (rng.integers(0, p_max + 1, (64, *arch.input_shape)) / p_max).astype(np.float32)
    qnet = quantize.quantize(models.build_model(args.arch, seed=0), calib,
                             input_shape=arch.input_shape, p_max=p_max, dataset=arch.dataset,
                             arch=args.arch)
    images = rng.integers(0, 128, (args.images, *arch.input_shape)).astype(np.int8)
    return qnet, images


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="lenet-digits", choices=models.ARCHS)
    ap.add_argument("--model", metavar="FILE.qnet", help="a quantized network instead")
    ap.add_argument("--data-dir", metavar="DIR", help="MNIST IDX files (with --model)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cfg = preset(args.preset)
    qnet, images = _network(args)
    # Before fused pooling: the same preset, its pooling a pass of the pooling engine.
    unfused = cfg.replace(fused_pool=False)
    modes = [("one image a run", unfused, 1, False, False),
             ("batched", unfused, largest_batch(qnet, unfused, dense_conv=False), False, False),
             ("batched, dense input", unfused,
              largest_batch(qnet, unfused, dense_input=True, dense_conv=False), True, False)]
    if cfg.dense_conv:
        modes.append(("batched, dense conv on chip", unfused, largest_batch(qnet, unfused),
                      False, True))
    if cfg.fused_pool:
        modes.append(("batched, dense conv, fused pooling, pixel pairs where they fit"
                      if cfg.dense_conv
                      else "batched, fused pooling", cfg, largest_batch(qnet, cfg), False,
                      cfg.dense_conv))
    results = []
    for label, mode_cfg, batch, dense, on_chip in modes:
        batch = min(batch, len(images))
        report = simulate(qnet, images, mode_cfg, batch=batch, dense_input=dense,
                          dense_conv=on_chip, jobs=1)
        d = report.as_dict()
        if d["mismatches"] or not d["model_exact"]:
            print(f"{label}: {d['mismatches']} images differ from the golden model, model "
                  f"exact: {d['model_exact']}", file=sys.stderr)
            return 1
        results.append({"mode": label, "batch": batch, "dense_input": dense,
                        "dense_conv": on_chip, "fused_pool": mode_cfg.fused_pool,
                        "utilization": d["utilization"],
                        "cycles_per_image": d["cycles_per_image"],
                        "link_bytes_per_image": d["link"]["bytes_per_image"],
                        "sim_cycles_per_image": d["sim_cycles"] / len(images),
                        "images_per_second": d["images_per_second"],
                        "layers": [{k: row[k] for k in ("name", "cycles", "utilization")}
                                   for row in d["layers"]]})
    if args.json:
        print(json.dumps({"preset": args.preset, "images": len(images), "modes": results}))
        return 0
    print(f"{args.model or args.arch} on the {args.preset} preset ({cfg.rows}x{cfg.cols}), "
          f"{len(images)} images a mode, every logit exact, every layer as the model predicts")
    for r in results:
        print(f"\n{r['mode']} (batch {r['batch']}): utilization {r['utilization']:.1%}, "
              f"{r['cycles_per_image']:.0f} array cycles an image; on the link "
              f"{r['link_bytes_per_image']:.0f} bytes an image; simulated "
              f"{r['sim_cycles_per_image']:.0f} cycles an image, {r['images_per_second']:.1f} "
              "images/s")
        for row in r["layers"]:
            print(f"  {row['name']:40s} {row['cycles']:9.1f} cycles {row['utilization']:7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
