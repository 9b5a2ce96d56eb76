"""Reader of dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`), pure Python.

The file is a serialized `anet_type` from dlib's examples/dnn_face_recognition_ex.cpp:

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

    residual      = add_prev1<block<N,1,tag1<x>>>
    residual_down = add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N,2,tag1<x>>>>>>
    block(N, s)   = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,s,s, x>>>>>
    ares = relu<residual>, ares_down = relu<residual_down>
    alevel0 = ares_down<256>; alevel1 = ares<256> x2 on ares_down<256>;
    alevel2 = ares<128> x2 on ares_down<128>; alevel3 = ares<64> x3 on ares_down<64>;
    alevel4 = ares<32> x3

How dlib writes it (dlib/dnn/core.h, layers.h, input.h): every wrapper writes its version number
and then its whole subnetwork *before* its own layer details, so the file is: the loss layer, a
run of 130 version numbers (outermost layer first), the input layer, then each layer's details
from the input towards the output. Tag and skip layers write only a version number, and the tag
id an add_prev/skip refers to is a template argument that is not stored: the wiring below comes
from the network definition above, checked against the file's structure (a different network is
refused rather than guessed at).

Layer semantics needed to run it (checked against real dlib for parity):
- input: (rgb - mean) / 256, means stored in the file (R 122.782, G 117.001, B 104.298);
- con: cross-correlation with bias; padding 0 when stride != 1, else size//2;
- pools: padding 0 when stride != 1; avg_pool with size 0 averages the whole plane;
- add_prev: output has the larger of both shapes; the smaller input is zero-padded at the END
  (extra channels / bottom rows / right columns), e.g. 35x35 + 36x36 -> 36x36;
- fc_no_bias: out = x @ W with W of shape (inputs, outputs);
- the output is the raw 128-d descriptor (not L2-normalised; dlib's same-person threshold is
  0.6 euclidean).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from edgeface.convert.dlib_format import DlibReader
from edgeface.errors import ModelFileError

logger = logging.getLogger(__name__)

_CONV_MODE = 0  # dlib's layer_mode enum: CONV_MODE = 0, FC_MODE = 1


@dataclass(frozen=True)
class InputRGB:
    """input_rgb_image_sized: (pixel - mean) / 256 per channel, RGB order."""

    mean_rgb: tuple[float, float, float]
    size: int


@dataclass(frozen=True)
class Conv:
    weight: np.ndarray  # (out, in, kh, kw) float32
    bias: np.ndarray  # (out,) float32
    stride: int
    padding: int


@dataclass(frozen=True)
class Affine:
    """Per-channel y = gamma * x + beta (dlib's inference-time replacement for batch norm)."""

    gamma: np.ndarray  # (channels,) float32
    beta: np.ndarray  # (channels,) float32


@dataclass(frozen=True)
class Relu:
    pass


@dataclass(frozen=True)
class MaxPool:
    size: int
    stride: int
    padding: int


@dataclass(frozen=True)
class AvgPool:
    """size 0 means avg_pool_everything (mean over the whole plane)."""

    size: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Tag:
    """tagN: remembers the current output under `slot`; passes it through unchanged."""

    slot: int


@dataclass(frozen=True)
class Skip:
    """skipN: the output becomes the output remembered under `slot`."""

    slot: int


@dataclass(frozen=True)
class AddPrev:
    """add_prevN: current + remembered[`slot`], each zero-padded at the end to the larger shape."""

    slot: int


@dataclass(frozen=True)
class FcNoBias:
    weight: np.ndarray  # (inputs, outputs) float32


Layer = Union[Conv, Affine, Relu, MaxPool, AvgPool, Tag, Skip, AddPrev, FcNoBias]  # noqa: UP007 (a runtime alias on 3.10)


@dataclass(frozen=True)
class DlibResnet:
    """The network, input to output. `layers` excludes the input layer, which is `input`."""

    input: InputRGB
    layers: tuple[Layer, ...]
    metric_margin: float
    metric_distance_threshold: float

    @property
    def output_dim(self) -> int:
        last = self.layers[-1]
        if not isinstance(last, FcNoBias):
            raise ModelFileError("dlib ResNet does not end in an fc layer")
        return int(last.weight.shape[1])


# --- the network definition ------------------------------------------------------------------
# A template entry says what the file must hold at that position: the kind of layer and, for
# layers with shape, the numbers the definition fixes. Tag/skip/add_prev slots come from here.


@dataclass(frozen=True)
class _Expect:
    kind: str  # "con", "affine", "relu", "max_pool", "avg_pool", "tag", "skip", "add_prev", "fc"
    filters: int = 0
    size: int = 0
    stride: int = 1
    slot: int = 0


def _block(filters: int, stride: int) -> list[_Expect]:
    return [
        _Expect("con", filters=filters, size=3, stride=stride),
        _Expect("affine"),
        _Expect("relu"),
        _Expect("con", filters=filters, size=3, stride=1),
        _Expect("affine"),
    ]


def _ares(filters: int) -> list[_Expect]:
    return [_Expect("tag", slot=1), *_block(filters, 1), _Expect("add_prev", slot=1), _Expect("relu")]


def _ares_down(filters: int) -> list[_Expect]:
    return [
        _Expect("tag", slot=1),
        *_block(filters, 2),
        _Expect("tag", slot=2),
        _Expect("skip", slot=1),
        _Expect("avg_pool", size=2, stride=2),
        _Expect("add_prev", slot=2),
        _Expect("relu"),
    ]


def expected_architecture() -> list[_Expect]:
    """dnn_face_recognition_ex.cpp's anet_type, input to output, without the input and loss layers."""
    layers: list[_Expect] = [
        _Expect("con", filters=32, size=7, stride=2),
        _Expect("affine"),
        _Expect("relu"),
        _Expect("max_pool", size=3, stride=2),
    ]
    layers += _ares(32) * 3  # alevel4
    layers += _ares_down(64) + _ares(64) * 3  # alevel3
    layers += _ares_down(128) + _ares(128) * 2  # alevel2
    layers += _ares_down(256) + _ares(256) * 2  # alevel1
    layers += _ares_down(256)  # alevel0
    layers += [_Expect("avg_pool", size=0, stride=1), _Expect("fc", filters=128)]
    return layers


# --- reading ---------------------------------------------------------------------------------


def _read_alias_shape(reader: DlibReader) -> tuple[int, int, int, int]:
    version = reader.read_int()
    if version != 1:
        raise ModelFileError(f"{reader.name} is corrupted: alias_tensor version {version} at offset {reader.pos}")
    n, k, nr, nc = (reader.read_int() for _ in range(4))
    return n, k, nr, nc


def _expect_string(reader: DlibReader, wanted: str) -> None:
    at = reader.pos
    found = reader.read_string()
    if found != wanted:
        raise ModelFileError(
            f"{reader.name} is not the dlib face-recognition ResNet v1: found {found!r} at offset {at}, expected {wanted!r}"
        )


def _check(condition: bool, reader: DlibReader, what: str) -> None:
    if not condition:
        raise ModelFileError(f"{reader.name} is not the dlib face-recognition ResNet v1 ({what})")


def _read_input(reader: DlibReader) -> InputRGB:
    _expect_string(reader, "input_rgb_image_sized")
    mean = tuple(float(np.float32(reader.read_float())) for _ in range(3))
    rows, cols = reader.read_int(), reader.read_int()
    _check(rows == cols == 150, reader, f"input size {rows}x{cols}, expected 150x150")
    return InputRGB(mean_rgb=(mean[0], mean[1], mean[2]), size=rows)


def _read_con(reader: DlibReader, expect: _Expect, in_channels: int) -> Conv:
    _expect_string(reader, "con_4")
    params = reader.read_tensor().reshape(-1)
    filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.read_int() for _ in range(7))
    weight_shape = _read_alias_shape(reader)
    bias_shape = _read_alias_shape(reader)
    for _ in range(4):  # learning-rate and weight-decay multipliers: training only
        reader.read_float()
    _check(
        filters == expect.filters and rows == cols == expect.size and stride_y == stride_x == expect.stride,
        reader,
        f"con {filters}x{rows}x{cols}/{stride_y}, expected {expect.filters}x{expect.size}x{expect.size}/{expect.stride}",
    )
    _check(pad_y == pad_x == (0 if expect.stride != 1 else expect.size // 2), reader, f"con padding {pad_y},{pad_x}")
    _check(weight_shape == (filters, in_channels, rows, cols), reader, f"con filter shape {weight_shape}")
    _check(bias_shape == (1, filters, 1, 1), reader, f"con bias shape {bias_shape}")
    weight_count = filters * in_channels * rows * cols
    _check(params.size == weight_count + filters, reader, f"con has {params.size} parameters")
    return Conv(
        weight=params[:weight_count].reshape(weight_shape).copy(),
        bias=params[weight_count:].copy(),
        stride=stride_y,
        padding=pad_y,
    )


def _read_affine(reader: DlibReader, channels: int) -> Affine:
    _expect_string(reader, "affine_")
    params = reader.read_tensor().reshape(-1)
    gamma_shape = _read_alias_shape(reader)
    beta_shape = _read_alias_shape(reader)
    mode = reader.read_int()
    _check(mode == _CONV_MODE, reader, f"affine mode {mode}, expected per-channel")
    _check(gamma_shape == beta_shape == (1, channels, 1, 1), reader, f"affine shape {gamma_shape}")
    _check(params.size == 2 * channels, reader, f"affine has {params.size} parameters")
    return Affine(gamma=params[:channels].copy(), beta=params[channels:].copy())


def _read_pool(reader: DlibReader, name: str, expect: _Expect) -> tuple[int, int, int]:
    _expect_string(reader, name)
    rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.read_int() for _ in range(6))
    _check(
        rows == cols == expect.size and stride_y == stride_x == expect.stride,
        reader,
        f"{name} {rows}x{cols}/{stride_y}, expected {expect.size}x{expect.size}/{expect.stride}",
    )
    wanted_pad = 0 if expect.stride != 1 else expect.size // 2
    _check(pad_y == pad_x == wanted_pad, reader, f"{name} padding {pad_y},{pad_x}")
    return rows, stride_y, pad_y


def _read_fc(reader: DlibReader, expect: _Expect, inputs: int) -> FcNoBias:
    _expect_string(reader, "fc_2")
    outputs, num_inputs = reader.read_int(), reader.read_int()
    params = reader.read_tensor().reshape(-1)
    weight_shape = _read_alias_shape(reader)
    _read_alias_shape(reader)  # biases: unused without bias
    bias_mode = reader.read_int()
    for _ in range(4):  # learning-rate and weight-decay multipliers: training only
        reader.read_float()
    _check(outputs == expect.filters and num_inputs == inputs, reader, f"fc {num_inputs}->{outputs}")
    _check(bias_mode == 1, reader, f"fc bias mode {bias_mode}, expected no bias")  # FC_NO_BIAS = 1
    _check(weight_shape == (num_inputs, outputs, 1, 1), reader, f"fc weight shape {weight_shape}")
    _check(params.size == num_inputs * outputs, reader, f"fc has {params.size} parameters")
    return FcNoBias(weight=params.reshape(num_inputs, outputs).copy())


def _skip_layer_state(reader: DlibReader, tensors: int) -> None:
    """add_layer's bookkeeping after the details: 3 bools, then `tensors` (empty) tensors."""
    for _ in range(3):
        reader.read_bool()
    for _ in range(tensors):
        reader.read_tensor()


def parse_dlib_resnet(data: bytes, name: str = "dlib ResNet file") -> DlibResnet:
    """Parse the bytes of dlib_face_recognition_resnet_model_v1.dat. Raises ModelFileError."""
    reader = DlibReader(data, name)
    template = expected_architecture()

    _check(reader.read_int() == 1, reader, "loss layer version")
    _expect_string(reader, "loss_metric_2")
    margin = reader.read_float()
    distance_threshold = reader.read_float()

    # The version numbers, outermost first: 1 for tag/skip, 2 for add_layer, 3 for the add_layer
    # that holds the input layer (the first con).
    for position, expect in enumerate(reversed(template)):
        innermost = position == len(template) - 1
        wanted = 1 if expect.kind in ("tag", "skip") else (3 if innermost else 2)
        at = reader.pos
        version = reader.read_int()
        _check(version == wanted, reader, f"layer version {version} at offset {at}, expected {wanted}")

    input_layer = _read_input(reader)
    channels, spatial = 3, input_layer.size
    saved: dict[int, tuple[int, int]] = {}
    layers: list[Layer] = []
    for index, expect in enumerate(template):
        layer: Layer
        if expect.kind == "tag":
            saved[expect.slot] = (channels, spatial)
            layers.append(Tag(expect.slot))
            continue
        if expect.kind == "skip":
            channels, spatial = saved[expect.slot]
            layers.append(Skip(expect.slot))
            continue
        if expect.kind == "con":
            layer = _read_con(reader, expect, channels)
            channels = expect.filters
            spatial = (spatial + 2 * layer.padding - expect.size) // expect.stride + 1
        elif expect.kind == "affine":
            layer = _read_affine(reader, channels)
        elif expect.kind == "relu":
            _expect_string(reader, "relu_")
            layer = Relu()
        elif expect.kind == "max_pool":
            size, stride, padding = _read_pool(reader, "max_pool_2", expect)
            layer = MaxPool(size, stride, padding)
            spatial = (spatial + 2 * padding - size) // stride + 1
        elif expect.kind == "avg_pool":
            size, stride, padding = _read_pool(reader, "avg_pool_2", expect)
            layer = AvgPool(size, stride, padding)
            spatial = 1 if size == 0 else (spatial + 2 * padding - size) // stride + 1
        elif expect.kind == "add_prev":
            _expect_string(reader, "add_prev_")
            other_channels, other_spatial = saved[expect.slot]
            channels, spatial = max(channels, other_channels), max(spatial, other_spatial)
            layer = AddPrev(expect.slot)
        else:  # "fc"
            layer = _read_fc(reader, expect, channels * spatial * spatial)
            channels, spatial = expect.filters, 1
        # The first con shares its add_layer with the input layer (one more tensor + an int).
        _skip_layer_state(reader, 3)
        if index == 0:
            reader.read_int()
        layers.append(layer)

    if not reader.at_end():
        raise ModelFileError(f"{name} has {len(reader.data) - reader.pos} unexpected trailing bytes; is it the right file?")
    logger.debug("read dlib ResNet: %d layers, %d-d output", len(layers), channels)
    return DlibResnet(
        input=input_layer,
        layers=tuple(layers),
        metric_margin=margin,
        metric_distance_threshold=distance_threshold,
    )


def read_dlib_resnet(path: Path) -> DlibResnet:
    """Read dlib_face_recognition_resnet_model_v1.dat. Raises ModelFileError if unreadable or not that model."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ModelFileError(f"cannot read dlib model {path}: {error.strerror or error}") from error
    return parse_dlib_resnet(data, name=f"dlib model {path}")


def forward_reference(net: DlibResnet, rgb: np.ndarray) -> np.ndarray:
    """Slow float64 numpy forward pass of (n, 150, 150, 3) uint8 RGB chips: a converter cross-check."""
    x = (rgb.astype(np.float64) - np.asarray(net.input.mean_rgb)) / 256.0
    x = x.transpose(0, 3, 1, 2)
    saved: dict[int, np.ndarray] = {}
    for layer in net.layers:
        if isinstance(layer, Tag):
            saved[layer.slot] = x
        elif isinstance(layer, Skip):
            x = saved[layer.slot]
        elif isinstance(layer, Conv):
            x = _conv_reference(x, layer)
        elif isinstance(layer, Affine):
            x = x * layer.gamma[None, :, None, None] + layer.beta[None, :, None, None]
        elif isinstance(layer, Relu):
            x = np.maximum(x, 0.0)
        elif isinstance(layer, (MaxPool, AvgPool)):
            x = _pool_reference(x, layer)
        elif isinstance(layer, AddPrev):
            x = _add_padded(x, saved[layer.slot])
        else:
            x = x.reshape(x.shape[0], -1) @ layer.weight.astype(np.float64)
    return x


def _conv_reference(x: np.ndarray, conv: Conv) -> np.ndarray:
    n, c, h, w = x.shape
    out_c, _, kh, kw = conv.weight.shape
    p, s = conv.padding, conv.stride
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    out = np.zeros((n, out_c, oh, ow))
    weight = conv.weight.astype(np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s]
            out += np.einsum("nchw,oc->nohw", patch, weight[:, :, i, j])
    return out + conv.bias[None, :, None, None]


def _pool_reference(x: np.ndarray, pool: MaxPool | AvgPool) -> np.ndarray:
    if isinstance(pool, AvgPool) and pool.size == 0:
        return x.mean(axis=(2, 3), keepdims=True)
    k, s = pool.size, pool.stride
    oh, ow = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    windows = [x[:, :, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s] for i in range(k) for j in range(k)]
    return np.max(windows, axis=0) if isinstance(pool, MaxPool) else np.mean(windows, axis=0)


def _add_padded(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    shape = tuple(max(p, q) for p, q in zip(a.shape, b.shape))
    out = np.zeros(shape)
    out[tuple(slice(0, d) for d in a.shape)] += a
    out[tuple(slice(0, d) for d in b.shape)] += b
    return out
