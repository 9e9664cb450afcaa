"""Benchmark: the slowest register-to-register paths of a board design, from synthesis alone.

nextpnr reports one critical path per clock, after 5 to 40 minutes of place and route; fixing
paths one build at a time is slow. This synthesizes the board design (the same Yosys script
`systolic build` runs, about 30 s to 2 min) and estimates every path's delay over the mapped
ECP5 netlist with a per-cell delay and a fanout-dependent routing delay per net, fitted by eye
to nextpnr's reports of this design (speed grade 6). It then lists the slowest endpoints,
grouped by register, with logic levels and the path of the worst one in each group.

The estimate ranks paths; it does not replace nextpnr's timing (routing is placement-
dependent). Use it to find every path that is too deep before spending a place and route.

Examples::

    python bench/depth.py --board ulx3s-85f --preset big --rows 4 --cols 4 --clock 135
    python bench/depth.py --netlist build/ulx3s-85f/systolic.json --clock 135 --top 40
    python bench/depth.py --netlist build/ulx3s-85f/systolic.json --area 4
    python bench/depth.py --netlist build/ulx3s-85f/systolic.json --resets --top 10
"""

import argparse
import json
import math
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from systolic.hw.boards import BoardTop, get_board
from systolic.hw.build import NAME, _toolchain_env, board_config_from_args, prepare_plan
from systolic.hw.generate import add_config_arguments
from systolic.hw.synth import find_tool
from systolic.sw.errors import SystolicError

# ECP5 speed 6, ns: nextpnr's figures for the cells of this design's reports.
CLK_TO_Q = 0.52
SETUP = 0.10
LUT = 0.24
MUX_DATA = 0.17         # PFUMX ALUT/BLUT and L6MUX21 D0/D1 from the slice's own LUTs
CARRY_IN = 0.44         # CCU2C A/B/C/D -> S or COUT
CARRY_STEP = 0.035      # CCU2C CIN -> COUT, a bit
DP16KD_CLK_TO_OUT = 5.8  # without the output register
MULT_COMB = 4.0         # an unregistered MULT18X18D's inputs to outputs


def routing(fanout):
    """A net's routing delay, by fanout."""
    return 0.65 + 0.25 * math.log2(max(fanout, 1))


def _dedicated(cell_type, port):
    """Inputs fed through a slice's or a carry chain's dedicated wire (no routing)."""
    return ((cell_type == "PFUMX" and port in ("ALUT", "BLUT"))
            or (cell_type == "L6MUX21" and port in ("D0", "D1"))
            or (cell_type == "CCU2C" and port == "CIN"))


