"""The core's Verilog on Icarus and Verilator, layer by layer, against the golden model, exactly.

One simulation per simulator runs every case (``sim/test_core.py``): convolutions with every
kernel size 1-7, strides 1-2 and paddings, fully connected layers, max and average pooling,
a conv-pool-conv chain kept on chip, saturation corners, backpressure on every stream crossed
with none, and a reset in the middle of a layer followed by exact layers.

The memory the weights and parameters live in (`SinglePortMemory`) runs on Icarus too, the
Amaranth memory and the iCE40 SPRAM one (through Yosys's ``SB_SPRAM256KA`` model), each against
a Python dictionary: every word read back is the one last written there, and ``data`` holds
between reads.
"""

import functools
import itertools
import json
import re
import subprocess

import numpy as np
import pytest
from amaranth.back import verilog
from systolic.hw.config import AcceleratorConfig
from systolic.hw.core import Core, SinglePortMemory
from systolic.sim.runner import parametrize_simulators, run_cocotb
from systolic.sim.streams import Backpressure
from systolic.sim.vectors import case_from_layers, conv_params, vector_file
from systolic.sw import arith
from tool_common import ICE40_CELLS, require_icarus, require_yosys_file

CFG = AcceleratorConfig(rows=4, cols=4, act_depth=1024, weight_depth=2048, param_depth=16,
                        max_dim=32)
case = functools.partial(case_from_layers, CFG)
PATTERNS = [p.value for p in Backpressure]
PAUSES = ([("none", "none")] + [(p, "none") for p in PATTERNS[1:]]
          + [("none", p) for p in PATTERNS[1:]])


def core_cases(seed=11):
    rng = np.random.default_rng(seed)
    pauses = itertools.cycle(PAUSES)
    cases = []
    for k in range(1, 8):                                   # every kernel size
        for stride in (1, 2):
            pad = int(rng.integers(0, min(3, k - 1) + 1))
            cin, cout = (int(v) for v in rng.integers(1, 3 * CFG.cols + 1, 2))
            h = int(rng.integers(max(k - 2 * pad, 1), 10)) | 1     # odd sizes
            w = int(rng.integers(max(k - 2 * pad, 1), 10))
            x = rng.integers(-128, 128, (cin, h, w)).astype(np.int8)
            lay = {"kind": "conv", "params": conv_params(rng, cin, cout, k), "stride": stride,
                   "pad": pad, "relu": bool(rng.integers(2))}
            cases.append(case(f"conv k{k} s{stride} p{pad} {cin}x{h}x{w}->{cout}",
                                          x, [lay], next(pauses), len(cases)))
    # Fully connected: a flattened (C, H, W) input, then a 1x1 spatial one.
    x = rng.integers(-128, 128, (6, 3, 3)).astype(np.int8)
    fc1 = {"kind": "conv", "params": conv_params(rng, 6, 10, 3), "stride": 1, "pad": 0,
           "relu": True}
    fc2 = {"kind": "conv", "params": conv_params(rng, 10, 7, 1), "stride": 1, "pad": 0,
           "relu": False}
    cases.append(case("linear 54->10->7", x, [fc1, fc2], next(pauses), len(cases)))
    # Pooling through the core, and a chain kept on chip.
    for kind, k, stride in itertools.product(("max", "avg"), arith.POOL_KERNELS, (1, 2, 3)):
        x = rng.integers(-128, 128, (int(rng.integers(1, 9)), 7, 8)).astype(np.int8)
        cases.append(case(f"{kind}pool k{k} s{stride}", x,
                                      [{"kind": kind, "k": k, "stride": stride}],
                                      next(pauses), len(cases)))
    x = rng.integers(-128, 128, (3, 9, 9)).astype(np.int8)
    chain = [
        {"kind": "conv", "params": conv_params(rng, 3, 8, 3), "stride": 1, "pad": 1,
         "relu": True},
        {"kind": "max", "k": 2, "stride": 2},
        {"kind": "conv", "params": conv_params(rng, 8, 6, 3), "stride": 1, "pad": 1,
         "relu": True},
        {"kind": "avg", "k": 2, "stride": 2},
        {"kind": "conv", "params": conv_params(rng, 6, 10, 2), "stride": 1, "pad": 0,
         "relu": False},
    ]
    cases.append(case("chain conv-max-conv-avg-linear", x, chain, next(pauses),
                                  len(cases)))
    # Saturation corners: weights all ±127, inputs -128 and 127, a large multiplier.
    x = rng.choice(np.array([-128, 127], np.int8), (8, 5, 5))
    wq, b, _, _ = conv_params(rng, 8, 8, 3, extreme=True)
    m, s = arith.choose_multiplier(np.full(8, 0.05))
    sat = {"kind": "conv", "params": (wq, b, m, s), "stride": 1, "pad": 1, "relu": False}
    cases.append(case("saturation", x, [sat], ("none", "none"), len(cases)))
    # A reset in the middle of a layer, then exact layers.
    x = rng.integers(-128, 128, (5, 7, 7)).astype(np.int8)
    lay = {"kind": "conv", "params": conv_params(rng, 5, 9, 3), "stride": 1, "pad": 1,
           "relu": True}
    cases.append(case("reset mid-layer", x, [lay], ("none", "none"), len(cases),
                                  reset_after=150))
    cases.append(case("after reset", x, [lay], ("random", "random"), len(cases)))
    cases.append(case("after reset, pool", x, [{"kind": "max", "k": 3, "stride": 2}],
                                  ("none", "none"), len(cases)))
    return cases


