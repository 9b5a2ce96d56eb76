"""Still-image recognition core: detect -> align -> embed, with the stages injected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgeface.types import FaceDetections

if TYPE_CHECKING:
    from edgeface.align import Aligner
    from edgeface.config import RecognitionConfig
    from edgeface.detect import BlazeFaceDetector
    from edgeface.embed import Embedder


@dataclass(frozen=True)
class AnalyzedFaces:
    """Every face found in one image: detections, aligned chips (n, 150, 150, 3) and embeddings (n, 128)."""

    detections: FaceDetections
    chips: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.detections)


class FaceAnalyzer:
    def __init__(self, detector: BlazeFaceDetector, aligner: Aligner, embedder: Embedder) -> None:
        self.detector = detector
        self.aligner = aligner
        self.embedder = embedder

    @classmethod
    def from_config(cls, config: RecognitionConfig, precision: Literal["int8", "fp32"] | None = None) -> FaceAnalyzer:
        from edgeface.align import Aligner
        from edgeface.detect import BlazeFaceDetector
        from edgeface.embed import Embedder

        return cls(
            BlazeFaceDetector(model=config.detector.model, score_threshold=config.detector.min_score),
            Aligner(method=config.alignment.method, detector_model=config.detector.model),
            Embedder(precision=precision or config.embedder.precision, threads=config.embedder.threads,
                     flip=config.embedder.flip),
        )

    def analyze(self, image: np.ndarray) -> AnalyzedFaces:
        detections = self.detector.detect(image)
        chips = self.aligner.align(image, detections)
        return AnalyzedFaces(detections, chips, self.embedder.embed(chips))
