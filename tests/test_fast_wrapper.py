"""The fast harness's reset register (`systolic.sim.fast._reset_wrapper`): the wrapper's text,
from a top module's port declarations as Amaranth and Yosys write them."""

from systolic.sim.fast import _reset_wrapper

DESIGN = """\
module inner(x);
  input x;
endmodule
module top(clk, rst, \\rx.payload , o, flags);
  input clk;
  wire clk;
  input rst;
  input [7:0] \\rx.payload ;
  output reg o;
  output [1:0] flags;
  inner u(.x(rst));
endmodule
"""


def test_wrapper_registers_reset_and_passes_every_port():
    text = _reset_wrapper(DESIGN, "top")
    assert text.splitlines() == [
        "module fast_top(clk, rst, \\rx.payload , o, flags);",
        "  input clk;",
        "  input rst;",
        "  input [7:0] \\rx.payload ;",
        "  output o;",
        "  output [1:0] flags;",
        "  reg fast_rst = 1'b1;",
        "  always @(posedge clk) fast_rst <= rst;",
        "  top top (.clk(clk), .rst(fast_rst), .\\rx.payload (\\rx.payload ), .o(o), "
        ".flags(flags));",
        "endmodule",
    ]


def test_no_wrapper_without_clock_and_reset():
    assert _reset_wrapper(DESIGN, "inner") is None          # no clk, no rst
    assert _reset_wrapper(DESIGN, "missing") is None
