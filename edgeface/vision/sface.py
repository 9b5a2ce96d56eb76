"""SFace, the second embedder: its 112x112 ArcFace-template alignment and its onnxruntime embedder.

SFace (OpenCV Zoo, MobileFaceNet family) was trained on faces warped by a least-squares similarity
taking five points (eye centres, nose tip, mouth corners) onto the ArcFace 112x112 template
(`ARCFACE_TEMPLATE`, what OpenCV's FaceRecognizerSF.alignCrop uses). BlazeFace gives eye centres,
nose tip and mouth centre, not quite the same anatomical points, so each BlazeFace model's four
keypoints have their own calibrated place on that chip (`SFACE_BLAZEFACE_TEMPLATES`): the mean over
LFW faces of people in no pair list of the keypoints mapped into the chip alignCrop makes from
YuNet's five points (tools/calibrate_sface_template.py; YuNet from the same wheel, used only there).

The embedder takes (n, 112, 112, 3) uint8 BGR chips to unit 128-d vectors; an INT8 model checks
itself at load time against FP32 features shipped with it and falls back to FP32, as the dlib
embedder does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from edgeface.errors import ModelFileError
from edgeface.io.models import models_dir, read_manifest, verified_model_path
from edgeface.io.runtime.onnx import OnnxRunner
from edgeface.vision.align import BLAZEFACE_POINTS, BLAZEFACE_TEMPLATES, blazeface_landmarks, similarity_transform
from edgeface.vision.detections import FaceDetections
from edgeface.vision.embed import chips_to_input, normalise

if TYPE_CHECKING:
    from edgeface.vision.blazeface import KeypointRefiner

logger = logging.getLogger(__name__)

SFACE_CHIP_SIZE = 112
SFACE_CHIP_SHAPE = (SFACE_CHIP_SIZE, SFACE_CHIP_SIZE, 3)
SFACE_EMBEDDING_DIM = 128
SFACE_MODEL_ID = "sface_2021dec"
"""Tag for templates made by this embedder (phase 2: templates carry each model's id)."""

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
"""The ArcFace 112x112 five-point template (subject's right eye, left eye, nose tip, right and left
mouth corner), as OpenCV's FaceRecognizerSF.alignCrop places them."""

SFACE_BLAZEFACE_TEMPLATES: dict[str, np.ndarray] = {
    "short": np.array([[36.5, 53.7], [73.9, 53.8], [55.1, 74.6], [55.0, 94.5]]),
    "full": np.array([[36.8, 53.5], [73.4, 53.7], [55.3, 75.4], [55.4, 94.2]]),
}
"""Where each BlazeFace model's right eye, left eye, nose tip and mouth centre land on the SFace chip
that alignCrop makes from YuNet's five points: the mean over 800 LFW faces of people in no pair list
(tools/calibrate_sface_template.py prints them)."""

SFACE_FILES: dict[str, str] = {"fp32": "sface_2021dec_fp32.onnx", "int8": "sface_2021dec_int8.onnx"}
SFACE_SELFCHECK_FILE = "sface_selfcheck.npz"
SFACE_SELFCHECK_MIN_COSINE = 0.95
"""Least cosine similarity between INT8 and FP32 features on every self-check input (synthetic,
face-like chips). The shipped INT8 SFace gives 0.989 at worst on them here (0.9957 on average on real
LFW chips); a kernel that saturates or an operator that misbehaves scrambles the feature far below."""

Precision = Literal["int8", "fp32"]


def sface_chip_matrix(template: np.ndarray, image_points: np.ndarray) -> np.ndarray:
    """2x3 matrix taking image (x, y) to SFace chip pixel (col, row): the least-squares similarity from
    the image points to their template places, as alignCrop computes it."""
    return similarity_transform(image_points, template)


def extract_sface_chip(image_bgr: np.ndarray, image_to_chip: np.ndarray) -> np.ndarray:
    """The 112x112 chip, bilinear, outside pixels black (alignCrop's warpAffine)."""
    return cv2.warpAffine(image_bgr, np.asarray(image_to_chip, np.float64), (SFACE_CHIP_SIZE, SFACE_CHIP_SIZE),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def _model_of_dlib_template(template: np.ndarray) -> str:
    for model, dlib_template in BLAZEFACE_TEMPLATES.items():
        if np.array_equal(template, dlib_template):
            return model
    raise ValueError("landmarks were not placed on a BlazeFace template (alignment method must be 'blazeface')")


class SFaceAligner:
    """BlazeFace detections -> (n, 112, 112, 3) uint8 BGR SFace chips.

    `align` places each face by its detector keypoints (and, with a refiner, by the re-detected ones
    too, each on its own model's template, as edgeface.vision.align.Aligner does). `align_landmarks` reuses
    the landmarks an Aligner already computed (`Aligner.landmarks`), so the refiner runs once per face."""

    def __init__(self, detector_model: str = "short", refiner: KeypointRefiner | None = None) -> None:
        if detector_model not in SFACE_BLAZEFACE_TEMPLATES:
            raise ValueError(f"detector model must be one of {sorted(SFACE_BLAZEFACE_TEMPLATES)}, got {detector_model!r}")
        self.detector_model = detector_model
        self.refiner = refiner

    def landmarks(self, image: np.ndarray, detections: FaceDetections) -> tuple[np.ndarray, np.ndarray]:
        """(image points (n, k, 2), SFace chip templates (n, k, 2))."""
        return blazeface_landmarks(image, detections, SFACE_BLAZEFACE_TEMPLATES[self.detector_model],
                                   SFACE_BLAZEFACE_TEMPLATES, self.refiner)

    def align_points(self, image: np.ndarray, points: np.ndarray, templates: np.ndarray) -> np.ndarray:
        image = _as_bgr(image)
        chips = [extract_sface_chip(image, sface_chip_matrix(t, p)) for t, p in zip(templates, points)]
        return np.stack(chips) if chips else np.zeros((0, *SFACE_CHIP_SHAPE), np.uint8)

    def align(self, image: np.ndarray, detections: FaceDetections) -> np.ndarray:
        return self.align_points(image, *self.landmarks(image, detections))

    def align_landmarks(self, image: np.ndarray, points: np.ndarray, dlib_templates: np.ndarray) -> np.ndarray:
        """Chips from an Aligner's (points, dlib-chip templates), each template swapped for SFace's of the
        same BlazeFace model, point for point."""
        k = len(BLAZEFACE_POINTS)
        templates = np.empty_like(np.asarray(dlib_templates, np.float64))
        for face, face_templates in enumerate(dlib_templates):
            for start in range(0, len(face_templates), k):
                model = _model_of_dlib_template(face_templates[start : start + k])
                templates[face, start : start + k] = SFACE_BLAZEFACE_TEMPLATES[model]
        return self.align_points(image, points, templates)


class SFaceSelfCheckFailed(ModelFileError):
    pass


def sface_self_check(runner: OnnxRunner, directory: Path | None = None) -> float:
    """Least INT8-vs-FP32 cosine on the shipped self-check inputs; raises SFaceSelfCheckFailed below
    SFACE_SELFCHECK_MIN_COSINE."""
    path = verified_model_path(SFACE_SELFCHECK_FILE, directory)
    with np.load(path) as data:
        chips, expected = data["chips"], data["fp32_features"]
    try:
        got = np.concatenate([runner.run(chips_to_input(chips[i : i + 1]))[0] for i in range(len(chips))])
        cosine = float((normalise(got) * normalise(expected)).sum(axis=1).min())
    except Exception as error:  # an operator this onnxruntime build lacks, a wrong output shape, ...
        raise SFaceSelfCheckFailed(f"INT8 SFace failed to run on this CPU ({type(error).__name__})") from error
    if not np.isfinite(cosine) or cosine < SFACE_SELFCHECK_MIN_COSINE:
        raise SFaceSelfCheckFailed(f"INT8 SFace disagrees with FP32 on this CPU (cosine {cosine:.3f})")
    return cosine


def shipped_precisions(directory: Path | None = None) -> list[Precision]:
    """The SFace precisions the models folder ships (INT8 only when it holds accuracy)."""
    entries = read_manifest(directory or models_dir())
    return [p for p in ("int8", "fp32") if SFACE_FILES[p] in entries]  # type: ignore[misc]


class SFaceEmbedder:
    """`embed(chips)` -> (n, 128) float32 unit vectors; compare with the cosine (dot product)."""

    model_id = SFACE_MODEL_ID

    def __init__(self, precision: Precision = "int8", threads: int = 1, models_directory: Path | None = None) -> None:
        if precision not in SFACE_FILES:
            raise ValueError(f"precision must be 'int8' or 'fp32', got {precision!r}")
        directory = models_directory or models_dir()
        if precision == "int8" and "int8" not in shipped_precisions(directory):
            precision = "fp32"
        self.requested_precision: Precision = precision
        self.precision: Precision = precision
        self.selfcheck_cosine: float | None = None
        runner = OnnxRunner(verified_model_path(SFACE_FILES[precision], directory), threads=threads,
                            memory_arena=True, memory_pattern=False)  # steady memory (edgeface.io.runtime.onnx)
        if precision == "int8":
            try:
                self.selfcheck_cosine = sface_self_check(runner, directory)
            except SFaceSelfCheckFailed as error:
                logger.warning("%s; falling back to the FP32 SFace", error)
                runner = OnnxRunner(verified_model_path(SFACE_FILES["fp32"], directory), threads=threads, memory_arena=True,
                                    memory_pattern=False)
                self.precision = "fp32"
        self._runner = runner

    def raw_features(self, chips_bgr: np.ndarray) -> np.ndarray:
        """SFace's raw (n, 128) features (OpenCV's FaceRecognizerSF.feature)."""
        chips_bgr = np.asarray(chips_bgr)
        if chips_bgr.ndim != 4 or chips_bgr.shape[1:] != SFACE_CHIP_SHAPE or chips_bgr.dtype != np.uint8:
            raise ValueError(f"chips must be uint8 (n, 112, 112, 3), got {chips_bgr.dtype} {chips_bgr.shape}")
        if len(chips_bgr) == 0:
            return np.zeros((0, SFACE_EMBEDDING_DIM), np.float32)
        # One chip per call: onnxruntime's activations grow with the batch (peak RSS +11 MB per chip
        # measured here), and the camera loop's memory budget matters more than batching's few percent.
        return np.concatenate([self._runner.run(chips_to_input(chips_bgr[i : i + 1]))[0] for i in range(len(chips_bgr))])

    def embed(self, chips_bgr: np.ndarray) -> np.ndarray:
        return normalise(self.raw_features(chips_bgr))


class SecondEmbedder:
    """SFace as the second opinion: its chips from the landmarks the dlib aligner placed (one landmark
    pass per face), its embeddings on demand."""

    model_id = SFACE_MODEL_ID

    def __init__(self, precision: Precision = "int8", threads: int = 1, refiner: KeypointRefiner | None = None,
                 detector_model: str = "short") -> None:
        self.aligner = SFaceAligner(detector_model, refiner)
        self._precision: Precision = precision
        self._threads = threads
        self._embedder: SFaceEmbedder | None = None

    @property
    def embedder(self) -> SFaceEmbedder:
        """Loaded on first use (~33 MB): a station whose gallery has no SFace templates, or that never meets
        a face dlib is unsure about, never loads it."""
        if self._embedder is None:
            self._embedder = SFaceEmbedder(self._precision, self._threads)
        return self._embedder

    @property
    def model_version(self) -> str:
        """The precision actually running (INT8 falls back to FP32 when its self-check fails)."""
        return self.embedder.precision

    def chips(self, image: np.ndarray, detections: FaceDetections, points: np.ndarray | None,
              dlib_templates: np.ndarray | None) -> np.ndarray:
        """SFace chips from an Aligner's landmarks when they were placed on BlazeFace templates, else
        (shape-predictor alignment) from the detections' own keypoints."""
        if points is not None and dlib_templates is not None:
            try:
                return self.aligner.align_landmarks(image, points, dlib_templates)
            except ValueError:
                pass
        return self.aligner.align(image, detections)

    def embed(self, chips_bgr: np.ndarray) -> np.ndarray:
        return self.embedder.embed(chips_bgr)
