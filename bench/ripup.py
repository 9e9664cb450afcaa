"""Benchmark: the nets a stalled timing-driven rip-up keeps re-routing, from nextpnr's router.

A board build stops nextpnr when its timing-driven rip-up (``--tmg-ripup``) goes
`systolic.hw.build.RIPUP_PATIENCE` iterations without progress: every wire routed, tens of
connections still too slow, and no timing report says which (nextpnr 0.11 gives the rip-up
up only after 1,500 iterations). With ``--debug-router`` nextpnr names each net as it routes
it, and once no wire is over-used an iteration routes only the nets with a connection that
failed timing in the one before. This runs a build directory's nextpnr again (its netlist,
constraints, seed and options, so the same placement: nextpnr is deterministic), reads that
stream as it comes (it runs to gigabytes; nothing is kept), and after ``--iterations``
iterations with no over-used wire stops nextpnr and lists the nets by how many of those
iterations re-routed them, and their groups (digits folded: ``controller.shift_en7`` and
``controller.shift_en12`` are one). A net in every one of them is what the route cannot
close. A log written with ``--debug-router`` before can be read instead (``--log``).

Placement takes as long as the build's (12 to 25 minutes for the ULX3S), then a few seconds
an iteration.

Examples::

    python bench/ripup.py build/ulx3s --iterations 100
    python bench/ripup.py build/seeds/seed-6 --log nextpnr-debug.log --from 60
"""

import argparse
import collections
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from systolic.hw.build import NAME

_ARC = re.compile(r"Routing arc \d+ of net '([^']*)'")
_ITER = re.compile(r"iter=(\d+) .*?overused=(\d+) .*?tmgfail=(\d+)")
_PLACED = re.compile(r"Max frequency for clock '[^']*': ([\d.]+) MHz")
# Options of the build's nextpnr line that write files: left out of the diagnostic run.
_OUTPUTS = ("--report", "--log", "--textcfg", "--write", "--sdf", "--placed-svg",
            "--routed-svg")


class Census:
    """Counts, over the router's iterations with no over-used wire, the nets each one
    re-routes (those that failed timing in the iteration before)."""

    def __init__(self, first=1):
        self.first = first
        self.nets = collections.Counter()
        self.groups = collections.Counter()
        self.iterations = 0             # counted: legal, at or after `first`
        self.last = None                # (iter, overused, failing) of the last iteration
        self.placed_mhz = None
        self._routing = set()

    def feed(self, line):
        """Take one line of nextpnr's log; ``True`` once the route has closed (an
        iteration with nothing over-used and nothing failing)."""
        if "Routing arc" in line:
            m = _ARC.search(line)
            if m:
                self._routing.add(m.group(1))
            return False
        m = _ITER.search(line)
        if m is None:
            m = _PLACED.search(line)
            if m and self.placed_mhz is None:
                self.placed_mhz = float(m.group(1))
            return False
        it, used, fails = (int(g) for g in m.groups())
        # The nets routed during iteration `it` are the ones that failed in `it - 1`.
        prev = self.last
        if prev is not None and prev[1] == 0 and prev[0] >= self.first:
            self.iterations += 1
            self.nets.update(self._routing)
            self.groups.update({re.sub(r"\d+", "#", n) for n in self._routing})
        self._routing = set()
        self.last = (it, used, fails)
        return used == 0 and fails == 0

    def report(self, top):
        lines = []
        it = self.last
        if self.placed_mhz is not None:
            lines.append(f"placed: {self.placed_mhz:.2f} MHz (nextpnr's estimate)")
        if it is None:
            lines.append("the router did not start")
            return "\n".join(lines)
        lines.append(f"last iteration {it[0]}: {it[1]} wires over-used, {it[2]} connections "
                     f"failing timing")
        lines.append(f"{self.iterations} iterations with no over-used wire counted"
                     + (f" (from iteration {self.first})" if self.first > 1 else ""))
        if not self.iterations:
            return "\n".join(lines)
        lines.append(f"\n{'iters':>6}  group of nets re-routed (digits folded)")
        lines += [f"{c:6d}  {g}" for g, c in self.groups.most_common(top)]
        lines.append(f"\n{'iters':>6}  net")
        lines += [f"{c:6d}  {n}" for n, c in self.nets.most_common(top)]
        return "\n".join(lines)


def nextpnr_command(build_dir):
    """The build script's nextpnr command line, without the options that write files and
    with ``--debug-router``, as an argument list."""
    script = build_dir / f"build_{NAME}.sh"
    try:
        text = script.read_text()
    except OSError as e:
        raise ValueError(f"{script}: {e.strerror}; pass the directory of a board build "
                         "(systolic build -o DIR)") from None
    line = next((ln for ln in text.splitlines() if ln.startswith('"$NEXTPNR_')), None)
    if line is None:
        raise ValueError(f"{script} runs no nextpnr")
    tool, *args = shlex.split(line)
    family = tool.removeprefix("$NEXTPNR_").lower()
    exe = shutil.which(f"yowasp-nextpnr-{family}") or str(
        Path(sys.executable).parent / f"yowasp-nextpnr-{family}")
    keep = []
    it = iter(args)
    for a in it:
        if a in _OUTPUTS:
            next(it, None)
        elif a != "--quiet":
            keep.append(a)
    if not (build_dir / f"{NAME}.json").exists():
        raise ValueError(f"{build_dir}: no {NAME}.json (the build stopped before synthesis "
                         "ended); build again")
    return [exe, *keep, "--debug-router"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("build_dir", type=Path, help="a board build's directory (its netlist, "
                                                "constraints and build script)")
    p.add_argument("--iterations", type=int, default=100,
                   help="iterations with no over-used wire to count before stopping "
                        "(default 100)")
    p.add_argument("--from", dest="first", type=int, default=1, metavar="N",
                   help="count from router iteration N on (default: the first legal one)")
    p.add_argument("--log", type=Path,
                   help="read a nextpnr log written with --debug-router instead of running it")
    p.add_argument("--top", type=int, default=40, help="nets and groups to list (default 40)")
    args = p.parse_args(argv)
    if args.iterations < 1:
        p.error(f"--iterations must be at least 1, not {args.iterations}")
    census = Census(args.first)
    if args.log is not None:
        try:
            with open(args.log, errors="replace") as f:
                for line in f:
                    if census.feed(line):
                        break
        except OSError as e:
            p.exit(2, f"ripup.py: cannot read {args.log}: {e.strerror}\n")
        print(census.report(args.top))
        return 0
    try:
        cmd = nextpnr_command(args.build_dir)
    except ValueError as e:
        p.exit(2, f"ripup.py: {e}\n")
    print(f"running nextpnr in {args.build_dir} (placement first: as long as the build's)",
          file=sys.stderr)
    proc = subprocess.Popen(cmd, cwd=args.build_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    closed = False
    try:
        for line in proc.stdout:
            if census.feed(line):
                closed = True
                break
            if "iter=" in line and census.last is not None and census.last[0] % 10 == 0:
                it, used, fails = census.last
                print(f"  iteration {it}: {used} over-used, {fails} failing "
                      f"({census.iterations} counted)", file=sys.stderr)
            if census.iterations >= args.iterations:
                break
    finally:
        proc.kill()
        proc.wait()
    print(census.report(args.top))
    if closed:
        print("the route closed: no connection fails timing")
    elif census.last is None:
        print(f"nextpnr exited ({proc.returncode}) before routing: see the build's own log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
