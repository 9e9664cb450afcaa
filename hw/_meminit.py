"""A faster emission of memory contents in Amaranth's RTLIL back end, the same text.

Amaranth 0.5 (`amaranth.back.rtlil`) writes a memory's initial contents as one netlist object
per bit (``_nir.Net.from_const``) and then folds them back into a string: 1.8 million bits for
the default design's activation, weight and frame memories. Converting
`systolic.hw.controller.Controller` to Verilog took 20.7 s on the `default` preset, 35.5 s on
`big` and 5.4 s on `small`; with `emit_memory`, 12.4, 16.5 and 2.4 s (one run each, the same
text). Upstream knows the cost
(amaranth-lang/amaranth#1522). `emit_memory` below writes the same ``$meminit_v2`` cell from
the rows as one integer, so the RTLIL and the Verilog are byte for byte what Amaranth writes
(`tests/test_generate.py` compares them).

`install` replaces the method on Amaranth's own class, once, and only on the Amaranth it was
written for (0.5: the module raises nothing and changes nothing on another).
"""

from amaranth.back import rtlil
from amaranth.hdl import _nir

__all__ = ["emit_memory", "install"]

_ORIGINAL = getattr(getattr(rtlil, "ModuleEmitter", None), "emit_memory", None)


def emit_memory(self, cell_idx, cell):
    """`amaranth.back.rtlil.ModuleEmitter.emit_memory`, the initial rows as one constant."""
    bits = len(cell.init) * cell.width
    if bits == 0:
        return _ORIGINAL(self, cell_idx, cell)
    mask = (1 << cell.width) - 1
    value = 0
    for row in reversed(cell.init):         # row 0 in the lowest bits, as Amaranth orders them
        value = (value << cell.width) | (row & mask)
    memory_info = self.memories[cell_idx]
    self.builder.cell("$meminit_v2", ports={
        "ADDR": self.sigspec(),
        "DATA": f"{bits}'{value:0{bits}b}",
        "EN": self.sigspec(_nir.Value.ones(cell.width)),
    }, parameters={
        "MEMID": memory_info.memid,
        "ABITS": 0,
        "WIDTH": cell.width,
        "WORDS": cell.depth,
        "PRIORITY": 0,
    }, src_loc=cell.src_loc)


def install():
    """Use `emit_memory` in Amaranth's RTLIL back end (idempotent; a no-op if Amaranth's
    emitter is not the one this was written for)."""
    if _ORIGINAL is None or _ORIGINAL.__code__.co_varnames[:3] != ("self", "cell_idx", "cell"):
        return False
    rtlil.ModuleEmitter.emit_memory = emit_memory
    return True
