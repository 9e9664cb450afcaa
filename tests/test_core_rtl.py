"""The core's Verilog on Icarus and Verilator, layer by layer, against the golden model, exactly.

One simulation per simulator runs every case (``sim/test_core.py``): convolutions with every
kernel size 1-7, strides 1-2 and paddings, fully connected layers, max and average pooling,
a conv-pool-conv chain kept on chip, saturation corners, backpressure on every stream crossed
with none, and a reset in the middle of a layer followed by exact layers.
"""

import functools
import itertools
import json

import numpy as np
import pytest
from systolic.hw.config import AcceleratorConfig
from systolic.hw.core import Core
from systolic.sim.runner import parametrize_simulators, run_cocotb
from systolic.sim.streams import Backpressure
from systolic.sim.vectors import case_from_layers, conv_params, vector_file
from systolic.sw import arith

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
