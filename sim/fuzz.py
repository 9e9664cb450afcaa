"""Fuzzing the controller: random and mutated request frames against a reference model, on the
fast harness (`systolic.sim.fast`), with a network's golden result checked after every burst.

The pieces are the usual testbench's: a generator of exchanges (`FrameGenerator`: valid
requests, and valid-looking ones mutated by bit flips, truncation, wrong and oversize lengths,
unknown types, bad CRCs, bad memories, addresses and counts; garbage bytes, breaks and framing
errors between frames; line faults inside frames; requests sent back to back), a reference
model (`ControllerModel`, ``docs/protocol.md`` in Python, built on the `systolic.hw.isa`
enums), a checker (every reply byte for byte: sync, length, CRC, type, ERROR code, payload),
and `fuzz`, which wires them to a `Harness` and, after every burst, runs an image through the
ordinary `Driver` on the same harness and compares its logits with the golden model's.

Everything is drawn from one seeded `random.Random`: a run is replayed by its seed, count, burst
and divisor, and a failure (`FuzzFailure`) says so, with the exact symbols of the exchange that
failed and of those before it in its burst.

Back-to-back requests
---------------------
``docs/protocol.md`` has the host wait for each reply before it sends the next request and
promises nothing beyond that. What the hardware gives beyond it is the UART's receive FIFO
(`systolic.hw.uart.UARTBridge`, ``fifo_depth``: 16 bytes): bytes that arrive while the
controller executes a request or sends its reply wait there, and are served in order when it
listens again. So after a complete request frame a host may send at most that many more bytes
of requests before the replies come -- two STATUS requests (6 bytes each), a RUN or STATS and a
STATUS (8 + 6), a READ and a STATUS (10 + 6), or a one-word packed WRITE (12) -- and gets exactly
one reply to each, in order. More could overrun the FIFO, and a line fault sent then falls in
the window the controller ignores ("faults while the device executes a request or sends its
reply"). That is exactly what is fuzzed: after any frame the model says is complete, at most
`rx_fifo_depth` bytes and no line fault follow before the host waits for the replies; anything
longer is split there, the host waiting for the replies in between, as the protocol says. The
controller's byte-stream top has no FIFO and takes any amount; the same rule is kept there.
"""

import binascii
import functools
import inspect
import random
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

from ..hw.controller import Controller, runnable_ops
from ..hw.isa import (
    FRAME_CRC,
    FRAME_TIMEOUT_BITS,
    MAX_PAYLOAD,
    SYNC_REPLY,
    SYNC_REQUEST,
    WRITE_TARGET,
    Error,
    Mem,
    Reply,
    Request,
    identify_payload,
    mem_depth,
    mem_word_bytes,
    pack_descriptor,
)
from ..hw.uart import UARTBridge
from ..sw import protocol
from ..sw.perfmodel import run_cycles
from .fast import (
    BAD_STOP,
    BREAK,
    BYTE,
    IDLE,
    LINE_FAULT,
    STREAM_TIMEOUT_CYCLES,
    Harness,
    HarnessLink,
    build_harness,
    network_top,
)
from .runner import SimulationError

__all__ = ["ControllerModel", "Expected", "FrameGenerator", "FuzzFailure", "FuzzReport",
           "STREAM_TIMEOUT_CYCLES", "fuzz", "raw_frame", "rx_fifo_depth"]

#: The virtual board's clock for a given divisor: the baud rate ``systolic deploy --sim`` uses.
_SIM_BAUD = 12.5e6

_MEM_SHIFT = WRITE_TARGET["mem"].offset
_LANES_SHIFT = WRITE_TARGET["lanes"].offset
_MEM_MASK = (1 << WRITE_TARGET["mem"].width) - 1
_LANES_MASK = (1 << WRITE_TARGET["lanes"].width) - 1
_REQUESTS = {r.value for r in Request}
_MEMS = {m.value for m in Mem}

if (FRAME_CRC.crc_width, FRAME_CRC.polynomial, FRAME_CRC.reflect_input,
        FRAME_CRC.reflect_output, FRAME_CRC.xor_output) == (16, 0x1021, False, False, 0):
    def _crc(data, _init=FRAME_CRC.initial_crc):
        # The same check as FRAME_CRC, in C: frames of a kilobyte are checked by the thousand.
        return binascii.crc_hqx(data, _init)
else:                                                       # pragma: no cover
    _crc = FRAME_CRC(8).compute


def rx_fifo_depth():
    """Bytes the virtual board's UART receive FIFO holds (`UARTBridge`'s default
    ``fifo_depth``, which `systolic.hw.virtual.VirtualBoard` and the boards build with)."""
    return inspect.signature(UARTBridge).parameters["fifo_depth"].default


def raw_frame(kind, payload=b"", *, length=None, crc=None, sync=SYNC_REQUEST):
    """A request frame's bytes, with its ``length`` field and ``crc`` as given (default: right)."""
    length = len(payload) if length is None else length
    body = struct.pack("<BH", kind, length) + bytes(payload)
    crc = _crc(body) if crc is None else crc
    return bytes([sync]) + body + crc.to_bytes(2, "big")


class FuzzFailure(AssertionError):
    """The controller answered a fuzzed exchange otherwise than the model: a wrong or missing
    reply (a hang), extra bytes, or a network no longer giving its golden result."""


