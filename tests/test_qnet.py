"""The .qnet file format: round trip and every way a file can be wrong."""

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from sw_common import digits_model
from systolic.sw import golden, qnet
from systolic.sw.qnet import QNet, QnetError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    _, _, net = digits_model()
    path = tmp_path_factory.mktemp("qnet") / "m.qnet"
    net.save(path)
    return path


def test_round_trip(saved):
    split, model, net = digits_model()
    back = QNet.load(saved)
    assert (back.input_shape, back.p_max, back.dataset, back.arch, back.input_scale) == \
        ((1, 8, 8), 16, "digits", "lenet-digits", 1 / 127)
    assert len(back.layers) == len(net.layers)
    for a, b in zip(net.layers, back.layers):
        assert type(a) is type(b)
        fa, fb = vars(a), vars(b)
        assert fa.keys() == fb.keys()
        for k in fa:
            if isinstance(fa[k], np.ndarray):
                assert fa[k].dtype == fb[k].dtype
                assert np.array_equal(fa[k], fb[k])
            else:
                assert fa[k] == fb[k]
    assert np.array_equal(golden.run(back, split.test.q).logits,
                          golden.run(net, split.test.q).logits)
    float_back = back.float_model()
    x = split.test.x[:16]
    with torch.no_grad():
        assert torch.equal(float_back(torch.from_numpy(x)), model.eval()(torch.from_numpy(x)))


def test_layout(saved):
    raw = saved.read_bytes()
    magic, version, hlen = struct.unpack_from("<8sII", raw)
    assert (magic, version) == (b"SYSTQNET", 1)
    assert (16 + hlen) % 8 == 0
    header = json.loads(raw[16:16 + hlen])
    assert len(raw) == 16 + hlen + header["data_size"] + 4
    assert struct.unpack("<I", raw[-4:])[0] == zlib.crc32(raw[:-4])
    assert [layer["kind"] for layer in header["layers"]] == \
        ["conv", "pool", "conv", "pool", "flatten", "linear"]
    w = header["layers"][0]["tensors"]["w"]
    assert w == {"dtype": "int8", "shape": [16, 1, 3, 3], "offset": 0}


def _rewrite(raw, header=None, *, version=1):
    """A file with ``header`` (a dict) replacing the original one, and a valid checksum."""
    _, _, hlen = struct.unpack_from("<8sII", raw)
    data = raw[16 + hlen:-4]
    text = json.dumps(header).encode() if header is not None else raw[16:16 + hlen]
    text += b" " * (-len(text) % 8)
    body = struct.pack("<8sII", b"SYSTQNET", version, len(text)) + text + data
    return body + struct.pack("<I", zlib.crc32(body))


def _header(raw):
    _, _, hlen = struct.unpack_from("<8sII", raw)
    return json.loads(raw[16:16 + hlen])


def _load_bytes(tmp_path, content):
    path = tmp_path / "bad.qnet"
    path.write_bytes(content)
    return QNet.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(QnetError, match=r"^.*nope\.qnet: file not found; make one with "
                                        r"'systolic quantize MODEL\.pt -o FILE\.qnet'$"):
        QNet.load(tmp_path / "nope.qnet")


def test_wrong_magic(tmp_path):
    with pytest.raises(QnetError, match=r"^.*bad\.qnet: magic bytes must be b'SYSTQNET', not "
                                        r"b'\\x89PNG\\r\\n\\x1a\\n'; this is not a \.qnet file$"):
        _load_bytes(tmp_path, b"\x89PNG\r\n\x1a\n" + bytes(100))


def test_wrong_version(tmp_path, saved):
    with pytest.raises(QnetError, match=r"^.*bad\.qnet: format version must be 1, not 2; "
                                        r"re-run 'systolic quantize'"):
        _load_bytes(tmp_path, _rewrite(saved.read_bytes(), version=2))


@pytest.mark.parametrize(("keep", "match"), [
    (0, r"magic bytes must be b'SYSTQNET', not b''; this is not a \.qnet file$"),
    (10, r"file is truncated: its preamble needs 16 bytes, not 10$"),
    (100, r"file is truncated: its header alone needs \d+ bytes, not 100$"),
    (-5, r"file must be \d+ bytes, not \d+; it is truncated or has trailing data$"),
])
def test_truncated(tmp_path, saved, keep, match):
    with pytest.raises(QnetError, match=r"^.*bad\.qnet: " + match):
        _load_bytes(tmp_path, saved.read_bytes()[:keep])


def test_trailing_data(tmp_path, saved):
    with pytest.raises(QnetError, match=r"^.*bad\.qnet: file must be \d+ bytes, not \d+; it is "
                                        r"truncated or has trailing data$"):
        _load_bytes(tmp_path, saved.read_bytes() + b"\0")


