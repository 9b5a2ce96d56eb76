"""dlib's serialization format (DlibReader) on hand-encoded bytes, and the real ResNet .dat."""

from __future__ import annotations

import math
import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from _model_sources import RESNET_DAT, dlib_dat

from edgeface.convert.dlib_format import DlibReader
from edgeface.convert.dlib_resnet import (
    AddPrev,
    Affine,
    AvgPool,
    Conv,
    FcNoBias,
    MaxPool,
    Relu,
    Skip,
    Tag,
    parse_dlib_resnet,
    read_dlib_resnet,
)
from edgeface.errors import ModelFileError


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


# An encoder written from dlib/serialize.h, independent of the reader, for composite records.
def enc_int(value: int) -> bytes:
    magnitude = abs(value)
    body = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def enc_float(mantissa: int, exponent: int) -> bytes:
    return enc_int(mantissa) + enc_int(exponent)


def enc_real(value: float) -> bytes:
    """A finite float the way dlib's float_details stores it: integer mantissa, power-of-two exponent."""
    fraction, exponent = math.frexp(value)
    mantissa = int(fraction * 2**53)
    while mantissa and mantissa % 2 == 0:
        mantissa //= 2
        exponent += 1
    return enc_float(mantissa, exponent - 53 if mantissa else 0) if value else enc_float(0, 0)


def enc_string(text: str) -> bytes:
    raw = text.encode()
    return enc_int(len(raw)) + raw


def enc_tensor(array: np.ndarray) -> bytes:
    return enc_int(2) + b"".join(enc_int(d) for d in array.shape) + array.astype("<f4").tobytes()


# --- integers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"\x00", 0),
        (b"\x01\x05", 5),
        (b"\x81\x05", -5),
        (b"\x01\xff", 255),
        (b"\x02\x00\x01", 256),
        (b"\x02\x34\x12", 0x1234),
        (b"\x82\x34\x12", -0x1234),
        (b"\x04\x01\x00\x00\x80", 0x80000001),
        (b"\x84\xff\xff\xff\xff", -(2**32 - 1)),
        (b"\x08\xff\xff\xff\xff\xff\xff\xff\x7f", 2**63 - 1),
        (b"\x03\x00\x00\x00", 0),  # zero-padded magnitude is still valid
    ],
)
def test_int(data: bytes, value: int) -> None:
    reader = DlibReader(data + b"\x01\x07")
    assert reader.read_int() == value
    assert reader.pos == len(data)
    assert reader.read_int() == 7  # the next value starts right after
    assert reader.at_end()


@pytest.mark.parametrize("value", [0, 1, -1, 127, 128, -129, 65535, 2**31, -(2**40) + 3, 2**64 - 1])
def test_int_round_trips_through_the_encoder(value: int) -> None:
    assert DlibReader(enc_int(value)).read_int() == value


@pytest.mark.parametrize("control", [0x09, 0x0F, 0x10, 0x41, 0x71])
def test_bad_int_control_byte(control: int) -> None:
    reader = DlibReader(b"\x00\x00" + bytes([control]) + b"\x00" * 16)
    assert reader.read_int() == reader.read_int() == 0
    with pytest.raises(ModelFileError, match=r"control byte .* at offset 2") as caught:
        reader.read_int()
    _one_line(caught.value)


# --- bools and strings -----------------------------------------------------------------------------


def test_bools() -> None:
    reader = DlibReader(b"1001")
    assert [reader.read_bool() for _ in range(4)] == [True, False, False, True]


@pytest.mark.parametrize("byte", [b"\x00", b"\x01", b"2", b"T"])
def test_bad_bool(byte: bytes) -> None:
    reader = DlibReader(b"1" + byte)
    reader.read_bool()
    with pytest.raises(ModelFileError, match="bool .* at offset 1") as caught:
        reader.read_bool()
    _one_line(caught.value)


