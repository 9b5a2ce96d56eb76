"""The camera loop: frame -> detect -> track -> quality gate -> align -> embed -> match -> decide -> sink.

`Pipeline` wires the stages it is given (constructor injection) and adds no business logic of its
own: tracking is `edgeface.recognition.tracker`, the gate is `edgeface.vision.quality`, decisions and events are
`edgeface.recognition.decider`. Per frame:

1. detect faces (optionally on a downscaled frame plus tiles, see `TiledDetector`);
2. a scene cut (edited video: the whole picture changes at once; checked on the detector's own
   shrunk copy of the frame) ends every open track;
3. track: every face gets a track id; ties between overlapping faces are settled by embedding
   distance (the tracker asks for those embeddings through a callback);
4. only faces whose track the decider wants embedded now (a new track; then every K frames until
   decided; then an occasional re-check) go on: cheap gate checks first (score, size, pose), then
   alignment, the blur check on the chip (a blurred face waits K frames before its next try), and
   ONE embedder call for all of them;
5. the gallery matches them, the decider votes, and the events it returns go to the sink.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from edgeface.events import utc_now
from edgeface.recognition.decider import UNKNOWN, Decider, Vote
from edgeface.recognition.tracker import Tracker, iou_matrix
from edgeface.vision.detections import FaceDetections
from edgeface.vision.quality import (
    QualityGate,
    QualityMeasures,
    QualityReason,
    measures_before_blur,
    with_blur,
)

if TYPE_CHECKING:
    from edgeface.service.sinks import EventSink
    from edgeface.storage.gallery import Match

log = logging.getLogger(__name__)

STAGES = ("detect", "track", "quality", "align", "embed", "match", "decide", "sink")

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


# -- detection on big frames ---------------------------------------------------------------------


def nms_merge(detections: Sequence[FaceDetections], iou_threshold: float = 0.3) -> FaceDetections:
    """Merge detections from overlapping views: best score first, a face overlapping a kept one by
    IoU > iou_threshold (or lying mostly inside it) is the same face and dropped."""
    parts = [d for d in detections if len(d)]
    if not parts:
        return FaceDetections()
    xyxy = np.concatenate([d.xyxy for d in parts])
    score = np.concatenate([d.score for d in parts])
    kps = np.concatenate([d.kps for d in parts])
    order = np.argsort(-score, kind="stable")
    keep: list[int] = []
    for i in order:
        if keep:
            kept = xyxy[keep]
            iou = iou_matrix(xyxy[i][None], kept)[0]
            inter_w = np.clip(np.minimum(kept[:, 2], xyxy[i, 2]) - np.maximum(kept[:, 0], xyxy[i, 0]), 0, None)
            inter_h = np.clip(np.minimum(kept[:, 3], xyxy[i, 3]) - np.maximum(kept[:, 1], xyxy[i, 1]), 0, None)
            area = max(float((xyxy[i, 2] - xyxy[i, 0]) * (xyxy[i, 3] - xyxy[i, 1])), 1e-6)
            if np.any(iou > iou_threshold) or np.any(inter_w * inter_h / area > 0.7):
                continue
        keep.append(int(i))
    index = np.array(keep, dtype=np.int64)
    return FaceDetections(xyxy[index], score[index], kps[index])


def tile_grid(width: int, height: int, tiles_x: int, tiles_y: int, overlap_frac: float) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of tiles_x * tiles_y tiles covering the frame, neighbours overlapping by
    overlap_frac of a tile's size (so a face cut by one tile's edge is whole in the next)."""
    boxes = []
    tile_w = width / (tiles_x - (tiles_x - 1) * overlap_frac)
    tile_h = height / (tiles_y - (tiles_y - 1) * overlap_frac)
    for j in range(tiles_y):
        for i in range(tiles_x):
            x0 = round(i * tile_w * (1 - overlap_frac))
            y0 = round(j * tile_h * (1 - overlap_frac))
            boxes.append((x0, y0, min(round(x0 + tile_w), width), min(round(y0 + tile_h), height)))
    return boxes


