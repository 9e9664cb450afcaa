"""The accelerator core: on-chip memories and the engines that share them.

The core executes one layer descriptor at a time. Between layers, activations stay in
activation memory; the host (or a testbench, or the controller) loads memories and reads
results back through streams while the engines are idle.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .conv import ConvEngine
from .isa import Mem, Op, layer_layout, load_layout, param_layout, word_layout
from .pool import PoolEngine

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
                                                   depth=cfg.param_words, init=[])
        act_r, act_w = act.read_port(), act.write_port()
        w_r, w_w = wmem.read_port(), wmem.write_port()
        p_r, p_w = pmem.read_port(), pmem.write_port()

        m.submodules.conv = conv = ConvEngine(cfg)
        wiring.connect(m, conv.weight_read, w_r)  # only the engine reads these two
        wiring.connect(m, conv.param_read, p_r)

        # Pooling streams a map out of activation memory, through the engine, and back.
        pooling = Signal()
        pool_cycles = Signal(32)
        if cfg.pool:
            m.submodules.pool = pool = PoolEngine(cfg)
            pool_rd, pool_wr = self._pool_streams(m, pool, pooling, pool_cycles)

        busy = Signal()
        m.d.comb += [
            busy.eq(conv.busy | pooling),
            self.busy.eq(busy),
            self.cycles.eq(Mux(self.cmd.payload.op == Op.CONV, conv.cycles, pool_cycles)),
        ]

        # Commands go to the engine their opcode names, one layer at a time.
        m.d.comb += conv.cmd.payload.eq(self.cmd.payload)
        with m.If(self.cmd.payload.op == Op.CONV):
            m.d.comb += [conv.cmd.valid.eq(self.cmd.valid & ~busy),
                         self.cmd.ready.eq(conv.cmd.ready & ~busy)]
        if cfg.pool:
            m.d.comb += pool.cmd.payload.eq(self.cmd.payload)
            with m.If((self.cmd.payload.op == Op.MAXPOOL) | (self.cmd.payload.op == Op.AVGPOOL)):
                m.d.comb += [pool.cmd.valid.eq(self.cmd.valid & ~busy),
                             self.cmd.ready.eq(pool.cmd.ready & ~busy)]

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
        with m.If(conv.busy):
            m.d.comb += [
                act_w.en.eq(conv.act_write.en),
                act_w.addr.eq(conv.act_write.addr),
                act_w.data.eq(conv.act_write.data),
            ]
        if cfg.pool:
            with m.Elif(pooling):
                m.d.comb += [act_w.en.eq(pool_wr.en), act_w.addr.eq(pool_wr.addr),
                             act_w.data.eq(pool_wr.data)]

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
        with m.If(conv.busy):
            m.d.comb += [act_r.addr.eq(conv.act_read.addr), act_r.en.eq(conv.act_read.en)]
        if cfg.pool:
            with m.Elif(pooling):
                m.d.comb += [act_r.addr.eq(pool_rd.addr), act_r.en.eq(pool_rd.en)]
        with m.Else():
            m.d.comb += [act_r.addr.eq(self.rd_addr.payload), act_r.en.eq(take)]
        m.d.comb += conv.act_read.data.eq(act_r.data)
        if cfg.pool:
            m.d.comb += pool.i_stream.payload.eq(act_r.data)
        return m

    def _pool_streams(self, m, pool, pooling, cycles):
        """Stream the input map to ``pool`` and its output back; returns the memory accesses.

        The reader issues a read when the word already read has been taken (or there is none),
        so the read port's output register doubles as the stream's payload register.
        """
        cfg = self._cfg
        cmd = self.cmd.payload
        rd = Signal(data.StructLayout({"en": 1, "addr": cfg.act_addr_bits}))
        wr = Signal(data.StructLayout({"en": 1, "addr": cfg.act_addr_bits,
                                       "data": word_layout(cfg)}))
        rd_addr, wr_addr = Signal(cfg.act_addr_bits), Signal(cfg.act_addr_bits)
        x, y, cw = Signal(cfg.dim_bits), Signal(cfg.dim_bits), Signal(8)
        in_w, in_h, cin_words = Signal(cfg.dim_bits), Signal(cfg.dim_bits), Signal(8)
        reading, have = Signal(), Signal()
        with m.If(pool.cmd.valid & pool.cmd.ready):
            m.d.sync += [
                rd_addr.eq(cmd.in_base), wr_addr.eq(cmd.out_base),
                in_w.eq(cmd.in_w), in_h.eq(cmd.in_h), cin_words.eq(cmd.cin_words),
                x.eq(0), y.eq(0), cw.eq(0), reading.eq(1), pooling.eq(1), cycles.eq(0),
            ]
        with m.If(pooling):
            m.d.sync += cycles.eq(cycles + 1)
        advance = ~have | pool.i_stream.ready
        m.d.comb += [pool.i_stream.valid.eq(have), rd.addr.eq(rd_addr), rd.en.eq(advance)]
        with m.If(advance):
            m.d.sync += have.eq(reading)
            with m.If(reading):
                m.d.sync += [rd_addr.eq(rd_addr + 1), cw.eq(cw + 1)]
                with m.If(cw == cin_words - 1):
                    m.d.sync += [cw.eq(0), x.eq(x + 1)]
                    with m.If(x == in_w - 1):
                        m.d.sync += [x.eq(0), y.eq(y + 1)]
                        with m.If(y == in_h - 1):
                            m.d.sync += reading.eq(0)
        m.d.comb += [
            pool.o_stream.ready.eq(1),
            wr.en.eq(pool.o_stream.valid),
            wr.addr.eq(wr_addr),
            wr.data.eq(pool.o_stream.payload),
        ]
        with m.If(pool.o_stream.valid):
            m.d.sync += wr_addr.eq(wr_addr + 1)
        with m.If(pooling & ~reading & ~have & ~pool.busy & ~pool.cmd.valid):
            m.d.sync += pooling.eq(0)
        return rd, wr