@dataclass(frozen=True)
class Expected:
    """A reply the model expects: its type and payload; ``unknown`` byte ranges of the payload
    (activation words the model does not know) may hold anything."""

    kind: Reply
    payload: bytes = b""
    unknown: tuple = ()

    @classmethod
    def error(cls, code, request):
        return cls(Reply.ERROR, bytes([Error(code).value, request]))

    @property
    def size(self):
        """Bytes of the reply frame."""
        return 4 + len(self.payload) + 2

    @property
    def label(self):
        if self.kind == Reply.ERROR:
            return f"ERROR {Error(self.payload[0]).name}"
        return self.kind.name

    def mismatch(self, data):
        """Why the reply frame ``data`` is not this one, or ``None``."""
        data = bytes(data)
        if len(data) < self.size:
            return f"missing: {len(data)} of the {self.size} bytes of {self.label} came"
        if data[0] != SYNC_REPLY:
            return f"sync byte {data[0]:#04x}, not {SYNC_REPLY:#04x}"
        length = int.from_bytes(data[2:4], "little")
        if length != len(self.payload):
            return f"length {length}, not {len(self.payload)} of {self.label}"
        try:
            (reply,) = protocol.ReplyParser().feed(data)
        except protocol.FrameError as e:
            return str(e)
        if reply.kind != self.kind:
            return f"a {_label(reply)} reply, not {self.label}"
        got = bytearray(reply.payload)
        for start, stop in self.unknown:
            got[start:stop] = self.payload[start:stop]
        if bytes(got) != self.payload:
            at = next(i for i, (a, b) in enumerate(zip(got, self.payload)) if a != b)
            return (f"{self.label} payload differs from byte {at}: "
                    f"{reply.payload[at:at + 16].hex(' ')} for {self.payload[at:at + 16].hex(' ')}")
        return None


def _label(reply):
    if reply.kind == Reply.ERROR and reply.payload:
        try:
            return f"ERROR {Error(reply.payload[0]).name}"
        except ValueError:
            return f"ERROR {reply.payload[0]}"
    return reply.kind.name


class _Veto(Exception):
    """A generated exchange the fuzzer must not send (see `ControllerModel`)."""


_SYNC, _TYPE, _LEN0, _LEN1, _PAYLOAD, _CRC0, _CRC1, _DRAIN = range(8)
_IN_FRAME = frozenset({_TYPE, _LEN0, _LEN1, _PAYLOAD, _CRC0, _CRC1})


