"""Formal checks (`systolic.hw.formal`) of the engines, the UART bridge and the controller.

Proofs by k-induction where induction reaches every state; bounded checks from reset (of the
depth named) for the controller, whose core and frame buffer hold more state than induction
can be told about from outside. Small configurations keep the whole file within a minute or
two on two cores.
"""

import re

import pytest
from amaranth.hdl import Fragment, Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import Out
from systolic.hw import formal
from systolic.hw.config import AcceleratorConfig
from systolic.hw.controller import Controller
from systolic.hw.conv import ConvEngine
from systolic.hw.pool import PoolEngine
from systolic.hw.requant import Requantizer
from systolic.hw.uart import UARTBridge

pytestmark = pytest.mark.slow

#: A 1x2 array with the smallest memories: every engine's logic, little of its state.
ENGINES = AcceleratorConfig(rows=1, cols=2, act_depth=16, weight_depth=16, param_depth=16,
                            program_depth=2, max_kernel=3, max_dim=8)
#: The controller's: one-byte words, so that a whole WRITE frame and its checks fit the depth.
CONTROLLER = ENGINES.replace(cols=1, max_kernel=1, pool=False, eltwise=False)
#: Cycles of the controller's bounded checks: replies to short frames (ERROR, STATUS, ACK, a
#: one-word READ's DATA) for the stream rules; and for the writes, the ERROR code byte of a
#: one-word WRITE refused after its dry pass (BAD_ADDRESS past the memory's end, or BAD_LENGTH),
#: which goes out 24 or 25 cycles after reset.
STREAMS_DEPTH = 24
WRITES_DEPTH = 26
#: Two columns: the activation and weight memories in column slices (``core.act.mem0``,
#: ``core.weights.mem0``, ...) behind registered write ports, as on the ECP5 (here with
#: ordinary registers). Its words are a byte longer, and so is the WRITE frame above.
SLICED = CONTROLLER.replace(cols=2)
SLICED_DEPTH = WRITES_DEPTH + 2


def _check(tmp_path, name, top, *, mode, depth):
    formal.check(top, name, tmp_path, mode=mode, depth=depth)


def test_pool_engine_streams_proof(tmp_path):
    """Proof: o_stream keeps the rules, cmd is taken only when idle."""
    top = formal.FormalTop(PoolEngine(ENGINES), formal.stream_rules, formal.accept_when_idle)
    _check(tmp_path, "pool", top, mode="prove", depth=10)


def test_conv_engine_command_proof(tmp_path):
    """Proof: the command is taken only when idle (the engine has no output stream; its
    sender keeps the stream rules and holds the descriptor while busy, assumed here)."""
    top = formal.FormalTop(ConvEngine(ENGINES), formal.stream_rules, formal.command_held,
                           formal.accept_when_idle)
    _check(tmp_path, "conv", top, mode="prove", depth=10)


def test_requantizer_pipeline_proof(tmp_path):
    """Proof: a valid-only pipeline, each valid and tag out exactly `LATENCY` cycles later."""
    tag = data.StructLayout({"valid": 1, "last": 1, "addr": 4})
    top = formal.FormalTop(Requantizer(ENGINES, tag), formal.pipeline_rules(Requantizer.LATENCY))
    _check(tmp_path, "requant", top, mode="prove", depth=10)


def test_uart_bridge_streams_proof(tmp_path):
    """Proof: rx (from the receive FIFO) keeps the stream rules, at the smallest divisor."""
    top = formal.FormalTop(UARTBridge(4, 1, fifo_depth=2), formal.stream_rules)
    _check(tmp_path, "uart", top, mode="prove", depth=10)


def test_controller_streams_bmc(tmp_path):
    """Bounded check, `STREAMS_DEPTH` cycles: tx keeps the stream rules."""
    top = formal.FormalTop(Controller(CONTROLLER, timeout_cycles=16), formal.stream_rules)
    _check(tmp_path, "controller_streams", top, mode="bmc", depth=STREAMS_DEPTH)


