"""The keypoint refiner once per track: a track's refined keypoints followed onto its later faces.

The `KeypointRefiner` re-detects a face on a full-resolution crop (~2 ms, one short-range model run)
because the frame detector's keypoints of a small face are off by a large part of the face
(measured on crowd_walk.mp4: 28% of the box side on average). That error changes from frame to frame,
and so does the box's: a correction stored relative to the detector's keypoints or to the box does
not carry to a later frame (it removes only a third of the error; tools/measure_refine_per_track.py).
What carries is the image itself: the first refinement keeps a small grey patch around the face and
the refined keypoints in it; a later face of the track is registered to that patch (pyramidal
Lucas-Kanade on corner features, forward and back, then a RANSAC similarity), and the keypoints are
mapped through it, for a fraction of a model run. A face is refined afresh when the track has no
refinement yet, when its size changed by more than `max_scale_change`, when the refinement is older
than `max_age_frames`, or when the registration fails (too few features followed both ways).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edgeface.vision.detections import FaceDetections

if TYPE_CHECKING:
    from edgeface.vision.blazeface import KeypointRefiner

PATCH_PX = 64
"""Side of the grey patch a track keeps (the face is half of it: faces are registered at ~32 px)."""
PATCH_REGION = 2.0
"""The patch covers this many box sides around the box centre (the head moves inside it)."""
FEATURE_REGION = 1.0
"""Features are taken only this many box sides around the box centre: on the face, not the background
(which stays put while the head moves)."""
MAX_FEATURES = 40
MIN_FOLLOWED = 6
"""Fewer features followed forward and back than this: the registration failed, refine afresh."""
ROUND_TRIP_PX = 1.0
"""A feature is followed when tracking it forward and back lands within this many patch pixels."""
LK_WINDOW = (9, 9)
LK_LEVELS = 2


_FEATURE_MASK = np.zeros((PATCH_PX, PATCH_PX), np.uint8)
_half = round(PATCH_PX * FEATURE_REGION / PATCH_REGION / 2)
_FEATURE_MASK[PATCH_PX // 2 - _half:PATCH_PX // 2 + _half, PATCH_PX // 2 - _half:PATCH_PX // 2 + _half] = 255


@dataclass(frozen=True)
class _Refinement:
    patch: np.ndarray
    """Grey PATCH_PX square around the face when it was refined."""
    corners: np.ndarray
    """(m, 1, 2) float32 features of the patch to follow."""
    keypoints: np.ndarray
    """(k, 2) refined keypoints in patch pixels."""
    side: float
    frame_index: int


def _side(box: np.ndarray) -> float:
    return float(np.sqrt(max(float(box[2] - box[0]), 1e-6) * max(float(box[3] - box[1]), 1e-6)))


def face_patch(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grey PATCH_PX x PATCH_PX patch of the square PATCH_REGION box sides around the box, 2x3 matrix
    taking image pixels to patch pixels). Only the region is converted to grey."""
    side = PATCH_REGION * _side(box)
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    height, width = image.shape[:2]
    x0, y0 = max(int(cx - side / 2) - 1, 0), max(int(cy - side / 2) - 1, 0)
    x1, y1 = min(int(cx + side / 2) + 2, width), min(int(cy + side / 2) + 2, height)
    region = image[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    if region.ndim == 3:
        region = cv2.cvtColor(region, cv2.COLOR_BGRA2GRAY if region.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    scale = PATCH_PX / side
    to_patch = np.array([[scale, 0.0, PATCH_PX / 2 - scale * cx], [0.0, scale, PATCH_PX / 2 - scale * cy]])
    in_region = to_patch.copy()
    in_region[:, 2] += scale * np.array([x0, y0])
    patch = cv2.warpAffine(region, in_region, (PATCH_PX, PATCH_PX),
                           flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return patch, to_patch


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]  # type: ignore[no-any-return]


def follow(image: np.ndarray, box: np.ndarray, refinement: _Refinement) -> np.ndarray | None:
    """The refinement's keypoints on this face (image pixels), or None when the registration fails."""
    now, to_patch = face_patch(image, box)
    corners = refinement.corners
    moved, status, _ = cv2.calcOpticalFlowPyrLK(refinement.patch, now, corners, None,  # type: ignore[call-overload]
                                                 winSize=LK_WINDOW, maxLevel=LK_LEVELS)
    back, status_back, _ = cv2.calcOpticalFlowPyrLK(now, refinement.patch, moved, None,  # type: ignore[call-overload]
                                                      winSize=LK_WINDOW, maxLevel=LK_LEVELS)
    good = (status[:, 0] == 1) & (status_back[:, 0] == 1) & (np.linalg.norm((back - corners)[:, 0], axis=1) < ROUND_TRIP_PX)
    if int(good.sum()) < MIN_FOLLOWED:
        return None
    matrix, _ = cv2.estimateAffinePartial2D(corners[good], moved[good], method=cv2.RANSAC, ransacReprojThreshold=1.5)
    if matrix is None:
        return None
    return _apply(cv2.invertAffineTransform(to_patch), _apply(matrix, refinement.keypoints))


class TrackKeypoints:
    """Refined keypoints for the faces of tracks: the refiner once per track, its keypoints followed after."""

    def __init__(self, refiner: KeypointRefiner, max_age_frames: int = 150, max_scale_change: float = 1.25) -> None:
        if max_age_frames < 0 or max_scale_change < 1.0:
            raise ValueError(f"need max_age_frames >= 0 and max_scale_change >= 1, got {max_age_frames}, {max_scale_change}")
        self.refiner = refiner
        self.max_age_frames = max_age_frames
        self.max_scale_change = max_scale_change
        self._tracks: dict[int, _Refinement] = {}
        self.refined = 0
        """Faces refined afresh (one model run each, when the face is small enough to need it)."""
        self.followed = 0
        """Faces whose keypoints were followed from their track's refinement."""

    def __len__(self) -> int:
        return len(self._tracks)

    def _usable(self, refinement: _Refinement, side: float, frame_index: int) -> bool:
        ratio = side / refinement.side
        return frame_index - refinement.frame_index <= self.max_age_frames and \
            1 / self.max_scale_change <= ratio <= self.max_scale_change

    def refine(self, image: np.ndarray, faces: FaceDetections, track_ids: Sequence[int | None],
               frame_index: int) -> tuple[FaceDetections, np.ndarray]:
        """As `KeypointRefiner.refine` (faces with refined keypoints, which were refined), `track_ids[i]`
        being face i's track (None: not known, refined afresh and not kept)."""
        if len(track_ids) != len(faces):
            raise ValueError(f"{len(track_ids)} track ids for {len(faces)} faces")
        kps = faces.kps.copy()
        refined = np.zeros(len(faces), bool)
        afresh: list[int] = []
        for row, track in enumerate(track_ids):
            kept = self._tracks.get(track) if track is not None else None
            if kept is not None and self._usable(kept, _side(faces.xyxy[row]), frame_index):
                followed = follow(image, faces.xyxy[row], kept)
                if followed is not None:
                    kps[row] = followed
                    refined[row] = True
                    self.followed += 1
                    continue
            afresh.append(row)
        if afresh:
            again, ok = self.refiner.refine(image, faces[np.array(afresh)])
            for j, row in enumerate(afresh):
                track = track_ids[row]
                if not ok[j]:
                    continue
                kps[row] = again.kps[j]
                refined[row] = True
                self.refined += 1
                if track is not None:
                    self._keep(image, faces.xyxy[row], again.kps[j], track, frame_index)
        return FaceDetections(faces.xyxy, faces.score, kps), refined

    def _keep(self, image: np.ndarray, box: np.ndarray, keypoints: np.ndarray, track: int, frame_index: int) -> None:
        patch, to_patch = face_patch(image, box)
        corners = cv2.goodFeaturesToTrack(patch, MAX_FEATURES, 0.01, 4, mask=_FEATURE_MASK)
        if corners is None or len(corners) < MIN_FOLLOWED:
            self._tracks.pop(track, None)  # a flat patch: nothing to follow, refine again next time
            return
        self._tracks[track] = _Refinement(patch, corners.astype(np.float32), _apply(to_patch, keypoints.astype(np.float64)),
                                          _side(box), frame_index)

    def forget(self, track_ids: Sequence[int]) -> None:
        for track in track_ids:
            self._tracks.pop(track, None)

    def clear(self) -> None:
        self._tracks.clear()
