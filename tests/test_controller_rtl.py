"""The controller's Verilog on Icarus and Verilator: whole programs through the framed byte
protocol, exact against the golden model, and every kind of malformed input answered with an
ERROR reply while the next valid program still runs exactly; a pooling entry the engines cannot
execute is answered with BAD_DESCRIPTOR. On the virtual board's serial pins: garbage, a break
in the middle of a frame, a framing error and a CRC error, each answered (or, between frames,
ignored) with nothing changed, and the next frame served exactly."""

import json
import struct

import numpy as np
import pytest
from systolic.hw import layout
from systolic.hw.config import AcceleratorConfig
from systolic.hw.controller import Controller, runnable_ops
from systolic.hw.isa import (
    FRAME_TIMEOUT_BITS,
    MAX_PAYLOAD,
    Error,
    Mem,
    Reply,
    Request,
    describe_conv,
    describe_pool,
    identify_payload,
    pack_descriptor,
    pack_params,
)
from systolic.hw.virtual import VirtualBoard
from systolic.sim.runner import run_cocotb, selected_simulators
from systolic.sim.vectors import conv_params
from systolic.sw import arith, perfmodel
from systolic.sw import protocol as P

CFG = AcceleratorConfig(rows=2, cols=4, act_depth=256, weight_depth=512, param_depth=16,
                        program_depth=8, max_dim=32)
# Twelve lanes: parameter words of 80 bytes, wider than any of the default configuration's.
WIDE = CFG.replace(cols=12)
# One requantization lane: parameter words of 7 bytes, narrower than the activation words;
# without dense convolutions, so a packed WRITE's other lanes are 0, not repeats.
NARROW_PARAMS = CFG.replace(rows=1, cols=8, requant_lanes=1, dense_conv=False)
TIMEOUT = 64


def network(rng, cfg):
    """A conv + relu + maxpool program, its memory images and its golden output."""
    x = rng.integers(-128, 128, (3, 6, 6)).astype(np.int8)
    w, b, m, s = conv_params(rng, 3, 6, 3)
    y = arith.maxpool2d(arith.requantize(arith.conv2d_acc(x, w, b, padding=1), m, s,
                                         relu=True), 2, 2)
    program = [
        describe_conv(cfg, cin=3, h=6, w=6, cout=6, kh=3, kw=3, pad=1, relu=True,
                      in_base=0, out_base=100),
        describe_pool(cfg, channels=6, h=6, w=6, kernel=2, stride=2, in_base=100, out_base=200),
    ]
    setup = (P.write_requests(cfg, Mem.PROGRAM, 0, [pack_descriptor(cfg, d) for d in program])
             + P.write_requests(cfg, Mem.WEIGHT, 0, layout.conv_weight_words(cfg, w))
             + P.write_requests(cfg, Mem.PARAM, 0, pack_params(cfg, b, m, s))
             + P.write_requests(cfg, Mem.ACT, 0, layout.pack_activations(cfg, x)))
    out_words = layout.pack_activations(cfg, y)
    return setup, out_words


def packed_input(cfg):
    """The input of `network` as its words (three channels: lanes 3 and up are zero)."""
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (3, 6, 6)).astype(np.int8)
    return layout.pack_activations(cfg, x)


