"""cocotb test of a whole network on `systolic.hw.core.Core`: the host driver
(`systolic.sw.driver.Driver`) over a transport made of the core's streams.

The job comes from the JSON file named by ``$SYSTOLIC_NETWORK`` (written by
`systolic.sw.simulate.simulate`)::

    {"qnet": path, "cfg": {AcceleratorConfig fields}, "trace": bool,
     "images": [[int8, ...], ...]}          # each image flattened in (C, H, W) order

The network is compiled here again (compilation is deterministic), its weights loaded once,
then every image run. The results go to ``$SYSTOLIC_RESULTS`` as a JSON list, one entry per
image: ``{"logits": [int], "cycles": [int per layer], "outputs": [[int8 ...] per layer] or
null}``.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from systolic.hw.config import AcceleratorConfig
from systolic.hw.isa import load_layout
from systolic.sim.streams import StreamSink, StreamSource, reset, start_clock
from systolic.sw.compiler import compile_network
from systolic.sw.driver import Driver, Transport
from systolic.sw.qnet import QNet

PERIOD_NS = 10


class SimTransport(Transport):
    """The `Transport` of a simulated core: its load, cmd and read-back streams."""

    def __init__(self, dut, cfg):
        self.dut = dut
        self.clk = start_clock(dut, PERIOD_NS)
        self.load = StreamSource(dut, "load", self.clk)
        self.cmd = StreamSource(dut, "cmd", self.clk)
        self.rd_addr = StreamSource(dut, "rd_addr", self.clk)
        self.rd_data = StreamSink(dut, "rd_data", self.clk)
        lay = load_layout(cfg)
        self._offsets = [lay[name].offset for name in ("mem", "addr", "data")]

    async def write(self, beats):
        om, oa, od = self._offsets
        await self.load.send([mem.value << om | addr << oa | data << od
                              for mem, addr, data in beats])

    async def execute(self, command):
        await self.cmd.put(command)
        await ReadOnly()
        if int(self.dut.busy.value):
            # Wait for the edge rather than polling every cycle: far fewer Python callbacks.
            await FallingEdge(self.dut.busy)
            await ReadOnly()
        cycles = int(self.dut.cycles.value)
        await RisingEdge(self.clk)
        return cycles

    async def read(self, base, count):
        receiving = cocotb.start_soon(self.rd_data.recv(count))
        await self.rd_addr.send([base + i for i in range(count)])
        return [int(w) for w in await receiving]


@cocotb.test()
async def network(dut):
    """Every image of the job, one after another, on one loaded network."""
    with open(os.environ["SYSTOLIC_NETWORK"]) as f:
        job = json.load(f)
    cfg = AcceleratorConfig(**job["cfg"])
    program = compile_network(QNet.load(job["qnet"]), cfg)
    transport = SimTransport(dut, cfg)
    await reset(dut, transport.clk)
    driver = Driver(program, transport)
    await driver.load_network()
    shape = program.input_shape
    images = [np.array(im, np.int8).reshape(shape) for im in job["images"]]
    results = await driver.run_images(images, trace=job["trace"], log=dut._log.info)
    with open(os.environ["SYSTOLIC_RESULTS"], "w") as f:
        json.dump([{"logits": r.logits.tolist(), "cycles": r.layer_cycles,
                    "outputs": None if r.layer_outputs is None
                    else [o.ravel().tolist() for o in r.layer_outputs]}
                   for r in results], f)
