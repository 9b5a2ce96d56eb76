"""Static INT8 (QDQ) quantization of the FP32 embedder with onnxruntime.quantization.

Recipe (the one recorded in the manifest): QDQ format, per-channel weights, MinMax calibration
over real face chips (`edgeface.convert.chips.calibration_chips`), activations uint8, weights
int8 with `reduce_range=True` (7-bit weights).

Why reduce_range: on x86 AVX2 CPUs without VNNI, onnxruntime's u8 x s8 kernels add pairs of
products in saturating int16 (vpmaddubsw); 255 * 127 * 2 overflows and the embeddings go wrong
(errors up to 0.5 in descriptor distance were seen). With 7-bit weights the pair sum is at most
255 * 63 * 2 = 32130 < 32767, so the same model is exact on every CPU, at the speed of the
u8 x s8 kernels. u8 x u8 avoids the overflow too, but is slower here (see `SCHEMES` and the report
numbers in the lead's notes); ARM (NEON / dot-product) never saturates.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeface.vision.embed import chips_to_input

logger = logging.getLogger(__name__)

Scheme = Literal["u8s8_reduced", "u8u8", "u8s8", "s8s8"]
SCHEMES: tuple[Scheme, ...] = ("u8s8_reduced", "u8u8", "u8s8", "s8s8")
DEFAULT_SCHEME: Scheme = "u8s8_reduced"

# Operators left in float: the input normalisation (Sub, Mul on raw pixels) stays exact.
_QUANTIZED_OPS = ["Conv", "MatMul", "Add", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Pad", "Flatten"]


def _types(scheme: Scheme) -> tuple[object, object, bool]:
    from onnxruntime.quantization import QuantType

    return {
        "u8s8_reduced": (QuantType.QUInt8, QuantType.QInt8, True),
        "u8u8": (QuantType.QUInt8, QuantType.QUInt8, False),
        "u8s8": (QuantType.QUInt8, QuantType.QInt8, False),
        "s8s8": (QuantType.QInt8, QuantType.QInt8, False),
    }[scheme]


def calibration_reader(data: np.ndarray, input_name: str, batch_size: int) -> Any:
    """An onnxruntime CalibrationDataReader feeding `data` to `input_name` in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(
                [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return _Reader()


def quantize_embedder(
    fp32_path: Path,
    out_path: Path,
    calibration_chips_bgr: np.ndarray,
    scheme: Scheme = DEFAULT_SCHEME,
    batch_size: int = 10,
) -> None:
    """Write the static QDQ INT8 model of `fp32_path` to `out_path` (deterministic for fixed inputs)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )

    activation_type, weight_type, reduce_range = _types(scheme)
    data = chips_to_input(calibration_chips_bgr)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name

    with tempfile.TemporaryDirectory(prefix="edgeface-quant-") as scratch:
        staged = Path(scratch) / "int8.onnx"
        quantize_static(
            str(fp32_path),
            str(staged),
            calibration_reader(data, input_name, batch_size),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=_QUANTIZED_OPS,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=activation_type,
            weight_type=weight_type,
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load(str(staged))
    model.producer_name = "edgeface"
    model.doc_string = (
        f"dlib face-recognition ResNet v1, static QDQ INT8 ({scheme}, per-channel, MinMax over "
        f"{len(data)} calibration chips)"
    )
    onnx.save(model, str(out_path))
    logger.info("wrote %s (%s, %d calibration chips)", out_path, scheme, len(data))