@pytest.mark.slow
@parametrize_simulators
def test_core_layers(sim, tmp_path):
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps(vector_file(CFG, core_cases())))
    run_cocotb(Core(CFG), name="core", test_module="test_core", sim=sim,
               build_key=CFG.as_dict(), extra_env={"SYSTOLIC_VECTORS": path}, timeout=900)


# SinglePortMemory -------------------------------------------------------------------------------

_MEMORY_BENCH = """
module tb;
  reg clk = 0, rst = 0;
  reg we = 0, re = 0;
  reg [{abits}-1:0] waddr = 0, raddr = 0;
  reg [{width}-1:0] wdata = 0;
  wire [{width}-1:0] rdata;
  reg [1 + {abits} + {width} + 1 + {abits} - 1:0] ops [0:{n}-1];
  integer i;
  mem dut(.clk(clk), .rst(rst), .write__en(we), .write__addr(waddr), .write__data(wdata),
          .read__en(re), .read__addr(raddr), .read__data(rdata));
  always #5 clk = ~clk;
  initial begin
    $readmemh("ops.hex", ops);
    for (i = 0; i < {n}; i = i + 1) begin
      {{we, waddr, wdata, re, raddr}} = ops[i];
      @(posedge clk); #1;
      $display("D %0d %h", i, rdata);
    end
    $finish;
  end
endmodule
"""


def _memory_ops(depth, width, n, seed):
    """``(we, waddr, wdata, re, raddr)`` per cycle: writes anywhere, reads of written words,
    both at once, and idle cycles."""
    rng = np.random.default_rng(seed)
    written, ops = [], []
    for _ in range(n):
        kind = rng.choice(["write", "read", "both", "idle"], p=[0.35, 0.4, 0.15, 0.1])
        we = kind in ("write", "both") or not written
        rd = kind in ("read", "both") and bool(written)
        waddr = int(rng.integers(depth)) if rng.random() < 0.7 else depth - 1
        raddr = written[int(rng.integers(len(written)))] if written else 0
        ops.append((int(we), waddr, int(rng.integers(1 << width)), int(rd), raddr))
        if we:
            written.append(waddr)
    return ops


def _expected(ops, read_delay=0, write_delay=0):
    """``data`` after each cycle: an int, or None where it is undefined (after a write).

    The memory sees a cycle's read ``read_delay`` cycles later and its write ``write_delay``
    cycles later (its registers); a write it sees wins over a read it sees in the same cycle.
    """
    idle = (0, 0, 0, 0, 0)
    mem, data, out = {}, None, []
    for i in range(len(ops)):
        we, waddr, wdata, _, _ = ops[i - write_delay] if i >= write_delay else idle
        _, _, _, rd, raddr = ops[i - read_delay] if i >= read_delay else idle
        if we:
            mem[waddr], data = wdata, None
        elif rd:
            data = mem[raddr]
        out.append(data)
    return out


@pytest.mark.parametrize(("width", "depth", "spram", "registered", "slices"), [
    (32, 16384, False, False, 1),
    (53, 256, False, False, 1),
    (32, 16384, True, False, 1),
    (24, 32768, True, False, 1),    # two banks of two, the top 8 bits of each bank's second unused
    (32, 16384, True, True, 1),     # the small preset's weights: two SB_SPRAM256KA side by side
    (48, 1024, False, True, 6),     # as the ECP5 presets' weights: a slice a column of 8 bits
    (40, 256, False, True, 1),
])
def test_single_port_memory_icarus(tmp_path, width, depth, spram, registered, slices):
    require_icarus()
    if spram:
        require_yosys_file(ICE40_CELLS, "Yosys's iCE40 simulation models (SB_SPRAM256KA)")
    abits = (depth - 1).bit_length()
    ops = _memory_ops(depth, width, 3000, seed=width + depth)
    (tmp_path / "mem.v").write_text(verilog.convert(
        SinglePortMemory(shape=width, depth=depth, spram=spram, registered=registered,
                         slices=slices), name="mem"))
    (tmp_path / "tb.v").write_text(_MEMORY_BENCH.format(abits=abits, width=width, n=len(ops)))
    digits = -(-(2 * abits + width + 2) // 4)
    (tmp_path / "ops.hex").write_text("".join(
        f"{(((we << abits | waddr) << width | wdata) << 1 | rd) << abits | raddr:0{digits}x}\n"
        for we, waddr, wdata, rd, raddr in ops))
    models = [str(ICE40_CELLS)] if spram else []
    # Icarus 11 cannot parse the models' default values on input ports; the define drops them.
    build = subprocess.run(["iverilog", "-g2012", "-DNO_ICE40_DEFAULT_ASSIGNMENTS", "-o",
                            "sim.vvp", "-s", "tb", "tb.v", "mem.v", *models],
                           cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run(["vvp", "-n", "sim.vvp"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    seen = re.findall(r"^D (\d+) (\S+)$", run.stdout, re.MULTILINE)
    assert len(seen) == len(ops), run.stdout[-2000:]
    expected = _expected(ops, read_delay=int(registered), write_delay=int(slices > 1))
    wrong = [(int(i), got, f"{want:x}") for (i, got), want in zip(seen, expected, strict=True)
             if want is not None and got != f"{want:0{len(got)}x}"]
    assert not wrong, f"{len(wrong)} cycles wrong, first (cycle, got, want): {wrong[:5]}"
