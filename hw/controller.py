"""The controller: the host's framed byte stream in, replies out, programs run on chip.

Every request frame gets exactly one reply frame (``docs/protocol.md``)::

    request  A5 | type | length (2, LE) | payload | CRC-16 (2, high byte first)
    reply    5A | type | length (2, LE) | payload | CRC-16 (2, high byte first)

The CRC (`systolic.hw.isa.FRAME_CRC`) covers type, length and payload. A request is buffered
whole and checked before anything happens: a corrupt, truncated, over-long or unknown frame, or
one that would run past a memory, is answered with an ERROR reply and changes nothing, so the
next frame is served exactly as if the bad one had never been sent. (Only a RUN that meets an
entry the engines cannot execute, BAD_DESCRIPTOR, has run the entries before it.) IDENTIFY is
answered with the configuration, constants built into the gateware (`isa.IDENTIFY_FIELDS`).
Bytes between frames are dropped; a frame that stops arriving is abandoned after
``timeout_cycles`` quiet cycles.
A fault on the serial line (``line_fault``: a framing error or a break) in the middle of a
frame drops it: the rest of it is swallowed until the line is quiet, then answered once with
LINE_FAULT. Between frames, a line fault is no more than garbage (a break there may be the
host getting the line back in step).

The controller is built to be small next to the engines: it moves bytes, not words, wherever it
can. The program memory holds the descriptors as the host sent them, a byte per address; RUN
assembles each one in a shift register (with ``fetch_ahead``, the next entry's while the core
runs a layer: the core holds its own copy). Each entry's cycle counter is stored a byte at a
time. A run's total counts every cycle of the run, those between the layers included; without
``fetch_ahead`` (the iCEBreaker, short of logic cells) it is the sum of the layers' counters,
summed a byte at a time. Replies are sent straight from the registers and memories their bytes
live in.
"""

import contextlib

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import enum, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .core import Core
from .isa import (
    FRAME_CRC,
    MAX_PAYLOAD,
    SYNC_REPLY,
    SYNC_REQUEST,
    WRITE_TARGET,
    Error,
    Mem,
    Op,
    Reply,
    Request,
    identify_payload,
    layer_layout,
    mem_depth,
    mem_word_bytes,
)
from .pool import times_const
from .replica import hard_register, local_reset
from .synth import one_hot

__all__ = ["Controller", "fetch_cycles"]

# The fixed part of a WRITE payload: mem (1), addr (2), count (2).
_WRITE_HEAD = 5
_NO_RW_CHECK = {"no_rw_check": 1}


class _Payload(enum.Enum, shape=3):
    """What a reply carries, and so its type."""
    NONE = 0      #: ACK
    ERROR = 1     #: last error, request type
    STATUS = 2    #: last error, program length, total cycles
    DONE = 3      #: total cycles
    ACT = 4       #: activation words (DATA)
    CYCLES = 5    #: per-entry cycle counters (DATA)
    IDENTITY = 6  #: the configuration (constants)


_KIND = {_Payload.NONE: Reply.ACK, _Payload.ERROR: Reply.ERROR, _Payload.STATUS: Reply.STATUS,
         _Payload.DONE: Reply.DONE, _Payload.ACT: Reply.DATA, _Payload.CYCLES: Reply.DATA,
         _Payload.IDENTITY: Reply.IDENTITY}


# The controller's states, encoded in this order (see `Controller.elaborate`): the layer
# states (busy) next to START in codes 0-7, the request's (taking bytes) in 8-15, the reply's
# (sending them) in 16-29.
_STATE_ORDER = (
    "START", "RUN_FETCH", "RUN_LOAD", "RUN_DECODE", "RUN_ISSUE", "RUN_START", "RUN_WAIT",
    "RUN_STORE",
    "SYNC", "TYPE", "LEN0", "LEN1", "PAYLOAD", "CRC0", "CRC1", "DRAIN",      # rx.ready
    "TX_SYNC", "TX_KIND", "TX_LEN0", "TX_LEN1", "TX_ERROR", "TX_SECOND", "TX_TOTAL",
    "TX_IDENTITY", "TX_ACT_REQ", "TX_ACT", "TX_CYC_REQ", "TX_CYC", "TX_CRC0", "TX_CRC1",
    "EXEC", "WRITE_PRIME", "WRITE_FILL", "WRITE_BYTE", "WRITE_WORD",
)


def _above(value, const):
    """``value > const`` for an unsigned ``value``, as logic: some bit of ``value`` is set where
    ``const``'s is clear, and the two agree above it. (Yosys builds ``>`` as a subtractor, a
    carry chain as wide as ``value`` on the iCE40; these flags do not need its speed.)"""
    terms = []
    for i in range(len(value)):
        if not (const >> i) & 1:
            high = value[i + 1:]
            terms.append(value[i] & (high == (const >> (i + 1))) if len(high) else value[i])
    return Cat(*terms).any() if 0 <= const < (1 << len(value)) - 1 else Const(const < 0)


def _register_slice(m, i, o):
    """Pass stream ``i`` on to ``o`` through registers, a beat a cycle: ``o.valid`` and
    ``o.payload`` are flip-flops and ``i.ready`` is one (a second register takes the beat that
    arrives while ``o`` is stalled), so that no logic runs from ``o.ready`` back into ``i``'s
    source."""
    spare, spare_valid = Signal.like(i.payload), Signal()
    take = i.valid & ~spare_valid
    m.d.comb += i.ready.eq(~spare_valid)
    with m.If(~o.valid | o.ready):
        with m.If(spare_valid):
            m.d.sync += [o.payload.eq(spare), o.valid.eq(1), spare_valid.eq(0)]
        with m.Else():
            m.d.sync += [o.payload.eq(i.payload), o.valid.eq(take)]
    with m.Elif(take):
        m.d.sync += [spare.eq(i.payload), spare_valid.eq(1)]


def _shift_lags(cfg):
    """Whether the controller's shift register moves a cycle behind its state machine: with
    ``deep_pipeline`` where the core takes its words from a copy of it (``fetch_ahead``)."""
    return cfg.fetch_ahead and cfg.deep_pipeline


def fetch_cycles(cfg):
    """The cycles RUN_LOAD takes to assemble a descriptor: a byte a cycle, one more where the
    program memory's reads are registered (``cfg.fetch_ahead``) and one more where the shift
    register moves a cycle behind the state machine (`_shift_lags`)."""
    return mem_word_bytes(cfg, Mem.PROGRAM) + cfg.fetch_ahead + _shift_lags(cfg)


