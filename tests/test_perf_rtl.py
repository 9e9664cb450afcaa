"""The performance model against the core's Verilog: every layer's ``cycles`` counter, exactly.

One simulation (the core of ``tests/test_core_rtl.py``, so the same build) runs every layer
kind: convolutions with every kernel size 1-7, strides 1-2, paddings, one to three channel
words and tiles, fully connected layers; and max and average pooling with every window (2, 3)
and stride (1-3) on odd and even maps, among them maps whose last rows or columns no window
reaches (7x8 with 2/2, 3/2 and 2/3 ...), one to three channel words each. ``sim/test_core.py``
holds each layer's cycles to `systolic.sw.perfmodel.predict_cycles`; this side checks the
report too. The outputs are checked against the golden model as in every core test.
"""

import itertools
import json

import numpy as np
import pytest
from systolic.hw.core import Core
from systolic.hw.isa import describe_pool
from systolic.hw.pool import pool_stages
from systolic.sim.runner import run_cocotb, selected_simulators
from systolic.sim.vectors import case_from_layers, conv_params, vector_file
from systolic.sw import arith, perfmodel
from test_core_rtl import CFG

# Maps for pooling: odd and even sizes, square and not; whether the windows reach the last
# row and column depends on the window and stride, so every combination below has some that
# do and some that do not.
POOL_MAPS = [(7, 8), (8, 7), (8, 8), (9, 9), (6, 5), (5, 4)]


def pool_layers():
    """The pooling sweep: ``(kind, k, stride, c, h, w)``, with 1 to 3 channel words."""
    for i, ((kind, k, stride), (h, w)) in enumerate(itertools.product(
            itertools.product(("max", "avg"), arith.POOL_KERNELS, arith.POOL_STRIDES),
            POOL_MAPS)):
        yield kind, k, stride, CFG.cols * (1 + i % 3) - 1, h, w
    # A tail the maps above miss with ``deep_pipeline``'s stages: the column window's last
    # word four words before the end of the input (windows of 2, stride 3, 7x7, two words).
    yield "max", 2, 3, 2 * CFG.cols - 1, 7, 7


def pool_cases(rng, cfg=CFG):
    cases = []
    for kind, k, stride, c, h, w in pool_layers():
        if kind == "avg" and not cfg.pool_avg:
            continue
        x = rng.integers(-128, 128, (c, h, w)).astype(np.int8)
        cases.append(case_from_layers(cfg, f"{kind}pool {k}/{stride} {c}x{h}x{w}", x,
                                      [{"kind": kind, "k": k, "stride": stride}],
                                      seed=len(cases)))
    return cases


def conv_cases(rng, cfg=CFG):
    cases = []
    for k, stride in itertools.product(range(1, 8), (1, 2)):
        pad = (k + stride) % min(k, 4)                  # 0 to 3, and never >= k
        cin = 1 + (3 * k + stride) % (3 * CFG.cols)     # 1 to 3 channel words
        cout = 1 + (5 * k + 3 * stride) % (3 * CFG.cols)     # 1 to 3 channel tiles
        h, w = 4 + (k + 1) // 2 + stride, 5 + k // 2
        x = rng.integers(-128, 128, (cin, h, w)).astype(np.int8)
        lay = {"kind": "conv", "params": conv_params(rng, cin, cout, k), "stride": stride,
               "pad": pad, "relu": bool(k % 2)}
        cases.append(case_from_layers(cfg, f"conv k{k} s{stride} p{pad} {cin}x{h}x{w}->{cout}",
                                      x, [lay], seed=len(cases)))
    # Fully connected: a flattened (C, H, W) input, then a 1x1 spatial one.
    x = rng.integers(-128, 128, (9, 3, 3)).astype(np.int8)
    fc1 = {"kind": "conv", "params": conv_params(rng, 9, 13, 3), "stride": 1, "pad": 0,
           "relu": True}
    fc2 = {"kind": "conv", "params": conv_params(rng, 13, 10, 1), "stride": 1, "pad": 0,
           "relu": False}
    cases.append(case_from_layers(cfg, "linear 81->13->10", x, [fc1, fc2], seed=len(cases)))
    return cases


# ``deep_pipeline`` adds stages to the pooling engine; without averaging, it makes the small
# engine's windows the averaging engine's (registered block RAM inputs, registered outputs).
VARIANTS = {"plain": {}, "deep": {"deep_pipeline": True},
            "deep-max-only": {"deep_pipeline": True, "pool_avg": False, "eltwise": False}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_pool_cases_cover_short_tails(variant):
    """The pooling sweep has maps whose windows stop short of the last row, the last column,
    both, and neither: every distinct pipeline tail the model knows occurs."""
    cfg = CFG.replace(**VARIANTS[variant])
    tails = {perfmodel.pool_tail(cfg, describe_pool(cfg, channels=c, h=h, w=w, kernel=k,
                                                   stride=stride))
             for kind, k, stride, c, h, w in pool_layers() if kind == "max" or cfg.pool_avg}
    stages = pool_stages(cfg)
    assert tails == set(range(stages[0], sum(stages) + 1))


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_cycles_exactly_as_predicted(tmp_path, variant):
    # ``deep_pipeline``: three more cycles a pooling layer (up to six without averaging: the
    # averaging engine's windows), each in the model's `pool_stages`.
    cfg = CFG.replace(**VARIANTS[variant])
    rng = np.random.default_rng(3)
    cases = conv_cases(rng, cfg) + pool_cases(rng, cfg)
    path, results = tmp_path / "vectors.json", tmp_path / "results.json"
    path.write_text(json.dumps(vector_file(cfg, cases)))
    run_cocotb(Core(cfg), name="core", test_module="test_core", sim=selected_simulators()[-1],
               build_key=cfg.as_dict(),
               extra_env={"SYSTOLIC_VECTORS": path, "SYSTOLIC_RESULTS": results}, timeout=900)
    report = json.loads(results.read_text())
    assert [r["name"] for r in report] == [c["name"] for c in cases]
    wrong = [(r["name"], r["layer_cycles"], r["predicted_cycles"]) for r in report
             if r["layer_cycles"] != r["predicted_cycles"]]
    assert not wrong, f"{len(wrong)} cases (measured, predicted): {wrong[:10]}"
