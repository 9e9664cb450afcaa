"""The tables of ``docs/protocol.md``, generated from the definitions the gateware is built from.

Type codes, error codes, memories, operations, the IDENTITY reply and the layer descriptor are
defined once, in `systolic.hw.isa`; the document's tables are written from them, between
markers, so they cannot drift::

    python -m systolic.sw.protocol_doc            # rewrite the tables in docs/protocol.md
    python -m systolic.sw.protocol_doc --check    # exit 1 if they are stale

A name's meaning comes from its ``#:`` comment in `systolic.hw.isa`, or for requests, replies
and errors from the longer descriptions below; a request, reply or error without one is an
error here, so a new one cannot go undocumented.
"""

import argparse
import inspect
import re
import sys
from pathlib import Path

from ..hw import isa
from ..hw.config import PRESETS, AcceleratorConfig
from ..hw.isa import IDENTIFY_FIELDS, MAX_PAYLOAD, Error, Mem, Op, Reply, Request
from .errors import SystolicError

__all__ = ["DOC", "check", "descriptor_fields", "render", "tables"]

#: The document the tables live in.
DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

_BEGIN = "<!-- generated: {} (python -m systolic.sw.protocol_doc) -->"
_END = "<!-- end generated: {} -->"

_REQUESTS = {
    "WRITE": ("`target` (u8: `mem` in bits 0-3, `lanes` in bits 4-7), `addr` (u16), "
              "`count` (u16), then `count` words of `mem`", "ACK"),
    "READ": ("`addr` (u16), `count` (u16); `count × word_bytes` at most `max_payload`",
             "DATA: `count` activation words, `word_bytes` each"),
    "RUN": ("`start` (u8), `count` (u8)", "DONE: the run's total cycles (u32)"),
    "STATUS": ("(none)", "STATUS: last error (u8), program length (u8), cycles of the last "
                         "run (u32)"),
    "STATS": ("`start` (u8), `count` (u8); `start + count` at most the program length",
              "DATA: `count` × u32, each program entry's cycles in its last run"),
    "IDENTIFY": ("(none)", "IDENTITY: the protocol version and the configuration (below)"),
}
_REPLIES = {
    "ACK": "(empty)",
    "DATA": "READ: whole activation words, lowest address first; STATS: u32 counters",
    "DONE": "total cycles of the run (u32)",
    "STATUS": "last error (u8, sticky: see below), program length (u8), cycles of the last "
              "run (u32)",
    "IDENTITY": "the fields of the IDENTITY table, in order",
    "ERROR": "error code (u8), the request's type (u8; 0 if the frame broke off before it)",
}
_ERRORS = {
    "NONE": "(STATUS only) no error since reset",
    "BAD_CRC": "the frame check failed",
    "UNKNOWN_REQUEST": "the type is not one of the requests above",
    "BAD_LENGTH": "the length is wrong for the request (a WRITE whose words do not fill it, "
                  "a `count` of 0, a READ whose reply would pass `max_payload`), or above "
                  f"{MAX_PAYLOAD} (then the rest of the frame is swallowed until the line is "
                  "quiet)",
    "TRUNCATED": "no byte arrived for the frame timeout in the middle of a frame",
    "BAD_ADDRESS": "the access runs past the end of a memory, or RUN or STATS past the "
                   "program length",
    "BAD_MEMORY": "WRITE names no memory, or packs words (`lanes`) it cannot",
    "BAD_DESCRIPTOR": "RUN met a program entry whose operation the accelerator cannot execute "
                      "(one whose bit is clear in IDENTITY's `ops`). The entries before it "
                      "**ran and wrote memory**; the cycles so far are in STATUS",
    "LINE_FAULT": "the serial line broke the frame: a framing error (a character whose stop "
                  "bit read low) or a break (the line held low for longer than a character) "
                  "after its sync byte. The rest of the frame is swallowed until the line is "
                  "quiet, then this is the reply",
}
_MEMS = {
    "ACT": "`cols` int8 lanes, lane 0 in the low byte",
    "WEIGHT": "`cols` int8 lanes, lane 0 in the low byte",
    # (A table cell: its pipes escaped.)
    "PARAM": "`rq_lanes` lanes of `bias \\| M << acc_bits \\| s << (acc_bits + m_bits)`",
    "PROGRAM": "a layer descriptor (below)",
}
_FIELDS = {
    "op": "operation (see Operations)",
    "relu": "1: clamp the output at 0",
    "in_base": "first word of the input",
    "out_base": "first word of the output",
    "w_base": "first weight word",
    "p_base": "first parameter word",
    "in_h": "input height", "in_w": "input width",
    "out_h": "output height", "out_w": "output width",
    "kh": "kernel height", "kw": "kernel width",
    "stride": "stride (both directions)",
    "pad": "zero padding on each side",
    "cin_words": "`CW`: words per input pixel, `ceil(cin / cols)`",
    "cout_tiles": "words per output pixel, `ceil(cout / cols)`",
    "batch": "images run, one after the other in memory",
    "origin": "`in_base - (pad * in_w + pad) * CW`: where input pixel (-pad, -pad) would be",
    "x_step": "`stride * CW`: to the next output pixel's window in a row",
    "y_step": "`(stride * in_w - (out_w - 1) * stride) * CW`: from a row's last window to the "
              "next row's first",
    "tap_row_step": "`(in_w - kw) * CW`: from the last tap of a kernel row to the next row's "
                    "first, minus 1",
    "w_tile_words": "`kh * kw * CW * cols`: weight words of one output channel tile",
    "in_img_step": "`in_h * in_w * CW`: words from one image's input to the next's",
    "dense": "(only with IDENTITY's `dense_conv`) 1: a dense one-channel convolution, whole "
             "kernel rows packed into each reduction word (see below)",
    "dkh": "(only with `dense_conv`) a dense convolution's kernel height",
    "dkw": "(only with `dense_conv`) a dense convolution's kernel width",
    "dcin": "(only with `dense_conv`) a dense convolution's input channels",
    "pool": "(only with IDENTITY's `fused_pool`) 1: a convolution's output max-pooled 2×2 "
            "with stride 2 on the way to memory (see below)",
    "pairs": "(only with IDENTITY's `fused_pool`) 1: a dense, pooled convolution computing its "
             "output pixels in horizontal pairs (see below)",
    "halves": "(only with IDENTITY's `fused_pool`) 1: each channel tile of a paired convolution "
              "writes half of each output word, tile `t` half `t % 2` of word `t // 2` (see "
              "below)",
    "vpairs": "(only with IDENTITY's `fused_pool`) 1: a dense, pooled convolution computing "
              "its output pixels in vertical pairs (see below)",
    "fc_rows": "(only with IDENTITY's `fc_rows`) 1: a fully connected layer of one image, run "
               "row by row, each row of the array a channel tile from its own weight bank "
               "(see below)",
}
#: The widths a descriptor field may have, in terms of IDENTITY's fields.
WIDTHS = {
    "act_addr_bits": ("ceil(log2(act_depth))", lambda c: c.act_addr_bits),
    "weight_addr_bits": ("ceil(log2(weight_depth))", lambda c: c.weight_addr_bits),
    "param_addr_bits": ("ceil(log2(param_words))", lambda c: c.param_addr_bits),
    "dim_bits": ("bits of max_dim (its bit length)", lambda c: c.dim_bits),
    "kernel_bits": ("bits of max_kernel (its bit length)", lambda c: c.kernel_bits),
    "cols_bits": ("bits of cols (its bit length)", lambda c: c.cols.bit_length()),
}
# Configurations a width expression must hold for (all the presets, and knobs turned apart;
# one with the knob no preset has on, fc_rows).
_PROBES = [*PRESETS.values(), PRESETS["wide"].replace(fc_rows=4),
           AcceleratorConfig(act_depth=1 << 20, weight_depth=16,
                                                param_depth=1 << 12, max_dim=8, max_kernel=15),
           AcceleratorConfig(rows=2, cols=4, act_depth=64, weight_depth=1 << 18, param_depth=16,
                             max_dim=4095, max_kernel=1, requant_lanes=2)]