class Netlist:
    """A flattened post-synthesis ECP5 netlist with estimated arrival times."""

    def __init__(self, path):
        d = json.loads(Path(path).read_text())
        top = next(m for m in d["modules"].values()
                   if int(str(m.get("attributes", {}).get("top", 0)), 2) == 1)
        self.cells = top["cells"]
        self.driver = {}                 # bit -> (cell name, output port)
        self.fanout = defaultdict(int)
        for name, cell in self.cells.items():
            dirs = cell.get("port_directions", {})
            for port, bits in cell["connections"].items():
                for b in bits:
                    if isinstance(b, str):
                        continue
                    if dirs.get(port) == "output":
                        self.driver[b] = (name, port)
                    elif dirs.get(port) == "input":
                        self.fanout[b] += 1
        self.names = {}
        for net, info in top["netnames"].items():
            for b in info["bits"]:
                if isinstance(b, int):
                    old = self.names.get(b)
                    if old is None or (net.count("$"), len(net)) < (old.count("$"), len(old)):
                        self.names[b] = net
        self._arrival = {}

    def _is_source(self, cell, port):
        t, p = cell["type"], cell.get("parameters", {})
        if t == "TRELLIS_FF":
            return CLK_TO_Q
        if t == "DP16KD":
            # The output register of the port the pin belongs to (DOA: A, DOB: B; a 36-bit
            # read through B sets both alike, `systolic.hw.outreg`).
            regmode = p.get(f"REGMODE_{port[2]}", "NOREG") if port.startswith("DO") else "NOREG"
            return CLK_TO_Q if str(regmode).strip() == "OUTREG" else DP16KD_CLK_TO_OUT
        if t == "MULT18X18D" and str(p.get("REG_OUTPUT_CLK", "NONE")).strip() != "NONE":
            return CLK_TO_Q
        if t in ("TRELLIS_IO", "EHXPLLL", "$scopeinfo"):
            return 0.0
        return None

    def arrival(self, bit):
        """``(ns, levels, (cell, port) driving it or None)`` for a net bit."""
        if isinstance(bit, str) or bit not in self.driver:
            return (0.0, 0, None)
        if bit in self._arrival:
            return self._arrival[bit]
        stack = [bit]
        while stack:
            b = stack[-1]
            if b in self._arrival:
                stack.pop()
                continue
            name, port = self.driver[b]
            cell = self.cells[name]
            src = self._is_source(cell, port)
            if src is not None:
                self._arrival[b] = (src, 0, None)
                stack.pop()
                continue
            ins = self._inputs(cell, port)
            todo = [i for _, i in ins if not isinstance(i, str) and i in self.driver
                    and i not in self._arrival]
            if todo:
                stack.extend(todo)
                continue
            best = (0.0, 0, None)
            for in_port, i in ins:
                t, lv, _ = self.arrival(i)
                wire = 0.0 if _dedicated(cell["type"], in_port) else routing(self.fanout[i])
                t += wire + self._cell_delay(cell["type"], in_port, port)
                if t > best[0]:
                    best = (t, lv + (0 if _dedicated(cell["type"], in_port) else 1),
                            (name, in_port, i))
            self._arrival[b] = best
            stack.pop()
        return self._arrival[bit]

    def _inputs(self, cell, out_port):
        dirs = cell.get("port_directions", {})
        conns = cell["connections"]
        t = cell["type"]
        if t == "CCU2C":
            # S0/COUT depend on bit 0's inputs and CIN; S1 on both bits' and CIN.
            ports = ["A0", "B0", "C0", "D0", "CIN"]
            if out_port in ("S1", "COUT"):
                ports += ["A1", "B1", "C1", "D1"]
        else:
            ports = [p for p, d in dirs.items() if d == "input"]
        return [(p, b) for p in ports for b in conns.get(p, []) if not isinstance(b, str)]

    def _cell_delay(self, t, in_port, out_port):
        if t == "LUT4":
            return LUT
        if t in ("PFUMX", "L6MUX21"):
            return MUX_DATA if _dedicated(t, in_port) else LUT
        if t == "CCU2C":
            return 2 * CARRY_STEP if in_port == "CIN" and out_port == "COUT" else CARRY_IN
        if t == "MULT18X18D":
            return MULT_COMB
        return LUT

    def endpoints(self):
        """``(ns, levels, register, input port, bit)`` for every clocked input."""
        out = []
        for name, cell in self.cells.items():
            t, p = cell["type"], cell.get("parameters", {})
            if t == "TRELLIS_FF":
                ports = ("DI", "M", "CE", "LSR")
            elif t == "DP16KD":
                ports = [q for q, d in cell.get("port_directions", {}).items()
                         if d == "input" and not q.startswith("CLK")]
            elif t == "MULT18X18D" and str(p.get("REG_INPUTA_CLK", "NONE")).strip() != "NONE":
                ports = [q for q in cell["connections"] if q[0] in "AB" and q[1:].isdigit()]
            else:
                continue
            for port in ports:
                for b in cell["connections"].get(port, []):
                    if isinstance(b, str):
                        continue
                    ns, lv, _ = self.arrival(b)
                    out.append((ns + routing(self.fanout[b]) + SETUP, lv + 1, name, port, b))
        return out

    def path(self, bit):
        """The slowest path into ``bit``, from its source: ``[(net, ns, levels, cell)]``."""
        steps = []
        while True:
            ns, lv, via = self.arrival(bit)
            steps.append((self.names.get(bit, f"<bit {bit}>"), ns, lv,
                          via[0] if via else self.driver.get(bit, ("<input>",))[0]))
            if via is None:
                break
            bit = via[2]
        return steps[::-1]


