"""The quantized network (`QNet`) and its ``.qnet`` file format (``docs/qnet.md``).

A `QNet` is what the golden model runs and the compiler compiles: a list of layers holding the
contract's integer parameters (``docs/arithmetic.md``), plus the scales they came from and,
optionally, the float model they were quantized from (so one file can report float and int8
accuracy).
"""

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from . import arith
from .errors import SystolicError

__all__ = [
    "ADD_SHIFT_SPREAD", "FORMAT_VERSION", "MAGIC", "Add", "Branch", "Conv", "Flatten",
    "GlobalAvgPool",
    "Linear", "Pool", "QNet", "QnetError",
]

MAGIC = b"SYSTQNET"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sII")      # magic, version, header length
_CRC = struct.Struct("<I")
_ALIGN = 8
ADD_SHIFT_SPREAD = arith.ADD_SHIFT_SPREAD
_DTYPES = {"int8": "<i1", "uint8": "<u1", "uint16": "<u2", "int32": "<i4", "float32": "<f4",
           "float64": "<f8"}


class QnetError(SystolicError, ValueError):
    """A ``.qnet`` file or `QNet` that is malformed; the message names the file and problem."""


@dataclass(eq=False)
class Conv:
    """A convolution with requantization and optional fused ReLU.

    Members
    -------
    w : numpy.ndarray
        int8 weights ``(Cout, Cin, kh, kw)`` in [-127, 127].
    b : numpy.ndarray
        int32 bias ``(Cout,)``, at scale ``s_in * w_scale``.
    M, s : numpy.ndarray
        Requantization multiplier (uint16, [0, 32767]) and shift (uint8, [1, 47]) per channel.
    stride, pad : int
        Stride (1 or 2) and zero padding (0..3), the same both ways.
    relu : bool
        Whether the output is clamped to [0, 127].
    out_scale : float
        Real value of one output LSB.
    w_scale : numpy.ndarray
        float64 ``(Cout,)``: real value of one weight LSB per output channel.
    """

    KIND: ClassVar[str] = "conv"
    w: np.ndarray
    b: np.ndarray
    M: np.ndarray
    s: np.ndarray
    stride: int
    pad: int
    relu: bool
    out_scale: float
    w_scale: np.ndarray

    def out_shape(self, shape):
        """Output ``(C, H, W)`` for input ``shape``; raises `QnetError` when it does not fit."""
        cout, cin, kh, kw = self.w.shape
        if len(shape) != 3 or shape[0] != cin:
            raise QnetError(f"conv input must be ({cin}, H, W), not {tuple(shape)}")
        ho = (shape[1] + 2 * self.pad - kh) // self.stride + 1
        wo = (shape[2] + 2 * self.pad - kw) // self.stride + 1
        if ho < 1 or wo < 1:
            raise QnetError(f"a {kh}x{kw} kernel must fit the {shape[1]}x{shape[2]} input")
        return (cout, ho, wo)


@dataclass(eq=False)
class Linear:
    """A fully connected layer with requantization and optional fused ReLU.

    Members
    -------
    w : numpy.ndarray
        int8 weights ``(Cout, K)``; the input is flattened in ``(C, H, W)`` order.
    b, M, s, relu, out_scale, w_scale
        As for `Conv`.
    """

    KIND: ClassVar[str] = "linear"
    w: np.ndarray
    b: np.ndarray
    M: np.ndarray
    s: np.ndarray
    relu: bool
    out_scale: float
    w_scale: np.ndarray

    def out_shape(self, shape):
        """Output ``(Cout,)`` for input ``shape``; raises `QnetError` when it does not fit."""
        if tuple(shape) != (self.w.shape[1],):
            raise QnetError(f"linear input must be ({self.w.shape[1]},), not {tuple(shape)}")
        return (self.w.shape[0],)


