"""The suite's order: the longest tests first, so that ``pytest -n 2`` packs them well.

pytest-xdist runs ``--dist worksteal`` here (``pyproject.toml``): each worker takes half of the
collected tests in order and, when its own run out, takes half of what the other still has
waiting. A seven-minute test that starts last sets the suite's wall time by itself, so the
tests below (the longest, as ``--durations`` measured them) go first, longest first, and every
other slow test (``@pytest.mark.slow``: RTL simulation, synthesis) before the quick ones. The
order of the tests within each of those groups is the collection's, so a run stays repeatable.
"""

import os

import pytest

# The fast harness's builds at -O0, not -O2 (`systolic.sim.fast`), the board netlists' too: the
# suite's runs are short, so a build's compile time outweighs the model's speed (-O0 against
# -O1, build and run: the default design 39 s against 79 s with 24 images, the 12x12 one 128 s
# against 271 s, the ULX3S netlist 116 s against 217 s). Set before any test builds one (and
# inherited by the commands the tests start).
os.environ.setdefault("SYSTOLIC_FAST_CXX_OPT", "-O0")

# Node-id prefixes, longest first (seconds, as --durations measured them with -n 0, a test or
# two at a time, on the two-core machine of issue 10 with another engineer's builds running;
# December 2).
LONGEST = (
    "tests/test_build.py::test_build_icebreaker_end_to_end",            # 350: place and route
    "tests/test_netlist_rtl.py::test_netlist_lenet_digits[ulx3s-85f]",  # 169
    "tests/test_netlist_rtl.py::test_netlist_lenet_digits",             # 111: the iCEBreaker's
    "tests/test_fast_rtl.py::test_lenet5_big_preset_fast",              # 134: the 12x12 build
    "tests/test_report.py::test_demo_report_files_and_quiet",           # 75: Icarus
    "tests/test_python_api.py",                                         # 67
    "tests/test_network_rtl.py::test_lenet_digits_rtl",                 # 64, 45: cocotb
    "tests/test_fast_rtl.py::test_lenet_digits_fast_two_processes",     # 62: the default build
    "tests/test_controller_rtl.py::test_board_line_faults",             # 48, 35
    "tests/test_deploy.py::test_deploy_virtual_board_is_exact",         # 47, 24: virtual boards
    "tests/test_fast_rtl.py",
    "tests/test_report.py::test_simulate_is_quiet_and_trace_says_all_match",    # 35
    "tests/test_controller_rtl.py",
)


def _rank(item):
    for i, prefix in enumerate(LONGEST):
        if item.nodeid.startswith(prefix):
            return i
    return len(LONGEST) + (0 if item.get_closest_marker("slow") else 1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)           # stable: the collection's order within a rank
