"""The systolic array: a ``rows × cols`` mesh of processing elements with skewed edges."""

from amaranth.hdl import DomainRenamer, Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .isa import drain_steps
from .pe import ProcessingElement, capture_cycles, carry_stages, product_stages
from .replica import delay, hard_register, reset_domain

__all__ = ["SystolicArray", "snapshot_pes"]


def snapshot_pes(cfg):
    """The PEs ``(row, col)`` whose sums the array keeps a snapshot of, so that a tile of only
    `systolic.hw.isa.drain_steps` reduction steps drains exact (empty in most shapes).

    The drain takes a tile's rows one after the other, ``G = rq_groups`` cycles each, group
    ``g`` (columns ``g * rq_lanes`` on) in the row's ``g``-th cycle. Row ``r``'s group ``g`` is
    taken ``r * G + g`` cycles after row 0 is whole, but PE ``(r, c)``'s sum is replaced ``K``
    cycles after it appeared, ``cols - 1 - c`` cycles before its row was whole (the columns'
    skew): the sum is gone by then where ``c < cols + r * (G - 1) + g - K``. (The 8x16 array
    with 8 lanes, ``K`` = 16 steps: 28 PEs, columns below ``r`` of row ``r``'s first group;
    without them a one-word reduction of 16 steps had to be walked twice, 23 steps.) Each of
    these PEs' sums goes into a register as its row is whole, and holds ``K`` cycles from
    then, past the lanes' turn; the others hold long enough in the PE."""
    K = drain_steps(cfg)
    return frozenset((r, c) for r in range(cfg.rows) for c in range(cfg.cols)
                     if c < cfg.cols + _drain_lag(cfg, r, c) - K)


def _drain_lag(cfg, r, c):
    """Cycles between row ``r`` being whole and the drain taking PE ``(r, c)``'s sum, beyond
    row 0's: ``r * (G - 1) + g``, ``g`` the column's lane group."""
    return r * (cfg.rq_groups - 1) + c // cfg.rq_lanes


def _hard_delay(m, sig, cycles, name, target):
    """One-bit ``sig`` delayed by ``cycles`` flip-flops that synthesis keeps apart
    (`hard_register`)."""
    for i in range(cycles):
        sig = hard_register(m, sig, name=f"{name}_d{i}", target=target)
    return sig


#: Columns whose snapshot registers share a copy of their row's enable (4: 128 flip-flops).
_SNAPSHOT_GROUP = 4


