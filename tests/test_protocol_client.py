"""An integrator's client, written from ``docs/protocol.md`` alone.

Nothing here comes from the host code (`systolic.sw.protocol`, `systolic.sw.driver`,
`systolic.hw.isa`, `systolic.hw.layout`): the frames and their check (``binascii.crc_hqx``),
the type and error codes, the memory layouts and the layer descriptor's fields are read off the
document, its generated tables parsed as a client's author would transcribe them. The device is
the controller's Verilog on the fast harness (`systolic.sim.fast`), driven through its raw
byte pipe; the answer is the integer golden model's (`systolic.sw.arith`), element by element.

The client identifies the device, then derives every width and size from the IDENTITY reply,
loads a conv + ReLU, max pooling, fully connected network and runs it.
"""

import binascii
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from systolic.hw.config import preset
from systolic.sim.fast import BYTE, Harness, build_harness, network_top
from systolic.sw import arith

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


# ---- what the document says ------------------------------------------------------------------

def doc_table(name):
    """The rows (lists of cells) of the document's generated table ``name``."""
    block = re.search(rf"<!-- generated: {name} .*?-->\n(.*?)<!-- end generated", DOC, re.S)
    rows = []
    for line in block.group(1).splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append(cells)
    return rows[1:]                                        # without the header


def codes(name):
    """``{name: code}`` from a table whose first two columns are the code and the name."""
    return {row[1]: int(row[0], 0) for row in doc_table(name)}


REQUEST, REPLY, ERROR = codes("requests"), codes("replies"), codes("errors")
MEM, OP = codes("memories"), codes("ops")
# "| offset | bytes | `field` | meaning |"
IDENTITY = [(row[2].strip("`"), int(row[1])) for row in doc_table("identity")]
# "| `field` | bits | signed | ... | meaning |": a meaning "(only with IDENTITY's `knob`)" or
# "(only with `knob`)" is a field only a device whose IDENTITY has that knob at 1 has.
DESCRIPTOR = [(row[0].strip("`"), row[1], row[2] == "yes",
               (re.match(r"\(only with (?:IDENTITY's )?`(\w+)`\)", row[-1]) or [None, None])[1])
              for row in doc_table("descriptor")]


# ---- the client ------------------------------------------------------------------------------

class ProtocolError(Exception):
    pass


class Client:
    """Frames over the harness's byte pipe: one request, one reply."""

    def __init__(self, harness):
        self.harness = harness

    def request(self, name, payload=b""):
        body = struct.pack("<BH", REQUEST[name], len(payload)) + payload
        frame = b"\xA5" + body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")
        self.harness.queue((BYTE, b) for b in frame)
        head = self.harness.recv(4, 50_000_000)
        assert head[0] == 0x5A, head
        length = int.from_bytes(head[2:4], "little")
        rest = self.harness.recv(length + 2, 1_000_000)
        assert binascii.crc_hqx(head[1:] + rest[:-2], 0xFFFF).to_bytes(2, "big") == rest[-2:]
        kind = {code: n for n, code in REPLY.items()}[head[1]]
        if kind == "ERROR":
            err = {code: n for n, code in ERROR.items()}[rest[0]]
            raise ProtocolError(f"{name}: {err}")
        return kind, rest[:-2]

    def identify(self):
        kind, payload = self.request("IDENTIFY")
        assert kind == "IDENTITY"
        assert payload[0] == 7, "a protocol version this client does not know"
        fields, at = {}, 0
        for name, size in IDENTITY:
            fields[name] = int.from_bytes(payload[at:at + size], "little")
            at += size
        assert at == len(payload)
        return fields

    def write(self, ident, mem, addr, words, lanes=0):
        size = lanes or {"ACT": ident["word_bytes"], "WEIGHT": ident["word_bytes"],
                         "PARAM": ident["param_bytes"], "PROGRAM": ident["descriptor_bytes"]}[mem]
        per_frame = (ident["max_payload"] - 5) // size
        for i in range(0, len(words), per_frame):
            chunk = words[i:i + per_frame]
            payload = struct.pack("<BHH", MEM[mem] | lanes << 4, addr + i, len(chunk))
            payload += b"".join(w.to_bytes(size, "little") for w in chunk)
            assert self.request("WRITE", payload) == ("ACK", b"")

    def read(self, ident, addr, count):
        out, wb = [], ident["word_bytes"]
        step = ident["max_payload"] // wb
        for at in range(addr, addr + count, step):
            n = min(step, addr + count - at)
            kind, data = self.request("READ", struct.pack("<HH", at, n))
            assert kind == "DATA"
            assert len(data) == n * wb
            out += [int.from_bytes(data[i * wb:(i + 1) * wb], "little") for i in range(n)]
        return out


