"""Move the flip-flops that take an ECP5 block RAM's read data into the block RAM's own output
register.

An ECP5 ``DP16KD`` without its output register (``REGMODE = "NOREG"``, all Yosys's memory
mapping makes) puts a read's word out 5.8 ns after the clock edge, most of a cycle at
100 MHz, and the word then crosses the routing to the fabric flip-flop that takes it. Every
memory of the core has one: a read's word goes into a register before any logic (see
`systolic.hw.core`). With ``REGMODE = "OUTREG"`` that register is inside the block RAM: in
nextpnr's timing of the default ULX3S design its words reach their first loads from 1.4 ns
after the edge, routing included, and the path into the register is the block's own.
Yosys's ``memory_libmap`` has no rule for the output register, so `absorb` does it on the
mapped netlist (Yosys's JSON), between synthesis and nextpnr: for each read port of each
``DP16KD`` whose every used output bit drives one flip-flop's data input and nothing else, the
flip-flops all clocked as the block RAM, enabled alike (always, or by one net), without a
reset and starting at 0, it sets the port's ``REGMODE`` to ``OUTREG``, its ``OCE`` to that
enable, and gives the port's outputs the flip-flops' outputs; the flip-flops go. A port with
any other load (logic, two flip-flops, a flip-flop with a reset) is left as it is.

The behaviour is the same cycle for cycle: the register samples the block's output on the same
edges, under the same enable, and starts at 0, as the flip-flops do. The board build runs it
(``python -m systolic.hw.outreg``, a step of the build script), and so does the netlist
simulation (`systolic.hw.netlist`), whose ``DP16KD`` model has the output register.

A 36-bit port (``DATA_WIDTH_B = 36``, Yosys's pseudo-dual-port mode) reads through B onto both
``DOA`` and ``DOB``; its two halves are one port here, and both ``REGMODE``\\s and ``OCE``\\s
are set alike, as Lattice's ``PDPW16KD`` sets them from its one ``REGMODE``.
"""

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

__all__ = ["REPORT", "absorb", "main"]

#: The file `main` writes its counts to, beside the netlist (``ports``, ``flip_flops``,
#: ``kept``: see `absorb`).
REPORT = "outreg.json"

_ZERO = ("0", "x")          # a constant input Yosys writes as a string bit


def _int(value):
    """A Yosys JSON parameter: an integer as a binary string, or a string."""
    try:
        return int(value, 2)
    except ValueError:
        return None


def _str(value):
    # Yosys writes a string parameter that reads as binary with a trailing space ("1 ").
    return value[:-1] if value.endswith(" ") else value


def _top(design):
    tops = [m for m in design["modules"].values()
            if _int(str(m.get("attributes", {}).get("top", "0"))) == 1]
    if len(tops) != 1:
        raise ValueError(f"expected one top module in the netlist, found {len(tops)}")
    return tops[0]


def _read_ports(cell):
    """The read ports of a DP16KD: ``(regmode parameters, OCE pins, output pins)`` each."""
    params = cell["parameters"]
    if _int(params.get("DATA_WIDTH_B", "0")) == 36:
        return [(("REGMODE_A", "REGMODE_B"), ("OCEA", "OCEB"),
                 [f"DOA{i}" for i in range(18)] + [f"DOB{i}" for i in range(18)])]
    return [((f"REGMODE_{p}",), (f"OCE{p}",), [f"DO{p}{i}" for i in range(18)])
            for p in "AB"]


def absorb(design):
    """Move read-data flip-flops into the ``DP16KD`` output registers of ``design`` (Yosys's
    JSON netlist, a dict, changed in place).

    Returns
    -------
    Counter
        ``ports``: read ports given their output register; ``flip_flops``: flip-flops removed;
        ``kept``: read ports left as they were (a load other than one plain flip-flop a bit).
        `main` writes them to `REPORT`.
    """
    module = _top(design)
    cells = module["cells"]
    loads = defaultdict(list)
    for name, cell in cells.items():
        for pin, bits in cell["connections"].items():
            if cell["port_directions"].get(pin) == "input":
                for bit in bits:
                    loads[bit].append((name, pin))
    counts = Counter(ports=0, flip_flops=0, kept=0)
    for cell in [c for c in cells.values() if c["type"] == "DP16KD"]:
        params, conns = cell["parameters"], cell["connections"]
        for regmodes, oces, outs in _read_ports(cell):
            used = [(pin, conns[pin][0]) for pin in outs if loads.get(conns[pin][0])]
            if not used:
                continue
            if any(_str(params.get(r, "NOREG")) != "NOREG" for r in regmodes):
                counts["kept"] += 1
                continue
            clocks = {conns[f"CLK{o[-1]}"][0] for o in oces}
            flops, enables = [], set()
            for pin, bit in used:
                (name, to), *rest = loads[bit]
                ff = cells[name]
                fp = {k: _str(v) for k, v in ff["parameters"].items()}
                fc = ff["connections"]
                if (rest or to != "DI" or ff["type"] != "TRELLIS_FF"
                        or fp.get("CLKMUX") != "CLK" or fc["CLK"][0] not in clocks
                        or (fp.get("LSRMUX") != "0" and fc.get("LSR", ["0"])[0] not in _ZERO)
                        or fp.get("REGSET", "RESET") != "RESET"
                        or fp.get("CEMUX") not in ("1", "CE")):
                    break
                enables.add("1" if fp["CEMUX"] == "1" else fc["CE"][0])
                flops.append((pin, name))
            else:
                if len(enables) == 1 and len(clocks) == 1 and all(
                        _str(params.get(f"CLK{o[-1]}MUX", f"CLK{o[-1]}")) == f"CLK{o[-1]}"
                        for o in oces):
                    (enable,) = enables
                    for r in regmodes:
                        params[r] = "OUTREG"
                    for o in oces:
                        conns[o] = [enable]
                    for pin, name in flops:
                        conns[pin] = cells.pop(name)["connections"]["Q"]
                    counts["ports"] += 1
                    counts["flip_flops"] += len(flops)
                    continue
            counts["kept"] += 1
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m systolic.hw.outreg",
        description="Move the flip-flops that take an ECP5 DP16KD's read data into its output "
                    "register (REGMODE OUTREG), in a Yosys JSON netlist, in place.")
    parser.add_argument("netlist", type=Path, help="Yosys's JSON netlist (write_json)")
    args = parser.parse_args(argv)
    try:
        design = json.loads(args.netlist.read_text())
        counts = absorb(design)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {args.netlist} is not a Yosys JSON netlist of an ECP5 design ({e})",
              file=sys.stderr)
        return 1
    args.netlist.write_text(json.dumps(design))
    # The counts, for the build's report (`systolic.hw.build`): beside the netlist.
    (args.netlist.parent / REPORT).write_text(json.dumps(dict(counts)) + "\n")
    n, kept = counts["ports"], counts["kept"]
    print(f"outreg: {n} block RAM read port{'' if n == 1 else 's'} given "
          f"{'its' if n == 1 else 'their'} output register ({counts['flip_flops']} flip-flops "
          f"moved in), {kept} left as {'it was' if kept == 1 else 'they were'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
