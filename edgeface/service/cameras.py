"""Several cameras in one station process: one set of models, one gallery, one cluster store, one bus
(and outbox); per camera a source (live sources read on their own capture thread), a pipeline thread
and the pipeline's tracker and decider.

    CameraSpec (name, source, the config as this camera sees it)     <- `camera_specs` (--source, cameras:)
    CameraRunner: one camera's thread: its source through its Pipeline; a failed source is reported
                  (log, `camera_state` event, stats) and opened again while other cameras still run
    Cameras:      every runner; feeds the systemd watchdog while each camera delivers or retries within
                  its limits; what the Station sees as "the pipeline" (stats, deciders, models)

A single camera is the same machinery with one runner: when it fails the run ends with its one-line
error, as before. Track ids come from one counter, so a track id names one track of the station (the
reject command and Home Assistant presence need no camera name).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgeface.errors import ConfigError, SourceError
from edgeface.events import CameraStateEvent, CameraStats

if TYPE_CHECKING:
    from edgeface.bus import EventBus
    from edgeface.config import CameraConfig, Config
    from edgeface.pipeline import FrameResult, Pipeline, PipelineStats
    from edgeface.recognition.decider import RecentTrack
    from edgeface.service.systemd import WatchdogFeeder
    from edgeface.vision.analyzer import FaceAnalyzer
    from edgeface.vision.shared import SharedModels

log = logging.getLogger(__name__)

_NAMED_SOURCE = re.compile(r"^([A-Za-z0-9_.-]{1,64})=(.+)$", re.DOTALL)

CameraState = Literal["running", "reconnecting", "failed", "ended"]


@dataclass(frozen=True)
class CameraSpec:
    """One camera: its name (events' `camera`), its source spec and the config as it sees it
    (`Config.for_camera`: its own detector, quality gate and tiles)."""

    name: str
    source: str
    config: Config


def split_named_source(spec: str) -> tuple[str | None, str]:
    """`NAME=SRC` -> (NAME, SRC); anything else (a URL with a query, a GStreamer pipeline with `key=value`,
    a file that exists under that name) -> (None, spec)."""
    found = _NAMED_SOURCE.match(spec)
    if found is None or Path(spec).exists():
        return None, spec
    return found.group(1), found.group(2)


def source_of(camera: CameraConfig) -> str:
    """The camera's source: `source`, or the environment variable `source_env` names."""
    if camera.source is not None:
        return camera.source
    assert camera.source_env is not None
    value = os.environ.get(camera.source_env, "").strip()
    if not value:
        raise ConfigError(f"camera {camera.name}: ${camera.source_env} (its source_env) is not set or empty")
    return value


def camera_specs(config: Config, sources: Sequence[str]) -> list[CameraSpec]:
    """The cameras to run: the --source values (one plain SRC: the one camera, named `pipeline.camera`;
    or NAME=SRC each, taking the settings of the `cameras:` entry of that name when there is one), else
    the config's `cameras:`. ConfigError with one line for a mix, a repeated name or no camera at all."""
    from edgeface.config import CameraConfig

    if not sources:
        if not config.cameras:
            raise ConfigError("no camera: give --source SRC (or NAME=SRC, repeated), $EDGEFACE_SOURCE or a "
                              "`cameras:` list in the config")
        return [CameraSpec(c.name, source_of(c), config.for_camera(c)) for c in config.cameras]
    named = [split_named_source(spec) for spec in sources]
    if len(named) == 1 and named[0][0] is None:
        return [CameraSpec(config.pipeline.camera, named[0][1], config.model_copy(update={"cameras": []}))]
    plain = [spec for name, spec in named if name is None]
    if plain:
        raise ConfigError(f"with several cameras every --source is NAME=SRC (NAME: letters, digits, '_', '.', '-'); "
                          f"got {plain[0]!r}")
    names = [name or "" for name, _ in named]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"camera names must be unique; --source {twice[0]}=... is given more than once")
    configured = {c.name: c for c in config.cameras}
    specs = []
    for name, source in named:
        assert name is not None
        camera = configured.get(name) or CameraConfig(name=name, source=source)
        specs.append(CameraSpec(name, source, config.for_camera(camera)))
    return specs