class ControllerModel:
    """What the controller answers, byte by byte, from ``docs/protocol.md``.

    The device state the replies depend on is kept: the last error, the program length, the
    cycles of the last run and of each program entry's last run, and the activation memory as
    far as the model knows it (words written by valid fuzzed WRITEs; ``None`` elsewhere).

    Parameters
    ----------
    cfg : AcceleratorConfig
    entry_cycles : list of int
        Cycles of each runnable program entry (the network's layers, measured once).
    prog_len : int
        Program length; entries from ``len(entry_cycles)`` up to it hold an operation the
        accelerator cannot execute (RUN meets them as BAD_DESCRIPTOR).
    act_words : int
        Activation words a run of the network overwrites (unknown after any RUN).
    stream : bool
        The byte-stream top, where a line fault is a one-cycle pulse that may fall in any
        cycle (the controller heeds it in every cycle of a frame, taking a byte or not).

    A valid WRITE to weights, parameters or the program raises `_Veto`: the fuzzer never sends
    one (the network must keep giving its golden result).
    """

    def __init__(self, cfg, *, entry_cycles, prog_len, act_words, stream):
        self.cfg = cfg
        self.entry_cycles = list(entry_cycles)
        self.prog_len = prog_len
        self.act_words = act_words
        self.stream = stream
        self.last_error = Error.NONE.value
        self.total = 0
        self.stats = [0] * cfg.program_depth
        self.act = [None] * cfg.act_depth
        self.state = _SYNC
        self.req = 0
        self._len = 0
        self._payload = bytearray()
        self._body = bytearray()
        self._drain = 0

    def clone(self):
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.stats = list(self.stats)
        other.act = list(self.act)
        other._payload = bytearray(self._payload)
        other._body = bytearray(self._body)
        return other

    # ---- the line ------------------------------------------------------------------------
    def feed(self, symbols):
        """Take the symbols in order; return ``[(index, Expected)]`` of the frames they
        complete (each answered at once)."""
        events = []
        for i, (kind, value) in enumerate(symbols):
            if kind == BYTE:
                reply = self.byte(value)
                if reply is not None:
                    events.append((i, reply))
            elif kind in (BAD_STOP, BREAK, LINE_FAULT):
                self.fault()
        return events

    def byte(self, b):
        """One byte from the host; the reply if it completes a frame."""
        s = self.state
        if s == _SYNC:
            if b == SYNC_REQUEST:
                self.state, self.req = _TYPE, 0     # an ERROR names type 0 until it comes
                self._body.clear()
        elif s == _DRAIN:
            pass
        else:
            self._body.append(b)
            if s == _TYPE:
                self.req, self.state = b, _LEN0
            elif s == _LEN0:
                self._len, self.state = b, _LEN1
            elif s == _LEN1:
                self._len |= b << 8
                self._payload.clear()
                if self._len > MAX_PAYLOAD:
                    self._drain_with(Error.BAD_LENGTH)
                elif self._len == 0:
                    self.state = _CRC0
                else:
                    self.state = _PAYLOAD
            elif s == _PAYLOAD:
                self._payload.append(b)
                if len(self._payload) == self._len:
                    self.state = _CRC0
            elif s == _CRC0:
                self.state = _CRC1
            else:
                self.state = _SYNC
                body = bytes(self._body)
                ok = _crc(body[:-2]).to_bytes(2, "big") == body[-2:]
                return self._execute(self.req, bytes(self._payload), ok)
        return None

    def fault(self):
        """A framing error or a break: breaks a frame after its sync byte; ignored between
        frames and in a frame already being swallowed."""
        if self.state in _IN_FRAME:
            self._drain_with(Error.LINE_FAULT)

    def quiet(self):
        """The line quiet for the timeout: the reply to a frame cut short or swallowed."""
        s, self.state = self.state, _SYNC
        if s in _IN_FRAME:
            return self._error(Error.TRUNCATED)
        if s == _DRAIN:
            return self._error(self._drain)
        return None

    def _drain_with(self, code):
        self.state, self._drain = _DRAIN, code

    def _error(self, code, req=None):
        self.last_error = Error(code).value
        return Expected.error(code, self.req if req is None else req)

    # ---- requests --------------------------------------------------------------------------
    def _execute(self, req, payload, crc_ok):
        if not crc_ok:
            return self._error(Error.BAD_CRC)
        n = len(payload)
        if req == Request.WRITE.value:
            return self._write(payload)
        if req == Request.READ.value:
            if n != 4:
                return self._error(Error.BAD_LENGTH)
            addr, count = struct.unpack("<HH", payload)
            if count * mem_word_bytes(self.cfg, Mem.ACT) > MAX_PAYLOAD:
                return self._error(Error.BAD_LENGTH)
            if addr + count > self.cfg.act_depth:
                return self._error(Error.BAD_ADDRESS)
            return self._words(self.act[addr:addr + count])
        if req in (Request.RUN.value, Request.STATS.value):
            if n != 2:
                return self._error(Error.BAD_LENGTH)
            start, count = payload
            if req == Request.STATS.value:
                if start + count > self.prog_len:
                    return self._error(Error.BAD_ADDRESS)
                return Expected(Reply.DATA, b"".join(
                    c.to_bytes(4, "little") for c in self.stats[start:start + count]))
            if start + count > self.prog_len:
                return self._error(Error.BAD_ADDRESS)
            return self._run(start, count)
        if req == Request.STATUS.value:
            if n != 0:
                return self._error(Error.BAD_LENGTH)
            return Expected(Reply.STATUS, bytes([self.last_error, self.prog_len])
                            + self.total.to_bytes(4, "little"))
        if req == Request.IDENTIFY.value:
            if n != 0:
                return self._error(Error.BAD_LENGTH)
            return Expected(Reply.IDENTITY, identify_payload(self.cfg, runnable_ops(self.cfg)))
        return self._error(Error.UNKNOWN_REQUEST)

    def _write(self, payload):
        cfg, n = self.cfg, len(payload)
        if n < 5:
            return self._error(Error.BAD_LENGTH)
        mem, lanes = payload[0] >> _MEM_SHIFT & _MEM_MASK, payload[0] >> _LANES_SHIFT & _LANES_MASK
        if mem not in _MEMS or (lanes and (mem != Mem.ACT.value or lanes >= min(cfg.cols, 16))):
            return self._error(Error.BAD_MEMORY)
        addr, count = struct.unpack_from("<HH", payload, 1)
        # A WRITE of no words is refused as BAD_LENGTH (the protocol is silent on it).
        wb = lanes or mem_word_bytes(cfg, mem)
        if count == 0 or (n - 5) % wb or (n - 5) // wb != count:
            return self._error(Error.BAD_LENGTH)
        if addr + count > mem_depth(cfg, mem):
            return self._error(Error.BAD_ADDRESS)
        if mem != Mem.ACT.value:
            raise _Veto(f"a valid WRITE to {Mem(mem).name}")
        for i in range(count):
            word = int.from_bytes(payload[5 + i * wb:5 + (i + 1) * wb], "little")
            self.act[addr + i] = protocol.unpacked_word(cfg, word, lanes) if lanes else word
        return Expected(Reply.ACK)

    def _words(self, words):
        wb = mem_word_bytes(self.cfg, Mem.ACT)
        data, unknown = bytearray(), []
        for i, w in enumerate(words):
            if w is None:
                if unknown and unknown[-1][1] == i * wb:
                    unknown[-1] = (unknown[-1][0], (i + 1) * wb)
                else:
                    unknown.append((i * wb, (i + 1) * wb))
                w = 0
            data += w.to_bytes(wb, "little")
        return Expected(Reply.DATA, bytes(data), tuple(unknown))

    def _run(self, start, count):
        # The run's total: its layers' counters and the controller's cycles around them.
        ran = []
        for entry in range(start, start + count):
            if entry >= len(self.entry_cycles):
                self.total = run_cycles(self.cfg, ran, stopped=True)
                return self._error(Error.BAD_DESCRIPTOR)
            self.forget_activations()
            ran.append(self.entry_cycles[entry])
            self.stats[entry] = self.entry_cycles[entry]
        self.total = run_cycles(self.cfg, ran)
        return Expected(Reply.DONE, self.total.to_bytes(4, "little"))

    def forget_activations(self):
        """A run of the network's layers overwrote the activations it uses."""
        self.act[:self.act_words] = [None] * self.act_words


# ---- the generator ---------------------------------------------------------------------------

@dataclass
class Exchange:
    """Symbols sent in one go, and what they hold (for the report and for messages)."""

    symbols: list
    frames: list                         # kinds of the frames in it, in order
    between: list = field(default_factory=list)     # garbage and faults between frames
    probe: tuple | None = None           # activation words a READ after it checks


#: Frame kinds and their weights.
FRAME_KINDS = {
    "valid": 30, "bit_flip": 8, "truncated": 7, "wrong_length": 7, "bad_length": 5,
    "oversize_length": 4, "unknown_type": 4, "bad_crc": 7, "bad_memory": 5, "bad_address": 8,
    "bad_count": 5, "line_fault": 8, "stray_sync": 2,
}
#: What valid requests are, and how often.
VALID_KINDS = {Request.WRITE: 35, Request.READ: 25, Request.RUN: 10, Request.STATUS: 12,
               Request.STATS: 15, Request.IDENTIFY: 3}


