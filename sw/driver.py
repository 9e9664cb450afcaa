"""The host driver: load a compiled network into the accelerator and run images through it.

The driver speaks to the accelerator through a `Transport`, with three operations: memory
writes, running a range of the on-chip program, and activation read-back. `FramedTransport`
implements them on the framed byte protocol (``docs/protocol.md``) over any `Link` — a serial
port to a board (`systolic.sw.deploy`), the controller's byte streams in cocotb
(``sim/test_network.py``), or a simulated board's UART pins. The driver code is the same
for all of them.

The operations are coroutines, because a cocotb link must await clock edges; a blocking link
simply returns from them (run one with ``asyncio.run``).

A serial line can corrupt or cut a frame either way. The device answers a request it received
damaged with an ERROR that promises nothing changed (`RESENDABLE`), and `FramedTransport` sends
it again. A reply that is lost or arrives damaged (`protocol.LinkError`) is recovered from
by resynchronizing the link and sending the request again, except for RUN, whose program
overwrites its own input: `Driver.infer` then runs the whole image again.
"""

import abc
from dataclasses import dataclass
from itertools import groupby

import numpy as np

from ..hw.isa import (
    FRAME_TIMEOUT_BITS,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SYNC_REPLY,
    Error,
    Mem,
    Reply,
)
from . import protocol
from .compiler import Program
from .errors import SystolicError

__all__ = [
    "RESENDABLE", "RESYNC_QUIET_BITS", "Driver", "FramedTransport", "Inference", "Link",
    "Transport",
]

#: ERROR codes of a request the line damaged: the device changed nothing, so it can be resent.
#: (BAD_LENGTH too: the driver sends only lengths the device takes, so a wrong one was
#: damaged on the way, in a part of the frame read before its check.)
RESENDABLE = frozenset({Error.BAD_CRC, Error.TRUNCATED, Error.LINE_FAULT, Error.BAD_LENGTH})
_RESENDABLE_CODES = frozenset(e.value for e in RESENDABLE)
#: How long `Link.resync` waits for a quiet line: longer than the device takes to drop a
#: broken frame (`FRAME_TIMEOUT_BITS`), so that it is waiting for a sync byte again.
RESYNC_QUIET_BITS = FRAME_TIMEOUT_BITS * 3 // 2


class Transport(abc.ABC):
    """What a `Driver` needs of an accelerator, and nothing else."""

    @abc.abstractmethod
    async def write(self, beats, *, lanes=0):
        """Memory writes: an iterable of ``(Mem, addr, data)``, applied in order; activation
        words with only their ``lanes`` low lanes non-zero, when given (a hint: the transport
        may send fewer bytes)."""

    @abc.abstractmethod
    async def run(self, start, count, *, per_entry=True):
        """Run program entries ``start .. start + count - 1``; return their total cycles and,
        with ``per_entry``, a list of each one's (else ``None``)."""

    @abc.abstractmethod
    async def read(self, base, count):
        """Read ``count`` activation words from address ``base``; return them as ints."""

    async def resync(self):
        """Get back in step after a `protocol.LinkError` (nothing to do by default)."""
        return None

    async def identify(self):
        """The device's IDENTITY fields (`protocol.parse_identity`), or ``None`` when this
        transport cannot ask (the default): the driver then takes the configuration on trust."""
        return None


class Link(abc.ABC):
    """A byte pipe to the accelerator's host interface."""

    @abc.abstractmethod
    async def send(self, data):
        """Send ``data`` (bytes)."""

    @abc.abstractmethod
    async def recv(self, count):
        """Receive exactly ``count`` bytes (raise `protocol.LinkError` if they do not come)."""

    async def resync(self):
        """Wait until the device has stopped sending and has dropped any frame it was
        receiving, and discard what arrived (nothing to do for a link that loses no bytes)."""
        return None


