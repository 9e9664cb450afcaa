"""UART: divisor arithmetic and its errors, and the bridge in RTL on Icarus and Verilator.

The cocotb side (``sim/test_uart.py``) sends every byte value both ways, with the host's
clock 1.5 % off, full duplex, glitches, framing errors, breaks (between characters and inside
one) and an overrun, checking the bytes exactly and each reported condition. It runs at every
divisor a board build uses: each board's default clock and baud rate (``hw/boards.py``) and
every ``systolic build`` the README and ``systolic build --help`` show, as `BoardTop` makes
them (the PLL's clock over the baud rate); and at an even divisor none of them uses.
"""

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from systolic.hw.boards import BOARDS, BoardTop
from systolic.hw.config import ConfigError
from systolic.hw.uart import UARTBridge, UARTRx, UARTTx, divisor
from systolic.sim.runner import run_cocotb, selected_simulators
from systolic.sw import cli

DIVISOR = 8             # not a board's (25, 15, 10): one more mid-bit sample point
FIFO_DEPTH = 8
README = Path(__file__).resolve().parent.parent / "README.md"


def documented_builds():
    """``systolic build`` command lines the README and ``systolic build --help`` show."""
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        cli.main(["build", "--help"])
    lines = re.findall(r"^\s*(systolic build --board .*)$",
                       README.read_text() + "\n" + help_text.getvalue(), re.MULTILINE)
    return [shlex.split(line, comments=True)[1:] for line in lines]


def board_divisors():
    """``{divisor: [build, ...]}`` of every board build: the defaults and the documented ones
    (a build named ``board-<MHz>MHz-<baud>Bd``)."""
    parser = cli.build_parser()
    builds = [(name, None, None) for name in BOARDS]
    for argv in documented_builds():
        args = parser.parse_args(argv)
        builds.append((args.board, args.clock, args.baud))
    divisors = {}
    for name, clock, baud in builds:
        top = BoardTop(name, clock_mhz=clock, baud=baud)
        # Only its divisor is read; never elaborated, so never "unused" (as hw/netlist.py does).
        for part in (top, top.bridge, top.controller):
            part._MustUse__silence = True
        label = f"{name}-{top.clock_hz / 1e6:g}MHz-{top.baud}Bd"
        labels = divisors.setdefault(top.bridge.divisor, [])
        if label not in labels:
            labels.append(label)
    return divisors


BOARD_DIVISORS = board_divisors()


@pytest.mark.parametrize(("clk", "baud", "want"), [
    (50e6, 2_000_000, 25), (50e6, 1_000_000, 50), (12e6, 1_000_000, 12), (12e6, 115_200, 104),
    (25e6, 115_200, 217),
    (48e6, 3_000_000, 16), (100e6, 25e6, 4),
])
def test_divisor(clk, baud, want):
    assert divisor(clk, baud) == want


def test_divisor_rejects_baud_error():
    # 12 MHz / 3 MBd = 4 exactly; 12 MHz / 2.7 MBd = 4.44: 4 gives 3 MBd, 11 % off.
    with pytest.raises(ConfigError, match=r"^Baud rate error must be at most 2%, not 11\.11% "
                                          r"\(12 MHz / 4 = 3000000 Bd for 2\.7e\+06 Bd\)"):
        divisor(12e6, 2_700_000)


def test_divisor_rejects_slow_clock():
    with pytest.raises(ConfigError, match=r"^Clock frequency must be at least 4 times the baud "
                                          r"rate, not 12 MHz for 4e\+06 Bd"):
        divisor(12e6, 4_000_000)


@pytest.mark.parametrize("value", [0, -1, "fast", True, None])
def test_divisor_rejects_bad_numbers(value):
    with pytest.raises(ConfigError, match=r"^Baud rate must be a positive number, not "):
        divisor(12e6, value)


def test_components_reject_bad_divisor():
    with pytest.raises(ConfigError, match=r"^Divisor must be an integer of at least 4, not 3$"):
        UARTTx(3)
    with pytest.raises(ConfigError, match=r"^Divisor must be an integer of at least 4, not 8\.0$"):
        UARTRx(8.0)
    with pytest.raises(ConfigError, match=r"^FIFO depth must be an integer of at least 2, not 1$"):
        UARTRx(8, fifo_depth=1)


class Loopback(wiring.Component):
    """A transmitter wired to a receiver: a quick Amaranth-simulator round trip."""

    i_stream: In(stream.Signature(8))
    o_stream: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx = tx = UARTTx(DIVISOR)
        m.submodules.rx = rx = UARTRx(DIVISOR)
        wiring.connect(m, wiring.flipped(self.i_stream), tx.i_stream)
        wiring.connect(m, rx.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += rx.rxd.eq(tx.txd)
        return m


def test_loopback_amaranth_sim():
    dut = Loopback()
    data = [0x00, 0xFF, 0xA5, 0x5A, 0x01, 0x80, 0x7E]
    got = []

    async def source(ctx):
        for byte in data:
            ctx.set(dut.i_stream.payload, byte)
            ctx.set(dut.i_stream.valid, 1)
            await ctx.tick().until(dut.i_stream.ready)
        ctx.set(dut.i_stream.valid, 0)

    async def sink(ctx):
        ctx.set(dut.o_stream.ready, 1)
        while len(got) < len(data):
            (payload,) = await ctx.tick().sample(dut.o_stream.payload).until(dut.o_stream.valid)
            got.append(payload)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-8 * DIVISOR * 10 * (len(data) + 3))
    assert got == data


def test_board_divisors_found():
    """Every board's default and the documented ULX3S options are among the divisors run."""
    builds = {b for labels in BOARD_DIVISORS.values() for b in labels}
    for board in BOARDS.values():
        assert f"{board.name}-{board.clock_mhz:g}MHz-{board.baud}Bd" in builds, builds
    assert "ulx3s-85f-50MHz-2000000Bd" in builds, builds
    assert {25, 10} <= set(BOARD_DIVISORS), BOARD_DIVISORS
    assert DIVISOR not in BOARD_DIVISORS


def _uart_cases():
    """Each divisor on one simulator: a divisor is a matter of the bit timing, not of the
    simulator. The largest board's (the slowest to run, a cocotb coroutine waking for every
    clock of every bit) goes to Verilator, the others to Icarus, when both are selected
    (Icarus alone on the largest took 76 s of the suite; each divisor is a Verilator build of
    its own, 16 to 20 s, where Icarus builds in a second)."""
    sims = selected_simulators()
    largest = max(BOARD_DIVISORS)

    def runs(sim, d):
        if len(sims) == 1:
            return True
        return (sim == "verilator") == (d == largest)

    return [pytest.param(sim, d, id="-".join([sim, str(d), *BOARD_DIVISORS.get(d, ["even"])]))
            for d in sorted({DIVISOR, *BOARD_DIVISORS}) for sim in sims if runs(sim, d)]


@pytest.mark.slow
@pytest.mark.parametrize(("sim", "divisor"), _uart_cases())
def test_uart_rtl(sim, divisor):
    params = {"divisor": divisor, "fifo_depth": FIFO_DEPTH}
    run_cocotb(UARTBridge(divisor * 1e6, 1e6, fifo_depth=FIFO_DEPTH), name="uart_bridge",
               test_module="test_uart", sim=sim, build_key=params,
               extra_env={"SYSTOLIC_UART": json.dumps(params)}, timeout=300)