class FrameGenerator:
    """Exchanges of random and mutated frames, drawn from ``rng`` (see `FRAME_KINDS`).

    Parameters
    ----------
    cfg : AcceleratorConfig
    rng : random.Random
    uart : bool
        Line faults as the UART's pins carry them (a break, a character with a low stop bit),
        else as the byte-stream top's ``line_fault`` pulse.
    used : dict
        Words of each `Mem` the network uses: mutated writes to weights, parameters and the
        program aim there, so that one that changed them would change the golden result.
    max_read : int
        Most words a READ asks for (its reply's length).
    kinds : dict or None
        Weights of frame kinds that replace `FRAME_KINDS`'s.

    Raises
    ------
    ValueError
        When ``kinds`` names a kind that is not one of `FRAME_KINDS`.
    """

    def __init__(self, cfg, rng, *, uart, used, max_read=128, kinds=None):
        self.cfg = cfg
        self.rng = rng
        self.uart = uart
        self.used = used
        self.max_read = max_read
        self.fifo = rx_fifo_depth()
        for name in kinds or {}:
            if name not in FRAME_KINDS:
                raise ValueError(f"Frame kind must be one of {', '.join(FRAME_KINDS)}, "
                                 f"not {name!r}")
        self._kinds, self._weights = zip(*{**FRAME_KINDS, **(kinds or {})}.items())

    # -- helpers -----------------------------------------------------------------------------
    def _count(self, most):
        r = self.rng.random()
        top = 4 if r < 0.5 else 32 if r < 0.85 else most
        return self.rng.randint(1, max(1, min(top, most)))

    def _bytes(self, n, *, avoid_sync=False):
        rng = self.rng
        if not avoid_sync:
            return bytes(rng.getrandbits(8) for _ in range(n))
        return bytes(rng.choice(_NOT_SYNC) for _ in range(n))

    def fault(self, byte=None):
        """A line fault's symbols: a break, or a framing error on ``byte`` (it is lost)."""
        rng = self.rng
        if not self.uart:
            return [(LINE_FAULT, 0)]
        if byte is None or rng.random() < 0.5:
            return [(BREAK, rng.randint(12, 40)), (IDLE, 2)]
        return [(BAD_STOP, byte), (IDLE, 1)]

    def write_payload(self, mem, addr, count, *, lanes=0, words=None):
        words = count if words is None else words
        wb = (lanes or mem_word_bytes(self.cfg, mem)) if words else 0
        head = bytes([(mem & _MEM_MASK) << _MEM_SHIFT | (lanes & _LANES_MASK) << _LANES_SHIFT])
        return head + struct.pack("<HH", addr & 0xFFFF, count & 0xFFFF) + self._bytes(words * wb)

    def _per_frame(self, mem, lanes=0):
        return (MAX_PAYLOAD - 5) // (lanes or mem_word_bytes(self.cfg, mem))

    # -- base requests ------------------------------------------------------------------------
    def valid(self, req=None):
        """A valid request (``(type, payload, meta)``): activation writes only."""
        rng, cfg = self.rng, self.cfg
        if req is None:
            req = rng.choices(list(VALID_KINDS), list(VALID_KINDS.values()))[0]
        if req == Request.WRITE:
            lanes = 0 if rng.random() < 0.7 else rng.randint(1, min(cfg.cols, 16) - 1)
            count = self._count(self._per_frame(Mem.ACT, lanes))
            addr = rng.randrange(cfg.act_depth - count + 1)
            return req, self.write_payload(Mem.ACT.value, addr, count, lanes=lanes), \
                (Mem.ACT, addr, count)
        if req == Request.READ:
            count = self._count(self.max_read) - (rng.random() < 0.05)
            return req, struct.pack("<HH", rng.randrange(cfg.act_depth - count + 1), count), None
        if req == Request.RUN:
            n = self.used[Mem.PROGRAM] + 1                    # with the trap entry
            start = rng.randrange(n + 1)
            return req, bytes([start, rng.randint(0, n - start)]), None
        if req == Request.STATS:
            n = self.used[Mem.PROGRAM] + 1                    # the program length
            start = rng.randrange(n + 1)
            return req, bytes([start, rng.randint(0, min(16, n - start))]), None
        return req, b"", None

    def any_write(self):
        """A WRITE to any memory, aimed at the words the network uses (rejected later)."""
        rng = self.rng
        mem = rng.choice(list(Mem))
        if mem == Mem.ACT:
            return self.valid(Request.WRITE)
        count = self._count(self._per_frame(mem))
        top = max(1, min(self.used[mem], mem_depth(self.cfg, mem) - count + 1))
        addr = rng.randrange(top)
        return Request.WRITE, self.write_payload(mem.value, addr, count), (mem, addr, count)

    def base(self):
        return self.any_write() if self.rng.random() < 0.4 else self.valid()

    # -- frames ------------------------------------------------------------------------------
    def frame(self, kind):
        """The symbols of one frame of ``kind``, and its write's target (or ``None``)."""
        rng = self.rng
        req, payload, meta = self.base() if kind != "valid" else self.valid()
        if kind == "valid":
            return _bytes(raw_frame(req.value, payload)), meta
        if kind == "bit_flip":
            data = bytearray(raw_frame(req.value, payload))
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return _bytes(data), meta
        if kind == "truncated":
            data = raw_frame(req.value, payload)
            return _bytes(data[:rng.randrange(1, len(data))]), meta
        if kind == "wrong_length":
            n = len(payload)
            if rng.random() < 0.5:
                length = max(0, min(MAX_PAYLOAD, n + rng.choice([-3, -2, -1, 1, 2, 3])))
            else:
                length = rng.randint(0, MAX_PAYLOAD)
            if length == n:
                length = n + 1 if n < MAX_PAYLOAD else n - 1
            good = _crc(struct.pack("<BH", req.value, n) + payload)
            crc = good if rng.random() < 0.5 else None
            return _bytes(raw_frame(req.value, payload, length=length, crc=crc)), meta
        if kind == "bad_length":
            # Right for the frame, wrong for the request.
            cut = rng.randint(1, 4)
            payload = payload[:-cut] if rng.random() < 0.5 and len(payload) >= cut \
                else payload + self._bytes(cut)
            return _bytes(raw_frame(req.value, payload[:MAX_PAYLOAD])), meta
        if kind == "oversize_length":
            length = rng.randint(MAX_PAYLOAD + 1, 0xFFFF)
            data = raw_frame(req.value, payload, length=length)
            return _bytes(data[:4 + rng.randint(0, min(len(payload), 64))]), meta
        if kind == "unknown_type":
            kind_byte = rng.choice(_UNKNOWN)
            return _bytes(raw_frame(kind_byte, self._bytes(rng.randint(0, 40)))), None
        if kind == "bad_crc":
            data = raw_frame(req.value, payload)
            crc = int.from_bytes(data[-2:], "big") ^ rng.randint(1, 0xFFFF)
            return _bytes(data[:-2] + crc.to_bytes(2, "big")), meta
        if kind == "bad_memory":
            return self._bad_memory()
        if kind == "bad_address":
            return self._bad_address()
        if kind == "bad_count":
            return self._bad_count()
        if kind == "line_fault":
            data = raw_frame(req.value, payload)
            at = rng.randrange(1, len(data))
            fault = self.fault(data[at])
            rest = data[at + 1:] if fault[0][0] == BAD_STOP else data[at:]
            return [*_bytes(data[:at]), *fault, *_bytes(rest)], meta
        if kind == "stray_sync":
            return _bytes(self._bytes(rng.randint(0, 8), avoid_sync=True) + bytes([SYNC_REQUEST])
                          + self._bytes(rng.randint(0, 3))), None
        raise ValueError(f"Frame kind must be one of {', '.join(FRAME_KINDS)}, not {kind!r}")

    def _bad_memory(self):
        rng, cfg = self.rng, self.cfg
        r = rng.random()
        if r < 0.4:
            mem, lanes = rng.randint(max(_MEMS) + 1, _MEM_MASK), rng.randint(0, _LANES_MASK)
        elif r < 0.7:
            mem, lanes = rng.choice([m for m in _MEMS if m != Mem.ACT.value]), \
                rng.randint(1, _LANES_MASK)
        else:
            lo = min(cfg.cols, 16)
            if lo > _LANES_MASK:
                mem, lanes = max(_MEMS) + 1, 0
            else:
                mem, lanes = Mem.ACT.value, rng.randint(lo, _LANES_MASK)
        wb = lanes or (mem_word_bytes(cfg, mem) if mem in _MEMS else cfg.cols)
        count = self._count((MAX_PAYLOAD - 5) // wb)
        addr = rng.randrange(64)
        return _bytes(raw_frame(Request.WRITE.value,
                                self.write_payload(mem, addr, count, lanes=lanes, words=0)
                                + self._bytes(count * wb))), None

    def _bad_address(self):
        rng, cfg = self.rng, self.cfg
        r = rng.random()
        if r < 0.55:
            mem = rng.choice(list(Mem))
            depth = mem_depth(cfg, mem)
            count = self._count(self._per_frame(mem))
            addr = rng.randint(depth - count + 1, min(0xFFFF, depth + 64))
            meta = (mem, addr, count) if mem == Mem.ACT else None
            return _bytes(raw_frame(Request.WRITE.value,
                                    self.write_payload(mem.value, addr, count))), meta
        if r < 0.7:
            count = self._count(self.max_read)
            addr = rng.randint(cfg.act_depth - count + 1, min(0xFFFF, cfg.act_depth + 64))
            return _bytes(raw_frame(Request.READ.value, struct.pack("<HH", addr, count))), None
        if r < 0.85:
            n = self.used[Mem.PROGRAM] + 1
            start = rng.randint(0, min(255, n + 4))
            count = rng.randint(max(1, n - start + 1), 255 if rng.random() < 0.3 else n + 4)
            return _bytes(raw_frame(Request.RUN.value, bytes([start, min(255, count)]))), None
        n = self.used[Mem.PROGRAM] + 1                        # the program length
        start = rng.randint(0, 255)
        count = rng.randint(max(0, n - start + 1), 255)
        return _bytes(raw_frame(Request.STATS.value, bytes([start, count]))), None

    def _bad_count(self):
        rng = self.rng
        _, payload, meta = self.any_write()
        mem, addr, count = meta
        r = rng.random()
        new = 0 if r < 0.3 else rng.randint(MAX_PAYLOAD, 0xFFFF) if r < 0.5 else \
            max(0, count + rng.choice([-2, -1, 1, 2, 5]))
        if new == count:
            new = count + 1
        payload = payload[:3] + struct.pack("<H", new & 0xFFFF) + payload[5:]
        return _bytes(raw_frame(Request.WRITE.value, payload)), meta

    def small_frames(self):
        """Requests sent right after a frame without waiting: at most the FIFO's bytes."""
        rng, out, kinds, room = self.rng, [], [], self.fifo
        for _ in range(rng.randint(1, 3)):
            choice = rng.choice(["status", "run", "stats", "read", "write", "bad_crc",
                                 "unknown_type"])
            if choice == "status":
                data = raw_frame(Request.STATUS.value)
            elif choice in ("run", "stats"):
                req = Request.RUN if choice == "run" else Request.STATS
                data = raw_frame(req.value, self.valid(req)[1] if rng.random() < 0.8
                                 else bytes([rng.getrandbits(8), rng.getrandbits(8)]))
            elif choice == "read":
                addr = rng.randrange(self.cfg.act_depth + 2)
                data = raw_frame(Request.READ.value, struct.pack("<HH", addr, rng.randint(0, 2)))
            elif choice == "write":
                data = raw_frame(Request.WRITE.value, self.write_payload(
                    Mem.ACT.value, rng.randrange(self.cfg.act_depth + 1), 1, lanes=1))
            elif choice == "bad_crc":
                data = raw_frame(Request.STATUS.value, crc=rng.getrandbits(16))
            else:
                data = raw_frame(rng.choice(_UNKNOWN))
            if len(data) > room:
                break
            room -= len(data)
            out += _bytes(data)
            kinds.append(f"back_to_back:{choice}")
        return out, kinds

    def exchange(self):
        """One exchange: maybe garbage or faults, a frame, maybe requests right behind it."""
        rng = self.rng
        symbols, between = [], []
        if rng.random() < 0.15:
            symbols += _bytes(self._bytes(rng.randint(1, 32), avoid_sync=True))
            between.append("garbage")
        if rng.random() < 0.08:
            symbols += self.fault(rng.getrandbits(8))
            between.append("fault")
        kind = rng.choices(self._kinds, self._weights)[0]
        frame, meta = self.frame(kind)
        symbols += frame
        frames = [kind]
        if kind not in ("truncated", "oversize_length", "stray_sync") and rng.random() < 0.12:
            more, kinds = self.small_frames()
            symbols += more
            frames += kinds
        probe = None
        if meta is not None and meta[0] == Mem.ACT and kind != "valid":
            _, addr, count = meta
            stop = min(addr + count, self.cfg.act_depth)
            if addr < stop:
                probe = (addr, min(stop - addr, self.max_read, self._per_frame(Mem.ACT)))
        return Exchange(symbols, frames, between, probe)


_NOT_SYNC = [b for b in range(256) if b != SYNC_REQUEST]
_UNKNOWN = [b for b in range(256) if b not in _REQUESTS]


def _bytes(data):
    return [(BYTE, b) for b in data]


# ---- the run ---------------------------------------------------------------------------------

@dataclass
class FuzzReport:
    """What a fuzzing run sent and got.

    Members
    -------
    frames : Counter
        Frames sent, by kind (`FRAME_KINDS`; ``back_to_back:...`` for requests sent behind
        another; ``prime`` and ``probe`` for the writes and reads around a rejected one).
    between : Counter
        Garbage runs and line faults sent between frames.
    replies : Counter
        Replies, by type (and ERROR code), every one as the model expected.
    """

    seed: int
    count: int
    burst: int
    divisor: int | None
    timeout: int
    frames: Counter = field(default_factory=Counter)
    between: Counter = field(default_factory=Counter)
    replies: Counter = field(default_factory=Counter)
    exchanges: int = 0
    bursts: int = 0
    golden_checks: int = 0
    splits: int = 0
    cycles: int = 0
    sim_seconds: float = 0.0
    seconds: float = 0.0
    hangs: int = 0
    wrong_replies: int = 0

    @property
    def frames_sent(self):
        return sum(self.frames.values())

    def as_dict(self):
        return {"seed": self.seed, "count": self.count, "burst": self.burst,
                "divisor": self.divisor, "timeout_cycles": self.timeout,
                "frames": dict(self.frames),
                "between": dict(self.between), "replies": dict(self.replies),
                "frames_sent": self.frames_sent, "exchanges": self.exchanges,
                "splits": self.splits,
                "bursts": self.bursts, "golden_checks": self.golden_checks,
                "cycles": self.cycles, "sim_seconds": self.sim_seconds,
                "seconds": self.seconds, "hangs": self.hangs,
                "wrong_replies": self.wrong_replies}

    def summary(self):
        top = ("byte streams" if self.divisor is None
               else f"UART pins, {self.divisor} cycles a bit")
        top += f", timeout {self.timeout:,} cycles"
        lines = [
            f"controller fuzz, seed {self.seed}, {self.frames_sent} frames in {self.exchanges} "
            f"exchanges ({self.splits} split after a complete frame), {self.bursts} bursts "
            f"({top})",
            "frames:  " + _counts(self.frames),
            "between: " + _counts(self.between),
            "replies: " + _counts(self.replies),
            f"{self.cycles:,} cycles simulated in {self.sim_seconds:.1f} s; {self.seconds:.1f} s "
            f"wall, {self.frames_sent / self.seconds:.0f} frames/s" if self.seconds else "",
            f"{self.hangs} hangs, {self.wrong_replies} wrong replies, "
            f"{self.golden_checks} golden checks passed",
        ]
        return "\n".join(line for line in lines if line)


def _counts(counter):
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1])) \
        or "none"


