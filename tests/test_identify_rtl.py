"""IDENTIFY answered by the gateware on every preset and board: the controller's byte streams
(default, small and big presets) and the virtual boards' UART pins (each board's own
configuration), on the fast harness, byte for byte the reply `systolic.hw.isa` defines and the
host driver parses back to the configuration it was built for."""

import asyncio

import pytest
from systolic.hw.boards import BOARDS, get_board
from systolic.hw.config import PRESETS
from systolic.hw.controller import runnable_ops
from systolic.hw.isa import Reply, identify_payload
from systolic.sim.fast import Harness, HarnessLink, build_harness, network_top
from systolic.sw import protocol as P
from systolic.sw.deploy import SIM_BAUD, SIM_CLOCK_HZ
from systolic.sw.driver import FramedTransport


def identify(cfg, uart=None):
    """The IDENTITY reply's bytes and the driver's reading of them, from ``cfg``'s design."""
    top, name, divisor = network_top(cfg, uart)
    with Harness(build_harness(top, name=name, uart_divisor=divisor)) as harness:
        link = HarnessLink(harness, divisor=divisor, budget=10_000_000)
        frame = P.identify_request()
        harness.queue((0, b) for b in frame)
        raw = harness.recv(6 + len(identify_payload(cfg, runnable_ops(cfg))), 10_000_000)
        fields = asyncio.run(FramedTransport(link, cfg).identify())
    return raw, fields


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRESETS))
def test_the_controller_identifies_itself(name):
    cfg = PRESETS[name]
    raw, fields = identify(cfg)
    assert raw == P.encode_reply(Reply.IDENTITY, identify_payload(cfg, runnable_ops(cfg)))
    assert fields == P.expected_identity(cfg)
    P.check_identity(cfg, fields)


@pytest.mark.slow
@pytest.mark.parametrize("board", list(BOARDS))
def test_the_virtual_board_identifies_itself(board):
    cfg = get_board(board).config().replace(target="generic")     # as deploy --sim
    raw, fields = identify(cfg, uart=(SIM_CLOCK_HZ, SIM_BAUD))
    assert raw == P.encode_reply(Reply.IDENTITY, identify_payload(cfg, runnable_ops(cfg)))
    assert fields == P.expected_identity(cfg)
