"""Per-track decisions: who is this track? A quality-weighted vote over the matches of its faces.

`Decider` keeps, per open track, the good faces the pipeline embedded (their embedding, quality
weight and gallery match) and turns them into events:

- **vote**: every face votes for its match (an enrolled name, or "unknown" when the gallery had no
  match under its threshold) with its quality weight. A name wins when it has at least
  `min_good_faces` faces, at least `min_vote_share` of the total weight, and the runner-up name has
  at most `max_runner_up_ratio` of its weight (otherwise it is a tie). "unknown" wins the same way
  but only after `min_good_faces_unknown` faces (a known person's first faces are often the worst:
  turning in, motion blur), or when the track has `max_faces_undecided` faces and still no clear
  winner (weak evidence = unknown), or when it ends with at least `min_good_faces` faces and no
  decision.
- **events**: a decided track produces ONE `recognized` event (or one `unknown` event); nothing more
  per frame. The recognized event names a `runner_up` (a look-alike, such as a relative) when most of
  the faces that voted for the name had that other person within `runner_up_margin` of it; it is a
  flag for consumers and does not change the decision (measured: see DecisionPolicy.runner_up_margin). Every track gets a `track_ended` event when it ends, with its decision.
- **re-check**: after a decision the pipeline keeps embedding a face now and then (`wants_embedding`
  tells it when). A re-check that disagrees with the decision shortens the interval; when the last
  `recheck_window` re-checks decide, by the same vote rules, for another outcome, the decision
  switches and the new outcome gets its event (a track can switch people when boxes swap).
- **unknown**: the track's best faces (`unknown_best_faces`, by weight) are averaged (mean of the
  unit embeddings, renormalised) into one embedding, an `UnknownTrack` that the pipeline's cluster stage
  takes (`take_unknown_tracks`) and answers for (`assign_cluster`); the stage fills the cluster fields
  of the unknown event. The decider never calls the clustering itself. With the track go the tracks that were on a frame together with this one (`seen_together`): two faces on one
  frame are two people, so clustering never puts them in one cluster (cannot-links), and a name any
  of them was recognised as is not this track's name.
- **recent tracks**: the last `recent_tracks` decided tracks keep, per name they were decided as,
  the aggregated embedding of the faces that voted for it (and of the best faces for "unknown"), so
  that "track 42 was not NAME" (negative feedback, `Gallery.reject_match`) can be acted on after the
  event went out. Bounded; thread-safe (`recent` is read from the command thread).

Pure logic: no models, no I/O, no clock (timestamps come with the calls).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from edgeface.config import PipelineConfig
from edgeface.events import RecognizedEvent, RunnerUp, TrackEndedEvent, UnknownEvent

log = logging.getLogger(__name__)

UNKNOWN = "unknown"

_PIPELINE = PipelineConfig()  # the defaults are the config's: nothing states them twice
_DECISION = _PIPELINE.decision
"""The decision for a track that is nobody enrolled (also the value of `track_ended.decision`)."""


@dataclass(frozen=True)
class Vote:
    """One good face of a track: its embedding, quality weight and what the gallery said."""

    embedding: np.ndarray
    weight: float
    name: str | None
    """Matched name, None for no match under the threshold."""
    distance: float
    """Distance to the matched identity (to the nearest one when name is None)."""
    frame_index: int
    chip: np.ndarray | None = None
    """The aligned face (150, 150, 3), for the clusters' contact sheet when crops are allowed."""
    runner_up: str | None = None
    """The nearest enrolled person other than `name` (None: nobody else enrolled)."""
    runner_up_distance: float = math.inf
    second_chip: np.ndarray | None = None
    """The SFace chip (112, 112, 3) from the same landmarks, when there is a second opinion: an unknown
    track's exemplar is embedded by SFace from the chips of the faces its dlib embedding averages."""


def track_key(camera: str, track_id: int, started: datetime) -> str:
    """A key unique per track (track ids restart with the process; their start time does not)."""
    return f"{camera}:{track_id}:{started.timestamp():.3f}"