def register_group(cell_name):
    """``a.b.sig_TRELLIS_FF_Q_12`` -> ``a.b.sig``, ``a.mem.0.12`` -> ``a.mem``: a register's
    or a memory's bits together."""
    name = cell_name.split("_TRELLIS_FF")[0].split("$")[0].rstrip("_.") or cell_name
    parts = name.split(".")
    while len(parts) > 1 and parts[-1].isdigit():
        parts.pop()
    return ".".join(parts)


def synthesize_board(args, workdir):
    spec = get_board(args.board)
    if spec.family != "ecp5":
        raise SystolicError("bench/depth.py models ECP5 cells only; use --board ulx3s-85f")
    cfg = board_config_from_args(spec, args)
    top = BoardTop(spec, cfg, clock_mhz=args.clock, baud=args.baud)
    workdir.mkdir(parents=True, exist_ok=True)
    with _toolchain_env(spec.family):
        plan = prepare_plan(spec.family, spec.platform(), top)
        plan.extract(workdir)
        yosys = find_tool("yosys")
    start = time.monotonic()
    subprocess.run([yosys, "-q", "-l", f"{NAME}.rpt", f"{NAME}.ys"], cwd=workdir, check=True)
    print(f"synthesis: {time.monotonic() - start:.0f} s ({workdir / (NAME + '.json')})",
          file=sys.stderr)
    return workdir / f"{NAME}.json", top.clock_hz / 1e6


# Cell kinds of an ECP5 netlist, as the area table counts them.
AREA_KINDS = {"LUT4": "LUT4", "CCU2C": "CCU2C", "PFUMX": "MUX", "L6MUX21": "MUX",
              "TRELLIS_FF": "FF", "MULT18X18D": "DSP", "DP16KD": "DP16KD",
              "TRELLIS_DPR16X4": "LUTRAM"}


def area(netlist, depth):
    """Cells of each kind (`AREA_KINDS`) per module of ``netlist`` (a Yosys JSON file), the
    module path cut to ``depth`` names: ``{module: {kind: count}}``, the whole design under
    ``"(all)"``. A flattened netlist's cells carry their module path in their names
    (``controller.core.conv.requant.…``)."""
    design = json.loads(Path(netlist).read_text())
    top = next(m for m in design["modules"].values()
               if m.get("attributes", {}).get("top")) if len(design["modules"]) > 1 else \
        next(iter(design["modules"].values()))
    table = defaultdict(lambda: defaultdict(int))
    for name, cell in top["cells"].items():
        kind = AREA_KINDS.get(cell["type"].split("$")[0])
        if kind is None:
            continue
        path = cell.get("attributes", {}).get("hdlname", name).replace(" ", ".").split(".")
        module = ".".join(path[:-1][:depth]) or "(top)"
        table[module][kind] += 1
        table["(all)"][kind] += 1
    return table


def print_area(table, limit):
    kinds = ["LUT4", "CCU2C", "MUX", "FF", "LUTRAM", "DSP", "DP16KD"]
    print(f"{'module':40s}" + "".join(f"{k:>8s}" for k in kinds))
    # Ranked by logic: a CCU2C is two LUTs and a carry.
    ranked = sorted(table.items(), key=lambda kv: -(kv[1]["LUT4"] + 2 * kv[1]["CCU2C"]
                                                    + kv[1]["MUX"]))
    for module, counts in ranked[:limit + 1]:
        print(f"{module:40s}" + "".join(f"{counts[k]:8d}" for k in kinds))


