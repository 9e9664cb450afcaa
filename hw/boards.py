"""Board top-levels: the host's UART, through `UARTBridge`, into the `Controller`.

Board support comes from amaranth-boards; this module adds what a board lacks for us: a PLL
when the accelerator runs faster than the board's oscillator, a reset synchronizer for the
clock domain it makes, and status LEDs. `BOARDS` names each supported board with its default
clock, baud rate and accelerator configuration.

LEDs (active high here; amaranth-boards handles each board's polarity):

==========  =====================  ==================================================
board       LED                    shows
==========  =====================  ==================================================
ULX3S       ``led`` 0 / 1 / 2 / 3  heartbeat / busy / error / UART overrun
ULX3S       ``led`` 4 / 5 / 6 / 7  rx activity / tx activity / line fault / PLL lock
iCEBreaker  ``led_g``              busy (on), else heartbeat (blinks)
iCEBreaker  ``led_r``              controller error or UART overrun
==========  =====================  ==================================================

"Line fault" is a framing error or a break, stretched to a visible blink.
"""

from dataclasses import dataclass
from typing import NamedTuple

from amaranth.hdl import ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib import cdc, io, wiring

from ..sw.errors import SystolicError
from .config import AcceleratorConfig, preset
from .isa import FRAME_TIMEOUT_BITS
from .replica import local_reset
from .uart import UARTBridge, quiet_if_invalid

__all__ = ["BOARDS", "Board", "BoardTop", "PresetBuild", "ecp5_pll", "get_board", "ice40_pll"]


@dataclass(frozen=True)
class Board:
    """One supported board.

    Parameters
    ----------
    name : str
        The name on the command line (``--board``).
    family : str
        FPGA family: ``ecp5`` or ``ice40``; also the accelerator's multiplier ``target``.
    platform_name : str
        amaranth-boards platform class, as ``module:Class``.
    osc_mhz : float
        On-board oscillator frequency.
    clock_mhz : float
        Default accelerator clock; above ``osc_mhz`` a PLL makes it.
    baud : int
        Default UART baud rate.
    preset : str
        Default accelerator preset (with ``target`` set to ``family``).
    program_hint : str
        How to load the bitstream (the build never programs a board).
    dense_conv : bool
        Whether the board's build has dense convolutions (`AcceleratorConfig.dense_conv`).
    fused_pool : bool
        Whether the board's build has fused pooling (`AcceleratorConfig.fused_pool`).
    fc_rows : bool
        Whether the board's build runs fully connected layers row by row
        (`AcceleratorConfig.fc_rows`).
    seed : int
        nextpnr's placer seed for the board's build (``systolic build --seed``): one its
        default design closes with at its default clock.
    preset_builds : tuple of PresetBuild
        Other presets whose build on this board closed at another clock: `build_defaults`
        gives their clock, seed and timing margin to ``systolic build --preset``.
    """

    name: str
    family: str
    platform_name: str
    osc_mhz: float
    clock_mhz: float
    baud: int
    preset: str
    program_hint: str
    dense_conv: bool = False
    fused_pool: bool = False
    fc_rows: bool = False
    seed: int = 1
    preset_builds: tuple = ()

    def platform(self):
        """A new instance of the board's amaranth-boards platform."""
        import importlib

        module, cls = self.platform_name.split(":")
        return getattr(importlib.import_module(module), cls)()

    def config(self, preset_name=None):
        """The accelerator configuration for this board: a preset, targeting its DSPs, with
        dense convolutions, fused pooling and row-by-row fully connected layers only where the
        board's build has them (`dense_conv`, `fused_pool`, `fc_rows`)."""
        extra = {k: False for k in ("dense_conv", "fused_pool", "fc_rows")
                 if not getattr(self, k)}
        return preset(preset_name or self.preset).replace(target=self.family, **extra)

    def build_defaults(self, preset_name=None):
        """The `PresetBuild` of the board's build of ``preset_name`` (default its own preset):
        the clock, placer seed and timing margin it closed with (`preset_builds`), else the
        board's clock and seed without a margin."""
        for build in self.preset_builds:
            if build.preset == (preset_name or self.preset):
                return build
        return PresetBuild(preset_name or self.preset, self.clock_mhz, self.seed)


