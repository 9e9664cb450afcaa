"""PoolEngine's Verilog on Icarus and Verilator, against the golden model, exactly.

One simulation per simulator and configuration runs every case (``sim/test_pool.py``): random
seeded shapes of max and average pooling with every window and stride, odd sizes, one and
several channel tiles, single output columns, saturated inputs, every backpressure pattern
crossed with none, and a reset in the middle of a layer followed by an exact layer. The engine
without averaging gets the max pooling cases, and an average layer, which it runs as max
pooling.
"""

import itertools
import json

import numpy as np
import pytest
from systolic.hw.config import AcceleratorConfig
from systolic.hw.isa import describe_pool, pack_descriptor
from systolic.hw.pool import PoolEngine, pool_latency
from systolic.sim.runner import parametrize_simulators, run_cocotb
from systolic.sim.streams import Backpressure
from systolic.sw import arith

CFG = AcceleratorConfig(rows=2, cols=4, act_depth=1024, max_dim=32)
CONFIGS = {"avg": CFG, "max-only": CFG.replace(pool_avg=False)}
PATTERNS = [p.value for p in Backpressure]
# Each pattern against free flow on the other side, and a few against each other.
PAUSES = ([("none", "none")] + [(p, "none") for p in PATTERNS[1:]]
          + [("none", p) for p in PATTERNS[1:]] + [("random", "bursty"), ("bursty", "cycle")])


def to_words(t, cols):
    """``(C, H, W)`` int8 to activation words (lists of lanes) in memory order."""
    c, h, w = t.shape
    cw = -(-c // cols)
    padded = np.zeros((cw * cols, h, w), np.int64)
    padded[:c] = t
    return padded.reshape(cw, cols, h, w).transpose(2, 3, 0, 1).reshape(-1, cols).tolist()


def make_case(cfg, name, x, kernel, stride, avg, pauses, seed, reset_after=None):
    c, h, w = x.shape
    fields = describe_pool(cfg, channels=c, h=h, w=w, kernel=kernel, stride=stride, avg=avg)
    y = (arith.avgpool2d if avg and cfg.pool_avg else arith.maxpool2d)(x, kernel, stride)
    return {"name": f"{name} {'avg' if avg else 'max'}{kernel}/{stride} {c}x{h}x{w} {pauses}",
            "cmd": pack_descriptor(cfg, fields), "inputs": to_words(x, cfg.cols),
            "expected": to_words(y, cfg.cols), "source": pauses[0], "sink": pauses[1],
            "seed": seed, "reset_after": reset_after}


def pool_cases(cfg, seed=2024):
    rng = np.random.default_rng(seed)
    pauses = itertools.cycle(PAUSES)
    ops = (False, True) if cfg.pool_avg else (False,)
    cases = []
    for i, (avg, kernel, stride) in enumerate(
            itertools.product(ops, arith.POOL_KERNELS, arith.POOL_STRIDES)):
        for j in range(3):
            c = int(rng.integers(1, 3 * cfg.cols + 1))         # 1 to 3 channel tiles
            h, w = (int(v) for v in rng.integers(kernel, 12, size=2))
            if j == 2:      # one output column of one tile: the column window's period is 1
                c, w = int(rng.integers(1, cfg.cols + 1)), kernel + stride - 1
            x = rng.integers(-128, 128, size=(c, h, w)).astype(np.int8)
            cases.append(make_case(cfg, f"random{i}.{j}", x, kernel, stride, avg,
                                   next(pauses), seed=i * 3 + j))
    for value, kernel, avg in itertools.product((-128, 127), arith.POOL_KERNELS, ops):
        x = np.full((cfg.cols + 1, 7, 5), value, np.int8)
        x[0, 1::2, ::2] = -1 - value                   # a -128 / 127 checkerboard in one lane
        cases.append(make_case(cfg, f"saturated{value}", x, kernel, 1, avg, ("none", "none"),
                               0))
    if not cfg.pool_avg:
        # Harmless: run as max pooling, with the stream lengths the command gives.
        x = rng.integers(-128, 128, size=(cfg.cols + 2, 8, 7)).astype(np.int8)
        cases.append(make_case(cfg, "avg-as-max", x, 3, 2, True, ("random", "cycle"), 6))
    # Reset after 40 of the 2 * 9 * 9 input words, then an exact layer.
    x = rng.integers(-128, 128, size=(2 * cfg.cols, 9, 9)).astype(np.int8)
    cases.append(make_case(cfg, "reset", x, 3, 2, ops[-1], ("random", "random"), 7,
                           reset_after=40))
    cases.append(make_case(cfg, "after-reset", x, 3, 2, ops[-1], ("none", "none"), 8))
    cases.append(make_case(cfg, "after-reset", x[:3], 2, 3, False, ("bursty", "random"), 9))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
@parametrize_simulators
def test_pool_layers(sim, config, tmp_path):
    cfg = CONFIGS[config]
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps({"cols": cfg.cols, "latency": pool_latency(cfg),
                                "cases": pool_cases(cfg)}))
    run_cocotb(PoolEngine(cfg), name="pool_engine", test_module="test_pool", sim=sim,
               build_key=cfg.as_dict(), extra_env={"SYSTOLIC_VECTORS": path}, timeout=300)
