"""Benchmark: place and route an N × N array out of context and report DSPs and fmax.

Builds the systolic array (`systolic.hw.array.SystolicArray`) or the stand-in MAC grid
(`bench/_mac_grid.py`) for each requested multiplier target, runs `systolic.hw.synth.synthesize`
on it, and prints DSP blocks against processing elements and nextpnr's fmax against the
target clock, with the critical path of each run.

Example::

    python bench/synth_array.py --subject grid --rows 8 --cols 8 --target generic,ecp5
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mac_grid import MacGrid
from systolic.hw.build import critical_path_summary, format_critical_path
from systolic.hw.config import TARGETS, AcceleratorConfig
from systolic.hw.synth import FAMILIES, synthesize
from systolic.sw.errors import SystolicError

try:
    from systolic.hw.array import SystolicArray
except ImportError:  # the array is being written; the grid stands in for it
    SystolicArray = None


def build(subject, rows, cols, target, retimed=False):
    """The component to measure."""
    if subject == "array":
        if SystolicArray is None:
            raise SystolicError("Subject 'array' needs systolic.hw.array.SystolicArray, which "
                                "does not import; use --subject grid")
        return SystolicArray(AcceleratorConfig(rows=rows, cols=cols, target=target))
    return MacGrid(rows, cols, target, retimed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subject", choices=("array", "grid"),
                        default="array" if SystolicArray is not None else "grid")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--target", default="ecp5",
                        help=f"comma-separated multiplier targets from {', '.join(TARGETS)}")
    parser.add_argument("--family", choices=FAMILIES, default="ecp5")
    parser.add_argument("--device", default=None, help="default: 85k (ecp5), up5k (ice40)")
    parser.add_argument("--clock", type=float, default=150.0, help="target clock in MHz")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("build/bench"))
    parser.add_argument("--retimed", action="store_true",
                        help="grid only: fabric product register and first folded into the add")
    parser.add_argument("--json", action="store_true", help="print one JSON record per run")
    args = parser.parse_args(argv)

    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    records = []
    try:
        for target in targets:
            if target not in TARGETS:
                raise SystolicError(
                    f"target must be one of {', '.join(TARGETS)}, not {target!r}")
            name = f"{args.subject}_{args.rows}x{args.cols}_{target}"
            if args.subject == "grid" and args.retimed:
                name += "_retimed"
            start = time.monotonic()
            report = synthesize(build(args.subject, args.rows, args.cols, target, args.retimed),
                                family=args.family, device=args.device, clock_mhz=args.clock,
                                workdir=args.workdir / name, name=name, seed=args.seed)
            pes = args.rows * args.cols
            record = {
                "subject": args.subject, "retimed": args.retimed,
                "rows": args.rows, "cols": args.cols,
                "target": target, "family": report.family, "device": report.device,
                "pes": pes, "dsps": report.dsps, "luts": report.luts, "ffs": report.ffs,
                "brams": report.brams, "fmax_mhz": report.fmax_mhz,
                "target_mhz": report.target_mhz, "timing_met": report.timing_met,
                "totals": report.totals, "seconds": round(time.monotonic() - start, 1),
                "critical_path": critical_path_summary(report.critical_path),
                "workdir": str(report.workdir),
            }
            records.append(record)
            if args.json:
                print(json.dumps(record), flush=True)
            else:
                fmax = "n/a" if report.fmax_mhz is None else f"{report.fmax_mhz:.1f}"
                print(f"{name}: {pes} PEs, {report.dsps} DSPs "
                      f"({'one per PE' if report.dsps == pes else 'NOT one per PE'}); "
                      f"LUT {report.luts}, FF {report.ffs}; fmax {fmax} MHz vs "
                      f"{report.target_mhz:g} MHz target "
                      f"({'met' if report.timing_met else 'FAILED'}); "
                      f"{record['seconds']:.0f} s", flush=True)
                print(f"  critical path {format_critical_path(record['critical_path'])}:\n    " +
                      report.format_critical_path().replace("\n", "\n    "), flush=True)
    except SystolicError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
