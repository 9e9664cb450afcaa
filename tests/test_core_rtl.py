"""The core's Verilog on Icarus and Verilator, layer by layer, against the golden model, exactly.

One simulation per simulator runs every case (``sim/test_core.py``): convolutions with every
kernel size 1-7, strides 1-2 and paddings, fully connected layers, max and average pooling,
a conv-pool-conv chain kept on chip, saturation corners, backpressure on every stream crossed
with none, and a reset in the middle of a layer followed by exact layers.
"""

import itertools
import json

import numpy as np
import pytest
from systolic.hw import layout
from systolic.hw.config import AcceleratorConfig
from systolic.hw.core import Core
from systolic.hw.isa import (
    Mem,
    describe_conv,
    describe_pool,
    load_layout,
    pack_descriptor,
    pack_params,
)
from systolic.sim.runner import parametrize_simulators, run_cocotb
from systolic.sim.streams import Backpressure
from systolic.sw import arith

CFG = AcceleratorConfig(rows=4, cols=4, act_depth=1024, weight_depth=2048, param_depth=16,
                        max_dim=32)
PATTERNS = [p.value for p in Backpressure]
PAUSES = ([("none", "none")] + [(p, "none") for p in PATTERNS[1:]]
          + [("none", p) for p in PATTERNS[1:]])


def conv_params(rng, cin, cout, k, extreme=False):
    if extreme:
        w = rng.choice(np.array([-127, 127], np.int8), (cout, cin, k, k))
    else:
        w = rng.integers(-127, 128, (cout, cin, k, k)).astype(np.int8)
    b = rng.integers(-20000, 20000, cout)
    m, s = arith.choose_multiplier(rng.uniform(0.0001, 0.02, cout))
    return w, b, m, s


def case_from_layers(name, x, layers, pauses, seed, reset_after=None):
    """A case running ``layers`` (dicts) on ``x``, activations ping-ponging in memory."""
    cfg = CFG
    act = layout.pack_activations(cfg, x)
    loads = [(Mem.ACT.value, a, v) for a, v in enumerate(act)]
    weights, params, cmds = [], [], []
    bases = (0, cfg.act_depth // 2)
    y = x
    for i, lay in enumerate(layers):
        c, h, w = y.shape
        src, dst = bases[i % 2], bases[(i + 1) % 2]
        if lay["kind"] == "conv":
            wq, b, m, s = lay["params"]
            d = describe_conv(cfg, cin=c, h=h, w=w, cout=wq.shape[0], kh=wq.shape[2],
                              kw=wq.shape[3], stride=lay["stride"], pad=lay["pad"],
                              relu=lay["relu"], in_base=src, out_base=dst,
                              w_base=len(weights), p_base=len(params))
            weights += layout.conv_weight_words(cfg, wq)
            params += pack_params(cfg, b, m, s)
            y = arith.requantize(arith.conv2d_acc(y, wq, b, stride=lay["stride"],
                                                  padding=lay["pad"]), m, s, relu=lay["relu"])
        else:
            avg = lay["kind"] == "avg"
            d = describe_pool(cfg, channels=c, h=h, w=w, kernel=lay["k"], stride=lay["stride"],
                              avg=avg, in_base=src, out_base=dst)
            y = (arith.avgpool2d if avg else arith.maxpool2d)(y, lay["k"], lay["stride"])
        cmds.append(pack_descriptor(cfg, d))
    loads += [(Mem.WEIGHT.value, a, v) for a, v in enumerate(weights)]
    loads += [(Mem.PARAM.value, a, v) for a, v in enumerate(params)]
    return {
        "name": name, "loads": loads, "cmds": cmds,
        "read_base": bases[len(layers) % 2], "expected": layout.pack_activations(cfg, y),
        "source": pauses[0], "sink": pauses[1], "seed": seed, "reset_after": reset_after,
    }


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
            cases.append(case_from_layers(f"conv k{k} s{stride} p{pad} {cin}x{h}x{w}->{cout}",
                                          x, [lay], next(pauses), len(cases)))
    # Fully connected: a flattened (C, H, W) input, then a 1x1 spatial one.
    x = rng.integers(-128, 128, (6, 3, 3)).astype(np.int8)
    fc1 = {"kind": "conv", "params": conv_params(rng, 6, 10, 3), "stride": 1, "pad": 0,
           "relu": True}
    fc2 = {"kind": "conv", "params": conv_params(rng, 10, 7, 1), "stride": 1, "pad": 0,
           "relu": False}
    cases.append(case_from_layers("linear 54->10->7", x, [fc1, fc2], next(pauses), len(cases)))
    # Pooling through the core, and a chain kept on chip.
    for kind, k, stride in itertools.product(("max", "avg"), arith.POOL_KERNELS, (1, 2, 3)):
        x = rng.integers(-128, 128, (int(rng.integers(1, 9)), 7, 8)).astype(np.int8)
        cases.append(case_from_layers(f"{kind}pool k{k} s{stride}", x,
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
    cases.append(case_from_layers("chain conv-max-conv-avg-linear", x, chain, next(pauses),
                                  len(cases)))
    # Saturation corners: weights all ±127, inputs -128 and 127, a large multiplier.
    x = rng.choice(np.array([-128, 127], np.int8), (8, 5, 5))
    wq, b, _, _ = conv_params(rng, 8, 8, 3, extreme=True)
    m, s = arith.choose_multiplier(np.full(8, 0.05))
    sat = {"kind": "conv", "params": (wq, b, m, s), "stride": 1, "pad": 1, "relu": False}
    cases.append(case_from_layers("saturation", x, [sat], ("none", "none"), len(cases)))
    # A reset in the middle of a layer, then exact layers.
    x = rng.integers(-128, 128, (5, 7, 7)).astype(np.int8)
    lay = {"kind": "conv", "params": conv_params(rng, 5, 9, 3), "stride": 1, "pad": 1,
           "relu": True}
    cases.append(case_from_layers("reset mid-layer", x, [lay], ("none", "none"), len(cases),
                                  reset_after=150))
    cases.append(case_from_layers("after reset", x, [lay], ("random", "random"), len(cases)))
    cases.append(case_from_layers("after reset, pool", x, [{"kind": "max", "k": 3, "stride": 2}],
                                  ("none", "none"), len(cases)))
    return cases


@pytest.mark.slow
@parametrize_simulators
def test_core_layers(sim, tmp_path):
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps({"load_addr_bits": load_layout(CFG)["addr"].width,
                                "cases": core_cases()}))
    run_cocotb(Core(CFG), name="core", test_module="test_core", sim=sim,
               build_key=CFG.as_dict(), extra_env={"SYSTOLIC_VECTORS": path}, timeout=900)
