"""The virtual board: the board top's UART and controller, without a board around them.

`VirtualBoard` is what `systolic.hw.boards.BoardTop` puts on a board, minus the vendor clocking
and I/O buffers: the serial pins of the `UARTBridge` are its ports. ``systolic deploy --sim``
simulates it, so the host driver and the serial protocol are exercised bit by bit on the
UART lines exactly as on a board.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .controller import Controller
from .isa import FRAME_TIMEOUT_BITS
from .uart import UARTBridge

__all__ = ["VirtualBoard"]


class VirtualBoard(wiring.Component):
    """UART pins ↔ `UARTBridge` ↔ `Controller`.

    Parameters
    ----------
    cfg : AcceleratorConfig
    clk_freq : float
        Clock frequency the design is simulated at, in Hz.
    baud : float
        UART baud rate.

    Members
    -------
    uart_rx : In(1)
        Serial data from the host (idles high).
    uart_tx : Out(1)
        Serial data to the host (idles high).
    led_busy, led_error : Out(1)
        What the board's LEDs show.
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)
    led_busy: Out(1)
    led_error: Out(1)

    def __init__(self, cfg, *, clk_freq, baud):
        self.bridge = UARTBridge(clk_freq, baud)
        # As on the boards.
        self.controller = Controller(cfg,
                                     timeout_cycles=FRAME_TIMEOUT_BITS * self.bridge.divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = self.bridge
        m.submodules.controller = ctrl = self.controller
        wiring.connect(m, bridge.rx, ctrl.rx)
        wiring.connect(m, ctrl.tx, bridge.tx)
        m.d.comb += [
            bridge.rxd.eq(self.uart_rx), self.uart_tx.eq(bridge.txd),
            ctrl.line_fault.eq(bridge.line_fault),
            self.led_busy.eq(ctrl.busy), self.led_error.eq(ctrl.error),
        ]
        return m
