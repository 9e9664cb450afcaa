"""The host's end of a serial line in cocotb, written once: 8N1 characters bit by bit, both
ways, and the faults a real line has (framing errors, breaks, glitches).

`SerialHost` is what a USB serial adapter does for a board: it drives the design's receive pin
and decodes its transmit pin. The UART tests (``sim/test_uart.py``), the controller's line-fault
tests (``sim/test_controller.py``) and the virtual board (``sim/test_network.py``) all use it.
"""

import cocotb
from cocotb.triggers import Event, FallingEdge, Timer

__all__ = ["SerialHost"]


class SerialHost:
    """The host's side of a serial line: 8N1 out on ``tx``, decoded from ``rx``.

    Parameters
    ----------
    tx : cocotb handle
        The design's serial input, driven by the host (idles high).
    rx : cocotb handle
        The design's serial output, decoded by the host.
    bit_ns : int
        The design's bit period in ns (its divisor times its clock period).
    skew : float
        The host's transmit clock error: its bits last ``bit_ns * (1 + skew)``. May be changed
        between characters.

    Members
    -------
    received : bytearray
        Bytes decoded from ``rx`` and not yet taken by `recv`.
    """

    def __init__(self, tx, rx, bit_ns, *, skew=0.0):
        self.tx, self.rx = tx, rx
        self.bit_ns = bit_ns
        self.skew = skew
        self.received = bytearray()
        self._arrived = Event()
        tx.value = 1
        cocotb.start_soon(self._monitor())

    # -- transmit ---------------------------------------------------------------------------------

    async def level(self, value, bits):
        """Hold the line at ``value`` for ``bits`` (possibly fractional) bit times."""
        self.tx.value = value
        await Timer(round(self.bit_ns * 1000 * (1 + self.skew) * bits), unit="ps")

    async def char(self, byte, *, stop=1, data_bits=8):
        """One character; ``stop=0`` makes a framing error, ``data_bits < 8`` cuts it short."""
        await self.level(0, 1)
        for i in range(data_bits):
            await self.level((byte >> i) & 1, 1)
        if data_bits == 8:
            await self.level(stop, 1)

    async def send(self, data, *, gap_bits=0):
        """The bytes of ``data`` as characters, ``gap_bits`` of idle line after each."""
        for byte in data:
            await self.char(byte)
            if gap_bits:
                await self.level(1, gap_bits)

    async def line_break(self, bits=30):
        """Hold the line low for ``bits`` bit times (a break), then idle it for two."""
        await self.level(0, bits)
        await self.level(1, 2)

    async def send_damaged(self, data, kind, at):
        """``data`` with the damage ``kind`` at byte ``at``: ``"break"`` (a break before it),
        ``"framing"`` (that character's stop bit low) or ``"flip"`` (one of its bits
        inverted)."""
        data = bytes(data)
        await self.send(data[:at])
        if kind == "break":
            await self.line_break()
            await self.send(data[at:])
        elif kind == "framing":
            await self.char(data[at], stop=0)
            await self.level(1, 1)          # so that the next start bit is one
            await self.send(data[at + 1:])
        else:
            assert kind == "flip", f"damage must be break, framing or flip, not {kind!r}"
            await self.send(bytes([data[at] ^ 0x10]) + data[at + 1:])

    # -- receive ----------------------------------------------------------------------------------

    async def _monitor(self):
        while True:
            await FallingEdge(self.rx)
            await Timer(self.bit_ns // 2, unit="ns")        # the middle of the start bit
            assert int(self.rx.value) == 0, "start bit did not last half a bit"
            byte = 0
            for i in range(8):
                await Timer(self.bit_ns, unit="ns")
                byte |= int(self.rx.value) << i
            await Timer(self.bit_ns, unit="ns")
            assert int(self.rx.value) == 1, f"stop bit of {byte:#04x} low"
            self.received.append(byte)
            self._arrived.set()

    async def recv(self, count):
        """The next ``count`` bytes from the design (waits for them)."""
        while len(self.received) < count:
            self._arrived.clear()
            await self._arrived.wait()
        data = bytes(self.received[:count])
        del self.received[:count]
        return data

    async def flush(self, quiet_bits):
        """Wait until nothing has arrived for ``quiet_bits`` bit times; return what had."""
        while True:
            seen = len(self.received)
            await Timer(self.bit_ns * quiet_bits, unit="ns")
            if len(self.received) == seen:
                break
        data = bytes(self.received)
        self.received.clear()
        return data