class CameraRunner:
    """One camera: its source through its pipeline, on a thread of its own (`run`)."""

    def __init__(self, spec: CameraSpec, pipeline: Pipeline, source: Any,
                 open_source: Callable[[CameraSpec], Any]) -> None:
        self.spec = spec
        self.name = spec.name
        self.pipeline = pipeline
        self.source = source
        self._open_source = open_source
        self.state: CameraState = "running"
        self.failures = 0
        self.last_error: str | None = None
        self.error: BaseException | None = None
        """An error that is not the source's (a sink that cannot store events): it stops the station."""
        self.reopen_after_s = spec.config.pipeline.source.backoff_max_s
        self._image: Any = None
        """The image of the frame in the pipeline (for the station page's live view)."""
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None
        """time.monotonic() when the first frame came and when the last one was processed."""

    @property
    def frames(self) -> int:
        return self.pipeline.stats.frames

    @property
    def fps(self) -> float:
        """Frames processed per second between its first frame and its last (0 before two frames)."""
        if self.first_frame_at is None or self.last_frame_at is None or self.last_frame_at <= self.first_frame_at:
            return 0.0
        return self.frames / (self.last_frame_at - self.first_frame_at)

    def summary(self) -> str:
        span = (self.last_frame_at or 0.0) - (self.first_frame_at or 0.0)
        return f"camera {self.name}: {self.frames} frames in {span:.2f} s ({self.fps:.1f} fps), {self.camera_state()}" + \
            (f", {self.failures} failures" if self.failures else "")

    @property
    def retrying(self) -> bool:
        """A live source reconnecting within its limits."""
        from edgeface.io.sources import SourceState

        status = getattr(self.source, "status", None)
        return status is not None and status.state in (SourceState.CONNECTING, SourceState.RECONNECTING)

    def camera_state(self) -> CameraState:
        return "reconnecting" if self.state == "running" and self.retrying else self.state

    def run(self, stop: threading.Event, group: Cameras,
            on_frame: Callable[[CameraRunner, Any, FrameResult], None] | None = None) -> None:
        try:
            self._run(stop, group, on_frame)
        except BaseException as error:  # a sink or a bug: the station stops (the main thread raises it)
            self.error = error
            self.state = "ended"
            stop.set()
            group.wake()

    def _frames(self, group: Cameras) -> Iterator[Any]:
        for frame in self.source:
            if self.state == "failed":
                self.state = "running"
                log.info("camera %s delivers frames again", self.name)
                group.bus.publish(CameraStateEvent(station=self.spec.config.station_id, camera=self.name,
                                                   state="connected", failures=self.failures))
            self._image = frame.image
            if self.first_frame_at is None:
                self.first_frame_at = time.monotonic()
            yield frame

    def _run(self, stop: threading.Event, group: Cameras, on_frame: Any) -> None:
        def after_frame(result: FrameResult) -> None:
            self.last_frame_at = time.monotonic()
            if on_frame is not None:
                on_frame(self, self._image, result)

        while True:
            try:
                self.pipeline.run(self._frames(group), stop, on_frame=after_frame)
            except SourceError as error:
                self.source.close()
                again = self.state == "failed"  # opened again, and failed again before its first frame
                self.last_error = str(error)
                self.state = "failed"
                if not again:
                    self.failures += 1
                if stop.is_set() or not group.others_running(self):
                    return  # the last camera: the station ends with this error, as a single camera always did
                if again:
                    log.info("camera %s is still failing; opened again in %s s", self.name, f"{self.reopen_after_s:g}")
                else:
                    log.warning("camera %s failed: %s; the other cameras go on, and it is opened again every %s s",
                                self.name, error, f"{self.reopen_after_s:g}")
                    group.bus.publish(CameraStateEvent(station=self.spec.config.station_id, camera=self.name,
                                                       state="failed", reason=str(error), failures=self.failures))
                if not self._reopen(stop, group):
                    return
                continue
            self.source.close()
            if self.state != "failed":
                self.state = "ended"
            return

    def _reopen(self, stop: threading.Event, group: Cameras) -> bool:
        """Open the source again every reopen_after_s while another camera runs; False when it is time to stop."""
        while not stop.wait(self.reopen_after_s):
            if not group.others_running(self):
                return False
            try:
                source = self._open_source(self.spec)
            except SourceError as error:
                log.warning("camera %s: still failing (%s)", self.name, error)
                continue
            self.source = source
            if stop.is_set():  # stopped while it was being opened: the signal closed the old source only
                source.close()
                return False
            return True  # the state turns "running" with its first frame
        return False


class _Deciders:
    """The cameras' deciders as the station's commands see them (track ids are unique across cameras)."""

    def __init__(self, pipelines: Sequence[Pipeline]) -> None:
        self._deciders = [p.decider for p in pipelines]
        self.recent_tracks = sum(d.recent_tracks for d in self._deciders)

    def forget_name(self, name: str) -> None:
        for decider in self._deciders:
            decider.forget_name(name)

    def recent(self, track_id: int) -> RecentTrack | None:
        return next((r for d in self._deciders if (r := d.recent(track_id)) is not None), None)

    def recent_track_ids(self) -> list[int]:
        return [t for d in self._deciders for t in d.recent_track_ids()]


