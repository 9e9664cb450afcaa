"""Test vectors for the core: layer sequences and their golden results, for cocotb and benches.

The case format is the one `sim/test_core.py` reads. Each case carries the cycles
`systolic.sw.perfmodel` predicts for each of its layers; `sim/test_core.py` holds the core's
``cycles`` counter to them, exactly.
"""

import numpy as np

from ..hw import layout
from ..hw.isa import Mem, describe_conv, describe_pool, load_layout, pack_descriptor, pack_params
from ..sw import arith, perfmodel

__all__ = ["case_from_layers", "conv_params", "vector_file"]


def vector_file(cfg, cases):
    """The JSON-able vector file for ``cases``."""
    return {"load_addr_bits": load_layout(cfg)["addr"].width, "cases": cases}


def conv_params(rng, cin, cout, k, extreme=False):
    """Random int8 weights, int32 bias and (M, s) for a conv layer; ``extreme``: all ±127."""
    if extreme:
        w = rng.choice(np.array([-127, 127], np.int8), (cout, cin, k, k))
    else:
        w = rng.integers(-127, 128, (cout, cin, k, k)).astype(np.int8)
    b = rng.integers(-20000, 20000, cout)
    m, s = arith.choose_multiplier(rng.uniform(0.0001, 0.02, cout))
    return w, b, m, s


def case_from_layers(cfg, name, x, layers, pauses=("none", "none"), seed=0, reset_after=None):
    """A `sim/test_core.py` case running ``layers`` on ``x`` (activations ping-pong in memory).

    ``layers`` are dicts: ``{"kind": "conv", "params": (w, b, M, s), "stride", "pad", "relu"}``
    or ``{"kind": "max" | "avg", "k", "stride"}``. The expected words come from the golden model,
    the expected cycles of each layer (``predicted_cycles``) from the performance model.
    """
    act = layout.pack_activations(cfg, x)
    loads = [(Mem.ACT.value, a, v) for a, v in enumerate(act)]
    weights, params, cmds, predicted = [], [], [], []
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
        predicted.append(perfmodel.predict_cycles(cfg, d))
    loads += [(Mem.WEIGHT.value, a, v) for a, v in enumerate(weights)]
    loads += [(Mem.PARAM.value, a, v) for a, v in enumerate(params)]
    return {
        "name": name, "loads": loads, "cmds": cmds, "predicted_cycles": predicted,
        "read_base": bases[len(layers) % 2], "expected": layout.pack_activations(cfg, y),
        "source": pauses[0], "sink": pauses[1], "seed": seed, "reset_after": reset_after,
    }
