"""cocotb test of a whole network on `systolic.hw.controller.Controller`: the host driver
(`systolic.sw.driver.Driver`) over the framed protocol, on the controller's byte streams.

The job comes from the JSON file named by ``$SYSTOLIC_NETWORK`` (written by
`systolic.sw.simulate.simulate`)::

    {"qnet": path, "cfg": AcceleratorConfig.as_dict(), "trace": bool, "layer_cycles": bool,
     "images": [[int8, ...], ...],          # each image flattened in (C, H, W) order
     "uart_divisor": int or absent,         # a VirtualBoard: talk to its UART pins
     "faults": [{"request": name, "nth": int, "kind": kind}, ...] or absent}

Without ``uart_divisor`` the design is a `Controller` and the link its byte streams; with it,
a `systolic.hw.virtual.VirtualBoard` and the link its serial pins, bit by bit. On the serial
pins, ``faults`` damage the ``nth`` (from 0) request frame of type ``request`` (``"WRITE"``,
``"RUN"``, ...) on the wire: ``"break"`` (the line held low in the middle of it),
``"framing"`` (a character with a low stop bit), ``"flip"`` (a bit of it inverted) or
``"reply"`` (a bit of its reply inverted). The driver must recover from each.

The network is compiled here again (compilation is deterministic), its weights and program
loaded once, then every image run. The results go to ``$SYSTOLIC_RESULTS`` as JSON:
``{"images": [...], "resent": int, "reruns": int, "wire_bytes": [int, int], "faults": int}``,
an entry per image (``{"logits": [int], "cycles": [int per layer, or the total alone without
``layer_cycles``], "run_cycles": the run's total, "batch": its images, "outputs": [[int8 ...]
per layer] or null}``), the driver's resent frames
and rerun images, the bytes of the frames exchanged to load the network and to run the
images, and the faults injected.
"""

import collections
import json
import os

import cocotb
import numpy as np
from systolic.hw.config import AcceleratorConfig
from systolic.hw.isa import Request
from systolic.sim.serial import SerialHost
from systolic.sim.streams import StreamSink, StreamSource, reset, start_clock
from systolic.sw.compiler import compile_network
from systolic.sw.driver import RESYNC_QUIET_BITS, Driver, FramedTransport, Link
from systolic.sw.qnet import QNet

PERIOD_NS = 10


class StreamLink(Link):
    """A `Link` made of the controller's ``rx`` and ``tx`` byte streams."""

    def __init__(self, dut):
        self.clk = start_clock(dut, PERIOD_NS)
        self.rx = StreamSource(dut, "rx", self.clk)
        self.tx = StreamSink(dut, "tx", self.clk)
        dut.line_fault.value = 0

    async def send(self, data):
        await self.rx.send(list(data))

    async def recv(self, count):
        return bytes(int(b) for b in await self.tx.recv(count))


class UartLink(Link):
    """A `Link` over a board's serial pins: 8N1 at ``divisor`` clock cycles per bit, as a USB
    serial adapter drives them, damaging the frames ``faults`` name (see the module's doc)."""

    def __init__(self, dut, divisor, faults=()):
        self.clk = start_clock(dut, PERIOD_NS)
        self.host = SerialHost(dut.uart_rx, dut.uart_tx, divisor * PERIOD_NS)
        self.faults = {(Request[f["request"]].value, f["nth"]): f["kind"] for f in faults}
        self.sent = collections.Counter()       # request frames sent, per type
        self.injected = 0
        self.damage_reply = False

    async def send(self, data):
        kind = self.faults.pop((data[1], self.sent[data[1]]), None)
        self.sent[data[1]] += 1
        if kind is None:
            await self.host.send(data)
            return
        self.injected += 1
        if kind == "reply":
            self.damage_reply = True
            await self.host.send(data)
        else:
            await self.host.send_damaged(data, kind, at=min(5, len(data) - 1))

    async def recv(self, count):
        data = await self.host.recv(count)
        if self.damage_reply:
            # The reply's type byte: the frame check fails, the length still holds.
            self.damage_reply = False
            data = data[:1] + bytes([data[1] ^ 0x01]) + data[2:]
        return data

    async def resync(self):
        await self.host.flush(quiet_bits=RESYNC_QUIET_BITS)


@cocotb.test()
async def network(dut):
    """Every image of the job, one after another, on one loaded network."""
    with open(os.environ["SYSTOLIC_NETWORK"]) as f:
        job = json.load(f)
    cfg = AcceleratorConfig.from_dict(job["cfg"])
    program = compile_network(QNet.load(job["qnet"]), cfg)
    divisor = job.get("uart_divisor")
    if divisor is None:
        link = StreamLink(dut)
    else:
        link = UartLink(dut, divisor, job.get("faults", ()))
    await reset(dut, link.clk)
    transport = FramedTransport(link, cfg)
    driver = Driver(program, transport, layer_cycles=job["layer_cycles"])
    await driver.load_network()
    loaded = transport.wire_bytes
    shape = program.input_shape
    images = [np.array(im, np.int8).reshape(shape) for im in job["images"]]
    results = await driver.run_images(images, trace=job["trace"], log=dut._log.info)
    with open(os.environ["SYSTOLIC_RESULTS"], "w") as f:
        json.dump({"images": [{"logits": r.logits.tolist(),
                               "cycles": r.layer_cycles or [r.cycles],
                               "run_cycles": r.cycles, "batch": r.batch,
                               "outputs": None if r.layer_outputs is None
                               else [o.ravel().tolist() for o in r.layer_outputs]}
                              for r in results],
                   "resent": transport.resent, "reruns": driver.reruns,
                   "wire_bytes": [loaded, transport.wire_bytes - loaded],
                   "faults": getattr(link, "injected", 0)}, f)
