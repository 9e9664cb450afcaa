"""The suite's order: the longest tests first, so that ``pytest -n 2`` packs them well.

pytest-xdist runs ``--dist worksteal`` here (``pyproject.toml``): each worker takes a contiguous
share of the collected tests in order (the first ``n // workers``, the next, ...) and, when its
own run out, takes the last half of what another still has waiting. A five-minute test that
starts last sets the suite's wall time by itself, so the tests below (the longest, as
``--durations`` measured them) go first, longest first, and every other slow test
(``@pytest.mark.slow``: RTL simulation, synthesis) before the quick ones. Under xdist that
order is then dealt out like cards, one test to each worker's share in turn: otherwise the
first share holds every long test, which its worker runs one after the other while the other
worker, through with the quick ones, can take only the tail of that share (the suite's wall
time was 930 s for 825 s of work a core). The order of the tests within each group is the
collection's, so a run stays repeatable.
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

# Node-id prefixes, longest first (seconds, as --durations measured them with -n 2 on a quiet
# machine, Dec 3: 9 min 51 s in all; a test that first needs a design pays for its build, so the
# first of those sharing one is listed).
LONGEST = (
    "tests/test_build.py::test_seed_sweep_icebreaker",                  # two builds at once
    "tests/test_build.py::test_build_icebreaker_end_to_end",            # 127: place and route
    "tests/test_netlist_rtl.py::test_netlist_lenet_digits[ulx3s-85f]",  # 86
    "tests/test_netlist_rtl.py",                                        # 60: the iCEBreaker's
    "tests/test_formal.py::test_controller_rejected_frames_sliced_bmc",  # 44
    "tests/test_identify_rtl.py::test_the_virtual_board_identifies_itself[ulx3s-85f]",  # 42
    "tests/test_controller_rtl.py",                                     # 38 and less
    "tests/test_identify_rtl.py::test_the_controller_identifies_itself[big]",   # 37: 12x12
    "tests/test_uart.py::test_uart_rtl",                                # 28 and less
    "tests/test_formal.py",                                             # 28 and less
    "tests/test_fuzz.py::test_a_wrong_model_is_caught_with_a_replay",   # 27: the default build
    "tests/test_network_rtl.py::test_lenet_digits_rtl",                 # 26: cocotb, Icarus
    "tests/test_perf_rtl.py::test_cycles_exactly_as_predicted",         # 26
    "tests/test_core_rtl.py::test_core_layers",                         # 23, 8
    "tests/test_residual_rtl.py::test_mlperf_resnet8_big_preset",       # 23
    "tests/test_report.py::test_demo_report_files_and_quiet",           # 17
    "tests/test_report.py::test_simulate_is_quiet_and_trace_says_all_match",  # 16
    "tests/test_fast_rtl.py::test_lenet_digits_fast_trace_and_waves",   # 15: the waves build
    "tests/test_identify_rtl.py",
    "tests/test_fast_rtl.py",
    "tests/test_deploy.py",
)


def _rank(item):
    for i, prefix in enumerate(LONGEST):
        if item.nodeid.startswith(prefix):
            return i
    return len(LONGEST) + (0 if item.get_closest_marker("slow") else 1)


def _dealt(items, workers):
    """``items`` dealt round-robin into ``workers`` contiguous shares of the sizes xdist's
    worksteal scheduler cuts (share ``k``: ``pending // (workers - k)`` of the tests still
    pending), concatenated."""
    sizes, pending = [], len(items)
    for k in range(workers):
        sizes.append(pending // (workers - k))
        pending -= sizes[-1]
    hands, k = [[] for _ in range(workers)], 0
    for item in items:
        while len(hands[k]) == sizes[k]:
            k = (k + 1) % workers
        hands[k].append(item)
        k = (k + 1) % workers
    return [item for hand in hands for item in hand]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)           # stable: the collection's order within a rank
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        items[:] = _dealt(items, workers)