class SystolicArray(wiring.Component):
    """Output-stationary ``rows × cols`` array; row ``r`` computes output pixel ``r`` of a tile
    and column ``c`` output channel ``c``.

    The inputs are *aligned* vectors: in one cycle the caller presents step ``k`` of every row
    and every column. The array skews them itself (row ``r`` and column ``c`` delayed by ``r`` and
    ``c`` cycles), so PE ``(r, c)`` sees step ``k`` of its row and column in the same cycle.

    A ``first`` pulse in the cycle of a tile's step 0 ends the previous tile. Row ``r`` of the
    previous tile's sums is then readable in ``results[r]`` exactly ``row_ready_delay(r)``
    cycles later, and stays so for at least one cycle (for as long as tiles are at least
    ``cols`` steps long, ``K - cols + 1`` cycles).

    Members
    -------
    a : In(ArrayLayout(signed(8), rows))
        Activations, one per row.
    w : In(ArrayLayout(signed(8), cols))
        Weights, one per column.
    first : In(1)
        Tile start.
    results : Out(ArrayLayout(ArrayLayout(signed(32), cols), rows))
        Every PE's finished sum.
    w_rows, fc : In
        (With ``cfg.fc_rows``.) While ``fc``, row ``1 <= r < cfg.fc_rows`` takes its weights
        from ``w_rows[r]`` (its own bank of the weight memory,
        `systolic.hw.core.BankedWeights`), not from the row above: PE ``(r, c)`` takes
        ``w_rows[r][c]`` a cycle after it is presented, with no skew (the lanes' words come
        skewed from memory, `systolic.hw.layout.fc_rows_weight_words`). Row 0 takes ``w`` as
        ever, and so do the rows from ``fc_rows`` on.

    Notes
    -----
    Every row's ``first`` flag is its own pipeline. As pure delays of one input, the flag
    registers of the PEs on an anti-diagonal are equivalent, and Yosys merges equivalent
    registers: one flip-flop then drives the accumulators of up to ``rows`` PEs spread over the
    chip (a 3 ns route at 8×8 on an ECP5-85F). The row skew of the flag is therefore built from
    flip-flop primitives, which synthesis does not merge (a ``keep`` attribute on a signal does
    not stop it), and within a row each PE's flag descends from its left neighbour's.
    """

    def __init__(self, cfg):
        self._cfg = cfg
        super().__init__({
            "a": In(data.ArrayLayout(signed(8), cfg.rows)),
            "w": In(data.ArrayLayout(signed(8), cfg.cols)),
            "first": In(1),
            "results": Out(data.ArrayLayout(data.ArrayLayout(signed(32), cfg.cols), cfg.rows)),
            **({"w_rows": In(data.ArrayLayout(data.ArrayLayout(signed(8), cfg.cols),
                                              cfg.fc_rows)),
                "fc": In(1)} if cfg.fc_rows else {}),
        })

    def row_ready_delay(self, row):
        """Cycles from a ``first`` pulse at the inputs until row ``row``'s sums are complete."""
        return row + self._cfg.cols + capture_cycles(self._cfg)

    def _row_domain(self, m, r):
        """The clock domain of row ``r``'s PEs: on the ECP5, ``sync`` with a reset of the row's
        own, through a register (`hard_register`) near its PEs. The PEs' flags are the
        array's only registers with a reset; one net to all of them crossed the array from
        one flip-flop (an 8x16 array's worst path at 75 MHz: 12.4 of 13.0 ns routing)."""
        if self._cfg.target != "ecp5":
            return "sync"
        return reset_domain(m, f"row{r}", [f"row{r}_rst"], target="ecp5")

    def _snapshot(self, m, r, row, cols):
        """Row ``r``'s ``results`` of columns ``cols`` (its PEs in `snapshot_pes`): a register
        of each PE's sum, loaded in the cycle the row's last column finishes: its ``first``
        flag (`ProcessingElement.first_out`) ``capture`` cycles on. The lanes take such a row
        at least a cycle after that (`_drain_lag` >= 1: row 0's first group is never in
        `snapshot_pes`, as ``K >= cols``). The enable is a copy per `_SNAPSHOT_GROUP`
        columns (`hard_register`), each driving its columns' registers only."""
        ready = delay(m, row[-1].first_out, row[-1].capture - 1, name=f"snap{r}",
                      reset_less=True)
        for i, c in enumerate(cols):
            if i % _SNAPSHOT_GROUP == 0:
                en = hard_register(m, ready, name=f"snap{r}_en{i // _SNAPSHOT_GROUP}",
                                   target=self._cfg.target, reset_less=True)
            held = Signal(signed(32), name=f"held_{r}_{c}", reset_less=True)
            with m.If(en):
                m.d.sync += held.eq(row[c].result)
            m.d.comb += self.results[r][c].eq(held)

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._cfg.rows, self._cfg.cols
        stages = product_stages(self._cfg)
        fc = self._cfg.fc_rows
        # (Row r's weights come through the PEs of row r - 1: those take the alternative.)
        # With ``deep_pipeline`` each PE's restart flags are its own (the release's 90 MHz
        # builds did not close any better with them: seeds 3, 4 and 5 missed).
        pes = [[ProcessingElement(self._cfg.target, product_stages=stages,
                                  carry_stages=carry_stages(self._cfg),
                                  alt_weight=r < fc - 1, own_flags=self._cfg.deep_pipeline)
                for _ in range(cols)]
               for r in range(rows)]
        snap = snapshot_pes(self._cfg)
        assert all(_drain_lag(self._cfg, r, c) >= 1 for r, c in snap)
        for r in range(rows):
            row = self._row_domain(m, r)
            for c in range(cols):
                m.submodules[f"pe_{r}_{c}"] = DomainRenamer({"sync": row})(pes[r][c])
                if (r, c) not in snap:
                    m.d.comb += self.results[r][c].eq(pes[r][c].result)
        for r in range(rows):
            pe = pes[r][0]
            m.d.comb += [
                pe.a_in.eq(delay(m, self.a[r], r, name=f"a{r}", reset_less=True)),
                pe.first_in.eq(_hard_delay(m, self.first, r, f"first{r}", self._cfg.target)),
            ]
            for c in range(1, cols):
                m.d.comb += [
                    pes[r][c].a_in.eq(pes[r][c - 1].a_out),
                    pes[r][c].first_in.eq(pes[r][c - 1].first_out),
                ]
        for r in range(rows):
            if cols_r := [c for c in range(cols) if (r, c) in snap]:
                self._snapshot(m, r, pes[r], cols_r)
        for c in range(cols):
            m.d.comb += pes[0][c].w_in.eq(delay(m, self.w[c], c, name=f"w{c}", reset_less=True))
            for r in range(1, rows):
                m.d.comb += pes[r][c].w_in.eq(pes[r - 1][c].w_out)
        if fc:
            # Each row's own copy of the (layer-long) select, near its PEs.
            for r in range(1, fc):
                alt = hard_register(m, self.fc, name=f"fc{r}", target=self._cfg.target)
                for c in range(cols):
                    m.d.comb += [pes[r - 1][c].alt.eq(alt),
                                 pes[r - 1][c].w_alt.eq(self.w_rows[r][c])]
        return m