@pytest.mark.parametrize(
    ("data", "text"),
    [(b"\x00", ""), (b"\x01\x05relu_", "relu_"), (b"\x01\x15input_rgb_image_sized", "input_rgb_image_sized")],
)
def test_string(data: bytes, text: str) -> None:
    reader = DlibReader(data)
    assert reader.read_string() == text
    assert reader.at_end()


def test_string_with_negative_length_is_refused() -> None:
    with pytest.raises(ModelFileError) as caught:
        DlibReader(b"\x81\x01abc").read_string()
    _one_line(caught.value)


# --- floats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"\x00\x00", 0.0),
        (b"\x01\x03\x81\x01", 1.5),  # 3 * 2**-1
        (b"\x81\x03\x81\x02", -0.75),  # -3 * 2**-2
        (b"\x01\x01\x01\x0a", 1024.0),  # 1 * 2**10
        (b"\x04\x00\x00\x00\x01\x81\x18", 1.0),  # 2**24 * 2**-24
    ],
)
def test_float(data: bytes, value: float) -> None:
    reader = DlibReader(data)
    assert reader.read_float() == value
    assert reader.at_end()


@pytest.mark.parametrize("value", [122.78199768066406, -1e-30, 3.4028234663852886e38, 1 / 3])
def test_float_round_trips_through_the_encoder(value: float) -> None:
    assert DlibReader(enc_real(value)).read_float() == value


def test_float_of_a_float32_value_is_exact() -> None:
    single = float(np.float32(117.001))
    assert np.float32(DlibReader(enc_real(single)).read_float()) == np.float32(117.001)


def test_non_finite_float_markers() -> None:
    reader = DlibReader(enc_float(0, 32000) + enc_float(0, 32001) + enc_float(0, 32002))
    assert reader.read_float() == math.inf
    assert reader.read_float() == -math.inf
    assert math.isnan(reader.read_float())


def test_float_exponent_out_of_range_is_refused() -> None:
    with pytest.raises(ModelFileError, match="exponent") as caught:
        DlibReader(enc_float(1, 5000)).read_float()
    _one_line(caught.value)


# --- tensors and matrices ------------------------------------------------------------------------


def test_tensor_by_hand() -> None:
    values = np.arange(6, dtype=np.float32) - 2.5
    data = b"\x01\x02" + b"\x01\x01\x01\x02\x01\x01\x01\x03" + struct.pack("<6f", *values)
    tensor = DlibReader(data).read_tensor()
    assert tensor.dtype == np.float32 and tensor.shape == (1, 2, 1, 3)
    np.testing.assert_array_equal(tensor.reshape(-1), values)


def test_tensor_round_trip_and_empty() -> None:
    array = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    reader = DlibReader(enc_tensor(array) + enc_tensor(np.zeros((0, 0, 0, 0), np.float32)))
    np.testing.assert_array_equal(reader.read_tensor(), array)
    assert reader.read_tensor().shape == (0, 0, 0, 0)
    assert reader.at_end()


@pytest.mark.parametrize(
    ("head", "match"),
    [
        (enc_int(1) + enc_int(1) * 4, "tensor version 1"),
        (enc_int(2) + enc_int(1) + enc_int(-2) + enc_int(1) * 2, "negative tensor shape"),
        # shapes whose product overflows int64 (it wrapped to 0 with np.prod: a ValueError on reshape)
        (enc_int(2) + enc_int(2**62) + enc_int(4) + enc_int(1) * 2, "truncated"),
        (enc_int(2) + enc_int(2**32) * 2 + enc_int(1) * 2, "truncated"),
        (enc_int(2) + enc_int(2**63) + enc_int(2) + enc_int(1) * 2, "truncated"),
    ],
)
def test_bad_tensor_header(head: bytes, match: str) -> None:
    with pytest.raises(ModelFileError, match=match) as caught:
        DlibReader(head + b"\x00" * 64).read_tensor()
    _one_line(caught.value)