@dataclass(frozen=True)
class UnknownTrack:
    """What clustering gets for one unknown track: one aggregated embedding, its quality and times."""

    camera: str
    track_id: int
    embedding: np.ndarray
    """Mean of the unit embeddings of the best faces, renormalised (128,)."""
    quality: float
    """Mean quality weight of those faces, 0..1."""
    faces_used: int
    started: datetime
    seen: datetime
    chip: np.ndarray | None = None
    """The aligned chip of the track's best face (stored only when clusters.store_face_crops is on)."""
    apart_from: tuple[str, ...] = ()
    """Keys (`track_key`) of the tracks that were on a frame together with this one."""
    not_names: tuple[str, ...] = ()
    """Names those tracks were recognised as (this track is none of them)."""
    second_chips: np.ndarray | None = None
    """The SFace chips (k, 112, 112, 3) of the faces `embedding` averages (None without a second opinion)."""
    second_embedding: np.ndarray | None = None
    """Their SFace embeddings' unit mean (128,), filled in by the pipeline before clustering."""
    second_model: tuple[str, str] | None = None
    """(model id, model version) of `second_embedding`."""

    @property
    def key(self) -> str:
        return track_key(self.camera, self.track_id, self.started)


@dataclass(frozen=True)
class ClusterAssignment:
    """The cluster stage's answer for an unknown track (the fields of the unknown event)."""

    cluster_id: str
    status: str
    """"tentative" or "confirmed"."""
    visit_count: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class Outcome:
    """A vote's result: decision is a name, UNKNOWN, or None (not enough evidence yet)."""

    decision: str | None
    confidence: float = 0.0
    distance: float = 0.0
    faces_used: int = 0
    runner_up: tuple[str, float] | None = None
    """(name, distance) of a look-alike that was within runner_up_margin on most of the voting faces."""


@dataclass(frozen=True)
class DecisionPolicy:
    """The thresholds of the vote; see the module docstring."""

    min_good_faces: int = _DECISION.min_good_faces
    min_good_faces_unknown: int = _DECISION.min_good_faces_unknown
    max_faces_undecided: int = _DECISION.max_faces_undecided
    min_vote_share: float = _DECISION.min_vote_share
    max_runner_up_ratio: float = _DECISION.max_runner_up_ratio
    unknown_best_faces: int = _DECISION.unknown_best_faces
    max_votes_kept: int = 32
    recheck_window: int = _DECISION.recheck_window
    runner_up_margin: float = _DECISION.runner_up_margin
    """Flag only: a close runner-up is reported on the recognized event and does not change the decision.
    Measured (python tools/measure_lookalikes.py, one photo per person enrolled): a single face whose
    runner-up is within 0.04 is given a wrong name 29% (LFW) / 34% (CelebA) of the time against 0.4% /
    1.9% without; but tracks decided by the vote (3 faces) were never wrong with a close runner-up, and
    asking for 6 faces then changed no decision on 768 LFW and 300 CelebA simulated tracks.
    0.06 since the fused score (python tools/measure_second_opinion.py --runner-up-margins 0.04 0.06, every
    probe fused, first photo of each person enrolled): names without the flag are wrong 3.1% (LFW) / 0.3%
    (CelebA) of the time against 7.6% / 0.5% at 0.04, and the flag catches 90% / 78% of the wrong names
    against 74% / 61%; flagged names are wrong 94% / 19% (96% / 34% at 0.04)."""

    def __post_init__(self) -> None:
        if self.min_good_faces < 1:
            raise ValueError(f"min_good_faces must be >= 1, got {self.min_good_faces}")
        if self.min_good_faces_unknown < self.min_good_faces:
            raise ValueError("min_good_faces_unknown must be >= min_good_faces")
        if self.max_faces_undecided < self.min_good_faces_unknown:
            raise ValueError("max_faces_undecided must be >= min_good_faces_unknown")
        if not 0.5 <= self.min_vote_share <= 1.0:
            raise ValueError(f"min_vote_share must be in [0.5, 1], got {self.min_vote_share}")
        if not 0.0 <= self.max_runner_up_ratio < 1.0:
            raise ValueError(f"max_runner_up_ratio must be in [0, 1), got {self.max_runner_up_ratio}")
        if self.unknown_best_faces < 1 or self.recheck_window < 1:
            raise ValueError("unknown_best_faces and recheck_window must be >= 1")
        if not 0.0 <= self.runner_up_margin <= 2.0:
            raise ValueError(f"runner_up_margin must be in [0, 2], got {self.runner_up_margin}")
        if self.max_votes_kept < self.max_faces_undecided:
            raise ValueError("max_votes_kept must be >= max_faces_undecided")


