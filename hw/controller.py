"""The controller: the host's framed byte stream in, replies out, programs run on chip.

Every request frame gets exactly one reply frame (``docs/protocol.md``)::

    request  A5 | type | length (2, LE) | payload | CRC-16 (2, high byte first)
    reply    5A | type | length (2, LE) | payload | CRC-16 (2, high byte first)

The CRC (`systolic.hw.isa.FRAME_CRC`) covers type, length and payload. A request is buffered
whole and checked before anything happens: a corrupt, truncated, over-long or unknown frame, or
one that would run past a memory, is answered with an ERROR reply and changes nothing, so the
next frame is served exactly as if the bad one had never been sent. Bytes between frames are
dropped; a frame that stops arriving is abandoned after ``timeout_cycles`` quiet cycles.
"""

import contextlib

from amaranth.hdl import Array, Cat, Module, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .core import Core
from .isa import (
    FRAME_CRC,
    MAX_PAYLOAD,
    SYNC_REPLY,
    SYNC_REQUEST,
    Error,
    Mem,
    Op,
    Reply,
    Request,
    layer_layout,
    mem_depth,
    mem_word_bytes,
)
from .pool import times_const

__all__ = ["Controller"]


class Controller(wiring.Component):
    """Host interface and program sequencer around a `Core`.

    Parameters
    ----------
    cfg : AcceleratorConfig
    timeout_cycles : int
        Quiet cycles after which a partly received frame is dropped (reply: TRUNCATED). Set it
        well above the time between two bytes on the link (e.g. 10 bit times of the UART).

    Members
    -------
    rx : In(stream.Signature(8))
        Bytes from the host.
    tx : Out(stream.Signature(8))
        Bytes to the host.
    busy : Out(1)
        A program is running.
    error : Out(1)
        The last reply was an ERROR.
    """

    def __init__(self, cfg, *, timeout_cycles=1 << 20):
        if not isinstance(timeout_cycles, int) or timeout_cycles < 16:
            raise ValueError(f"timeout_cycles must be an integer >= 16, not {timeout_cycles!r}")
        self._cfg = cfg
        self._timeout = timeout_cycles
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "busy": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        m.submodules.core = core = Core(cfg)
        m.submodules.frame = frame = memory.Memory(shape=8, depth=MAX_PAYLOAD, init=[])
        fb_w, fb_r = frame.write_port(), frame.read_port()
        m.submodules.program = program = memory.Memory(shape=layer_layout(cfg),
                                                        depth=cfg.program_depth, init=[])
        pg_w, pg_r = program.write_port(), program.read_port()
        m.submodules.cycles = cycles = memory.Memory(shape=32, depth=cfg.program_depth, init=[])
        cy_w, cy_r = cycles.write_port(), cycles.read_port()
        m.submodules.rx_crc = rx_crc = FRAME_CRC(8).create()
        m.submodules.tx_crc = tx_crc = FRAME_CRC(8).create()

        # ---- Request state ----------------------------------------------------------------
        req = Signal(8)
        length = Signal(16)
        idx = Signal(16)
        pre = Array(Signal(8, name=f"pre{i}") for i in range(5))   # first payload bytes
        idle = Signal(range(self._timeout + 1))
        m.d.comb += [rx_crc.data.eq(self.rx.payload), fb_w.data.eq(self.rx.payload),
                     fb_w.addr.eq(idx)]
        field_a = Cat(pre[1], pre[2])            # WRITE addr / READ addr
        field_b = Cat(pre[3], pre[4])            # WRITE count
        read_count = Cat(pre[2], pre[3])         # READ count
        start, count = pre[0], pre[1]            # RUN / STATS

        # ---- Reply state ------------------------------------------------------------------
        kind = Signal(8)
        rlen = Signal(16)
        sent = Signal(16)
        regs = Array(Signal(8, name=f"reg{i}") for i in range(6))
        source = Signal(range(3))                # 0: regs, 1: activation words, 2: cycles
        wide = max(cfg.word_bits, 32)
        wreg = Signal(wide)
        k = Signal(range(max(cfg.cols, 4) + 1))
        addr = Signal(16)
        last_error = Signal(Error)
        prog_len = Signal(range(cfg.program_depth + 1))
        total = Signal(32)
        m.d.comb += tx_crc.data.eq(self.tx.payload)
        accepted = self.tx.valid & self.tx.ready

        # ---- WRITE / RUN state --------------------------------------------------------------
        wmem = Signal(2)
        left = Signal(16)
        wb_max = max(mem_word_bytes(cfg, mem) for mem in Mem)
        nbytes = Signal(range(wb_max + 1))
        word = Signal(8 * wb_max)
        pc = Signal(range(cfg.program_depth + 1))
        desc = Signal(layer_layout(cfg))

        def reply(m, code, n=0, src=0):
            m.d.sync += [kind.eq(code), rlen.eq(n), source.eq(src), sent.eq(0), k.eq(0)]
            m.d.sync += self.error.eq(code == Reply.ERROR.value)
            m.next = "TX_SYNC"

        def fail(m, error):
            m.d.sync += [regs[0].eq(error.value), regs[1].eq(req), last_error.eq(error)]
            reply(m, Reply.ERROR.value, 2)

        in_frame = Signal()
        with m.If(in_frame & ~self.rx.valid):
            m.d.sync += idle.eq(idle + 1)
        with m.Else():
            m.d.sync += idle.eq(0)
        timed_out = idle == self._timeout

        @contextlib.contextmanager
        def frame_byte():
            """In a state taking one byte of a frame: the byte (into the CRC), or a timeout."""
            m.d.comb += [in_frame.eq(1), self.rx.ready.eq(1), rx_crc.valid.eq(self.rx.valid)]
            with m.If(self.rx.valid):
                yield
            with m.Elif(timed_out):
                fail(m, Error.TRUNCATED)

        with m.FSM():
            with m.State("START"):
                # One cycle out of reset before taking bytes. (It also makes the state register
                # change once, which Icarus needs to evaluate the decoders hanging off it.)
                m.next = "SYNC"
            # -- receive --------------------------------------------------------------------
            with m.State("SYNC"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid & (self.rx.payload == SYNC_REQUEST)):
                    m.next = "TYPE"
            with m.State("TYPE"):
                m.d.comb += rx_crc.start.eq(1)
                with frame_byte():
                    m.d.sync += req.eq(self.rx.payload)
                    m.next = "LEN0"
            with m.State("LEN0"):
                with frame_byte():
                    m.d.sync += length[:8].eq(self.rx.payload)
                    m.next = "LEN1"
            with m.State("LEN1"):
                full_len = Cat(length[:8], self.rx.payload)
                with frame_byte():
                    m.d.sync += [length[8:].eq(self.rx.payload), idx.eq(0)]
                    with m.If(full_len > MAX_PAYLOAD):
                        m.next = "DRAIN"
                    with m.Elif(full_len == 0):
                        m.next = "CRC0"
                    with m.Else():
                        m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += fb_w.en.eq(self.rx.valid)
                with frame_byte():
                    m.d.sync += idx.eq(idx + 1)
                    for i in range(5):
                        with m.If(idx == i):
                            m.d.sync += pre[i].eq(self.rx.payload)
                    with m.If(idx == length - 1):
                        m.next = "CRC0"
            with m.State("CRC0"):
                with frame_byte():
                    m.next = "CRC1"
            with m.State("CRC1"):
                with frame_byte():
                    m.next = "CHECK"
            with m.State("DRAIN"):
                # An over-long frame: swallow it until the line goes quiet, then answer once.
                m.d.comb += [in_frame.eq(1), self.rx.ready.eq(1)]
                with m.If(timed_out):
                    fail(m, Error.BAD_LENGTH)
            with m.State("CHECK"):
                with m.If(~rx_crc.match_detected):
                    fail(m, Error.BAD_CRC)
                with m.Else():
                    m.next = "EXEC"

            # -- decode and check ---------------------------------------------------------------
            with m.State("EXEC"):
                with m.Switch(req):
                    with m.Case(Request.WRITE):
                        self._check_write(m, cfg, fail, length, pre, field_a, field_b,
                                          wmem, addr, left, nbytes, idx)
                    with m.Case(Request.READ):
                        with m.If(length != 4):
                            fail(m, Error.BAD_LENGTH)
                        with m.Elif(Cat(pre[0], pre[1]) + read_count > cfg.act_depth):
                            fail(m, Error.BAD_ADDRESS)
                        with m.Else():
                            m.d.sync += addr.eq(Cat(pre[0], pre[1]))
                            reply(m, Reply.DATA.value, times_const(read_count, cfg.cols), 1)
                    with m.Case(Request.RUN):
                        with m.If(length != 2):
                            fail(m, Error.BAD_LENGTH)
                        with m.Elif(start + count > prog_len):
                            fail(m, Error.BAD_ADDRESS)
                        with m.Else():
                            m.d.sync += [pc.eq(start), left.eq(count), total.eq(0)]
                            m.next = "RUN_FETCH"
                    with m.Case(Request.STATUS):
                        with m.If(length != 0):
                            fail(m, Error.BAD_LENGTH)
                        with m.Else():
                            m.d.sync += [regs[0].eq(last_error), regs[1].eq(prog_len)]
                            m.d.sync += [regs[2 + i].eq(total[8 * i:8 * i + 8]) for i in range(4)]
                            reply(m, Reply.STATUS.value, 6)
                    with m.Case(Request.STATS):
                        with m.If(length != 2):
                            fail(m, Error.BAD_LENGTH)
                        with m.Elif(start + count > cfg.program_depth):
                            fail(m, Error.BAD_ADDRESS)
                        with m.Else():
                            m.d.sync += addr.eq(start)
                            reply(m, Reply.DATA.value, count << 2, 2)
                    with m.Default():
                        fail(m, Error.UNKNOWN_REQUEST)

            # -- WRITE: words from the frame buffer into a memory -------------------------------
            with m.State("WRITE_ADDR"):
                m.d.comb += [fb_r.addr.eq(idx), fb_r.en.eq(1)]
                m.next = "WRITE_BYTE"
            with m.State("WRITE_BYTE"):
                m.d.sync += [word.eq(Cat(word[8:], fb_r.data)), idx.eq(idx + 1),
                             nbytes.eq(nbytes - 1)]
                with m.If(nbytes == 1):
                    m.next = "WRITE_WORD"
                with m.Else():
                    m.next = "WRITE_ADDR"
            with m.State("WRITE_WORD"):
                aligned = Signal.like(word)
                with m.Switch(wmem):
                    for mem in Mem:
                        with m.Case(mem):
                            m.d.comb += aligned.eq(word >> 8 * (wb_max - mem_word_bytes(cfg, mem)))
                m.d.comb += [
                    pg_w.addr.eq(addr), pg_w.data.eq(aligned),
                    core.load.payload.mem.eq(wmem), core.load.payload.addr.eq(addr),
                    core.load.payload.data.eq(aligned),
                ]
                done = Signal()
                with m.If(wmem == Mem.PROGRAM):
                    m.d.comb += [pg_w.en.eq(1), done.eq(1)]
                    with m.If(addr + 1 > prog_len):
                        m.d.sync += prog_len.eq(addr + 1)
                with m.Else():
                    m.d.comb += [core.load.valid.eq(1), done.eq(core.load.ready)]
                with m.If(done):
                    m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]
                    with m.Switch(wmem):
                        for mem in Mem:
                            with m.Case(mem):
                                m.d.sync += nbytes.eq(mem_word_bytes(cfg, mem))
                    with m.If(left == 1):
                        reply(m, Reply.ACK.value)
                    with m.Else():
                        m.next = "WRITE_ADDR"

            # -- RUN: the program's layers, one after the other ----------------------------------
            with m.State("RUN_FETCH"):
                m.d.comb += [self.busy.eq(1), pg_r.addr.eq(pc), pg_r.en.eq(1)]
                with m.If(left == 0):
                    m.d.sync += [regs[i].eq(total[8 * i:8 * i + 8]) for i in range(4)]
                    reply(m, Reply.DONE.value, 4)
                with m.Else():
                    m.next = "RUN_DECODE"
            with m.State("RUN_DECODE"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += desc.eq(pg_r.data)
                op = pg_r.data.op.as_value()
                with m.If((op != Op.CONV.value) & (op != Op.MAXPOOL.value)
                          & (op != Op.AVGPOOL.value)):
                    fail(m, Error.BAD_DESCRIPTOR)
                with m.Else():
                    m.next = "RUN_ISSUE"
            with m.State("RUN_ISSUE"):
                m.d.comb += [self.busy.eq(1), core.cmd.valid.eq(1)]
                with m.If(core.cmd.ready):
                    m.next = "RUN_START"
            with m.State("RUN_START"):
                m.d.comb += self.busy.eq(1)
                m.next = "RUN_WAIT"
            with m.State("RUN_WAIT"):
                m.d.comb += self.busy.eq(1)
                with m.If(~core.busy):
                    m.d.comb += [cy_w.addr.eq(pc), cy_w.data.eq(core.cycles), cy_w.en.eq(1)]
                    m.d.sync += [total.eq(total + core.cycles), pc.eq(pc + 1),
                                 left.eq(left - 1)]
                    m.next = "RUN_FETCH"

            # -- transmit a reply -----------------------------------------------------------------
            with m.State("TX_SYNC"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(SYNC_REPLY)]
                with m.If(self.tx.ready):
                    m.next = "TX_KIND"
            with m.State("TX_KIND"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(kind),
                             tx_crc.start.eq(1), tx_crc.valid.eq(accepted)]
                with m.If(self.tx.ready):
                    m.next = "TX_LEN0"
            with m.State("TX_LEN0"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(rlen[:8]),
                             tx_crc.valid.eq(accepted)]
                with m.If(self.tx.ready):
                    m.next = "TX_LEN1"
            with m.State("TX_LEN1"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(rlen[8:]),
                             tx_crc.valid.eq(accepted)]
                with m.If(self.tx.ready):
                    with m.If(rlen == 0):
                        m.next = "TX_CRC0"
                    with m.Elif(source == 0):
                        m.next = "TX_REGS"
                    with m.Elif(source == 1):
                        m.next = "TX_ACT_REQ"
                    with m.Else():
                        m.next = "TX_CYC_REQ"
            with m.State("TX_REGS"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(regs[sent[:3]]),
                             tx_crc.valid.eq(accepted)]
                with m.If(self.tx.ready):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == rlen - 1):
                        m.next = "TX_CRC0"
            with m.State("TX_ACT_REQ"):
                m.d.comb += [core.rd_addr.valid.eq(1), core.rd_addr.payload.eq(addr)]
                with m.If(core.rd_addr.ready):
                    m.d.sync += addr.eq(addr + 1)
                    m.next = "TX_ACT_DATA"
            with m.State("TX_ACT_DATA"):
                m.d.comb += core.rd_data.ready.eq(1)
                with m.If(core.rd_data.valid):
                    m.d.sync += [wreg.eq(core.rd_data.payload.as_value()), k.eq(cfg.cols)]
                    m.next = "TX_WORD"
            with m.State("TX_CYC_REQ"):
                m.d.comb += [cy_r.addr.eq(addr), cy_r.en.eq(1)]
                m.d.sync += addr.eq(addr + 1)
                m.next = "TX_CYC_DATA"
            with m.State("TX_CYC_DATA"):
                m.d.sync += [wreg.eq(cy_r.data), k.eq(4)]
                m.next = "TX_WORD"
            with m.State("TX_WORD"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(wreg[:8]),
                             tx_crc.valid.eq(accepted)]
                with m.If(self.tx.ready):
                    m.d.sync += [wreg.eq(wreg >> 8), k.eq(k - 1), sent.eq(sent + 1)]
                    with m.If(sent == rlen - 1):
                        m.next = "TX_CRC0"
                    with m.Elif(k == 1):
                        m.next = "TX_NEXT"
            with m.State("TX_NEXT"):
                with m.If(source == 1):
                    m.next = "TX_ACT_REQ"
                with m.Else():
                    m.next = "TX_CYC_REQ"
            with m.State("TX_CRC0"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(tx_crc.crc[8:])]
                with m.If(self.tx.ready):
                    m.next = "TX_CRC1"
            with m.State("TX_CRC1"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(tx_crc.crc[:8])]
                with m.If(self.tx.ready):
                    m.next = "SYNC"

        m.d.comb += core.cmd.payload.eq(desc)
        return m

    @staticmethod
    def _check_write(m, cfg, fail, length, pre, addr_field, count_field, wmem, addr, left,
                     nbytes, idx):
        """EXEC for WRITE: check memory, length and range; then start applying the words."""
        with m.If(length < 5):
            fail(m, Error.BAD_LENGTH)
        with m.Elif(pre[0] > Mem.PROGRAM.value):
            fail(m, Error.BAD_MEMORY)
        with m.Else():
            with m.Switch(pre[0]):
                for mem in Mem:
                    with m.Case(mem.value):
                        expect = 5 + times_const(count_field, mem_word_bytes(cfg, mem))
                        with m.If((length != expect) | (count_field == 0)):
                            fail(m, Error.BAD_LENGTH)
                        with m.Elif(addr_field + count_field > mem_depth(cfg, mem)):
                            fail(m, Error.BAD_ADDRESS)
                        with m.Else():
                            m.d.sync += [wmem.eq(mem.value), addr.eq(addr_field),
                                         left.eq(count_field), idx.eq(5),
                                         nbytes.eq(mem_word_bytes(cfg, mem))]
                            m.next = "WRITE_ADDR"