def stored_packed(words, lanes, cfg):
    """What a WRITE of ``words`` packed in ``lanes`` bytes stores: their low lanes, repeated
    over the word where the configuration has dense convolutions, else followed by zeros."""
    out = []
    for w in words:
        low = w & ((1 << 8 * lanes) - 1)
        if cfg.dense_conv:
            low = sum(low << 8 * lanes * k for k in range(-(-cfg.cols // lanes)))
        out.append(low & ((1 << cfg.word_bits) - 1))
    return out


def data_reply(words, cfg):
    return P.encode_reply(Reply.DATA, b"".join(w.to_bytes(cfg.cols, "little") for w in words))


def error_reply(code, request):
    return P.encode_reply(Reply.ERROR, bytes([code.value, request]))


ACK = P.encode_reply(Reply.ACK)


def identity_reply(cfg):
    return P.encode_reply(Reply.IDENTITY, identify_payload(cfg, runnable_ops(cfg)))


def exchanges(cfg):
    """(request bytes, gap pattern, expected reply bytes or a checker) in order."""
    rng = np.random.default_rng(5)
    setup, out = network(rng, cfg)
    run, read = P.run_request(0, 2), P.read_request(200, len(out))
    good = [(f, "none", ACK) for f in setup] + [(run, "none", "done"), (read, "none",
                                                                          data_reply(out, cfg))]
    corrupt = bytearray(run)
    corrupt[5] ^= 0x10                                           # a payload bit: CRC fails
    bad_desc = P.write_requests(cfg, Mem.PROGRAM, 2, [pack_descriptor(cfg, {"op": 0})])[0]
    bad_desc = bytearray(bad_desc)
    # Op field (the low 4 bits of the descriptor) = 15: unknown. Recompute the frame check.
    payload = bytearray(bad_desc[4:-2])
    payload[5] |= 0x0F
    bad_desc = P.encode_request(Request.WRITE, bytes(payload))
    xw = packed_input(cfg)
    cases = [
        *good,
        (bytes(corrupt), "random", error_reply(Error.BAD_CRC, Request.RUN.value)),
        (P.encode_request(0x42), "none", error_reply(Error.UNKNOWN_REQUEST, 0x42)),
        (P.encode_request(Request.STATUS, b"\x00"), "none",
         error_reply(Error.BAD_LENGTH, Request.STATUS.value)),
        (run[:6], "none", error_reply(Error.TRUNCATED, Request.RUN.value)),
        (bytes([0xA5, Request.WRITE.value]) + struct.pack("<H", MAX_PAYLOAD + 1) + bytes(40),
         "none", error_reply(Error.BAD_LENGTH, Request.WRITE.value)),
        (P.write_requests(cfg, Mem.ACT, cfg.act_depth - 1, [1, 2])[0], "bursty",
         error_reply(Error.BAD_ADDRESS, Request.WRITE.value)),
        (P.encode_request(Request.WRITE, struct.pack("<BHH", 3, 0, 1) + bytes(3)), "none",
         error_reply(Error.BAD_LENGTH, Request.WRITE.value)),
        (P.run_request(1, 2), "none", error_reply(Error.BAD_ADDRESS, Request.RUN.value)),
        (P.read_request(cfg.act_depth - 2, 3), "none",
         error_reply(Error.BAD_ADDRESS, Request.READ.value)),
        # A wrong length wins over a bad address; a count of 0 or one no frame can hold is a
        # wrong length too.
        (P.encode_request(Request.WRITE, struct.pack("<BHH", 0, cfg.act_depth - 1, 2)
                          + bytes(cfg.cols)), "none",
         error_reply(Error.BAD_LENGTH, Request.WRITE.value)),
        (P.encode_request(Request.WRITE, struct.pack("<BHH", 0, 0, 0)), "none",
         error_reply(Error.BAD_LENGTH, Request.WRITE.value)),
        (P.encode_request(Request.WRITE, struct.pack("<BHH", 1, 0, 1 << 14 | 1)
                          + bytes(cfg.cols)), "none",
         error_reply(Error.BAD_LENGTH, Request.WRITE.value)),
        (P.encode_request(Request.WRITE, struct.pack("<BHH", 4, 0, 1) + bytes(cfg.cols)),
         "none", error_reply(Error.BAD_MEMORY, Request.WRITE.value)),
        # Packed words are for activations only, and narrower than a word.
        (P.encode_request(Request.WRITE, struct.pack("<BHH", 1 | 2 << 4, 0, 1) + bytes(2)),
         "none", error_reply(Error.BAD_MEMORY, Request.WRITE.value)),
        (P.encode_request(Request.WRITE, struct.pack("<BHH", 0 | cfg.cols << 4, 0, 1)
                          + bytes(cfg.cols)), "none",
         error_reply(Error.BAD_MEMORY, Request.WRITE.value)),
        (P.encode_request(Request.WRITE, struct.pack("<BHH", 0 | 3 << 4, 0, 2) + bytes(7)),
         "none", error_reply(Error.BAD_LENGTH, Request.WRITE.value)),
        (P.stats_request(cfg.program_depth - 1, 2), "none",
         error_reply(Error.BAD_ADDRESS, Request.STATS.value)),
        # STATS is bounded by the program's length (2 entries so far), not its memory's.
        (P.stats_request(1, 2), "none", error_reply(Error.BAD_ADDRESS, Request.STATS.value)),
        # A READ whose reply would not fit a frame.
        (P.read_request(0, MAX_PAYLOAD // cfg.cols + 1), "none",
         error_reply(Error.BAD_LENGTH, Request.READ.value)),
        # IDENTIFY: the configuration, whatever happened before; no payload.
        (P.identify_request(), "random", identity_reply(cfg)),
        (P.encode_request(Request.IDENTIFY, b"\x00"), "none",
         error_reply(Error.BAD_LENGTH, Request.IDENTIFY.value)),
        # Empty reads and runs.
        (P.read_request(cfg.act_depth, 0), "none", P.encode_reply(Reply.DATA)),
        (P.stats_request(0, 0), "none", P.encode_reply(Reply.DATA)),
        (P.run_request(2, 0), "none",                # (its one cycle: the check that ends it)
         P.encode_reply(Reply.DONE, perfmodel.run_cycles(cfg, []).to_bytes(4, "little"))),
        (bytes([0x00, 0x13, 0x5A, 0xFF]), "none", b""),          # garbage between frames
        (bad_desc, "none", ACK),
        (P.run_request(2, 1), "none", error_reply(Error.BAD_DESCRIPTOR, Request.RUN.value)),
        # The input written packed, three bytes a word, over words of 127s: read back, the
        # lanes past the third repeat the three (dense convolutions read them; 0 without).
        *[(f, "none", ACK) for f in
          P.write_requests(cfg, Mem.ACT, 0, [(1 << 8 * cfg.cols) // 255 * 127] * len(xw))],
        *[(f, "random", ACK) for f in P.write_requests(cfg, Mem.ACT, 0, xw, lanes=3)],
        (P.read_request(0, len(xw)), "none", data_reply(stored_packed(xw, 3, cfg), cfg)),
        # The next valid program runs exactly, on a fresh input.
        *[(f, "random", ACK) for f in setup[-1:]],
        (run, "cycle", "done"),
        (read, "random/bursty", data_reply(out, cfg)),
        (P.stats_request(0, 2), "none", "stats"),
        # Replies taken as slowly as a UART takes them: a byte, then a long wait.
        (P.stats_request(0, 2), "none/bursty", "stats"),
        (P.status_request(), "none/bursty", "status"),
        (P.status_request(), "none", "status"),
    ]
    return cases


def run_exchanges(cfg, cases, sim, tmp_path, *, uart=None):
    """The reply bytes of each of ``cases`` (see `exchanges`; a fourth element, where there
    is one, damages the request on the wire), sent in order to one device: the controller,
    or with ``uart = (clk_hz, baud)`` the virtual board, through its serial pins."""
    if uart is None:
        top, name, timeout = Controller(cfg, timeout_cycles=TIMEOUT), "controller", TIMEOUT
    else:
        top, name = VirtualBoard(cfg, clk_freq=uart[0], baud=uart[1]), "virtual_board"
        timeout = FRAME_TIMEOUT_BITS * top.bridge.divisor
    vectors = {"timeout_cycles": timeout, "exchanges": [
        {"request": list(case[0]), "gap": case[1], "seed": i,
         "replies": 0 if case[2] == b"" else 1, "budget": 20_000}
        | ({"damage": case[3]} if len(case) > 3 else {}) for i, case in enumerate(cases)]}
    if uart is not None:
        vectors["uart_divisor"] = top.bridge.divisor
    (tmp_path / "vectors.json").write_text(json.dumps(vectors))
    results = tmp_path / "results.json"
    run_cocotb(top, name=name, test_module="test_controller", sim=sim,
               build_key=[cfg.as_dict(), timeout, uart],
               extra_env={"SYSTOLIC_VECTORS": tmp_path / "vectors.json",
                          "SYSTOLIC_RESULTS": results}, timeout=600)
    return [bytes(r) for r in json.loads(results.read_text())]


def check_replies(cfg, cases, replies, *, program_length, last_run,
                  last_error=Error.BAD_DESCRIPTOR):
    """Check each reply against its case: exact bytes, or one of the checkers ``"done"`` (a
    DONE frame; its cycle total is collected), ``"stats"`` (a DATA frame of two per-layer
    counters, from which the performance model gives the last run's total exactly, the
    controller's cycles between them added: `perfmodel.run_cycles`) and ``"status"`` (a
    STATUS frame: ``last_error``, ``program_length`` entries, and the total
    ``last_run(done)`` of the totals so far). Returns the DONE totals in order."""
    done = []
    for i, (case, got) in enumerate(zip(cases, replies, strict=True)):
        want = case[2]
        if isinstance(want, bytes):
            assert got == want, f"exchange {i}: {got.hex()} != {want.hex()}"
            continue
        (frame,) = P.ReplyParser().feed(got)
        if want == "done":
            assert frame.kind == Reply.DONE
            done.append(int.from_bytes(frame.payload, "little"))
        elif want == "stats":
            assert frame.kind == Reply.DATA
            per_layer = struct.unpack("<2I", frame.payload)
            assert all(c > 0 for c in per_layer)
            assert perfmodel.run_cycles(cfg, per_layer) == done[-1]
        else:
            assert want == "status"
            assert frame.kind == Reply.STATUS
            assert frame.payload[0] == last_error.value
            assert frame.payload[1] == program_length
            assert int.from_bytes(frame.payload[2:], "little") == last_run(done)
    return done


# A configuration other than `CFG` runs on one simulator only, to keep the suite short: Icarus
# where it is selected, which builds it in a second and simulates these exchanges in seconds (a
# Verilator build of each takes a minute or more for a run of seconds). `CFG` runs on both as a
# controller (as the virtual board on `_UART_SIM`), and the fast harness runs every other
# configuration on Verilator.
_ONE_SIM = "icarus" if "icarus" in selected_simulators() else selected_simulators()[0]
_PROTOCOL_CASES = [pytest.param(sim, cfg, id=f"{sim}-{name}")
                   for sim in selected_simulators()
                   for cfg, name in [(CFG, "4-lanes"), (WIDE, "12-lanes"),
                                     (NARROW_PARAMS, "8-lanes-1-requant-lane")]
                   if cfg is CFG or sim == _ONE_SIM]


@pytest.mark.slow
@pytest.mark.parametrize(("sim", "cfg"), _PROTOCOL_CASES)
def test_controller_protocol(sim, cfg, tmp_path):
    cases = exchanges(cfg)
    replies = run_exchanges(cfg, cases, sim, tmp_path)
    done_cycles = check_replies(cfg, cases, replies, program_length=3,
                                last_run=lambda done: done[-1])
    assert done_cycles[0] == done_cycles[1]


@pytest.mark.slow
@pytest.mark.parametrize(("sim", "pooling"), [
    pytest.param(_ONE_SIM, pooling, id=f"{_ONE_SIM}-{pooling}") for pooling in ["max-only", "none"]
])
def test_controller_rejects_missing_pooling(sim, pooling, tmp_path):
    """AVGPOOL without ``pool_avg``, and any pooling without ``pool``, is a BAD_DESCRIPTOR (not
    a silent maximum, or a wait for an engine that is not there); the entries before it run.
    (Two configurations of their own: on one simulator, `_ONE_SIM`.)"""
    cfg = (CFG.replace(pool_avg=False, eltwise=False) if pooling == "max-only"
           else CFG.replace(pool=False, eltwise=False))
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (4, 4, 4)).astype(np.int8)
    y = arith.maxpool2d(x, 2, 2)
    shape = {"channels": 4, "h": 4, "w": 4, "kernel": 2, "stride": 2, "out_base": 100}
    program = [describe_pool(cfg, **shape), describe_pool(cfg, **shape, avg=True)]
    bad = error_reply(Error.BAD_DESCRIPTOR, Request.RUN.value)
    runs = "done" if pooling == "max-only" else bad
    cases = [
        *[(f, "none", ACK) for f in
          P.write_requests(cfg, Mem.PROGRAM, 0, [pack_descriptor(cfg, d) for d in program])
          + P.write_requests(cfg, Mem.ACT, 0, layout.pack_activations(cfg, x))],
        (P.run_request(0, 1), "none", runs),
        (P.run_request(1, 1), "none", bad),
        (P.run_request(0, 2), "none", bad),          # the MAXPOOL entry, then the AVGPOOL one
        (P.status_request(), "none", "status"),
    ]
    if pooling == "max-only":
        out = layout.pack_activations(cfg, y)
        cases.append((P.read_request(100, len(out)), "none", data_reply(out, cfg)))
    replies = run_exchanges(cfg, cases, sim, tmp_path)
    # The last run stopped at its AVGPOOL entry, after the MAXPOOL one, or at once.
    # (The last run fetched and decoded its first entry, or ran it and then did so for its
    # second: those cycles count too.)
    ran = program[:1] if pooling == "max-only" else []
    check_replies(cfg, cases, replies, program_length=2,
                  last_run=lambda done: perfmodel.predict_run(cfg, ran, stopped=True))


# The line faults go through the UART receiver, which `tests/test_uart.py` runs on both
# simulators: these exchanges run on one, Verilator where it is selected (the virtual board's
# Icarus run took 79 s of the suite, Verilator's 23 s after a 28 s build).
_UART_SIM = "verilator" if "verilator" in selected_simulators() else selected_simulators()[0]


@pytest.mark.slow
@pytest.mark.parametrize("sim", [_UART_SIM])
def test_board_line_faults(sim, tmp_path):
    """Through the UART: garbage between frames is dropped; a break in the middle of a frame
    and a framing error are answered LINE_FAULT once the line is quiet, a flipped bit BAD_CRC;
    each of those WRITEs, which would have overwritten the input, changed nothing; a break
    between frames is ignored; and the next frames are served exactly."""
    cfg = CFG
    setup, out = network(np.random.default_rng(5), cfg)
    run, read = P.run_request(0, 2), P.read_request(200, len(out))
    clobber = P.write_requests(cfg, Mem.ACT, 0, [0x7F] * 12)[0]
    fault = error_reply(Error.LINE_FAULT, Request.WRITE.value)
    cases = [
        *[(f, "none", ACK) for f in setup],
        (run, "none", "done"),
        (read, "none", data_reply(out, cfg)),
        (bytes([0x00, 0x13, 0x5A, 0xFF, 0x42]), "none", b""),
        (clobber, "none", fault, ("break", 7)),
        (clobber, "none", fault, ("framing", 9)),
        (clobber, "none", error_reply(Error.BAD_CRC, Request.WRITE.value), ("flip", 9)),
        (P.status_request(), "none", "status"),
        (b"", "none", b"", ("break", 0)),
        (run, "none", "done"),
        (read, "none", data_reply(out, cfg)),
        (P.stats_request(0, 2), "none", "stats"),           # sent as slowly as the line goes
        (P.identify_request(), "none", identity_reply(cfg)),
        # Broken off before its type: the ERROR reply names request type 0.
        (P.status_request(), "none", error_reply(Error.LINE_FAULT, 0), ("break", 1)),
    ]
    replies = run_exchanges(cfg, cases, sim, tmp_path, uart=(100e6, 12.5e6))
    done = check_replies(cfg, cases, replies, program_length=2, last_run=lambda done: done[-1],
                         last_error=Error.BAD_CRC)
    assert done[0] == done[1]
