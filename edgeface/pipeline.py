"""The camera loop: frame -> detect -> track -> schedule -> gate -> align -> embed -> match -> decide -> cluster -> bus.

`Pipeline` wires the stages it is given (constructor injection) and adds no business logic of its
own: detection is `edgeface.vision`, tracking `edgeface.recognition.tracker`, the gate
`edgeface.vision.quality`, decisions `edgeface.recognition.decider`, clustering a `ClusterStage`
(`edgeface.storage.cluster_store`), and every event leaves through the `EventBus` (`edgeface.bus`).
One `FrameFaces` per frame carries the columns the stages add; each stage returns a new one. Per frame:

1. detect faces (optionally on a downscaled frame plus tiles, see `edgeface.vision.tiling`);
2. a scene cut (edited video: the whole picture changes at once; checked on the detector's own
   shrunk copy of the frame) ends every open track;
3. track: every face gets a track id; ties between overlapping faces are settled by embedding
   distance (the tracker asks for those embeddings through a callback);
4. schedule: only faces whose track the decider wants embedded now (a new track; then every K frames
   until decided; then an occasional re-check) go on: cheap gate checks first (score, size, pose),
   then alignment, the blur check on the chip (a blurred face waits K frames before its next try),
   and ONE embedder call for all of them;
5. the gallery matches them and the decider votes; the unknown tracks it decided go to the cluster
   stage, whose merges and answers (cluster fields) join the frame's events; all of them go to the bus.

Every stage is timed (`PipelineStats.stage_s`); the model runs are timed separately when the
detectors' runners are wrapped in `TimedRunner`s (`bench pipeline` does this) so that the overhead
over the model floor can be measured.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from edgeface.bus import EventBus
from edgeface.events import Event, TrackEndedEvent, UnknownEvent, utc_now
from edgeface.io.memory import trim_free_heap
from edgeface.recognition.decider import UNKNOWN, ClusterAssignment, Decider, DecisionPolicy, UnknownTrack, Vote
from edgeface.recognition.false_alarm import MatchThreshold
from edgeface.recognition.tracker import Tracker
from edgeface.vision.analyzer import CameraModels, FaceAnalyzer, align_faces, camera_models
from edgeface.vision.detections import FaceDetections
from edgeface.vision.quality import (
    QualityGate,
    QualityMeasures,
    QualityReason,
    measures_before_blur,
    with_blur,
)
from edgeface.vision.scene import SceneCutDetector

if TYPE_CHECKING:
    from edgeface.config import Config
    from edgeface.recognition.fusion import SecondOpinion
    from edgeface.storage.gallery import Match
    from edgeface.vision.sface import SecondEmbedder

log = logging.getLogger(__name__)

STAGES = ("detect", "track", "quality", "align", "embed", "match", "second_opinion", "decide", "cluster", "sink")
"""Timed stages; `PipelineStats.stage_ms_per_frame` adds "other" (the glue between them), so that the
figures add up to the time inside Pipeline.process."""

EPOCH_TS_MIN = 1e9
"""Frame timestamps at or above this are seconds since the Unix epoch (live sources); smaller ones are
seconds since the start of the stream (files), placed after the pipeline's start time."""


class FrameLike(Protocol):
    """What the pipeline needs of a frame (edgeface.io.sources.Frame satisfies it)."""

    image: np.ndarray
    index: int
    ts: float


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> FaceDetections: ...


class Aligner(Protocol):
    def align(self, image: np.ndarray, detections: FaceDetections) -> np.ndarray: ...


class Embedder(Protocol):
    def embed(self, chips_bgr: np.ndarray) -> np.ndarray: ...


class Matcher(Protocol):
    def match(self, embeddings: np.ndarray) -> list[Match]: ...


class ClusterStage(Protocol):
    """Clusters an unknown track: its cluster (None when it could not be clustered) and the events the
    update caused (merges, events other processes queued), published before the frame's own."""

    def assign(self, track: UnknownTrack) -> tuple[ClusterAssignment | None, list[Event]]: ...


