"""Fuzz the controller: random and mutated request frames through the fast harness, every reply
checked against a reference model of ``docs/protocol.md``, and after every burst an image of a
network (lenet-digits, seeded random weights, loaded once) run by the host driver on the same
simulated device, its logits compared with the golden model's, exactly.

Frames: valid requests, and valid-looking ones mutated by bit flips, truncation, wrong and
oversize lengths, unknown types, bad CRCs, bad memories, addresses and counts; garbage bytes,
breaks and framing errors between frames; line faults inside frames; a few small requests sent
back to back, within the UART's receive FIFO (`systolic.sim.fuzz` says what that promises).
A rejected write to the activations is surrounded by a write and a READ of what it aimed at: it
must have changed nothing.

The run is reproducible from its seed and options; a failure prints the seed, the burst, the
exact bytes of the exchange and of those before it in its burst, and the command replaying it.
It exits 1 on a failure.

    python bench/fuzz.py                          # 10,000 frames on the controller's byte streams
    python bench/fuzz.py --count 200 --divisor 8 --timeout-cycles 800     # on the UART pins
    python bench/fuzz.py --seed 7 --burst 20 --json
"""

import argparse
import json
import sys
import time
from pathlib import Path

from systolic.hw.config import preset
from systolic.sim.fuzz import STREAM_TIMEOUT_CYCLES, FuzzFailure, fuzz

# The tests' seeded random networks: the fuzzer needs one the golden model defines, not a good one.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from net_common import random_qnet


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000,
                    help="frames to send, not counting the golden images' (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of everything sent (default 0)")
    ap.add_argument("--burst", type=int, default=50,
                    help="frames between golden images (default 50)")
    ap.add_argument("--divisor", type=int, default=0,
                    help="0: the controller's byte streams, line faults on its line_fault input "
                    "(default); N: the virtual board's UART pins at N clock cycles a bit, real "
                    "breaks and framing errors through the UART")
    ap.add_argument("--timeout-cycles", type=int, default=None,
                    help=f"the controller's frame timeout in cycles (default: "
                    f"{STREAM_TIMEOUT_CYCLES} on the byte streams, a board's 10,000 bit times "
                    "on the UART pins; shorter makes cut-off frames cheaper)")
    ap.add_argument("--preset", default="default", help="accelerator preset (default: default)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    qnet = random_qnet("lenet-digits")
    say = (lambda line: print(line, file=sys.stderr)) if not args.json else (lambda line: None)
    started = time.monotonic()
    try:
        report = fuzz(qnet, preset(args.preset), count=args.count, seed=args.seed,
                      burst=args.burst, divisor=args.divisor or None,
                      timeout_cycles=args.timeout_cycles, log=say, progress=say)
    except FuzzFailure as e:
        print(e, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**report.as_dict(), "total_seconds": time.monotonic() - started},
                         indent=2))
    else:
        print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
