"""Benchmark: every slow endpoint of a routed build, grouped, from nextpnr's detailed report.

nextpnr's log names one critical path per clock. Deciding what to restructure next needs the
whole census: how many registers arrive late at a target clock, and in which groups. nextpnr
writes each connection's arrival time into ``report.json`` when run with
``--detailed-timing-report`` (``detailed_net_timings``: per net, each sink's ``delay``, the
[min, max] arrival in ns). This reads that report, takes each sink cell's latest arrival and
groups the cells at or above the clock's period by driver and sink name, digits folded
(``pe_3_7.hi`` and ``pe_0_1.hi`` are one group).

Route the design without the timing-driven rip-up to see the paths as placed: the rip-up
polishes only what fails at the build's own target. A board build's nextpnr options are in
`systolic.hw.build.prepare_plan`; in a worktree, replace `` --tmg-ripup`` with
`` --detailed-timing-report`` there and build at the clock you aim for, e.g.
``systolic build --board ulx3s-85f --clock 125 -o build/diag --json``.

Examples::

    python bench/endpoints.py build/diag/report.json --clock 125
    python bench/endpoints.py build/diag/report.json --clock 105 --top 60
"""

import argparse
import collections
import json
import re
import sys
from pathlib import Path


def latest_arrivals(report):
    """``{sink cell: (arrival ns, driver cell, sink port)}`` over ``detailed_net_timings``."""
    nets = report.get("detailed_net_timings")
    if nets is None:
        raise ValueError("the report has no detailed_net_timings: nextpnr writes them only "
                         "with --detailed-timing-report (see this script's --help)")
    late = {}
    for net in nets:
        for sink in net.get("endpoints", []):
            delay = sink.get("delay", 0)
            delay = max(delay) if isinstance(delay, list) else delay
            cell = sink.get("cell")
            if cell is not None and delay > late.get(cell, (float("-inf"),))[0]:
                late[cell] = (delay, net.get("driver"), sink.get("port"))
    return late


def pattern(name):
    """A cell's name without the mapping's suffixes and with its digits folded."""
    name = re.sub(r"(_TRELLIS_FF|_LUT4|_CCU2C|_PFUMX|_L6MUX21|\$).*", "", name or "?")
    return re.sub(r"\d+", "#", name)


def census(late, period_ns):
    """Groups of sinks arriving at or after ``period_ns``: ``[(driver, sink, [arrivals])]``,
    the group with the latest arrival first."""
    groups = collections.defaultdict(list)
    for cell, (delay, driver, _) in late.items():
        if delay >= period_ns:
            groups[(pattern(driver), pattern(cell))].append(delay)
    return sorted(((d, s, v) for (d, s), v in groups.items()), key=lambda g: -max(g[2]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("report", type=Path, help="a build's report.json (nextpnr --report)")
    p.add_argument("--clock", type=float, required=True,
                   help="target clock in MHz: endpoints arriving after its period are listed")
    p.add_argument("--top", type=int, default=40, help="groups to list (default 40)")
    args = p.parse_args(argv)
    if args.clock <= 0:
        p.error(f"--clock must be positive, not {args.clock:g}")
    try:
        report = json.loads(args.report.read_text())
    except OSError as e:
        p.exit(2, f"endpoints.py: cannot read {args.report}: {e.strerror}\n")
    except ValueError as e:
        p.exit(2, f"endpoints.py: {args.report} is not JSON ({e}): pass a build's report.json\n")
    try:
        late = latest_arrivals(report.get("nextpnr", report))
    except ValueError as e:
        p.exit(2, f"endpoints.py: {args.report}: {e}\n")
    period = 1e3 / args.clock
    groups = census(late, period)
    print(f"{sum(len(g[2]) for g in groups)} of {len(late)} endpoints arrive at or after "
          f"{period:.2f} ns ({args.clock:g} MHz), in {len(groups)} groups")
    print(f"{'count':>6} {'worst ns':>9}  driver -> sink")
    for driver, sink, arrivals in groups[:args.top]:
        print(f"{len(arrivals):6d} {max(arrivals):9.2f}  {driver} -> {sink}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