def _show(symbols):
    out, run = [], bytearray()
    for kind, value in symbols:
        if kind == BYTE:
            run.append(value)
            continue
        if run:
            out.append(run.hex(" "))
            run = bytearray()
        name = {BAD_STOP: "BAD_STOP", BREAK: "BREAK", IDLE: "IDLE", LINE_FAULT: "LINE_FAULT"}[kind]
        out.append(f"[{name} {value:#x}]" if kind == BAD_STOP else
                   f"[{name}]" if kind == LINE_FAULT else f"[{name} {value}]")
    if run:
        out.append(run.hex(" "))
    return " ".join(out) or "(nothing)"


def _network(qnet, cfg):
    from ..sw.compiler import compile_network
    return compile_network(qnet, cfg)


def build(cfg, divisor=None, *, timeout_cycles=None, progress=None):
    """The fuzzed top's harness: ``(exe, divisor, timeout_cycles)``.

    With ``divisor``, the virtual board's UART pins at ``divisor`` clock cycles a bit, with a
    board's frame timeout (`FRAME_TIMEOUT_BITS` bit times), or ``timeout_cycles`` if given
    (a shorter one makes truncated and drained frames cheap); else the controller's byte
    streams, with `STREAM_TIMEOUT_CYCLES` unless ``timeout_cycles`` is given.
    """
    return _build(cfg, divisor, timeout_cycles, progress)