def test_controller_rejected_frames_bmc(tmp_path):
    """Bounded check, `WRITES_DEPTH` cycles: a frame answered with ERROR wrote no memory."""
    top = formal.FormalTop(Controller(CONTROLLER, timeout_cycles=16),
                           formal.rejected_frames_write_nothing())
    _check(tmp_path, "controller_writes", top, mode="bmc", depth=WRITES_DEPTH)


def test_controller_rejected_frames_sliced_bmc(tmp_path):
    """Bounded check, `SLICED_DEPTH` cycles: the same promise with the memories in column
    slices, each slice's write port watched."""
    top = formal.FormalTop(Controller(SLICED, timeout_cycles=16),
                           formal.rejected_frames_write_nothing())
    _check(tmp_path, "controller_sliced", top, mode="bmc", depth=SLICED_DEPTH)


def test_sliced_memories_found():
    """A memory's path names its column slices and the memories inside it; the message of a
    missing one lists the slices the design has."""
    assert formal._named(("core", "weights", "mem3"), ("core", "weights", "mem"))
    assert formal._named(("core", "act", "mem0"), ("core", "act"))
    assert not formal._named(("core", "weights", "memx"), ("core", "weights", "mem"))
    assert not formal._named(("frame",), ("core", "act"))
    top = formal.FormalTop(Controller(SLICED, timeout_cycles=16),
                           formal.rejected_frames_write_nothing((("core", "nope"),)))
    with pytest.raises(formal.FormalError, match=r"^Memories core\.nope are not in the design; "
                                                  r"it has .*core\.act\.mem1"):
        Fragment.get(top, None)


# ---- The checks catch what they are meant to ------------------------------------------------

class _DropsValid(wiring.Component):
    """A broken source: ``valid`` toggles every cycle, ready or not."""
    o_stream: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.o_stream.valid.eq(~self.o_stream.valid)
        return m


class _ChangesPayload(wiring.Component):
    """A broken source: ``valid`` rises after reset and is held, but ``payload`` counts on
    while not ready."""
    o_stream: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.o_stream.valid.eq(1)
        m.d.sync += self.o_stream.payload.eq(self.o_stream.payload + 1)
        return m


@pytest.mark.parametrize(("source", "message"), [
    (_DropsValid, "o_stream: valid held until ready"),
    (_ChangesPayload, "o_stream: payload stable until ready"),
])
def test_broken_source_fails(tmp_path, source, message):
    with pytest.raises(formal.FormalError, match=(
            rf"^Formal check broken \(prove, depth 5\) fails: {re.escape(message)}.*; "
            rf"trace: .*broken/engine_0/trace\.vcd$")):
        _check(tmp_path, "broken", formal.FormalTop(source(), formal.stream_rules),
               mode="prove", depth=5)


def test_controller_frame_buffer_writes_caught(tmp_path):
    """The controller writes its frame buffer as a frame arrives: counted as a memory, that
    write breaks the promise on the first refused frame with a payload (a bad CRC)."""
    top = formal.FormalTop(Controller(CONTROLLER, timeout_cycles=16),
                           formal.rejected_frames_write_nothing(
                               (*formal.CONTROLLER_MEMORIES, ("frame",))))
    with pytest.raises(formal.FormalError,
                       match=r"^Formal check frame \(bmc, depth 20\) fails: "
                             r"a rejected frame wrote no memory; trace: .*\.vcd$"):
        _check(tmp_path, "frame", top, mode="bmc", depth=20)


def test_missing_memory_named(tmp_path):
    top = formal.FormalTop(Controller(CONTROLLER, timeout_cycles=16),
                           formal.rejected_frames_write_nothing((("core", "nope"),)))
    with pytest.raises(formal.FormalError, match=r"^Memories core\.nope are not in the design; "
                                                  r"it has .*core\.act"):
        _check(tmp_path, "missing", top, mode="bmc", depth=1)


def test_bad_mode():
    with pytest.raises(ValueError, match=r"^mode must be one of prove, bmc, not 'cover'$"):
        formal.check(None, "x", "unused", mode="cover", depth=5)
