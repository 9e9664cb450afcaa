"""cocotb transport for `systolic.hw.controller.Controller`: request bytes in, reply bytes out.

The exchanges come from the JSON file named by ``$SYSTOLIC_VECTORS``::

    {"timeout_cycles": int,
     "exchanges": [{"request": [byte, ...], "gap": str, "seed": int, "replies": int}, ...]}

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
from systolic.sim.streams import Backpressure, StreamSink, StreamSource, reset, start_clock
from systolic.sw.protocol import ReplyParser

PERIOD_NS = 10


async def recv_frames(sink, count):
    """Collect bytes until ``count`` complete reply frames have arrived."""
    parser, raw, frames = ReplyParser(), [], []
    while len(frames) < count:
        (byte,) = await sink.recv(1)
        raw.append(int(byte))
        frames += parser.feed(bytes([int(byte)]))
    return raw


@cocotb.test()
async def controller_exchanges(dut):
    with open(os.environ["SYSTOLIC_VECTORS"]) as f:
        vectors = json.load(f)
    clk = start_clock(dut, PERIOD_NS)
    source = StreamSource(dut, "rx", clk)
    sink = StreamSink(dut, "tx", clk)
    await reset(dut, clk)
    results = []
    for i, ex in enumerate(vectors["exchanges"]):
        dut._log.info("exchange %d: %d bytes", i, len(ex["request"]))
        # "source/sink": the request's pauses, and the reply's (none unless given).
        source_gap, _, sink_gap = ex["gap"].partition("/")
        source.pause = Backpressure(source_gap).pauses(ex["seed"])
        sink.pause = Backpressure(sink_gap or "none").pauses(ex["seed"] + 1)
        receiving = cocotb.start_soon(recv_frames(sink, ex["replies"]))
        await source.send(ex["request"])
        budget = 200 * len(ex["request"]) + 4 * vectors["timeout_cycles"] + ex.get("budget", 0)
        results.append(await with_timeout(receiving, budget * PERIOD_NS, "ns"))
        dut._log.info("reply %d: %s", i, bytes(results[-1]).hex())
    with open(os.environ["SYSTOLIC_RESULTS"], "w") as f:
        json.dump(results, f)