class NoGallery:
    """A matcher for a station without a gallery: every face is unknown."""

    def __init__(self) -> None:
        # Imported here, not on the first face (the match stage is timed).
        from edgeface.storage.gallery import Match

        self._match = Match

    def match(self, embeddings: np.ndarray) -> list[Match]:
        return [self._match(None, float("inf")) for _ in range(len(embeddings))]


class TimedRunner:
    """Wraps a model Runner and adds up the wall time of its `run` calls (the model floor)."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner
        self.input_shape = runner.input_shape
        self.seconds = 0.0
        self.calls = 0

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        start = time.perf_counter()
        try:
            return self._runner.run(batch)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


# -- the per-frame object, results and stats -----------------------------------------------------


@dataclass(frozen=True)
class FrameFaces:
    """One frame's faces as the stages see them, one column per stage; a stage returns a copy with its
    column added (`dataclasses.replace`) and never changes the one it was given. Columns keyed by face
    index (the row of `detections`) hold only the faces the stage worked on."""

    index: int
    ts: datetime
    detections: FaceDetections
    """Boxes, scores, keypoints (detect)."""
    scene_cut: bool = False
    track_ids: tuple[int, ...] = ()
    """One per face (track)."""
    due: tuple[int, ...] = ()
    """Faces whose track wants an embedding now (schedule)."""
    rejected: Mapping[int, QualityReason] = field(default_factory=dict)
    """Faces the quality gate refused, with the reason (gate)."""
    weights: Mapping[int, float] = field(default_factory=dict)
    """Faces that passed the gate, with their quality weight (gate)."""
    chips: Mapping[int, np.ndarray] = field(default_factory=dict)
    """Aligned chips (align; the tracker may ask for some to settle a tie)."""
    second_chips: Mapping[int, np.ndarray] = field(default_factory=dict)
    """SFace chips from the same landmarks (align, with a second opinion); embedded only when asked (match)."""
    embeddings: Mapping[int, np.ndarray] = field(default_factory=dict)
    """Embeddings (embed)."""
    matches: Mapping[int, Match] = field(default_factory=dict)
    """Gallery matches of the faces that passed the gate (match)."""

    def __len__(self) -> int:
        return len(self.detections)


# -- results and stats ---------------------------------------------------------------------------


class FaceResult(NamedTuple):
    """One face on one frame, for drawing: box in source-frame pixels, its track and the track's label.
    (Named tuples, like FrameResult: one or more per frame, and cheaper to make than frozen dataclasses.)"""

    box: np.ndarray
    track_id: int
    label: str | None
    """The decided name, the cluster id or "unknown" for unknowns, None while undecided."""
    embedded: bool
    rejected: str | None
    """Quality-gate reason when this face was tried and refused."""


class FrameResult(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index, as a frame number should
    ts: datetime
    faces: tuple[FaceResult, ...]
    events: tuple[Any, ...]
    scene_cut: bool = False


@dataclass
class PipelineStats:
    frames: int = 0
    faces: int = 0
    embedded: int = 0
    tracks_started: int = 0
    tracks_ended: int = 0
    scene_cuts: int = 0
    ambiguous: int = 0
    second_opinions: int = 0
    """Faces whose match had the second opinion (SFace embedded and fused)."""
    second_exemplars: int = 0
    """Unknown tracks embedded by SFace for their cluster exemplar."""
    second_opinion_tracks: int = 0
    """Tracks with at least one such face."""
    quality_rejections: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    process_s: float = 0.0
    """Wall time inside Pipeline.process (all stages + glue), seconds."""

    def count_event(self, event: Event) -> None:
        """A bus subscriber: every event of the station, whichever stage or command published it."""
        self.events[event.type] += 1

    def stage_ms_per_frame(self) -> dict[str, float]:
        """ms per frame of each stage and of "other", the rest of process_s: they add up to it."""
        stages = {k: 1000 * v / max(self.frames, 1) for k, v in self.stage_s.items()}
        stages["other"] = max(0.0, 1000 * self.process_s / max(self.frames, 1) - sum(stages.values()))
        return stages


# -- the pipeline --------------------------------------------------------------------------------


class Pipeline:
    def __init__(
        self,
        *,
        detector: Detector,
        aligner: Aligner,
        embedder: Embedder,
        matcher: Matcher | None,
        decider: Decider,
        bus: EventBus,
        tracker: Tracker | None = None,
        gate: QualityGate | None = None,
        scene_cut: SceneCutDetector | None = None,
        clusters: ClusterStage | None = None,
        clock: Callable[[], datetime] = utc_now,
        second: SecondEmbedder | None = None,
    ) -> None:
        self.detector = detector
        self.second = second
        """SFace, the second opinion; None: dlib alone."""
        self._asked_tracks: set[int] = set()
        self.aligner = aligner
        self.embedder = embedder
        self.matcher = matcher or NoGallery()
        self.decider = decider
        self.bus = bus
        self.tracker = tracker if tracker is not None else Tracker()  # (an empty Tracker is falsy: len 0)
        self.gate = gate or QualityGate()
        self.scene_cut = scene_cut
        self.clusters = clusters
        self.stats = PipelineStats()
        bus.subscribe(self._count_event, name="pipeline stats")
        self._clock = clock
        self._start = clock()
        self._last_ts = self._start
        self._lock = threading.Lock()
        self._closed = False

    # -- helpers ------------------------------------------------------------------------------

    def _count_event(self, event: Event) -> None:
        """This camera's events and the station's (several cameras may share the bus)."""
        if event.camera is None or event.camera == self.decider.camera:
            self.stats.count_event(event)

    def frame_time(self, ts: float) -> datetime:
        """The wall-clock time of a frame: its capture time for a live source (ts is time.time()), the
        time it is processed for a file or folder (ts is its position there, and a file is read faster
        than real time: position-based times would run into the future). Never earlier than the
        previous frame's, so events come out in ts order."""
        if ts >= EPOCH_TS_MIN:
            when = datetime.fromtimestamp(ts, timezone.utc)
        else:
            when = self._clock()
        return max(when, self._last_ts)

    def _label(self, track_id: int) -> str | None:
        decision = self.decider.decision(track_id)
        if decision == UNKNOWN:
            return self.decider.cluster_of(track_id) or UNKNOWN
        return decision

    # -- the stages ---------------------------------------------------------------------------

    def _detect(self, image: np.ndarray, index: int, ts: datetime) -> FrameFaces:
        t = time.perf_counter()
        detections = self.detector.detect(image)
        self.stats.stage_s["detect"] += time.perf_counter() - t
        cut = False
        if self.scene_cut is not None:  # on the detector's shrunk copy of the frame when it has one
            thumbnail = getattr(self.detector, "last_thumbnail", None)
            cut = self.scene_cut(image if thumbnail is None else thumbnail)
        return FrameFaces(index, ts, detections, cut)

    def _align(self, image: np.ndarray, faces: FrameFaces, indices: Sequence[int]) -> FrameFaces:
        wanted = [i for i in indices if i not in faces.chips]
        if not wanted:
            return faces
        a = time.perf_counter()
        chips = dict(faces.chips)
        second_chips = dict(faces.second_chips)
        made, made_second = align_faces(self.aligner, self.second, image, faces.detections[np.array(wanted)])  # type: ignore[arg-type]
        chips.update(zip(wanted, made))
        if made_second is not None:
            second_chips.update(zip(wanted, made_second))
        self.stats.stage_s["align"] += time.perf_counter() - a
        return dataclasses.replace(faces, chips=chips, second_chips=second_chips)

    def _embed(self, faces: FrameFaces, indices: Sequence[int]) -> FrameFaces:
        wanted = [i for i in indices if i not in faces.embeddings]
        if not wanted:
            return faces
        a = time.perf_counter()
        vectors = self.embedder.embed(np.stack([faces.chips[i] for i in wanted]))
        self.stats.stage_s["embed"] += time.perf_counter() - a
        self.stats.embedded += len(wanted)
        embeddings = dict(faces.embeddings)
        embeddings.update(zip(wanted, vectors))
        return dataclasses.replace(faces, embeddings=embeddings)

    def _track(self, image: np.ndarray, faces: FrameFaces, source_ts: float) -> tuple[FrameFaces, list[Any], int]:
        """Track ids for every face (and the chips and embeddings the tracker asked for to settle ties);
        returns the tracks that ended and how many tracks started."""
        ended = list(self.tracker.end_all()) if faces.scene_cut else []
        if faces.scene_cut:
            self.stats.scene_cuts += 1
        current = faces
        nested_s = 0.0  # align and embed for the tracker count there, not in "track" as well

        def embed_for_tracker(indices: Sequence[int]) -> np.ndarray:
            nonlocal current, nested_s
            began = time.perf_counter()
            current = self._embed(self._align(image, current, indices), indices)
            nested_s += time.perf_counter() - began
            return np.stack([current.embeddings[i] for i in indices])

        def will_embed(track_id: int, i: int) -> bool:  # the same tests as the schedule and gate below, before the chip
            return self.decider.wants_embedding(track_id, faces.index) and \
                self.gate.judge(measures_before_blur(faces.detections, [i])[0]).reason is None

        t = time.perf_counter()
        update = self.tracker.update(faces.detections, source_ts, faces.index, embed=embed_for_tracker,
                                     will_embed=will_embed)
        self.stats.stage_s["track"] += time.perf_counter() - t - nested_s
        self.stats.ambiguous += update.ambiguous
        return dataclasses.replace(current, track_ids=tuple(update.track_ids.tolist())), ended + list(update.ended), \
            len(update.new)

    def _schedule(self, faces: FrameFaces, ended: Sequence[Any], started: int) -> tuple[FrameFaces, list[Event]]:
        """End the tracks that ended, note the ones on screen, and pick the faces to embed now."""
        t = time.perf_counter()
        events: list[Event] = []
        for track in ended:  # noticed now; the event says when the face was last seen (`ended`)
            events += self.decider.end_track(track.id, now=faces.ts)
            self._asked_tracks.discard(track.id)
        self.stats.tracks_ended += len(ended)
        self.stats.tracks_started += started
        for track_id in faces.track_ids:
            self.decider.seen(track_id, faces.ts)
        if len(faces.track_ids) > 1:
            self.decider.seen_together(faces.track_ids)
        due = tuple(i for i, t_id in enumerate(faces.track_ids) if self.decider.wants_embedding(t_id, faces.index))
        self.stats.stage_s["decide"] += time.perf_counter() - t
        return dataclasses.replace(faces, due=due), events

    def _gate_before_chip(self, faces: FrameFaces) -> tuple[FrameFaces, list[tuple[int, QualityMeasures]]]:
        """Score, size and pose need no chip."""
        t = time.perf_counter()
        rejected: dict[int, QualityReason] = {}
        passing: list[tuple[int, QualityMeasures]] = []
        if faces.due:
            for i, m in zip(faces.due, measures_before_blur(faces.detections, list(faces.due))):
                result = self.gate.judge(m)
                if result.reason is not None:
                    rejected[i] = result.reason
                else:
                    passing.append((i, m))
        self.stats.stage_s["quality"] += time.perf_counter() - t
        return dataclasses.replace(faces, rejected=rejected), passing

    def _gate_on_chip(self, faces: FrameFaces, passing: Sequence[tuple[int, QualityMeasures]]) -> FrameFaces:
        """Blur is measured on the chip; a face refused here waits before its next try."""
        t = time.perf_counter()
        rejected = dict(faces.rejected)
        weights: dict[int, float] = {}
        for i, m in passing:
            result = self.gate.judge(with_blur(m, faces.chips[i]))
            if result.reason is not None:
                rejected[i] = result.reason
                self.decider.refused_on_chip(faces.track_ids[i], faces.index)
            else:
                weights[i] = result.weight
        for reason in rejected.values():
            self.stats.quality_rejections[reason.value] += 1
        self.stats.stage_s["quality"] += time.perf_counter() - t
        return dataclasses.replace(faces, rejected=rejected, weights=weights)

    def _match(self, faces: FrameFaces) -> FrameFaces:
        good = list(faces.weights)
        t = time.perf_counter()
        embeddings = np.stack([faces.embeddings[i] for i in good])
        second_s = 0.0
        if self.second is not None and isinstance(self.matcher, ThresholdedMatcher) and all(i in faces.second_chips for i in good):
            second = self.second

            def embed_second(rows: np.ndarray) -> np.ndarray:
                nonlocal second_s
                began = time.perf_counter()
                vectors = second.embed(np.stack([faces.second_chips[good[r]] for r in rows.tolist()]))
                second_s += time.perf_counter() - began
                return vectors

            matches, asked = self.matcher.match_second(embeddings, embed_second)
            self.stats.second_opinions += int(asked.sum())
            for r in np.flatnonzero(asked).tolist():
                track_id = faces.track_ids[good[r]]
                if track_id not in self._asked_tracks:
                    self._asked_tracks.add(track_id)
                    self.stats.second_opinion_tracks += 1
        else:
            matches = self.matcher.match(embeddings)
        self.stats.stage_s["second_opinion"] += second_s
        self.stats.stage_s["match"] += time.perf_counter() - t - second_s
        return dataclasses.replace(faces, matches=dict(zip(good, matches)))

    def _decide(self, faces: FrameFaces) -> list[Event]:
        t = time.perf_counter()
        events: list[Event] = []
        for i, weight in faces.weights.items():
            track_id, vector, match = faces.track_ids[i], faces.embeddings[i], faces.matches[i]
            self.tracker.observe(track_id, vector)
            vote = Vote(vector, weight, match.name, float(match.distance) if np.isfinite(match.distance) else 2.0,
                        faces.index, faces.chips[i], match.runner_up, float(match.runner_up_distance),
                        faces.second_chips.get(i))
            events += self.decider.add_vote(track_id, vote, faces.ts)
        self.stats.stage_s["decide"] += time.perf_counter() - t
        return events

    def _cluster(self, events: list[Event]) -> list[Event]:
        """The unknown tracks the decider decided go to the cluster stage; its answer fills the cluster
        fields of their unknown (and, for a track decided as it ended, track_ended) events. The events
        the updates caused come first."""
        tracks = {track.track_id: track for track in self.decider.take_unknown_tracks()}
        if not tracks or self.clusters is None:
            return events
        t = time.perf_counter()
        caused: list[Event] = []
        out: list[Event] = []
        assigned: dict[int, str] = {}
        for event in events:
            if isinstance(event, UnknownEvent) and event.track_id in tracks:
                assignment, side = self.clusters.assign(self._with_second_embedding(tracks.pop(event.track_id)))
                caused += side
                if assignment is not None:
                    assigned[event.track_id] = assignment.cluster_id
                    self.decider.assign_cluster(event.track_id, assignment.cluster_id)
                    event = UnknownEvent.model_validate({
                        **event.model_dump(), "cluster_id": assignment.cluster_id,
                        "cluster_status": assignment.status, "visit_count": assignment.visit_count,
                        "first_seen": assignment.first_seen, "last_seen": assignment.last_seen})
            elif isinstance(event, TrackEndedEvent) and event.decision == UNKNOWN and event.track_id in assigned \
                    and event.cluster_id is None:
                event = TrackEndedEvent.model_validate({**event.model_dump(), "cluster_id": assigned[event.track_id]})
            out.append(event)
        self.stats.stage_s["cluster"] += time.perf_counter() - t
        return caused + out

    def _with_second_embedding(self, track: UnknownTrack) -> UnknownTrack:
        """The track with its SFace embedding (the unit mean over the chips of the faces its dlib
        embedding averages), so that naming its cluster gives the person SFace templates too."""
        if self.second is None or track.second_chips is None or not len(track.second_chips):
            return track
        from edgeface.vision.sface import SFACE_MODEL_ID

        began = time.perf_counter()
        try:
            vectors = np.asarray(self.second.embed(track.second_chips), np.float64)
        except Exception as error:  # the clustering goes on with dlib alone
            log.warning("track %s: no SFace embedding for its cluster: %s", track.track_id, error)
            return track
        finally:
            self.stats.stage_s["second_opinion"] += time.perf_counter() - began
        mean = (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).mean(axis=0)
        mean /= max(float(np.linalg.norm(mean)), 1e-12)
        self.stats.second_exemplars += 1
        return dataclasses.replace(track, second_chips=None, second_embedding=mean.astype(np.float32),
                                   second_model=(SFACE_MODEL_ID, self.second.model_version))

    def _publish(self, events: Iterable[Event]) -> list[Event]:
        t = time.perf_counter()
        out = []
        for event in events:
            self.bus.publish(event)
            out.append(event)
        self.stats.stage_s["sink"] += time.perf_counter() - t
        return out

    # -- one frame ----------------------------------------------------------------------------

    def process(self, frame: FrameLike) -> FrameResult:
        with self._lock:
            if self._closed:
                raise RuntimeError("the pipeline is closed")
            result = self._process(frame)
        trim_free_heap()  # what a burst of faces left behind (edgeface.io.memory)
        return result

    def _process(self, frame: FrameLike) -> FrameResult:
        started = time.perf_counter()
        image, index = frame.image, int(frame.index)
        ts = self.frame_time(float(frame.ts))
        self._last_ts = max(self._last_ts, ts)

        faces = self._detect(image, index, ts)
        faces, ended, new_tracks = self._track(image, faces, float(frame.ts))
        faces, events = self._schedule(faces, ended, new_tracks)
        faces, passing = self._gate_before_chip(faces)
        faces = self._align(image, faces, [i for i, _ in passing])
        faces = self._gate_on_chip(faces, passing)
        if faces.weights:
            good = list(faces.weights)
            faces = self._match(self._embed(faces, good))
            events += self._decide(faces)
        published = self._publish(self._cluster(events))

        boxes = faces.detections.xyxy.copy()
        results = tuple(
            FaceResult(boxes[i], faces.track_ids[i], self._label(faces.track_ids[i]), i in faces.weights,
                       faces.rejected[i].value if i in faces.rejected else None)
            for i in range(len(faces))
        )
        self.stats.frames += 1
        self.stats.faces += len(faces)
        self.stats.process_s += time.perf_counter() - started
        return FrameResult(index, ts, results, tuple(published), faces.scene_cut)

    # -- the loop -----------------------------------------------------------------------------

    def run(self, frames: Iterable[FrameLike], stop: threading.Event | None = None,
            on_frame: Callable[[FrameResult], object] | None = None) -> PipelineStats:
        """Process frames until they run out or `stop` is set, then close every open track."""
        try:
            for frame in frames:
                if stop is not None and stop.is_set():
                    break
                result = self.process(frame)
                if on_frame is not None:
                    on_frame(result)
                if stop is not None and stop.is_set():
                    break
        finally:
            self.flush()
        return self.stats

    def analyzer(self) -> FaceAnalyzer:
        """The camera loop's models as a photo analyzer (enrollment over MQTT), used under the loop's lock:
        the models are not shared between threads at once, and a photo waits for the frame in progress."""
        return FaceAnalyzer(self.detector, self.aligner, self.embedder, lock=self._lock, second=self.second)  # type: ignore[arg-type]

    def flush(self) -> list[Event]:
        """End every open track (each gets its track_ended) and publish those events."""
        with self._lock:
            events: list[Event] = []
            for track in self.tracker.end_all():
                events += self.decider.end_track(track.id, now=self._last_ts)
                self.stats.tracks_ended += 1
            for track_id in self.decider.open_tracks():  # tracks the tracker no longer knows (never expected)
                events += self.decider.end_track(track_id, now=self._last_ts)
            return self._publish(self._cluster(events))

