from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeface.eval.bench import (
    DATA_DIR,
    FRAME_HEIGHT,
    FRAME_WIDTH,
    ModelBench,
    bench_models,
    fit_frame,
    median_ms,
)

REQUIRED_MS = ("detect_ms", "embed_fp32_ms", "embed_int8_ms")
PER_THREAD_MS = (
    "detect_short",
    "detect_full",
    "align_blazeface",
    "align_shape_predictor",
    "embed_fp32",
    "embed_int8",
    "embed_fp32_batch8",
    "embed_int8_batch8",
)
RATIOS = ("int8_fp32_ratio", "int8_fp32_ratio_batch8")
METADATA = ("cpu_model", "onnxruntime_version", "litert_version", "frame_source", "repeats")


def _timing_keys() -> list[str]:
    keys = list(REQUIRED_MS)
    keys += [f"{name}_{threads}t_ms" for name in PER_THREAD_MS for threads in (1, 2)]
    keys += [f"{name}_{threads}t" for name in RATIOS for threads in (1, 2)]
    return keys


def _check_figures(figures: dict[str, object]) -> None:
    for key in _timing_keys():
        assert key in figures, key
        value = figures[key]
        assert isinstance(value, float), (key, value)
        assert math.isfinite(value) and value > 0, (key, value)
    for key in METADATA:
        assert figures.get(key), key
    assert figures["detect_ms"] == figures["detect_short_1t_ms"]
    assert figures["embed_int8_ms"] == figures["embed_int8_1t_ms"]
    assert figures["embed_fp32_ms"] == figures["embed_fp32_1t_ms"]
    int8_ms, fp32_ms = float(figures["embed_int8_1t_ms"]), float(figures["embed_fp32_1t_ms"])  # type: ignore[arg-type]
    assert figures["int8_fp32_ratio_1t"] == pytest.approx(int8_ms / fp32_ms, rel=1e-2)


def test_median_ms_is_the_median_of_the_timed_calls() -> None:
    calls: list[int] = []
    sleeps = iter([0, 0, 0.001, 0.020, 0.002])  # two warm-up calls, then 1 ms, 20 ms, 2 ms

    def call() -> None:
        calls.append(1)
        import time

        time.sleep(next(sleeps))

    result = median_ms(call, repeats=3, warmup=2)
    assert len(calls) == 5
    assert 1.9 <= result < 15.0  # the 2 ms call, never the 20 ms outlier


@pytest.mark.parametrize("shape", [(1428, 2000, 3), (250, 250, 3), (1200, 626, 3), (100, 100, 3)])
def test_fit_frame_gives_exactly_640x480(shape: tuple[int, int, int]) -> None:
    frame = fit_frame(np.zeros(shape, np.uint8))
    assert frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3)
    assert frame.dtype == np.uint8


@pytest.mark.slow
def test_bench_models_in_process() -> None:
    bench = bench_models(repeats=3)
    assert isinstance(bench, ModelBench)
    figures = bench.as_dict()
    _check_figures(figures)
    json.dumps(figures, allow_nan=False)
    if (DATA_DIR / "people").is_dir():
        assert figures["frame_source"] != "synthetic"
        assert bench.frame_faces >= 1
    lines = bench.table_lines()
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    assert any(str(figures["frame_source"]) in line for line in lines)
    assert any("detector short range" in line for line in lines)
    assert any("INT8/FP32" in line for line in lines)
    # the figures rows share one column layout
    rows = [line for line in lines if line.endswith(" ms")]
    assert len(rows) == len(PER_THREAD_MS)
    assert len({len(line) for line in rows}) == 1


@pytest.mark.slow
def test_bench_models_without_data_uses_a_synthetic_frame(tmp_path: Path) -> None:
    bench = bench_models(repeats=1, data_dir=tmp_path)
    assert bench.frame_source == "synthetic"
    _check_figures(bench.as_dict())


def test_bench_models_refuses_zero_repeats() -> None:
    with pytest.raises(ValueError, match="repeats"):
        bench_models(repeats=0)


@pytest.mark.slow
def test_cli_bench_models_json() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeface.cli", "bench", "models", "--repeats", "3", "--json"], check=False,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    figures = json.loads(lines[-1])
    _check_figures(figures)
    # --json keeps stdout to the JSON line; the table goes to stderr
    assert len(lines) == 1
    assert "detector short range" in result.stderr


@pytest.mark.slow
def test_cli_bench_models_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeface.cli", "bench", "models", "--repeats", "1"], check=False,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "embed INT8, 1 chip per call" in result.stdout
    assert not result.stdout.lstrip().startswith("{")


def test_bench_models_finds_its_data_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed package is nowhere near the data: ../shared/data is looked for from the working
    directory (the repository root), and --data names it outright."""
    from edgeface.errors import EdgefaceError
    from edgeface.eval.bench import find_data_dir

    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert find_data_dir() == data
    assert find_data_dir(tmp_path) == tmp_path
    with pytest.raises(EdgefaceError, match="no such folder"):
        find_data_dir(tmp_path / "absent")
