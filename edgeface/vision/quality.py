"""Face quality: measures, a gate with named rejection reasons, and a weight for voting.

Measures per face (all cheap; none needs the embedder):
- `score`: the detector's confidence;
- `face_px`: the shorter side of the detection box, in source-image pixels;
- `eye_distance_px`: distance between the two eye keypoints, in source-image pixels;
- `roll_deg`: angle of the eye line against the image's x axis (positive: the line falls towards
  the image's right, i.e. the head leans clockwise);
- `yaw_deg`: from the nose tip's offset along the eye line, relative to the eye midpoint and
  normalised by the eye distance. Under a head turn by yaw (orthographic camera) the eyes, nearly
  at one depth, keep their midpoint while the nose tip, NOSE_DEPTH_PER_EYE_DISTANCE eye-distances
  in front of them, moves sideways: offset / eye_distance = NOSE_DEPTH_PER_EYE_DISTANCE * tan(yaw).
  Positive yaw: the nose points towards the image's right;
- `blur_var`: variance of the Laplacian of the grey aligned chip, resized to BLUR_CHIP_PX.

The thresholds were measured on real faces (see each constant's note; tests/test_quality.py checks
them on real photos).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from edgeface.config import QualityGateConfig
from edgeface.vision.detections import FaceDetections

NOSE_DEPTH_PER_EYE_DISTANCE = 0.6
"""Depth of the nose tip in front of the eyes, in eye distances. From MediaPipe's canonical face
model (metric, cm): eye-opening centres about 3.8 cm deep and 6.3 cm apart, nose tip at 7.5 cm:
(7.5 - 3.8) / 6.3 = 0.59."""

BLUR_CHIP_PX = 150
"""Chips of another size are resized to this before measuring blur, so that blur_min_var keeps its
meaning whatever the embedder's chip size (dlib's ResNet uses 150x150)."""

_CONFIG = QualityGateConfig()  # the defaults are the config's: nothing states them twice
DEFAULT_MIN_SCORE = _CONFIG.min_score
"""The short-range detector's own default threshold; see QualityGate.for_enrollment for a stricter one."""
DEFAULT_MIN_FACE_PX = _CONFIG.min_face_px
"""Shorter box side. Below ~40 px a 150 px chip is mostly interpolation (see the calibration notes)."""
DEFAULT_BLUR_MIN_VAR = _CONFIG.blur_min_var
"""Measured on 331 LFW images (every 40th, default pipeline): sharp chips have blur_var 11.8 / 18.4 / 43
at the 1st / 5th / 50th percentile; the same images under a Gaussian blur of sigma 3 px give 4.1 median,
8.9 at the 99th percentile, and move the embedding by 0.3 (median), most of a match threshold."""
DEFAULT_MAX_YAW_DEG = _CONFIG.max_yaw_deg
"""|yaw| of LFW faces (same sample): 11.8 median, 29 at the 95th and 39 at the 99th percentile."""
DEFAULT_MAX_ROLL_DEG = _CONFIG.max_roll_deg
"""|roll| of LFW faces: 1.9 median, 12 at the 99th percentile."""

ENROLL_MIN_SCORE = 0.7
"""Enrollment is stricter: a template is used for every later match, so it must be a good photo."""
ENROLL_MIN_FACE_PX = 60.0
ENROLL_BLUR_MIN_VAR = 15.0
"""Between LFW's 1st and 5th percentile of sharp chips (see DEFAULT_BLUR_MIN_VAR)."""
ENROLL_MAX_YAW_DEG = 30.0
"""About LFW's 95th percentile: a turned head makes a template that matches poorly."""
ENROLL_MAX_ROLL_DEG = 25.0

GOOD_FACE_PX_FACTOR = 2.0
"""Weight: a face this many times min_face_px counts fully for size."""
GOOD_BLUR_VAR_FACTOR = 3.0
"""Weight: a chip with this many times blur_min_var counts fully for sharpness."""
MIN_FACTOR_WEIGHT = 0.1
"""Weight of each factor for a face that just passes its threshold."""


