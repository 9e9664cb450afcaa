"""The host driver: load a compiled network into a core and run images through it.

The driver speaks to the core through a `Transport`, an abstract pipe with three operations
(memory writes, one layer command, activation read-back). The cocotb testbench
(``sim/test_network.py``) implements it on the simulated core's streams; a serial transport to
a board implements it on the framed byte protocol. The driver code is the same for both.

The operations are coroutines, because a cocotb transport must await clock edges; a blocking
transport simply returns from them (run one with ``asyncio.run``).
"""

import abc
from dataclasses import dataclass

import numpy as np

from ..hw.isa import Mem
from .compiler import Program

__all__ = ["Driver", "Inference", "Transport"]


class Transport(abc.ABC):
    """A pipe to one core: what a `Driver` needs, and nothing else."""

    @abc.abstractmethod
    async def write(self, beats):
        """Memory writes: an iterable of ``(Mem, addr, data)``, applied in order."""

    @abc.abstractmethod
    async def execute(self, command):
        """Run one packed layer descriptor to completion; return the core's ``cycles``."""

    @abc.abstractmethod
    async def read(self, base, count):
        """Read ``count`` activation words from address ``base``; return them as ints."""


@dataclass(eq=False)
class Inference:
    """The result of one image.

    Members
    -------
    logits : numpy.ndarray
        int8 ``(classes,)``.
    layer_cycles : list of int
        Cycles of each hardware layer (``Program.layers``), from the core's counter.
    layer_outputs : list of numpy.ndarray or None
        With tracing, every hardware layer's int8 ``(C, H, W)`` output.
    """

    logits: np.ndarray
    layer_cycles: list
    layer_outputs: list | None = None

    @property
    def cycles(self):
        """Layer cycles of the image, summed."""
        return sum(self.layer_cycles)


class Driver:
    """Runs a `Program` on a core through ``transport``.

    Parameters
    ----------
    program : Program
    transport : Transport
    """

    def __init__(self, program: Program, transport: Transport):
        self.program = program
        self.transport = transport

    async def load_network(self):
        """Write the weight and parameter memories (once per network)."""
        await self.transport.write(self.program.loads())

    async def infer(self, image, *, trace=False):
        """Run one int8 ``(C, H, W)`` image; returns an `Inference`.

        With ``trace``, every layer's output is read back as soon as the layer has run (the
        ping-pong buffers overwrite it two layers later).
        """
        p = self.program
        words = p.input_words(image)
        await self.transport.write((Mem.ACT, p.input_base + a, v) for a, v in enumerate(words))
        cycles, outputs = [], [] if trace else None
        for i, layer in enumerate(p.layers):
            cycles.append(int(await self.transport.execute(layer.command)))
            if trace:
                got = await self.transport.read(layer.out_base, layer.out_words)
                outputs.append(p.decode_layer(i, got))
        if trace:
            logits = outputs[-1].reshape(p.classes)
        else:
            logits = p.decode_output(await self.transport.read(p.output_base, p.output_words))
        return Inference(logits, cycles, outputs)

    async def run_images(self, images, *, trace=False, log=None, every=10):
        """`infer` on each image in turn; ``log(text)`` is called every ``every`` images."""
        results = []
        for n, image in enumerate(images, 1):
            results.append(await self.infer(image, trace=trace))
            if log is not None and (n % every == 0 or n == len(images)):
                log(f"{n}/{len(images)} images, {results[-1].cycles} cycles for the last")
        return results
