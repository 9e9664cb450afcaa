"""The accelerator core: on-chip memories and the engines that share them.

The core executes one layer descriptor at a time. Between layers, activations stay in
activation memory; the host (or a testbench, or the controller) loads memories and reads
results back through streams while the engines are idle.

Each memory maps into block RAM (the weights on iCE40: SPRAM) with no logic around it. An
Amaranth read port returns the old word when the same address is written in the same cycle;
iCE40 and ECP5 block RAM promise nothing there, so unless Yosys knows that a port never reads a
word in the cycle it is written, it rebuilds the old word in the fabric: 76 flip-flops and 46
LUTs for the 1024 x 32 activation memory on iCE40. The weight and parameter memories are never
read and written in one cycle (`SinglePortMemory`), and their read enables say so. The engines
read and write the activation memory in one cycle, never at the same address; its
``no_rw_check`` attribute says so, and the collision reads the old word in simulation only.
(Yosys looks at both for a read port it sees as an asynchronous read and a register: from
Verilog, or from RTLIL after ``memory_nordff``, which ``systolic build`` runs.)
"""

from amaranth.hdl import Cat, ClockSignal, Instance, Module, Mux, Shape, Signal, Value
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .conv import ConvEngine
from .eltwise import AddEngine, GapEngine
from .isa import (
    ACT_READ_LATENCY,
    CMD_LATENCY,
    Mem,
    Op,
    fc_bank_depth,
    layer_layout,
    load_layout,
    param_layout,
    word_layout,
)
from .pool import PoolEngine
from .replica import delay, hard_register, local_reset

__all__ = ["BankedWeights", "Core", "SinglePortMemory"]

# SB_SPRAM256KA: 16384 words of 16 bits, four in an iCE40UP5K.
_SPRAM_DEPTH = 16384
_SPRAM_WIDTH = 16

_DESC_GROUP = 32        # descriptor bits per copy of the core's idle flag


def registered_slices(m, *, width, depth, slices, target, read_addr, read_en, write_addr,
                      write_en, write_data, exclusive, attrs=None):
    """A memory built as ``slices`` column slices, each with its own copy of the registers of
    the read and write ports before it (`hard_register`): each address and enable bit drives
    one slice's block RAMs, near which its copy can sit, not every block RAM of the memory.

    A read asked for in one cycle is done in the next, its word in the returned value the cycle
    after that; a write lands in the next cycle. With ``exclusive`` the memory is never read
    and written in one cycle: a write it does disables the read it does in the same cycle,
    so Yosys finds no collision to emulate (see the module's notes). ``attrs`` go to each
    slice's `memory.Memory` (``no_rw_check``).

    ``read_addr``, ``read_en``, ``write_addr``, ``write_en`` and ``write_data`` may be lists:
    each slice's own (of ``write_data``'s, each slice takes its own part).

    Returns
    -------
    Signal(width)
        The read data: the block RAMs' outputs, side by side.
    """
    part = width // slices
    data = Signal(width)

    def own(value, i):
        return value[i] if isinstance(value, list | tuple) else value
    for i in range(slices):
        def copy(value, what, i=i, reset_less=False):
            return hard_register(m, value, name=f"s{i}_{what}", target=target,
                                 reset_less=reset_less)
        m.submodules[f"mem{i}"] = mem = memory.Memory(shape=part, depth=depth, init=[],
                                                      attrs=attrs or {})
        w, r = mem.write_port(), mem.read_port()
        we = copy(own(write_en, i), "we")
        re = copy(own(read_en, i), "re")
        wd = Signal(part, name=f"s{i}_wdata", reset_less=True)
        m.d.sync += wd.eq(Value.cast(own(write_data, i)).word_select(i, part))
        m.d.comb += [
            w.addr.eq(copy(own(write_addr, i), "waddr", reset_less=True)), w.data.eq(wd),
            w.en.eq(we),
            r.addr.eq(copy(own(read_addr, i), "raddr", reset_less=True)),
            r.en.eq(re & ~we if exclusive else re),
            data.word_select(i, part).eq(r.data),
        ]
    return data


