from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeface.vision.quality import (
    NOSE_DEPTH_PER_EYE_DISTANCE,
    QualityGate,
    QualityMeasures,
    QualityReason,
    face_pose,
    laplacian_variance,
    pose_from_keypoints,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "people").is_dir(), reason="../shared/data is absent")


def _frontal_keypoints(eye_distance: float = 60.0, nose_offset: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Right eye, left eye, nose tip, mouth, ears, around (200, 200); the nose shifted along the eye line."""
    points = np.array([
        [-eye_distance / 2, 0], [eye_distance / 2, 0], [nose_offset, 0.5 * eye_distance],
        [0, 0.9 * eye_distance], [-0.9 * eye_distance, 0.1], [0.9 * eye_distance, 0.1],
    ])
    angle = np.radians(roll_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points @ rotation.T + 200.0)[None].astype(np.float32)


@pytest.mark.parametrize("roll_deg", [-40.0, -10.0, 0.0, 25.0])
@pytest.mark.parametrize("yaw_deg", [-35.0, 0.0, 20.0])
def test_pose_from_keypoints_recovers_yaw_and_roll(yaw_deg: float, roll_deg: float) -> None:
    offset = 60.0 * NOSE_DEPTH_PER_EYE_DISTANCE * np.tan(np.radians(yaw_deg))
    yaw, roll, eye_distance = pose_from_keypoints(_frontal_keypoints(60.0, offset, roll_deg))
    assert yaw[0] == pytest.approx(yaw_deg, abs=0.01)
    assert roll[0] == pytest.approx(roll_deg, abs=0.01)
    assert eye_distance[0] == pytest.approx(60.0, rel=1e-4)


def test_degenerate_keypoints_count_as_turned_away() -> None:
    kps = np.full((1, 6, 2), 100.0, np.float32)
    assert pose_from_keypoints(kps)[0][0] == 90.0


def _measures(**changes: float) -> QualityMeasures:
    base = {"score": 0.95, "face_px": 200.0, "eye_distance_px": 80.0, "yaw_deg": 0.0, "roll_deg": 0.0, "blur_var": 100.0}
    return QualityMeasures(**{**base, **changes})


@pytest.mark.parametrize(("changes", "reason"), [
    ({"score": 0.6}, QualityReason.LOW_SCORE),
    ({"face_px": 59.0}, QualityReason.TOO_SMALL),
    ({"yaw_deg": -31.0}, QualityReason.EXTREME_YAW),
    ({"roll_deg": 26.0}, QualityReason.EXTREME_ROLL),
    ({"blur_var": 14.0}, QualityReason.BLURRED),
    ({"score": 0.1, "blur_var": 1.0}, QualityReason.LOW_SCORE),  # the first failed check is named
])
def test_enrollment_gate_names_the_failed_check(changes: dict[str, float], reason: QualityReason) -> None:
    result = QualityGate.for_enrollment().judge(_measures(**changes))
    assert not result.ok and result.reason is reason and result.weight == 0.0


def test_weight_rises_with_quality() -> None:
    gate = QualityGate()
    poor = gate.judge(_measures(face_px=45.0, blur_var=12.0, yaw_deg=30.0, score=0.6))
    good = gate.judge(_measures())
    assert poor.ok and good.ok
    assert 0.0 < poor.weight < good.weight <= 1.0


@pytest.mark.parametrize("bad", [{"min_face_px": -1.0}, {"max_yaw_deg": 0.0}, {"max_roll_deg": 200.0},
                                 {"min_score": 1.5}, {"blur_min_var": -3.0}])
def test_gate_refuses_impossible_thresholds(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        QualityGate(**bad)


@pytest.fixture(scope="module")
def analyzer():
    from edgeface.config import Config
    from edgeface.vision.analyzer import FaceAnalyzer

    return FaceAnalyzer.from_config(Config().recognition)


def _assess(analyzer, image: np.ndarray):
    faces = analyzer.analyze(image)
    assert len(faces) >= 1
    index = int(np.argmax(faces.detections.area))
    return QualityGate.for_enrollment().assess(faces.detections[index], faces.chips[index:index + 1])[0]


@needs_data
def test_real_photo_passes_and_its_degraded_copies_fail_for_the_right_reason(analyzer) -> None:
    import cv2

    from edgeface.io.images import read_image

    photo = read_image(DATA / "people" / "joe_biden" / "2.jpg")
    sharp = _assess(analyzer, photo)
    assert sharp.ok and sharp.weight > 0.5
    blurred = _assess(analyzer, cv2.GaussianBlur(photo, (0, 0), 8))
    assert blurred.reason is QualityReason.BLURRED
    assert blurred.measures.blur_var < sharp.measures.blur_var / 10
    small = _assess(analyzer, cv2.resize(photo, (120, 120), interpolation=cv2.INTER_AREA))
    assert small.reason is QualityReason.TOO_SMALL
    h, w = photo.shape[:2]
    tilted = _assess(analyzer, cv2.warpAffine(photo, cv2.getRotationMatrix2D((w / 2, h / 2), 40, 1.0), (w, h)))
    assert tilted.reason is QualityReason.EXTREME_ROLL
    assert tilted.measures.roll_deg == pytest.approx(-40, abs=10)


@needs_data
def test_greyscale_crops_pass(analyzer) -> None:
    from edgeface.io.images import read_image

    results = [_assess(analyzer, read_image(path)) for path in sorted((DATA / "bbt").glob("*/*1.png"))]
    assert len(results) == 8
    assert all(r.ok for r in results), [r.reason for r in results]


def test_laplacian_variance_is_size_independent() -> None:
    rng = np.random.default_rng(0)
    texture = (rng.random((150, 150)) * 255).astype(np.uint8)
    import cv2

    assert laplacian_variance(texture) > 1000
    big = cv2.resize(texture, (300, 300), interpolation=cv2.INTER_NEAREST)
    assert laplacian_variance(big) == pytest.approx(laplacian_variance(texture), rel=0.2)
    assert laplacian_variance(np.full((150, 150, 3), 128, np.uint8)) == 0.0


def test_laplacian_variance_matches_the_float64_definition() -> None:
    """The 16-bit Laplacian and OpenCV's one-pass variance give numpy's float64 variance."""
    import cv2

    rng = np.random.default_rng(5)
    for sigma in (0.0, 0.7, 2.0, 4.0):
        chip = rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)
        if sigma:
            chip = cv2.GaussianBlur(chip, (0, 0), sigma)
        grey = cv2.cvtColor(chip, cv2.COLOR_BGR2GRAY)
        expected = float(cv2.Laplacian(grey, cv2.CV_64F).var())
        assert laplacian_variance(chip) == pytest.approx(expected, rel=1e-9)
    extremes = np.zeros((150, 150), np.uint8)
    extremes[::2, ::2] = 255  # the largest Laplacian values (|v| = 4 * 255) must not saturate
    assert laplacian_variance(extremes) == pytest.approx(float(cv2.Laplacian(extremes, cv2.CV_64F).var()), rel=1e-9)


def test_face_pose_on_floats_matches_the_arrays() -> None:
    kps = _frontal_keypoints(60.0, 12.0, 15.0)
    yaw, roll, eye = face_pose(kps[0].tolist())
    yaws, rolls, eyes = pose_from_keypoints(kps)
    assert (yaw, roll, eye) == pytest.approx((yaws[0], rolls[0], eyes[0]))
    assert pose_from_keypoints(np.zeros((0, 6, 2), np.float32))[0].shape == (0,)
