"""cocotb test of a whole network on `systolic.hw.controller.Controller`: the host driver
(`systolic.sw.driver.Driver`) over the framed protocol, on the controller's byte streams.

The job comes from the JSON file named by ``$SYSTOLIC_NETWORK`` (written by
`systolic.sw.simulate.simulate`)::

    {"qnet": path, "cfg": {AcceleratorConfig fields}, "trace": bool,
     "images": [[int8, ...], ...],          # each image flattened in (C, H, W) order
     "uart_divisor": int or absent}         # a VirtualBoard: talk to its UART pins

Without ``uart_divisor`` the design is a `Controller` and the link its byte streams; with it,
a `systolic.hw.virtual.VirtualBoard` and the link its serial pins, bit by bit.

The network is compiled here again (compilation is deterministic), its weights and program
loaded once, then every image run. The results go to ``$SYSTOLIC_RESULTS`` as a JSON list, one
entry per image: ``{"logits": [int], "cycles": [int per layer], "outputs": [[int8 ...] per
layer] or null}``.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import Event, FallingEdge, Timer
from systolic.hw.config import AcceleratorConfig
from systolic.sim.streams import StreamSink, StreamSource, reset, start_clock
from systolic.sw.compiler import compile_network
from systolic.sw.driver import Driver, FramedTransport, Link
from systolic.sw.qnet import QNet

PERIOD_NS = 10


class StreamLink(Link):
    """A `Link` made of the controller's ``rx`` and ``tx`` byte streams."""

    def __init__(self, dut):
        self.clk = start_clock(dut, PERIOD_NS)
        self.rx = StreamSource(dut, "rx", self.clk)
        self.tx = StreamSink(dut, "tx", self.clk)

    async def send(self, data):
        await self.rx.send(list(data))

    async def recv(self, count):
        return bytes(int(b) for b in await self.tx.recv(count))


class UartLink(Link):
    """A `Link` over a board's serial pins: 8N1 at ``divisor`` clock cycles per bit.

    The host's side of the wire, bit by bit: what a USB serial adapter does for a board.
    """

    def __init__(self, dut, divisor):
        self.clk = start_clock(dut, PERIOD_NS)
        self.dut = dut
        self.bit = divisor * PERIOD_NS
        dut.uart_rx.value = 1
        self.received = bytearray()
        self.arrived = Event()
        cocotb.start_soon(self._monitor())

    async def send(self, data):
        for byte in data:
            for level in [0, *((byte >> i) & 1 for i in range(8)), 1]:
                self.dut.uart_rx.value = level
                await Timer(self.bit, "ns")

    async def _monitor(self):
        while True:
            await FallingEdge(self.dut.uart_tx)
            await Timer(self.bit // 2, "ns")            # the middle of the start bit
            byte = 0
            for i in range(8):
                await Timer(self.bit, "ns")
                byte |= int(self.dut.uart_tx.value) << i
            await Timer(self.bit, "ns")                 # the stop bit
            assert int(self.dut.uart_tx.value) == 1, "framing error on the board's tx line"
            self.received.append(byte)
            self.arrived.set()

    async def recv(self, count):
        while len(self.received) < count:
            self.arrived.clear()
            await self.arrived.wait()
        data = bytes(self.received[:count])
        del self.received[:count]
        return data


@cocotb.test()
async def network(dut):
    """Every image of the job, one after another, on one loaded network."""
    with open(os.environ["SYSTOLIC_NETWORK"]) as f:
        job = json.load(f)
    cfg = AcceleratorConfig(**job["cfg"])
    program = compile_network(QNet.load(job["qnet"]), cfg)
    divisor = job.get("uart_divisor")
    link = StreamLink(dut) if divisor is None else UartLink(dut, divisor)
    await reset(dut, link.clk)
    driver = Driver(program, FramedTransport(link, cfg))
    await driver.load_network()
    shape = program.input_shape
    images = [np.array(im, np.int8).reshape(shape) for im in job["images"]]
    results = await driver.run_images(images, trace=job["trace"], log=dut._log.info)
    with open(os.environ["SYSTOLIC_RESULTS"], "w") as f:
        json.dump([{"logits": r.logits.tolist(), "cycles": r.layer_cycles,
                    "outputs": None if r.layer_outputs is None
                    else [o.ravel().tolist() for o in r.layer_outputs]}
                   for r in results], f)
