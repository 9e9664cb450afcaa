"""PE utilization of the convolution engine, measured in RTL simulation (Verilator).

For each layer, the core's own cycle counter (command accepted to idle) is compared with the
ideal ``MACs / PEs``; every output is also checked against the golden model, exactly.

    python bench/utilization.py                    # default preset (8x8)
    python bench/utilization.py --preset big --sim icarus --json
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from systolic.hw.config import preset
from systolic.hw.core import Core
from systolic.sim.runner import run_cocotb
from systolic.sim.vectors import case_from_layers, conv_params, vector_file

# name, (cin, h, w), layer
LAYERS = [
    ("conv 16->16 3x3 p1 on 8x8 (channels = 2 x array)", (16, 8, 8), 16, 3, 1),
    ("conv 32->32 3x3 p1 on 12x12", (32, 12, 12), 32, 3, 1),
    ("conv 8->8 3x3 p1 on 16x16 (channels = array)", (8, 16, 16), 8, 3, 1),
    ("lenet-digits conv1 1->8 3x3 p1 on 8x8", (1, 8, 8), 8, 3, 1),
    ("lenet-digits conv2 8->16 3x3 p1 on 4x4", (8, 4, 4), 16, 3, 1),
    ("linear 64->10 (16x2x2 input)", (16, 2, 2), 10, 2, 0),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--sim", default="verilator", choices=("verilator", "icarus"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cfg = preset(args.preset)
    rng = np.random.default_rng(0)
    cases, macs = [], []
    for name, (cin, h, w), cout, k, pad in LAYERS:
        x = rng.integers(-128, 128, (cin, h, w)).astype(np.int8)
        lay = {"kind": "conv", "params": conv_params(rng, cin, cout, k), "stride": 1,
               "pad": pad, "relu": True}
        cases.append(case_from_layers(cfg, name, x, [lay]))
        ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
        macs.append(cout * cin * k * k * ho * wo)
    with tempfile.TemporaryDirectory() as tmp:
        vectors, results = Path(tmp) / "vectors.json", Path(tmp) / "results.json"
        vectors.write_text(json.dumps(vector_file(cfg, cases)))
        run_cocotb(Core(cfg), name="core", test_module="test_core", sim=args.sim,
                   build_key=cfg.as_dict(),
                   extra_env={"SYSTOLIC_VECTORS": vectors, "SYSTOLIC_RESULTS": results})
        report = json.loads(results.read_text())
    rows = []
    for (name, *_), mac, rep in zip(LAYERS, macs, report, strict=True):
        (cycles,) = rep["layer_cycles"]
        ideal = mac / cfg.pes
        rows.append({"name": name, "macs": mac, "cycles": cycles, "ideal_cycles": ideal,
                     "utilization": ideal / cycles})
    if args.json:
        print(json.dumps({"preset": args.preset, "rows": cfg.rows, "cols": cfg.cols,
                          "sim": args.sim, "layers": rows}))
        return 0
    print(f"{args.preset} preset: {cfg.rows}x{cfg.cols} array, {cfg.pes} PEs, RTL on {args.sim}; "
          "every output checked exactly against the golden model")
    print(f"{'layer':<52} {'MACs':>9} {'cycles':>8} {'ideal':>8} {'util':>6}")
    for r in rows:
        print(f"{r['name']:<52} {r['macs']:>9} {r['cycles']:>8} {r['ideal_cycles']:>8.0f} "
              f"{r['utilization']:>6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
