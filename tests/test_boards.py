"""Board top-levels without a toolchain: build plans (``do_build=False``), PLLs and errors."""

import re

import pytest
from amaranth.hdl import Module
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from systolic.hw.boards import BOARDS, BoardTop, ecp5_pll, get_board, ice40_pll
from systolic.sw.errors import SystolicError


class Echo(wiring.Component):
    """Stand-in for the controller: every byte straight back, through a FIFO."""

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    busy: Out(1)
    error: Out(1)
    line_fault: In(1)

    def __init__(self, cfg=None):
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=8, depth=16)
        wiring.connect(m, wiring.flipped(self.rx), queue.w_stream)
        wiring.connect(m, queue.r_stream, wiring.flipped(self.tx))
        return m


def plan(board, *, controller="echo", **kwargs):
    top = BoardTop(board, controller=Echo() if controller == "echo" else controller, **kwargs)
    return top, get_board(board).platform().build(top, name="systolic", do_build=False)


def test_boards_known():
    assert list(BOARDS) == ["ulx3s-85f", "icebreaker"]
    assert get_board("ulx3s-85f").config().target == "ecp5"
    assert get_board("ulx3s-85f").config() == get_board("ulx3s-85f").config("wide").replace(
        target="ecp5")
    small = get_board("icebreaker").config()
    assert (small.rows, small.cols, small.target, small.dsps) == (1, 4, "ice40", 6)


@pytest.mark.parametrize("name", ["arty", "ULX3S-85F", None])
def test_unknown_board(name):
    with pytest.raises(SystolicError, match=rf"^Unknown board {re.escape(repr(name))}; "
                                            r"known boards: ulx3s-85f, icebreaker$"):
        get_board(name)
    with pytest.raises(SystolicError, match=r"^Unknown board "):
        BoardTop(name)


def test_ulx3s_default_clock_is_the_pll():
    top, p = plan("ulx3s-85f")
    assert top.clock_hz == 90e6
    assert top.bridge.divisor == 30           # 3 MBd exactly
    assert "EHXPLLL" in p.files["systolic.il"]


def test_ulx3s_plan_from_oscillator():
    top, p = plan("ulx3s-85f", clock_mhz=25, baud=1_000_000)
    assert top.clock_hz == 25e6
    assert top.bridge.divisor == 25
    assert "EHXPLLL" not in p.files["systolic.il"]


def test_ulx3s_plan_with_pll():
    top, p = plan("ulx3s-85f", clock_mhz=30)
    assert top.clock_hz == 30e6
    assert top.bridge.divisor == 10           # 3 MBd
    lpf = p.files["systolic.lpf"]
    for port, site in (("uart_0__rx__io", "M1"), ("uart_0__tx__io", "L4"),
                       ("clk25_0__io", "G2"), ("led_7__io", "H3")):
        assert f'LOCATE COMP "{port}" SITE "{site}";' in lpf
    assert 'FREQUENCY PORT "clk25_0__io" 25000000.0 HZ;' in lpf
    il = p.files["systolic.il"]
    assert "EHXPLLL" in il
    assert re.search(r"parameter \\CLKOP_DIV 20\b", il)
    assert re.search(r"parameter \\CLKFB_DIV 6\b", il)


def test_icebreaker_default_clock_is_the_pll():
    top, p = plan("icebreaker")
    assert top.clock_hz == 30e6
    assert top.bridge.divisor == 10           # 3 MBd
    assert "SB_PLL40_PAD" in p.files["systolic.il"]


def test_icebreaker_plan_from_oscillator():
    top, p = plan("icebreaker", clock_mhz=12, baud=1_000_000)
    assert top.clock_hz == 12e6
    assert top.bridge.divisor == 12
    pcf = p.files["systolic.pcf"]
    for line in ("set_io uart_0__rx__io 6", "set_io uart_0__tx__io 9", "set_io clk12_0__io 35",
                 "set_io led_g_0__io 37", "set_io led_r_0__io 11", "set_frequency clk12_0__io 12"):
        assert line in pcf
    assert "SB_PLL40" not in p.files["systolic.il"]


def test_icebreaker_plan_with_pll():
    top, p = plan("icebreaker", clock_mhz=24, baud=115_200)
    assert top.clock_hz == 24e6
    assert top.bridge.divisor == 208
    il = p.files["systolic.il"]
    assert "SB_PLL40_PAD" in il
    assert re.search(r"parameter \\DIVF 7'0111111\b", il)
    assert re.search(r"set_frequency \S+ 24\.0", p.files["systolic.pcf"])


@pytest.mark.parametrize("board", list(BOARDS))
def test_board_plan_with_controller(board):
    # The real controller and the board's own configuration: elaborates and converts.
    _, p = plan(board, controller=None)
    assert "systolic.ys" in p.files


def test_pll_settings():
    assert ecp5_pll(25, 50) == (1, 2, 12, 50.0)
    clki, clkfb, clkop, f = ecp5_pll(25, 75)
    assert f == 75.0
    assert 400 <= 75 * clkop <= 800
    assert ice40_pll(12, 24) == (0, 63, 5, 1, 24.0)
    assert ice40_pll(12, 30) == (0, 79, 5, 1, 30.0)         # the iCEBreaker's default
    assert ice40_pll(12, 48)[-1] == 48.0


