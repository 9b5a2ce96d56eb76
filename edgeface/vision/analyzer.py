"""Detect -> align -> embed on one image, with the stages injected; and the camera loop's models.

`camera_models(config)` builds the detector (tiled when the config says so), aligner and embedder of
the camera loop; `FaceAnalyzer.for_camera(config)` runs those same models on a photo, so that enrolled
templates come from the chips the probes they are matched against come from (enrollment, on the
command line and over MQTT). `FaceAnalyzer.from_config` is the photo commands' analyzer (identify,
embed, eval): the configured detector at its area resize, every face's keypoints refined.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from edgeface.vision.detections import FaceDetections

if TYPE_CHECKING:
    from edgeface.config import Config, RecognitionConfig
    from edgeface.vision.align import Aligner
    from edgeface.vision.embed import Embedder
    from edgeface.vision.sface import SecondEmbedder
    from edgeface.vision.shared import SharedModels


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> FaceDetections: ...


@dataclass(frozen=True)
class AnalyzedFaces:
    """Every face found in one image: detections, aligned chips (n, 150, 150, 3) and embeddings (n, 128);
    with a second embedder (SFace), its chips (n, 112, 112, 3) and embeddings (n, 128) too."""

    detections: FaceDetections
    chips: np.ndarray
    embeddings: np.ndarray
    second_chips: np.ndarray | None = None
    second_embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.detections)


@dataclass(frozen=True)
class CameraModels:
    """The camera loop's detector (tiled when configured), aligner (with its keypoint refiner) and embedder."""

    detector: Any
    aligner: Aligner
    embedder: Embedder
    second: SecondEmbedder | None = None
    """SFace, the second opinion (None when recognition.second_opinion is off)."""


def second_embedder(config: RecognitionConfig, refiner: Any, detector_model: str,
                    threads: int | None = None) -> SecondEmbedder | None:
    """SFace at the embedder's precision, unless recognition.second_opinion is off."""
    if config.second_opinion == "off":
        return None
    from edgeface.vision.sface import SecondEmbedder

    return SecondEmbedder(config.embedder.precision, threads or config.embedder.threads, refiner=refiner,
                          detector_model=detector_model)


def camera_models(config: Config, *, wrap_runner: Callable[[Any], Any] | None = None,
                  threads: int | None = None, shared: SharedModels | None = None) -> CameraModels:
    """The models of the camera loop from a config. `wrap_runner` wraps every detector model runner (the
    detector's and the keypoint refiner's; e.g. in a TimedRunner); `threads` overrides the embedder's
    (and detectors') thread count; `shared`: the model runners and the embedder several cameras share
    (each camera still gets detector objects of its own: they keep per-frame state)."""
    from edgeface.vision.align import Aligner
    from edgeface.vision.blazeface import litert_runner, make_detector, make_refiner
    from edgeface.vision.embed import Embedder
    from edgeface.vision.tiling import TiledDetector

    recognition, p = config.recognition, config.pipeline
    n_threads = threads or recognition.embedder.threads
    runner_for = shared.runner if shared is not None else litert_runner
    # Video frames are shrunk for the detector the fast way (bilinear, as MediaPipe does; see edgeface.vision.blazeface).
    detector: Any = make_detector(recognition.detector.model, min_score=recognition.detector.min_score,
                                  threads=n_threads, resize="fast", wrap_runner=wrap_runner, runner_for=runner_for)
    template_model = detector.model
    if p.detect_tiles_x * p.detect_tiles_y > 1:
        detector = TiledDetector(detector, p.detect_tiles_x, p.detect_tiles_y, p.detect_tile_overlap_frac,
                                 min_side_px_for_tiles=p.detect_tiles_min_side_px,
                                 work_long_side_px=p.detect_work_long_side_px)
    refiner = make_refiner(p.refine_face_max_frac, threads=n_threads, wrap_runner=wrap_runner, runner_for=runner_for)
    embedder: Any = shared.embedder(recognition.embedder, n_threads) if shared is not None else \
        Embedder(precision=recognition.embedder.precision, threads=n_threads, flip=recognition.embedder.flip)
    return CameraModels(
        detector,
        Aligner(method=recognition.alignment.method, detector_model=template_model, refiner=refiner),
        embedder,
        shared.second_embedder(recognition, refiner, template_model, n_threads) if shared is not None else
        second_embedder(recognition, refiner, template_model, n_threads),
    )


class FaceAnalyzer:
    def __init__(self, detector: Detector, aligner: Aligner, embedder: Embedder,
                 lock: threading.Lock | None = None, second: SecondEmbedder | None = None) -> None:
        self.detector = detector
        self.aligner = aligner
        self.embedder = embedder
        self.second = second
        """SFace: every face gets its embedding too (photos: enrollment, identify, eval)."""
        self._lock = lock
        """Held around each analysis when the models are shared with a running camera loop."""

    @classmethod
    def from_config(cls, config: RecognitionConfig, precision: Literal["int8", "fp32"] | None = None) -> FaceAnalyzer:
        """The photo commands' analyzer: the configured detector, and every face's keypoints re-detected on
        a crop before alignment."""
        from edgeface.vision.align import Aligner
        from edgeface.vision.blazeface import make_detector, make_refiner
        from edgeface.vision.embed import Embedder

        detector = make_detector(config.detector.model, min_score=config.detector.min_score,
                                 threads=config.embedder.threads)
        refiner = make_refiner(1.0, threads=config.embedder.threads) if config.alignment.method == "blazeface" else None
        return cls(
            detector,
            Aligner(method=config.alignment.method, detector_model=detector.model, refiner=refiner),
            Embedder(precision=precision or config.embedder.precision, threads=config.embedder.threads,
                     flip=config.embedder.flip),
            second=second_embedder(config, refiner, detector.model),
        )

    @classmethod
    def for_camera(cls, config: Config) -> FaceAnalyzer:
        """The camera loop's models on their own (enrollment without a running station)."""
        models = camera_models(config)
        return cls(models.detector, models.aligner, models.embedder, second=models.second)

    def analyze(self, image: np.ndarray) -> AnalyzedFaces:
        if self._lock is None:
            return self._analyze(image)
        with self._lock:
            return self._analyze(image)

    def _analyze(self, image: np.ndarray) -> AnalyzedFaces:
        detections = self.detector.detect(image)
        chips, second_chips = align_faces(self.aligner, self.second, image, detections)
        if self.second is None or second_chips is None:
            return AnalyzedFaces(detections, chips, self.embedder.embed(chips))
        return AnalyzedFaces(detections, chips, self.embedder.embed(chips), second_chips,
                             self.second.embed(second_chips))


def align_faces(aligner: Aligner, second: SecondEmbedder | None, image: np.ndarray, detections: FaceDetections,
                refined: tuple[FaceDetections, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """dlib chips, and SFace chips from the same landmarks (one landmark pass, one keypoint refinement
    per face) when there is a second embedder. `refined`: the refiner's keypoints already at hand."""
    if second is None:
        return aligner.align(image, detections, refined), None
    from edgeface.vision.align import as_bgr

    image = as_bgr(image)  # as Aligner.align places and warps
    if len(detections) == 0:
        return aligner.align(image, detections), np.zeros((0, 112, 112, 3), np.uint8)
    points, templates = aligner.landmarks(image, detections, refined)
    return aligner.align_landmarks(image, points, templates), second.chips(image, detections, points, templates)
