"""deploy/: the example config, the install scripts, and the aarch64 checks (wheels on PyPI; an
emulated run under qemu-user, opt-in)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeface.config import load_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SCRIPTS = [DEPLOY / "install-pi.sh", DEPLOY / "install-jetson.sh", DEPLOY / "lib.sh"]
WHEELS_TOOL = REPO / "tools" / "check_aarch64_wheels.py"
EMULATION_TOOL = REPO / "tools" / "emulated_aarch64_check.py"
LFW = Path(os.environ.get("EDGEFACE_DATA", REPO.parent / "shared" / "data")) / "lfw" / "images"


def test_example_config_loads() -> None:
    config = load_config(DEPLOY / "edgeface.example.yaml")
    assert config.station_id == "front-door"
    assert config.recognition.embedder.precision == "int8"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_install_scripts_parse(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_install_scripts_pass_shellcheck() -> None:
    result = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SCRIPTS[:2], ids=lambda p: p.name)
def test_install_scripts_refuse_bad_options_before_touching_anything(script: Path) -> None:
    result = subprocess.run(["bash", str(script), "--mqtt-url", "http://broker"], check=False, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "install: error: --mqtt-url must start with mqtt:// or mqtts://, got http://broker"
    help_text = subprocess.run(["bash", str(script), "--help"], check=False, capture_output=True, text=True)
    assert help_text.returncode == 0 and "--source SRC" in help_text.stdout


def run_wheels_tool(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, str(WHEELS_TOOL), *args], check=False, capture_output=True, text=True, timeout=600)
    if result.returncode == 2 and "cannot reach the package index" in result.stderr:
        pytest.skip(result.stderr.strip())
    return result


@pytest.mark.slow
def test_every_runtime_dependency_has_aarch64_wheels_for_311_and_310() -> None:
    result = run_wheels_tool()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "CPython 3.11 aarch64, Raspberry Pi OS bookworm (glibc 2.36): all wheels found" in lines
    assert "CPython 3.10 aarch64, JetPack 6 / Ubuntu 22.04 (glibc 2.35): all wheels found" in lines
    for package in ("numpy", "onnxruntime", "ai-edge-litert", "opencv-python-headless", "pydantic-core"):
        found = [line for line in lines if line.split()[1:2] == [package]]
        assert len(found) == 2, package  # one per Python version
        assert all(line.split()[0] == "ok" and "aarch64" in line for line in found), found


@pytest.mark.slow
def test_a_dependency_without_an_aarch64_wheel_is_reported(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\nversion = "0"\n'
                         'dependencies = ["tqdm>=4", "pywin32>=300", "pyyaml; platform_system == \'Windows\'"]\n')
    result = run_wheels_tool("--pyproject", str(pyproject), "--target", "3.11")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].endswith("MISSING pywin32")
    assert any(line.split()[:2] == ["ok", "tqdm"] for line in result.stdout.splitlines())
    assert "pyyaml" not in result.stdout  # its marker excludes Linux


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EDGEFACE_EMULATED_AARCH64") != "1",
                    reason="set EDGEFACE_EMULATED_AARCH64=1 to run (downloads ~130 MB once, ~800 MB unpacked in ~/.cache/edgeface, ~3 minutes)")
def test_emulated_aarch64_matches_x86() -> None:
    if not LFW.is_dir():
        pytest.skip(f"no LFW images at {LFW}")
    result = subprocess.run([sys.executable, str(EMULATION_TOOL), "--lfw", str(LFW), "--count", "3"],
                            check=False, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    emulated = [line for line in result.stdout.splitlines() if line.startswith("aarch64 ")]
    assert len(emulated) == 2 and all(line.endswith("-> ok") and "INT8 self-check passed" in line for line in emulated)
