"""cocotb transport for `systolic.hw.controller.Controller`: request bytes in, reply bytes out.

The exchanges come from the JSON file named by ``$SYSTOLIC_VECTORS``::

    {"timeout_cycles": int, "uart_divisor": int or absent,
     "exchanges": [{"request": [byte, ...], "gap": str, "seed": int, "replies": int,
                    "damage": [kind, at] or absent}, ...]}

With ``uart_divisor`` the design is a `systolic.hw.virtual.VirtualBoard` and the bytes go
over its serial pins, where ``damage`` breaks the request on the wire (see
`systolic.sim.serial.SerialHost.send_damaged`); ``gap`` does not apply there.

Each exchange's bytes are sent with the `Backpressure` pattern ``gap`` (pauses between
bytes; ``"source/sink"`` paces the reply too, which is otherwise taken as fast as it comes);
then the ``replies`` reply frames it must produce (normally 1, 0 for garbage between frames)
are collected — a truncated request gets its reply once the controller times out. The reply
bytes of every exchange are written to ``$SYSTOLIC_RESULTS`` (JSON: a list of byte lists);
the pytest side decodes and checks them. A controller that does not answer within
the budget fails the test: it hangs.
"""

import json
import os

import cocotb
from cocotb.triggers import with_timeout
from systolic.sim.serial import SerialHost
from systolic.sim.streams import Backpressure, StreamSink, StreamSource, reset, start_clock
from systolic.sw.protocol import ReplyParser

PERIOD_NS = 10


async def recv_frames(recv, count):
    """Collect bytes from ``recv(1)`` until ``count`` complete reply frames have arrived."""
    parser, raw, frames = ReplyParser(), [], []
    while len(frames) < count:
        (byte,) = await recv(1)
        raw.append(int(byte))
        frames += parser.feed(bytes([int(byte)]))
    return raw


class Streams:
    """The controller's byte streams, paced by each exchange's ``gap``."""

    def __init__(self, dut, clk):
        self.source = StreamSource(dut, "rx", clk)
        self.sink = StreamSink(dut, "tx", clk)
        dut.line_fault.value = 0
        self.recv = self.sink.recv
        self.cycles_per_byte = 1

    async def send(self, ex):
        # "source/sink": the request's pauses, and the reply's (none unless given).
        source_gap, _, sink_gap = ex["gap"].partition("/")
        self.source.pause = Backpressure(source_gap).pauses(ex["seed"])
        self.sink.pause = Backpressure(sink_gap or "none").pauses(ex["seed"] + 1)
        await self.source.send(ex["request"])


class Serial:
    """The virtual board's serial pins, the request damaged as each exchange says."""

    def __init__(self, dut, divisor):
        self.host = SerialHost(dut.uart_rx, dut.uart_tx, divisor * PERIOD_NS)
        self.recv = self.host.recv
        self.cycles_per_byte = 10 * divisor

    async def send(self, ex):
        if "damage" in ex:
            kind, at = ex["damage"]
            await self.host.send_damaged(ex["request"], kind, at)
        else:
            await self.host.send(ex["request"])


@cocotb.test()
async def controller_exchanges(dut):
    with open(os.environ["SYSTOLIC_VECTORS"]) as f:
        vectors = json.load(f)
    clk = start_clock(dut, PERIOD_NS)
    divisor = vectors.get("uart_divisor")
    link = Streams(dut, clk) if divisor is None else Serial(dut, divisor)
    await reset(dut, clk)
    results = []
    for i, ex in enumerate(vectors["exchanges"]):
        dut._log.info("exchange %d: %d bytes", i, len(ex["request"]))
        receiving = cocotb.start_soon(recv_frames(link.recv, ex["replies"]))
        await link.send(ex)
        budget = (200 * link.cycles_per_byte * (len(ex["request"]) + 10)
                  + 4 * vectors["timeout_cycles"] + ex.get("budget", 0))
        results.append(await with_timeout(receiving, budget * PERIOD_NS, "ns"))
        dut._log.info("reply %d: %s", i, bytes(results[-1]).hex())
    with open(os.environ["SYSTOLIC_RESULTS"], "w") as f:
        json.dump(results, f)
