"""Still-image recognition core: detect -> align -> embed, with the stages injected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgeface.vision.detections import FaceDetections

if TYPE_CHECKING:
    from edgeface.config import RecognitionConfig
    from edgeface.vision.align import Aligner
    from edgeface.vision.blazeface import AutoRangeDetector, BlazeFaceDetector
    from edgeface.vision.embed import Embedder


@dataclass(frozen=True)
class AnalyzedFaces:
    """Every face found in one image: detections, aligned chips (n, 150, 150, 3) and embeddings (n, 128)."""

    detections: FaceDetections
    chips: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.detections)


class FaceAnalyzer:
    def __init__(self, detector: BlazeFaceDetector | AutoRangeDetector, aligner: Aligner, embedder: Embedder) -> None:
        self.detector = detector
        self.aligner = aligner
        self.embedder = embedder

    @classmethod
    def from_config(cls, config: RecognitionConfig, precision: Literal["int8", "fp32"] | None = None) -> FaceAnalyzer:
        """The photo commands' analyzer: the configured detector, and every face's keypoints re-detected on
        a crop before alignment (a photo has time for it; the camera loop does it for embedded faces)."""
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
        )

    def analyze(self, image: np.ndarray) -> AnalyzedFaces:
        detections = self.detector.detect(image)
        chips = self.aligner.align(image, detections)
        return AnalyzedFaces(detections, chips, self.embedder.embed(chips))
