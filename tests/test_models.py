"""The shipped model files: the manifest vouches for them, and anything altered or missing is refused
with one clear line (library, CLI and ONNX runner)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.errors import ModelFileError
from edgeface.io.models import (
    MANIFEST_NAME,
    MODELS_DIR_ENV,
    read_manifest,
    verified_model_path,
)
from edgeface.io.runtime.onnx import OnnxRunner

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
SHIPPED = json.loads((MODELS / MANIFEST_NAME).read_text())["files"]
NOT_MODELS = {MANIFEST_NAME, "README.md"}


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


def _copy_models(tmp_path: Path, *only: str) -> Path:
    """A copy of models/ (manifest included); with `only`, just those files and the manifest."""
    copy = tmp_path / "models"
    if only:
        copy.mkdir()
        for name in (MANIFEST_NAME, *only):
            shutil.copyfile(MODELS / name, copy / name)
    else:
        shutil.copytree(MODELS, copy)
    return copy


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1])


def _cli(*args: str, models: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != MODELS_DIR_ENV}
    if models is not None:
        env[MODELS_DIR_ENV] = str(models)
    return subprocess.run(
        [sys.executable, "-m", "edgeface.cli", *args], check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("edgeface: error:")]


# --- the shipped files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_manifest_entry_matches_the_shipped_file(name: str) -> None:
    entry = SHIPPED[name]
    data = (MODELS / name).read_bytes()
    assert len(data) == entry["size_bytes"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    for field in ("source", "license", "made_by"):
        assert entry[field].strip(), f"{name}: empty {field}"


def test_every_shipped_file_is_in_the_manifest() -> None:
    shipped = {p.name for p in MODELS.iterdir() if p.is_file() and p.name not in NOT_MODELS}
    assert shipped == set(SHIPPED)
    assert set(read_manifest(MODELS)) == set(SHIPPED)


def test_verify_command_accepts_the_shipped_files() -> None:
    result = _cli("models", "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == [f"ok  {name}" for name in SHIPPED]


def test_verify_command_refuses_a_corrupted_copy(tmp_path: Path) -> None:
    models = _copy_models(tmp_path)
    _flip_byte(models / "dlib_resnet_v1_int8.onnx")
    result = _cli("models", "verify", models=models)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = _error_lines(result.stderr)
    assert str(models / "dlib_resnet_v1_int8.onnx") in line and "corrupted" in line


# --- verified_model_path -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHIPPED))
@pytest.mark.parametrize("damage", ["flip first byte", "flip middle byte", "flip last byte", "truncate", "delete"])
def test_altered_or_missing_file_is_refused(tmp_path: Path, name: str, damage: str) -> None:
    models = _copy_models(tmp_path, name)
    path = models / name
    if damage == "truncate":
        _truncate(path)
    elif damage == "delete":
        path.unlink()
    else:
        _flip_byte(path, {"flip first byte": 0, "flip middle byte": None, "flip last byte": -1}[damage])
    with pytest.raises(ModelFileError) as caught:
        verified_model_path(name, models)
    message = _one_line(caught.value)
    assert str(path) in message
    assert ("missing" if damage == "delete" else "corrupted") in message


def test_intact_copy_is_accepted(tmp_path: Path) -> None:
    models = _copy_models(tmp_path)
    for name in SHIPPED:
        assert verified_model_path(name, models) == models / name


def test_file_altered_after_a_successful_check_is_refused(tmp_path: Path) -> None:
    """The sha256 check is cached per file; a file rewritten since must be checked again."""
    models = _copy_models(tmp_path, "embedder_selfcheck.npz")
    path = models / "embedder_selfcheck.npz"
    assert verified_model_path(path.name, models) == path
    _flip_byte(path)
    with pytest.raises(ModelFileError, match="corrupted"):
        verified_model_path(path.name, models)
    shutil.copyfile(MODELS / path.name, path)
    assert verified_model_path(path.name, models) == path


def test_name_not_in_manifest_is_refused(tmp_path: Path) -> None:
    models = _copy_models(tmp_path, "dlib_resnet_v1_fp32.onnx")
    (models / "extra.onnx").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="extra.onnx") as caught:
        verified_model_path("extra.onnx", models)
    _one_line(caught.value)


@pytest.mark.parametrize(
    "content",
    ["", "{not json", "[]", "null", '{"files": []}', '{"files": {"a.onnx": "x"}}', '{"files": {"a.onnx": {"sha256": "00"}}}'],
)
def test_unreadable_manifest_is_refused(tmp_path: Path, content: str) -> None:
    models = _copy_models(tmp_path, "dlib_resnet_v1_fp32.onnx")
    (models / MANIFEST_NAME).write_text(content)
    with pytest.raises(ModelFileError, match="manifest") as caught:
        verified_model_path("dlib_resnet_v1_fp32.onnx", models)
    _one_line(caught.value)


def test_missing_manifest_is_refused(tmp_path: Path) -> None:
    models = _copy_models(tmp_path, "dlib_resnet_v1_fp32.onnx")
    (models / MANIFEST_NAME).unlink()
    with pytest.raises(ModelFileError, match="manifest") as caught:
        verified_model_path("dlib_resnet_v1_fp32.onnx", models)
    _one_line(caught.value)


# --- the ONNX runner ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["garbage", "empty", "half", "missing"])
def test_onnx_runner_refuses_a_bad_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "model.onnx"
    if content == "garbage":
        path.write_bytes(b"this is not an ONNX model\n" * 40)
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "half":
        data = (MODELS / "dlib_resnet_v1_fp32.onnx").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as caught:
        OnnxRunner(path)
    assert str(path) in _one_line(caught.value)


@pytest.mark.parametrize("threads", [0, -1])
def test_onnx_runner_refuses_a_bad_thread_count(threads: int) -> None:
    with pytest.raises(ValueError, match="threads") as caught:
        OnnxRunner(MODELS / "dlib_resnet_v1_fp32.onnx", threads=threads)
    _one_line(caught.value)


def test_onnx_runner_loads_the_shipped_embedder() -> None:
    runner = OnnxRunner(MODELS / "dlib_resnet_v1_fp32.onnx", threads=1)
    assert runner.input_shape == (-1, 3, 150, 150)
    [out] = runner.run(np.zeros((2, 3, 150, 150), np.float32))
    assert out.shape == (2, 128) and out.dtype == np.float32 and np.isfinite(out).all()


# --- `edgeface embed` with a bad model folder ----------------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "grey.jpg"
    assert cv2.imwrite(str(path), np.full((240, 320, 3), 128, np.uint8))
    return path


@pytest.mark.parametrize(
    ("name", "damage", "precision"),
    [
        ("dlib_resnet_v1_int8.onnx", "flip", None),
        ("embedder_selfcheck.npz", "truncate", None),
        ("shape_predictor_5.npz", "delete", "shape_predictor"),
        ("blazeface_short_range.tflite", "flip", None),
        ("dlib_resnet_v1_fp32.onnx", "truncate", "fp32"),
    ],
)
def test_embed_command_stops_on_a_bad_model_with_one_line(
    tmp_path: Path, image: Path, name: str, damage: str, precision: str | None
) -> None:
    models = _copy_models(tmp_path)
    {"flip": _flip_byte, "truncate": _truncate, "delete": Path.unlink}[damage](models / name)
    if precision == "shape_predictor":  # only loaded when the config asks for it
        config = tmp_path / "config.yaml"
        config.write_text("recognition: {alignment: {method: shape_predictor}}\n")
        extra = ["--config", str(config)]
    else:
        extra = ["--precision", precision] if precision else []
    result = _cli("embed", str(image), *extra, models=models, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = _error_lines(result.stderr)
    assert str(models / name) in line
    assert ("missing" if damage == "delete" else "corrupted") in line
    assert result.stdout == ""


def test_embed_command_runs_with_an_intact_copy(tmp_path: Path, image: Path) -> None:
    """The same call as above succeeds when nothing is damaged (so the failures come from the damage)."""
    result = _cli("embed", str(image), models=_copy_models(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"path": str(image), "faces": [], "error": None}]