def runnable_ops(cfg):
    """The operations ``cfg``'s engines execute; RUN rejects any other as BAD_DESCRIPTOR."""
    ops = [Op.CONV]
    if cfg.pool:
        ops.append(Op.MAXPOOL)
        if cfg.pool_avg:
            ops.append(Op.AVGPOOL)
    if cfg.eltwise:
        ops += [Op.ADD, Op.GAP]
    return ops


class Controller(wiring.Component):
    """Host interface and program sequencer around a `Core`.

    Parameters
    ----------
    cfg : AcceleratorConfig
    timeout_cycles : int
        Quiet cycles after which a partly received frame is dropped (reply: TRUNCATED), and
        for which a broken one is swallowed before its ERROR reply. Set it well above the time
        between two bytes on the link (e.g. 10 bit times of the UART).

    Members
    -------
    rx : In(stream.Signature(8))
        Bytes from the host.
    tx : Out(stream.Signature(8))
        Bytes to the host.
    busy : Out(1)
        A program is running.
    error : Out(1)
        The last reply was an ERROR (from the cycle after it starts).
    line_fault : In(1)
        The link's receiver sees a framing error or a break (high while the break lasts: the
        line is not quiet then); tie to 0 on a link that has none.
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
            "line_fault": In(1),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        core = Core(cfg)
        m.submodules.core = local_reset(m, core, name="core", target=cfg.target)
        # On the ECP5 the host's bytes come through a register slice: the state machine sees a
        # byte and its valid bit from flip-flops, and its ready (the state's decoding) goes no
        # further than the slice, not into the link's FIFO and its counters. A line fault is
        # delayed as the bytes are, so that it meets them in the same order. (The iCE40's
        # design is short of cells, not of levels.)
        line_fault = self.line_fault
        if cfg.target == "ecp5":
            rx = stream.Signature(8).create()
            _register_slice(m, self.rx, rx)
            line_fault = Signal()
            m.d.sync += line_fault.eq(self.line_fault)
        else:
            rx = self.rx
        desc_bytes = mem_word_bytes(cfg, Mem.PROGRAM)
        data_bytes = max(mem_word_bytes(cfg, mem) for mem in (Mem.ACT, Mem.WEIGHT, Mem.PARAM))
        # Neither memory is read and written in the same cycle, so synthesis need not add
        # logic for a collision (``no_rw_check``).
        m.submodules.frame = frame = memory.Memory(shape=8, depth=MAX_PAYLOAD, init=[],
                                                   attrs=_NO_RW_CHECK)
        fb_w, fb_r = frame.write_port(), frame.read_port()
        # The block RAMs' read data goes into a register before any logic (an ECP5 DP16KD's
        # clock-to-output time alone is 5.8 ns): the frame buffer's as WRITE takes its bytes
        # (``fb_q``), the program memory's every cycle (``pg_q``: what was read two cycles
        # ago or earlier, unless ``pg_lag`` says a read was made in the last one). Not without
        # `fetch_ahead` (the iCE40, which is short of cells, not of levels): there the data is
        # used as read.
        piped = cfg.fetch_ahead
        if piped:
            # (fb_q, pg_q: the block RAMs' output registers on the board, `outreg`.)
            fb_q, pg_q = Signal(8, reset_less=True), Signal(8, reset_less=True)
            pg_lag = Signal()
        else:
            fb_q, pg_lag = fb_r.data, Const(0)
        # The program, a byte per address: byte b of entry p at ``b * program_depth + p``.
        # Bytes 0 .. desc_bytes - 1 are the descriptor as received (little-endian), the four
        # after it the entry's cycle counter of its last run.
        pbits = (cfg.program_depth - 1).bit_length()
        m.submodules.program = program = memory.Memory(
            shape=8, depth=cfg.program_depth * (desc_bytes + 4), init=[], attrs=_NO_RW_CHECK)
        pg_w, pg_r = program.write_port(), program.read_port()
        if piped:
            m.d.sync += [pg_q.eq(pg_r.data), pg_lag.eq(pg_r.en)]
        else:
            pg_q = pg_r.data
        # One frame check serves both directions: a reply never overlaps a request. It starts
        # afresh out of reset (while waiting for a frame's sync byte, or sending one), which
        # costs less than its ``start`` input.
        crc, crc_restart = FRAME_CRC(8).create(), Signal()
        m.submodules.crc = ResetInserter(crc_restart)(crc)

        # ---- Request state ----------------------------------------------------------------
        req = Signal(8)
        length = Signal(range(MAX_PAYLOAD + 1))  # checked against MAX_PAYLOAD on arrival
        idx = Signal(range(MAX_PAYLOAD + 1))
        # ``idx == length`` in PAYLOAD, kept in a register as the bytes arrive, so that the
        # state machine looks at a flip-flop. It is worked out from a count of the bytes still
        # to come (a comparison with a constant) rather than from ``idx + 1 == length``, which
        # synthesis makes a ripple of a dozen LUTs.
        left = Signal.like(length)
        at_end = Signal()
        # The first payload bytes, those of any request but WRITE one place up, so that the
        # fields line up: WRITE's mem, addr and count are at 0, 1 and 3, READ's addr and count
        # at 1 and 3, RUN's and STATS's start and count at 1 and 2. They hold still until the
        # next request.
        pre = [Signal(8, name=f"pre{i}") for i in range(_WRITE_HEAD)]
        m.d.comb += [fb_w.data.eq(rx.payload), fb_w.addr.eq(idx), fb_r.addr.eq(idx)]
        target = WRITE_TARGET(pre[0])
        mem, lanes = target.mem, target.lanes
        first, second = Cat(pre[1], pre[2]), Cat(pre[3], pre[4])         # addr, count
        start, count = pre[1], pre[2]                                     # RUN, STATS
        # One past the last word (WRITE, READ) or entry (RUN, STATS): worked out every cycle,
        # a cycle after ``pre`` (see `_check` for why that is soon enough).
        span_end = Signal(len(first) + 1)
        end = Signal(len(start) + 1)
        m.d.sync += [span_end.eq(first + second), end.eq(start + count)]

        # Quiet cycles in a frame, counted up from 2**k - timeout_cycles: the top bit is set
        # after timeout_cycles of them, which needs no comparator.
        k = (self._timeout - 1).bit_length()
        idle = Signal(k + 1, init=(1 << k) - self._timeout)
        in_frame = Signal()
        with m.If(in_frame & ~rx.valid & ~line_fault):
            m.d.sync += idle.eq(idle + 1)
        with m.Else():
            m.d.sync += idle.eq(idle.init)
        timed_out = idle[-1]

        # ---- Reply state ------------------------------------------------------------------
        payload = Signal(_Payload)
        # IDENTIFY's reply: constants, sent a byte at a time (indexed by ``idx``).
        identity = identify_payload(cfg, runnable_ops(cfg))
        # Its byte at ``idx``, from a register: ``idx`` is set in EXEC, long before, and moves
        # on as TX_IDENTITY's byte is taken, two cycles at least before the next one can be (the
        # output register is full for a cycle).
        id_byte = Signal(8)
        id_last = Signal()          # ``idx`` at the last byte, from a register as well
        m.d.sync += id_last.eq(idx == len(identity) - 1)
        with m.Switch(idx):
            for i, b in enumerate(identity):
                with m.Case(i):
                    m.d.sync += id_byte.eq(b)
        last_error = Signal(Error)
        prog_len = Signal(range(cfg.program_depth + 1))
        # The last run's cycles, cleared in EXEC. With ``fetch_ahead``: every cycle after EXEC
        # to its reply (`busy`), the fetching of descriptors and the storing of counters between
        # layers included; its bytes are picked as they are sent. Without (the iCE40, where a
        # counter and its byte selection took 49 logic cells more): the layers' counters, added
        # a byte at a time in RUN_STORE as ``total`` turns round once, as it turns round once
        # more while its bytes are sent.
        total = Signal(32)
        carry = Signal()
        addend = Signal(8)
        acc = total[:8] + addend + carry
        # A reply's bytes leave through a register, taken when it is empty: the state machine
        # looks at that flip-flop rather than at the transmitter's handshake, which comes from
        # the far side of the chip (by the pin) and chained into every reply state (an
        # iCEBreaker critical path, 40 ns). It passes a byte every other cycle at most, far
        # more than a UART takes.
        tx_valid, tx_payload, tx_ready = Signal(), Signal(8), Signal()
        m.d.comb += tx_ready.eq(~self.tx.valid)
        with m.If(self.tx.ready):
            m.d.sync += self.tx.valid.eq(0)
        with m.If(tx_valid & tx_ready):
            m.d.sync += [self.tx.valid.eq(1), self.tx.payload.eq(tx_payload)]
        # A reply's byte goes into the CRC a cycle after it is taken, from the output register
        # (``crc_tx`` marks it), not from the state machine's choice of byte (an iCEBreaker
        # critical path, fsm_state -> crc, 11 LUTs). The CRC bytes come two cycles at least
        # after the last byte they cover is taken (the output register is full for a cycle).
        crc_tx = Signal()
        m.d.sync += crc_tx.eq(0)
        m.d.comb += [crc.data.eq(Mux(crc_tx, self.tx.payload, rx.payload)),
                     crc.valid.eq(crc_tx)]
        reply_len = Signal(16)
        with m.Switch(payload):
            with m.Case(_Payload.ERROR):
                m.d.comb += reply_len.eq(2)
            with m.Case(_Payload.STATUS):
                m.d.comb += reply_len.eq(6)
            with m.Case(_Payload.DONE):
                m.d.comb += reply_len.eq(4)
            with m.Case(_Payload.ACT):
                m.d.comb += reply_len.eq(times_const(second, cfg.cols))
            with m.Case(_Payload.CYCLES):
                m.d.comb += reply_len.eq(count << 2)
            with m.Case(_Payload.IDENTITY):
                m.d.comb += reply_len.eq(len(identity))
        # The length and ``reply_len == 0`` (for TX_LEN1) from registers: ``payload`` is set on
        # the way into TX_SYNC, and TX_LEN0 comes three cycles later at the earliest (TX_SYNC's
        # byte fills the output register, which then takes a cycle to empty); ``pre`` holds
        # still long before. (The length of an ACT reply is a sum of shifted counts.)
        reply_len_q, no_payload = Signal.like(reply_len), Signal()
        m.d.sync += [reply_len_q.eq(reply_len), no_payload.eq(reply_len == 0)]

        # ---- WRITE / READ / RUN / STATS state -----------------------------------------------
        # Scratch registers, loaded for every request whether it is carried out or not.
        addr = Signal(max(cfg.act_addr_bits + 1, cfg.weight_addr_bits, cfg.param_addr_bits,
                          MAX_PAYLOAD.bit_length()))
        pc = Signal(range(cfg.program_depth + 1))   # program entry
        # ``addr == span_end``, ``addr + 1 == span_end`` and ``pc == end``, set with ``addr``
        # and ``pc`` (`step_addr`, `step_pc`; EXEC from the request's count), so that the
        # state machine looks at flip-flops, not at an adder and a comparator.
        addr_end, addr_last, pc_end = Signal(), Signal(), Signal()
        # With ``fetch_ahead`` the core keeps its own copy of a descriptor, and RUN fetches an
        # entry while the one before runs (`ahead`: one is running, the entry ``run_pc``,
        # whose counter goes into the program memory when it ends).
        ahead_ok = cfg.fetch_ahead
        run_pc, ahead = Signal.like(pc, name="run_pc"), Signal(name="ahead")
        j = Signal(range(max(desc_bytes + 4, data_bytes, cfg.cols)))    # byte of a word/entry
        # Descriptors (RUN) and data words (WRITE) are assembled in one shift register: the
        # bytes come in at the top and move down a byte at a time. The shorter of the two kinds
        # of data word comes in lower down, so that it ends where the longer one starts.
        shift = Signal(8 * max(desc_bytes, data_bytes), reset_less=True)     # data: not reset

        def desc_of(bits):
            return layer_layout(cfg)(bits[len(shift) - 8 * desc_bytes:][:layer_layout(cfg).size])

        desc = desc_of(shift)
        word_at = len(shift) // 8 - data_bytes
        # With ``fetch_ahead`` the core takes its descriptors and the memories their words from
        # a copy of the shift register a cycle behind it (`shift_q`, loaded every cycle: no
        # enable to fan out). The words go to registers by each memory's block RAMs, all over
        # the chip, and the descriptor to the core's copy; the shift register itself, and its
        # enables, can then sit together by the controller. (Taking each of its bytes to the
        # memories' registers, they were spread across the die, and the route from `shift_go`
        # to their enables, 9.1 ns, was the 8x16's worst path at 90 MHz.) A descriptor's last
        # byte comes in at least a cycle before the core takes it (RUN_DECODE); a data word
        # waits a cycle for it (WRITE_HOLD).
        shift_q = Signal.like(shift, name="shift_q", reset_less=True) if piped else shift
        late_pack = piped and cfg.deep_pipeline     # (a packed word: see `shift_next`)
        if piped and not late_pack:
            m.d.sync += shift_q.eq(shift)
        param_bytes = mem_word_bytes(cfg, Mem.PARAM)
        short_bytes = min(cfg.cols, param_bytes)
        short = (mem == Mem.PARAM.value) if param_bytes < cfg.cols else (mem != Mem.PARAM.value)
        act = shift[8 * word_at:8 * (word_at + cfg.cols)]
        # The shift register moves in WRITE_BYTE and RUN_LOAD. Its enable comes from a flip-flop
        # set on the way into those states and cleared on the way out (``shift_go``: the next
        # cycle's), not from the state's decoding: it goes to every one of the register's
        # ``8 * data_bytes`` flip-flops, which sit beside the memories all over the chip. On the
        # ECP5 each byte has a copy of it of its own (`hard_register`), next to the byte.
        # With `deep_pipeline` the shift register moves a cycle behind the state machine: its
        # bytes and ``shift_go`` each pass a register first (``lag_byte``, ``shift_lag``), so
        # that ``shift_go``'s logic ends at one flip-flop by the state machine and the copies
        # are loaded from that one, with no logic between (``shift_go`` into the copies was on
        # every failing route of `lenet --dense-raster --no-pool`'s stalled builds at 105 MHz:
        # `bench/ripup.py`). The states that take what the register holds wait a cycle more
        # for it (WRITE_HOLD twice, RUN_LOAD a cycle longer: `fetch_cycles`).
        lagged = _shift_lags(cfg)
        shift_go = Signal()
        shift_lag = Signal(name="shift_lag")
        copies = len(shift) // 8 if piped else 1
        shift_en = [hard_register(m, shift_lag if lagged else shift_go, name=f"shift_en{k}",
                                  target=cfg.target)
                    for k in range(copies)]
        if lagged:
            m.d.sync += shift_lag.eq(shift_go)
        held = shift_lag if lagged else shift_en[0]
        m.d.comb += shift_go.eq(held)               # (unless a state changes it)
        # ``j == word_last`` in WRITE_BYTE and ``j == fetch_cycles(cfg)`` in RUN_LOAD, the
        # ends of those states, as flip-flops set with ``j`` (in those states and the ones that
        # lead into them, where ``j`` is 0): they decide ``shift_go``, whose copies are all over
        # the chip, so it must come from registers, not from a comparator (the 8x16's worst path
        # at 75 MHz on three seeds in four).
        byte_end, load_end = Signal(name="byte_end"), Signal(name="load_end")
        # (With `lagged` RUN_LOAD ends a cycle after ``load_end``, which stops the shift.)
        load_done = Signal(name="load_done")
        hold_more = Signal(name="hold_more")    # (and WRITE_HOLD takes two cycles)
        # A WRITE's words are counted as its bytes arrive (PAYLOAD), so that a frame whose
        # length does not match its count, or whose words run past the memory's end, is
        # answered before anything is written. Wide enough for any word count a frame holds.
        got_j = Signal(range(max(desc_bytes, data_bytes, cfg.cols) + 1))
        got_words = Signal(range(MAX_PAYLOAD + 1))
        # What a WRITE's words are, from registers: the index of a word's last byte (a packed
        # activation word ends after its ``lanes`` bytes) and the memory's kind. ``mem`` and
        # ``lanes`` hold still from the first payload byte on, long before PAYLOAD counts a
        # data byte; so the state machine looks at flip-flops, not at decoders and subtracters.
        word_last = Signal.like(got_j)
        is_prog, is_short, packed = Signal(), Signal(), Signal()
        m.d.sync += [is_prog.eq(mem == Mem.PROGRAM.value), is_short.eq(short),
                     packed.eq(lanes != 0)]
        with m.Switch(mem):
            with m.Case(Mem.PROGRAM.value):
                m.d.sync += word_last.eq(desc_bytes - 1)
            with m.Case(Mem.PARAM.value):
                m.d.sync += word_last.eq(param_bytes - 1)
            with m.Default():
                with m.Switch(lanes):
                    for n in range(1, cfg.cols):
                        with m.Case(n):
                            m.d.sync += word_last.eq(n - 1)
                    with m.Default():
                        m.d.sync += word_last.eq(cfg.cols - 1)
        m.d.comb += [
            pg_w.addr.eq(Cat(pc[:pbits], j)), pg_w.data.eq(fb_q),
            pg_r.addr.eq(Cat(pc[:pbits], j)),
            # A read port's enable is high unless driven low: the states that read ahead and
            # then wait (a reply byte the host is not ready for) rely on the data holding.
            pg_r.en.eq(0), fb_r.en.eq(0),
            core.load.payload.mem.eq(mem), core.load.payload.addr.eq(addr),
            core.load.payload.data.eq(shift_q[8 * word_at:]),
            core.cmd.payload.eq(desc_of(shift_q)),
            core.rd_addr.payload.eq(addr),
        ]

        # The core's requests' valid bits from registers, set on the way into the state that
        # makes the request and cleared when it is taken (the core's command, load and
        # read-back decoding starts from them, not from this state machine's decoding).
        cmd_valid, load_valid, rd_valid = Signal(), Signal(), Signal()
        m.d.comb += [core.cmd.valid.eq(cmd_valid), core.load.valid.eq(load_valid),
                     core.rd_addr.valid.eq(rd_valid)]

        replies_with = Signal(_Payload)     # see the end: ERROR unless a state says
        m.d.comb += replies_with.eq(_Payload.ERROR)
        # What EXEC answers a request that passed its checks with (``req`` holds still from
        # TYPE on).
        exec_kind = Signal(_Payload)
        with m.Switch(req):
            for kind, answer in ((Request.READ, _Payload.ACT), (Request.STATUS, _Payload.STATUS),
                                 (Request.IDENTIFY, _Payload.IDENTITY),
                                 (Request.STATS, _Payload.CYCLES)):
                with m.Case(kind):
                    m.d.sync += exec_kind.eq(answer)
        verdict, refused, grows = self._check(m, req, length, mem, lanes, second, span_end, end,
                                              prog_len, got_j, got_words)
        # The request's type decoded into registers: ``req`` is set in TYPE, long before EXEC.
        is_req = {}
        for kind in Request:
            is_req[kind] = Signal(name=f"is_{kind.name.lower()}")
            m.d.sync += is_req[kind].eq(req == kind)

        # What ``shift`` takes when it moves: the next byte at the top (WRITE's from the frame
        # buffer, RUN's from the program memory); a short word's last byte also at its end; and
        # at the end of a packed activation word, its other lanes.
        writing = is_req[Request.WRITE]
        byte = Mux(writing, fb_q, pg_q)
        if lagged:
            lag_byte = Signal(8, name="lag_byte", reset_less=True)
            m.d.sync += lag_byte.eq(byte)
            byte = lag_byte
        shift_next = Signal.like(shift)
        m.d.comb += shift_next.eq(Cat(shift[8:], byte))
        if short_bytes < data_bytes:
            with m.If(writing & is_short):
                entry = word_at + short_bytes - 1
                m.d.comb += shift_next[8 * entry:8 * entry + 8].eq(byte)
        # At the end of a packed activation word, the word's bytes, as they are after this
        # cycle's, down to lane 0: its other lanes go in at once, the bytes moving down
        # ``cols - lanes``. With dense convolutions those lanes repeat the bytes (lane l holds
        # lane l % lanes: every column slice gets the pixel), else they are 0.
        # With ``fetch_ahead`` each lane's byte chooses from copies of its own of ``lanes`` and
        # of the packed-WRITE flag (`hard_register`; ``pre`` holds still from the frame's
        # first payload byte on, long before WRITE_BYTE takes its words from the frame buffer):
        # from ``pre0`` through one decoder to the whole word's muxes, two routes across the
        # shift register, it was the worst path of the 8x16's 90 MHz build (12.0 of 13.4 ns
        # routing).
        # With `deep_pipeline` the word is packed on its way from ``shift`` to ``shift_q``
        # instead, from which the core takes it (a word holds still in ``shift`` from its last
        # byte on, for the cycle it goes into ``shift_q`` and while the core takes it), and
        # ``shift`` takes the bytes as they come: each lane chooses from flip-flops of the shift
        # register, not from the frame buffer's byte (a block RAM's output register) and
        # ``byte_end``. Those routes were the `lenet` design's slowest at 100 and 105 MHz
        # (``shift_next`` into ``shift``, 13.2 ns as placed for 105 MHz: `bench/endpoints.py`;
        # ``byte_end`` into the shift's enables, the worst path of its 95 MHz build, through
        # logic that fans ``byte_end`` out to every lane).
        after = act if late_pack else Cat(act[8:], byte)
        pack = writing & ~is_prog & packed
        packed_word = []
        for k in range(cfg.cols):
            if piped:
                lanes_k = hard_register(m, lanes, name=f"pack_lanes{k}", target=cfg.target,
                                        reset_less=True)
                pack_k = hard_register(m, pack, name=f"pack{k}", target=cfg.target)
            else:
                lanes_k, pack_k = lanes, pack
            if late_pack:
                lane = Signal(8, name=f"packed{k}")
                m.d.comb += lane.eq(act.word_select(k, 8))
                packed_word.append(lane)
            else:
                lane = shift_next[8 * (word_at + k):8 * (word_at + k + 1)]
            with m.If(pack_k if late_pack else pack_k & byte_end):
                with m.Switch(lanes_k):
                    for n in range(1, cfg.cols):
                        if cfg.dense_conv:
                            src = cfg.cols - n + k % n
                        elif k < n:
                            src = cfg.cols - n + k
                        else:
                            src = None
                        with m.Case(n):
                            m.d.comb += lane.eq(0 if src is None else after.word_select(src, 8))
        if late_pack:
            m.d.sync += shift_q.eq(Cat(shift[:8 * word_at], *packed_word,
                                       shift[8 * (word_at + cfg.cols):]))
        for k, en in enumerate(shift_en):
            part = slice(8 * (k * len(shift) // 8 // copies),
                         8 * ((k + 1) * len(shift) // 8 // copies))
            with m.If(en):
                m.d.sync += shift[part].eq(shift_next[part])

        def reply(m):
            """Answer the request, with the kind of reply of the state it is called in."""
            m.next = "TX_SYNC"

        def fail(m, code):
            m.d.sync += last_error.eq(code)
            reply(m)

        @contextlib.contextmanager
        def frame_byte():
            """In a state taking one byte of a frame: the byte (into the CRC), a line fault or a
            timeout."""
            m.d.comb += [in_frame.eq(1), crc.valid.eq(rx.valid)]
            with m.If(line_fault):
                drain(m, Error.LINE_FAULT)
            with m.Elif(rx.valid):
                yield
            with m.Elif(timed_out):
                fail(m, Error.TRUNCATED)

        def drain(m, code):
            """Swallow bytes until the line is quiet, then answer ``code``."""
            m.d.sync += last_error.eq(code)
            m.next = "DRAIN"

        def send(byte, valid=1, check=True):
            """In a state sending a byte of a reply (into the CRC, unless ``check`` is off);
            whether the byte is taken. (That is the state's own ``valid``, not ``tx_valid``,
            the state machine's whole decoding.)"""
            m.d.comb += [tx_valid.eq(valid), tx_payload.eq(byte)]
            taken = valid & tx_ready
            if check:
                m.d.sync += crc_tx.eq(taken)
            return taken

        def step_addr():
            m.d.sync += [addr.eq(addr + 1), addr_end.eq(addr_last),
                         addr_last.eq(addr + 2 == span_end)]

        def step_pc():
            m.d.sync += [pc.eq(pc + 1), pc_end.eq(pc + 1 == end)]

        def next_cycles_byte():
            """The counters' bytes, read one ahead of the one being sent."""
            m.d.sync += j.eq(j + 1)
            with m.If(j == desc_bytes + 3):
                m.d.sync += j.eq(desc_bytes)
                step_pc()

        if ahead_ok:
            with m.If(self.busy):
                m.d.sync += total.eq(total + 1)

        with m.FSM() as fsm:
            # The states' encodings, in this order (a state's is the order it is first named
            # in): each group that drives an output together in one aligned block of codes, so
            # that deciding which group the state is in takes a LUT, not a tree of them.
            for name in _STATE_ORDER:
                fsm.ongoing(name)
            with m.State("START"):
                # One cycle out of reset before taking bytes. (It also makes the state register
                # change once, which Icarus needs to evaluate the decoders hanging off it.)
                m.next = "SYNC"
            # -- receive --------------------------------------------------------------------
            with m.State("SYNC"):
                m.d.comb += crc_restart.eq(1)
                with m.If(rx.valid & (rx.payload == SYNC_REQUEST)):
                    # No type yet: what an ERROR reply names if the frame breaks off here.
                    m.d.sync += req.eq(0)
                    m.next = "TYPE"
            with m.State("TYPE"):
                with frame_byte():
                    m.d.sync += req.eq(rx.payload)
                    m.next = "LEN0"
            with m.State("LEN0"):
                with frame_byte():
                    m.d.sync += length.eq(rx.payload)
                    m.next = "LEN1"
            with m.State("LEN1"):
                with frame_byte():
                    m.d.sync += [length[8:].eq(rx.payload), idx.eq(0), got_j.eq(0),
                                 got_words.eq(0), left.eq(Cat(length[:8], rx.payload)),
                                 at_end.eq(Cat(length[:8], rx.payload) == 0)]
                    with m.If(_above(Cat(length[:8], rx.payload), MAX_PAYLOAD)):
                        drain(m, Error.BAD_LENGTH)
                    with m.Else():
                        m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                with m.If(at_end):
                    # No byte taken in this cycle, but a line fault in it still breaks the frame.
                    with m.If(line_fault):
                        drain(m, Error.LINE_FAULT)
                    with m.Else():
                        m.next = "CRC0"
                with m.Else():
                    m.d.comb += fb_w.en.eq(rx.valid)
                    with frame_byte():
                        m.d.sync += [idx.eq(idx + 1), left.eq(left - 1), at_end.eq(left == 1)]
                        for i, byte in enumerate(pre):
                            with m.If(idx == i - (req != Request.WRITE)):
                                m.d.sync += byte.eq(rx.payload)
                        with m.If(idx >= _WRITE_HEAD):
                            # A WRITE's data byte (mem and lanes are known by now).
                            with m.If(got_j == word_last):
                                m.d.sync += [got_j.eq(0), got_words.eq(got_words + 1)]
                            with m.Else():
                                m.d.sync += got_j.eq(got_j + 1)
            with m.State("CRC0"):
                with frame_byte():
                    m.next = "CRC1"
            with m.State("CRC1"):
                with frame_byte():
                    m.next = "EXEC"
            with m.State("DRAIN"):
                # An over-long or broken frame: swallow it until the line goes quiet, then
                # answer once.
                m.d.comb += in_frame.eq(1)
                with m.If(timed_out):
                    reply(m)                # ERROR; last_error is set on the way in

            # -- check, then carry out --------------------------------------------------------
            with m.State("EXEC"):
                m.d.sync += [
                    idx.eq(_WRITE_HEAD),
                    # (What a request that is carried out starts from: its span ends within
                    # the memory, so ``addr`` and ``pc`` hold ``first`` and ``start`` whole.)
                    addr.eq(first), addr_end.eq(second == 0), addr_last.eq(second == 1),
                    pc.eq(start), pc_end.eq(count == 0),
                    j.eq(Mux(is_req[Request.STATS], desc_bytes, 0)),
                ]
                m.d.comb += replies_with.eq(Mux(crc.match_detected & ~refused, exec_kind,
                                                _Payload.ERROR))
                with m.If(~crc.match_detected):
                    fail(m, Error.BAD_CRC)
                with m.Elif(refused):
                    fail(m, verdict)
                # (A request that passed its checks is one of these.)
                with m.Elif(is_req[Request.WRITE]):
                    with m.If(grows):
                        m.d.sync += prog_len.eq(span_end[:len(prog_len)])
                    m.next = "WRITE_PRIME"
                with m.Elif(is_req[Request.READ]):
                    reply(m)
                with m.Elif(is_req[Request.RUN]):
                    m.d.sync += [total.eq(0), ahead.eq(0)]      # (the first entry: not ahead)
                    m.next = "RUN_FETCH"
                with m.Elif(is_req[Request.STATUS]):
                    reply(m)
                with m.Elif(is_req[Request.IDENTIFY]):
                    m.d.sync += idx.eq(0)
                    reply(m)
                with m.Else():
                    reply(m)

            # -- WRITE: bytes from the frame buffer into a memory ---------------------------------
            # A byte a cycle: each cycle takes the byte in ``fb_q``, moves the one read in the
            # cycle before into it and reads the next; a whole word waits a cycle (WRITE_WORD)
            # for the core to take it, the bytes after it waiting where they are.
            more = idx != length
            with m.State("WRITE_PRIME"):
                m.d.comb += fb_r.en.eq(1)
                m.d.sync += [idx.eq(idx + 1), byte_end.eq(word_last == 0)]
                if not piped:
                    m.d.comb += shift_go.eq(1)
                m.next = "WRITE_FILL" if piped else "WRITE_BYTE"
            with m.State("WRITE_FILL"):
                m.d.comb += [fb_r.en.eq(more), replies_with.eq(_Payload.NONE)]
                m.d.sync += [idx.eq(idx + more), byte_end.eq(word_last == 0)]
                if piped:
                    m.d.sync += fb_q.eq(fb_r.data)
                m.d.comb += shift_go.eq(1)
                m.next = "WRITE_BYTE"
            with m.State("WRITE_BYTE"):
                # (The byte in ``fb_q`` goes into ``shift``: see `shift_next`.)
                m.d.comb += [replies_with.eq(_Payload.NONE), fb_r.en.eq(more)]
                m.d.sync += [j.eq(j + 1), idx.eq(idx + more), byte_end.eq(j + 1 == word_last)]
                with m.If(byte_end):
                    m.d.sync += byte_end.eq(word_last == 0)     # (``j`` goes back to 0)
                if piped:
                    m.d.sync += fb_q.eq(fb_r.data)
                with m.If(is_prog):
                    # Descriptors are stored as they came (``word_last`` is ``desc_bytes - 1``).
                    m.d.comb += pg_w.en.eq(1)
                    with m.If(byte_end):
                        m.d.sync += j.eq(0)
                        step_pc()
                        step_addr()
                        with m.If(addr_last):
                            m.d.comb += shift_go.eq(0)
                            reply(m)
                with m.Elif(byte_end):
                    m.d.sync += j.eq(0)
                    if lagged:
                        m.d.sync += hold_more.eq(1)
                    m.d.comb += shift_go.eq(0)
                    if piped:
                        m.next = "WRITE_HOLD"
                    else:
                        m.d.sync += load_valid.eq(1)
                        m.next = "WRITE_WORD"
            if piped:
                with m.State("WRITE_HOLD"):
                    # The word's last byte on its way into ``shift_q`` (with `lagged`, into
                    # ``shift`` in the first cycle).
                    m.d.comb += replies_with.eq(_Payload.NONE)
                    m.d.sync += byte_end.eq(word_last == 0)
                    if lagged:
                        m.d.sync += hold_more.eq(0)
                    with m.If(~hold_more) if lagged else contextlib.nullcontext():
                        m.d.sync += load_valid.eq(1)
                        m.next = "WRITE_WORD"
            with m.State("WRITE_WORD"):
                m.d.comb += replies_with.eq(_Payload.NONE)
                m.d.sync += byte_end.eq(word_last == 0)
                with m.If(core.load.ready):
                    m.d.sync += load_valid.eq(0)
                    step_addr()
                    with m.If(addr_last):
                        reply(m)
                    with m.Else():
                        m.d.comb += shift_go.eq(1)
                        m.next = "WRITE_BYTE"

            # -- RUN: the program's layers, one after the other ----------------------------------
            shift_cycles = fetch_cycles(cfg) - lagged   # (the cycles ``shift_go`` is up)
            with m.State("RUN_FETCH"):
                m.d.comb += [self.busy.eq(1), replies_with.eq(_Payload.DONE)]
                with m.If(pc_end):
                    if ahead_ok:
                        with m.If(ahead):
                            m.next = "RUN_WAIT"         # (the last entry is running)
                        with m.Else():
                            reply(m)
                    else:
                        reply(m)
                with m.Else():
                    m.d.comb += pg_r.en.eq(1)
                    # (``j`` is 0 here: EXEC, RUN_ISSUE and RUN_STORE leave it so.)
                    m.d.sync += [j.eq(j + 1), load_end.eq(shift_cycles == 1)]
                    if lagged:
                        m.d.sync += load_done.eq(0)
                    m.d.comb += shift_go.eq(1)
                    m.next = "RUN_LOAD"
            with m.State("RUN_LOAD"):
                # One byte a cycle from ``pg_q``, the next two's reads under way. The first
                # cycle's byte is not the entry's (no read is two cycles old yet): it goes in
                # first, and so out below the descriptor, which is the entry's bytes after it.
                m.d.comb += [self.busy.eq(1), pg_r.en.eq(1)]
                m.d.sync += [j.eq(j + 1), load_end.eq(j + 1 == shift_cycles)]
                def loaded():
                    m.next = "RUN_DECODE"
                    if ahead_ok:
                        with m.If(ahead):
                            m.next = "RUN_WAIT"
                with m.If(load_end):
                    m.d.comb += shift_go.eq(0)
                    if not lagged:
                        loaded()
                if lagged:
                    m.d.sync += load_done.eq(load_end)
                    with m.If(load_done):
                        loaded()
            with m.State("RUN_DECODE"):
                m.d.comb += self.busy.eq(1)
                with m.If(~Cat(desc.op == op for op in runnable_ops(cfg)).any()):
                    fail(m, Error.BAD_DESCRIPTOR)
                with m.Else():
                    m.d.sync += cmd_valid.eq(1)
                    m.next = "RUN_ISSUE"
            with m.State("RUN_ISSUE"):
                m.d.comb += self.busy.eq(1)
                with m.If(core.cmd.ready):
                    m.d.sync += cmd_valid.eq(0)
                    if ahead_ok:
                        # The core has the descriptor: the next entry's comes in behind it.
                        m.d.sync += [run_pc.eq(pc), ahead.eq(1), j.eq(0)]
                        step_pc()
                    m.next = "RUN_START"
            with m.State("RUN_START"):
                # (`core.busy`, a register, is up from the next cycle.)
                m.d.comb += self.busy.eq(1)
                m.next = "RUN_FETCH" if ahead_ok else "RUN_WAIT"
            with m.State("RUN_WAIT"):
                m.d.comb += self.busy.eq(1)
                with m.If(~core.busy):
                    m.d.sync += j.eq(desc_bytes)
                    m.next = "RUN_STORE"
            with m.State("RUN_STORE"):
                # The layer's cycle counter, a byte a cycle, into the program memory.
                byte = core.cycles.word_select((j - desc_bytes)[:2], 8)
                m.d.comb += [self.busy.eq(1), pg_w.en.eq(1), pg_w.data.eq(byte)]
                m.d.sync += j.eq(j + 1)
                if ahead_ok:
                    # The entry that ran; the next one's descriptor is in ``shift`` already.
                    m.d.comb += [pg_w.addr.eq(Cat(run_pc[:pbits], j)),
                                 replies_with.eq(_Payload.DONE)]
                else:
                    m.d.comb += addend.eq(byte)
                    m.d.sync += [total.eq(Cat(total[8:], acc[:8])), carry.eq(acc[8])]
                with m.If(j == desc_bytes + 3):
                    m.d.sync += j.eq(0)
                    if ahead_ok:
                        with m.If(pc_end):
                            reply(m)
                        with m.Else():
                            m.next = "RUN_DECODE"
                    else:
                        m.d.sync += carry.eq(0)
                        step_pc()
                        m.next = "RUN_FETCH"

            # -- transmit a reply -----------------------------------------------------------------
            with m.State("TX_SYNC"):
                m.d.sync += self.error.eq(payload == _Payload.ERROR)
                send(SYNC_REPLY, check=False)
                m.d.comb += crc_restart.eq(1)
                with m.If(tx_ready):
                    m.next = "TX_KIND"
            with m.State("TX_KIND"):
                with m.Switch(payload):
                    for kind, reply_kind in _KIND.items():
                        with m.Case(kind):
                            send(reply_kind.value)
                with m.If(tx_ready):
                    m.next = "TX_LEN0"
            with m.State("TX_LEN0"):
                send(reply_len_q[:8])
                with m.If(tx_ready):
                    m.next = "TX_LEN1"
            with m.State("TX_LEN1"):
                send(reply_len_q[8:])
                with m.If(tx_ready):
                    with m.If(no_payload):
                        m.next = "TX_CRC0"
                    with m.Else():
                        with m.Switch(payload):
                            with m.Case(_Payload.ERROR, _Payload.STATUS):
                                m.next = "TX_ERROR"
                            with m.Case(_Payload.DONE):
                                m.next = "TX_TOTAL"
                            with m.Case(_Payload.ACT):
                                m.d.sync += rd_valid.eq(1)
                                m.next = "TX_ACT_REQ"
                            with m.Case(_Payload.IDENTITY):
                                m.next = "TX_IDENTITY"
                            with m.Default():
                                m.next = "TX_CYC_REQ"
            with m.State("TX_ERROR"):
                send(last_error)
                with m.If(tx_ready):
                    m.next = "TX_SECOND"
            with m.State("TX_SECOND"):
                send(Mux(payload == _Payload.ERROR, req, prog_len))
                with m.If(tx_ready):
                    with m.If(payload == _Payload.ERROR):
                        m.next = "TX_CRC0"
                    with m.Else():
                        m.next = "TX_TOTAL"
            with m.State("TX_TOTAL"):
                send(total.word_select(j[:2], 8) if ahead_ok else total[:8])
                with m.If(tx_ready):
                    m.d.sync += j.eq(j + 1)
                    if not ahead_ok:        # (``carry`` is 0 here: ``acc`` is the byte)
                        m.d.sync += total.eq(Cat(total[8:], acc[:8]))
                    with m.If(j == 3):
                        m.next = "TX_CRC0"
            with m.State("TX_IDENTITY"):
                send(id_byte)
                with m.If(tx_ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(id_last):
                        m.next = "TX_CRC0"
            with m.State("TX_ACT_REQ"):
                with m.If(core.rd_addr.ready):
                    m.d.sync += rd_valid.eq(0)
                    step_addr()
                    m.next = "TX_ACT"
            with m.State("TX_ACT"):
                # The word waits on the read-back stream until its last byte is sent.
                taken = send(core.rd_data.payload.as_value().word_select(j, 8),
                             valid=core.rd_data.valid)
                with m.If(taken):
                    m.d.sync += j.eq(j + 1)
                    with m.If(j == cfg.cols - 1):
                        m.d.comb += core.rd_data.ready.eq(1)
                        m.d.sync += j.eq(0)
                        with m.If(addr_end):
                            m.next = "TX_CRC0"
                        with m.Else():
                            m.d.sync += rd_valid.eq(1)
                            m.next = "TX_ACT_REQ"
            with m.State("TX_CYC_REQ"):
                m.d.comb += pg_r.en.eq(1)
                next_cycles_byte()
                m.next = "TX_CYC"
            with m.State("TX_CYC"):
                with m.If(send(pg_q, valid=~pg_lag)):
                    with m.If(pc_end & (j == desc_bytes)):
                        m.next = "TX_CRC0"
                    with m.Else():
                        m.d.comb += pg_r.en.eq(1)
                        next_cycles_byte()
            with m.State("TX_CRC0"):
                send(crc.crc[8:], check=False)
                with m.If(tx_ready):
                    m.next = "TX_CRC1"
            with m.State("TX_CRC1"):
                send(crc.crc[:8], check=False)
                with m.If(tx_ready):
                    m.next = "SYNC"

        one_hot(fsm, cfg.target)
        # The states that take the host's bytes (all but PAYLOAD's last cycle): SYNC,
        # DRAIN and the frame's, decided from the state's code alone, as its one block of
        # codes, rather than from each state's logic (an iCEBreaker critical path into the
        # receive FIFO, 9 LUTs).
        m.d.comb += rx.ready.eq(
            Cat(fsm.ongoing(name) for name in _STATE_ORDER[8:16]).any()
            & ~(fsm.ongoing("PAYLOAD") & at_end))
        # The reply's kind: outside the reply's states, ``payload`` takes in every cycle the
        # kind of reply the state answers with, if it does (``replies_with``: ERROR but for
        # EXEC's, WRITE's, RUN_FETCH's and RUN_STORE's), so that its enable is the state's code
        # alone, not every reply's condition (an iCEBreaker critical path, 9 LUTs). It holds
        # from TX_SYNC on.
        with m.If(~Cat(fsm.ongoing(name) for name in _STATE_ORDER[16:30]).any()):
            m.d.sync += payload.eq(replies_with)
        return m

    def _check(self, m, req, length, mem, lanes, count, span_end, end, prog_len, got_j,
               got_words):
        """The error a request frame (whose CRC has matched) is answered with, or NONE, and
        whether it is not NONE; and whether a WRITE that is carried out makes the program longer.

        All are registers, worked out every cycle from the request as it stands, so that EXEC
        has only the CRC's match and this verdict to look at (a whole check in that one cycle
        was the iCEBreaker's slowest path). They are right by EXEC because what they depend on
        holds still for the three cycles before it. ``pre`` (and so ``mem``, ``lanes``,
        ``count``), ``got_j`` and ``got_words`` last change with the last payload byte taken,
        in a PAYLOAD cycle t; PAYLOAD sees ``idx == length`` at t + 1 and the two CRC bytes
        take a cycle each at least, so EXEC comes at t + 4 or later. ``length`` is set in
        LEN1, before a PAYLOAD cycle (with nothing in it for an empty payload): the same
        count. ``req`` is older still, and ``prog_len`` changes only in EXEC, a whole frame
        earlier. So ``span_end`` and ``end`` (a cycle after ``pre``), the comparisons below
        (a cycle after those) and the verdict (a cycle after the comparisons) all hold the
        current request's values in EXEC, and no frame waits a cycle longer.
        """
        cfg = self._cfg

        def flag(name, value):
            reg = Signal(name=name)
            m.d.sync += reg.eq(value)
            return reg

        too_short = flag("too_short", ~_above(length, _WRITE_HEAD - 1))
        bad_mem = flag("bad_mem", (mem > Mem.PROGRAM.value) | ((lanes != 0) & (
            (mem != Mem.ACT.value) | (lanes >= cfg.cols))))
        bad_count = flag("bad_count", (count == 0) | _above(count, MAX_PAYLOAD - 1))
        # The WRITE's words, counted as they came (PAYLOAD), against its count.
        mismatch = flag("mismatch", (got_j != 0) | (got_words != count))
        beyond = Signal()
        with m.Switch(mem):
            for kind in Mem:
                with m.Case(kind.value):
                    m.d.comb += beyond.eq(_above(span_end, mem_depth(cfg, kind)))
        past_end = flag("past_end", beyond)     # the WRITE would run past its memory
        # (A PROGRAM write that is carried out ends within program_depth.)
        grows = flag("grows", (mem == Mem.PROGRAM.value) & (span_end[:len(prog_len)] > prog_len))
        # The reply must fit a frame: at most MAX_PAYLOAD bytes.
        bad_read = flag("bad_read", (length != 4) | _above(count, MAX_PAYLOAD // cfg.cols))
        read_past = flag("read_past", _above(span_end, cfg.act_depth))
        not_two = flag("not_two", length != 2)
        run_past = flag("run_past", end > prog_len)
        not_empty = flag("not_empty", length != 0)

        error = Signal(Error)
        with m.Switch(req):
            with m.Case(Request.WRITE):
                with m.If(too_short):
                    m.d.comb += error.eq(Error.BAD_LENGTH)
                with m.Elif(bad_mem):
                    m.d.comb += error.eq(Error.BAD_MEMORY)
                with m.Elif(bad_count | mismatch):
                    m.d.comb += error.eq(Error.BAD_LENGTH)
                with m.Elif(past_end):
                    m.d.comb += error.eq(Error.BAD_ADDRESS)
            with m.Case(Request.READ):
                with m.If(bad_read):
                    m.d.comb += error.eq(Error.BAD_LENGTH)
                with m.Elif(read_past):
                    m.d.comb += error.eq(Error.BAD_ADDRESS)
            with m.Case(Request.RUN, Request.STATS):
                with m.If(not_two):
                    m.d.comb += error.eq(Error.BAD_LENGTH)
                with m.Elif(run_past):
                    m.d.comb += error.eq(Error.BAD_ADDRESS)
            with m.Case(Request.STATUS, Request.IDENTIFY):
                with m.If(not_empty):
                    m.d.comb += error.eq(Error.BAD_LENGTH)
            with m.Default():
                m.d.comb += error.eq(Error.UNKNOWN_REQUEST)
        verdict, refused = Signal(Error), Signal()
        m.d.sync += [verdict.eq(error), refused.eq(error != Error.NONE)]
        return verdict, refused, grows
