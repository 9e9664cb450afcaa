"""Registers that synthesis keeps apart, so that each copy of one can sit near its own loads.

A register that fans out to many block RAMs or DSPs spread over the chip is a long route
whatever the placer does; copies of it, one per group of loads, are short ones. But Yosys merges
equivalent built-in registers (``opt_merge``), and a ``keep`` attribute on a signal does not stop
it. It never merges primitive instances: on the FPGA targets each bit of a copy is a flip-flop
primitive (``TRELLIS_FF``, ``SB_DFFSR``) with the ``sync`` domain's reset. In ``generic`` (for
simulation) they are ordinary registers, which behave the same.
"""

from amaranth.hdl import (
    ClockDomain,
    ClockSignal,
    DomainRenamer,
    Instance,
    ResetSignal,
    Signal,
    Value,
)

__all__ = ["delay", "hard_register", "local_reset", "reset_domain"]


def hard_register(m, d, *, name, target, reset_less=False):
    """A register of ``d`` (reset to 0) that synthesis does not merge with an equivalent one.

    Parameters
    ----------
    m : Module
        The module the flip-flops go into (as submodules ``{name}_ff{bit}``).
    d : value-like
        The register's input.
    name : str
        The register's name.
    target : str
        ``ecp5``, ``ice40`` (primitive flip-flops) or ``generic`` (an ordinary register).
    reset_less : bool
        Leave the ``sync`` domain's reset unconnected (for data: an address, a word), so that
        the reset net has one load fewer per bit.

    Returns
    -------
    Signal
        The register's output, as wide as ``d``.
    """
    d = Value.cast(d)
    q = Signal(len(d), name=name, reset_less=reset_less)
    for i in range(len(d)):
        if target == "ecp5":
            m.submodules[f"{name}_ff{i}"] = Instance(
                "TRELLIS_FF", p_GSR="DISABLED", p_CEMUX="1", p_CLKMUX="CLK", p_LSRMUX="LSR",
                p_SRMODE="LSR_OVER_CE", p_REGSET="RESET",
                i_CLK=ClockSignal("sync"), i_LSR=0 if reset_less else ResetSignal("sync"),
                i_DI=d[i], o_Q=q[i])
        elif target == "ice40" and reset_less:
            m.submodules[f"{name}_ff{i}"] = Instance(
                "SB_DFF", i_C=ClockSignal("sync"), i_D=d[i], o_Q=q[i])
        elif target == "ice40":
            m.submodules[f"{name}_ff{i}"] = Instance(
                "SB_DFFSR", i_C=ClockSignal("sync"), i_R=ResetSignal("sync"), i_D=d[i],
                o_Q=q[i])
        else:
            m.d.sync += q[i].eq(d[i])
    return q


def delay(m, sig, cycles, *, name, reset_less=False):
    """``sig`` through ``cycles`` ordinary registers (``cycles`` may be 0), named
    ``{name}_d0``, ``{name}_d1``, ...; ``reset_less`` for data."""
    for i in range(cycles):
        nxt = Signal.like(sig, name=f"{name}_d{i}", reset_less=reset_less)
        m.d.sync += nxt.eq(sig)
        sig = nxt
    return sig


def local_reset(m, sub, *, name, target, stages=2):
    """``sub`` (an elaboratable) in a ``sync`` domain of its own, whose reset is the ``sync``
    domain's through ``stages`` registers of its own (on ``ecp5``; elsewhere ``sub`` as it is).

    One reset net to every control register of the chip is a route across the die from one
    flip-flop (the ULX3S's worst path at 75 MHz, 12.6 of 14.2 ns routing): nextpnr-ecp5 puts no
    global buffer on a logic input like LSR. A copy per part of the design is a tree the
    placer can lay out, each copy near its loads. The part leaves reset ``stages`` cycles after
    the rest; nothing talks to an engine that soon (commands come over the UART).

    Returns the elaboratable to add as a submodule (keep ``sub`` for its ports).
    """
    if target != "ecp5":
        return sub
    domain = reset_domain(m, f"{name}_sync", [f"{name}_rst{i}" for i in range(stages)],
                          target=target)
    return DomainRenamer({"sync": domain})(sub)


def reset_domain(m, domain, registers, *, target):
    """Add to ``m`` the local clock domain ``domain``: ``sync``'s clock, and ``sync``'s reset
    through a chain of reset-less registers named ``registers`` (`hard_register`, which
    synthesis does not merge, so that each copy can sit near its loads). Returns ``domain``."""
    rst = ResetSignal("sync")
    for name in registers:
        rst = hard_register(m, rst, name=name, target=target, reset_less=True)
    m.domains += ClockDomain(domain, local=True)
    m.d.comb += [ClockSignal(domain).eq(ClockSignal("sync")), ResetSignal(domain).eq(rst)]
    return domain
