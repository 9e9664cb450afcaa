"""The host driver's recovery rules on a scripted link: what is resent, what is not, and the
errors when recovery fails. (The same driver recovers from real faults on the virtual board's
serial pins in ``tests/test_deploy.py``.)"""

import asyncio

import pytest
from systolic.hw.config import preset
from systolic.hw.isa import Error, Reply, Request
from systolic.sw import protocol as P
from systolic.sw.driver import FramedTransport, Link


class ScriptedLink(Link):
    """Answers each request with the next scripted reply bytes; records what was sent."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.sent = []
        self.resyncs = 0
        self._pending = b""

    async def send(self, data):
        self.sent.append(bytes(data))
        self._pending += self.replies.pop(0)

    async def recv(self, count):
        if len(self._pending) < count:
            raise P.LinkError("no reply")
        data, self._pending = self._pending[:count], self._pending[count:]
        return data

    async def resync(self):
        self.resyncs += 1
        self._pending = b""


def error(code, request):
    return P.encode_reply(Reply.ERROR, bytes([code.value, request.value]))


def transport(replies):
    link = ScriptedLink(replies)
    return link, FramedTransport(link, preset("default"))


def request(t, frame, expect, **kwargs):
    return asyncio.run(t.request(frame, expect, **kwargs))


@pytest.mark.parametrize("code", [Error.BAD_CRC, Error.TRUNCATED, Error.LINE_FAULT,
                                  Error.BAD_LENGTH])
def test_damaged_request_is_resent(code):
    frame = P.status_request()
    link, t = transport([error(code, Request.STATUS), P.encode_reply(Reply.STATUS, bytes(6))])
    assert request(t, frame, Reply.STATUS) == bytes(6)
    assert link.sent == [frame, frame]
    assert (t.resent, link.resyncs) == (1, 1)


def test_rejected_request_is_not_resent():
    link, t = transport([error(Error.BAD_ADDRESS, Request.READ)])
    with pytest.raises(P.DeviceError, match=r"^The accelerator rejected a READ frame: "
                                            r"BAD_ADDRESS$"):
        request(t, P.read_request(0, 1), Reply.DATA)
    assert len(link.sent) == 1


def test_damage_that_persists_gives_up():
    link, t = transport([error(Error.BAD_CRC, Request.STATUS)] * 4)
    with pytest.raises(P.DeviceError, match=r"BAD_CRC$"):
        request(t, P.status_request(), Reply.STATUS)
    assert len(link.sent) == 4


def test_damaged_reply_resends_a_repeatable_request():
    good = P.encode_reply(Reply.DATA, bytes(8))
    bad = bytearray(good)
    bad[-1] ^= 1
    link, t = transport([bytes(bad), good])
    assert request(t, P.read_request(0, 1), Reply.DATA) == bytes(8)
    assert (len(link.sent), link.resyncs) == (2, 1)


@pytest.mark.parametrize("reply", [
    b"\x00\x81\x00\x00\x00\x00",                                     # no sync byte
    P.encode_reply(Reply.ACK)[:-1],                                 # cut short
    error(Error.TRUNCATED, Request.WRITE),                          # another request's
])
def test_lost_run_reply_is_not_resent(reply):
    """RUN overwrites its input: the driver runs the image again instead (`Driver.infer`)."""
    link, t = transport([reply])
    with pytest.raises(P.LinkError):
        request(t, P.run_request(0, 1), Reply.DONE, repeatable=False)
    assert len(link.sent) == 1


def test_out_of_step_reply_names_the_fix():
    link, t = transport([b"\x13\x37\xff\xff"])
    with pytest.raises(P.FrameError, match=r"^Reply must begin with 0x5a and a length of at "
                                           r"most 1024, not 13 37 ff ff: the link corrupted a "
                                           r"reply or is out of step \(check the baud rate\)$"):
        request(t, P.status_request(), Reply.STATUS, repeatable=False)
