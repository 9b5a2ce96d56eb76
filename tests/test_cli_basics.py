"""The `edgeface` command as a new user meets it: the quick start on a machine without a camera, the
exit-code rule of every command, `--version`. Real processes, real models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeface import __version__


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFACE_", "OPENCV_"))}
    return env


def test_quick_start_without_a_camera_exits_1_at_once_with_one_line(tmp_path: Path) -> None:
    # the README's `edgeface run --source 0`, on a machine where that camera does not exist
    index = next(i for i in range(100) if not Path(f"/dev/video{i}").exists())
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "edgeface.cli", "run", "--source", str(index)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=_env())
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert took < 5.0, took
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # no OpenCV warnings, no retries, the reason printed once
    assert lines[0].startswith(f"edgeface: error: no such camera device /dev/video{index} (")
    assert list(tmp_path.iterdir()) == []  # no gallery.db (or anything else) left behind


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "edgeface.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"edgeface {__version__}"
    from importlib.metadata import version

    assert version("edgeface") == __version__  # the package's metadata and the module agree


def test_wrong_usage_exits_2() -> None:
    done = subprocess.run([sys.executable, "-m", "edgeface.cli", "run"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--source" in done.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_one_shot_command_stopped_by_a_signal_exits_128_plus_its_number(tmp_path: Path, sig: int, code: int) -> None:
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.full((120, 160, 3), 128, np.uint8))
    process = subprocess.Popen([sys.executable, "-m", "edgeface.cli", "embed", "--jsonl", *["a.png"] * 20000],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # the models are loaded and the work has begun
        assert '"path": "a.png"' in first
        process.send_signal(sig)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, err
    assert "Traceback" not in err
    assert out.count("\n") < 19999  # it stopped half-way
