from __future__ import annotations

import numpy as np
import pytest

from edgeface.recognition.tracker import Tracker
from edgeface.vision.boxes import iou_matrix
from edgeface.vision.detections import FaceDetections


def faces(*boxes: tuple[float, float, float, float]) -> FaceDetections:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    centres = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    return FaceDetections(xyxy, np.full(n, 0.9, np.float32), np.repeat(centres[:, None, :], 6, axis=1))


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=128)
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_iou_matrix() -> None:
    iou = iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_iou_matrix_python_and_numpy_paths_agree_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeface.vision.boxes as track_module

    rng = np.random.default_rng(3)
    pairs = []
    for _ in range(200):
        a = rng.uniform(0, 100, (int(rng.integers(1, 6)), 4))
        b = rng.uniform(0, 100, (int(rng.integers(1, 6)), 4))
        a[:, 2:] = a[:, :2] + rng.uniform(-5, 40, (len(a), 2))  # some boxes inside out: zero area
        b[:, 2:] = b[:, :2] + rng.uniform(-5, 40, (len(b), 2))
        pairs.append((a, b, iou_matrix(a, b)))
    monkeypatch.setattr(track_module, "SMALL_IOU_PAIRS", -1)
    for a, b, small in pairs:
        np.testing.assert_array_equal(small, iou_matrix(a, b))


def test_two_moving_faces_keep_their_ids_and_inputs_are_not_mutated() -> None:
    tracker = Tracker()
    ids = []
    for step in range(10):
        dets = faces((10 + 4 * step, 10, 60 + 4 * step, 60), (300 - 4 * step, 10, 350 - 4 * step, 60))
        before = (dets.xyxy.copy(), dets.score.copy(), dets.kps.copy())
        update = tracker.update(dets, ts=step / 25, frame_index=step)
        ids.append(tuple(update.track_ids))
        for a, b in zip(before, (dets.xyxy, dets.score, dets.kps)):
            np.testing.assert_array_equal(a, b)
    assert ids == [(1, 2)] * 10
    assert tracker.tracks[1].hits == 10 and tracker.tracks[1].started_ts == 0.0


def test_a_fast_face_is_followed_by_its_velocity() -> None:
    tracker = Tracker(iou_min=0.3)
    xs = [0, 20, 50, 85, 125, 165, 205, 245]  # from the 4th frame on, IoU with the last box is 0.11
    ids = {tuple(tracker.update(faces((x, 0, x + 50, 50)), ts=i, frame_index=i).track_ids) for i, x in enumerate(xs)}
    assert ids == {(1,)}


@pytest.mark.parametrize("max_missed", [0, 3])
def test_track_ends_after_max_missed_frames(max_missed: int) -> None:
    tracker = Tracker(max_missed_frames=max_missed)
    tracker.update(faces((0, 0, 50, 50)), ts=0.0, frame_index=0)
    for frame in range(1, max_missed + 1):
        assert tracker.update(FaceDetections(), ts=frame, frame_index=frame).ended == ()
    ended = tracker.update(FaceDetections(), ts=99.0, frame_index=max_missed + 1).ended
    assert [t.id for t in ended] == [1] and ended[0].last_ts == 0.0 and len(tracker) == 0


@pytest.mark.parametrize(("gap_s", "same_track"), [(0.5, True), (3.0, False)])
def test_a_time_gap_longer_than_max_gap_s_ends_the_tracks(gap_s: float, same_track: bool) -> None:
    """A live stream that drops and comes back: the same place, consecutive frame indices, but seconds later."""
    tracker = Tracker(max_gap_s=2.0)
    for i in range(3):
        tracker.update(faces((0, 0, 50, 50)), ts=100.0 + i / 30, frame_index=i)
    update = tracker.update(faces((0, 0, 50, 50)), ts=100.0 + 2 / 30 + gap_s, frame_index=3)
    if same_track:
        assert list(update.track_ids) == [1] and update.ended == () and update.new == frozenset()
    else:
        assert [t.id for t in update.ended] == [1] and update.ended[0].last_ts == pytest.approx(100.0 + 2 / 30)
        assert list(update.track_ids) == [2] and update.new == {2}


def test_max_gap_s_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_gap_s"):
        Tracker(max_gap_s=0.0)


def test_a_returning_face_within_the_gap_keeps_its_track() -> None:
    tracker = Tracker(max_missed_frames=2)
    tracker.update(faces((0, 0, 50, 50)), ts=0, frame_index=0)
    tracker.update(FaceDetections(), ts=1, frame_index=1)
    assert list(tracker.update(faces((2, 0, 52, 50)), ts=2, frame_index=2).track_ids) == [1]


