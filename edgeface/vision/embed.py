"""Face embedder: dlib's ResNet (ONNX, FP32 or static INT8) on 150x150 chips -> unit 128-d vectors.

INT8 kernels differ per CPU (x86 without VNNI saturates int16 sums; ARM has its own paths), so an
INT8 embedder checks itself when it loads: it embeds a few fixed inputs shipped with the models and
compares them with the FP32 descriptors recorded at build time. When they disagree it falls back to
FP32 with a warning: a board must never run a silently broken model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from edgeface.errors import ModelFileError
from edgeface.io.models import models_dir, verified_model_path
from edgeface.io.runtime.onnx import OnnxRunner

logger = logging.getLogger(__name__)

Precision = Literal["int8", "fp32"]

MODEL_FILES: dict[str, str] = {"fp32": "dlib_resnet_v1_fp32.onnx", "int8": "dlib_resnet_v1_int8.onnx"}
SELFCHECK_FILE = "embedder_selfcheck.npz"
SELFCHECK_MAX_DISTANCE = 0.15
"""Largest allowed euclidean distance between INT8 and FP32 raw descriptors on the self-check inputs.
A correct INT8 model stays under ~0.07 on every input we measured; dlib's same-person threshold is 0.6,
and the overflow this guards against moves descriptors by up to 0.5."""

MAX_BATCH_INPUTS = 8
"""Model inputs per onnxruntime call (a chip and, with flip on, its mirror are two): all due faces in
one call made private memory grow 1.5 MB per chip (148-160 MB at 20 faces a frame, issue 14), and a
batch of 8 is already as fast per face as any larger one."""

CHIP_SHAPE = (150, 150, 3)
EMBEDDING_DIM = 128


def chips_to_input(chips_bgr: np.ndarray) -> np.ndarray:
    """(n, 150, 150, 3) uint8 BGR chips -> the graph's float32 (n, 3, 150, 150) RGB input."""
    return np.ascontiguousarray(chips_bgr[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def embedder_runner(path: Path, threads: int) -> OnnxRunner:
    """The embedder's activations in the process's onnxruntime arena (extended by what a run asks for),
    reused call after call. Without an arena they are malloc'd and freed on every call, between the
    frame's other blocks, and glibc's heap kept the holes; onnxruntime's own arena (doubling) held
    more than it saved on few faces. Measured (README, issue 14): peak private memory at 20 faces a
    frame with new people coming 92 MB (97 without an arena, 90 with the doubling one), peak RSS on
    hamilton_clip 184 MB (188, 192); calls as fast (0.98-1.01 of the time at 1-8 chips). The
    memory pattern stays off: a second copy of the activations next to the arena's."""
    return OnnxRunner(path, threads=threads, memory_pattern=False, process_arena=True)


class SelfCheckFailed(ModelFileError):
    pass


def self_check(runner: OnnxRunner, directory: Path | None = None) -> float:
    """Largest INT8-vs-FP32 descriptor distance on the shipped self-check inputs; raises SelfCheckFailed
    when it is above SELFCHECK_MAX_DISTANCE."""
    path = verified_model_path(SELFCHECK_FILE, directory)
    with np.load(path) as data:
        chips, expected = data["chips"], data["fp32_descriptors"]
    try:
        # Two chips per call, as a face with flip on: a batch of all eight would raise the process's
        # peak memory by its activations (~5 MB) for nothing.
        got = np.concatenate([runner.run(chips_to_input(chips[i : i + 2]))[0] for i in range(0, len(chips), 2)])
        distance = float(np.linalg.norm(got - expected, axis=1).max())
    except Exception as error:  # an operator this onnxruntime build lacks, a wrong output shape, ...
        raise SelfCheckFailed(f"INT8 embedder failed to run on this CPU ({type(error).__name__})") from error
    if not np.isfinite(distance) or distance > SELFCHECK_MAX_DISTANCE:
        raise SelfCheckFailed(f"INT8 embedder disagrees with FP32 on this CPU (distance {distance:.3f})")
    return distance


class Embedder:
    """`embed(chips)` -> (n, 128) float32 unit vectors (euclidean distance 0.6 on dlib's raw scale is
    about 0.47 on the unit sphere for typical descriptor norms; thresholds are calibrated per use)."""

    def __init__(
        self,
        precision: Precision = "int8",
        threads: int = 1,
        flip: bool = False,
        models_directory: Path | None = None,
    ) -> None:
        if precision not in MODEL_FILES:
            raise ValueError(f"precision must be 'int8' or 'fp32', got {precision!r}")
        directory = models_directory or models_dir()
        self.flip = flip
        self.requested_precision: Precision = precision
        self.precision: Precision = precision
        self.selfcheck_distance: float | None = None
        runner = embedder_runner(verified_model_path(MODEL_FILES[precision], directory), threads)
        if precision == "int8":
            try:
                self.selfcheck_distance = self_check(runner, directory)
            except SelfCheckFailed as error:
                logger.warning("%s; falling back to the FP32 embedder", error)
                runner = embedder_runner(verified_model_path(MODEL_FILES["fp32"], directory), threads)
                self.precision = "fp32"
        self._runner = runner

    def raw_descriptors(self, chips_bgr: np.ndarray) -> np.ndarray:
        """dlib's raw (n, 128) descriptors (not normalised; flip-averaged when flip is on)."""
        chips_bgr = np.asarray(chips_bgr)
        if chips_bgr.ndim != 4 or chips_bgr.shape[1:] != CHIP_SHAPE or chips_bgr.dtype != np.uint8:
            raise ValueError(f"chips must be uint8 (n, 150, 150, 3), got {chips_bgr.dtype} {chips_bgr.shape}")
        if len(chips_bgr) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        per_call = MAX_BATCH_INPUTS // 2 if self.flip else MAX_BATCH_INPUTS
        return np.concatenate([self._descriptors(chips_bgr[i : i + per_call]) for i in range(0, len(chips_bgr), per_call)])

    def _descriptors(self, chips_bgr: np.ndarray) -> np.ndarray:
        batch = chips_to_input(chips_bgr)
        if not self.flip:
            return self._runner.run(batch)[0]
        both = self._runner.run(np.concatenate([batch, batch[..., ::-1]]))[0]
        return (both[: len(batch)] + both[len(batch) :]) / 2

    def embed(self, chips_bgr: np.ndarray) -> np.ndarray:
        return normalise(self.raw_descriptors(chips_bgr))