def test_bad_checksum(tmp_path, saved):
    raw = bytearray(saved.read_bytes())
    raw[-100] ^= 0x01
    with pytest.raises(QnetError, match=r"^.*bad\.qnet: checksum mismatch: the file is corrupt; "
                                        r"quantize the model again$"):
        _load_bytes(tmp_path, bytes(raw))


def test_malformed_json(tmp_path, saved):
    raw = saved.read_bytes()
    _, _, hlen = struct.unpack_from("<8sII", raw)
    text = b"{not json" + b" " * (hlen - 9)
    body = raw[:16] + text + raw[16 + hlen:-4]
    with pytest.raises(QnetError, match=r"^.*bad\.qnet: (malformed header: not valid JSON|"
                                        r"file must be)"):
        _load_bytes(tmp_path, body + struct.pack("<I", zlib.crc32(body)))


@pytest.mark.parametrize(("edit", "match"), [
    (lambda h: h.pop("layers"), r"malformed header: header must have a 'layers' entry$"),
    (lambda h: h.update(p_max="16"), r"malformed header: header\.p_max must be int, not '16'$"),
    (lambda h: h["layers"][0].update(kind="lstm"),
     r"malformed header: layers\[0\]\.kind must be one of conv, linear, pool, flatten, gap, "
     r"add, branch, not 'lstm'$"),
    (lambda h: h["layers"][0]["tensors"]["w"].update(dtype="int16"),
     r"malformed header: layers\[0\]\.tensors\.w\.dtype must be int8, not 'int16'$"),
    (lambda h: h["layers"][0]["tensors"]["b"].update(offset=10 ** 9),
     r"malformed header: layers\[0\]\.tensors\.b \(bytes 1000000000\.\.1000000064\) must lie "
     r"within the \d+-byte data section$"),
    (lambda h: h["layers"][2].update(in_shape=[16, 5, 5]),
     r"inconsistent shapes: layers\[2\]\.in_shape must be \(16, 4, 4\) \(the previous "
     r"output\), not \(16, 5, 5\)$"),
    (lambda h: h["layers"][2].update(padding=0, out_shape=[32, 4, 4]),
     r"inconsistent shapes: layers\[2\]\.out_shape must be \(32, 2, 2\), not \(32, 4, 4\)$"),
    (lambda h: h["layers"][5]["tensors"]["b"].update(shape=[9]),
     r"inconsistent shapes: layers\[5\]: b, M, s and w_scale must have one entry per output "
     r"channel of w \(10, 128\)$"),
    (lambda h: h["layers"][3].update(kernel=4),
     r"inconsistent shapes: layers\[3\] \(pool\): pool window must be 2 or 3 with stride 1\.\.3, "
     r"not kernel 4 stride 2$"),
])
def test_malformed_header(tmp_path, saved, edit, match):
    raw = saved.read_bytes()
    header = _header(raw)
    edit(header)
    with pytest.raises(QnetError, match=r"^.*bad\.qnet: " + match):
        _load_bytes(tmp_path, _rewrite(raw, header))


def test_parameters_outside_contract(tmp_path, saved):
    raw = bytearray(saved.read_bytes())
    header = _header(bytes(raw))
    _, _, hlen = struct.unpack_from("<8sII", raw)
    offset = 16 + hlen + header["layers"][0]["tensors"]["s"]["offset"]
    raw[offset] = 48                                          # shift outside [1, 47]
    body = bytes(raw[:-4])
    with pytest.raises(QnetError, match=r"^.*bad\.qnet: layer 0 \(conv\): shift s must lie in "
                                        r"\[1, 47\], not \[\d+, 48\]$"):
        _load_bytes(tmp_path, body + struct.pack("<I", zlib.crc32(body)))


def test_save_rejects_bad_network(tmp_path):
    _, _, net = digits_model()
    bad = QNet(net.layers[:-1], net.input_shape, net.p_max, net.dataset, net.arch)
    with pytest.raises(QnetError, match=r"^the last layer must be linear \(its outputs are the "
                                        r"logits\)$"):
        bad.save(tmp_path / "x.qnet")
    layer = qnet.Linear(np.zeros((2, 128), np.int32), *[np.zeros(2, d) for d in
                                                        (np.int32, np.uint16, np.uint8)],
                        False, 1.0, np.ones(2))
    bad = QNet(net.layers[:-1] + [layer], net.input_shape, 16, "digits", "custom")
    with pytest.raises(QnetError, match=r"^layer 5 \(linear\): w must be an array of "
                                        r"dtype int8, not int32$"):
        bad.save(tmp_path / "x.qnet")
