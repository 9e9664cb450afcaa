"""``systolic report``: one self-contained HTML page of what a network does on the accelerator.

`write_report` reads what the other commands already produce — the ``simulate --json`` object
(`systolic.sw.simulate.SimulationReport.as_dict`), the `QNet`, a build report (``systolic
build --json``, or the ``report.json`` beside a bitstream) — and writes one HTML file with the
plots drawn by matplotlib as inline SVG: no script, no style sheet, font or image from
elsewhere, no address outside the page; it opens offline. Each section appears when its data
is there:

- the network: each layer with its output shape, MACs and the accelerator memory it uses;
- per layer: the measured cycles next to the performance model's (`systolic.sw.perfmodel`),
  and the PE utilization;
- the numeric profile: each layer's float output against the int8 golden model's (error in
  LSB of the layer's scale, RMS and largest, and cosine similarity), and where the weights and
  activations fall against the int8 range (as hls4ml's profiling draws them);
- accuracies (float, int8 golden, RTL) and the confusion matrix of the RTL's predictions;
- the build: resources against the device, fmax against the clock, the critical path;
- the board: images a second the link and the array allow, and the latency of one image.
"""

import argparse
import contextlib
import datetime
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np

from .errors import SystolicError

__all__ = ["ReportError", "add_parser", "board_rates", "dataset_float_images", "numeric_profile",
           "render_report", "write_report"]


class ReportError(SystolicError):
    """Input a report cannot be made from; the message names the file and what it must be."""


# Plots --------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")                   # no display: the figures only become SVG text
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "systolic",
                         "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _svg(fig):
    """The figure as an ``<svg>`` element for an HTML page: no XML prologue, no metadata and
    no namespace addresses (an HTML parser puts inline SVG in its namespace by itself)."""
    plt = _pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return f'<figure class="plot">{text}</figure>'


# Data --------------------------------------------------------------------------------------------

