"""How fast the software side runs on this machine: the documented first flow (``systolic train``
then ``systolic quantize``, the built-in digits) and the int8 golden model on the digits test
set (360 images), best of a few runs.

Wall-clock figures depend on the machine and its load, so they are measured here and never
asserted in a test (the tests check what these commands compute, not how fast). For reference,
the suite used to require the flow under 120 s and the golden model under 1 s.

    python bench/sw_speed.py
    python bench/sw_speed.py --repeat 10 --json
"""

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

from systolic.sw import cli, data, golden, qnet


def timed(func, *args):
    """``(seconds, result)`` of one call."""
    start = time.perf_counter()
    result = func(*args)
    return time.perf_counter() - start, result


def flow(directory):
    """``systolic train`` then ``systolic quantize``, their output swallowed; seconds each."""
    seconds = {}
    for name, argv in (("train", ["train", "-o", str(directory / "m.pt")]),
                       ("quantize", ["quantize", str(directory / "m.pt"), "-o",
                                     str(directory / "m.qnet")])):
        with contextlib.redirect_stdout(io.StringIO()):
            elapsed, code = timed(cli.main, argv)
        if code != 0:
            raise SystemExit(f"systolic {name} failed (exit status {code})")
        seconds[name] = elapsed
    return seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="golden model runs (best is kept)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        seconds = flow(Path(tmp))
        net = qnet.QNet.load(Path(tmp) / "m.qnet")
    images = data.load_digits().test.q
    runs = [timed(golden.run, net, images)[0] for _ in range(args.repeat)]
    figures = {
        "train_s": seconds["train"], "quantize_s": seconds["quantize"],
        "flow_s": seconds["train"] + seconds["quantize"],
        "golden_images": len(images), "golden_s": min(runs),
        "golden_images_per_second": len(images) / min(runs),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"train + quantize (systolic train, systolic quantize): {figures['flow_s']:.1f} s "
          f"({figures['train_s']:.1f} + {figures['quantize_s']:.1f})")
    print(f"golden model, {len(images)} digits images: {figures['golden_s'] * 1000:.0f} ms "
          f"(best of {args.repeat}), {figures['golden_images_per_second']:.0f} images/s")


if __name__ == "__main__":
    main()
