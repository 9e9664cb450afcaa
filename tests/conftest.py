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
# But the virtual boards' at -O1: their runs clock every bit of the UART, so the model's speed
# pays for the longer compile (the UART-pin tests, one process, fresh builds: 133 s against
# 189 s at -O0).
os.environ.setdefault("SYSTOLIC_FAST_UART_CXX_OPT", "-O1")

# Node-id prefixes, longest first (seconds, as --durations measured them with -n 2 on a fresh
# clone, beside a place-and-route and Verilator builds: about twice a quiet machine's; Dec 2).
LONGEST = (
    "tests/test_build.py::test_build_icebreaker_end_to_end",            # 559: place and route
    "tests/test_netlist_rtl.py::test_netlist_lenet_digits[ulx3s-85f]",  # 223
    "tests/test_fuzz.py::test_fuzz_uart_pins",                          # 215: the UART build
    "tests/test_report.py::test_demo_report_files_and_quiet",           # 155: Icarus
    "tests/test_fast_rtl.py::test_lenet5_big_preset_fast",              # 152: the 12x12 build
    "tests/test_controller_rtl.py::test_board_line_faults",             # 147, 137
    "tests/test_network_rtl.py::test_lenet_digits_rtl",                 # 137, 77: cocotb
    "tests/test_python_api.py",                                         # 130
    "tests/test_perf_rtl.py::test_cycles_exactly_as_predicted",         # 127
    "tests/test_deploy.py::test_deploy_virtual_board_recovers",         # 107
    "tests/test_uart.py::test_uart_rtl",                                # 84 and less
    "tests/test_controller_rtl.py",                                     # 76 and less
    "tests/test_frontend.py::test_residual_program_through_the_command_line",  # 73
    "tests/test_netlist_rtl.py",                                        # 60: the iCEBreaker's
    "tests/test_residual_rtl.py::test_mlperf_resnet8_big_preset",       # 58
    "tests/test_fast_rtl.py",
    "tests/test_deploy.py",
    "tests/test_report.py::test_simulate_is_quiet_and_trace_says_all_match",
)


def _rank(item):
    for i, prefix in enumerate(LONGEST):
        if item.nodeid.startswith(prefix):
            return i
    return len(LONGEST) + (0 if item.get_closest_marker("slow") else 1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)           # stable: the collection's order within a rank
