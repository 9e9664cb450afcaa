"""The host side of the framed byte protocol (``docs/protocol.md``): encode requests, decode
replies. The frame types, error codes and frame check are `systolic.hw.isa`'s, the same
definitions the controller's gateware is built from.
"""

import struct
from dataclasses import dataclass

from ..hw.isa import (
    FRAME_CRC,
    IDENTIFY_FIELDS,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SYNC_REPLY,
    SYNC_REQUEST,
    WRITE_TARGET,
    Error,
    Mem,
    Reply,
    Request,
    identify_payload,
    mem_word_bytes,
)
from .errors import SystolicError

__all__ = [
    "DeviceError", "FrameError", "IdentityMismatch", "LinkError", "ReplyFrame", "ReplyParser",
    "check_identity", "encode_request", "expected_identity", "identify_request",
    "parse_identity", "read_request", "unpacked_word",
    "run_request", "stats_request", "status_request", "write_requests",
]

_CRC = FRAME_CRC(8)


class LinkError(SystolicError):
    """The link lost or corrupted a reply: it did not come, or came malformed."""


class FrameError(LinkError):
    """A reply frame from the device is malformed (bad sync, length or frame check)."""


class DeviceError(SystolicError):
    """The device answered a request with an ERROR reply."""

    def __init__(self, code, request):
        self.code = code
        self.request = request
        try:
            name = Error(code).name
        except ValueError:
            name = f"unknown error {code}"
        try:
            req = Request(request).name
        except ValueError:
            req = f"request type {request:#04x}"
        super().__init__(f"The accelerator rejected a {req} frame: {name}")


def _frame(sync, kind, payload):
    body = struct.pack("<BH", kind, len(payload)) + bytes(payload)
    return bytes([sync]) + body + _CRC.compute(body).to_bytes(2, "big")