def reset_nets(netlist):
    """The nets that drive flip-flops' LSR (reset) inputs: (flip-flops, driver cell) each,
    most loaded first. A flip-flop whose LSR comes through logic (a synchronous clear merged
    with the reset) counts on that logic's output net."""
    loads = defaultdict(int)
    for cell in netlist.cells.values():
        if cell["type"] == "TRELLIS_FF":
            bit = cell["connections"].get("LSR", [None])[0]
            if isinstance(bit, int):
                loads[bit] += 1
    return sorted(((n, netlist.driver.get(bit, ("?", ""))[0]) for bit, n in loads.items()),
                  reverse=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.split("Examples::")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--netlist", type=Path,
                        help="an ECP5 netlist Yosys wrote (a build directory's systolic.json) "
                             "instead of synthesizing one")
    parser.add_argument("--board", default="ulx3s-85f")
    add_config_arguments(parser)
    parser.set_defaults(preset=None)
    parser.add_argument("--clock", type=float, default=None, help="target clock in MHz")
    parser.add_argument("--baud", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=Path("build/depth"))
    parser.add_argument("--top", type=int, default=25, help="register groups to list")
    parser.add_argument("--paths", type=int, default=5, help="paths to print in full")
    parser.add_argument("--under", default="",
                        help="only registers whose names start with this (e.g. "
                             "controller.core.conv)")
    parser.add_argument("--area", type=int, metavar="DEPTH",
                        help="instead of paths, the cells of each module (LUT4, carry, mux, "
                             "flip-flop, DSP, block RAM), module paths cut to DEPTH names "
                             "(e.g. 3: controller.core.conv), largest first (--top of them)")
    parser.add_argument("--resets", action="store_true",
                        help="instead of paths, the nets that drive flip-flops' resets (LSR) "
                             "and how many each, most loaded first (--top of them)")
    args = parser.parse_args(argv)
    try:
        if args.netlist:
            netlist, clock = args.netlist, args.clock
        else:
            netlist, clock = synthesize_board(args, args.workdir)
    except SystolicError as e:
        sys.exit(f"error: {e}")
    if args.area is not None:
        print_area(area(netlist, args.area), args.top)
        return
    nl = Netlist(netlist)
    if args.resets:
        nets = reset_nets(nl)
        print(f"{sum(n for n, _ in nets)} flip-flops with a reset on {len(nets)} nets")
        for n, driver in nets[:args.top]:
            print(f"{n:6d}  {driver}")
        return
    eps = [e for e in nl.endpoints() if e[2].startswith(args.under)]
    groups = {}
    for e in eps:
        g = register_group(e[2])
        if g not in groups or e[0] > groups[g][0]:
            groups[g] = e
    ranked = sorted(groups.values(), reverse=True)
    budget = 1000 / clock if clock else None
    print(f"{len(eps)} endpoints in {len(groups)} register groups"
          + (f"; budget {budget:.2f} ns at {clock:g} MHz, "
             f"{sum(e[0] > budget for e in eps)} endpoints over it, "
             f"{sum(g[0] > budget for g in groups.values())} groups" if budget else ""))
    print(f"{'est. ns':>8} {'levels':>6}  register (input)")
    for ns, lv, name, port, _ in ranked[:args.top]:
        print(f"{ns:8.2f} {lv:6d}  {register_group(name)} ({port})")
    for ns, lv, name, port, bit in ranked[:args.paths]:
        print(f"\n{register_group(name)} ({port}), {ns:.2f} ns, {lv} levels:")
        for net, t, lvl, cell in nl.path(bit):
            print(f"  {t:6.2f} {lvl:3d}  {net}  [{nl.cells.get(cell, {}).get('type', '')}]")


if __name__ == "__main__":
    main()