def use_opencv_threads(threads: int) -> None:
    """Give OpenCV (resizing, colour conversion, warping: process-wide) the camera loop's thread count.
    Its default, one worker per core, hands each small per-frame image to a thread pool whose wake-ups
    and spinning cost more than the work."""
    import cv2

    cv2.setNumThreads(max(int(threads), 1))


class ThresholdedMatcher:
    """A gallery matched at the configured threshold (`MatchThreshold.from_config`: fixed, or derived
    from the false-alarm target for the gallery's size at this frame), whatever the gallery object was
    opened with; with the second opinion (`recognition.second_opinion`) fused in where asked (fused
    distances are on dlib's scale, so the one threshold serves both)."""

    def __init__(self, gallery: Any, threshold: MatchThreshold, second_opinion: SecondOpinion = "off") -> None:
        self.gallery = gallery
        self.threshold = threshold
        self.second_opinion: SecondOpinion = second_opinion

    @property
    def max_distance(self) -> float:
        """The threshold for the gallery's size now (re-derived as people are enrolled or removed)."""
        return self.threshold.at(self.gallery.size())

    def match(self, embeddings: np.ndarray) -> list[Match]:
        return self.gallery.match(embeddings, self.max_distance)  # type: ignore[no-any-return]

    def match_second(self, embeddings: np.ndarray, embed_second: Callable[[np.ndarray], np.ndarray]
                     ) -> tuple[list[Match], np.ndarray]:
        """(matches, which rows had the second opinion); SFace embeds only the rows asked for."""
        from edgeface.storage.gallery import Gallery
        from edgeface.storage.second_opinion import match_with_second_opinion
        from edgeface.vision.sface import SFACE_MODEL_ID

        if self.second_opinion == "off" or not isinstance(self.gallery, Gallery):
            return self.match(embeddings), np.zeros(len(embeddings), bool)
        return match_with_second_opinion(self.gallery, embeddings, self.max_distance, self.second_opinion,
                                         SFACE_MODEL_ID, embed_second)