class QualityReason(str, Enum):
    """Why a face was rejected; the value is the name used in logs, reports and events."""

    LOW_SCORE = "low_score"
    TOO_SMALL = "too_small"
    EXTREME_YAW = "extreme_yaw"
    EXTREME_ROLL = "extreme_roll"
    BLURRED = "blurred"

@dataclass(frozen=True)
class QualityMeasures:
    score: float
    face_px: float
    eye_distance_px: float
    yaw_deg: float
    roll_deg: float
    blur_var: float


@dataclass(frozen=True)
class QualityResult:
    ok: bool
    reason: QualityReason | None
    """The first failed check, in the order score, size, yaw, roll, blur; None when ok."""
    measures: QualityMeasures
    weight: float
    """In [0, 1]: 0 for a rejected face, else the geometric mean of size, sharpness, pose and score
    factors (each from MIN_FACTOR_WEIGHT at its threshold up to 1), for weighting votes."""


def face_pose(kps: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """(yaw_deg, roll_deg, eye_distance_px) of one face's BlazeFace keypoints (6, 2), on Python floats
    (a handful of faces per frame: float math costs a fraction of a dozen numpy calls).

    Degenerate keypoints (eyes on top of each other) give yaw 90 degrees."""
    (right_x, right_y), (left_x, left_y), (nose_x, nose_y) = kps[0], kps[1], kps[2]
    eye_x, eye_y = float(left_x - right_x), float(left_y - right_y)
    eye_distance = math.hypot(eye_x, eye_y)
    roll = math.degrees(math.atan2(eye_y, eye_x))
    if not eye_distance > 1e-6:
        return 90.0, roll, eye_distance
    offset = ((nose_x - (right_x + left_x) / 2) * eye_x + (nose_y - (right_y + left_y) / 2) * eye_y) / eye_distance**2
    return math.degrees(math.atan2(offset, NOSE_DEPTH_PER_EYE_DISTANCE)), roll, eye_distance


def pose_from_keypoints(kps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(yaw_deg, roll_deg, eye_distance_px), each (n,), from BlazeFace keypoints (n, 6, 2) (see `face_pose`)."""
    poses = [face_pose(face) for face in np.asarray(kps, dtype=np.float64).reshape(-1, 6, 2).tolist()]
    if not poses:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    yaw, roll, eye = (np.array(column, np.float64) for column in zip(*poses))
    return yaw, roll, eye


def measures_before_blur(detections: FaceDetections, indices: Sequence[int] | None = None) -> list[QualityMeasures]:
    """Score, size and pose of every face (or of the faces `indices`, in that order); blur_var is inf
    until the chip is measured (`with_blur`)."""
    boxes, scores, kps = detections.xyxy.tolist(), detections.score.tolist(), detections.kps.tolist()
    out = []
    for i in range(len(boxes)) if indices is None else indices:
        x1, y1, x2, y2 = boxes[i]
        yaw, roll, eye = face_pose(kps[i])
        out.append(QualityMeasures(scores[i], max(min(x2 - x1, y2 - y1), 0.0), eye, yaw, roll, math.inf))
    return out


def with_blur(measures: QualityMeasures, chip: np.ndarray) -> QualityMeasures:
    return QualityMeasures(measures.score, measures.face_px, measures.eye_distance_px, measures.yaw_deg,
                           measures.roll_deg, laplacian_variance(chip))


def laplacian_variance(chip: np.ndarray, size_px: int = BLUR_CHIP_PX) -> float:
    """Variance of the 3x3 Laplacian of the grey chip (resized to size_px when it differs)."""
    import cv2

    chip = np.asarray(chip)
    if chip.ndim == 3 and chip.shape[2] == 1:
        chip = chip[:, :, 0]
    if chip.ndim == 3:
        grey = cv2.cvtColor(chip[:, :, :3].astype(np.uint8, copy=False), cv2.COLOR_BGR2GRAY)
    elif chip.ndim == 2:
        grey = chip.astype(np.uint8, copy=False)
    else:
        raise ValueError(f"chip must be (h, w) or (h, w, c), got {chip.shape}")
    if grey.shape != (size_px, size_px):
        interpolation = cv2.INTER_AREA if grey.shape[0] > size_px else cv2.INTER_LINEAR
        grey = cv2.resize(grey, (size_px, size_px), interpolation=interpolation)
    # 16-bit Laplacian (|value| <= 4 * 255 fits) and OpenCV's one-pass mean/std: the same variance as
    # float64 and numpy's var (to 1e-15) at a quarter of the memory traffic, ~4x faster.
    return float(cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))[1][0, 0] ** 2)


def _ramp(value: float, low: float, high: float) -> float:
    """MIN_FACTOR_WEIGHT at low, 1 at high and above, linear between."""
    if high <= low:
        return 1.0
    t = min(max((value - low) / (high - low), 0.0), 1.0)
    return MIN_FACTOR_WEIGHT + (1.0 - MIN_FACTOR_WEIGHT) * t


@dataclass(frozen=True)
class QualityGate:
    """Decides, per face, whether it is good enough to embed, enroll or cluster."""

    min_face_px: float = DEFAULT_MIN_FACE_PX
    blur_min_var: float = DEFAULT_BLUR_MIN_VAR
    max_yaw_deg: float = DEFAULT_MAX_YAW_DEG
    max_roll_deg: float = DEFAULT_MAX_ROLL_DEG
    min_score: float = DEFAULT_MIN_SCORE

    def __post_init__(self) -> None:
        if not self.min_face_px >= 0:
            raise ValueError(f"min_face_px must be >= 0, got {self.min_face_px}")
        if not self.blur_min_var >= 0:
            raise ValueError(f"blur_min_var must be >= 0, got {self.blur_min_var}")
        if not 0 < self.max_yaw_deg <= 90:
            raise ValueError(f"max_yaw_deg must be in (0, 90], got {self.max_yaw_deg}")
        if not 0 < self.max_roll_deg <= 180:
            raise ValueError(f"max_roll_deg must be in (0, 180], got {self.max_roll_deg}")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")

    @classmethod
    def for_enrollment(cls) -> QualityGate:
        """Stricter: a template is used for every later match, so it must be a good photo."""
        return cls(
            min_face_px=ENROLL_MIN_FACE_PX,
            blur_min_var=ENROLL_BLUR_MIN_VAR,
            max_yaw_deg=ENROLL_MAX_YAW_DEG,
            max_roll_deg=ENROLL_MAX_ROLL_DEG,
            min_score=ENROLL_MIN_SCORE,
        )

    def measure(self, detections: FaceDetections, chips: Sequence[np.ndarray] | np.ndarray) -> list[QualityMeasures]:
        if len(chips) != len(detections):
            raise ValueError(f"{len(detections)} faces but {len(chips)} chips")
        return [with_blur(m, chip) for m, chip in zip(measures_before_blur(detections), chips)]

    def judge(self, measures: QualityMeasures) -> QualityResult:
        reason: QualityReason | None = None
        if measures.score < self.min_score:
            reason = QualityReason.LOW_SCORE
        elif measures.face_px < self.min_face_px:
            reason = QualityReason.TOO_SMALL
        elif abs(measures.yaw_deg) > self.max_yaw_deg:
            reason = QualityReason.EXTREME_YAW
        elif abs(measures.roll_deg) > self.max_roll_deg:
            reason = QualityReason.EXTREME_ROLL
        elif measures.blur_var < self.blur_min_var:
            reason = QualityReason.BLURRED
        if reason is not None:
            return QualityResult(False, reason, measures, 0.0)
        factors = (
            _ramp(measures.face_px, self.min_face_px, GOOD_FACE_PX_FACTOR * self.min_face_px),
            _ramp(measures.blur_var, self.blur_min_var, GOOD_BLUR_VAR_FACTOR * self.blur_min_var),
            _ramp(-abs(measures.yaw_deg), -self.max_yaw_deg, 0.0),
            _ramp(measures.score, self.min_score, 1.0),
        )
        weight = math.exp(sum(math.log(f) for f in factors) / len(factors))
        return QualityResult(True, None, measures, float(min(max(weight, 0.0), 1.0)))

    def assess(self, detections: FaceDetections, chips: Sequence[np.ndarray] | np.ndarray) -> list[QualityResult]:
        """One QualityResult per face; chips are the aligned chips in the same order (uint8 BGR or grey)."""
        return [self.judge(m) for m in self.measure(detections, chips)]


