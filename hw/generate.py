"""``systolic generate``: the accelerator (controller and core) as Verilog, with a JSON manifest."""

import argparse
import dataclasses
import json
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.lib import wiring

from ..sw.errors import SystolicError
from .config import PRESETS, TARGETS, AcceleratorConfig, preset
from .controller import Controller
from .isa import MAX_PAYLOAD, layer_layout, param_layout
from .pool import pool_line_words

__all__ = ["add_parser", "generate", "manifest"]

TOP = "systolic"


def _ports(component):
    ports = []
    for path, member, _ in component.signature.flatten(component):
        name = "__".join(str(p) for p in path)
        ports.append({"name": name, "direction": "in" if member.flow == wiring.In else "out",
                      "width": Shape.cast(member.shape).width})
    ports.insert(0, {"name": "clk", "direction": "in", "width": 1})
    ports.insert(1, {"name": "rst", "direction": "in", "width": 1})
    return ports


def _memories(cfg):
    def mem(name, depth, width, purpose):
        bits = depth * width
        return {"name": name, "depth": depth, "width": width, "bits": bits, "purpose": purpose,
                # ECP5 DP16KD: 18 Kibit, at most 36 bits wide; iCE40 EBR: 4 Kibit, 16 wide.
                "ecp5_dp16kd": -(-width // 36) * -(-depth // 512),
                "ice40_ebr": -(-width // 16) * -(-depth // 256)}
    mems = [
        mem("act", cfg.act_depth, cfg.word_bits, "activations between layers"),
        mem("weights", cfg.weight_depth, cfg.word_bits,
            f"weight words, in {cfg.rows} banks (a row of the array each)" if cfg.fc_rows
            else "weight words"),
        mem("params", cfg.param_words, param_layout(cfg).size, "bias, M, shift per channel"),
        mem("program", cfg.program_depth, layer_layout(cfg).size, "layer descriptors"),
        mem("cycles", cfg.program_depth, 32, "cycle counter of each program entry"),
        mem("frame", MAX_PAYLOAD, 8, "request frame buffer"),
    ]
    if cfg.pool:
        row_sum = cfg.data_bits + 2             # a sum of up to three int8 values
        mems.append(mem("pool_pixels", 256, cfg.cols * 2 * cfg.data_bits,
                        "pooling history of the two previous pixels, per channel word"))
        mems.append(mem("pool_lines", pool_line_words(cfg), cfg.cols * 2 * row_sum,
                        "pooling line buffer: two previous rows of row-reduced sums"))
    return mems


def manifest(cfg, component=None):
    """What the generated accelerator is made of: config, ports, DSP multipliers, memories."""
    component = Controller(cfg) if component is None else component
    return {
        "top": TOP,
        "config": cfg.as_dict(),
        "dsps": {"count": cfg.dsps, "kind": {"ecp5": "MULT18X18D", "ice40": "SB_MAC16"}.get(
            cfg.target, "inferred multiplier (target generic)")},
        "memories": _memories(cfg),
        "ports": _ports(component),
    }


def generate(cfg, out_dir):
    """Write ``<out_dir>/systolic.v`` and ``manifest.json``; return the manifest."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystolicError(f"Cannot create output directory {str(out)!r}: {e.strerror}") from None
    top = Controller(cfg)
    man = manifest(cfg, top)
    text = verilog.convert(top, name=TOP, emit_src=False)
    (out / f"{TOP}.v").write_text(text)
    man["verilog"] = str(out / f"{TOP}.v")
    (out / "manifest.json").write_text(json.dumps(man, indent=2) + "\n")
    return man


def config_from_args(args, base=None):
    """The configuration a command line names: ``base`` (default: the ``--preset``), with any
    explicit overrides."""
    cfg = preset(args.preset) if base is None else base
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(AcceleratorConfig)
               if getattr(args, f.name, None) is not None}
    return cfg.replace(**changes) if changes else cfg


def add_config_arguments(parser):
    """``--preset`` and per-field overrides, shared by every command that builds hardware."""
    g = parser.add_argument_group("accelerator configuration")
    g.add_argument("--preset", default="default", metavar="NAME",
                   help=f"starting configuration: {', '.join(PRESETS)} (default: %(default)s)")
    g.add_argument("--rows", type=int, help="array rows: output pixels per tile")
    g.add_argument("--cols", type=int, help="array columns: output channels per tile and "
                                            "int8 lanes per activation word")
    g.add_argument("--act-depth", type=int, help="activation memory depth in words")
    g.add_argument("--weight-depth", type=int, help="weight memory depth in words")
    g.add_argument("--param-depth", type=int, help="parameter memory depth in channel tiles")
    g.add_argument("--requant-lanes", type=int, metavar="N",
                   help="requantization lanes, a divisor of cols (0: one per column); fewer "
                        "lanes save logic, a row of sums then takes cols/N cycles")
    g.add_argument("--requant-dsp", action=argparse.BooleanOptionalAction, default=None,
                   help="multiply by M on two DSP blocks per lane instead of in the fabric")
    g.add_argument("--pool", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the core has the pooling engine (--no-pool saves its logic and "
                        "block RAM; a 2x2 stride-2 max pooling right after a convolution then "
                        "runs fused into it, any other pooling is refused)")
    g.add_argument("--pool-avg", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the pooling engine can average (--no-pool-avg: max only)")
    g.add_argument("--eltwise", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the core has the residual add and global average pooling "
                        "engines, which ResNet-class networks need (--no-eltwise saves their "
                        "logic: a LeNet does not use them)")
    g.add_argument("--dense-conv", action=argparse.BooleanOptionalAction, default=None,
                   help="whether convolutions of few input channels can run dense, several "
                        "kernel taps in each reduction step (a per-lane address and bounds "
                        "check in the convolution engine; not on the ice40 target)")
    g.add_argument("--fused-pool", action=argparse.BooleanOptionalAction, default=None,
                   help="whether a 2x2 stride-2 max pooling after a convolution runs in the "
                        "convolution's write path instead of a pass of the pooling engine (a "
                        "line buffer of max_dim/2 words and a comparator per lane)")
    g.add_argument("--fc-rows", type=int, metavar="N",
                   help="rows a fully connected layer of one image can run on row by row, each "
                        "a channel tile from its own bank of the weight memory (N times the "
                        "weights a cycle; 0: none; a power of two up to rows, at least 8 "
                        "columns; not on the ice40 target)")
    g.add_argument("--deep-pipeline", action=argparse.BooleanOptionalAction, default=None,
                   help="more pipeline stages for clocks above 90 MHz: the pooling windows' "
                        "outputs registered, the mean in three stages, the residual add's "
                        "clamp a stage later (3 more cycles an averaging pooling layer, 1 an "
                        "add); with --no-pool-avg, the max-only windows' block RAM inputs "
                        "and outputs registered (up to 6 more cycles a pooling layer); the "
                        "convolution's read addresses a register more on the way to the "
                        "activation memory (1 more cycle a convolution, 8 columns or more)")
    g.add_argument("--dense-raster", action=argparse.BooleanOptionalAction, default=None,
                   help="whether a dense convolution can walk its kernel's taps in raster "
                        "order, each lane wrapping to the next kernel row on its own (5x5 of 6 "
                        "channels on 16 lanes: 13 reduction words, not 15; a few registers a "
                        "lane; needs --dense-conv and 3 rows or more)")
    g.add_argument("--target", choices=TARGETS,
                   help="multiplier primitive: generic (simulation), ecp5, ice40")


def _run(args):
    cfg = config_from_args(args)
    man = generate(cfg, args.output)
    if args.json:
        print(json.dumps(man))
        return
    print(f"wrote {man['verilog']} and {Path(args.output) / 'manifest.json'}")
    print(f"  array      {cfg.rows} x {cfg.cols} = {cfg.pes} PEs, {man['dsps']['count']} DSPs "
          f"({man['dsps']['kind']})")
    for mem in man["memories"]:
        print(f"  {mem['name']:<10} {mem['depth']:>6} x {mem['width']:>4} bits "
              f"= {mem['bits'] / 8192:.1f} KiB  ({mem['purpose']})")
    print(f"  ports      {len(man['ports'])}: "
          + ", ".join(p["name"] for p in man["ports"][:8]) + ", ...")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "generate", help="write the accelerator's Verilog and a JSON manifest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate the accelerator (host-interface controller, systolic array, "
                    "convolution and pooling engines, on-chip memories) as one Verilog file, "
                    "systolic.v, whose ports are two byte streams (docs/protocol.md) and a "
                    "line_fault input (a UART's framing error or break; tie it to 0 on a link "
                    "without them), with "
                    "manifest.json describing its configuration, ports, DSPs and memories.",
        epilog="examples:\n"
               "  systolic generate -o build/core                 # 8x8 default (ECP5)\n"
               "  systolic generate --preset small -o build/s     # fits an iCE40UP5K\n"
               "  systolic generate --rows 4 --cols 8 --target ecp5 -o build/c\n")
    add_config_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_run)