def test_matrix_row_major() -> None:
    data = enc_int(-2) + enc_int(-3) + b"".join(enc_real(v) for v in [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(DlibReader(data).read_float_matrix(), [[1, 2, 3], [4, 5, 6]])


def test_matrix_old_format_stores_columns_first() -> None:
    data = enc_int(3) + enc_int(2) + b"".join(enc_real(v) for v in [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(DlibReader(data).read_float_matrix(), [[1, 2, 3], [4, 5, 6]])


def test_column_vector_and_point() -> None:
    data = enc_int(-3) + enc_int(-1) + enc_real(0.5) + enc_real(-2.0) + enc_real(0.25) + enc_real(7) + enc_real(-8)
    reader = DlibReader(data)
    np.testing.assert_array_equal(reader.read_float_column(), [0.5, -2.0, 0.25])
    assert reader.read_point2() == (7.0, -8.0)
    assert reader.at_end()


def test_not_a_column_vector_is_refused() -> None:
    data = enc_int(-2) + enc_int(-2) + enc_real(1) * 4
    with pytest.raises(ModelFileError, match="column vector") as caught:
        DlibReader(data).read_float_column()
    _one_line(caught.value)


@pytest.mark.parametrize("shape", [(-3, 2), (3, -2), (-(2**40), -(2**40))])
def test_bad_matrix_shape_is_refused(shape: tuple[int, int]) -> None:
    with pytest.raises(ModelFileError, match="offset 0") as caught:
        DlibReader(enc_int(shape[0]) + enc_int(shape[1]) + enc_real(1) * 8).read_float_matrix()
    _one_line(caught.value)


def test_length_limit() -> None:
    reader = DlibReader(enc_int(5) + enc_int(6) + enc_int(-1))
    assert reader.read_length(5) == 5
    with pytest.raises(ModelFileError, match="bad length 6 at offset 2"):
        reader.read_length(5)
    with pytest.raises(ModelFileError, match="bad length -1"):
        reader.read_length(5)


# --- truncation anywhere ---------------------------------------------------------------------------

_RECORD = (
    enc_int(-300)
    + b"1"
    + enc_string("con_4")
    + enc_real(0.1)
    + enc_tensor(np.ones((1, 2, 2, 1), np.float32))
    + enc_int(-1)
    + enc_int(-2)
    + enc_real(3.0)
    + enc_real(4.0)
    + enc_real(1.5)
    + enc_real(2.5)
)


def _read_record(reader: DlibReader) -> tuple:
    return (
        reader.read_int(),
        reader.read_bool(),
        reader.read_string(),
        reader.read_float(),
        reader.read_tensor(),
        reader.read_float_matrix(),
        reader.read_point2(),
    )


def test_whole_record_reads() -> None:
    reader = DlibReader(_RECORD)
    value, flag, name, scale, tensor, matrix, point = _read_record(reader)
    assert (value, flag, name, scale, point) == (-300, True, "con_4", 0.1, (1.5, 2.5))
    np.testing.assert_array_equal(tensor, np.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(matrix, [[3.0, 4.0]])
    assert reader.at_end()


@pytest.mark.parametrize("cut", range(len(_RECORD)))
def test_truncated_record_raises_model_file_error_with_offset(cut: int) -> None:
    with pytest.raises(ModelFileError) as caught:
        _read_record(DlibReader(_RECORD[:cut], name="test.dat"))
    message = _one_line(caught.value)
    assert message.startswith("test.dat ")
    offset = int(re.search(r"offset (\d+)", message).group(1))
    assert 0 <= offset <= cut


# --- the real ResNet file -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_dat(request: pytest.FixtureRequest) -> Path:
    return dlib_dat(request.config, RESNET_DAT)


@pytest.fixture(scope="module")
def resnet_bytes(resnet_dat: Path) -> bytes:
    return resnet_dat.read_bytes()


def test_real_resnet_structure(resnet_dat: Path) -> None:
    net = read_dlib_resnet(resnet_dat)
    convs = [layer for layer in net.layers if isinstance(layer, Conv)]
    assert len(convs) == 29
    assert net.output_dim == 128
    assert net.input.size == 150
    np.testing.assert_allclose(net.input.mean_rgb, (122.782, 117.001, 104.298), atol=1e-3)
    first, last = convs[0], net.layers[-1]
    assert first.weight.shape == (32, 3, 7, 7) and first.stride == 2 and first.padding == 0
    assert isinstance(last, FcNoBias) and last.weight.shape == (256, 128)
    counts = {kind: sum(isinstance(layer, kind) for layer in net.layers) for kind in (Affine, Relu, Tag, Skip, AddPrev)}
    assert counts == {Affine: 29, Relu: 29, Tag: 18, Skip: 4, AddPrev: 14}
    assert [type(layer) for layer in net.layers if isinstance(layer, (MaxPool, AvgPool))] == [MaxPool] + [AvgPool] * 5
    for conv in convs:
        assert conv.weight.dtype == np.float32 and np.isfinite(conv.weight).all()
        assert conv.bias.shape == (conv.weight.shape[0],)


@pytest.mark.parametrize("cut", [0, 1, 5, 40, 600, 3000, 1 << 20, 11_000_000, -4, -1])
def test_truncated_resnet_is_refused(resnet_bytes: bytes, cut: int) -> None:
    with pytest.raises(ModelFileError, match=r"truncated or corrupted .*offset \d+") as caught:
        parse_dlib_resnet(resnet_bytes[:cut], name="resnet.dat")
    _one_line(caught.value)


def test_truncated_resnet_file_is_refused(resnet_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "short.dat"
    path.write_bytes(resnet_bytes[: len(resnet_bytes) // 3])
    with pytest.raises(ModelFileError, match="short.dat") as caught:
        read_dlib_resnet(path)
    _one_line(caught.value)


def test_missing_resnet_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="nothing.dat") as caught:
        read_dlib_resnet(tmp_path / "nothing.dat")
    _one_line(caught.value)


def test_resnet_with_trailing_bytes_is_refused(resnet_bytes: bytes) -> None:
    with pytest.raises(ModelFileError, match="trailing") as caught:
        parse_dlib_resnet(resnet_bytes + b"\x00", name="resnet.dat")
    _one_line(caught.value)


_LAYER_NAMES = [b"loss_metric_2", b"input_rgb_image_sized", b"con_4", b"affine_", b"relu_", b"max_pool_2",
                b"avg_pool_2", b"add_prev_", b"fc_2"]


def _structural_offsets(data: bytes) -> list[int]:
    """Offsets of every byte of every layer-name string (with its length) in the file."""
    offsets = []
    for name in _LAYER_NAMES:
        needle = enc_string(name.decode())
        start = data.find(needle)
        while start != -1:
            offsets.extend(range(start, start + len(needle)))
            start = data.find(needle, start + 1)
    return sorted(offsets)


def test_byte_flipped_resnet_is_refused(resnet_bytes: bytes) -> None:
    """A flipped byte in the header, the run of layer versions or any layer's name is refused with one
    line; 30 places picked at random (fixed seed) among the names plus fixed ones at the start."""
    offsets = _structural_offsets(resnet_bytes)
    assert len(offsets) == 937  # 110 names (tag and skip layers have none), 2 + len(name) bytes each
    # the loss layer's version, places in the run of 130 layer versions, then names at random
    chosen = [0, 1, *range(31, 290, 37)] + random.Random(7).sample(offsets, 30)
    for offset in chosen:
        for mask in (0x01, 0xFF):
            data = bytearray(resnet_bytes)
            data[offset] ^= mask
            with pytest.raises(ModelFileError) as caught:
                parse_dlib_resnet(bytes(data), name="resnet.dat")
            assert _one_line(caught.value).startswith("resnet.dat "), (offset, mask)