def _comments(enum_cls):
    """``{member: text}`` of the ``#:`` comments beside an enum's members in its source."""
    out = {}
    for line in inspect.getsource(enum_cls).splitlines():
        m = re.match(r"\s+(\w+)\s*=\s*\S+\s*#:\s*(.*)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _described(enum_cls, texts):
    missing = [e.name for e in enum_cls if e.name not in texts]
    if missing:
        raise SystolicError(f"{enum_cls.__name__} {', '.join(missing)} must be described in "
                            f"systolic.sw.protocol_doc before the document is generated")
    return texts


def _table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _width(name, shape_of):
    """The expression (a string) that gives field ``name``'s width in every probe."""
    probes = [cfg for cfg in _PROBES if name in shape_of(cfg)]   # (dense fields: some only)
    if not probes:
        raise SystolicError(f"descriptor field {name} is in no configuration of "
                            "systolic.sw.protocol_doc._PROBES: add one that has it")
    widths = [shape_of(cfg)[name].width for cfg in probes]
    if len(set(widths)) == 1:
        return str(widths[0])
    for base, (_, f) in WIDTHS.items():
        for k in range(-2, 5):
            if all(f(cfg) + k == w for cfg, w in zip(probes, widths, strict=True)):
                return base if k == 0 else f"{base} {'+' if k > 0 else '-'} {abs(k)}"
    return "see `layer_layout`"


def descriptor_fields():
    """``[(name, width expression, signed, offset and width in the default preset)]`` in
    order, from `systolic.hw.isa.layer_layout`: the default preset's fields and those of
    knobs it has off (``fc_rows``, the last), at the offsets they would have in it."""
    default = isa.layer_layout(PRESETS["default"].replace(fc_rows=2))
    out = []
    for name, field in default:
        signed = field.shape.signed if hasattr(field.shape, "signed") else False
        out.append((name, _width(name, lambda c: dict(isa.layer_layout(c))), signed,
                    field.offset, field.width))
    return out


def tables():
    """``{name: markdown}``: every generated block of the document."""
    req = _described(Request, _REQUESTS)
    rep = _described(Reply, _REPLIES)
    err = _described(Error, _ERRORS)
    mems = _described(Mem, _MEMS)
    out = {}
    out["requests"] = _table(
        ["type", "name", "payload", "reply"],
        [(f"0x{r.value:02X}", r.name, req[r.name][0], req[r.name][1]) for r in Request])
    out["replies"] = _table(["type", "name", "payload"],
                            [(f"0x{r.value:02X}", r.name, rep[r.name]) for r in Reply])
    out["errors"] = _table(["code", "name", "when"],
                           [(e.value, e.name, err[e.name]) for e in Error])
    out["memories"] = _table(
        ["mem", "name", "what", "a word"],
        [(m.value, m.name, _comments(Mem).get(m.name, ""), mems[m.name]) for m in Mem])
    ops = _comments(Op)
    out["ops"] = _table(["op", "name", "what"], [(o.value, o.name, ops.get(o.name, ""))
                                                  for o in Op])
    rows, at = [], 0
    for f in IDENTIFY_FIELDS:
        rows.append((at, f.size, f"`{f.name}`", f.doc))
        at += f.size
    ident = _table(["offset", "bytes", "field", "meaning"], rows)
    example = [f"    {name:8} {isa.identify_payload(c, _ops(c)).hex(' ')}"
               for name, c in PRESETS.items()]
    out["identity"] = (ident + f"\n\n{at} bytes. The presets' IDENTITY payloads:\n\n"
                       + "\n".join(example))
    out["widths"] = "\n".join(f"- `{name}` = {text}" for name, (text, _) in WIDTHS.items())
    out["descriptor"] = _table(
        ["field", "bits", "signed", "default preset: bits", "meaning"],
        [(f"`{name}`", width, "yes" if signed else "", f"{off}..{off + w - 1}",
          _FIELDS.get(name, "")) for name, width, signed, off, w in descriptor_fields()])
    total = isa.layer_layout(PRESETS["default"]).size
    out["descriptor"] += (
        f"\n\nThe default preset's descriptor is {total} bits, "
        f"{isa.mem_word_bytes(PRESETS['default'], Mem.PROGRAM)} bytes in a frame.")
    return out


def _ops(cfg):
    from ..hw.controller import runnable_ops

    return runnable_ops(cfg)


def render(text):
    """``text`` with every generated block replaced by its current contents."""
    for name, body in tables().items():
        begin, end = _BEGIN.format(name), _END.format(name)
        found = re.search(re.escape(begin) + r"\n(?:.*?\n)?" + re.escape(end), text, re.S)
        if not found:
            raise SystolicError(f"The protocol document must hold the markers {begin!r} and "
                                f"{end!r}, in that order; it does not")
        text = text[:found.start()] + f"{begin}\n{body}\n{end}" + text[found.end():]
    return text


def check(path=DOC):
    """Whether the document's generated blocks are current."""
    text = Path(path).read_text()
    return render(text) == text


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m systolic.sw.protocol_doc",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=DOC, type=Path)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the tables are stale, without writing")
    args = parser.parse_args(argv)
    try:
        text = args.path.read_text()
        new = render(text)
    except (OSError, SystolicError) as e:
        print(f"protocol_doc: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{args.path}: the generated tables are stale; run "
                  "python -m systolic.sw.protocol_doc", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.path.write_text(new)
        print(f"{args.path}: tables written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
