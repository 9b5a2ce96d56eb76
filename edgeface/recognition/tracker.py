"""Face tracking across frames: IoU first, embedding distance to break ties.

One `Tracker` follows the faces of one camera. `update(detections, ts)` assigns every detection of
a frame to a track (an existing one or a new one) and returns a `TrackUpdate` with one track id per
detection (same order as the detections) and the tracks that ended on this frame.

Association is greedy on IoU, best pair first, against each track's last box moved by its recent
velocity (a face walking across the frame keeps overlapping its prediction). A pair is *ambiguous*
when a rival pair of the same track or of the same detection has an IoU within `tie_iou_margin` of
it (two faces crossing, a face next to where another was a moment ago). Ambiguities are settled by
embedding distance when the caller passes `embed`, a callable that returns unit embeddings for the
detection indices it is given (the pipeline aligns and embeds those faces on demand and reuses the
result); the track side uses the embeddings fed back through `observe`. A pair whose embedding
distance is above `appearance_max_distance` is refused even when the boxes overlap, so a new face
in an old face's place starts a new track rather than inheriting its identity; a weak overlap (IoU
below `confirm_iou_below`) of a track that has a reference embedding is always checked this way.

The appearance check also runs at association time on the faces the caller embeds anyway: with
`will_embed(track_id, detection)`, a pair whose face the pipeline is about to embed (its track is due
and the face passes the quality gate) is confirmed against the track's reference before it is
accepted, at no extra cost. A track whose face was never good enough to embed has no reference, so
nothing but box overlap holds it together: such a track ends after `max_unconfirmed_frames` frames
and the face starts a new one, so a box that slides from one turned-away face onto a neighbour's (the
hamilton clip, frames 225-255: Michelle Obama's profile, then Barack Obama's) cannot carry one track
from one person to the other. Nothing is lost by it: a track without a good face has no votes.

A track that gets no detection for more than `max_missed_frames` consecutive frames ends. With
`max_gap_s`, a track whose last detection is more than that many seconds older than the frame being
tracked ends before association: frames of a live stream that dropped and came back (or stalled) are
not a continuation of the faces seen before the gap, so those faces are not handed their old tracks
(and their identities). `end_all` ends every open track (scene cut, shutdown).

The tracker never mutates its inputs; its own state changes only through `update`, `observe` and
`end_all`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from edgeface.config import TrackingConfig
from edgeface.vision.boxes import SMALL_IOU_PAIRS, iou_matrix, pair_iou
from edgeface.vision.detections import FaceDetections

EmbedFn = Callable[[Sequence[int]], np.ndarray]
"""Given detection indices, returns their (k, d) unit embeddings (rows in the same order)."""
WillEmbedFn = Callable[[int, int], bool]
"""Given a track id and a detection index: will the caller embed that face on this frame anyway?"""

_CONFIG = TrackingConfig()  # the defaults are the config's: nothing states them twice
DEFAULT_IOU_MIN = _CONFIG.iou_min
DEFAULT_MAX_MISSED_FRAMES = _CONFIG.track_max_missed_frames
DEFAULT_TIE_IOU_MARGIN = _CONFIG.tie_iou_margin
DEFAULT_APPEARANCE_MAX_DISTANCE = _CONFIG.appearance_max_distance
"""Euclidean distance between unit embeddings above which two faces are not the same person for the
tracker. Deliberately loose (the gallery's same-person threshold is ~0.38; different people in LFW
are ~0.75 apart on average): it only has to catch a swap, never split a person."""
DEFAULT_MAX_UNCONFIRMED_FRAMES = _CONFIG.track_max_unconfirmed_frames
"""A track that was never embedded (every face refused by the quality gate: turned away, too small,
blurred) ends after this many frames (1 s at 30 fps); its next face starts a new track."""
DEFAULT_CONFIRM_IOU_BELOW = _CONFIG.confirm_iou_below
"""An association with IoU below this (a weak overlap: a fast face, or another face next to where one
was) is confirmed by embedding distance when the track has a reference embedding."""
VELOCITY_SMOOTHING = 0.5
"""Weight of the newest box motion in the velocity estimate (exponential smoothing)."""


Box = tuple[float, float, float, float]


class Track(NamedTuple):
    """One face followed over time. Immutable snapshot; the tracker replaces it on every change.

    Boxes and velocities are tuples of Python floats: a tracker follows a handful of faces, and for
    four numbers float arithmetic costs a fraction of numpy's per-call overhead (the same float64
    results)."""

    id: int
    started_ts: float
    last_ts: float
    first_frame: int
    last_frame: int
    box: Box
    """Last matched box, x1, y1, x2, y2."""
    velocity: Box = (0.0, 0.0, 0.0, 0.0)
    """Smoothed box motion per frame."""
    hits: int = 1
    """Frames with a detection."""
    missed: int = 0
    """Consecutive frames without a detection."""
    embedding: np.ndarray | None = None
    """Reference embedding (unit), from `observe`; None until the track's face was embedded."""

    @property
    def duration_s(self) -> float:
        return max(self.last_ts - self.started_ts, 0.0)

    def predicted_box(self, frames_ahead: int = 1) -> Box:
        b, v = self.box, self.velocity
        return (b[0] + v[0] * frames_ahead, b[1] + v[1] * frames_ahead,
                b[2] + v[2] * frames_ahead, b[3] + v[3] * frames_ahead)