def test_tie_is_broken_by_embedding_distance() -> None:
    """Two tracks side by side; the next frame has two faces equally overlapping both: appearance decides."""
    tracker = Tracker(tie_iou_margin=0.2)
    first = tracker.update(faces((0, 0, 100, 100), (60, 0, 160, 100)), ts=0, frame_index=0)
    a, b = (int(t) for t in first.track_ids)
    tracker.observe(a, unit(1))
    tracker.observe(b, unit(2))
    # Both new faces sit between the old ones; the left one is person b, the right one person a.
    calls = []

    def embed(indices):
        calls.append(list(indices))
        return np.stack([{0: unit(2), 1: unit(1)}[i] for i in indices])

    update = tracker.update(faces((25, 0, 125, 100), (35, 0, 135, 100)), ts=1, frame_index=1, embed=embed)
    assert list(update.track_ids) == [b, a]
    assert update.ambiguous >= 1 and calls and set(update.embeddings) == {0, 1}
    # Without embeddings the IoU order stands (the left face to the left track).
    plain = Tracker(tie_iou_margin=0.2)
    ids = plain.update(faces((0, 0, 100, 100), (60, 0, 160, 100)), ts=0, frame_index=0).track_ids
    assert list(plain.update(faces((25, 0, 125, 100), (35, 0, 135, 100)), ts=1, frame_index=1).track_ids) == list(ids)


def test_a_different_face_in_the_same_place_starts_a_new_track() -> None:
    tracker = Tracker(confirm_iou_below=0.5, appearance_max_distance=0.6)
    tracker.update(faces((0, 0, 100, 100)), ts=0, frame_index=0)
    tracker.observe(1, unit(1))
    # Weak overlap (IoU 0.43 < 0.5) with a face that embeds far from the track's: refused, new track.
    update = tracker.update(faces((40, 0, 140, 100)), ts=1, frame_index=1, embed=lambda idx: np.stack([unit(7)] * len(idx)))
    assert list(update.track_ids) == [2] and update.new == {2}
    # The same weak overlap by the same face continues the track.
    tracker2 = Tracker()
    tracker2.update(faces((0, 0, 100, 100)), ts=0, frame_index=0)
    tracker2.observe(1, unit(1))
    update = tracker2.update(faces((40, 0, 140, 100)), ts=1, frame_index=1, embed=lambda idx: np.stack([unit(1)] * len(idx)))
    assert list(update.track_ids) == [1]


def test_end_all_closes_every_track() -> None:
    tracker = Tracker()
    tracker.update(faces((0, 0, 50, 50), (100, 0, 150, 50)), ts=0, frame_index=0)
    assert [t.id for t in tracker.end_all()] == [1, 2] and len(tracker) == 0
    assert list(tracker.update(faces((0, 0, 50, 50)), ts=1, frame_index=1).track_ids) == [3]


@pytest.mark.parametrize("kwargs", [{"iou_min": 0.0}, {"max_missed_frames": -1}, {"tie_iou_margin": 2.0},
                                    {"appearance_max_distance": 0.0}, {"confirm_iou_below": -0.1}])
def test_bad_parameters_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        Tracker(**kwargs)


def test_a_track_never_embedded_ends_after_max_unconfirmed_frames() -> None:
    tracker = Tracker(max_unconfirmed_frames=5)
    ids = [int(tracker.update(faces((10, 10, 50, 50)), i / 30, i).track_ids[0]) for i in range(12)]
    assert ids == [1] * 5 + [2] * 5 + [3] * 2  # a new track every 5 frames while nothing confirms the face
    tracker = Tracker(max_unconfirmed_frames=5)
    tracker.update(faces((10, 10, 50, 50)), 0.0, 0)
    tracker.observe(1, unit(1))  # embedded once: its appearance can be checked, so it lives on
    assert [int(tracker.update(faces((10, 10, 50, 50)), i / 30, i).track_ids[0]) for i in range(1, 12)] == [1] * 11


def test_a_face_embedded_anyway_is_checked_against_the_track_even_when_the_boxes_overlap_well() -> None:
    tracker = Tracker()
    tracker.update(faces((10, 10, 50, 50)), 0.0, 0)
    tracker.observe(1, unit(1))
    asked: list[list[int]] = []

    def embed(indices):
        asked.append(list(indices))
        return np.stack([unit(2)])  # someone else, in the same place

    same_box = faces((10, 10, 50, 50))
    kept = tracker.update(same_box, 1 / 30, 1, embed=embed, will_embed=lambda track_id, d: False)
    assert int(kept.track_ids[0]) == 1 and asked == []  # not embedded this frame: no check, no cost
    swapped = tracker.update(same_box, 2 / 30, 2, embed=embed, will_embed=lambda track_id, d: True)
    assert asked == [[0]] and int(swapped.track_ids[0]) != 1
    assert 0 in swapped.embeddings  # handed back for the caller to reuse