class FramedTransport(Transport):
    """`Transport` over the framed protocol: one request frame, one reply frame.

    Parameters
    ----------
    link : Link
    cfg : AcceleratorConfig
    retries : int
        How many times one request is sent again after the line damaged it or its reply.

    Members
    -------
    resent : int
        Requests sent again so far.
    wire_bytes : int
        Bytes of the frames sent and received so far, both ways.
    """

    def __init__(self, link, cfg, *, retries=3):
        self.link = link
        self.cfg = cfg
        self.retries = retries
        self.resent = 0
        self.wire_bytes = 0

    async def _reply(self, frame, expect):
        head = await self.link.recv(4)
        length = int.from_bytes(head[2:4], "little")
        if head[0] != SYNC_REPLY or length > MAX_PAYLOAD:
            raise protocol.FrameError(
                f"Reply must begin with {SYNC_REPLY:#04x} and a length of at most {MAX_PAYLOAD}, "
                f"not {bytes(head).hex(' ')}: the link corrupted a reply or is out of step "
                "(check the baud rate)")
        rest = await self.link.recv(length + 2)
        self.wire_bytes += len(head) + len(rest)
        (reply,) = protocol.ReplyParser().feed(bytes(head) + bytes(rest))
        if reply.kind == Reply.ERROR and reply.payload[1] not in (0, frame[1]):
            # Left over from an earlier, damaged exchange: it says nothing of this request.
            raise protocol.FrameError(
                f"Reply names request type {reply.payload[1]:#04x}, not {frame[1]:#04x}: the "
                "link is out of step")
        reply.check()
        if reply.kind != expect:
            raise protocol.FrameError(
                f"Reply to this request must be {expect.name}, not {reply.kind.name}")
        return reply.payload

    async def request(self, frame, expect, *, repeatable=True):
        """Send one request frame; return its reply's payload.

        A request the device reports damaged (`RESENDABLE`) is sent again, and so is one
        whose reply was lost or damaged, if it is ``repeatable``, up to `retries` times, each
        time after `Link.resync`.

        Raises
        ------
        protocol.DeviceError
            For an ERROR reply that is not `RESENDABLE`, or one that stays so.
        protocol.LinkError
            When the reply is lost or damaged, and the request is not ``repeatable`` or
            was tried `retries` times.
        """
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            await self.link.send(frame)
            self.wire_bytes += len(frame)
            try:
                return await self._reply(frame, expect)
            except protocol.DeviceError as e:
                if last or e.code not in _RESENDABLE_CODES:
                    raise
            except protocol.LinkError:
                if last or not repeatable:
                    raise
            # What is left of a damaged frame could look like the start of another: let the
            # device drop it before sending again.
            await self.link.resync()
            self.resent += 1
        raise AssertionError("unreachable")

    async def resync(self):
        await self.link.resync()

    async def identify(self):
        try:
            payload = await self.request(protocol.identify_request(), Reply.IDENTITY)
        except protocol.DeviceError as e:
            if e.code != Error.UNKNOWN_REQUEST.value:
                raise
            raise SystolicError(
                "The device does not answer IDENTIFY (UNKNOWN_REQUEST): its bitstream is older "
                f"than protocol version {PROTOCOL_VERSION}; rebuild it (systolic build)") from None
        return protocol.parse_identity(payload)

    async def write(self, beats, *, lanes=0):
        # Consecutive addresses of one memory go in as few frames as fit.
        runs = []
        for (mem, _), group in groupby(enumerate(beats), key=lambda b: (b[1][0], b[1][1] - b[0])):
            group = [beat for _, beat in group]
            runs.append((mem, group[0][1], [data for _, _, data in group]))
        for mem, addr, words in runs:
            packed = lanes if mem == Mem.ACT else 0
            for frame in protocol.write_requests(self.cfg, mem, addr, words, lanes=packed):
                await self.request(frame, Reply.ACK)

    async def run(self, start, count, *, per_entry=True):
        # RUN overwrites its own input: if its reply is lost, the image is run again.
        done = await self.request(protocol.run_request(start, count), Reply.DONE,
                                  repeatable=False)
        total = int.from_bytes(done, "little")
        if not per_entry:
            return total, None
        stats = await self.request(protocol.stats_request(start, count), Reply.DATA)
        return total, [int.from_bytes(stats[4 * i:4 * i + 4], "little") for i in range(count)]

    async def read(self, base, count):
        words, step = [], MAX_PAYLOAD // self.cfg.cols
        for at in range(base, base + count, step):
            n = min(step, base + count - at)
            data = await self.request(protocol.read_request(at, n), Reply.DATA)
            words += [int.from_bytes(data[i * self.cfg.cols:(i + 1) * self.cfg.cols], "little")
                      for i in range(n)]
        return words


@dataclass(eq=False)
class Inference:
    """The result of one image.

    Members
    -------
    logits : numpy.ndarray
        int8 ``(classes,)``.
    cycles : int
        The cycles of the run that computed the image (RUN's DONE: every cycle of it, the
        controller's between the layers included, on a device with ``fetch_ahead``; the
        layers' own, summed, without; with tracing, the sum of the layers' runs).
        Its batch's: divide by `batch` for a share per image.
    layer_cycles : list of int or None
        Cycles of each hardware layer (``Program.layers``) in that run, the core's counters
        (the layers' own: `systolic.sw.perfmodel.predict_layer`), when the driver asked for
        them (and always with tracing).
    layer_outputs : list of numpy.ndarray or None
        With tracing, every hardware layer's int8 ``(C, H, W)`` output for this image.
    batch : int
        Images run together with this one (itself included).
    """

    logits: np.ndarray
    cycles: int
    layer_cycles: list | None = None
    layer_outputs: list | None = None
    batch: int = 1


