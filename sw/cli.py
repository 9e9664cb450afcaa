"""The ``systolic`` command line.

Each subcommand lives in the module that does its work. A module joins the command line by
defining ``add_parser(subparsers)``, which calls ``subparsers.add_parser(name, ...)``, adds its
arguments and sets ``func`` (``parser.set_defaults(func=run)``) to a function taking the parsed
arguments; then its dotted name is appended to `COMMANDS`. Subcommands appear in ``--help`` in
that order. ``func`` reports problems by raising `SystolicError`, which `main` prints as
``systolic: error: <message>`` with exit status 2, never a traceback.
"""

import argparse
import importlib
import sys

from .errors import SystolicError

__all__ = ["COMMANDS", "build_parser", "main"]

#: Modules defining ``add_parser(subparsers)``, in ``--help`` order.
COMMANDS = [
    "systolic.sw.train",
    "systolic.sw.quantize",
    "systolic.sw.golden",
    "systolic.hw.generate",
    "systolic.hw.build",
    "systolic.sw.simulate",
    "systolic.sw.demo",
    "systolic.sw.deploy",
    "systolic.sw.report",
]


def build_parser():
    """The argument parser with every subcommand of `COMMANDS` registered."""
    parser = argparse.ArgumentParser(
        prog="systolic",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn a trained ConvNet into an int8 systolic-array FPGA accelerator: "
                    "train a float model, quantize it to the integer arithmetic contract, "
                    "check the int8 golden model against the float model and the RTL against "
                    "the golden model, build a board's bitstream with the open toolchain and "
                    "run the network on the board.",
        epilog="a first run, on the built-in 8x8 digits (about a minute on a laptop):\n"
               "  systolic train -o model.pt\n"
               "  systolic quantize model.pt -o model.qnet\n"
               "  systolic eval model.qnet\n"
               "then on the RTL, and on a board (or its simulation: --sim):\n"
               "  systolic simulate model.qnet\n"
               "  systolic build --board ulx3s-85f\n"
               "  systolic deploy model.qnet --board ulx3s-85f --port /dev/ttyUSB0\n"
               "\n'systolic COMMAND --help' explains each command.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status (0, or 2 on an error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (SystolicError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        print(f"systolic: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("systolic: error: interrupted", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