@dataclass(eq=False)
class Pool:
    """Max or average pooling: square ``kernel`` (2, 3), ``stride`` (1..3), no padding.

    Pooling keeps the scale.
    """

    KIND: ClassVar[str] = "pool"
    kind: str
    kernel: int
    stride: int

    def out_shape(self, shape):
        """Output ``(C, Ho, Wo)``; raises `QnetError` on a bad window or input."""
        if self.kind not in ("max", "avg"):
            raise QnetError(f"pool kind must be 'max' or 'avg', not {self.kind!r}")
        if self.kernel not in arith.POOL_KERNELS or self.stride not in arith.POOL_STRIDES:
            raise QnetError(f"pool window must be 2 or 3 with stride 1..3, not kernel "
                            f"{self.kernel!r} stride {self.stride!r}")
        if len(shape) != 3 or min(shape[1:]) < self.kernel:
            raise QnetError(f"pool input must be (C, H, W) of at least the window, "
                            f"not {tuple(shape)}")
        c, h, w = shape
        return (c, (h - self.kernel) // self.stride + 1, (w - self.kernel) // self.stride + 1)


@dataclass(eq=False)
class Flatten:
    """Flatten ``(C, H, W)`` to ``(C * H * W,)`` in that order; keeps the scale."""

    KIND: ClassVar[str] = "flatten"

    def out_shape(self, shape):
        """Output ``(C * H * W,)``."""
        if len(shape) != 3:
            raise QnetError(f"flatten input must be (C, H, W), not {tuple(shape)}")
        return (int(np.prod(shape)),)


@dataclass(eq=False)
class GlobalAvgPool:
    """Global average pooling: each channel's mean over ``H x W``, rounded half up, to
    ``(C, 1, 1)``; keeps the scale."""

    KIND: ClassVar[str] = "gap"

    def out_shape(self, shape):
        """Output ``(C, 1, 1)``."""
        if len(shape) != 3:
            raise QnetError(f"global average pooling input must be (C, H, W), not "
                            f"{tuple(shape)}")
        return (shape[0], 1, 1)


@dataclass(eq=False)
class Add:
    """A residual add of the previous layer's output and an earlier tensor, requantized once.

    Members
    -------
    skip : int
        Index of the layer whose output is the second operand (``-1``: the network input); it
        must come before this layer and have the same shape as the previous layer's output.
    M, s : tuple of int
        Per operand (the previous output first, then the skip), the requantization multiplier
        in [0, 32767] and shift in [1, 47] bringing it to the output scale; the shifts differ by
        at most `ADD_SHIFT_SPREAD`.
    relu : bool
        Whether the sum is clamped to [0, 127].
    out_scale : float
        Real value of one output LSB.
    """

    KIND: ClassVar[str] = "add"
    skip: int
    M: tuple
    s: tuple
    relu: bool
    out_scale: float

    def out_shape(self, shape):
        """The same shape (`QNet.shapes` checks the skip's)."""
        return tuple(shape)

    def check(self):
        """Check ``skip``, ``M`` and ``s`` against the contract; raises `QnetError`."""
        if not isinstance(self.skip, int) or isinstance(self.skip, bool) or self.skip < -1:
            raise QnetError(f"add skip must be a layer index or -1 (the input), not "
                            f"{self.skip!r}")
        for name, v, lo, hi in (("M", self.M, 0, arith.M_MAX),
                                ("s", self.s, arith.SHIFT_MIN, arith.SHIFT_MAX)):
            if len(v) != 2 or not all(isinstance(x, int | np.integer) and lo <= x <= hi
                                      for x in v):
                raise QnetError(f"add {name} must be two integers in [{lo}, {hi}], not "
                                f"{list(v)}")
        if abs(int(self.s[0]) - int(self.s[1])) > ADD_SHIFT_SPREAD:
            raise QnetError(f"add shifts must differ by at most {ADD_SHIFT_SPREAD}, not "
                            f"{list(self.s)}")


@dataclass(eq=False)
class Branch:
    """The start of a branch: its output is layer ``src``'s output (``-1``: the input image),
    the input of the layers that follow; a residual block's projection shortcut starts so.

    Members
    -------
    src : int
        An earlier layer's index, or ``-1``.
    """

    KIND: ClassVar[str] = "branch"
    src: int

    def check(self, i):
        """Check ``src`` for layer ``i``; raises `QnetError`."""
        if not isinstance(self.src, int) or isinstance(self.src, bool) \
                or not -1 <= self.src < i:
            raise QnetError(f"branch src must name an earlier layer (below {i}) or -1, not "
                            f"{self.src!r}")


_LAYER_TYPES = {cls.KIND: cls for cls in (Conv, Linear, Pool, Flatten, GlobalAvgPool, Add,
                                           Branch)}
_TENSORS = {"w": "int8", "b": "int32", "M": "uint16", "s": "uint8", "w_scale": "float64"}


@dataclass(eq=False)
class QNet:
    """A quantized network: integer layers per the arithmetic contract, and their provenance.

    Members
    -------
    layers : list of Conv, Pool, GlobalAvgPool, Add, Branch, Flatten, Linear
        In order, each taking the previous one's output (an `Add` also an earlier one's, a
        `Branch` only an earlier one's); the last is a `Linear` whose int8 outputs are the
        logits.
    input_shape : tuple of int
        ``(C, H, W)`` of one input image.
    p_max : int
        Largest raw pixel value; inputs are ``arith.quantize_image(pixels, p_max)``.
    dataset, arch : str
        Data set trained on and architecture name (``"custom"`` for user models).
    input_scale : float
        Real value of one input LSB: ``1 / 127`` by the contract.
    float_spec : list of dict, optional
        The float model's spec (`models.model_spec`).
    float_state : dict of str to numpy.ndarray
        The float model's state dict (float32), for float accuracy from the ``.qnet`` alone.
    """

    layers: list
    input_shape: tuple
    p_max: int
    dataset: str
    arch: str
    input_scale: float = 1 / 127
    float_spec: list | None = None
    float_state: dict = field(default_factory=dict)

    def shapes(self):
        """Each layer's output shape (no batch dimension).

        Raises
        ------
        QnetError
            Naming the first layer whose parameters do not fit its input.
        """
        shape = tuple(self.input_shape)
        shapes = []
        for i, layer in enumerate(self.layers):
            try:
                if isinstance(layer, Add):
                    _check_skip(layer, i, tuple(self.input_shape), shapes, shape)
                if isinstance(layer, Branch):
                    layer.check(i)
                    shape = tuple(self.input_shape) if layer.src == -1 else shapes[layer.src]
                else:
                    shape = layer.out_shape(shape)
            except QnetError as e:
                raise QnetError(f"layer {i} ({layer.KIND}): {e}") from None
            shapes.append(shape)
        return shapes

    def out_scales(self):
        """The real scale of each layer's output."""
        scales, scale = [], self.input_scale
        for layer in self.layers:
            if isinstance(layer, Conv | Linear | Add):
                scale = layer.out_scale
            elif isinstance(layer, Branch):
                scale = self.input_scale if layer.src == -1 else scales[layer.src]
            scales.append(scale)
        return scales

    def in_scales(self):
        """The real scale of each layer's input."""
        return [self.input_scale] + self.out_scales()[:-1]

    def add_multipliers(self, i):
        """The real multipliers ``(s_prev / s_out, s_skip / s_out)`` of the `Add` layer ``i``."""
        layer = self.layers[i]
        skip = self.input_scale if layer.skip == -1 else self.out_scales()[layer.skip]
        return self.in_scales()[i] / layer.out_scale, skip / layer.out_scale

    def multipliers(self, i):
        """The real requantization multipliers ``m = s_in * w_scale / s_out`` of layer ``i``."""
        layer = self.layers[i]
        return self.in_scales()[i] * layer.w_scale / layer.out_scale

    def check(self):
        """Check shapes and every layer's integer parameters against the contract.

        Raises
        ------
        QnetError
            On inconsistent shapes, dtypes or an empty network.
        arith.ContractError
            On parameters outside the contract, naming the layer and channel.
        """
        if not self.layers or not isinstance(self.layers[-1], Linear):
            raise QnetError("the last layer must be linear (its outputs are the logits)")
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Add):
                try:
                    layer.check()
                except QnetError as e:
                    raise QnetError(f"layer {i} ({layer.KIND}): {e}") from None
        self.shapes()
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Conv | Linear):
                continue
            for name, dtype in _TENSORS.items():
                a = getattr(layer, name)
                if not isinstance(a, np.ndarray) or a.dtype != np.dtype(dtype):
                    got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
                    raise QnetError(f"layer {i} ({layer.KIND}): {name} must be an array of "
                                    f"dtype {dtype}, not {got}")
            if layer.w_scale.shape != layer.b.shape or not np.all(layer.w_scale > 0):
                raise QnetError(f"layer {i} ({layer.KIND}): w_scale must be positive, one per "
                                f"output channel")
            arith.check_layer_params(layer.w, layer.b, layer.M, layer.s,
                                     layer=f"layer {i} ({layer.KIND})")

    def float_model(self):
        """Rebuild the float model stored with the network (a `torch.nn.Sequential`).

        Raises
        ------
        QnetError
            When the network was saved without its float model.
        """
        import torch

        from . import models
        if self.float_spec is None:
            raise QnetError("this network holds no float model; pass the float checkpoint "
                            "with --model FILE.pt")
        model = models.model_from_spec(self.float_spec, self.input_shape)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                               self.float_state.items()})
        return model.eval()

    # The file format ------------------------------------------------------------------------

    def save(self, path):
        """Write the network as a ``.qnet`` file (``docs/qnet.md``), after `check`."""
        self.check()
        blobs, offset = [], 0

        def ref(array, dtype):
            nonlocal offset
            raw = np.ascontiguousarray(array, dtype=_DTYPES[dtype]).tobytes()
            entry = {"dtype": dtype, "shape": list(array.shape), "offset": offset}
            pad = -len(raw) % _ALIGN
            blobs.append(raw + bytes(pad))
            offset += len(raw) + pad
            return entry

        layers = []
        for layer, in_shape, out_shape in zip(self.layers, [tuple(self.input_shape)]
                                              + self.shapes()[:-1], self.shapes()):
            entry = {"kind": layer.KIND, "in_shape": list(in_shape),
                     "out_shape": list(out_shape)}
            if isinstance(layer, Pool):
                entry.update(op=layer.kind, kernel=layer.kernel, stride=layer.stride)
            elif isinstance(layer, Branch):
                entry.update(src=layer.src)
            elif isinstance(layer, Add):
                entry.update(skip=layer.skip, M=[int(v) for v in layer.M],
                             s=[int(v) for v in layer.s], relu=bool(layer.relu),
                             out_scale=float(layer.out_scale))
            elif isinstance(layer, Conv | Linear):
                if isinstance(layer, Conv):
                    entry.update(kernel=list(layer.w.shape[2:]), stride=layer.stride,
                                 padding=layer.pad)
                entry.update(relu=bool(layer.relu), out_scale=float(layer.out_scale),
                             tensors={k: ref(getattr(layer, k), t) for k, t in _TENSORS.items()})
            layers.append(entry)
        header = {
            "format": "systolic.qnet", "arch": self.arch, "dataset": self.dataset,
            "input_shape": list(self.input_shape), "p_max": int(self.p_max),
            "input_scale": float(self.input_scale), "layers": layers,
            "float_model": None if self.float_spec is None else {
                "spec": self.float_spec,
                "state": {k: ref(v, "float32") for k, v in self.float_state.items()}},
        }
        header["data_size"] = offset
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(len(text) + _PREAMBLE.size) % _ALIGN)
        body = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(text)) + text + b"".join(blobs)
        Path(path).write_bytes(body + _CRC.pack(zlib.crc32(body)))

    @classmethod
    def load(cls, path):
        """Read and validate a ``.qnet`` file.

        Raises
        ------
        QnetError
            Naming the file and the problem: missing file, wrong magic or version, truncated
            file, bad checksum, malformed header, inconsistent shapes, or parameters outside
            the arithmetic contract.
        """
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise QnetError(f"{path}: file not found; make one with "
                            "'systolic quantize MODEL.pt -o FILE.qnet'") from None
        except OSError as e:
            raise QnetError(f"{path}: cannot read the file ({e.strerror})") from None
        try:
            return _parse(raw)
        except QnetError as e:
            raise QnetError(f"{path}: {e}") from None
        except arith.ContractError as e:
            raise QnetError(f"{path}: {e}") from None