class PresetBuild(NamedTuple):
    """A preset's closed build on a board (`Board.preset_builds`): ``systolic build --board B
    --preset P`` takes its clock, placer seed and timing margin (a fraction, as
    `systolic.hw.build.BoardTop`'s ``timing_margin``) unless given."""
    preset: str
    clock_mhz: float
    seed: int
    timing_margin: float = 0.0


BOARDS = {
    # ECP5-85F, FT231X USB UART (3 MBd capable). The `wide` preset (8x16 PEs, 144 of the 156
    # MULT18X18D) at 90 MHz from the PLL (the 25 MHz oscillator times 18/5), which 3 MBd, the
    # FT231X's top rate, divides exactly (30 clocks a bit): it closes there at 91.5 MHz with
    # placer seed 5 (`systolic build --seeds 2,5,6`; seed 2 reached 89.5, seed 4, the default
    # before, 89.2; on seeds 1 and 3 an earlier netlist's rip-up diverged; `--clock 75`, the
    # exact clock below, closed at 78.0 MHz on seed 1 before the controller's lane copies).
    # Every network runs faster on it than on the 8x8 `default` (`bench/throughput.py`).
    "ulx3s-85f": Board(
        name="ulx3s-85f", family="ecp5",
        platform_name="amaranth_boards.ulx3s:ULX3S_85F_Platform",
        osc_mhz=25.0, clock_mhz=90.0, baud=3_000_000, preset="wide",
        program_hint="openFPGALoader -b ulx3s {bitstream}",
        # Dense convolutions (each lane's address and bounds check in the convolution engine,
        # each column slice's own read address) halve lenet5's cycles and take 30 % off
        # lenet-digits'. They closed at 67.0 MHz when first tried; with the fill's bounds
        # check a cycle later and its go-ahead from a register, at 78.6 MHz; with their lane
        # addresses registered on the way to the memory's column slices (`fill_stages`), at
        # 91.2 then. Fused pooling: since it came in.
        # Row-by-row fully connected layers (`fc_rows`) where the preset has them (`wide` has
        # not: they did not route here at 90 MHz).
        dense_conv=True, fused_pool=True, fc_rows=True, seed=5,
        # The `lenet` preset (`wide` without averaging, the residual add, global average
        # pooling and the pooling engine, with `deep_pipeline`'s stages and the raster walk)
        # closes at 105 MHz: 106.86 MHz on seed 16, nextpnr asked for 1.5 % more (106.6);
        # 3 MBd is 35 clocks a bit there, exactly. (Without the raster walk and with the
        # pooling engine, before the controller's and the engine's last stages: 106.04 on
        # seed 6; 100.90 at 100 on seed 4; 97.63 at 95 on seed 3.)
        preset_builds=(PresetBuild("lenet", 105.0, 16, 0.015),)),
    # iCE40UP5K, FT2232H channel B as UART. 30 MHz from the PLL (the small preset closes at
    # 31.6 MHz on seed 3; 29.5 on seed 1, 30.2 on seed 2 before) and 3 MBd (10 clocks a bit): the
    # 1x4 array, not the link, bounds images per second here.
    "icebreaker": Board(
        name="icebreaker", family="ice40",
        platform_name="amaranth_boards.icebreaker:ICEBreakerPlatform",
        osc_mhz=12.0, clock_mhz=30.0, baud=3_000_000, preset="small",
        program_hint="iceprog {bitstream}", seed=3),
}