class TiledDetector:
    """Detect on the whole frame plus a grid of overlapping tiles, merged by NMS.

    BlazeFace sees a whole image at 128 (short) or 192 (full) pixels, so a face smaller than about a
    tenth (short) or a twentieth (full) of the frame's long side is lost; a tile is a closer look at
    part of the frame. The frame is first downscaled ONCE so that its long side is at most
    `work_long_side_px` (resizing each full-resolution tile separately costs more than the model);
    boxes come back in source pixels. Frames whose long side is at most `min_side_px_for_tiles` are
    detected whole, as by the plain detector."""

    def __init__(self, detector: Any, tiles_x: int = 2, tiles_y: int = 2, overlap_frac: float = 0.2,
                 whole_frame: bool = True, min_side_px_for_tiles: int = 1000, work_long_side_px: int = 960) -> None:
        if tiles_x < 1 or tiles_y < 1:
            raise ValueError("tiles_x and tiles_y must be >= 1")
        if not 0.0 <= overlap_frac < 0.5:
            raise ValueError(f"overlap_frac must be in [0, 0.5), got {overlap_frac}")
        if work_long_side_px < 64:
            raise ValueError(f"work_long_side_px must be >= 64, got {work_long_side_px}")
        self.detector = detector
        self.tiles_x, self.tiles_y, self.overlap_frac = tiles_x, tiles_y, overlap_frac
        self.whole_frame = whole_frame
        self.min_side_px_for_tiles = min_side_px_for_tiles
        self.work_long_side_px = work_long_side_px

    def detect(self, image: np.ndarray) -> FaceDetections:
        import cv2

        height, width = image.shape[:2]
        if max(width, height) <= self.min_side_px_for_tiles or self.tiles_x * self.tiles_y == 1:
            return self.detector.detect(image)
        scale = min(1.0, self.work_long_side_px / max(width, height))
        work = image
        if scale < 1.0:
            work = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                              interpolation=cv2.INTER_AREA)
        h, w = work.shape[:2]
        views: list[FaceDetections] = []
        if self.whole_frame:
            views.append(self.detector.detect(work))
        for x0, y0, x1, y1 in tile_grid(w, h, self.tiles_x, self.tiles_y, self.overlap_frac):
            found = self.detector.detect(work[y0:y1, x0:x1])
            if len(found):
                shift = np.array([x0, y0], np.float32)
                views.append(FaceDetections((found.xyxy.reshape(-1, 2, 2) + shift).reshape(-1, 4), found.score,
                                            found.kps + shift))
        merged = nms_merge(views)
        if scale < 1.0 and len(merged):
            merged = FaceDetections(merged.xyxy / np.float32(scale), merged.score, merged.kps / np.float32(scale))
        return merged


# -- scene cuts ----------------------------------------------------------------------------------