class TrackUpdate(NamedTuple):
    """What one frame did: `track_ids[i]` is the track of detection i; `new` are the ids started on
    this frame; `ended` the tracks that ended (their last state); `embeddings` the embeddings the
    tracker asked for while settling ties (detection index -> unit vector), for the caller to reuse."""

    track_ids: np.ndarray
    new: frozenset[int]
    ended: tuple[Track, ...]
    embeddings: dict[int, np.ndarray]
    ambiguous: int = 0
    """Detections whose assignment needed a tie-break."""


class Tracker:
    def __init__(
        self,
        *,
        iou_min: float = DEFAULT_IOU_MIN,
        max_missed_frames: int = DEFAULT_MAX_MISSED_FRAMES,
        tie_iou_margin: float = DEFAULT_TIE_IOU_MARGIN,
        appearance_max_distance: float = DEFAULT_APPEARANCE_MAX_DISTANCE,
        confirm_iou_below: float = DEFAULT_CONFIRM_IOU_BELOW,
        max_gap_s: float | None = _CONFIG.track_max_gap_s,
        max_unconfirmed_frames: int | None = DEFAULT_MAX_UNCONFIRMED_FRAMES,
        first_id: int = 1,
        ids: Iterator[int] | None = None,
    ) -> None:
        if not 0.0 < iou_min <= 1.0:
            raise ValueError(f"iou_min must be in (0, 1], got {iou_min}")
        if max_missed_frames < 0:
            raise ValueError(f"max_missed_frames must be >= 0, got {max_missed_frames}")
        if not 0.0 <= tie_iou_margin <= 1.0:
            raise ValueError(f"tie_iou_margin must be in [0, 1], got {tie_iou_margin}")
        if not 0.0 < appearance_max_distance <= 2.0:
            raise ValueError(f"appearance_max_distance must be in (0, 2], got {appearance_max_distance}")
        if not 0.0 <= confirm_iou_below <= 1.0:
            raise ValueError(f"confirm_iou_below must be in [0, 1], got {confirm_iou_below}")
        if max_gap_s is not None and not max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0 (or None), got {max_gap_s}")
        if max_unconfirmed_frames is not None and max_unconfirmed_frames < 1:
            raise ValueError(f"max_unconfirmed_frames must be >= 1 (or None), got {max_unconfirmed_frames}")
        if first_id < 0:
            raise ValueError(f"first_id must be >= 0, got {first_id}")
        self.iou_min = iou_min
        self.max_missed_frames = max_missed_frames
        self.tie_iou_margin = tie_iou_margin
        self.appearance_max_distance = appearance_max_distance
        self.confirm_iou_below = confirm_iou_below
        self.max_gap_s = max_gap_s
        self.max_unconfirmed_frames = max_unconfirmed_frames
        self._ids = ids if ids is not None else itertools.count(first_id)
        """New track ids; the cameras of one process share one counter, so a track id names one track."""
        self._tracks: dict[int, Track] = {}

    @property
    def tracks(self) -> dict[int, Track]:
        """Open tracks by id (a copy)."""
        return dict(self._tracks)

    def __len__(self) -> int:
        return len(self._tracks)

    def observe(self, track_id: int, embedding: np.ndarray) -> None:
        """Feed back an embedding of the track's current face; it becomes the track's reference
        (a running mean of unit vectors, renormalised) used to settle later ties."""
        track = self._tracks.get(track_id)
        if track is None:
            raise KeyError(f"no open track {track_id}")
        vector = np.asarray(embedding, dtype=np.float64).reshape(-1)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        if track.embedding is not None:
            vector = track.embedding + vector
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        self._tracks[track_id] = track._replace(embedding=vector)

    def end_all(self) -> tuple[Track, ...]:
        """End every open track (scene cut, shutdown) and return them, oldest first."""
        ended = tuple(sorted(self._tracks.values(), key=lambda t: t.id))
        self._tracks.clear()
        return ended

    def update(self, detections: FaceDetections, ts: float, frame_index: int, embed: EmbedFn | None = None,
               will_embed: WillEmbedFn | None = None) -> TrackUpdate:
        gone: list[Track] = []
        if self.max_gap_s is not None:
            gone = [track for track in self._tracks.values() if ts - track.last_ts > self.max_gap_s]
        if self.max_unconfirmed_frames is not None:
            late = {track.id for track in gone}
            gone += [track for track in self._tracks.values() if track.embedding is None and track.id not in late
                     and frame_index - track.first_frame >= self.max_unconfirmed_frames]
        for track in gone:
            del self._tracks[track.id]
        tracks = list(self._tracks.values())  # oldest first: ids only grow, and a replaced entry keeps its place
        boxes: list[list[float]] = detections.xyxy.tolist()
        n = len(boxes)
        # Each track's predicted box and, for a face that stopped moving, its plain last box: the better
        # IoU of the two per pair.
        iou: list[list[float]]
        if tracks and n and len(tracks) * n <= SMALL_IOU_PAIRS // 2:
            iou = [[max(pair_iou(predicted, q), pair_iou(t.box, q)) for q in boxes]
                   for t in tracks for predicted in [t.predicted_box(frame_index - t.last_frame)]]
        elif tracks and n:
            both = np.array([t.predicted_box(frame_index - t.last_frame) for t in tracks] + [t.box for t in tracks])
            both_iou = iou_matrix(both, np.array(boxes))
            iou = np.maximum(both_iou[: len(tracks)], both_iou[len(tracks) :]).tolist()
        else:
            iou = [[] for _ in tracks]
        det_embeddings: dict[int, np.ndarray] = {}

        def embedding_of(indices: Sequence[int]) -> None:
            wanted = [i for i in indices if i not in det_embeddings]
            if embed is None or not wanted:
                return
            vectors = np.asarray(embed(wanted), dtype=np.float64)
            if vectors.shape[0] != len(wanted):
                raise ValueError(f"embed returned {vectors.shape[0]} rows for {len(wanted)} faces")
            for i, v in zip(wanted, vectors):
                det_embeddings[i] = v / max(float(np.linalg.norm(v)), 1e-12)

        def distance(t: int, d: int) -> float | None:
            ref = tracks[t].embedding
            if ref is None or d not in det_embeddings:
                return None
            return float(np.linalg.norm(ref - det_embeddings[d]))

        assignment = [-1] * n  # detection -> index into tracks
        free_t = [True] * len(tracks)
        free_d = [True] * n
        ambiguous = 0
        candidates = sorted(((v, t, d) for t, row in enumerate(iou) for d, v in enumerate(row) if v >= self.iou_min),
                            reverse=True)
        refused: set[tuple[int, int]] = set()
        while True:
            open_pairs = [(v, t, d) for v, t, d in candidates if free_t[t] and free_d[d] and (t, d) not in refused]
            if not open_pairs:
                break
            best, t, d = open_pairs[0]
            rivals = [(v, t2, d2) for v, t2, d2 in open_pairs
                      if (t2 == t or d2 == d) and v >= best - self.tie_iou_margin] if len(open_pairs) > 1 else []
            if len(rivals) > 1:
                ambiguous += 1
                # Settle by appearance when both sides have an embedding; pairs without one keep IoU order.
                embedding_of(sorted({d2 for _, _, d2 in rivals}))
                scored = [(distance(t2, d2), -v, t2, d2) for v, t2, d2 in rivals]
                known = [s for s in scored if s[0] is not None]
                if known:
                    _, _, t, d = min(known)
            if tracks[t].embedding is not None and (
                    iou[t][d] < self.confirm_iou_below  # a weak overlap must also look like the same face
                    or (will_embed is not None and will_embed(tracks[t].id, d))):  # free: embedded anyway
                embedding_of([d])
            if d in det_embeddings:  # (distance is None without the detection's embedding)
                gap = distance(t, d)
                if gap is not None and gap > self.appearance_max_distance:
                    refused.add((t, d))
                    continue
            assignment[d] = t
            free_t[t] = False
            free_d[d] = False

        # Commit: matched tracks move, unmatched ones age, unmatched detections start tracks.
        track_ids: list[int] = []
        new: set[int] = set()
        keep, moved = 1.0 - VELOCITY_SMOOTHING, VELOCITY_SMOOTHING
        for d, t in enumerate(assignment):
            box = boxes[d]
            if t >= 0:
                old = tracks[t]
                steps = max(frame_index - old.last_frame, 1)
                velocity = tuple(moved * ((now - then) / steps) + keep * v for now, then, v in zip(box, old.box, old.velocity))
                self._tracks[old.id] = Track(old.id, old.started_ts, ts, old.first_frame, frame_index,
                                             tuple(box), velocity, old.hits + 1, 0, old.embedding)  # type: ignore[arg-type]
                track_ids.append(old.id)
            else:
                track_id = next(self._ids)
                self._tracks[track_id] = Track(track_id, ts, ts, frame_index, frame_index, tuple(box))  # type: ignore[arg-type]
                track_ids.append(track_id)
                new.add(track_id)
        ended: list[Track] = sorted(gone, key=lambda track: track.id)
        for t, old in enumerate(tracks):
            if free_t[t]:
                missed = old.missed + 1
                if missed > self.max_missed_frames:
                    ended.append(self._tracks.pop(old.id))
                else:
                    self._tracks[old.id] = old._replace(missed=missed)
        return TrackUpdate(np.array(track_ids, np.int64), frozenset(new), tuple(ended),
                           {k: v.astype(np.float32) for k, v in det_embeddings.items()}, ambiguous)