def get_board(name):
    """The `Board` called ``name``.

    Raises
    ------
    SystolicError
        If there is no such board; the message lists the known ones.
    """
    if isinstance(name, Board):
        return name
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        raise SystolicError(
            f"Unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None


# PLL parameters ----------------------------------------------------------------------------------

def ecp5_pll(in_mhz, out_mhz):
    """``EHXPLLL`` dividers for ``out_mhz`` from ``in_mhz``: ``(clki_div, clkfb_div, clkop_div,
    achieved_mhz)``, nearest achievable frequency first, then VCO nearest 600 MHz.

    The constraints are the ECP5 family data sheet's: PFD 3.125 to 400 MHz, VCO 400 to 800 MHz,
    output 3.125 to 400 MHz.

    Raises
    ------
    SystolicError
        If ``out_mhz`` is not within 0.5 % of an achievable frequency.
    """
    if not 3.125 <= out_mhz <= 400:
        raise SystolicError(f"ECP5 PLL output must be between 3.125 and 400 MHz, not {out_mhz!r}")
    best = None
    for clki in range(1, 129):
        pfd = in_mhz / clki
        if not 3.125 <= pfd <= 400:
            continue
        for clkfb in range(1, 81):
            fout = pfd * clkfb
            for clkop in range(1, 129):
                vco = fout * clkop
                if not 400 <= vco <= 800:
                    continue
                key = (abs(fout - out_mhz), abs(vco - 600))
                if best is None or key < best[0]:
                    best = (key, (clki, clkfb, clkop, fout))
    if best is None or best[0][0] > 0.005 * out_mhz:
        raise SystolicError(f"ECP5 PLL cannot make {out_mhz:g} MHz from {in_mhz:g} MHz within "
                            "0.5 %; pick another clock")
    return best[1]


def fastest_clock(board, mhz):
    """The highest whole number of MHz, at most ``mhz``, that ``--clock`` can ask of ``board``
    and that its PLL makes no faster than ``mhz`` (or its oscillator's, without the PLL): what
    a build that reached an fmax of ``mhz`` can run at; None below the oscillator's."""
    spec = get_board(board)
    if mhz < spec.osc_mhz:
        return None
    pll = ecp5_pll if spec.family == "ecp5" else ice40_pll
    for clock in range(int(mhz), int(spec.osc_mhz), -1):
        try:
            achieved = pll(spec.osc_mhz, clock)[-1]
        except SystolicError:
            continue
        if achieved <= mhz:
            return clock
    return spec.osc_mhz


def ice40_pll(in_mhz, out_mhz):
    """``SB_PLL40`` settings for ``out_mhz`` from ``in_mhz``: ``(divr, divf, divq, filter_range,
    achieved_mhz)`` in SIMPLE feedback mode, as ``icepll`` chooses them.

    Constraints (iCE40 sysCLOCK PLL guide): PFD 10 to 133 MHz, VCO 533 to 1066 MHz, output 16
    to 275 MHz.

    Raises
    ------
    SystolicError
        If ``out_mhz`` is not within 0.5 % of an achievable frequency.
    """
    if not 16 <= out_mhz <= 275:
        raise SystolicError(f"iCE40 PLL output must be between 16 and 275 MHz, not {out_mhz!r}")
    best = None
    for divr in range(16):
        pfd = in_mhz / (divr + 1)
        if not 10 <= pfd <= 133:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533 <= vco <= 1066:
                continue
            for divq in range(1, 7):
                fout = vco / (1 << divq)
                if best is None or abs(fout - out_mhz) < best[0]:
                    best = (abs(fout - out_mhz), (divr, divf, divq, pfd, fout))
    if best is None or best[0] > 0.005 * out_mhz:
        raise SystolicError(f"iCE40 PLL cannot make {out_mhz:g} MHz from {in_mhz:g} MHz within "
                            "0.5 %; pick another clock")
    divr, divf, divq, pfd, fout = best[1]
    filter_range = next(i for i, f in enumerate((17, 26, 44, 66, 101, 1e9), 1) if pfd < f)
    return divr, divf, divq, filter_range, fout


# The top level ----------------------------------------------------------------------------------

class BoardTop(Elaboratable):
    """A board's top level: UART pins ↔ `UARTBridge` ↔ controller; clock, reset and LEDs.

    Parameters
    ----------
    board : str or Board
        A key of `BOARDS`.
    cfg : AcceleratorConfig, optional
        The accelerator; default ``board.config()``. Its ``target`` should be the board's
        family so the array uses the hard DSP blocks.
    clock_mhz : float, optional
        Accelerator clock; default ``board.clock_mhz``. Equal to the oscillator, the design
        runs from it directly; above it, from a PLL.
    baud : int, optional
        UART baud rate; default ``board.baud``.
    controller : wiring.Component, optional
        The byte-stream end of the link (members ``rx``, ``tx``, ``busy``, ``error``,
        ``line_fault``, as `systolic.hw.controller.Controller`); default a
        ``Controller(cfg)``.
    timing_margin : float
        Constrain the PLL's output this fraction above `clock_hz` (0.02: 2 %), so that
        nextpnr aims above the clock the design gets (its router stops at what its own delay
        estimates call met, and its final analysis has put such builds 0.3 to 1 % short).
        Needs the PLL; 0 (the default) leaves nextpnr the constraint it derives from the
        oscillator's.

    Attributes
    ----------
    clock_hz : float
        The clock the design actually gets (the PLL's nearest frequency).
    bridge : UARTBridge

    Raises
    ------
    SystolicError
        If the board is unknown, the clock is below the oscillator or out of the PLL's reach,
        or the baud rate cannot be made from the clock within 2 %.
    """

    @quiet_if_invalid
    def __init__(self, board, cfg=None, *, clock_mhz=None, baud=None, controller=None,
                 timing_margin=0.0):
        self.board = get_board(board)
        if cfg is not None and not isinstance(cfg, AcceleratorConfig):
            raise SystolicError(f"cfg must be an AcceleratorConfig, not {cfg!r}")
        self.cfg = cfg or self.board.config()
        clock_mhz = self.board.clock_mhz if clock_mhz is None else clock_mhz
        if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, int | float):
            raise SystolicError(f"Clock must be a number of MHz, not {clock_mhz!r}")
        osc = self.board.osc_mhz
        if clock_mhz < osc:
            raise SystolicError(
                f"Clock for {self.board.name} must be at least its {osc:g} MHz oscillator, "
                f"not {clock_mhz:g} MHz")
        self.pll = None
        if clock_mhz == osc:
            self.clock_hz = osc * 1e6
        elif self.board.family == "ecp5":
            self.pll = ecp5_pll(osc, clock_mhz)
            self.clock_hz = self.pll[-1] * 1e6
        else:
            self.pll = ice40_pll(osc, clock_mhz)
            self.clock_hz = self.pll[-1] * 1e6
        if isinstance(timing_margin, bool) or not isinstance(timing_margin, int | float):
            raise SystolicError(f"Timing margin must be a number, not {timing_margin!r}")
        if not 0 <= timing_margin <= 0.2:
            raise SystolicError(f"Timing margin must be a fraction from 0 to 0.2 (20 %), not "
                                f"{timing_margin:g} ({100 * timing_margin:g} %)")
        if timing_margin and self.pll is None:
            raise SystolicError(
                f"A timing margin needs the PLL: at {clock_mhz:g} MHz {self.board.name} runs "
                f"from its oscillator, whose constraint is the board's; give a faster --clock "
                f"or no margin")
        self.timing_margin = timing_margin
        self.baud = self.board.baud if baud is None else baud
        self.bridge = UARTBridge(self.clock_hz, self.baud)
        if controller is None:
            from .controller import Controller

            controller = Controller(
                self.cfg, timeout_cycles=FRAME_TIMEOUT_BITS * self.bridge.divisor)
        self.controller = controller

    def elaborate(self, platform):
        if platform is None:
            raise SystolicError("BoardTop needs a platform: build it with board.platform()")
        m = Module()
        locked = self._clock(m, platform)

        m.submodules.bridge = bridge = self.bridge
        ctrl = self.controller
        # The controller's reset is the synchronizer's through four flip-flops: the bridge
        # sits by the UART pins and the controller over the die, and with two the route from
        # the synchronizer to the first was the 90 MHz build's worst path (12.0 ns routing).
        m.submodules.controller = local_reset(m, ctrl, name="controller", target=self.cfg.target,
                                              stages=4)
        wiring.connect(m, bridge.rx, ctrl.rx)
        wiring.connect(m, ctrl.tx, bridge.tx)
        uart = platform.request("uart", dir="-")
        m.submodules.uart_rx = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [bridge.rxd.eq(rx_buf.i), tx_buf.o.eq(bridge.txd),
                     ctrl.line_fault.eq(bridge.line_fault)]

        heartbeat = Signal(range(int(self.clock_hz)))   # one second
        with m.If(heartbeat == int(self.clock_hz) - 1):
            m.d.sync += heartbeat.eq(0)
        with m.Else():
            m.d.sync += heartbeat.eq(heartbeat + 1)
        beat = heartbeat < int(self.clock_hz) // 8

        if self.board.family == "ecp5":
            leds = [self._led(m, platform, "led", i) for i in range(8)]
            # With ``deep_pipeline`` each LED from a register: the pins sit at the die's edge,
            # the controller anywhere (its busy flag to the pin was 12.5 ns at 100 MHz).
            leds_domain = m.d.sync if self.cfg.deep_pipeline else m.d.comb
            leds_domain += [
                leds[0].eq(beat), leds[1].eq(ctrl.busy), leds[2].eq(ctrl.error),
                leds[3].eq(bridge.overrun),
                leds[4].eq(self._stretch(m, bridge.rx.valid & bridge.rx.ready)),
                leds[5].eq(self._stretch(m, bridge.tx_busy)),
                leds[6].eq(self._stretch(m, bridge.frame_error | bridge.brk)),
                leds[7].eq(locked),
            ]
        else:
            m.d.comb += [
                self._led(m, platform, "led_g").eq(ctrl.busy | beat),
                self._led(m, platform, "led_r").eq(ctrl.error | bridge.overrun),
            ]
        return m

    @staticmethod
    def _led(m, platform, name, number=0):
        buf = io.Buffer("o", platform.request(name, number, dir="-"))
        m.submodules[f"{name}_{number}"] = buf
        return buf.o

    def _stretch(self, m, pulse):
        """``pulse`` held for about 50 ms, so a single event is visible.

        ``pulse`` goes into a register first: it may be a handshake across the die (the UART
        bridge's ``rx.valid & rx.ready``, the controller's ready through the bridge's FIFO to
        this counter's reset was the 90 MHz build's worst path, 9.8 of 11.2 ns routing)."""
        hold = int(self.clock_hz * 0.05)
        count = Signal(range(hold + 1))
        seen = Signal()
        m.d.sync += seen.eq(pulse)
        with m.If(seen):
            m.d.sync += count.eq(hold)
        with m.Elif(count != 0):
            m.d.sync += count.eq(count - 1)
        return count != 0

    def _clock(self, m, platform):
        """Create the ``sync`` domain at `clock_hz`; return its PLL's lock (1 without a PLL)."""
        m.domains.sync = ClockDomain("sync")
        osc_name = platform.default_clk
        locked = Signal(init=1)
        if self.pll is None:
            m.submodules.osc = osc = io.Buffer("i", platform.request(osc_name, dir="-"))
            m.d.comb += ClockSignal("sync").eq(osc.i)
        elif self.board.family == "ecp5":
            clki, clkfb, clkop, _ = self.pll
            clk = Signal()
            locked = Signal()
            m.submodules.osc = osc = io.Buffer("i", platform.request(osc_name, dir="-"))
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{self.board.osc_mhz:g}",
                a_FREQUENCY_PIN_CLKOP=f"{self.clock_hz / 1e6:.6g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
                p_CLKI_DIV=clki, p_CLKFB_DIV=clkfb, p_CLKOP_DIV=clkop,
                p_CLKOP_CPHASE=clkop - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                i_CLKI=osc.i, i_CLKFB=clk, i_RST=0, i_STDBY=0,
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=0, i_PHASESTEP=0,
                i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=clk, o_LOCK=locked)
            # nextpnr derives the output's constraint from the input's and the dividers, unless
            # the net has one of its own (a margin's).
            m.d.comb += ClockSignal("sync").eq(clk)
            if self.timing_margin:
                platform.add_clock_constraint(clk, self.clock_hz * (1 + self.timing_margin))
        else:
            divr, divf, divq, filter_range, _ = self.pll
            clk = Signal()
            locked = Signal()
            # The 12 MHz pin is the PLL's own pad: SB_PLL40_PAD takes it before any I/O buffer.
            pad = platform.request(osc_name, dir="-")
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE", p_DIVR=Const(divr, 4), p_DIVF=Const(divf, 7),
                p_DIVQ=Const(divq, 3), p_FILTER_RANGE=Const(filter_range, 3),
                i_PACKAGEPIN=pad.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=clk, o_LOCK=locked)
            m.d.comb += ClockSignal("sync").eq(clk)
            platform.add_clock_constraint(clk, self.clock_hz * (1 + self.timing_margin))

        # Hold reset until the PLL locks and, on iCE40, for the ~3 us block RAMs need after
        # configuration (20 us here). The counter itself is never reset.
        por_cycles = max(2, int(self.clock_hz * 20e-6))
        por = Signal(range(por_cycles + 1), reset_less=True)
        with m.If(por != por_cycles):
            m.d.sync += por.eq(por + 1)
        m.submodules.reset_sync = cdc.ResetSynchronizer(~locked | (por != por_cycles),
                                                        domain="sync")
        return locked
