"""The host driver's recovery rules on a scripted link: what is resent, what is not, and the
errors when recovery fails. (The same driver recovers from real faults on the virtual board's
serial pins in ``tests/test_deploy.py``.)"""

import asyncio

import pytest
from net_common import random_qnet
from systolic.hw.config import preset
from systolic.hw.controller import runnable_ops
from systolic.hw.isa import PROTOCOL_VERSION, Error, Mem, Reply, Request, identify_payload
from systolic.sw import protocol as P
from systolic.sw.compiler import compile_network
from systolic.sw.driver import Driver, FramedTransport, Link
from systolic.sw.errors import SystolicError


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


# ---- IDENTIFY: the driver checks the device against the configuration it compiled for --------

def identity_reply(cfg):
    return P.encode_reply(Reply.IDENTITY, identify_payload(cfg, runnable_ops(cfg)))


def test_identify_parses_the_device_configuration():
    cfg = preset("small")
    link, t = transport([identity_reply(cfg)])
    got = asyncio.run(t.identify())
    assert link.sent == [P.identify_request()]
    assert got == P.expected_identity(cfg)
    assert (got["version"], got["rows"], got["cols"], got["act_depth"], got["rq_lanes"]) == (
        PROTOCOL_VERSION, 1, 4, 1024, 1)
    # Every operation the engines take, as bits.
    assert got["ops"] == sum(1 << op.value for op in runnable_ops(cfg))


def test_load_network_refuses_a_device_built_for_another_configuration():
    """Nothing is written to a device built for another configuration; the error names each
    field that differs and the preset the device matches."""
    program = compile_network(random_qnet("lenet-digits"), preset("default"))
    link, t = transport([identity_reply(preset("small"))])
    with pytest.raises(P.IdentityMismatch, match=(
            r"^The device is not the accelerator the network was compiled for: its rows is 1, "
            r"not 8; cols is 4, not 8; .*Its bitstream was built for another configuration \(it "
            r"matches the 'small' preset\): compile the network for the device's configuration, "
            r"or load a bitstream built for this one \(systolic build\)$")):
        asyncio.run(Driver(program, t).load_network())
    assert link.sent == [P.identify_request()]


def test_load_network_refuses_a_device_without_the_raster_walk():
    """A network compiled for the `lenet` preset (``dense_raster``) walks lenet5's second
    convolution in raster order (`systolic.hw.isa.dense_raster`), which a device of the same
    fields without it would read as 13 input words: IDENTITY's `dense_conv` says which, and
    the driver refuses the device before it writes anything."""
    program = compile_network(random_qnet("lenet5"), preset("lenet"))
    assert program.layers[1].fields["cin_words"] == 13
    device = preset("lenet").replace(dense_raster=False)
    link, t = transport([identity_reply(device)])
    with pytest.raises(P.IdentityMismatch, match=(
            r"^The device is not the accelerator the network was compiled for: its dense_conv "
            r"is 1, not 3\. ")):
        asyncio.run(Driver(program, t).load_network())
    assert link.sent == [P.identify_request()]


def test_load_network_on_the_right_device_writes_the_network():
    program = compile_network(random_qnet("lenet-digits"), preset("default"))
    writes = sum(len(P.write_requests(program.cfg, mem, 0, [0] * n)) for mem, n in [
        (Mem.WEIGHT, len(program.weights)), (Mem.PARAM, len(program.params)),
        (Mem.PROGRAM, len(program.commands))])
    link, t = transport([identity_reply(preset("default"))] + [P.encode_reply(Reply.ACK)] * 99)
    driver = Driver(program, t)
    asyncio.run(driver.load_network())
    assert driver.identity == P.expected_identity(preset("default"))
    assert len(link.sent) == 1 + writes


def test_a_device_without_identify_is_told_to_rebuild():
    link, t = transport([error(Error.UNKNOWN_REQUEST, Request.IDENTIFY)])
    with pytest.raises(SystolicError, match=r"^The device does not answer IDENTIFY "
                                            r"\(UNKNOWN_REQUEST\): its bitstream is older than "
                                            rf"protocol version {PROTOCOL_VERSION}; rebuild it "
                                            r"\(systolic build\)$"):
        asyncio.run(t.identify())


def test_another_protocol_version_is_refused():
    payload = bytearray(identify_payload(preset("default"), runnable_ops(preset("default"))))
    payload[0] = PROTOCOL_VERSION + 1
    link, t = transport([P.encode_reply(Reply.IDENTITY, bytes(payload))])
    with pytest.raises(SystolicError, match=rf"^The device speaks protocol version "
                                            rf"{PROTOCOL_VERSION + 1}, this host version "
                                            rf"{PROTOCOL_VERSION}; use a bitstream and a host "
                                            r"built from "
                                            r"the same release$"):
        asyncio.run(t.identify())