def vote(votes: Sequence[Vote], policy: DecisionPolicy, *, final: bool = False, min_faces: int | None = None) -> Outcome:
    """The quality-weighted vote over `votes`. `final`: the track is over (or out of patience), so
    weak evidence is decided as unknown instead of waiting. `min_faces` overrides min_good_faces
    (re-check windows)."""
    needed = policy.min_good_faces if min_faces is None else min_faces
    if len(votes) < needed:
        return Outcome(None)
    total = float(sum(v.weight for v in votes))
    if total <= 0:
        return Outcome(None)
    by_name: dict[str, float] = {}
    for v in votes:
        key = v.name if v.name is not None else UNKNOWN
        by_name[key] = by_name.get(key, 0.0) + v.weight
    ranked = sorted(((w, k) for k, w in by_name.items() if k != UNKNOWN), reverse=True)
    unknown_votes = [v for v in votes if v.name is None]
    if ranked:
        weight, name = ranked[0]
        runner_up = ranked[1][0] if len(ranked) > 1 else 0.0
        mine = [v for v in votes if v.name == name]
        if len(mine) >= needed and weight >= policy.min_vote_share * total and runner_up <= policy.max_runner_up_ratio * weight:
            distance = float(np.average([v.distance for v in mine], weights=[v.weight for v in mine]))
            return Outcome(name, weight / total, distance, len(mine), close_runner_up(mine, policy.runner_up_margin))
    unknown_needed = policy.min_good_faces_unknown if min_faces is None else min_faces
    unknown_weight = by_name.get(UNKNOWN, 0.0)
    clear_unknown = len(unknown_votes) >= unknown_needed and unknown_weight >= policy.min_vote_share * total
    if clear_unknown or final or len(votes) >= policy.max_faces_undecided:
        return Outcome(UNKNOWN, unknown_weight / total, 0.0, len(votes))
    return Outcome(None)


def close_runner_up(mine: Sequence[Vote], margin: float) -> tuple[str, float] | None:
    """(name, weighted mean distance) of the person most often within `margin` of the decided one
    among the faces that voted for it, when those faces hold at least half of their weight."""
    close = [(v.runner_up, v) for v in mine if v.runner_up is not None and v.runner_up_distance - v.distance < margin]
    if not close:
        return None
    by_name: dict[str, float] = {}
    for other, v in close:
        by_name[other] = by_name.get(other, 0.0) + v.weight
    name = max(by_name, key=by_name.__getitem__)
    if 2 * by_name[name] < sum(v.weight for v in mine):
        return None
    chosen = [v for other, v in close if other == name]
    return name, float(np.average([v.runner_up_distance for v in chosen], weights=[v.weight for v in chosen]))


def best_votes(votes: Sequence[Vote], best: int) -> list[Vote]:
    """The `best` highest-weight faces."""
    return sorted(votes, key=lambda v: v.weight, reverse=True)[:best]


def drop_unused_chips(votes: list[Vote], best: int) -> list[Vote]:
    """The votes with only the chips a decision can use: the best face's chip (the unknown track's
    crop) and the `best` faces' SFace chips (its exemplar); up to max_votes_kept chips of 67 + 38 KB
    per track otherwise stay in memory until it ends. A kept chip is a copy of its own: the frame's
    chips come as rows of one stacked array, which a row kept as a view would keep whole."""
    chosen = best_votes(votes, best)
    first = chosen[0] if chosen else None
    seconds = {id(v) for v in chosen}
    out = []
    for v in votes:
        chip = own_copy(v.chip) if v is first else None
        second_chip = own_copy(v.second_chip) if id(v) in seconds else None
        out.append(v if chip is v.chip and second_chip is v.second_chip
                   else dataclasses.replace(v, chip=chip, second_chip=second_chip))
    return out


def own_copy(chip: np.ndarray | None) -> np.ndarray | None:
    """The chip, copied when it is a view into a larger array."""
    return chip if chip is None or chip.base is None else chip.copy()


def without_chips(vote_: Vote) -> Vote:
    return vote_ if vote_.chip is None and vote_.second_chip is None else \
        dataclasses.replace(vote_, chip=None, second_chip=None)


def aggregate_embedding(votes: Sequence[Vote], best: int) -> tuple[np.ndarray, float, int]:
    """(unit mean embedding of the `best` highest-weight faces, their mean weight, how many)."""
    chosen = best_votes(votes, best)
    stacked = np.stack([np.asarray(v.embedding, np.float64) for v in chosen])
    stacked /= np.maximum(np.linalg.norm(stacked, axis=1, keepdims=True), 1e-12)
    mean = stacked.mean(axis=0)
    mean /= max(float(np.linalg.norm(mean)), 1e-12)
    return mean.astype(np.float32), float(np.mean([v.weight for v in chosen])), len(chosen)