class SinglePortMemory(wiring.Component):
    """A memory that is written and read in different cycles, never both in one.

    The core's weight and parameter memories: the host writes them between layers and the
    convolution engine reads them during layers.

    Parameters
    ----------
    shape : shape-like
        Word shape.
    depth : int
        Words.
    spram : bool
        Build it from iCE40UP ``SB_SPRAM256KA`` blocks (``ceil(depth / 16384)`` banks of
        ``ceil(width / 16)`` blocks each) instead of an Amaranth memory, which Yosys cannot
        put in SPRAM: an Amaranth memory starts zeroed and SPRAM cannot be initialised.
    registered : bool
        Take the read address into a register before the memory: a read's word then arrives
        a cycle later (see ``read``). The register is the reader's address register, moved in
        here, where it can be copied per slice.
    slices : int
        With ``registered`` (and not ``spram``): build the memory as ``slices`` column slices,
        each an Amaranth memory of ``width / slices`` bits with its own copy of the read
        address register and of the write port's registers (`hard_register`: synthesis keeps
        the copies apart). Each address bit then drives a slice's block RAMs, not all of them
        across the chip. A write lands a cycle after it is asked for.
    target : str
        The configuration's ``target``, for `hard_register`.

    Members
    -------
    write : Out(memory.WritePort.Signature(addr_width, shape))
        Writes ``data`` to ``addr`` when ``en``.
    read : Out(memory.ReadPort.Signature(addr_width, shape))
        In a cycle with ``en`` set and no write, reads ``addr``; ``data`` holds the word from
        the next cycle on (with ``registered``: the cycle after), until the next read. After a
        write ``data`` is undefined (SPRAM drives X) until the next read.
    """

    def __init__(self, *, shape, depth, spram=False, registered=False, slices=1,
                 target="generic"):
        width = Shape.cast(shape).width
        if slices != 1 and (spram or not registered or width % slices):
            raise ValueError(f"Slices must divide a registered Amaranth memory's width "
                             f"{width}, not {slices!r}")
        self._shape, self._depth, self._spram = shape, depth, spram
        self._registered, self._slices, self._target = registered, slices, target
        addr_width = (depth - 1).bit_length()
        super().__init__({
            "write": Out(memory.WritePort.Signature(addr_width=addr_width, shape=shape)),
            "read": Out(memory.ReadPort.Signature(addr_width=addr_width, shape=shape)),
        })

    def elaborate(self, platform):
        if self._slices > 1:
            return self._sliced()
        m = Module()
        read = self.read
        if self._registered:
            read = memory.ReadPort.Signature(addr_width=len(self.read.addr),
                                             shape=self._shape).flip().create()
            m.d.sync += [read.addr.eq(self.read.addr), read.en.eq(self.read.en)]
            m.d.comb += self.read.data.eq(read.data)
        if self._spram:
            self._spram_banks(m, read)
        else:
            self._memory(m, read)
        return m

    def _memory(self, m, read):
        # The read enable excludes the write enable, so Yosys finds no collision to emulate.
        m.submodules.mem = mem = memory.Memory(shape=self._shape, depth=self._depth, init=[])
        w, r = mem.write_port(), mem.read_port()
        m.d.comb += [
            w.addr.eq(self.write.addr), w.data.eq(self.write.data), w.en.eq(self.write.en),
            r.addr.eq(read.addr), r.en.eq(read.en & ~self.write.en),
            read.data.eq(r.data),
        ]

    def _sliced(self):
        m = Module()
        data = registered_slices(
            m, width=Shape.cast(self._shape).width, depth=self._depth, slices=self._slices,
            target=self._target, read_addr=self.read.addr, read_en=self.read.en,
            write_addr=self.write.addr, write_en=self.write.en, write_data=self.write.data,
            exclusive=True)
        m.d.comb += self.read.data.eq(data)
        return m

    def _spram_banks(self, m, read):
        width = Shape.cast(self._shape).width
        lanes = -(-width // _SPRAM_WIDTH)
        banks = -(-self._depth // _SPRAM_DEPTH)
        low = (_SPRAM_DEPTH - 1).bit_length()
        wdata = Signal(lanes * _SPRAM_WIDTH)
        addr = Signal(max(len(self.write.addr), low))   # one port: write or read address
        m.d.comb += [
            wdata.eq(Value.cast(self.write.data)),
            addr.eq(Mux(self.write.en, self.write.addr, read.addr)),
        ]
        access = self.write.en | read.en
        outs = []
        for b in range(banks):
            out = Signal(lanes * _SPRAM_WIDTH, name=f"bank{b}_data")
            for lane in range(lanes):
                m.submodules[f"spram_{b}_{lane}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr[:low],
                    i_DATAIN=wdata.word_select(lane, _SPRAM_WIDTH),
                    i_MASKWREN=0b1111,
                    i_WREN=self.write.en,
                    i_CHIPSELECT=access & (addr[low:] == b) if banks > 1 else access,
                    i_CLOCK=ClockSignal(),
                    i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                    o_DATAOUT=out.word_select(lane, _SPRAM_WIDTH),
                )
            outs.append(out[:width])
        if banks == 1:
            m.d.comb += read.data.eq(outs[0])
            return
        read_bank = Signal(range(banks), reset_less=True)   # the bank `read.data` comes from
        with m.If(read.en & ~self.write.en):
            m.d.sync += read_bank.eq(addr[low:])
        with m.Switch(read_bank):
            for b, out in enumerate(outs):
                with m.Case(b):
                    m.d.comb += read.data.eq(out)


class BankedWeights(wiring.Component):
    """The weight memory of a configuration with ``fc_rows``: ``fc_rows`` banks of
    `systolic.hw.isa.fc_bank_depth` words, bank ``b`` holding addresses ``b * depth`` on, each
    built as column slices (a lane each where a bank is 2,048 words or more, a 2048 x 9 ECP5
    DP16KD; else two, 1024 x 18), each slice of each bank with its own copy of the read
    address register.

    A read's word is in ``read.data`` three cycles after its address (a cycle later than
    `SinglePortMemory`'s, ``registered``): every bank's word goes into a register, the block
    RAM's own output register on the ECP5 (`systolic.hw.outreg`), and the bank the address
    names is picked after it. With ``fc`` (a row-by-row fully connected layer,
    `systolic.hw.isa.describe_fc_rows`) bank ``b``'s address registers take bank ``b - 1``'s
    instead of the reader's address: bank ``b`` reads the address bank 0 read ``b`` cycles
    before, its word in ``rows_data[b]`` (row ``b``'s weights) three cycles after that.

    Like `SinglePortMemory`, it is written and read in different cycles, never both in one; a
    write lands a cycle after it is asked for.

    Members
    -------
    write : Out(memory.WritePort.Signature(addr_width, word))
    read : Out(memory.ReadPort.Signature(addr_width, word))
    fc : In(1)
        Row by row: bank ``b`` reads ``b`` cycles after bank 0.
    rows_data : Out(ArrayLayout(word, fc_rows))
        Each bank's registered word.
    """

    def __init__(self, cfg):
        self._cfg, self._depth = cfg, fc_bank_depth(cfg)
        word = word_layout(cfg)
        addr_width = cfg.weight_addr_bits
        super().__init__({
            "write": Out(memory.WritePort.Signature(addr_width=addr_width, shape=word)),
            "read": Out(memory.ReadPort.Signature(addr_width=addr_width, shape=word)),
            "fc": In(1),
            "rows_data": Out(data.ArrayLayout(word, cfg.fc_rows)),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        lanes = 1 if self._depth >= 2048 else 2
        banks, slices, part = cfg.fc_rows, cfg.cols // lanes, lanes * cfg.data_bits
        low = (self._depth - 1).bit_length()
        target = cfg.target
        rows_data = [Value.cast(self.rows_data[b]) for b in range(banks)]
        out = Value.cast(self.read.data)
        for i in range(slices):
            def copy(value, what, reset_less=False, i=i):
                return hard_register(m, value, name=f"s{i}_{what}", target=target,
                                     reset_less=reset_less)
            # The write's address and data, a copy a slice; its enable a copy a bank of it.
            waddr = copy(self.write.addr[:low], "waddr", reset_less=True)
            wdata = Signal(part, name=f"s{i}_wdata", reset_less=True)
            m.d.sync += wdata.eq(Value.cast(self.write.data).word_select(i, part))
            # The bank the read names, kept until the next read and taken with the word.
            sel = Signal(range(banks), name=f"s{i}_sel", reset_less=True)
            with m.If(self.read.en):
                m.d.sync += sel.eq(self.read.addr[low:])
            sel_q = delay(m, sel, 2, name=f"s{i}_sel_q", reset_less=True)
            raddr, ren = self.read.addr[:low], self.read.en
            words = []
            for b in range(banks):
                mem = memory.Memory(shape=part, depth=self._depth, init=[])
                m.submodules[f"mem{i}_{b}"] = mem
                w, r = mem.write_port(), mem.read_port()
                we = copy(self.write.en & (self.write.addr[low:] == b), f"b{b}_we")
                # Row by row, a chain: each bank's address register takes the one before.
                if b:
                    raddr, ren = Mux(self.fc, raddr, self.read.addr[:low]), Mux(
                        self.fc, ren, self.read.en)
                raddr = copy(raddr, f"b{b}_raddr", reset_less=True)
                ren = copy(ren, f"b{b}_re")
                word = Signal(part, name=f"s{i}_b{b}_q", reset_less=True)
                m.d.sync += word.eq(r.data)
                m.d.comb += [
                    w.addr.eq(waddr), w.data.eq(wdata), w.en.eq(we),
                    r.addr.eq(raddr), r.en.eq(ren & ~we),
                    rows_data[b].word_select(i, part).eq(word),
                ]
                words.append(word)
            with m.Switch(sel_q):
                for b, word in enumerate(words):
                    with m.Case(b):
                        m.d.comb += out.word_select(i, part).eq(word)
        return m


class Core(wiring.Component):
    """Memories plus convolution (and, when configured, pooling) engines; with ``cfg.eltwise``,
    the residual add and global average pooling engines too.

    Members
    -------
    load : In(stream.Signature(load_layout(cfg)))
        Memory writes; accepted while no layer runs.
    cmd : In(stream.Signature(layer_layout(cfg)))
        Layer descriptors, executed in order. Without ``fetch_ahead``, a descriptor's payload
        must hold still from its handshake until ``busy`` falls (the core keeps no copy).
    rd_addr : In(stream.Signature(act_addr_bits))
        Activation memory read-back requests; accepted while no layer runs.
    rd_data : Out(stream.Signature(word_layout(cfg)))
        Read-back data, in request order.
    busy : Out(1)
        A layer is in progress: from the second cycle after its command is taken to the cycle
        after its last (a register: a sequencer watching it sees no logic of the engines').
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
        # The weights' read address is registered in the memory, a copy per column's slice of
        # block RAMs (SPRAM on the iCE40: one copy): the convolution engine's address register.
        if cfg.fc_rows:
            # In banks, a row of the array each (`BankedWeights`).
            m.submodules.weights = wmem = BankedWeights(cfg)
        else:
            m.submodules.weights = wmem = SinglePortMemory(
                shape=word, depth=cfg.weight_depth, spram=cfg.target == "ice40",
                registered=True, slices=self._slices(), target=cfg.target)
        m.submodules.params = pmem = SinglePortMemory(shape=param_layout(cfg),
                                                      depth=cfg.param_words)
        # What the engines, the loads and the read-back ask of it, registered below.
        rd_sel = Signal(data.StructLayout({"en": 1, "addr": cfg.act_addr_bits}))
        # (``halves``: which halves of the word a write writes, bit 1 the upper ``cols / 2``
        # lanes: both but for a convolution's channel tile with ``halves``,
        # `systolic.hw.isa.pair_pixels`.)
        wr_layout = data.StructLayout({"en": 1, "addr": cfg.act_addr_bits, "data": word,
                                       "halves": 2})
        w_r, w_w = wmem.read, wmem.write
        p_r, p_w = pmem.read, pmem.write

        conv = ConvEngine(cfg)
        m.submodules.conv = local_reset(m, conv, name="conv", target=cfg.target)
        wiring.connect(m, conv.weight_read, w_r)  # only the engine reads the weights
        if cfg.fc_rows:
            m.d.comb += [wmem.fc.eq(conv.fc_rows), conv.weight_rows.eq(wmem.rows_data)]

        # Element-wise engines: each reads and writes activation memory itself.
        elt = []
        if cfg.eltwise:
            add, gap = AddEngine(cfg), GapEngine(cfg)
            m.submodules.add = local_reset(m, add, name="add", target=cfg.target)
            m.submodules.gap = local_reset(m, gap, name="gap", target=cfg.target)
            elt = [(add, Op.ADD), (gap, Op.GAP)]
            m.d.comb += add.param_read.data.eq(p_r.data)
        m.d.comb += [conv.param_read.data.eq(p_r.data), p_r.addr.eq(conv.param_read.addr),
                     p_r.en.eq(conv.param_read.en)]
        if elt:
            with m.If(add.busy):
                m.d.comb += [p_r.addr.eq(add.param_read.addr), p_r.en.eq(add.param_read.en)]

        # Commands: the core takes a descriptor into its own register while every engine is
        # idle, and a cycle later (CMD_LATENCY) the engine its opcode names takes it from
        # there, from a valid bit that is a register too. The engines read the register for
        # the whole layer. (The descriptor's bits fan out to every engine, and an engine's
        # start enables all of its layer registers: neither now follows logic.)
        # Without `fetch_ahead` (the iCE40, whose logic cells are what the design runs out
        # of) the engines read ``cmd.payload`` itself instead (161 cells): the controller
        # holds it still from the handshake until ``busy`` falls (its shift register is then
        # loaded between layers only).
        desc = (Signal(layer_layout(cfg), reset_less=True) if cfg.fetch_ahead
                else self.cmd.payload)
        engines = [(conv, (Op.CONV,))]
        pooling = Signal()
        if cfg.pool:
            pool = PoolEngine(cfg)
            m.submodules.pool = local_reset(m, pool, name="pool", target=cfg.target)
            pool_rd, pool_wr = self._pool_streams(m, pool, pooling, desc)
            engines.append((pool, (Op.MAXPOOL, Op.AVGPOOL)))
        engines += [(engine, (op,)) for engine, op in elt]
        assert CMD_LATENCY == 1
        pending = Signal(len(engines))
        busy = Signal()
        m.d.comb += busy.eq(conv.busy | pooling | Cat(e.busy for e, _ in elt).any()
                            | pending.any())
        # Ready for a command, a load or a read-back from a register: not busy in the last
        # cycle, and no command taken then. (Only a command makes an engine busy, so the core is
        # idle now too; ready comes a cycle after the last engine falls idle.) `busy` itself
        # is a wide OR of engine flags with fan-outs in the hundreds: this keeps it off the
        # command's enables and the memories' ports.
        # (``idle`` is low in the first cycle out of reset, as its copies below are.)
        idle, accept = Signal(), Signal()
        m.d.sync += [idle.eq(~busy & ~accept), self.busy.eq(busy)]
        m.d.comb += [self.cmd.ready.eq(idle), accept.eq(self.cmd.valid & idle)]
        if desc is not self.cmd.payload:
            # The descriptor register follows the command's payload while the core is idle
            # and holds from the cycle after it takes one (no engine reads it before). Its
            # bits are all over the chip: each group of them takes its enable from a copy of
            # ``idle`` of its own (`hard_register`), a flip-flop, not from ``accept``'s LUT
            # (``accept`` to the descriptor's enables was a worst path at 90 MHz).
            flat = desc.as_value()
            for k, lo in enumerate(range(0, len(flat), _DESC_GROUP)):
                own = hard_register(m, ~busy & ~accept, name=f"desc_idle{k}",
                                    target=cfg.target)
                with m.If(own):
                    m.d.sync += flat[lo:lo + _DESC_GROUP].eq(
                        self.cmd.payload.as_value()[lo:lo + _DESC_GROUP])
        for i, (engine, ops) in enumerate(engines):
            m.d.comb += [engine.cmd.payload.eq(desc), engine.cmd.valid.eq(pending[i])]
            with m.If(accept):
                m.d.sync += pending[i].eq(Cat(self.cmd.payload.op == op for op in ops).any())
            with m.Elif(engine.cmd.ready):
                m.d.sync += pending[i].eq(0)
        cmd_pending = pending

        # One counter for every engine: the cycles `busy` was high in the last layer (what
        # the convolution engine's own `cycles` reports for a convolution).
        with m.If(accept):
            m.d.sync += self.cycles.eq(0)
        with m.Elif(busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # Loads: one memory write per beat, only between layers.
        m.d.comb += self.load.ready.eq(idle)
        addr, payload = self.load.payload.addr, self.load.payload.data
        loading = self.load.valid & idle
        # Off the iCE40 (whose cells are spent) the parameter memory's write port is driven
        # from registers, as the activation and weight memories' are (they register theirs
        # inside): `loading` is the engines' busy flags and the load's valid and kind, and the
        # port's enable goes to each of the memory's block RAMs. A write lands a cycle after
        # the load; no engine reads parameters that soon after its command.
        p_sel = Signal(data.StructLayout({"en": 1, "addr": len(p_w.addr),
                                          "data": param_layout(cfg)}))
        if cfg.target == "ice40":
            m.d.comb += [p_w.en.eq(p_sel.en), p_w.addr.eq(p_sel.addr), p_w.data.eq(p_sel.data)]
        else:
            # (The address and the data are reset-less registers: only the enable is reset.)
            p_q = Signal(data.StructLayout({"addr": len(p_w.addr), "data": param_layout(cfg)}),
                         reset_less=True)
            m.d.sync += [p_w.en.eq(p_sel.en), p_q.addr.eq(p_sel.addr), p_q.data.eq(p_sel.data)]
            m.d.comb += [p_w.addr.eq(p_q.addr), p_w.data.eq(p_q.data)]
        for port, kind in ((w_w, Mem.WEIGHT), (p_sel, Mem.PARAM)):
            m.d.comb += [
                port.addr.eq(addr),
                port.data.eq(payload),
                port.en.eq(loading & (self.load.payload.mem == kind)),
            ]
        # The activation memory's writers: the engine that is busy, else the loads.
        writers = [(conv.busy, conv.act_write, conv.act_halves if cfg.fused_pool else 0b11)]
        if cfg.pool:
            writers.append((pooling, pool_wr, 0b11))
        writers += [(engine.busy, engine.act_write, 0b11) for engine, _ in elt]
        # (Engines in the order of `engines`, whose commands' `pending` bits are set a cycle
        # before the engines' own busy flags.)
        writing = Cat(flag for flag, _, _ in writers)

        def write_select(flags, name):
            """The write of the writer ``flags`` names (the first set), else the load's."""
            sel = Signal(wr_layout, name=name)
            m.d.comb += [sel.en.eq(loading & (self.load.payload.mem == Mem.ACT)),
                         sel.addr.eq(addr), sel.data.eq(payload), sel.halves.eq(0b11)]
            for i, (_, port, halves) in enumerate(writers):
                with (m.If if i == 0 else m.Elif)(flags[i]):
                    m.d.comb += [sel.en.eq(port.en), sel.addr.eq(port.addr),
                                 sel.data.eq(port.data), sel.halves.eq(halves)]
            return sel

        # The activation memory is registered on every side: the address, enable and write
        # data go into registers before the block RAM, and its read data into a register
        # before anything else. Each of its address and data bits fans out to tens of block
        # RAMs, and an ECP5 DP16KD's clock-to-output time alone is 5.8 ns. Every reader sees
        # a word ACT_READ_LATENCY = 3 cycles after asking for it, held until the next read's
        # word; a write lands a cycle after it is asked for. (A layer never reads its own
        # output, and the next layer or read-back starts after the last write has landed.)
        # On the ECP5 the registers are copied, one per column's slice of the block RAMs
        # (`registered_slices`), as the weight memory's are.
        # A dense convolution gives each column slice its own read address.
        take = Signal()                                 # a read-back request taken
        readers = [conv.act_read] + ([pool_rd] if cfg.pool else []) + [
            engine.act_read for engine, _ in elt]

        def read_select(flags, i):
            """Column slice ``i``'s read: that of the engine ``flags`` names, else the
            read-back's (with ``flags``' last bit, a dense convolution's lane ``i``)."""
            sel = Signal(data.StructLayout({"en": 1, "addr": cfg.act_addr_bits}),
                         name=f"s{i}_read")
            m.d.comb += [sel.addr.eq(self.rd_addr.payload), sel.en.eq(take)]
            for k, port in enumerate(readers):
                with (m.If if k == 0 else m.Elif)(flags[k]):
                    m.d.comb += [sel.addr.eq(port.addr), sel.en.eq(port.en)]
                    if k == 0 and cfg.dense_conv:
                        with m.If(flags[-1]):
                            m.d.comb += sel.addr.eq(conv.act_lanes[i])
            return sel

        # Each column slice picks its write and its read itself, from its own copy of the
        # engines' flags (`hard_register`), near its block RAMs: the engines' busy flags
        # changed every bit of every slice's ports, and that choice was the ULX3S's worst
        # path at 90 MHz (controller.core.pooling to a slice's write data register, 9.7 of
        # 11.2 ns routing). The copies are a cycle late, of flags that rise a cycle early (an
        # engine's command pending, or the engine busy), which no engine notices: none writes
        # in its first busy cycle or reads before it, none reads or writes after it falls idle,
        # when the loads and the read-back, which need a cycle of idle first, may.
        if self._slices() > 1:
            flags = [hard_register(m, Cat(cmd_pending | writing, *([conv.dense] if cfg.dense_conv
                                                                 else [])),
                                   name=f"s{i}_engine", target=cfg.target)
                     for i in range(self._slices())]
            wr_sel = [write_select(f, f"s{i}_write") for i, f in enumerate(flags)]
            rd_slices = [read_select(f, i) for i, f in enumerate(flags)]
        else:
            wr_sel, rd_slices = write_select(writing, "wr_sel"), rd_sel
        act_data = self._act_memory(m, rd_slices, wr_sel)
        # On the ECP5 `act_q` is the block RAMs' output register (`outreg`, which takes only
        # flip-flops without a reset). The iCE40's stays as it was: its logic cells share
        # a reset per block of eight, and the iCEBreaker's design, 98 % full, did not place.
        act_q = Signal(word, reset_less=cfg.target == "ecp5")
        read_d, read_dd = Signal(), Signal()
        m.d.sync += [read_d.eq(rd_sel.en), read_dd.eq(read_d)]
        with m.If(read_dd):
            m.d.sync += act_q.eq(act_data)

        # Read-back: one word in flight (requested, then in `act_q` until taken; the next
        # request is taken the cycle after, so that no logic runs from the reader's ready to
        # the memory's read enable). With ``deep_pipeline`` the word goes into a register of
        # the read-back's own, `rd_q`, a cycle later: from the block RAMs' output registers,
        # spread over the chip, through the controller's choice of a byte into its reply
        # register was the worst path of the LeNet design's 95 MHz build on the ULX3S (96.91
        # MHz: 10.3 ns, 7.8 of it routing).
        deep = cfg.deep_pipeline
        pending = Signal(ACT_READ_LATENCY - 1 + deep)
        m.d.comb += [
            take.eq(self.rd_addr.valid & self.rd_addr.ready),
            self.rd_addr.ready.eq(idle & ~pending.any() & ~self.rd_data.valid),
        ]
        if deep:
            rd_q = Signal(word, reset_less=True)
            with m.If(pending[-1]):                  # the word in `act_q`
                m.d.sync += rd_q.eq(act_q)
            m.d.comb += self.rd_data.payload.eq(rd_q)
        else:
            m.d.comb += self.rd_data.payload.eq(act_q)
        m.d.sync += pending.eq(Cat(take, pending[:-1]))
        with m.If(pending[-1]):
            m.d.sync += self.rd_data.valid.eq(1)
        with m.Elif(self.rd_data.ready):
            m.d.sync += self.rd_data.valid.eq(0)
        with m.If(conv.busy):
            m.d.comb += [rd_sel.addr.eq(conv.act_read.addr), rd_sel.en.eq(conv.act_read.en)]
        if cfg.pool:
            with m.Elif(pooling):
                m.d.comb += [rd_sel.addr.eq(pool_rd.addr), rd_sel.en.eq(pool_rd.en)]
        for engine, _ in elt:
            with m.Elif(engine.busy):
                m.d.comb += [rd_sel.addr.eq(engine.act_read.addr),
                             rd_sel.en.eq(engine.act_read.en)]
        with m.Else():
            m.d.comb += [rd_sel.addr.eq(self.rd_addr.payload), rd_sel.en.eq(take)]
        m.d.comb += conv.act_read.data.eq(act_q)
        for engine, _ in elt:
            m.d.comb += engine.act_read.data.eq(act_q)
        if cfg.pool:
            m.d.comb += pool.i_stream.payload.eq(act_q)
        return m

    def _slices(self):
        """Column slices of the activation and weight memories: one per column, but one on the
        iCE40 (whose logic cells are what it runs out of; its weights are in SPRAM). Dense
        convolutions need one per column (`AcceleratorConfig.dense_conv`)."""
        return 1 if self._cfg.target == "ice40" else self._cfg.cols

    def _act_memory(self, m, rd_sel, wr_sel):
        """The activation memory, its ports registered; returns its read data (a read's word
        two cycles after ``rd_sel``). ``rd_sel``, ``wr_sel``: the read and the write
        (``wr_layout``), or each column slice's where the memory is in slices."""
        cfg = self._cfg
        # A layer never reads a word in the cycle it writes it (its output does not overlap
        # its input): no_rw_check spares the fabric logic for that case (see above).
        attrs = {"no_rw_check": 1}
        if self._slices() > 1:
            m.submodules.act = sub = Module()
            return registered_slices(
                sub, width=cfg.word_bits, depth=cfg.act_depth, slices=self._slices(),
                target=cfg.target, read_addr=[r.addr for r in rd_sel],
                read_en=[r.en for r in rd_sel],
                write_addr=[w.addr for w in wr_sel],
                write_en=[w.en & w.halves[2 * i // cfg.cols] for i, w in enumerate(wr_sel)],
                write_data=[w.data for w in wr_sel], exclusive=False, attrs=attrs)
        m.submodules.act = act = memory.Memory(shape=word_layout(cfg), depth=cfg.act_depth,
                                               init=[], attrs=attrs)
        act_r, act_w = act.read_port(), act.write_port()
        m.d.sync += [act_r.en.eq(rd_sel.en), act_r.addr.eq(rd_sel.addr),
                     act_w.en.eq(wr_sel.en), act_w.addr.eq(wr_sel.addr),
                     act_w.data.eq(wr_sel.data)]
        return Value.cast(act_r.data)

    def _pool_streams(self, m, pool, pooling, cmd):
        """Stream the input map to ``pool`` and its output back; returns the memory accesses.

        The reader issues one read a cycle and the word reaches the engine `ACT_READ_LATENCY`
        cycles later, in the read data register. It never waits: the engine takes a word
        every cycle while a map streams in, because the core takes every word it puts out
        (``o_stream.ready`` is 1), which is what gates its input (`PoolEngine`).
        """
        cfg = self._cfg
        rd = Signal(data.StructLayout({"en": 1, "addr": cfg.act_addr_bits}))
        wr = Signal(data.StructLayout({"en": 1, "addr": cfg.act_addr_bits,
                                       "data": word_layout(cfg)}))
        rd_addr, wr_addr = Signal(cfg.act_addr_bits), Signal(cfg.act_addr_bits)
        # Position of the next word to read, each counted from 1 so that the ends are
        # equalities with descriptor fields, not with a field minus one (an adder each).
        x, y, cw = Signal(cfg.dim_bits), Signal(cfg.dim_bits), Signal(8)
        in_w, in_h, cin_words = Signal(cfg.dim_bits), Signal(cfg.dim_bits), Signal(8)
        reading = Signal()
        inflight = Signal(ACT_READ_LATENCY)     # inflight[k]: a word read k + 1 cycles ago
        with m.If(pool.cmd.valid & pool.cmd.ready):
            m.d.sync += [
                rd_addr.eq(cmd.in_base), wr_addr.eq(cmd.out_base),
                in_w.eq(cmd.in_w), in_h.eq(cmd.in_h), cin_words.eq(cmd.cin_words),
                x.eq(1), y.eq(1), cw.eq(1), reading.eq(1), pooling.eq(1),
            ]
        have = inflight[-1]
        m.d.sync += inflight.eq(Cat(reading, inflight[:-1]))
        m.d.comb += [pool.i_stream.valid.eq(have), rd.addr.eq(rd_addr), rd.en.eq(reading)]
        with m.If(reading):
            m.d.sync += [rd_addr.eq(rd_addr + 1), cw.eq(cw + 1)]
            with m.If(cw == cin_words):
                m.d.sync += [cw.eq(1), x.eq(x + 1)]
                with m.If(x == in_w):
                    m.d.sync += [x.eq(1), y.eq(y + 1)]
                    with m.If(y == in_h):
                        m.d.sync += reading.eq(0)
        m.d.comb += [
            pool.o_stream.ready.eq(1),
            wr.en.eq(pool.o_stream.valid),
            wr.addr.eq(wr_addr),
            wr.data.eq(pool.o_stream.payload),
        ]
        with m.If(pool.o_stream.valid):
            m.d.sync += wr_addr.eq(wr_addr + 1)
        with m.If(pooling & ~reading & ~inflight.any() & ~pool.busy & ~pool.cmd.valid):
            m.d.sync += pooling.eq(0)
        return rd, wr
