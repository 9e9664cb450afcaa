"""cocotb tests of the stream monitor in `systolic.sim.streams`, on a design that breaks the
handshake rules on request (``tests/test_stream_monitor.py``).

The design's ``mode``: 0 keeps the rules (a counter, the next value after each transfer); 1
changes the payload every cycle; 2 drops ``valid`` for a cycle after each stall; 3 passes the pin
``ext_valid`` through as ``valid``. ``i_stream.ready`` is the pin ``ext_ready``.

`keeps_the_rules` must pass; every other test must fail with the monitor's
`StreamProtocolError`, which the pytest side checks by its message. The X and Z tests need a
four-state simulator (Icarus).
"""

import cocotb
from cocotb.triggers import ClockCycles, with_timeout
from cocotb.types import LogicArray
from systolic.sim.streams import Backpressure, StreamSink, StreamSource, reset, start_clock

PERIOD_NS = 10
BEATS = 24


async def start(dut, mode, *, ext_valid="0", ext_ready="1"):
    clk = start_clock(dut, PERIOD_NS)
    dut.mode.value = mode
    dut.ext_valid.value = LogicArray(ext_valid)
    dut.ext_ready.value = LogicArray(ext_ready)
    await reset(dut, clk)
    return clk


async def receive(dut, clk, pause=Backpressure.CYCLE):
    sink = StreamSink(dut, "o_stream", clk, pause=pause.pauses(1))
    return await with_timeout(sink.recv(BEATS), 20 * BEATS * PERIOD_NS, "ns")


@cocotb.test()
async def keeps_the_rules(dut):
    """A correct stream, stalled at random, and beats into the design: no complaint."""
    clk = await start(dut, 0)
    source = StreamSource(dut, "i_stream", clk, pause=Backpressure.RANDOM.pauses(2))
    sending = cocotb.start_soon(source.send(range(BEATS)))
    assert await receive(dut, clk, Backpressure.RANDOM) == list(range(BEATS))
    await sending
    await ClockCycles(clk, 10)          # stalled with valid high: still within the rules


@cocotb.test()
async def payload_changes_while_stalled(dut):
    clk = await start(dut, 1)
    await receive(dut, clk)


@cocotb.test()
async def valid_falls_while_stalled(dut):
    clk = await start(dut, 2)
    await receive(dut, clk)


@cocotb.test()
async def x_on_valid(dut):
    clk = await start(dut, 3, ext_valid="X")
    await receive(dut, clk)


@cocotb.test()
async def z_on_ready(dut):
    clk = await start(dut, 0, ext_ready="Z")
    source = StreamSource(dut, "i_stream", clk)
    await with_timeout(source.send(range(BEATS)), 20 * BEATS * PERIOD_NS, "ns")