def encode_request(kind, payload=b""):
    """One request frame: sync, type, length, payload, CRC-16 (high byte first)."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload must be at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    return _frame(SYNC_REQUEST, int(getattr(kind, "value", kind)), payload)


def encode_reply(kind, payload=b""):
    """One reply frame, as the device sends it (for tests and simulated devices)."""
    return _frame(SYNC_REPLY, int(getattr(kind, "value", kind)), payload)


def write_requests(cfg, mem, addr, words, *, lanes=0):
    """WRITE frames loading ``words`` (integers) into ``mem`` from ``addr``, split to fit.

    With ``lanes`` (activations only, see `WRITE_TARGET`), each word goes in its ``lanes``
    low bytes; the others must be zero, or with ``cfg.dense_conv`` may repeat them (what the
    device writes there).
    """
    mem = Mem(mem)
    if lanes and (mem != Mem.ACT or not 0 < lanes < min(cfg.cols, 16)):
        raise ValueError(f"lanes must be 0, or for activations between 1 and "
                         f"{min(cfg.cols, 16) - 1}, not {lanes!r}")
    wb = lanes or mem_word_bytes(cfg, mem)
    target = WRITE_TARGET.const({"mem": mem.value, "lanes": lanes}).as_value().value
    per_frame = (MAX_PAYLOAD - 5) // wb
    if lanes:
        words = [_packed(cfg, w, lanes) for w in words]
    frames = []
    for i in range(0, len(words), per_frame):
        chunk = words[i:i + per_frame]
        payload = struct.pack("<BHH", target, addr + i, len(chunk))
        payload += b"".join(int(w).to_bytes(wb, "little") for w in chunk)
        frames.append(encode_request(Request.WRITE, payload))
    return frames


def unpacked_word(cfg, low, lanes):
    """The activation word the device stores for ``low``, a word's ``lanes`` low lanes sent
    packed: the other lanes 0, or with ``cfg.dense_conv`` repeating them (lane ``l`` holds
    lane ``l % lanes``)."""
    if not cfg.dense_conv:
        return low
    repeated = sum(low << (8 * lanes * k) for k in range(-(-cfg.cols // lanes)))
    return repeated & ((1 << cfg.word_bits) - 1)


def _packed(cfg, word, lanes):
    """The low ``lanes`` lanes of an activation word sent packed; a word whose other lanes
    the device would not write as they are is a ValueError, not a silent loss."""
    low = int(word) & ((1 << 8 * lanes) - 1)
    if int(word) != low and int(word) != unpacked_word(cfg, low, lanes):
        raise ValueError(f"an activation word sent in {lanes} lane(s) must hold 0 in its other "
                         f"lanes{', or repeat them' if cfg.dense_conv else ''}: {word:#x}")
    return low


def read_request(addr, count):
    """READ ``count`` activation words from ``addr``."""
    return encode_request(Request.READ, struct.pack("<HH", addr, count))


def run_request(start, count):
    """RUN program entries ``start .. start + count - 1``."""
    return encode_request(Request.RUN, bytes([start, count]))


def status_request():
    return encode_request(Request.STATUS)


def stats_request(start, count):
    """The cycle counters of program entries ``start .. start + count - 1``."""
    return encode_request(Request.STATS, bytes([start, count]))


def identify_request():
    """Ask the device for its protocol version and configuration (an IDENTITY reply)."""
    return encode_request(Request.IDENTIFY)


def parse_identity(payload):
    """The IDENTITY reply's fields (`systolic.hw.isa.IDENTIFY_FIELDS`) as a dict.

    Raises
    ------
    SystolicError
        When the device speaks another protocol version.
    FrameError
        When the payload's length is not the version's.
    """
    payload = bytes(payload)
    if payload[:1] != bytes([PROTOCOL_VERSION]):
        version = payload[0] if payload else "none"
        raise SystolicError(
            f"The device speaks protocol version {version}, this host version "
            f"{PROTOCOL_VERSION}; use a bitstream and a host built from the same release")
    size = sum(f.size for f in IDENTIFY_FIELDS)
    if len(payload) != size:
        raise FrameError(f"IDENTITY reply must be {size} bytes, not {len(payload)}")
    fields, at = {}, 0
    for f in IDENTIFY_FIELDS:
        fields[f.name] = int.from_bytes(payload[at:at + f.size], "little")
        at += f.size
    return fields


def expected_identity(cfg):
    """The fields of the IDENTITY reply of an accelerator built for ``cfg``."""
    from ..hw.controller import runnable_ops

    return parse_identity(identify_payload(cfg, runnable_ops(cfg)))


class IdentityMismatch(SystolicError):
    """The device is not built for the configuration the host compiled for."""


def check_identity(cfg, identity):
    """Raise `IdentityMismatch`, naming every field that differs, unless the device whose
    IDENTITY fields are ``identity`` is an accelerator built for ``cfg``."""
    from ..hw.config import PRESETS

    want = expected_identity(cfg)
    diff = [f"{name} is {identity.get(name)}, not {value}" for name, value in want.items()
            if identity.get(name) != value]
    if not diff:
        return
    like = [name for name, preset in PRESETS.items() if expected_identity(preset) == identity]
    built = f" (it matches the {like[0]!r} preset)" if like else ""
    raise IdentityMismatch(
        f"The device is not the accelerator the network was compiled for: its "
        f"{'; '.join(diff)}. Its bitstream was built for another configuration{built}: "
        f"compile the network for the device's configuration, or load a bitstream built for "
        f"this one (systolic build)")


@dataclass(frozen=True)
class ReplyFrame:
    kind: Reply
    payload: bytes

    def check(self):
        """Raise `DeviceError` for an ERROR reply; return ``self`` otherwise."""
        if self.kind == Reply.ERROR:
            raise DeviceError(self.payload[0], self.payload[1])
        return self


class ReplyParser:
    """Incremental reply decoder: feed bytes, collect `ReplyFrame` objects.

    Bytes before a sync byte are an error (the device sends nothing between frames), as are
    an unknown reply type and a failed frame check: each raises `FrameError`.
    """

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        """Add received bytes; return the complete frames they finish."""
        self._buf += data
        frames = []
        while self._buf:
            if self._buf[0] != SYNC_REPLY:
                bad = self._buf[0]
                self._buf.clear()
                raise FrameError(f"Reply must start with {SYNC_REPLY:#04x}, not {bad:#04x}; "
                                 "the link is out of step (check the baud rate)")
            if len(self._buf) < 4:
                break
            kind, length = struct.unpack_from("<BH", self._buf, 1)
            end = 4 + length + 2
            if len(self._buf) < end:
                break
            body, check = bytes(self._buf[1:4 + length]), bytes(self._buf[4 + length:end])
            del self._buf[:end]
            if _CRC.compute(body).to_bytes(2, "big") != check:
                raise FrameError("Reply frame check failed: the link corrupted a reply")
            try:
                kind = Reply(kind)
            except ValueError:
                raise FrameError(f"Reply type must be one of "
                                 f"{', '.join(r.name for r in Reply)}, not {kind:#04x}") from None
            frames.append(ReplyFrame(kind, body[3:]))
        return frames