# ---- memory images, as the document lays them out ----------------------------------------------

def word(lanes):
    """A word of int8 lanes, lane 0 in the low byte."""
    return int.from_bytes(np.asarray(lanes, np.int8).tobytes(), "little")


def lanes(w, cols):
    return np.frombuffer(w.to_bytes(cols, "little"), np.int8)


def activation_words(x, cols):
    c, h, w = x.shape
    cw = -(-c // cols)
    out = []
    for y in range(h):
        for xx in range(w):
            for k in range(cw):
                v = np.zeros(cols, np.int8)
                part = x[k * cols:(k + 1) * cols, y, xx]
                v[:len(part)] = part
                out.append(word(v))
    return out


def conv_weight_words(wt, cols):
    """Tile t, word ((ky * kw + kx) * CW + cw) * cols + l, lane j: weight of output channel
    t * cols + j for input channel cw * cols + l at (ky, kx)."""
    cout, cin, kh, kw = wt.shape
    cw, tiles = -(-cin // cols), -(-cout // cols)
    out = []
    for t in range(tiles):
        for ky in range(kh):
            for kx in range(kw):
                for k in range(cw):
                    for ln in range(cols):
                        v = np.zeros(cols, np.int8)
                        i = k * cols + ln
                        for j in range(cols):
                            o = t * cols + j
                            if o < cout and i < cin:
                                v[j] = wt[o, i, ky, kx]
                        out.append(word(v))
    return out


def param_words(ident, bias, m, s):
    """Tile t takes cols / rq_lanes words; lane i is bias | M << acc_bits | s << (acc + m)."""
    cols, nl = ident["cols"], ident["rq_lanes"]
    acc, mb = ident["acc_bits"], ident["m_bits"]
    lane_bits = acc + mb + ident["shift_bits"]
    n = len(bias)
    out = []
    for t in range(-(-n // cols)):
        for g in range(cols // nl):
            value = 0
            for i in range(nl):
                c = t * cols + g * nl + i
                b, mm, ss = (int(bias[c]), int(m[c]), int(s[c])) if c < n else (0, 0, 1)
                lane = (b & ((1 << acc) - 1)) | mm << acc | ss << (acc + mb)
                value |= lane << (i * lane_bits)
            out.append(value)
    return out


def widths(ident):
    """The width names of the document's descriptor table, from IDENTITY."""
    return {"act_addr_bits": (ident["act_depth"] - 1).bit_length(),
            "weight_addr_bits": (ident["weight_depth"] - 1).bit_length(),
            "param_addr_bits": (ident["param_words"] - 1).bit_length(),
            "dim_bits": ident["max_dim"].bit_length(),
            "kernel_bits": ident["max_kernel"].bit_length(),
            "cols_bits": ident["cols"].bit_length()}


def descriptor(ident, fields):
    names = widths(ident)
    value, at = 0, 0
    for name, bits, signed, only in DESCRIPTOR:
        if only and not ident[only]:
            continue
        width = eval(bits, {}, names)
        v = fields.get(name, 0)
        if signed:
            assert -(1 << (width - 1)) <= v < 1 << (width - 1), name
            v &= (1 << width) - 1
        assert 0 <= v < 1 << width, (name, v, width)
        value |= v << at
        at += width
    assert at <= 8 * ident["descriptor_bytes"]
    return value


def conv(ident, *, cin, h, w, cout, k, pad, relu, in_base, out_base, w_base, p_base,
         cin_words=None):
    cols = ident["cols"]
    cw = cin_words if cin_words is not None else -(-cin // cols)
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    return {"op": OP["CONV"], "relu": int(relu), "in_base": in_base, "out_base": out_base,
            "w_base": w_base, "p_base": p_base, "in_h": h, "in_w": w, "out_h": ho,
            "out_w": wo, "kh": k, "kw": k, "stride": 1, "pad": pad, "cin_words": cw,
            "cout_tiles": -(-cout // cols), "batch": 1,
            "origin": in_base - (pad * w + pad) * cw, "x_step": cw,
            "y_step": (w - (wo - 1)) * cw, "tap_row_step": (w - k) * cw,
            "w_tile_words": k * k * cw * cols, "in_img_step": h * w * cw}


def maxpool(ident, *, channels, h, w, k, in_base, out_base):
    cw = -(-channels // ident["cols"])
    return {"op": OP["MAXPOOL"], "in_base": in_base, "out_base": out_base, "in_h": h,
            "in_w": w, "out_h": (h - k) // k + 1, "out_w": (w - k) // k + 1, "kh": k, "kw": k,
            "stride": k, "cin_words": cw, "cout_tiles": cw, "batch": 1}


def dense_run(client, ident, rng, *, w_base, p_base):
    """A dense one-channel 3x3 convolution, as the document's "A dense convolution" lays it
    out, on an image written a byte a pixel (the device repeats it in every lane)."""
    cols = ident["cols"]
    x = rng.integers(-128, 128, (1, 7, 7)).astype(np.int8)
    w = rng.integers(-127, 128, (4, 1, 3, 3)).astype(np.int8)
    b = rng.integers(-2000, 2000, 4)
    m, s = arith.choose_multiplier(rng.uniform(0.001, 0.02, 4))
    want = arith.requantize(arith.conv2d_acc(x, w, b, padding=1), m, s)
    rows = cols // 3
    words = -(-3 // rows)
    dense_w = np.zeros((4, words * cols, 1, 1), np.int8)
    for d in range(words):
        for lane in range(rows * 3):
            ky, kx = d * rows + lane // 3, lane % 3
            if ky < 3:
                dense_w[:, d * cols + lane, 0, 0] = w[:, 0, ky, kx]
    desc = conv(ident, cin=1, h=7, w=7, cout=4, k=3, pad=1, relu=False, in_base=400,
                out_base=500, w_base=w_base, p_base=p_base)
    desc.update(kh=words, kw=1, dense=1, dkh=3, dkw=3, dcin=1, tap_row_step=rows * 7 - 1,
                w_tile_words=words * cols)
    client.write(ident, "WEIGHT", w_base, conv_weight_words(dense_w, cols))
    client.write(ident, "PARAM", p_base, param_words(ident, b, m, s))
    client.write(ident, "PROGRAM", 3, [descriptor(ident, desc)])
    client.write(ident, "ACT", 400, [int(v) & 0xFF for v in x.reshape(-1)], lanes=1)
    kind, _ = client.request("RUN", bytes([3, 1]))
    assert kind == "DONE"
    assert client.read(ident, 500, 49 * -(-4 // cols)) == activation_words(want, cols)
    if not (ident["fused_pool"] and cols % 8 == 0):
        return
    # The same layer in pixel pairs, max-pooled 2x2: 8 columns (a pair's two pixels, the
    # right one's kernel a tap further right), a 3x4 kernel, 3 pairs a row (the 7th column
    # dropped); each word's halves folded, the 4 channels in both.
    half = cols // 2
    rows = cols // 4
    words = -(-3 // rows)

    def paired(ch):
        """A tile's weights: column j channel ch[j], the right half's a tap further right."""
        wide = np.zeros((cols, 1, 3, 4), np.int8)
        for j in range(cols):
            wide[j, :, :, j // half:j // half + 3] = w[ch[j]]
        pair_w = np.zeros((cols, words * cols, 1, 1), np.int8)
        for d in range(words):
            for lane in range(rows * 4):
                ky, kx = d * rows + lane // 4, lane % 4
                if ky < 3:
                    pair_w[:, d * cols + lane, 0, 0] = wide[:, 0, ky, kx]
        return pair_w

    ch = np.arange(cols) % 4
    desc = conv(ident, cin=1, h=7, w=7, cout=cols, k=3, pad=1, relu=False, in_base=400,
                out_base=600, w_base=w_base, p_base=p_base)
    desc.update(kh=words, kw=1, dense=1, dkh=3, dkw=4, dcin=1, tap_row_step=rows * 7 - 1,
                w_tile_words=words * cols, out_w=3, x_step=2, y_step=7 - 2 * 2, pool=1,
                pairs=1)
    client.write(ident, "WEIGHT", w_base, conv_weight_words(paired(ch), cols))
    client.write(ident, "PARAM", p_base, param_words(ident, b[ch], m[ch], s[ch]))
    client.write(ident, "PROGRAM", 3, [descriptor(ident, desc)])
    assert client.request("RUN", bytes([3, 1]))[0] == "DONE"
    pooled = arith.maxpool2d(want, 2, 2)
    assert client.read(ident, 600, 9) == activation_words(pooled[ch], cols)
    # In two channel tiles writing a half of each word each (halves): tile 0 the channels
    # in order into the lower half, tile 1 in reverse into the upper, at untouched words.
    ch2 = np.concatenate([ch, 3 - ch])
    desc.update(out_base=700, cout_tiles=2, halves=1)
    client.write(ident, "WEIGHT", w_base,
                 conv_weight_words(np.concatenate([paired(ch), paired(3 - ch)]), cols))
    client.write(ident, "PARAM", p_base, param_words(ident, b[ch2], m[ch2], s[ch2]))
    client.write(ident, "PROGRAM", 3, [descriptor(ident, desc)])
    assert client.request("RUN", bytes([3, 1]))[0] == "DONE"
    lanes = np.where(np.arange(cols) < half, ch, 3 - ch)
    assert client.read(ident, 700, 10) == activation_words(pooled[lanes], cols) + [0]


# ---- the test ----------------------------------------------------------------------------------

@pytest.mark.slow
def fc_rows_run(client, ident, rng):
    """A fully connected layer of one image run row by row, as the document's "Row by row"
    lays it out: 3 input words, 3 channel tiles, each bank's words at the top of the bank."""
    cols = ident["cols"]
    depth = ident["weight_depth"] // ident["fc_rows"]
    n_in, n_out = 2 * cols + 3, 2 * cols + 5
    x = rng.integers(-128, 128, (n_in, 1, 1)).astype(np.int8)
    w = rng.integers(-127, 128, (n_out, n_in)).astype(np.int8)
    b = rng.integers(-20000, 20000, n_out)
    m, s = arith.choose_multiplier(rng.uniform(0.0005, 0.01, n_out))
    want = arith.requantize(arith.linear_acc(x.reshape(-1), w, b), m, s, axis=-1)
    words_in, tiles = -(-n_in // cols), -(-n_out // cols)
    steps = words_in * cols
    tile_words = conv_weight_words(w.reshape(n_out, n_in, 1, 1), cols)
    w_base = depth - steps - 2 * cols
    for t in range(tiles):
        tile = np.array([lanes(v, cols) for v in tile_words[t * steps:(t + 1) * steps]])
        bank = np.zeros((steps + 2 * cols, cols), np.int8)
        if t == 0:
            bank[:steps] = tile
        else:                               # word a, lane c: the weight of step a - c
            for c in range(cols):
                bank[c:c + steps, c] = tile[:, c]
        client.write(ident, "WEIGHT", w_base + t * depth, [word(v) for v in bank])
    client.write(ident, "PARAM", 0, param_words(ident, b, m, s))
    desc = {"op": OP["CONV"], "in_base": 900, "out_base": 950, "w_base": w_base, "p_base": 0,
            "in_h": 1, "in_w": tiles, "out_h": 1, "out_w": tiles, "kh": 1, "kw": 1,
            "stride": 1, "cin_words": words_in + 1, "cout_tiles": 1, "batch": 1,
            "origin": 900, "in_img_step": words_in, "fc_rows": 1}
    client.write(ident, "PROGRAM", 5, [descriptor(ident, desc)])
    client.write(ident, "ACT", 900, activation_words(x, cols))
    assert client.request("RUN", bytes([5, 1]))[0] == "DONE"
    got = np.concatenate([lanes(v, cols) for v in client.read(ident, 950, tiles)])[:n_out]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["default", "small", "wide-fc-rows"])
def test_a_client_from_the_document_matches_the_golden_model(name):
    # (The wide preset with fully connected layers row by row, 4 rows from 4 weight banks.)
    cfg = preset("wide").replace(fc_rows=4) if name == "wide-fc-rows" else preset(name)
    top, top_name, _ = network_top(cfg)
    with Harness(build_harness(top, name=top_name)) as harness:
        client = Client(harness)
        ident = client.identify()
        assert (ident["rows"], ident["cols"]) == (cfg.rows, cfg.cols)
        assert ident["ops"] >> OP["CONV"] & 1
        assert ident["ops"] >> OP["MAXPOOL"] & 1
        cols = ident["cols"]

        rng = np.random.default_rng(11)
        x = rng.integers(-128, 128, (3, 6, 6)).astype(np.int8)
        w1 = rng.integers(-127, 128, (6, 3, 3, 3)).astype(np.int8)
        b1 = rng.integers(-20000, 20000, 6)
        m1, s1 = arith.choose_multiplier(rng.uniform(0.001, 0.02, 6))
        w2 = rng.integers(-127, 128, (5, 6 * 3 * 3)).astype(np.int8)
        b2 = rng.integers(-5000, 5000, 5)
        m2, s2 = arith.choose_multiplier(rng.uniform(0.001, 0.02, 5))
        h1 = arith.requantize(arith.conv2d_acc(x, w1, b1, padding=1), m1, s1, relu=True)
        h2 = arith.maxpool2d(h1, 2, 2)
        want = arith.requantize(arith.linear_acc(h2.reshape(-1), w2, b2), m2, s2, axis=-1)

        # The fully connected layer: a 1x1 conv over the pooled map's 9 * CW words as one
        # pixel; input "channel" ((y * W + x) * CW + cw) * cols + l is channel cw * cols + l
        # of pixel (y, x).
        cw = -(-6 // cols)
        fc = np.zeros((5, 9 * cw * cols, 1, 1), np.int8)
        for y in range(3):
            for xx in range(3):
                for c in range(6):
                    fc[:, ((y * 3 + xx) * cw + c // cols) * cols + c % cols, 0, 0] = \
                        w2[:, c * 9 + y * 3 + xx]
        conv_w = conv_weight_words(w1, cols)
        conv_p = param_words(ident, b1, m1, s1)
        program = [
            conv(ident, cin=3, h=6, w=6, cout=6, k=3, pad=1, relu=True, in_base=0,
                 out_base=100, w_base=0, p_base=0),
            maxpool(ident, channels=6, h=6, w=6, k=2, in_base=100, out_base=200),
            conv(ident, cin=9 * cw * cols, h=1, w=1, cout=5, k=1, pad=0, relu=False,
                 in_base=200, out_base=300, w_base=len(conv_w), p_base=len(conv_p)),
        ]
        client.write(ident, "WEIGHT", 0, conv_w + conv_weight_words(fc, cols))
        client.write(ident, "PARAM", 0, conv_p + param_words(ident, b2, m2, s2))
        client.write(ident, "PROGRAM", 0, [descriptor(ident, d) for d in program])
        client.write(ident, "ACT", 0, activation_words(x, cols))

        kind, done = client.request("RUN", bytes([0, 3]))
        assert kind == "DONE"
        total = int.from_bytes(done, "little")
        out = client.read(ident, 300, -(-5 // cols))
        got = np.concatenate([lanes(v, cols) for v in out])[:5]
        np.testing.assert_array_equal(got, want)
        # Every layer's output too: the pooled map in its layout.
        pooled = client.read(ident, 200, 9 * cw)
        assert pooled == activation_words(h2, cols)

        kind, stats = client.request("STATS", bytes([0, 3]))
        per_layer = struct.unpack("<3I", stats)
        assert kind == "DATA"
        assert all(c > 0 for c in per_layer)
        # DONE's total counts the controller's cycles between the layers too (but on a
        # device without fetch_ahead, which sums the layers').
        assert sum(per_layer) <= total
        kind, status = client.request("STATUS")
        assert kind == "STATUS"
        assert status == bytes([ERROR["NONE"], 3]) + done
        if ident["fused_pool"]:
            # The same convolution, its output max-pooled 2x2 /2 on the way to memory.
            fused = {**program[0], "out_base": 400, "pool": 1}
            client.write(ident, "PROGRAM", 0, [descriptor(ident, fused)])
            assert client.request("RUN", bytes([0, 1]))[0] == "DONE"
            assert client.read(ident, 400, 9 * cw) == activation_words(h2, cols)
        # The document's bounds: a READ whose reply would not fit, STATS past the program.
        with pytest.raises(ProtocolError, match="^READ: BAD_LENGTH$"):
            client.request("READ", struct.pack("<HH", 0, ident["max_payload"] // cols + 1))
        with pytest.raises(ProtocolError, match="^STATS: BAD_ADDRESS$"):
            client.request("STATS", bytes([2, 2]))
        if ident["dense_conv"]:
            dense_run(client, ident, rng, w_base=len(conv_w) + len(conv_weight_words(fc, cols)),
                      p_base=len(conv_p) + len(param_words(ident, b2, m2, s2)))
        if ident["fc_rows"]:
            fc_rows_run(client, ident, rng)
        # The last error is sticky.
        assert client.request("IDENTIFY")[0] == "IDENTITY"
        assert client.request("STATUS")[1][0] == ERROR["BAD_ADDRESS"]