class SceneCutDetector:
    """Mean absolute difference of consecutive 32x18 thumbnails (0..255, over all colour channels; it
    separates as the grey difference did, at one OpenCV call less). Above min_diff the picture changed
    at once: a cut in edited video (hamilton_clip: 26.2-29.7 at its three cuts, at most 13.0 elsewhere;
    crowd_walk at most 8.1, both detectors' thumbnails). A fixed camera sees one when the lights switch.

    Any picture of the whole frame will do: the thumbnail is point-sampled at 64x36 (INTER_NEAREST_EXACT
    reads only the rows it samples) and averaged 2x2 down to 32x18. The camera loop hands it the
    detector's own shrunk copy of the frame (128x72 for a 640x360 frame), so the frame is not read a
    second time: ~0.005 ms instead of ~0.015 ms on the full frame after the model run (and 2 ms for a
    full-frame grey conversion and INTER_AREA at 1080p)."""

    THUMB = (32, 18)

    def __init__(self, min_diff: float = 20.0) -> None:
        self.min_diff = min_diff
        self._previous: np.ndarray | None = None

    def __call__(self, image: np.ndarray) -> bool:
        import cv2

        w, h = self.THUMB
        small = cv2.resize(image, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST_EXACT)
        small = cv2.resize(small, (w, h), interpolation=cv2.INTER_AREA)
        if small.ndim == 3 and small.shape[2] == 4:
            small = small[:, :, :3]
        previous, self._previous = self._previous, small
        if previous is None or self.min_diff <= 0 or previous.shape != small.shape:
            return False
        channels = 1 if small.ndim == 2 else small.shape[2]
        return sum(cv2.mean(cv2.absdiff(small, previous))[:channels]) / channels > self.min_diff


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
    quality_rejections: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    process_s: float = 0.0
    """Wall time inside Pipeline.process (all stages + glue), seconds."""

    def stage_ms_per_frame(self) -> dict[str, float]:
        return {k: 1000 * v / max(self.frames, 1) for k, v in self.stage_s.items()}


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
        sink: EventSink,
        tracker: Tracker | None = None,
        gate: QualityGate | None = None,
        scene_cut: SceneCutDetector | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.detector = detector
        self.aligner = aligner
        self.embedder = embedder
        self.matcher = matcher or NoGallery()
        self.decider = decider
        self.sink = sink
        self.tracker = tracker if tracker is not None else Tracker()  # (an empty Tracker is falsy: len 0)
        self.gate = gate or QualityGate()
        self.scene_cut = scene_cut
        self.stats = PipelineStats()
        self._clock = clock
        self._start = clock()
        self._last_ts = self._start
        self._lock = threading.Lock()
        self._closed = False

    # -- helpers ------------------------------------------------------------------------------

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

    def _publish(self, events: Iterable[Any]) -> list[Any]:
        out = []
        for event in events:
            self.sink.publish(event)
            self.stats.events[event.type] += 1
            out.append(event)
        return out

    def _label(self, track_id: int) -> str | None:
        decision = self.decider.decision(track_id)
        if decision == UNKNOWN:
            return self.decider.cluster_of(track_id) or UNKNOWN
        return decision

    # -- one frame ----------------------------------------------------------------------------

    def process(self, frame: FrameLike) -> FrameResult:
        with self._lock:
            if self._closed:
                raise RuntimeError("the pipeline is closed")
            return self._process(frame)

    def _process(self, frame: FrameLike) -> FrameResult:
        started = time.perf_counter()
        stage = self.stats.stage_s
        image, index = frame.image, int(frame.index)
        ts = self.frame_time(float(frame.ts))
        self._last_ts = max(self._last_ts, ts)
        events: list[Any] = []

        t0 = time.perf_counter()
        detections = self.detector.detect(image)
        t1 = time.perf_counter()
        stage["detect"] += t1 - t0
        cut = False
        if self.scene_cut is not None:  # on the detector's shrunk copy of the frame when it has one
            thumbnail = getattr(self.detector, "last_thumbnail", None)
            cut = self.scene_cut(image if thumbnail is None else thumbnail)

        ended = []
        if cut:
            self.stats.scene_cuts += 1
            ended = list(self.tracker.end_all())

        chips: dict[int, np.ndarray] = {}
        embeddings: dict[int, np.ndarray] = {}

        def align(indices: Sequence[int]) -> None:
            wanted = [i for i in indices if i not in chips]
            if wanted:
                a = time.perf_counter()
                for i, chip in zip(wanted, self.aligner.align(image, detections[np.array(wanted)])):
                    chips[i] = chip
                stage["align"] += time.perf_counter() - a

        def embed_for_tracker(indices: Sequence[int]) -> np.ndarray:
            align(indices)
            wanted = [i for i in indices if i not in embeddings]
            if wanted:
                a = time.perf_counter()
                vectors = self.embedder.embed(np.stack([chips[i] for i in wanted]))
                stage["embed"] += time.perf_counter() - a
                self.stats.embedded += len(wanted)
                embeddings.update(zip(wanted, vectors))
            return np.stack([embeddings[i] for i in indices])

        t2 = time.perf_counter()
        def will_embed(track_id: int, i: int) -> bool:  # the same tests as below, before the chip
            return self.decider.wants_embedding(track_id, index) and \
                self.gate.judge(measures_before_blur(detections, [i])[0]).reason is None

        update = self.tracker.update(detections, float(frame.ts), index, embed=embed_for_tracker,
                                     will_embed=will_embed)
        ended += list(update.ended)
        self.stats.ambiguous += update.ambiguous
        track_ids: list[int] = update.track_ids.tolist()
        stage["track"] += time.perf_counter() - t2 - 0.0

        t3 = time.perf_counter()
        for track in ended:  # noticed now; the event says when the face was last seen (`ended`)
            events += self.decider.end_track(track.id, now=ts)
        self.stats.tracks_ended += len(ended)
        self.stats.tracks_started += len(update.new)
        for track_id in track_ids:
            self.decider.seen(track_id, ts)
        if len(track_ids) > 1:
            self.decider.seen_together(track_ids)
        due = [i for i, t in enumerate(track_ids) if self.decider.wants_embedding(t, index)]
        stage["decide"] += time.perf_counter() - t3

        # Quality gate: score, size and pose need no chip; blur is measured on the chip.
        t4 = time.perf_counter()
        rejected: dict[int, QualityReason] = {}
        passing: list[tuple[int, QualityMeasures]] = []
        if due:
            for i, m in zip(due, measures_before_blur(detections, due)):
                result = self.gate.judge(m)
                if result.reason is not None:
                    rejected[i] = result.reason
                else:
                    passing.append((i, m))
        stage["quality"] += time.perf_counter() - t4
        align([i for i, _ in passing])
        t5 = time.perf_counter()
        good: list[tuple[int, float]] = []
        if passing:
            for i, m in passing:
                result = self.gate.judge(with_blur(m, chips[i]))
                if result.reason is not None:
                    rejected[i] = result.reason
                    self.decider.refused_on_chip(track_ids[i], index)
                else:
                    good.append((i, result.weight))
        for reason in rejected.values():
            self.stats.quality_rejections[reason.value] += 1
        stage["quality"] += time.perf_counter() - t5

        if good:
            vectors = embed_for_tracker([i for i, _ in good])
            t6 = time.perf_counter()
            matches = self.matcher.match(vectors)
            t7 = time.perf_counter()
            stage["match"] += t7 - t6
            for (i, weight), vector, match in zip(good, vectors, matches):
                track_id = track_ids[i]
                self.tracker.observe(track_id, vector)
                vote = Vote(vector, weight, match.name, float(match.distance) if np.isfinite(match.distance) else 2.0,
                            index, chips[i], match.runner_up, float(match.runner_up_distance))
                events += self.decider.add_vote(track_id, vote, ts)
            stage["decide"] += time.perf_counter() - t7

        t8 = time.perf_counter()
        published = self._publish(events)
        stage["sink"] += time.perf_counter() - t8

        good_ids = {i for i, _ in good}
        boxes = detections.xyxy.copy()
        faces = tuple(
            FaceResult(boxes[i], track_ids[i], self._label(track_ids[i]), i in good_ids,
                       rejected[i].value if i in rejected else None)
            for i in range(len(detections))
        )
        self.stats.frames += 1
        self.stats.faces += len(detections)
        self.stats.process_s += time.perf_counter() - started
        return FrameResult(index, ts, faces, tuple(published), cut)

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

    def flush(self) -> list[Any]:
        """End every open track (each gets its track_ended) and publish those events."""
        with self._lock:
            events: list[Any] = []
            for track in self.tracker.end_all():
                events += self.decider.end_track(track.id, now=self._last_ts)
                self.stats.tracks_ended += 1
            for track_id in self.decider.open_tracks():  # tracks the tracker no longer knows (never expected)
                events += self.decider.end_track(track_id, now=self._last_ts)
            return self._publish(events)