class Driver:
    """Runs a `Program` on a core through ``transport``.

    Images go in batches of up to ``program.batch``; a shorter batch (the last of a run, or
    `infer`'s single image) runs the same network compiled for its size
    (`Program.with_batch`), which takes rewriting the program memory only.

    Parameters
    ----------
    program : Program
    transport : Transport
    layer_cycles : bool
        Read each layer's cycles after every batch (a STATS request: one more exchange on
        the link), not only the total.

    Members
    -------
    reruns : int
        Batches run again from their input because the link lost or damaged a reply
        (`protocol.LinkError`) in the middle of them.
    identity : dict or None
        The device's IDENTITY fields, once `load_network` has asked for them.
    """

    def __init__(self, program: Program, transport: Transport, *, layer_cycles=True):
        self.program = program
        self.transport = transport
        self.layer_cycles = layer_cycles
        self.reruns = 0
        self.identity = None
        self._variants = {program.batch: program}
        self._loaded = None

    async def load_network(self):
        """Check that the device is the accelerator the program was compiled for (IDENTIFY),
        then write the weights, the parameters and the program (once per network).

        Raises
        ------
        protocol.IdentityMismatch
            When the device's configuration differs, naming each field that does.
        """
        p = self.program
        identity = await self.transport.identify()
        if identity is not None:
            protocol.check_identity(p.cfg, identity)
        self.identity = identity
        await self.transport.write(p.loads())
        await self._load_program(p)

    async def _load_program(self, p):
        if len(p.commands) > p.cfg.program_depth:
            raise SystolicError(
                f"The network takes {len(p.commands)} program entries (a batch of {p.batch}) "
                f"but the program memory holds {p.cfg.program_depth}; use a smaller batch or "
                "raise program_depth")
        self._loaded = None
        await self.transport.write([(Mem.PROGRAM, i, c) for i, c in enumerate(p.commands)])
        self._loaded = p

    def _program_for(self, n):
        if n not in self._variants:
            variant = self.program.with_batch(n)
            if variant.weights != self.program.weights or variant.params != self.program.params:
                raise AssertionError("a batch size changed the weight memory image")
            self._variants[n] = variant
        return self._variants[n]

    async def infer(self, image, *, trace=False, attempts=3):
        """Run one int8 ``(C, H, W)`` image alone; returns an `Inference`."""
        (result,) = await self.infer_batch([image], trace=trace, attempts=attempts)
        return result

    async def infer_batch(self, images, *, trace=False, attempts=3):
        """Run int8 ``(C, H, W)`` images, at most ``program.batch``, in one run; returns an
        `Inference` each.

        With ``trace``, every layer's output is read back as soon as the layer has run (the
        ping-pong buffers overwrite it two layers later). A batch whose run the link cut
        short (`protocol.LinkError`) is run again from its input, up to ``attempts`` times.
        """
        images = list(images)
        if not 1 <= len(images) <= self.program.batch:
            raise SystolicError(f"A batch must hold 1 to {self.program.batch} images (the "
                                f"program's batch), not {len(images)}")
        p = self._program_for(len(images))
        for attempt in range(attempts):
            try:
                return await self._infer(p, images, trace)
            except protocol.LinkError:
                if attempt == attempts - 1:
                    raise
                await self.transport.resync()
                self.reruns += 1
        raise AssertionError("unreachable")

    async def _infer(self, p, images, trace):
        n = len(images)
        words = [w for image in images for w in p.input_words(image)]
        if self._loaded is not p:
            await self._load_program(p)
        await self.transport.write(((Mem.ACT, p.input_base + a, v) for a, v in enumerate(words)),
                                   lanes=p.input_lanes)
        if trace:
            runs, layers, outputs = [], [], [[] for _ in images]
            for i, layer in enumerate(p.layers):
                start, count = p.entry_range(i)
                total, entries = await self.transport.run(start, count, per_entry=True)
                runs.append(total)
                layers.append(sum(entries))
                got = await self.transport.read(layer.out_base, n * layer.out_words)
                for b in range(n):
                    part = got[b * layer.out_words:(b + 1) * layer.out_words]
                    outputs[b].append(p.decode_layer(i, part))
            return [Inference(out[-1].reshape(p.classes), sum(runs), layers, out, n)
                    for out in outputs]
        total, entries = await self.transport.run(0, len(p.commands),
                                                  per_entry=self.layer_cycles)
        layers = None
        if entries is not None:
            layers = []
            for i in range(len(p.layers)):
                start, count = p.entry_range(i)
                layers.append(sum(entries[start:start + count]))
        got = await self.transport.read(p.output_base, n * p.output_words)
        ow = p.output_words
        return [Inference(p.decode_output(got[b * ow:(b + 1) * ow]), total, layers, None, n)
                for b in range(n)]

    async def run_images(self, images, *, trace=False, log=None, every=10):
        """Run ``images`` in batches of ``program.batch`` (`infer_batch`); ``log(text)`` is
        called every ``every`` images or so."""
        results, logged = [], 0
        step = self.program.batch
        for at in range(0, len(images), step):
            batch = await self.infer_batch(images[at:at + step], trace=trace)
            results += batch
            if log is not None and (len(results) - logged >= every or
                                    len(results) == len(images)):
                logged = len(results)
                log(f"{len(results)}/{len(images)} images, {batch[-1].cycles} cycles for the "
                    f"last batch of {len(batch)}")
        return results