def _load_json(value, what):
    if value is None or isinstance(value, dict):
        return value
    path = Path(value)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{what} {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ReportError(f"{what} {str(path)!r} must be a JSON file ('systolic "
                          f"{'simulate' if what.startswith('sim') else 'build'} --json' "
                          "output); a network goes in with --qnet") from None


def _config(cfg, build, simulation):
    """The accelerator configuration the numbers belong to, when it can be known."""
    from ..hw.config import PRESETS, AcceleratorConfig

    if cfg is not None:
        return cfg
    built = None
    if build and isinstance(build.get("config"), dict):
        with contextlib.suppress(SystolicError, TypeError, ValueError, KeyError):
            built = AcceleratorConfig.from_dict(build["config"]).replace(target="generic")
    if simulation and isinstance(simulation.get("config"), dict):
        # The simulated configuration first: the memory a layer takes goes with its cycles.
        sc = simulation["config"]
        for c in [built, *PRESETS.values()]:
            if c is not None and (c.rows, c.cols) == (sc.get("rows"), sc.get("cols")):
                return c
    return built


def _network_rows(qnet, cfg):
    """Per layer of ``qnet``: kind, shapes, MACs, parameters, and with ``cfg`` the words of
    weight and activation memory it takes."""
    from .compiler import FitError, compile_network
    from .qnet import Conv, Flatten, Linear, Pool

    shapes = qnet.shapes()
    program, fit = None, None
    if cfg is not None:
        try:
            program = compile_network(qnet, cfg)
        except FitError as e:
            fit = str(e)
    # A convolution that pools on the way to memory is one hardware layer for two rows: its
    # weights and MACs on the convolution's, its output words on the pooling layer's.
    hw, pooled = {}, {}
    for j, lay in enumerate(program.layers if program else []):
        if lay.first is None:
            hw[lay.index] = (j, lay)
        else:
            hw[lay.first], pooled[lay.index] = (j, lay), lay
    rows, in_shape = [], tuple(qnet.input_shape)
    for i, layer in enumerate(qnet.layers):
        if isinstance(layer, Conv):
            co, ci, kh, kw = layer.w.shape
            what = f"conv {ci}\u2192{co} {kh}\u00d7{kw}" + (f" /{layer.stride}" if layer.stride > 1
                                                          else "") + (" + ReLU" if layer.relu
                                                                      else "")
        elif isinstance(layer, Linear):
            what = f"linear {layer.w.shape[1]}\u2192{layer.w.shape[0]}" + (
                " + ReLU" if layer.relu else "")
        elif isinstance(layer, Pool):
            what = f"{layer.kind}pool {layer.kernel}\u00d7{layer.kernel} /{layer.stride}"
        elif isinstance(layer, Flatten):
            what = "flatten"
        else:                                   # what the accelerator does not run (yet)
            what = getattr(layer, "KIND", type(layer).__name__.lower())
            what += {"add": f" (+ layer {getattr(layer, 'skip', '?')})",
                     "branch": f" (from layer {getattr(layer, 'src', '?')})"}.get(what, "")
        out = tuple(shapes[i])
        macs = int(np.prod(out)) * int(np.prod(layer.w.shape[1:])) \
            if isinstance(layer, Conv | Linear) else 0
        params = int(layer.w.size + 4 * layer.b.size) if isinstance(layer, Conv | Linear) else 0
        row = {"index": i, "what": what, "in": in_shape, "out": out, "macs": macs,
               "param_bytes": params, "weight_words": None, "act_words": None,
               "hw": not isinstance(layer, Flatten)}
        if i in hw:
            j, lay = hw[i]
            row["weight_words"] = program.w_words[j]
            row["act_words"] = None if lay.first == i else lay.out_words
            row["macs"] = lay.macs
        if i in pooled:
            row["act_words"] = pooled[i].out_words
        rows.append(row)
        in_shape = out
    return rows, program, fit


def _float_layers(model):
    """The float model's modules grouped as the `QNet`'s layers (a ReLU goes with the layer
    before it)."""
    groups = []
    for module in model:
        if type(module).__name__ == "ReLU" and groups:
            groups[-1].append(module)
        else:
            groups.append([module])
    return groups


def numeric_profile(qnet, images, float_images=None):
    """Each layer's float output against the int8 golden model's, on ``images``.

    Parameters
    ----------
    qnet : QNet
        With its float model (``qnet.float_model()``).
    images : numpy.ndarray
        int8 ``(N,) + input_shape``.
    float_images : numpy.ndarray, optional
        The same images in float (``p / p_max``); default ``images * qnet.input_scale``.

    Returns
    -------
    list of dict
        Per layer: ``scale`` (the real value of an LSB of its int8 output), ``rms_lsb`` and
        ``max_lsb`` (float output over ``scale`` against the int8 output), ``cosine``
        (cosine similarity of the float output and the int8 one times ``scale``),
        ``saturated`` and ``underflow`` (fractions of float outputs beyond 127 LSB and below
        half an LSB in magnitude), and for the plots ``activations`` (float outputs, a sample)
        and, for convolution and linear layers, ``weights`` (float) and ``w_scale``.
    """
    import torch

    from . import golden
    from .qnet import Conv, Flatten, Linear, Pool

    plain = (Conv, Linear, Pool, Flatten)
    other = next((i for i, layer in enumerate(qnet.layers) if not isinstance(layer, plain)),
                 None)
    if other is not None:
        raise ReportError(f"the numeric profile covers chains of convolution, pooling, flatten "
                          f"and linear layers, not layer {other} "
                          f"({getattr(qnet.layers[other], 'KIND', '?')})")
    model = qnet.float_model()
    groups = _float_layers(model)
    if len(groups) != len(qnet.layers):
        raise ReportError(f"the float model has {len(groups)} layers where the network has "
                          f"{len(qnet.layers)}; no numeric profile")
    images = np.asarray(images)
    gold = golden.run(qnet, images).outputs
    x = torch.as_tensor(np.asarray(images * qnet.input_scale if float_images is None
                                   else float_images, dtype=np.float32))
    scales, scale = [], qnet.input_scale
    for layer in qnet.layers:
        if isinstance(layer, Conv | Linear):
            scale = layer.out_scale
        scales.append(scale)
    rng = np.random.default_rng(0)
    rows = []
    with torch.no_grad():
        for i, (layer, group) in enumerate(zip(qnet.layers, groups, strict=True)):
            for module in group:
                x = module(x)
            f = x.double().numpy().reshape(len(images), -1)
            q = gold[i].reshape(len(images), -1).astype(np.float64)
            err = f / scales[i] - q
            qf = q * scales[i]
            norm = np.linalg.norm(f) * np.linalg.norm(qf)
            flat = f.ravel()
            sample = flat if flat.size <= 20000 else rng.choice(flat, 20000, replace=False)
            row = {"index": i, "scale": float(scales[i]),
                   "rms_lsb": float(np.sqrt(np.mean(err ** 2))),
                   "max_lsb": float(np.max(np.abs(err))),
                   "cosine": float(np.sum(f * qf) / norm) if norm > 0 else float("nan"),
                   "saturated": float(np.mean(np.abs(flat) / scales[i] > 127.5)),
                   "underflow": float(np.mean((np.abs(flat) / scales[i] < 0.5) & (flat != 0))),
                   "activations": sample}
            if isinstance(layer, Conv | Linear):
                row["weights"] = group[0].weight.double().numpy().ravel()
                row["w_scale"] = np.asarray(layer.w_scale, np.float64)
            rows.append(row)
    return rows


# Sections ----------------------------------------------------------------------------------------

def _e(text):
    return html.escape(str(text))


def _table(header, rows, *, cls="", text=(0, 1)):
    """An HTML table; in a ``num`` table the columns but ``text`` are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{"t" if k in text else "n"}">{c}</td>'
                                    for k, c in enumerate(row)) + "</tr>" for row in rows)
    head = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def _num(v, fmt="{:,}"):
    return "\u2014" if v is None else fmt.format(v)


def _a(rows):
    """The article before a spoken number: "an 8x8", "a 12x12"."""
    return "an" if str(rows)[0] == "8" or rows in (11, 18) else "a"


def _shape(s):
    return "\u00d7".join(map(str, s))


def _section(ident, title, body, note=None):
    note = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{ident}"><h2>{_e(title)}</h2>{note}{body}</section>'


def _network_section(qnet, cfg):
    plt = _pyplot()
    rows, program, fit = _network_rows(qnet, cfg)
    n = len(rows) + 1
    fig, ax = plt.subplots(figsize=(min(2.0 * n, 14), 2.4))
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, 1)
    ax.axis("off")
    boxes = [("input", _shape(qnet.input_shape), "", "#e8eef7")] + [
        (f"{r['index']}: {r['what']}".replace(" + ", "\n+ "), _shape(r["out"]),
         (f"{r['macs']:,} MACs\n" if r["macs"] else "")
         + (f"{r['weight_words']:,} weight words\n" if r["weight_words"] else "")
         + (f"{r['act_words']:,} act. words" if r["act_words"] else
            ("no hardware pass" if not r["hw"] else "")),
         "#fde9d9" if r["macs"] else ("#eeeeee" if not r["hw"] else "#e2f0d9"))
        for r in rows]
    for k, (name, shape, detail, color) in enumerate(boxes):
        ax.add_patch(plt.Rectangle((k - 0.42, 0.08), 0.84, 0.84, facecolor=color,
                                   edgecolor="#555555", linewidth=0.8))
        ax.text(k, 0.8, name, ha="center", va="center", fontsize=7.5, weight="bold")
        ax.text(k, 0.6, shape, ha="center", va="center", fontsize=8)
        ax.text(k, 0.33, detail, ha="center", va="center", fontsize=6.5, color="#333333")
        if k:
            ax.annotate("", xy=(k - 0.42, 0.5), xytext=(k - 0.58, 0.5),
                        arrowprops={"arrowstyle": "->", "color": "#555555"})
    svg = _svg(fig)
    table = _table(
        ["#", "layer", "input", "output", "MACs", "parameters (bytes)", "weight words",
         "activation words"],
        [[r["index"], _e(r["what"]), _shape(r["in"]), _shape(r["out"]), _num(r["macs"]),
          _num(r["param_bytes"]), _num(r["weight_words"]), _num(r["act_words"])]
         for r in rows], cls="num")
    total = sum(r["macs"] for r in rows)
    note = f"{len(rows)} layers, {total:,} MACs an image."
    if program is not None:
        c = program.cfg
        w_used = sum(hi - lo for lo, hi in program.weight_spans)
        note += (f" On the {c.rows}\u00d7{c.cols} array ({c.cols} int8 lanes a word): "
                 f"{w_used:,} of {c.weight_depth:,} weight words, "
                 f"{len(program.params):,} of {c.param_words:,} parameter words, "
                 f"{program.act_words:,} of {c.act_depth:,} activation words. A flatten "
                 "layer takes no pass of its own: the linear layer after it reads the map "
                 "as it lies in memory.")
    elif fit is not None:
        note += f" It does not fit the accelerator: {_e(fit)}"
    return _section("network", "The network", svg + table, note)


def _performance_section(sim):
    layers = sim.get("layers") or []
    summary = (f"{sim['cycles_per_image']:,.0f} cycles an image, {sim['macs_per_image']:,} "
               f"MACs: {sim['utilization']:.1%} of the {sim['config']['rows']}\u00d7"
               f"{sim['config']['cols']} array's multiplier-cycles did useful work.")
    if not layers:
        return _section("performance", "Cycles and utilization", "",
                        summary + " The per-layer counters were not read in this run.")
    plt = _pyplot()
    names = [re.sub(r"^layer (\d+) \((.*)\)$", r"\1: \2", row["name"]) for row in layers]
    x = np.arange(len(layers))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    ax.bar(x - 0.2, [row["cycles"] for row in layers], 0.4, label="measured (RTL)",
           color="#4472c4")
    ax.bar(x + 0.2, [row["predicted_cycles"] for row in layers], 0.4,
           label="performance model", color="#ed7d31")
    ax.set_xticks(x, names, fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("cycles")
    ax.legend(frameon=False)
    ax.set_title("cycles per layer")
    util = [100 * row["utilization"] for row in layers]
    ax2.bar(x, util, 0.6, color="#70ad47")
    ax2.set_xticks(x, names, fontsize=7, rotation=20, ha="right")
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("% of PE-cycles doing a MAC")
    ax2.set_title("utilization")
    fig.tight_layout()
    rows = []
    for row in layers:
        err = (row["predicted_cycles"] - row["cycles"]) / row["cycles"] if row["cycles"] else 0
        rows.append([_e(row["name"]), _num(row["cycles"], "{:,.0f}"),
                     _num(row["predicted_cycles"]), f"{err:+.2%}", _num(row["macs"]),
                     f"{row['utilization']:.1%}"])
    table = _table(["layer", "cycles (RTL)", "model", "model error", "MACs", "utilization"],
                   rows, cls="num", text=(0,))
    return _section("performance", "Cycles and utilization", _svg(fig) + table, summary)


def _log2_abs(values):
    v = np.abs(np.asarray(values, np.float64))
    v = v[v > 0]
    return np.log2(v) if v.size else np.array([np.nan])


def _profile_section(qnet, profile, net_rows):
    plt = _pyplot()
    names = [f"{r['index']}: {r['what']}" for r in net_rows]
    rows = [[_e(names[p["index"]]), f"{p['scale']:.3g}", f"{p['rms_lsb']:.3f}",
             f"{p['max_lsb']:.2f}", f"{p['cosine']:.5f}", f"{p['saturated']:.2%}",
             f"{p['underflow']:.2%}"] for p in profile]
    table = _table(["layer", "LSB (real)", "error RMS (LSB)", "error max (LSB)",
                    "cosine similarity", "saturated", "below \u00bd LSB"], rows, cls="num",
                   text=(0,))

    # hls4ml-style: where log2 |value| falls, each layer against its int8 range (grey band:
    # one LSB up to 127 LSB; below it a value rounds to zero, above it saturates).
    weighted = [p for p in profile if "weights" in p]
    fig, (aw, aa) = plt.subplots(1, 2, figsize=(11, 0.45 * len(profile) + 1.6))
    for ax, items, key, title in ((aw, weighted, "weights", "weights"),
                                  (aa, profile, "activations", "activations (float model)")):
        data = [_log2_abs(p[key]) for p in items]
        pos = np.arange(len(items))[::-1]
        for y, p in zip(pos, items, strict=True):
            lo, hi = ((np.min(p["w_scale"]), 127 * np.max(p["w_scale"])) if key == "weights"
                      else (p["scale"], 127 * p["scale"]))
            ax.add_patch(plt.Rectangle((math.log2(lo), y - 0.4), math.log2(hi / lo), 0.8,
                                       color="#d9d9d9", zorder=0))
        ax.boxplot(data, positions=pos, orientation="horizontal", widths=0.5, whis=(0, 100),
                   showfliers=False, medianprops={"color": "#c00000"})
        ax.set_yticks(pos, [names[p["index"]] for p in items], fontsize=7)
        ax.set_xlabel("log2 |value|  (grey: the int8 range, 1 to 127 LSB)")
        ax.set_title(title)
    fig.tight_layout()

    # The error itself: int8 against float, per layer.
    fig2, ax = plt.subplots(figsize=(11, 2.6))
    x = np.arange(len(profile))
    ax.bar(x - 0.2, [p["rms_lsb"] for p in profile], 0.4, label="RMS", color="#4472c4")
    ax.bar(x + 0.2, [p["max_lsb"] for p in profile], 0.4, label="max", color="#a5a5a5")
    ax.set_xticks(x, [names[p["index"]] for p in profile], fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("|float / LSB \u2212 int8|  (LSB)")
    ax.set_title("int8 golden model against the float model, per layer output")
    ax.legend(frameon=False)
    fig2.tight_layout()
    n = len(profile[0]["activations"]) if profile else 0
    note = ("Each layer's float output (the float model the network was quantized from) "
            "against the int8 golden model's, in LSB of the layer's output scale: rounding "
            "alone gives up to \u00bd LSB; errors grow through the layers as rounded inputs "
            f"feed them. Over the same images as the accuracies below ({n:,} values sampled "
            "per layer for the distributions).")
    return _section("profile", "Numeric profile: float against int8",
                    _svg(fig2) + table + _svg(fig), note)


def _accuracy_section(sim, float_accuracy, predictions, labels, classes):
    plt = _pyplot()
    accs = [("float", float_accuracy), ("int8 golden", sim.get("golden_accuracy")),
            ("RTL", sim.get("rtl_accuracy"))]
    accs = [(k, v) for k, v in accs if v is not None]
    body = ""
    rows = [[k, f"{v:.2%}"] for k, v in accs]
    rows.append(["images", f"{sim['images']:,}"])
    rows.append(["images whose logits differ from the golden model",
                 f"{sim['mismatches']} ({sim.get('logit_mismatches', 0)} logits)"])
    body += _table(["", ""], rows, cls="num", text=(0,))
    if predictions is not None and labels is not None:
        k = classes or int(max(np.max(predictions), np.max(labels)) + 1)
        m = np.zeros((k, k), np.int64)
        np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
        fig, ax = plt.subplots(figsize=(0.42 * k + 1.6, 0.42 * k + 1.2))
        # Vector cells (pcolormesh), not imshow's embedded raster image.
        ax.pcolormesh(np.arange(k + 1) - 0.5, np.arange(k + 1) - 0.5, m, cmap="Blues")
        ax.set_aspect("equal")
        ax.invert_yaxis()
        for (t, p), v in np.ndenumerate(m):
            if v:
                ax.text(p, t, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > m.max() / 2 else "black")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xlabel("predicted by the RTL")
        ax.set_ylabel("true class")
        ax.set_title("confusion matrix (RTL)")
        body += _svg(fig)
    return _section("accuracy", "Accuracy", body,
                    "Float: the float model; int8 golden: the integer model the hardware must "
                    "match; RTL: the accelerator's Verilog in simulation.")


_RESOURCE_NAMES = {"luts": "logic (LUT4 / LC)", "ffs": "flip-flops", "dsps": "DSP blocks",
                   "brams": "block RAM", "sprams": "SPRAM"}


def _build_section(build):
    plt = _pyplot()
    totals = build.get("totals") or {}
    res = [(k, build.get(k, 0), totals[k]) for k in _RESOURCE_NAMES if totals.get(k)]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 0.4 * len(res) + 1.6),
                                  gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(res))[::-1]
    pct = [100 * u / t for _, u, t in res]
    ax.barh(y, [100] * len(res), color="#eeeeee")
    ax.barh(y, pct, color=["#c00000" if p > 90 else "#4472c4" for p in pct])
    for yy, (_, u, t), p in zip(y, res, pct, strict=True):
        ax.text(min(p, 100) + 1, yy, f"{u:,} / {t:,} ({p:.0f}%)", va="center", fontsize=7)
    ax.set_yticks(y, [_RESOURCE_NAMES[k] for k, _, _ in res])
    ax.set_xlim(0, 130)
    ax.set_xlabel("% of the device")
    ax.set_title(f"resources ({build.get('board', '?')})")
    clocks = build.get("clocks") or {}
    names = list(clocks) or ["clock"]
    got = [clocks[c]["achieved"] for c in clocks] or [build.get("fmax_mhz") or 0]
    want = [clocks[c]["constraint"] for c in clocks] or [build.get("target_mhz") or 0]
    x = np.arange(len(names))
    ax2.bar(x, got, 0.5, color=["#70ad47" if g >= w else "#c00000"
                                for g, w in zip(got, want, strict=True)], label="fmax")
    for xx, w in zip(x, want, strict=True):
        ax2.hlines(w, xx - 0.35, xx + 0.35, color="black", linestyle="--",
                   label="clock" if xx == 0 else None)
    ax2.set_xticks(x, [c if len(c) < 20 else c[:18] + "\u2026" for c in names], fontsize=7)
    ax2.set_ylabel("MHz")
    ax2.set_ylim(0, 1.3 * max(got + want + [1]))
    ax2.set_title("fmax against the clock")
    ax2.legend(frameon=False, loc="upper center", ncol=2)
    fig.tight_layout()
    rows = [["board", _e(build.get("board"))],
            ["array", f"{build['config']['rows']}\u00d7{build['config']['cols']}"
             if isinstance(build.get("config"), dict) else "\u2014"],
            ["clock", f"{build.get('clock_mhz', 0):g} MHz"],
            ["fmax", _num(build.get("fmax_mhz"), "{:.1f} MHz") + (
                " (timing met)" if build.get("timing_met") else " (timing NOT met)")],
            ["UART", f"{build.get('baud', 0):,} Bd"],
            ["peak", f"{build.get('peak_gops', 0):.2f} GOPS"]]
    cp = build.get("critical_path") or {}
    if cp:
        rows += [["critical path", f"{_e(cp.get('from'))} \u2192 {_e(cp.get('to'))}"],
                 ["its delay", f"{cp.get('delay_ns', 0):.2f} ns: {cp.get('logic_ns', 0):.2f} "
                  f"ns logic ({cp.get('logic_levels', 0)} levels), "
                  f"{cp.get('routing_ns', 0):.2f} ns routing"],
                 ["from / to cells", f"{_e(cp.get('from_cell'))} / {_e(cp.get('to_cell'))}"]]
    return _section("build", "The build", _svg(fig) + _table(["", ""], rows, cls="kv"),
                    f"From the build report of {_e(build.get('bitstream', 'the bitstream'))}.")


def board_rates(cycles_per_image, bytes_per_image, clock_mhz, baud):
    """What the link and the array allow: images a second each, both one after the other (as
    the driver runs an image), and the latency of one image in seconds (8N1: ten bits a
    byte)."""
    compute = clock_mhz * 1e6 / cycles_per_image
    line = baud / 10 / bytes_per_image
    return {"compute_per_second": compute, "line_per_second": line,
            "serial_per_second": 1 / (1 / compute + 1 / line),
            "latency_seconds": 1 / compute + 1 / line}


def _board_section(sim, build, board):
    from ..hw.boards import get_board

    b = get_board(board)
    clock = (build or {}).get("clock_mhz") or b.clock_mhz
    baud = (build or {}).get("baud") or b.baud
    bytes_per_image = (sim.get("link") or {}).get("bytes_per_image")
    if not bytes_per_image:
        return ""
    r = board_rates(sim["cycles_per_image"], bytes_per_image, clock, baud)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.9))
    labels = ["the array alone", "the line alone", "line, then array"]
    vals = [r["compute_per_second"], r["line_per_second"], r["serial_per_second"]]
    ax.barh(labels[::-1], vals[::-1], color=["#70ad47", "#ed7d31", "#4472c4"][::-1])
    for y, v in enumerate(vals[::-1]):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("images / second")
    ax.set_title(f"{b.name}: {clock:g} MHz, {baud:,} Bd")
    fig.tight_layout()
    bound = "the link" if r["line_per_second"] < r["compute_per_second"] else "the array"
    rows = [["clock, UART", f"{clock:g} MHz, {baud:,} Bd"],
            ["cycles an image", f"{sim['cycles_per_image']:,.0f} "
             f"({1e6 * sim['cycles_per_image'] / (clock * 1e6):,.1f} \u00b5s)"],
            ["bytes an image on the wire", f"{bytes_per_image:,.0f} (both ways)"],
            ["images/s the array allows", f"{r['compute_per_second']:,.0f}"],
            ["images/s the line allows", f"{r['line_per_second']:,.0f}"],
            ["images/s, line then array", f"{r['serial_per_second']:,.0f}"],
            ["latency of one image", f"{1e3 * r['latency_seconds']:.2f} ms"]]
    same = sim.get("config") == {"rows": get_board(b).config().rows,
                                 "cols": get_board(b).config().cols,
                                 "pes": get_board(b).config().pes}
    note = (f"{bound.capitalize()} bounds the images a second. A real USB adapter adds its "
            "latency to each reply on top.")
    built = (build or {}).get("config") or {}
    if built and (built.get("rows"), built.get("cols")) != (sim["config"]["rows"],
                                                            sim["config"]["cols"]):
        note = (f'<span class="bad">The cycles were simulated on {_a(sim["config"]["rows"])} '
                f'{sim["config"]["rows"]}\u00d7{sim["config"]["cols"]} array, but the build is '
                f'{_a(built["rows"])} {built["rows"]}\u00d7{built["cols"]} one: simulate its '
                'configuration for its rates.</span> ' + note)
    elif not same and not build:
        note += (f" The cycles are those simulated on {_a(sim['config']['rows'])} "
                 f"{sim['config']['rows']}\u00d7"
                 f"{sim['config']['cols']} array, not the {b.name}'s default.")
    return _section("board", f"On the board: {b.name}", _svg(fig) + _table(["", ""], rows,
                                                                              cls="kv"), note)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}table.num td.n{text-align:right;font-variant-numeric:tabular-nums}
table.kv td:first-child{font-weight:600;background:#fafafa}
figure.plot{margin:.6em 0;overflow-x:auto}figure.plot svg{max-width:100%;height:auto}
.note{color:#555;max-width:70em}.summary{font-size:1.05em}
nav a{margin-right:1em}
.bad{color:#c00000;font-weight:600}.good{color:#2e7d32;font-weight:600}
"""


def render_report(*, simulation=None, qnet=None, build=None, board=None, cfg=None,
                  images=None, float_images=None, labels=None, float_accuracy=None,
                  title=None):
    """The report's HTML text; see `write_report` for the arguments."""
    from .qnet import QNet

    if hasattr(simulation, "as_dict"):              # a SimulationReport
        simulation = simulation.as_dict()
    simulation = _load_json(simulation, "simulation report")
    build = _load_json(build, "build report")
    if isinstance(qnet, str | Path):
        qnet = QNet.load(qnet)
    if simulation is None and qnet is None and build is None:
        raise ReportError("a report needs a simulation report (simulate --json), a .qnet or "
                          "a build report (build --json)")
    if simulation is not None and "layers" not in simulation:
        raise ReportError("the simulation report must be the JSON object 'systolic simulate "
                          "--json' prints, not one without its 'layers'")
    cfg = _config(cfg, build, simulation)
    board = board or (build or {}).get("board")
    sections, notes = [], []
    net_rows = None
    if qnet is not None:
        sections.append(_network_section(qnet, cfg))
        net_rows = _network_rows(qnet, None)[0]
    if simulation is not None:
        sections.append(_performance_section(simulation))
    if qnet is not None and images is not None:
        try:
            profile = numeric_profile(qnet, images, float_images)
        except SystolicError as e:
            notes.append(f"No numeric profile: {_e(e)}")
        else:
            sections.append(_profile_section(qnet, profile, net_rows))
            if float_accuracy is None and labels is not None and float_images is not None:
                pred = _float_predictions(qnet, float_images)
                float_accuracy = float(np.mean(pred == np.asarray(labels)))
    if simulation is not None:
        predictions = simulation.get("predictions")
        if simulation.get("labels") is not None:
            labels = simulation["labels"]
        sections.append(_accuracy_section(
            simulation, float_accuracy, predictions,
            None if labels is None or predictions is None else labels[:len(predictions)],
            getattr(qnet, "layers", [None])[-1].w.shape[0] if qnet is not None else None))
    if build is not None:
        sections.append(_build_section(build))
    if simulation is not None and board is not None:
        sections.append(_board_section(simulation, build, board))
    sections = [s for s in sections if s]

    head = title or "systolic report" + (f": {qnet.arch} on {qnet.dataset}" if qnet else "")
    summary = []
    if simulation is not None:
        ok = simulation["mismatches"] == 0
        summary.append(
            f'<span class="{"good" if ok else "bad"}">{simulation["images"]} images on '
            f'{_e(simulation["sim"])}, {simulation["config"]["rows"]}\u00d7'
            f'{simulation["config"]["cols"]} array: {simulation["mismatches"]} differ from '
            "the golden model</span>")
    if build is not None:
        summary.append(f"{_e(build.get('board'))} build: fmax "
                       f"{_num(build.get('fmax_mhz'), '{:.1f}')} MHz for "
                       f"{build.get('clock_mhz', 0):g} MHz")
    ids = re.findall(r'<section id="(\w+)"><h2>([^<]*)</h2>', "".join(sections))
    nav = " ".join(f'<a href="#{i}">{t}</a>' for i, t in ids)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(head)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(head)}</h1><p class=\"note\">written by systolic report, {when}</p>"
            + "".join(f'<p class="summary">{s}</p>' for s in summary)
            + f"<nav>{nav}</nav>" + "".join(f'<p class="note">{n}</p>' for n in notes)
            + "".join(sections) + "</body></html>\n")


