"""The keypoint refiner once per track (edgeface.vision.track_keypoints) on real video frames: a track's
refined keypoints followed onto its later face land where a fresh refinement puts them; stale or
unknown tracks are refined afresh."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeface.vision.blazeface import BlazeFaceDetector, KeypointRefiner
from edgeface.vision.boxes import box_iou
from edgeface.vision.detections import FaceDetections
from edgeface.vision.track_keypoints import TrackKeypoints

CROWD = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "crowd_walk.mp4"


@pytest.fixture(scope="module")
def frames() -> dict[int, np.ndarray]:
    if not CROWD.is_file():
        pytest.skip("../shared/data/video is absent")
    import cv2

    capture = cv2.VideoCapture(str(CROWD))
    out = {}
    for index in range(54):
        ok, frame = capture.read()
        assert ok
        if index in (50, 53):
            out[index] = frame
    return out


@pytest.fixture(scope="module")
def refiner() -> KeypointRefiner:
    return KeypointRefiner(BlazeFaceDetector("short"))


def _side(box: np.ndarray) -> float:
    return float(np.sqrt((box[2] - box[0]) * (box[3] - box[1])))


def _error(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> float:
    """Mean distance of the 4 alignment keypoints, as a fraction of the box side."""
    return float(np.linalg.norm(a[:4] - b[:4], axis=1).mean()) / _side(box)


def test_followed_keypoints_land_where_a_fresh_refinement_puts_them(frames: dict[int, np.ndarray],
                                                                    refiner: KeypointRefiner) -> None:
    """Three frames apart (people walking), the followed keypoints are within a few percent of the face of a
    fresh refinement's, much nearer than the frame detector's own (measured: 4.5% against 28% of the side)."""
    detector = BlazeFaceDetector("full")
    before, after = detector.detect(frames[50]), detector.detect(frames[53])
    tracks = TrackKeypoints(refiner)
    tracks.refine(frames[50], before, list(range(len(before))), 50)
    assert tracks.refined >= 2 and len(tracks) == tracks.refined
    owners: list[int | None] = [int(np.argmax(box_iou(box, before.xyxy))) for box in after.xyxy]
    followed, which = tracks.refine(frames[53], after, owners, 53)
    assert tracks.followed >= 2 and which.all() and np.array_equal(followed.xyxy, after.xyxy)
    fresh, _ = refiner.refine(frames[53], after)
    for i, box in enumerate(after.xyxy):
        assert _error(followed.kps[i], fresh.kps[i], box) < 0.1
        assert _error(followed.kps[i], fresh.kps[i], box) < _error(after.kps[i], fresh.kps[i], box)


def test_stale_or_unknown_tracks_are_refined_afresh(frames: dict[int, np.ndarray], refiner: KeypointRefiner) -> None:
    detector = BlazeFaceDetector("full")
    faces = detector.detect(frames[50])[np.array([0])]
    tracks = TrackKeypoints(refiner, max_age_frames=30, max_scale_change=1.25)
    tracks.refine(frames[50], faces, [7], 50)
    assert (tracks.refined, tracks.followed) == (1, 0)
    tracks.refine(frames[50], faces, [7], 80)  # as old as allowed: followed
    assert (tracks.refined, tracks.followed) == (1, 1)
    tracks.refine(frames[50], faces, [7], 81)  # too old: refined again
    assert (tracks.refined, tracks.followed) == (2, 1)
    box = faces.xyxy[0]
    centre, half = (box[:2] + box[2:]) / 2, 1.4 * (box[2:] - box[:2]) / 2
    grown = FaceDetections(np.concatenate([centre - half, centre + half])[None].astype(np.float32), faces.score, faces.kps)
    tracks.refine(frames[50], grown, [7], 82)  # 1.4x the size it was refined at: not followed (tried afresh)
    assert tracks.followed == 1
    refined = tracks.refined
    tracks.refine(frames[50], faces, [None], 83)  # no track: refined, nothing kept for it
    assert (tracks.refined, tracks.followed, len(tracks)) == (refined + 1, 1, 1)
    tracks.forget([7])
    assert len(tracks) == 0


def test_bad_arguments_are_refused(refiner: KeypointRefiner) -> None:
    with pytest.raises(ValueError, match="max_scale_change"):
        TrackKeypoints(refiner, max_scale_change=0.5)
    with pytest.raises(ValueError, match="track ids"):
        TrackKeypoints(refiner).refine(np.zeros((64, 64, 3), np.uint8), FaceDetections(), [1], 0)


def test_the_camera_loop_refines_once_per_track_and_forgets_ended_tracks(frames: dict[int, np.ndarray]) -> None:
    """The default pipeline on the crowd video: most embedded faces follow their track's refinement, and
    nothing is kept for a track once it ended; with the switch off (or no refiner) every face is refined."""
    import cv2

    from edgeface.bus import EventBus
    from edgeface.config import Config
    from edgeface.io.sources import Frame
    from edgeface.pipeline import build_pipeline

    class Discard:
        def publish(self, event: object) -> None:
            pass

        def close(self) -> None:
            pass

    for off in ({"refine_once_per_track": False}, {"refine_face_max_frac": 0.0}):
        assert build_pipeline(Config.model_validate({"pipeline": off}), bus=EventBus(Discard()), threads=1).keypoints is None
    pipeline = build_pipeline(Config(), bus=EventBus(Discard()), threads=1)
    keypoints = pipeline.keypoints
    assert keypoints is not None
    capture = cv2.VideoCapture(str(CROWD))
    for index in range(105):
        ok, image = capture.read()
        assert ok
        pipeline.process(Frame(image, index, index / 25.0))
        assert len(keypoints) <= len(pipeline.tracker)
    assert keypoints.refined >= 5 and keypoints.followed > keypoints.refined
    pipeline.flush()
    assert len(keypoints) == 0