def decision_policy(config: Config) -> DecisionPolicy:
    """The decider's policy from `pipeline.decision` (the fields they share)."""
    d = config.pipeline.decision
    shared = {f.name for f in dataclasses.fields(DecisionPolicy)} & set(type(d).model_fields)
    return DecisionPolicy(**d.model_dump(include=shared), max_votes_kept=max(32, d.max_faces_undecided))


def build_pipeline(
    config: Config,
    *,
    bus: EventBus,
    matcher: Any = None,
    clusters: ClusterStage | None = None,
    wrap_runner: Callable[[Any], Any] | None = None,
    threads: int | None = None,
    clock: Callable[[], datetime] = utc_now,
    models: CameraModels | None = None,
    track_ids: Iterator[int] | None = None,
) -> Pipeline:
    """A Pipeline from an `edgeface.config.Config`: the models it names, the thresholds it holds; the
    gallery (`matcher`) is matched at `MatchThreshold.from_config(config)`. `clusters`: where unknown tracks are
    clustered (None: they stay plain unknowns). `wrap_runner` wraps every detector model runner (the
    detector's and the keypoint refiner's; e.g. in a TimedRunner); `threads` overrides the embedder's
    (and detectors') thread count. Several cameras in one process pass `models` (their shared runners and
    embedder: `camera_models(config, shared=...)`) and one `track_ids` counter."""
    p = config.pipeline
    if models is None:
        models = camera_models(config, wrap_runner=wrap_runner, threads=threads)
    q, t, d = p.quality, p.tracking, p.decision
    return Pipeline(
        detector=models.detector,
        aligner=models.aligner,
        embedder=models.embedder,
        matcher=None if matcher is None else ThresholdedMatcher(matcher, MatchThreshold.from_config(config),
                                                                config.recognition.second_opinion),
        decider=Decider(config.station_id, p.camera, decision_policy(config), clustering=clusters is not None,
                        embed_every_frames=p.embed_every_frames, recheck_every_frames=p.recheck_every_frames,
                        recent_tracks=d.recent_tracks_kept),
        bus=bus,
        tracker=Tracker(iou_min=t.iou_min, max_missed_frames=t.track_max_missed_frames, tie_iou_margin=t.tie_iou_margin,
                        appearance_max_distance=t.appearance_max_distance, confirm_iou_below=t.confirm_iou_below,
                        max_gap_s=t.track_max_gap_s, max_unconfirmed_frames=t.track_max_unconfirmed_frames,
                        ids=track_ids),
        gate=QualityGate(min_face_px=q.min_face_px, blur_min_var=q.blur_min_var, max_yaw_deg=q.max_yaw_deg,
                         max_roll_deg=q.max_roll_deg, min_score=q.min_score),
        scene_cut=SceneCutDetector(t.scene_cut_min_diff) if t.scene_cut_min_diff > 0 else None,
        clusters=clusters,
        clock=clock,
        second=models.second,
    )