def _float_predictions(qnet, float_images):
    import torch

    model = qnet.float_model()
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(float_images, np.float32)))
    return out.argmax(dim=1).numpy()


def dataset_float_images(qnet, dataset, data_dir, n):
    """The first ``n`` test images of the network's data set in float (``p / p_max``), as its
    float model takes them (`systolic.sw.simulate.dataset_images` gives them in int8)."""
    from . import data

    return data.load(dataset or qnet.dataset, data_dir).test.x[:n]


def write_report(path, *, simulation=None, qnet=None, build=None, board=None, cfg=None,
                 images=None, float_images=None, labels=None, float_accuracy=None,
                 title=None):
    """Write the HTML report to ``path``; returns ``path`` as a `pathlib.Path`.

    Parameters
    ----------
    path : path-like
    simulation : dict, SimulationReport or path, optional
        What ``systolic simulate --json`` prints (`SimulationReport.as_dict`), or its file.
    qnet : QNet or path, optional
        The network: its diagram, and with ``images`` its numeric profile.
    build : dict or path, optional
        A build report (``systolic build --json``, or ``report.json`` beside a bitstream).
    board : str, optional
        A board of `systolic.hw.boards.BOARDS` for the images-a-second section (default: the
        build report's).
    cfg : AcceleratorConfig, optional
        The configuration simulated (default: the build report's, else the preset of the
        simulated array size): for the memory each layer takes.
    images : numpy.ndarray, optional
        int8 images for the numeric profile (the simulated ones, say).
    float_images : numpy.ndarray, optional
        The same images in float, for the float model (default: ``images`` times the input
        scale).
    labels : numpy.ndarray, optional
        True classes of ``images``, when ``simulation`` does not hold them.
    float_accuracy : float, optional
        The float model's accuracy on the simulated images (default: computed from
        ``qnet``'s float model when ``float_images`` and ``labels`` are given).
    title : str, optional

    Raises
    ------
    ReportError
        When there is nothing to report, or an input is not what it must be.
    """
    text = render_report(simulation=simulation, qnet=qnet, build=build, board=board, cfg=cfg,
                         images=images, float_images=float_images, labels=labels,
                         float_accuracy=float_accuracy, title=title)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise ReportError(f"Cannot write the report {str(path)!r}: {e.strerror}") from None
    return path


