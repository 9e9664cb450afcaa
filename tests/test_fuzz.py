"""The controller fuzzed through the fast harness (`systolic.sim.fuzz`): random and mutated
frames, every reply as the reference model says, the network's golden result after every burst.

CI sends 1,000 frames on the controller's byte streams and 40 on the virtual board's UART pins
(real breaks and framing errors); ``SYSTOLIC_FUZZ_FRAMES`` (and ``SYSTOLIC_FUZZ_SEED``) ask for
more, e.g. ``SYSTOLIC_FUZZ_FRAMES=10000``. The model itself is pinned on hand-made frames first,
and a wrong model must be caught, with a message that replays it."""

import os
import random
import re

import pytest
from net_common import random_qnet
from systolic.hw.boards import get_board
from systolic.hw.config import preset
from systolic.hw.isa import Error, Mem, Reply, Request, mem_depth
from systolic.sim import fuzz as fz
from systolic.sim.fast import BREAK, BYTE, IDLE, LINE_FAULT

FRAMES = int(os.environ.get("SYSTOLIC_FUZZ_FRAMES", "1000"))
SEED = int(os.environ.get("SYSTOLIC_FUZZ_SEED", "0"))


def _model(stream=True):
    cfg = preset("default")
    return fz.ControllerModel(cfg, entry_cycles=[100, 20, 30], prog_len=4, act_words=64,
                              stream=stream)


def _feed(model, data, faults=()):
    symbols = []
    for i, b in enumerate(data):
        if i in faults:
            symbols.append((LINE_FAULT, 0))
        symbols.append((BYTE, b))
    return [e for _, e in model.feed(symbols)]


def _error(code, req):
    return fz.Expected.error(code, req)


def test_model_answers_as_the_protocol_says():
    m = _model()
    ok = fz.raw_frame(Request.STATUS.value)
    assert _feed(m, ok) == [fz.Expected(Reply.STATUS, bytes([0, 4, 0, 0, 0, 0]))]
    assert _feed(m, fz.raw_frame(Request.STATUS.value, crc=0)) == [
        _error(Error.BAD_CRC, Request.STATUS.value)]
    assert _feed(m, fz.raw_frame(0x42)) == [_error(Error.UNKNOWN_REQUEST, 0x42)]
    assert _feed(m, fz.raw_frame(Request.READ.value, bytes(3))) == [
        _error(Error.BAD_LENGTH, Request.READ.value)]
    # The last error, until the next one.
    assert _feed(m, ok) == [fz.Expected(Reply.STATUS, bytes([Error.BAD_LENGTH.value, 4, 0, 0,
                                                               0, 0]))]
    # Cut short: TRUNCATED when the line goes quiet, naming type 0 before the type byte.
    assert _feed(m, ok[:3]) == []
    assert m.quiet() == _error(Error.TRUNCATED, Request.STATUS.value)
    assert _feed(m, ok[:1]) == []
    assert m.quiet() == _error(Error.TRUNCATED, 0)
    # Too long: swallowed (a good frame inside it too) until quiet, then BAD_LENGTH.
    assert _feed(m, fz.raw_frame(Request.WRITE.value, length=1025) + ok) == []
    assert m.quiet() == _error(Error.BAD_LENGTH, Request.WRITE.value)
    # A line fault after the sync byte: swallowed, then LINE_FAULT; between frames: nothing.
    assert _feed(m, ok + ok, faults={1, 6}) == []
    assert m.quiet() == _error(Error.LINE_FAULT, 0)
    assert _feed(m, b"\x00\x11" + ok, faults={1}) == [fz.Expected(
        Reply.STATUS, bytes([Error.LINE_FAULT.value, 4, 0, 0, 0, 0]))]
    assert m.quiet() is None


def test_model_write_read_run():
    m = _model()
    cfg = m.cfg
    gen = fz.FrameGenerator(cfg, random.Random(1), uart=False,
                            used={Mem.ACT: 0, Mem.WEIGHT: 1, Mem.PARAM: 1, Mem.PROGRAM: 3})
    payload = gen.write_payload(Mem.ACT.value, 10, 2)
    assert _feed(m, fz.raw_frame(Request.WRITE.value, payload)) == [fz.Expected(Reply.ACK)]
    (data,) = _feed(m, fz.raw_frame(Request.READ.value, bytes([9, 0, 3, 0])))
    assert data.payload[8:] == payload[5:]
    assert data.unknown == ((0, 8),)
    # Past the end: BAD_ADDRESS, nothing written.
    end = mem_depth(cfg, Mem.ACT)
    bad = gen.write_payload(Mem.ACT.value, end - 1, 2)
    assert _feed(m, fz.raw_frame(Request.WRITE.value, bad)) == [
        _error(Error.BAD_ADDRESS, Request.WRITE.value)]
    assert m.act[end - 1] is None
    # Lanes on the weights: BAD_MEMORY; a count the words do not match: BAD_LENGTH.
    lanes = gen.write_payload(Mem.WEIGHT.value, 0, 1, lanes=1)
    assert _feed(m, fz.raw_frame(Request.WRITE.value, lanes)) == [
        _error(Error.BAD_MEMORY, Request.WRITE.value)]
    assert _feed(m, fz.raw_frame(Request.WRITE.value, payload[:-1])) == [
        _error(Error.BAD_LENGTH, Request.WRITE.value)]
    # A valid write to the weights is never sent.
    with pytest.raises(fz._Veto):
        _feed(m, fz.raw_frame(Request.WRITE.value, gen.write_payload(Mem.WEIGHT.value, 0, 1)))
    # RUN: the entries' cycles and the controller's around them (a descriptor is fetched in
    # 30 cycles, 29 bytes through a register, and decoded in 2; the next one while a layer
    # runs; 8 around each layer, 7 around the last); the trap entry (3) is BAD_DESCRIPTOR
    # after the ones before it.
    assert _feed(m, fz.raw_frame(Request.RUN.value, bytes([0, 2]))) == [
        fz.Expected(Reply.DONE, (32 + (100 + 8) + (20 + 7)).to_bytes(4, "little"))]
    assert _feed(m, fz.raw_frame(Request.RUN.value, bytes([1, 3]))) == [
        _error(Error.BAD_DESCRIPTOR, Request.RUN.value)]
    assert m.total == 32 + (30 + 9) + (30 + 9)       # (layers shorter than a fetch wait)
    assert m.act[10] is None
    assert _feed(m, fz.raw_frame(Request.RUN.value, bytes([1, 4]))) == [
        _error(Error.BAD_ADDRESS, Request.RUN.value)]