def use_opencv_threads(threads: int) -> None:
    """Give OpenCV (resizing, colour conversion, warping: process-wide) the camera loop's thread count.
    Its default, one worker per core, hands each small per-frame image to a thread pool whose wake-ups
    and spinning cost more than the work."""
    import cv2

    cv2.setNumThreads(max(int(threads), 1))


def build_pipeline(
    config: Any,
    *,
    sink: EventSink,
    matcher: Matcher | None = None,
    cluster_hook: Any = None,
    wrap_runner: Callable[[Any], Any] | None = None,
    threads: int | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Pipeline:
    """A Pipeline from an `edgeface.config.Config`: the models it names, the thresholds it holds.
    `wrap_runner` wraps every detector model runner (the detector's and the keypoint refiner's; e.g. in a
    TimedRunner); `threads` overrides the embedder's (and detectors') thread count."""
    from edgeface.recognition.decider import DecisionPolicy
    from edgeface.vision.align import Aligner as BlazeAligner
    from edgeface.vision.blazeface import make_detector, make_refiner
    from edgeface.vision.embed import Embedder as OnnxEmbedder

    recognition, p = config.recognition, config.pipeline
    n_threads = threads or recognition.embedder.threads
    # Video frames are shrunk for the detector the fast way (bilinear, as MediaPipe does; see edgeface.vision.blazeface).
    detector: Any = make_detector(recognition.detector.model, min_score=recognition.detector.min_score,
                                  threads=n_threads, resize="fast", wrap_runner=wrap_runner)
    template_model = detector.model
    if p.detect_tiles_x * p.detect_tiles_y > 1:
        detector = TiledDetector(detector, p.detect_tiles_x, p.detect_tiles_y, p.detect_tile_overlap_frac,
                                 min_side_px_for_tiles=p.detect_tiles_min_side_px,
                                 work_long_side_px=p.detect_work_long_side_px)
    refiner = make_refiner(p.refine_face_max_frac, threads=n_threads, wrap_runner=wrap_runner)
    d = p.decision
    shared = {f.name for f in dataclasses.fields(DecisionPolicy)} & set(type(d).model_fields)
    policy = DecisionPolicy(**d.model_dump(include=shared), max_votes_kept=max(32, d.max_faces_undecided))
    if matcher is not None and d.match_max_distance is not None:
        base, threshold = matcher, d.match_max_distance

        class _Thresholded:
            def match(self, embeddings: np.ndarray) -> list[Match]:
                return base.match(embeddings, threshold)  # type: ignore[call-arg]

        matcher = _Thresholded()
    q, t = p.quality, p.tracking
    return Pipeline(
        detector=detector,
        aligner=BlazeAligner(method=recognition.alignment.method, detector_model=template_model,
                             refiner=refiner),
        embedder=OnnxEmbedder(precision=recognition.embedder.precision, threads=n_threads, flip=recognition.embedder.flip),
        matcher=matcher,
        decider=Decider(config.station_id, p.camera, policy, cluster_hook=cluster_hook,
                        embed_every_frames=p.embed_every_frames, recheck_every_frames=p.recheck_every_frames,
                        recent_tracks=d.recent_tracks_kept),
        sink=sink,
        tracker=Tracker(iou_min=t.iou_min, max_missed_frames=t.track_max_missed_frames, tie_iou_margin=t.tie_iou_margin,
                        appearance_max_distance=t.appearance_max_distance, confirm_iou_below=t.confirm_iou_below,
                        max_gap_s=t.track_max_gap_s, max_unconfirmed_frames=t.track_max_unconfirmed_frames),
        gate=QualityGate(min_face_px=q.min_face_px, blur_min_var=q.blur_min_var, max_yaw_deg=q.max_yaw_deg,
                         max_roll_deg=q.max_roll_deg, min_score=q.min_score),
        scene_cut=SceneCutDetector(t.scene_cut_min_diff) if t.scene_cut_min_diff > 0 else None,
        clock=clock,
    )