def _run(args):
    from ..hw.boards import BOARDS
    from .qnet import QNet

    if args.simulation is None and args.qnet is None and args.build is None:
        raise ReportError("give a simulation report (simulate --json > sim.json), --qnet "
                          "FILE.qnet or --build report.json")
    if args.board is not None and args.board not in BOARDS:
        raise ReportError(f"--board must be one of {', '.join(BOARDS)}, not {args.board!r}")
    simulation = _load_json(args.simulation, "simulation report")
    qnet = QNet.load(args.qnet) if args.qnet else None
    images = float_images = labels = None
    if qnet is not None and not args.no_profile:
        from .simulate import dataset_images

        n = args.images or (simulation or {}).get("images") or 200
        images, labels = dataset_images(qnet, args.dataset, args.data_dir, n)
        float_images = dataset_float_images(qnet, args.dataset, args.data_dir, n)
    cfg = None
    if args.preset:
        from ..hw.config import preset

        cfg = preset(args.preset)
    path = write_report(args.output, simulation=simulation, qnet=qnet, build=args.build,
                        board=args.board, cfg=cfg, images=images, float_images=float_images,
                        labels=labels)
    print(f"wrote {path}")


def add_parser(subparsers):
    """Register ``systolic report``."""
    from ..hw.boards import BOARDS
    from ..hw.config import preset_help

    p = subparsers.add_parser(
        "report", help="one self-contained HTML page of a network on the accelerator",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write one HTML file (plots inline as SVG; no network access needed to "
                    "open it) from what the other commands produce: the network as a "
                    "diagram with each layer's shapes, MACs and memory (--qnet); cycles per "
                    "layer against the performance model and utilization, accuracies and the "
                    "confusion matrix of the RTL's predictions (a 'simulate --json' output); "
                    "each layer's float against int8 error and its weights and activations "
                    "against the int8 range (--qnet, on the data set's test images); "
                    "resources, fmax and the critical path (--build, a 'build --json' output "
                    "or the report.json beside a bitstream); and what a board's link and "
                    "array allow (--board, or the build's board).",
        epilog="examples:\n"
               "  systolic simulate model.qnet --json > sim.json\n"
               "  systolic report sim.json --qnet model.qnet -o report.html\n"
               "  systolic report sim.json --qnet model.qnet --build build/ulx3s-85f/report.json\n"
               "  systolic report --build build/icebreaker/report.json -o build.html")
    p.add_argument("simulation", nargs="?", metavar="SIM.json",
                   help="the output of 'systolic simulate --json'")
    p.add_argument("--qnet", metavar="FILE.qnet", help="the network that was simulated")
    p.add_argument("--build", metavar="REPORT.json",
                   help="a build report ('systolic build --json', or report.json beside the "
                        "bitstream)")
    p.add_argument("--board", metavar="B",
                   help=f"images a second on this board ({', '.join(BOARDS)}; default: the "
                        "build report's)")
    p.add_argument("--preset", metavar="P",
                   help=f"the configuration simulated, for the memory each layer takes: "
                        f"{preset_help()} (default: the build's, else the preset of the "
                        "simulated array size)")
    p.add_argument("--images", type=int, metavar="N",
                   help="test images for the numeric profile (default: as many as were "
                        "simulated, else 200)")
    p.add_argument("--no-profile", action="store_true",
                   help="leave out the numeric profile (it needs the data set)")
    p.add_argument("--dataset", choices=("digits", "mnist"),
                   help="data set (default: the one the network was trained on)")
    p.add_argument("--data-dir", metavar="DIR", help="directory of MNIST IDX files")
    p.add_argument("-o", "--output", default="report.html", metavar="FILE.html",
                   help="where the report goes (default: ./report.html)")
    p.set_defaults(func=_run)
