"""The accelerator core: on-chip memories and the engines that share them.

The core executes one layer descriptor at a time. Between layers, activations stay in
activation memory; the host (or a testbench, or the controller) loads memories and reads
results back through streams while the engines are idle.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .conv import ConvEngine, word_layout
from .isa import Mem, Op, layer_layout, load_layout, param_layout

__all__ = ["Core"]


class Core(wiring.Component):
    """Memories plus convolution (and, when configured, pooling) engines.

    Members
    -------
    load : In(stream.Signature(load_layout(cfg)))
        Memory writes; accepted while no layer runs.
    cmd : In(stream.Signature(layer_layout(cfg)))
        Layer descriptors, executed in order.
    rd_addr : In(stream.Signature(act_addr_bits))
        Activation memory read-back requests; accepted while no layer runs.
    rd_data : Out(stream.Signature(word_layout(cfg)))
        Read-back data, in request order.
    busy : Out(1)
        A layer is in progress.
    cycles : Out(32)
        Cycles taken by the last layer.
    """

    def __init__(self, cfg):
        self._cfg = cfg
        super().__init__({
            "load": In(stream.Signature(load_layout(cfg))),
            "cmd": In(stream.Signature(layer_layout(cfg))),
            "rd_addr": In(stream.Signature(cfg.act_addr_bits)),
            "rd_data": Out(stream.Signature(word_layout(cfg))),
            "busy": Out(1),
            "cycles": Out(32),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        word = word_layout(cfg)
        m.submodules.act = act = memory.Memory(shape=word, depth=cfg.act_depth, init=[])
        m.submodules.weights = wmem = memory.Memory(shape=word, depth=cfg.weight_depth, init=[])
        m.submodules.params = pmem = memory.Memory(shape=param_layout(cfg),
                                                   depth=cfg.param_depth, init=[])
        act_r, act_w = act.read_port(), act.write_port()
        w_r, w_w = wmem.read_port(), wmem.write_port()
        p_r, p_w = pmem.read_port(), pmem.write_port()

        m.submodules.conv = conv = ConvEngine(cfg)
        wiring.connect(m, conv.weight_read, w_r)  # only the engine reads these two
        wiring.connect(m, conv.param_read, p_r)

        busy = Signal()
        m.d.comb += [busy.eq(conv.busy), self.busy.eq(busy), self.cycles.eq(conv.cycles)]

        # Commands go to the engine their opcode names.
        m.d.comb += conv.cmd.payload.eq(self.cmd.payload)
        with m.If(self.cmd.payload.op == Op.CONV):
            m.d.comb += [conv.cmd.valid.eq(self.cmd.valid), self.cmd.ready.eq(conv.cmd.ready)]

        # Loads: one memory write per beat, only between layers.
        m.d.comb += self.load.ready.eq(~busy)
        addr, payload = self.load.payload.addr, self.load.payload.data
        loading = self.load.valid & ~busy
        for port, kind in ((act_w, Mem.ACT), (w_w, Mem.WEIGHT), (p_w, Mem.PARAM)):
            m.d.comb += [
                port.addr.eq(addr),
                port.data.eq(payload),
                port.en.eq(loading & (self.load.payload.mem == kind)),
            ]
        with m.If(busy):
            m.d.comb += [
                act_w.en.eq(conv.act_write.en),
                act_w.addr.eq(conv.act_write.addr),
                act_w.data.eq(conv.act_write.data),
            ]

        # Read-back: a one-entry output register; the read port holds its data while stalled.
        take = Signal()
        m.d.comb += [
            take.eq(self.rd_addr.valid & self.rd_addr.ready),
            self.rd_addr.ready.eq(~busy & (~self.rd_data.valid | self.rd_data.ready)),
            self.rd_data.payload.eq(act_r.data),
        ]
        with m.If(take):
            m.d.sync += self.rd_data.valid.eq(1)
        with m.Elif(self.rd_data.ready):
            m.d.sync += self.rd_data.valid.eq(0)
        with m.If(busy):
            m.d.comb += [act_r.addr.eq(conv.act_read.addr), act_r.en.eq(conv.act_read.en)]
        with m.Else():
            m.d.comb += [act_r.addr.eq(self.rd_addr.payload), act_r.en.eq(take)]
        m.d.comb += conv.act_read.data.eq(act_r.data)
        return m