class Cameras:
    """The station's cameras. For the Station it stands in for the one pipeline: `stats` (all cameras),
    `decider` (all of them), `analyzer()` and `embedder` (the shared models)."""

    def __init__(self, runners: Sequence[CameraRunner], bus: EventBus) -> None:
        if not runners:
            raise ValueError("no camera")
        self.runners = list(runners)
        self.bus = bus
        self.decider = _Deciders([r.pipeline for r in self.runners])
        self.embedder = self.runners[0].pipeline.embedder
        self._events: Counter[str] = Counter()
        bus.subscribe(lambda event: self._events.update((event.type,)), name="station event counts")
        self._wake = threading.Event()
        self._stats_at = time.monotonic()
        self._stats_frames = {r.name: 0 for r in self.runners}

    @property
    def pipelines(self) -> list[Pipeline]:
        return [r.pipeline for r in self.runners]

    def analyzer(self) -> FaceAnalyzer:
        return self.runners[0].pipeline.analyzer()

    @property
    def stats(self) -> PipelineStats:
        """Every camera's counts added up (events: the station's, each once)."""
        from edgeface.pipeline import PipelineStats

        total = PipelineStats()
        for stats in (r.pipeline.stats for r in self.runners):
            for name in ("frames", "faces", "embedded", "tracks_started", "tracks_ended", "scene_cuts", "ambiguous",
                         "process_s"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
            total.quality_rejections.update(stats.quality_rejections)
            for stage, seconds in stats.stage_s.items():
                total.stage_s[stage] = total.stage_s.get(stage, 0.0) + seconds
        total.events = Counter(self._events)
        return total

    def camera_stats(self, advance: bool = True) -> dict[str, CameraStats]:
        """Each camera's state, fps since the previous call (advance: start a new interval), frames, failures."""
        now = time.monotonic()
        elapsed = now - self._stats_at
        out = {}
        for r in self.runners:
            frames = r.frames
            fps = (frames - self._stats_frames[r.name]) / elapsed if elapsed > 0 else 0.0
            out[r.name] = CameraStats(state=r.camera_state(), fps=round(max(fps, 0.0), 3), frames=frames,
                                      failures=r.failures)
            if advance:
                self._stats_frames[r.name] = frames
        if advance:
            self._stats_at = now
        return out

    def others_running(self, runner: CameraRunner) -> bool:
        return any(r is not runner and r.state == "running" for r in self.runners)

    def wake(self) -> None:
        self._wake.set()

    def close_sources(self) -> None:
        for r in self.runners:
            r.source.close()

    def run(self, stop: threading.Event, feeder: WatchdogFeeder | None = None,
            on_frame: Callable[[CameraRunner, Any, FrameResult], None] | None = None) -> None:
        """Run every camera until each ended, or `stop`. The watchdog gets a ping only while every camera
        delivers frames or retries within its limits (a failed camera waiting to be opened again, or one
        whose file ended, no longer counts). Raises SourceError when the cameras failed (one camera:
        its own error line) and the error of a camera thread that is not its source's."""
        threads = [threading.Thread(target=r.run, args=(stop, self, on_frame), name=f"edgeface-camera-{r.name}",
                                    daemon=True) for r in self.runners]
        for thread in threads:
            thread.start()
        interval = feeder.interval_s if feeder is not None and feeder.enabled else None
        tick = min(0.25, interval / 2) if interval else 0.25
        seen = {r.name: r.frames for r in self.runners}
        while any(t.is_alive() for t in threads):
            self._wake.wait(tick)
            self._wake.clear()
            if feeder is not None and all(r.frames > seen[r.name] or r.state != "running" or r.retrying
                                          for r in self.runners) and \
                    any(r.state == "running" for r in self.runners):
                if feeder.frame_processed():
                    seen = {r.name: r.frames for r in self.runners}
        for thread in threads:
            thread.join()
        errors = [r.error for r in self.runners if r.error is not None]
        if errors:
            raise errors[0]
        failed = [r for r in self.runners if r.state == "failed"]
        if failed and not stop.is_set():
            if len(self.runners) == 1:
                raise SourceError(failed[0].last_error or f"camera {failed[0].name} failed")
            raise SourceError("every camera stopped: " + "; ".join(f"{r.name}: {r.last_error}" for r in failed))


M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number (malloc.h)."""


def return_frames_to_the_system(threshold_bytes: int = 128 * 1024) -> bool:
    """With several cameras, let glibc hand every freed frame-sized block back to the system at once.

    glibc raises its mmap threshold after a big block is freed (up to 32 MiB), so later frames come
    from the heap of the thread that allocated them and stay resident there; with a camera thread per
    camera that is a few frames kept per camera (measured: 4 cameras, 305 -> 275 MB peak). A fixed
    threshold (the default's starting value) keeps it from moving. False where this is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False


def build_cameras(specs: Sequence[CameraSpec], sources: dict[str, Any], *, bus: EventBus, gallery: Any,
                  clusters: Any, open_source: Callable[[CameraSpec], Any], clock: Any = None,
                  shared: SharedModels | None = None) -> Cameras:
    """A pipeline per camera on one set of models (`SharedModels`), one gallery, one cluster stage, one bus."""
    from edgeface.pipeline import build_pipeline
    from edgeface.vision.analyzer import camera_models
    from edgeface.vision.shared import SharedModels

    shared = shared or SharedModels()
    track_ids = itertools.count(1)
    runners = []
    for spec in specs:
        options: dict[str, Any] = {} if clock is None else {"clock": clock}
        pipeline = build_pipeline(spec.config, bus=bus, matcher=gallery, clusters=clusters, track_ids=track_ids,
                                  models=camera_models(spec.config, shared=shared), **options)
        runners.append(CameraRunner(spec, pipeline, sources[spec.name], open_source))
    return Cameras(runners, bus)
