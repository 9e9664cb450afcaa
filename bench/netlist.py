"""Post-synthesis simulation of each board's design, timed: Yosys synthesis, then the netlist
with its cell models running lenet-digits images through the host driver, every logit checked
against the golden model. CI runs a cut of this (``tests/test_netlist_rtl.py``: the iCEBreaker's
design, and a 2x2 array in the ULX3S's primitives); this runs the boards' own designs.

    python bench/netlist.py                          # both boards, fast harness, 4 images
    python bench/netlist.py --board ulx3s-85f --images 20
    python bench/netlist.py --board icebreaker --sim verilator --sim icarus

``--sim fast`` (the default) compiles the netlist into the fast Verilator harness (C++ clock
loop, Python per frame, `systolic.sw.simulate`); ``verilator`` and ``icarus`` run the cocotb
testbench, Python on every clock edge (Icarus: about half an hour an image on a netlist).

A netlist is synthesized once and cached (like every simulator build) in build/sim/.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from systolic.hw.boards import BOARDS
from systolic.hw.config import AcceleratorConfig
from systolic.hw.netlist import board_netlist, simulate_netlist
from systolic.sim.runner import SIMULATORS
from systolic.sw import golden
from systolic.sw.simulate import simulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from net_common import random_images, random_qnet


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--board", choices=list(BOARDS), action="append",
                   help="board (repeatable; default: all)")
    p.add_argument("--sim", choices=("fast", *SIMULATORS), action="append",
                   help="simulator (repeatable; default: fast)")
    p.add_argument("--images", type=int, default=4, help="images per run (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="network seed (default: 0)")
    p.add_argument("--verilator-args", default="",
                   help="further Verilator options, e.g. -O1 (default: none)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="wall-clock seconds a cocotb route's simulation may take (default: an "
                        "hour an image on Icarus, a minute on Verilator, plus the build)")
    args = p.parse_args(argv)
    qnet = random_qnet("lenet-digits", seed=args.seed)
    images = random_images(qnet, args.images)
    want = golden.run(qnet, images).logits
    failed = 0
    print(f"{'board':12s} {'sim':9s} {'synth s':>8s} {'sim s':>8s} {'s/image':>8s}  result")
    for board in args.board or list(BOARDS):
        start = time.monotonic()
        netlist = board_netlist(board)
        synth = "cached" if netlist.reused else f"{time.monotonic() - start:.0f}"
        for sim in args.sim or ["fast"]:
            extra = args.verilator_args.split() if sim == "verilator" else []
            start = time.monotonic()
            if sim == "fast":
                report = simulate(qnet, images, AcceleratorConfig.from_dict(netlist.config),
                                  netlist=netlist, jobs=1,
                                  progress=lambda item: isinstance(item, str) and print(item))
                got = np.asarray(report.logits, np.int8)
            else:
                results = simulate_netlist(netlist, qnet, images, sim=sim, build_args=extra,
                                           timeout=args.timeout)
                got = np.array([r["logits"] for r in results["images"]], np.int8)
            seconds = time.monotonic() - start
            diff = np.argwhere(got != want)
            if len(diff):
                failed += 1
                n, k = diff[0]
                verdict = (f"{len(diff)} logits differ; first: image {n} logit {k}: "
                           f"netlist {got[n, k]}, golden {want[n, k]}")
            else:
                verdict = "every logit exact"
            print(f"{board:12s} {sim:9s} {synth:>8s} {seconds:8.0f} "
                  f"{seconds / len(images):8.1f}  {verdict}", flush=True)
            synth = ""
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
