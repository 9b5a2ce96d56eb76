"""The embedder on the shipped models: output contract, input checks, flip, INT8 vs FP32, and the INT8
self-check falling back to FP32 when the INT8 model disagrees."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeface.convert.manifest import record_model_file
from edgeface.errors import ModelFileError
from edgeface.io.models import MANIFEST_NAME
from edgeface.io.runtime.onnx import OnnxRunner
from edgeface.vision.embed import (
    EMBEDDING_DIM,
    MODEL_FILES,
    SELFCHECK_FILE,
    SELFCHECK_MAX_DISTANCE,
    Embedder,
    SelfCheckFailed,
    normalise,
    self_check,
)

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
SHIPPED = json.loads((MODELS / MANIFEST_NAME).read_text())["files"]


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """Face-like (8, 150, 150, 3) uint8 BGR chips: the shipped self-check inputs (no one's photo)."""
    with np.load(MODELS / SELFCHECK_FILE) as data:
        return data["chips"]


@pytest.fixture(scope="module")
def expected_fp32() -> np.ndarray:
    with np.load(MODELS / SELFCHECK_FILE) as data:
        return data["fp32_descriptors"]


@pytest.fixture(scope="module")
def fp32() -> Embedder:
    return Embedder("fp32", threads=1, models_directory=MODELS)


@pytest.fixture(scope="module")
def int8() -> Embedder:
    return Embedder("int8", threads=1, models_directory=MODELS)


# --- output contract ------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_output_is_unit_128d_float32(request: pytest.FixtureRequest, chips: np.ndarray, precision: str) -> None:
    embedder: Embedder = request.getfixturevalue(precision)
    assert embedder.precision == embedder.requested_precision == precision
    out = embedder.embed(chips)
    assert out.shape == (len(chips), EMBEDDING_DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # different faces give different embeddings
    distances = np.linalg.norm(out[:, None] - out[None], axis=2)[np.triu_indices(len(out), 1)]
    assert distances.min() > 0.1


def test_fp32_raw_descriptors_match_the_build_time_ones(fp32: Embedder, chips: np.ndarray, expected_fp32: np.ndarray) -> None:
    raw = fp32.raw_descriptors(chips)
    np.testing.assert_allclose(raw, expected_fp32, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fp32.embed(chips), normalise(expected_fp32), rtol=0, atol=1e-5)


def test_batch_and_single_chips_agree(fp32: Embedder, chips: np.ndarray) -> None:
    one_by_one = np.concatenate([fp32.embed(chips[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(one_by_one, fp32.embed(chips[:3]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_empty_batch(request: pytest.FixtureRequest, precision: str) -> None:
    embedder: Embedder = request.getfixturevalue(precision)
    out = embedder.embed(np.zeros((0, 150, 150, 3), np.uint8))
    assert out.shape == (0, EMBEDDING_DIM) and out.dtype == np.float32


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 150, 150, 3), np.float32),
        np.zeros((1, 150, 150, 3), np.int64),
        np.zeros((150, 150, 3), np.uint8),
        np.zeros((1, 150, 150), np.uint8),
        np.zeros((1, 150, 150, 4), np.uint8),
        np.zeros((1, 112, 112, 3), np.uint8),
        np.zeros((1, 3, 150, 150), np.uint8),
        np.zeros((0, 150, 150), np.uint8),
    ],
    ids=["float32", "int64", "no-batch-axis", "grey", "bgra", "112px", "channels-first", "empty-grey"],
)
def test_wrong_shape_or_dtype_is_refused(fp32: Embedder, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 \\(n, 150, 150, 3\\)") as caught:
        fp32.embed(bad)
    _one_line(caught.value)


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision") as caught:
        Embedder("fp16", models_directory=MODELS)  # type: ignore[arg-type]
    _one_line(caught.value)


# --- flip ------------------------------------------------------------------------------------------


def test_flip_is_the_normalised_mean_of_chip_and_mirror(fp32: Embedder, chips: np.ndarray) -> None:
    flipped = Embedder("fp32", flip=True, models_directory=MODELS)
    mirrored = np.ascontiguousarray(chips[:, :, ::-1])
    expected = normalise((fp32.raw_descriptors(chips) + fp32.raw_descriptors(mirrored)) / 2)
    out = flipped.embed(chips)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    # a mirrored face is nearly the same face: flip moves embeddings, but much less than a new face does
    moved = np.linalg.norm(out - fp32.embed(chips), axis=1)
    assert (moved > 0.005).all() and (moved < 0.15).all(), moved
    # mirroring the input does not change a flip-averaged embedding
    np.testing.assert_allclose(flipped.embed(mirrored), out, rtol=0, atol=1e-5)


# --- INT8 ------------------------------------------------------------------------------------------


def test_int8_agrees_with_fp32_on_the_selfcheck_inputs(
    int8: Embedder, fp32: Embedder, chips: np.ndarray
) -> None:
    distances = np.linalg.norm(int8.raw_descriptors(chips) - fp32.raw_descriptors(chips), axis=1)
    assert distances.max() <= SELFCHECK_MAX_DISTANCE
    assert distances.min() > 0  # it is a different (quantized) model, not the FP32 one again
    assert int8.selfcheck_distance == pytest.approx(distances.max(), abs=1e-6)


def test_corrupted_int8_file_is_refused_not_replaced(tmp_path: Path) -> None:
    """A file that fails its sha256 is an install problem: refused with one line, no silent fallback."""
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    path = models / MODEL_FILES["int8"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=str(path)) as caught:
        Embedder("int8", models_directory=models)
    _one_line(caught.value)


def _break_int8(models: Path, factor: float) -> None:
    """Scale the weight scales of the INT8 model's first Conv by `factor` (a model that loads and runs
    but computes the wrong thing, as the x86 U8S8 overflow would) and record it in the manifest."""
    import onnx
    from onnx import numpy_helper

    path = models / MODEL_FILES["int8"]
    model = onnx.load(str(path))
    producer = {output: node for node in model.graph.node for output in node.output}
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    dequantize = producer[conv.input[1]]
    assert dequantize.op_type == "DequantizeLinear"
    scale = next(init for init in model.graph.initializer if init.name == dequantize.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name))
    onnx.save(model, str(path))
    entry = SHIPPED[path.name]
    record_model_file(models, path.name, source=entry["source"], license=entry["license"],
                      made_by=f"test: first Conv weight scales multiplied by {factor:g}")


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("broken") / "models"
    shutil.copytree(MODELS, models)
    _break_int8(models, 8.0)
    return models


def test_broken_int8_model_fails_the_self_check(broken_models: Path) -> None:
    runner = OnnxRunner(broken_models / MODEL_FILES["int8"], threads=1)
    with pytest.raises(SelfCheckFailed, match="distance") as caught:
        self_check(runner, broken_models)
    _one_line(caught.value)


def test_self_check_falls_back_to_fp32(
    broken_models: Path, fp32: Embedder, chips: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="edgeface.vision.embed"):
        embedder = Embedder("int8", threads=1, models_directory=broken_models)
    assert embedder.requested_precision == "int8"
    assert embedder.precision == "fp32"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "edgeface.vision.embed"]
    assert len(warnings) == 1 and "falling back" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    np.testing.assert_array_equal(embedder.embed(chips), fp32.embed(chips))


def test_working_int8_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgeface.vision.embed"):
        embedder = Embedder("int8", threads=1, models_directory=MODELS)
    assert embedder.precision == "int8"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_fallback_with_a_corrupted_fp32_file_is_refused(broken_models: Path, tmp_path: Path) -> None:
    """Self-check fails and the FP32 file is damaged too: a one-line ModelFileError, not a broken model."""
    models = tmp_path / "models"
    shutil.copytree(broken_models, models)
    fp32_path = models / MODEL_FILES["fp32"]
    fp32_path.write_bytes(fp32_path.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match=str(fp32_path)) as caught:
        Embedder("int8", models_directory=models)
    _one_line(caught.value)


class _CallSizes:
    """The real runner, remembering how many inputs each call carried."""

    def __init__(self, runner: OnnxRunner) -> None:
        self.runner, self.sizes = runner, []  # type: list[int]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.sizes.append(len(batch))
        return self.runner.run(batch)


@pytest.mark.parametrize("flip", [False, True])
def test_many_faces_go_in_calls_of_at_most_8_inputs(chips: np.ndarray, flip: bool) -> None:
    """20 faces a frame: calls of at most MAX_BATCH_INPUTS model inputs (a face and its mirror are
    two), and the same embeddings as one face at a time."""
    from edgeface.vision.embed import MAX_BATCH_INPUTS

    embedder = Embedder("int8", threads=1, flip=flip, models_directory=MODELS)
    crowd = np.concatenate([chips, chips[:, :, ::-1], chips[:4, ::-1]])
    spy = _CallSizes(embedder._runner)
    embedder._runner = spy  # type: ignore[assignment]
    together = embedder.embed(crowd)
    assert MAX_BATCH_INPUTS == 8 and max(spy.sizes) == MAX_BATCH_INPUTS and sum(spy.sizes) == len(crowd) * (1 + flip)
    one_by_one = np.concatenate([embedder.embed(crowd[i : i + 1]) for i in range(len(crowd))])
    np.testing.assert_allclose(together, one_by_one, rtol=0, atol=1e-5)


def test_threads_are_capped_at_the_usable_cores() -> None:
    import os

    runner = OnnxRunner(MODELS / MODEL_FILES["fp32"], threads=64)
    assert runner.threads == len(os.sched_getaffinity(0))
    assert OnnxRunner(MODELS / MODEL_FILES["fp32"], threads=1).threads == 1