@dataclass(frozen=True)
class RecentTrack:
    """A decided track as remembered for negative feedback."""

    camera: str
    track_id: int
    decision: str
    """The latest decision: a name or "unknown"."""
    embeddings: dict[str, np.ndarray]
    """Per decision the track had, the unit aggregate (128,) of the faces behind it."""
    decided: datetime


@dataclass
class _TrackState:
    track_id: int
    started: datetime
    last_seen: datetime
    faces_seen: int = 0
    votes: list[Vote] = field(default_factory=list)
    decision: str | None = None
    cluster_id: str | None = None
    decided_frame: int | None = None
    last_embedded_frame: int | None = None
    last_refused_frame: int | None = None
    """The last frame whose aligned face the quality gate refused (blurred)."""
    rechecks: list[Vote] = field(default_factory=list)
    suspicious: bool = False
    together: dict[int, _TrackState] = field(default_factory=dict)
    """Tracks seen on a frame with this one (cleared when it ends, so ended tracks form no chains)."""


class Decider:
    """Per-track decision state for one camera; `add_vote`/`end_track` return the events to publish."""

    def __init__(
        self,
        station: str,
        camera: str,
        policy: DecisionPolicy | None = None,
        *,
        clustering: bool = False,
        embed_every_frames: int = _PIPELINE.embed_every_frames,
        recheck_every_frames: int = _PIPELINE.recheck_every_frames,
        recent_tracks: int = _DECISION.recent_tracks_kept,
    ) -> None:
        if embed_every_frames < 1 or recheck_every_frames < 1:
            raise ValueError("embed_every_frames and recheck_every_frames must be >= 1")
        if recent_tracks < 0:
            raise ValueError("recent_tracks must be >= 0")
        self.recent_tracks = recent_tracks
        self._recent: OrderedDict[int, RecentTrack] = OrderedDict()
        self._recent_lock = threading.Lock()
        self.station = station
        self.camera = camera
        self.policy = policy or DecisionPolicy()
        self.clustering = clustering
        """Keep each unknown track's `UnknownTrack` for the cluster stage (`take_unknown_tracks`)."""
        self._unclustered: list[UnknownTrack] = []
        self.embed_every_frames = embed_every_frames
        self.recheck_every_frames = recheck_every_frames
        self._tracks: dict[int, _TrackState] = {}
        self.switches = 0

    # -- bookkeeping --------------------------------------------------------------------------

    def _state(self, track_id: int, ts: datetime) -> _TrackState:
        state = self._tracks.get(track_id)
        if state is None:
            state = self._tracks[track_id] = _TrackState(track_id, ts, ts)
        return state

    def seen(self, track_id: int, ts: datetime) -> None:
        """The track had a face on a frame at ts (embedded or not)."""
        state = self._state(track_id, ts)
        state.faces_seen += 1
        state.last_seen = max(state.last_seen, ts)

    def seen_together(self, track_ids: Sequence[int]) -> None:
        """These tracks had a face on the same frame (call after `seen` for each): they are different
        people. O(k^2) for k faces on the frame."""
        states = [self._tracks[t] for t in dict.fromkeys(track_ids) if t in self._tracks]
        for a in states:
            for b in states:
                if a is not b:
                    a.together[b.track_id] = b

    def decision(self, track_id: int) -> str | None:
        state = self._tracks.get(track_id)
        return state.decision if state else None

    def take_unknown_tracks(self) -> list[UnknownTrack]:
        """The tracks decided unknown since the last call, for the cluster stage (with `clustering`)."""
        tracks, self._unclustered = self._unclustered, []
        return tracks

    def assign_cluster(self, track_id: int, cluster_id: str) -> None:
        """The cluster stage put this open track's unknown face in `cluster_id` (its label, and its
        track_ended's cluster_id)."""
        state = self._tracks.get(track_id)
        if state is not None and state.decision == UNKNOWN:
            state.cluster_id = cluster_id

    def cluster_of(self, track_id: int) -> str | None:
        state = self._tracks.get(track_id)
        return state.cluster_id if state else None

    def open_tracks(self) -> list[int]:
        return sorted(self._tracks)

    def wants_embedding(self, track_id: int, frame_index: int) -> bool:
        """Embed this track's face on this frame? New tracks: yes; then every embed_every_frames
        until decided; then every recheck_every_frames (embed_every_frames while a re-check disagrees).
        A face refused on its aligned chip (`refused_on_chip`) is tried again embed_every_frames later,
        not on every frame: alignment and the blur measure are the dearest steps after the models."""
        state = self._tracks.get(track_id)
        if state is None:
            return True
        refused, embedded = state.last_refused_frame, state.last_embedded_frame
        if refused is not None and (embedded is None or refused > embedded):
            return frame_index - refused >= self.embed_every_frames
        if embedded is None:
            return True
        interval = self.embed_every_frames
        if state.decision is not None and not state.suspicious:
            interval = self.recheck_every_frames
        return frame_index - embedded >= interval

    def refused_on_chip(self, track_id: int, frame_index: int) -> None:
        """The track's face on this frame was aligned and then refused by the quality gate."""
        state = self._tracks.get(track_id)
        if state is not None:
            state.last_refused_frame = frame_index

    def recent(self, track_id: int) -> RecentTrack | None:
        """The remembered decided track (open or ended), or None when unknown or forgotten. Thread-safe."""
        with self._recent_lock:
            return self._recent.get(track_id)

    def recent_track_ids(self) -> list[int]:
        """Remembered decided tracks, oldest decision first. Thread-safe."""
        with self._recent_lock:
            return list(self._recent)

    def forget_name(self, name: str) -> int:
        """Drop what the recent-track memory holds about NAME (a forgotten person); returns how many
        tracks it touched. Thread-safe."""
        touched = 0
        with self._recent_lock:
            for track_id, recent in list(self._recent.items()):
                if name in recent.embeddings:
                    touched += 1
                    rest = {k: v for k, v in recent.embeddings.items() if k != name}
                    if rest:
                        self._recent[track_id] = RecentTrack(recent.camera, track_id, recent.decision, rest, recent.decided)
                    else:
                        del self._recent[track_id]
        return touched

    def _remember(self, state: _TrackState, decision: str, embedding: np.ndarray, ts: datetime) -> None:
        if self.recent_tracks == 0:
            return
        with self._recent_lock:
            old = self._recent.pop(state.track_id, None)
            embeddings = dict(old.embeddings) if old is not None else {}
            embeddings[decision] = np.array(embedding, np.float32)
            self._recent[state.track_id] = RecentTrack(self.camera, state.track_id, decision, embeddings, ts)
            while len(self._recent) > self.recent_tracks:
                self._recent.popitem(last=False)

    # -- votes -> events ----------------------------------------------------------------------

    def add_vote(self, track_id: int, vote_: Vote, ts: datetime) -> list[RecognizedEvent | UnknownEvent]:
        """Record one good, embedded and matched face of a track; returns the events it causes."""
        state = self._state(track_id, ts)
        state.last_embedded_frame = vote_.frame_index
        if not self.clustering:  # chips are for the cluster stage only
            vote_ = without_chips(vote_)
        # A decided track's votes need no chips: a switch votes on its re-checks.
        state.votes.append(vote_ if state.decision is None else without_chips(vote_))
        if len(state.votes) > self.policy.max_votes_kept:  # keep the best faces, drop the weakest
            del state.votes[min(range(len(state.votes)), key=lambda i: state.votes[i].weight)]
        if state.decision is None:
            state.votes = drop_unused_chips(state.votes, self.policy.unknown_best_faces)
            outcome = vote(state.votes, self.policy)
            return self._decide(state, outcome, ts) if outcome.decision is not None else []
        # Re-check of a decided track. Only a switch to unknown uses the re-checks' chips.
        state.rechecks.append(vote_)
        state.rechecks = state.rechecks[-self.policy.recheck_window:]
        state.rechecks = drop_unused_chips(state.rechecks, self.policy.unknown_best_faces) \
            if state.decision != UNKNOWN else [without_chips(v) for v in state.rechecks]
        agrees = (vote_.name or UNKNOWN) == state.decision
        state.suspicious = not agrees
        if agrees:
            if state.decision != UNKNOWN:  # the remembered embedding follows the faces that keep matching
                mine = [v for v in state.votes if v.name == state.decision]
                self._remember(state, state.decision, aggregate_embedding(mine, self.policy.unknown_best_faces)[0], ts)
            return []
        window = vote(state.rechecks, self.policy, min_faces=self.policy.recheck_window)
        if window.decision is not None and window.decision != state.decision and (
                window.decision != UNKNOWN or all(v.name is None for v in state.rechecks)):
            log.info("track %d switches from %s to %s", track_id, state.decision, window.decision)
            self.switches += 1
            state.votes = list(state.rechecks)
            state.rechecks = []
            state.suspicious = False
            return self._decide(state, vote(state.votes, self.policy, final=True, min_faces=1), ts)
        return []

    def _decide(self, state: _TrackState, outcome: Outcome, ts: datetime) -> list[RecognizedEvent | UnknownEvent]:
        events = self._decision_events(state, outcome, ts)
        if state.decision is not None:
            state.votes = [without_chips(v) for v in state.votes]
        return events

    def _decision_events(self, state: _TrackState, outcome: Outcome, ts: datetime) -> list[RecognizedEvent | UnknownEvent]:
        state.decision = outcome.decision
        state.decided_frame = state.last_embedded_frame
        state.rechecks = []
        if outcome.decision is None:
            return []
        if outcome.decision != UNKNOWN:
            state.cluster_id = None
            mine = [v for v in state.votes if v.name == outcome.decision]
            self._remember(state, outcome.decision, aggregate_embedding(mine or state.votes, self.policy.unknown_best_faces)[0], ts)
            return [RecognizedEvent(
                ts=ts, station=self.station, camera=self.camera, track_id=state.track_id, name=outcome.decision,
                confidence=min(max(outcome.confidence, 0.0), 1.0), distance=max(outcome.distance, 0.0),
                faces_used=max(outcome.faces_used, 1),
                runner_up=None if outcome.runner_up is None else RunnerUp(name=outcome.runner_up[0],
                                                                          distance=outcome.runner_up[1]),
            )]
        embedding, quality, used = aggregate_embedding(state.votes, self.policy.unknown_best_faces)
        self._remember(state, UNKNOWN, embedding, ts)
        state.cluster_id = None
        if self.clustering:
            best = max(state.votes, key=lambda v: v.weight)
            others = sorted(state.together.values(), key=lambda o: o.track_id)
            apart = tuple(track_key(self.camera, o.track_id, o.started) for o in others)
            names = tuple(sorted({o.decision for o in others if o.decision not in (None, UNKNOWN)}))  # type: ignore[misc]
            chosen = best_votes(state.votes, self.policy.unknown_best_faces)
            seconds = [v.second_chip for v in chosen if v.second_chip is not None]
            second_chips = np.stack(seconds) if seconds and len(seconds) == len(chosen) else None
            self._unclustered.append(UnknownTrack(self.camera, state.track_id, embedding, quality, used,
                                                  state.started, state.last_seen, best.chip, apart, names, second_chips))
        return [UnknownEvent(ts=ts, station=self.station, camera=self.camera, track_id=state.track_id,
                             faces_used=used)]

    def end_track(self, track_id: int, ended: datetime | None = None, *,
                  now: datetime | None = None) -> list[RecognizedEvent | UnknownEvent | TrackEndedEvent]:
        """Close a track: a last-chance decision when it has enough faces, then its track_ended.
        ended: when its face was last seen (default: the last `seen`); now: when the end is noticed,
        the events' ts (default: ended), so they are never stamped earlier than the events before them."""
        if ended is None and now is None:
            raise ValueError("end_track needs ended or now")
        state = self._tracks.pop(track_id, None)
        if state is None:
            first = ended or now
            assert first is not None
            state = _TrackState(track_id, first, first)
        ended = max(ended, state.last_seen) if ended is not None else state.last_seen
        ts = max(now, ended) if now is not None else ended
        events: list[RecognizedEvent | UnknownEvent | TrackEndedEvent] = []
        if state.decision is None and len(state.votes) >= self.policy.min_good_faces:
            events += self._decide(state, vote(state.votes, self.policy, final=True), ts)
        state.together.clear()
        events.append(TrackEndedEvent(
            ts=ts, station=self.station, camera=self.camera, track_id=track_id, started=state.started, ended=ended,
            duration_s=max((ended - state.started).total_seconds(), 0.0), faces_seen=state.faces_seen,
            decision=state.decision, cluster_id=state.cluster_id if state.decision == UNKNOWN else None,
        ))
        return events