def _check_skip(layer, i, input_shape, shapes, shape):
    if layer.skip >= i:
        raise QnetError(f"add skip must name an earlier layer (below {i}) or -1, not "
                        f"{layer.skip}")
    other = input_shape if layer.skip == -1 else shapes[layer.skip]
    if tuple(other) != tuple(shape):
        raise QnetError(f"add operands must have the same shape, not {tuple(shape)} and "
                        f"{tuple(other)} (the output of {layer.skip})")


def _parse(raw):
    if raw[:len(MAGIC)] != MAGIC:
        raise QnetError(f"magic bytes must be {MAGIC!r}, not {raw[:len(MAGIC)]!r}; this is "
                        "not a .qnet file")
    if len(raw) < _PREAMBLE.size:
        raise QnetError(f"file is truncated: its preamble needs {_PREAMBLE.size} bytes, "
                        f"not {len(raw)}")
    _, version, hlen = _PREAMBLE.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise QnetError(f"format version must be {FORMAT_VERSION}, not {version}; re-run "
                        "'systolic quantize' with this version of systolic")
    data_start = _PREAMBLE.size + hlen
    if len(raw) < data_start + _CRC.size:
        raise QnetError(f"file is truncated: its header alone needs {data_start + _CRC.size} "
                        f"bytes, not {len(raw)}")
    try:
        header = json.loads(raw[_PREAMBLE.size:data_start])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        header = f"not valid JSON ({e})"
    if isinstance(header, dict) and isinstance(header.get("data_size"), int):
        expected = data_start + header["data_size"] + _CRC.size
        if len(raw) != expected:
            raise QnetError(f"file must be {expected} bytes, not {len(raw)}; it is truncated "
                            "or has trailing data")
    (crc,) = _CRC.unpack_from(raw, len(raw) - _CRC.size)
    if zlib.crc32(raw[:-_CRC.size]) != crc:
        raise QnetError("checksum mismatch: the file is corrupt; quantize the model again")
    if not isinstance(header, dict):
        problem = header if isinstance(header, str) else "must be a JSON object"
        raise QnetError(f"malformed header: {problem}")
    return _from_header(header, memoryview(raw)[data_start:len(raw) - _CRC.size])