def test_clock_errors():
    with pytest.raises(SystolicError, match=r"^Clock for icebreaker must be at least its 12 MHz "
                                            r"oscillator, not 6 MHz$"):
        BoardTop("icebreaker", clock_mhz=6)
    with pytest.raises(SystolicError, match=r"^iCE40 PLL output must be between 16 and 275 MHz, "
                                            r"not 14$"):
        BoardTop("icebreaker", clock_mhz=14)
    with pytest.raises(SystolicError, match=r"^ECP5 PLL output must be between 3\.125 and 400 "
                                            r"MHz, not 500$"):
        BoardTop("ulx3s-85f", clock_mhz=500)
    with pytest.raises(SystolicError, match=r"^Clock must be a number of MHz, not 'fast'$"):
        BoardTop("ulx3s-85f", clock_mhz="fast")
    # --timing-margin: a fraction, and only where a PLL makes the clock.
    with pytest.raises(SystolicError, match=r"^Timing margin must be a fraction from 0 to 0\.2 "
                                            r"\(20 %\), not 0\.5 \(50 %\)$"):
        BoardTop("ulx3s-85f", timing_margin=0.5)
    with pytest.raises(SystolicError, match=r"^A timing margin needs the PLL: at 25 MHz "
                                            r"ulx3s-85f runs from its oscillator"):
        BoardTop("ulx3s-85f", clock_mhz=25, timing_margin=0.02)


def test_baud_error():
    with pytest.raises(SystolicError, match=r"^Baud rate error must be at most 2%, not "):
        BoardTop("icebreaker", baud=2_850_000)



@pytest.mark.parametrize("board", ["ulx3s-85f", "icebreaker"])
def test_build_script_moves_block_ram_registers_on_the_ecp5(board):
    # `systolic.hw.outreg` runs on the ECP5's netlist, between Yosys and nextpnr, in the
    # interpreter `build` names (the shell script run by hand: python3); not on the iCE40.
    from systolic.hw.build import _toolchain_env, prepare_plan

    spec = get_board(board)
    with _toolchain_env(spec.family):
        top = BoardTop(board, controller=Echo())
        script = prepare_plan(spec.family, spec.platform(), top).files["build_systolic.sh"]
    tools = [line.split()[0] for line in script.splitlines() if line.startswith('"$')]
    if board == "ulx3s-85f":
        assert tools == ['"$YOSYS"', '"${PYTHON:-python3}"', '"$NEXTPNR_ECP5"', '"$ECPPACK"']
        assert '"${PYTHON:-python3}" -m systolic.hw.outreg systolic.json' in script
    else:
        assert tools == ['"$YOSYS"', '"$NEXTPNR_ICE40"', '"$ICEPACK"']
        assert "outreg" not in script


@pytest.mark.parametrize(("board", "clock", "margin", "constraint"), [
    ("ulx3s-85f", 95, 0.0, None),                  # nextpnr derives it from the oscillator's
    ("ulx3s-85f", 95, 0.02, "96900000.0 HZ"),
    ("icebreaker", 30, 0.0, "30.0"),
    ("icebreaker", 30, 0.05, "31.5"),
])
def test_timing_margin_constrains_the_pll_output(board, clock, margin, constraint):
    # `--timing-margin`: the PLL's output net gets its own constraint, the margin above the
    # clock (nextpnr keeps a net's own constraint over the one it derives through the PLL).
    from systolic.hw.build import _toolchain_env, prepare_plan

    spec = get_board(board)
    with _toolchain_env(spec.family):
        top = BoardTop(board, clock_mhz=clock, controller=Echo(), timing_margin=margin)
        files = prepare_plan(spec.family, spec.platform(), top).files
    assert top.timing_margin == margin
    if board == "ulx3s-85f":
        lines = files["systolic.lpf"].splitlines()
        assert 'FREQUENCY PORT "clk25_0__io" 25000000.0 HZ;' in lines
        nets = [line.split(" ", 3)[3] for line in lines if line.startswith("FREQUENCY NET")]
        assert nets == ([f"{constraint};"] if constraint else [])
    else:
        lines = files["systolic.pcf"].splitlines()
        assert "set_frequency clk12_0__io 12.0" in lines
        nets = [line.split()[-1] for line in lines if line.startswith("set_frequency clk$")]
        assert nets == [constraint]


@pytest.mark.parametrize("requant_dsp", [False, True])
def test_ulx3s_design_fits_the_dsp_blocks(requant_dsp):
    # 156 MULT18X18D on the ECP5-85F: the array's 128 and either the residual add's 16 or,
    # with `requant_dsp`, the requantizer's 8 lanes' two each (the residual add's multipliers
    # then in the fabric): 144 either way, as instances in the netlist Yosys gets.
    cfg = get_board("ulx3s-85f").config().replace(requant_dsp=requant_dsp)
    _, p = plan("ulx3s-85f", controller=None, cfg=cfg)
    il = p.files["systolic.il"]
    assert len(re.findall(r"cell \\MULT18X18D ", il)) == 144
    # (The PEs' and the residual add's instances are named mult, the requantizer's hi and lo.)
    assert len(re.findall(r"cell \\MULT18X18D \\mult\b", il)) == 128 + (0 if requant_dsp else 16)