def test_model_line_fault_between_payload_and_crc():
    """A line_fault pulse in the cycle the controller passes from a frame's payload to its CRC
    breaks the frame like one anywhere else in it (the fuzzer found that cycle deaf)."""
    frame = fz.raw_frame(Request.READ.value, bytes(4))
    for stream in (True, False):
        m = _model(stream=stream)
        assert _feed(m, frame, faults={8}) == []
        assert m.quiet() == _error(Error.LINE_FAULT, Request.READ.value)


def test_back_to_back_fits_the_fifo():
    gen = fz.FrameGenerator(preset("default"), random.Random(3), uart=True,
                            used={Mem.ACT: 0, Mem.WEIGHT: 1, Mem.PARAM: 1, Mem.PROGRAM: 3})
    assert gen.fifo == fz.rx_fifo_depth() == 16
    for _ in range(200):
        symbols, kinds = gen.small_frames()
        assert len(symbols) <= gen.fifo
        assert all(k == BYTE for k, _ in symbols)
        assert all(k.startswith("back_to_back:") for k in kinds)
    assert gen.fault(0x55)[0][0] in (BREAK, fz.BAD_STOP)
    assert gen.fault(0x55)[-1][0] == IDLE


@pytest.mark.slow
def test_fuzz_byte_streams():
    """``FRAMES`` frames on the controller's byte streams: every reply exact, no hang, the
    network exact after every burst."""
    report = fz.fuzz(random_qnet("lenet-digits"), preset("default"), count=FRAMES, seed=SEED,
                     burst=50)
    assert report.frames_sent >= FRAMES
    assert (report.hangs, report.wrong_replies) == (0, 0)
    assert report.golden_checks == report.bursts + 1 >= FRAMES // 50 + 1
    seen = {k.split(":")[0] for k in report.frames}
    assert seen >= set(fz.FRAME_KINDS) | {"back_to_back", "prime", "probe"}
    assert {"ERROR LINE_FAULT", "ERROR TRUNCATED", "ERROR BAD_ADDRESS", "ERROR BAD_MEMORY",
            "ERROR UNKNOWN_REQUEST", "ERROR BAD_CRC", "ERROR BAD_LENGTH", "ACK", "DATA",
            "DONE", "STATUS"} <= set(report.replies)
    print(report.summary())


@pytest.mark.slow
def test_fuzz_byte_streams_lenet_preset():
    """The `lenet` preset's controller, which packs an activation word on its way from the
    shift register to the core (`deep_pipeline`) rather than as its last byte comes in: half
    ``FRAMES`` frames, among them packed WRITEs of every lane count read back. Every reply
    exact, no hang, the network exact after every burst."""
    report = fz.fuzz(random_qnet("lenet-digits"), preset("lenet"), count=FRAMES // 2,
                     seed=SEED + 2, burst=50)
    assert report.frames_sent >= FRAMES // 2
    assert (report.hangs, report.wrong_replies) == (0, 0)
    assert report.golden_checks == report.bursts + 1
    assert {"ACK", "DATA", "DONE"} <= set(report.replies)
    print(report.summary())


@pytest.mark.slow
def test_fuzz_uart_pins():
    """A few frames on the virtual board's UART pins at 8 cycles a bit: breaks and framing
    errors go through the UART receiver, many of them inside frames. The board's frame timeout
    and the design `systolic deploy --sim` runs on the ULX3S (one build for both)."""
    count = max(40, FRAMES // 25)
    cfg = get_board("ulx3s-85f").config().replace(target="generic")
    report = fz.fuzz(random_qnet("lenet-digits"), cfg, count=count,
                     seed=SEED + 1, burst=20, divisor=8,
                     kinds={"line_fault": 60})
    assert (report.hangs, report.wrong_replies) == (0, 0)
    assert report.frames["line_fault"] > 0
    assert report.replies["ERROR LINE_FAULT"] > 0
    print(report.summary())


@pytest.mark.slow
def test_a_wrong_model_is_caught_with_a_replay(monkeypatch):
    """A model one off in the program length: the first STATUS or RUN past it fails, and the
    message has the seed, the burst and the exchange's bytes."""
    real = fz._Run.setup

    def setup(self):
        real(self)
        self.model.prog_len -= 1

    monkeypatch.setattr(fz._Run, "setup", setup)
    with pytest.raises(fz.FuzzFailure) as info:
        fz.fuzz(random_qnet("lenet-digits"), preset("default"), count=300, seed=5, burst=50)
    text = str(info.value)
    assert re.search(r"^Controller fuzz failed: ", text)
    assert "seed 5, burst " in text
    assert "python bench/fuzz.py --seed 5 --count 300" in text
    assert re.search(r"the exchange \(.*\): a5 ", text)