def _get(obj, key, kind, where):
    if not isinstance(obj, dict) or key not in obj:
        raise QnetError(f"malformed header: {where} must have a {key!r} entry")
    v = obj[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise QnetError(f"malformed header: {where}.{key} must be {kind.__name__}, not {v!r}")
    return v


def _tensor(data, ref, where, dtype=None, shape=None):
    dt = _get(ref, "dtype", str, where)
    if dt not in _DTYPES or (dtype is not None and dt != dtype):
        raise QnetError(f"malformed header: {where}.dtype must be {dtype or 'a known dtype'}, "
                        f"not {dt!r}")
    dims = _get(ref, "shape", list, where)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise QnetError(f"malformed header: {where}.shape must be non-negative integers, "
                        f"not {dims!r}")
    if shape is not None and tuple(dims) != tuple(shape):
        raise QnetError(f"inconsistent shapes: {where} must have shape {tuple(shape)}, "
                        f"not {tuple(dims)}")
    offset = _get(ref, "offset", int, where)
    nbytes = int(np.prod(dims)) * np.dtype(_DTYPES[dt]).itemsize
    if offset < 0 or offset + nbytes > len(data):
        raise QnetError(f"malformed header: {where} (bytes {offset}..{offset + nbytes}) must "
                        f"lie within the {len(data)}-byte data section")
    a = np.frombuffer(data, _DTYPES[dt], count=int(np.prod(dims)), offset=offset)
    return a.reshape(dims).astype(np.dtype(dt))


def _from_header(h, data):
    if h.get("format") != "systolic.qnet":
        raise QnetError(f"malformed header: format must be 'systolic.qnet', not "
                        f"{h.get('format')!r}")
    shape = tuple(_get(h, "input_shape", list, "header"))
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise QnetError(f"malformed header: input_shape must be [C, H, W], not {list(shape)}")
    layers, out_shapes = [], []
    for i, e in enumerate(_get(h, "layers", list, "header")):
        where = f"layers[{i}]"
        kind = _get(e, "kind", str, where)
        if kind not in _LAYER_TYPES:
            raise QnetError(f"malformed header: {where}.kind must be one of "
                            f"{', '.join(_LAYER_TYPES)}, not {kind!r}")
        in_shape = tuple(_get(e, "in_shape", list, where))
        if in_shape != shape:
            raise QnetError(f"inconsistent shapes: {where}.in_shape must be {shape} (the "
                            f"previous output), not {in_shape}")
        if kind == "pool":
            layer = Pool(_get(e, "op", str, where), _get(e, "kernel", int, where),
                         _get(e, "stride", int, where))
        elif kind == "flatten":
            layer = Flatten()
        elif kind == "gap":
            layer = GlobalAvgPool()
        elif kind == "branch":
            layer = Branch(_get(e, "src", int, where))
            try:
                layer.check(i)
            except QnetError as err:
                raise QnetError(f"malformed header: {where} (branch): {err}") from None
        elif kind == "add":
            layer = Add(_get(e, "skip", int, where), tuple(_get(e, "M", list, where)),
                        tuple(_get(e, "s", list, where)), _get(e, "relu", bool, where),
                        _get(e, "out_scale", float, where))
            try:
                layer.check()
                _check_skip(layer, i, tuple(h["input_shape"]), out_shapes, shape)
            except QnetError as err:
                raise QnetError(f"malformed header: {where} (add): {err}") from None
        else:
            tensors = _get(e, "tensors", dict, where)
            t = {name: _tensor(data, _get(tensors, name, dict, f"{where}.tensors"),
                               f"{where}.tensors.{name}", dtype)
                 for name, dtype in _TENSORS.items()}
            common = dict(relu=_get(e, "relu", bool, where),
                          out_scale=_get(e, "out_scale", float, where), **t)
            ndim = 4 if kind == "conv" else 2
            if t["w"].ndim != ndim:
                raise QnetError(f"inconsistent shapes: {where}.tensors.w must have {ndim} "
                                f"dimensions, not shape {t['w'].shape}")
            if kind == "conv":
                if list(t["w"].shape[2:]) != _get(e, "kernel", list, where):
                    raise QnetError(f"inconsistent shapes: {where}.kernel must match the "
                                    f"weights' {t['w'].shape}")
                layer = Conv(stride=_get(e, "stride", int, where),
                             pad=_get(e, "padding", int, where), **common)
            else:
                layer = Linear(**common)
            if any(t[k].shape != (t["w"].shape[0],) for k in ("b", "M", "s", "w_scale")):
                raise QnetError(f"inconsistent shapes: {where}: b, M, s and w_scale must have "
                                f"one entry per output channel of w {t['w'].shape}")
        try:
            if isinstance(layer, Branch):
                shape = tuple(h["input_shape"]) if layer.src == -1 else out_shapes[layer.src]
            else:
                shape = layer.out_shape(shape)
        except QnetError as err:
            raise QnetError(f"inconsistent shapes: {where} ({kind}): {err}") from None
        if tuple(_get(e, "out_shape", list, where)) != shape:
            raise QnetError(f"inconsistent shapes: {where}.out_shape must be {shape}, not "
                            f"{tuple(e['out_shape'])}")
        layers.append(layer)
        out_shapes.append(shape)
    fm = h.get("float_model")
    spec, state = None, {}
    if fm is not None:
        spec = _get(fm, "spec", list, "float_model")
        state = {k: _tensor(data, v, f"float_model.state.{k}", "float32")
                 for k, v in _get(fm, "state", dict, "float_model").items()}
    qnet = QNet(layers, tuple(_get(h, "input_shape", list, "header")),
                _get(h, "p_max", int, "header"), _get(h, "dataset", str, "header"),
                _get(h, "arch", str, "header"), _get(h, "input_scale", float, "header"),
                spec, state)
    qnet.check()
    return qnet
