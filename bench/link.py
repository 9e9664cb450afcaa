"""Images per second on each board, from what the virtual board measures: the bytes an image
takes on the wire (both ways, every frame) and its cycles, in RTL simulation (Verilator).

Nothing here is timed on this machine; the rates follow from the measured bytes and cycles,
the board's baud rate (8N1: ten bits a byte) and clock:

* line: the UART alone, back to back;
* compute: the accelerator alone;
* serial: one after the other, as the driver runs an image today (no USB latency counted:
  a real adapter adds its latency timer, 1 ms when `systolic deploy` can set it, per reply).

Each run also checks every logit against the golden model (0 mismatches or it stops).

    python bench/link.py                   # lenet-digits, trained here, 20 images a board
    python bench/link.py --images 50 --json
"""

import argparse
import json
import sys

from systolic.hw.boards import BOARDS
from systolic.sw import data, models, quantize, train
from systolic.sw.deploy import deploy_sim
from systolic.sw.simulate import dataset_images


def lenet_digits():
    """lenet-digits trained and quantized as `systolic demo` does it."""
    train.set_threads()
    split = data.load_digits()
    model = models.build_model("lenet-digits", seed=0)
    train.train(model, split, seed=0, log=lambda line: None, **train.DEFAULTS["digits"])
    return quantize.quantize(model, split.train.x[:256], input_shape=(1, 8, 8),
                             p_max=split.train.p_max, dataset="digits", arch="lenet-digits")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    qnet = lenet_digits()
    images, labels = dataset_images(qnet, None, None, args.images)
    for board in BOARDS.values():
        s = deploy_sim(qnet, images, labels, board)
        if s["mismatches"]:
            sys.exit(f"{board.name}: {s['mismatches']} images differ from the golden model")
        line_s = s["wire_bytes_per_image"] * 10 / board.baud
        compute_s = s["cycles_per_image"] / (board.clock_mhz * 1e6)
        rows.append({
            "board": board.name, "clock_mhz": board.clock_mhz, "baud": board.baud,
            "images": s["images"], "mismatches": s["mismatches"],
            "wire_bytes_per_image": s["wire_bytes_per_image"],
            "cycles_per_image": s["cycles_per_image"],
            "line_images_per_second": 1 / line_s,
            "compute_images_per_second": 1 / compute_s,
            "serial_images_per_second": 1 / (line_s + compute_s),
        })
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'board':11s} {'clock':>7s} {'baud':>9s} {'bytes':>6s} {'cycles':>7s} "
          f"{'line/s':>8s} {'compute/s':>10s} {'serial/s':>9s}")
    for r in rows:
        print(f"{r['board']:11s} {r['clock_mhz']:5g}MHz {r['baud']:9d} "
              f"{r['wire_bytes_per_image']:6.0f} {r['cycles_per_image']:7.0f} "
              f"{r['line_images_per_second']:8.0f} {r['compute_images_per_second']:10.0f} "
              f"{r['serial_images_per_second']:9.0f}")


if __name__ == "__main__":
    main()