@functools.cache
def _build(cfg, divisor, timeout_cycles, progress):
    # Once a process: converting the design to Verilog (to find its build) takes seconds.
    # Without a timeout of its own, the design `systolic simulate` runs, and so its build.
    top, name, divisor = network_top(cfg, None if divisor is None
                                     else (divisor * _SIM_BAUD, _SIM_BAUD))
    if timeout_cycles is None:
        timeout_cycles = (STREAM_TIMEOUT_CYCLES if divisor is None
                          else FRAME_TIMEOUT_BITS * divisor)
    elif divisor is None:
        top = Controller(cfg, timeout_cycles=timeout_cycles)
    else:
        # The same board around a controller with the shorter timeout.
        top.controller._MustUse__silence = True         # replaced before elaboration
        top.controller = Controller(cfg, timeout_cycles=timeout_cycles)
    exe = build_harness(top, name=name, uart_divisor=divisor, progress=progress)
    return exe, divisor, timeout_cycles


class _Run:
    """One fuzzing run on one harness: generator, model, checker and the golden checks."""

    def __init__(self, harness, program, qnet, images, *, rng, divisor, timeout, report,
                 kinds=None):
        import numpy as np

        from ..sw import golden
        from ..sw.driver import Driver, FramedTransport

        self.h, self.program, self.rng = harness, program, rng
        self.cfg = cfg = program.cfg
        self.divisor, self.timeout, self.report, self.kinds = divisor, timeout, report, kinds
        self.char = 10 * divisor if divisor else 1
        self.images = images
        self.gold = golden.run(qnet, images).logits
        self._np = np
        self.prog_cycles = 0
        self.link = HarnessLink(harness, divisor=divisor, budget=self._budget(2000, 2000, 2))
        self.transport = FramedTransport(self.link, cfg)
        self.driver = Driver(program, self.transport)
        self.history = []
        self.burst = 0
        self.model = None
        L = len(program.layers)
        self.gen = FrameGenerator(cfg, rng, uart=divisor is not None, used={
            Mem.ACT: cfg.act_depth, Mem.WEIGHT: len(program.weights),
            Mem.PARAM: len(program.params), Mem.PROGRAM: L},
            max_read=min(128, MAX_PAYLOAD // cfg.cols), kinds=kinds)

    def _budget(self, sent, received, runs):
        return (2 * (sent * (self.char + 8) + received * self.char) + 2 * self.timeout
                + runs * (2 * self.prog_cycles + 5000) + 50_000)

    # -- set-up and golden checks -------------------------------------------------------------
    def setup(self):
        import asyncio
        asyncio.run(self.driver.load_network())
        cycles = self.golden(first=True)
        program, cfg = self.program, self.cfg
        L = len(program.layers)
        prog_len = L
        self.model = ControllerModel(cfg, entry_cycles=cycles, prog_len=L,
                                     act_words=program.act_words, stream=self.divisor is None)
        self.model.stats[:L] = cycles
        self.model.total = run_cycles(cfg, cycles)
        if cfg.program_depth > L:
            # A trap after the program: an operation the accelerator cannot execute, so that
            # RUN meets BAD_DESCRIPTOR. It changes nothing the network runs.
            ops = {op.value for op in runnable_ops(cfg)}
            bad = next(v for v in range(16) if v not in ops)
            (frame,) = protocol.write_requests(cfg, Mem.PROGRAM, L,
                                               [pack_descriptor(cfg, {"op": bad})])
            self.h.queue(_bytes(frame))
            self._expect([(len(_bytes(frame)) - 1, Expected(Reply.ACK))], None,
                         Exchange(_bytes(frame), ["trap"]), sent=len(frame))
            prog_len = L + 1
        self.model.prog_len = prog_len

    def golden(self, first=False):
        """One image through the driver on the same harness: its logits exact."""
        import asyncio
        n = self.report.golden_checks
        image = self.images[n % len(self.images)]
        resent, reruns = self.transport.resent, self.driver.reruns
        try:
            result = asyncio.run(self.driver.infer(image))
        except Exception as e:
            self._fail(f"the golden image {n % len(self.images)} failed: {e!r}", None)
        if not self._np.array_equal(result.logits, self.gold[n % len(self.images)]):
            self._fail(f"the golden image {n % len(self.images)} gave logits "
                       f"{result.logits.tolist()}, not {self.gold[n % len(self.images)].tolist()}",
                       None)
        if self.transport.resent != resent or self.driver.reruns != reruns:
            self._fail("the driver had to resend a request on a clean link", None)
        cycles = list(result.layer_cycles)
        run = run_cycles(self.cfg, cycles)
        if result.cycles != run:
            self._fail(f"the golden image's run took {result.cycles} cycles, not {run} (its "
                       f"layers' {cycles} and the controller's between them)", None)
        if first:
            self.prog_cycles = sum(cycles)
            self.link.budget = self._budget(2000, 2000, 2)
        else:
            if cycles != self.model.entry_cycles:
                self._fail(f"the golden image's layers took {cycles} cycles, not "
                           f"{self.model.entry_cycles}", None)
            self.model.forget_activations()
            self.model.total = run
        self.report.golden_checks += 1
        return cycles

    # -- exchanges ---------------------------------------------------------------------------
    def exchange(self):
        gen = self.gen
        for _ in range(100):
            ex = gen.exchange()
            model = self.model.clone()
            try:
                events = model.feed(ex.symbols)
                final = model.quiet()
            except _Veto:
                continue
            break
        else:                                                   # pragma: no cover
            raise RuntimeError("the generator kept making exchanges the fuzzer must not send")
        if ex.probe is not None and any(self.model.act[a] is None for a in
                                        range(ex.probe[0], sum(ex.probe))):
            self._prime(*ex.probe)
            model = self.model.clone()
            events, final = model.feed(ex.symbols), model.quiet()
        self._send(ex, model, events, final)
        if ex.probe is not None:
            self._probe(*ex.probe)

    def _prime(self, addr, count):
        payload = self.gen.write_payload(Mem.ACT.value, addr, count)
        self._single(raw_frame(Request.WRITE.value, payload), "prime")

    def _probe(self, addr, count):
        self._single(raw_frame(Request.READ.value, struct.pack("<HH", addr, count)), "probe")

    def _single(self, frame, kind):
        ex = Exchange(_bytes(frame), [kind])
        model = self.model.clone()
        events, final = model.feed(ex.symbols), model.quiet()
        self._send(ex, model, events, final)

    def _send(self, ex, model, events, final):
        """Send the exchange, split where the back-to-back rule needs it; check the replies."""
        symbols = ex.symbols
        self.history.append(ex)
        self.report.exchanges += 1
        self.report.frames.update(ex.frames)
        self.report.between.update(ex.between)
        start = 0
        pending = list(events)
        while True:
            cut = len(symbols)
            now = [e for e in pending if e[0] >= start]
            if now:
                first = now[0][0]
                rest = symbols[first + 1:]
                if (any(k not in (BYTE, IDLE) for k, _ in rest)
                        or sum(k == BYTE for k, _ in rest) > self.gen.fifo):
                    cut = first + 1
                    self.report.splits += 1
            part = [e for e in pending if start <= e[0] < cut]
            last = cut == len(symbols)
            self.h.queue(symbols[start:cut])
            self._expect(part, final if last else None, ex, sent=cut - start)
            if last:
                break
            start = cut
        self.model = model

    def _expect(self, events, final, ex, *, sent):
        want = [e for _, e in events] + ([final] if final is not None else [])
        size = sum(e.size for e in want)
        runs = sum(e.kind == Reply.DONE or e.label == "ERROR BAD_DESCRIPTOR" for e in want)
        budget = self._budget(sent, size, runs)
        got = self.h.recv(size, budget) if size else b""
        at = 0
        for i, e in enumerate(want):
            data = got[at:at + e.size]
            why = e.mismatch(data)
            if why is not None:
                if len(data) < e.size:
                    self.report.hangs += 1
                    why = (f"reply {i + 1} of {len(want)} ({e.label}) did not come within "
                           f"{budget:,} cycles; {why}")
                else:
                    self.report.wrong_replies += 1
                    why = f"reply {i + 1} of {len(want)}: {why}"
                self._fail(why, ex, want=want, got=got)
            self.report.replies[e.label] += 1
            at += e.size

    def end_burst(self):
        """Nothing more from the device once the line has been quiet; then a golden image."""
        quiet = self.timeout * 3 // 2 + 16 * self.char
        try:
            dropped = self.h.quiet(quiet, 2 * quiet + 100_000)
        except SimulationError as e:
            self.report.hangs += 1
            self._fail(f"the line did not go quiet after the burst: {e}", None)
        if dropped:
            self.report.wrong_replies += 1
            self._fail(f"{dropped} bytes came after the burst's last reply", None)
        self.golden()
        self.report.bursts += 1
        self.history.clear()
        self.burst += 1

    def _fail(self, why, ex, *, want=(), got=b""):
        r = self.report
        d = ("" if self.divisor is None else f" --divisor {self.divisor}") \
            + f" --timeout-cycles {self.timeout}"
        if self.kinds:
            d += f" (and frame kinds weighted {self.kinds})"
        lines = [f"Controller fuzz failed: {why}",
                 f"seed {r.seed}, burst {self.burst} (from 0), exchange {len(self.history)} of "
                 f"the burst, after {r.frames_sent} frames; replay with: python bench/fuzz.py "
                 f"--seed {r.seed} --count {r.count} --burst {r.burst}{d}"]
        if ex is not None:
            lines.append(f"the exchange ({', '.join(ex.frames)}): {_show(ex.symbols)}")
            lines.append("expected: " + (", ".join(f"{e.label} "
                                                   f"{e.payload[:32].hex(' ')}" for e in want)
                                         or "no reply"))
            lines.append(f"got: {bytes(got[:256]).hex(' ') or 'nothing'}")
        earlier = self.history[:-1] if ex is not None else self.history
        if earlier:
            lines.append("earlier exchanges of the burst (oldest first):")
            lines += [f"  {', '.join(e.frames)}: {_show(e.symbols)}" for e in earlier[-8:]]
        raise FuzzFailure("\n".join(lines))


def fuzz(qnet, cfg, *, count=10_000, seed=0, burst=50, divisor=None, timeout_cycles=None,
         kinds=None, images=16, log=None, progress=None):
    """Fuzz the controller with ``count`` frames; return a `FuzzReport`.

    Parameters
    ----------
    qnet : QNet
        The network loaded once at the start, one of whose images runs after every burst.
    cfg : AcceleratorConfig
    count : int
        Frames to send (the golden checks' frames not counted).
    seed : int
    burst : int
        Frames between golden checks.
    divisor : int or None
        ``None``: the controller's byte streams (line faults as its ``line_fault`` input);
        else the virtual board's UART pins at ``divisor`` clock cycles a bit (breaks and
        framing errors through the UART).
    timeout_cycles : int or None
        The controller's quiet timeout in cycles (see `build`; default: a board's on the
        UART pins, `STREAM_TIMEOUT_CYCLES` on the byte streams).
    kinds : dict or None
        Weights of frame kinds replacing those of `FRAME_KINDS` (``{"line_fault": 40}``).
    images : int
        Distinct images the golden checks cycle through.
    log : callable or None
        Called with a line of text after every 10 bursts.

    Raises
    ------
    FuzzFailure
        At the first wrong, missing or extra reply, or wrong golden result; its message has the
        seed, the burst and the exact symbols to replay it.
    """
    for name, v in (("count", count), ("burst", burst), ("images", images)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, not {v!r}")
    program = _network(qnet, cfg)
    import numpy as np
    rng_images = np.random.default_rng(seed)
    pics = rng_images.integers(0, 128, (images, *qnet.input_shape)).astype(np.int8)
    exe, divisor, timeout = build(cfg, divisor, timeout_cycles=timeout_cycles, progress=progress)
    report = FuzzReport(seed, count, burst, divisor, timeout)
    started = time.monotonic()
    with Harness(exe) as harness:
        run = _Run(harness, program, qnet, pics, rng=random.Random(seed), divisor=divisor,
                   timeout=timeout, report=report, kinds=kinds)
        run.setup()
        report.frames.clear()
        report.replies.clear()
        report.exchanges = 0
        next_check = burst
        while report.frames_sent < count:
            run.exchange()
            if report.frames_sent >= min(next_check, count):
                run.end_burst()
                next_check += burst
                if log is not None and report.bursts % 10 == 0:
                    log(f"{report.frames_sent}/{count} frames, {report.bursts} bursts")
        report.cycles, report.sim_seconds = harness.info()
    report.seconds = time.monotonic() - started
    return report
