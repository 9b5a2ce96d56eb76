"""The small typed objects that flow between stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NUM_KEYPOINTS = 6
"""BlazeFace keypoints, in order: right eye, left eye, nose tip, mouth centre, right ear tragion,
left ear tragion ("right" is the subject's right, which is on the image's left)."""


@dataclass(frozen=True)
class FaceDetections:
    """Faces found in one image, in source-image pixels.

    xyxy: (n, 4) float32 boxes x1, y1, x2, y2; score: (n,) float32 in [0, 1];
    kps: (n, 6, 2) float32 keypoints (see NUM_KEYPOINTS).
    """

    xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    score: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    kps: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_KEYPOINTS, 2), np.float32))

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must be (n, 4), got {self.xyxy.shape}")
        if self.score.shape != (n,):
            raise ValueError(f"score must be ({n},), got {self.score.shape}")
        if self.kps.shape != (n, NUM_KEYPOINTS, 2):
            raise ValueError(f"kps must be ({n}, {NUM_KEYPOINTS}, 2), got {self.kps.shape}")

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: int | slice | np.ndarray) -> FaceDetections:
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return FaceDetections(self.xyxy[index], self.score[index], self.kps[index])

    @property
    def area(self) -> np.ndarray:
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]
