"""`edgeface run`, `edgeface annotate` and `edgeface bench pipeline`: the camera loop on the command line.

Wired into the `edgeface` command by `run_cli.register(commands)` and
`run_cli.add_bench_pipeline(bench_kinds)` in edgeface/cli/main.py.

`edgeface run --source SRC` exit codes (the rule of every command, edgeface/cli.py):
  0    the source ended (a file or folder was read to its end), or SIGTERM stopped the loop;
  130  Ctrl-C (SIGINT) stopped the loop;
       either way every open track got its track_ended event and the sink was flushed and closed;
  1    a problem the one-line message explains: bad config, gallery or source spec, a camera device
       that does not exist, a live source that failed after its retries, a broker refused...;
  2    wrong command-line usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeface.cli.args import positive_int
from edgeface.service.overlay import COLOURS, draw  # noqa: F401  (COLOURS: tools import it from here)

log = logging.getLogger("edgeface.run")

EXIT_OK = 0
EXIT_INTERRUPTED = 130

SOURCE_ENV = "EDGEFACE_SOURCE"
"""`edgeface run` reads its source here when --source is not given: a URL with a camera password in
it then stays out of the process list (/proc/PID/cmdline is world-readable; the environment is not)."""


def _config(args: argparse.Namespace) -> Any:
    from edgeface.config import load_config

    config = load_config(getattr(args, "config", None))
    station = getattr(args, "station_id", None)
    if station:
        from pydantic import ValidationError

        from edgeface.errors import ConfigError

        try:
            config = config.model_validate({**config.model_dump(), "station_id": station})
        except ValidationError:
            raise ConfigError(f"--station-id {station!r} is invalid: use 1-64 letters, digits, '_' or '-'") from None
    return config


def _open_source(spec: str, every_frame: bool, config: Any = None, decode_threads: int | None = None) -> Any:
    """open_source with the config's `pipeline.source` options (frame-rate cap, ROI, retries, backoff, timeouts)."""
    from edgeface.io.sources import open_source

    options: dict[str, Any] = {}
    if config is not None:
        options = config.pipeline.source.model_dump()
    return open_source(int(spec) if spec.isdigit() else spec, every_frame=every_frame, decode_threads=decode_threads,
                       **options)


class _StopOnSignals:
    """SIGTERM/SIGINT set `stop` and close the source (from a helper thread, so a source waiting for
    a frame wakes up); the previous handlers come back on exit."""

    def __init__(self, stop: threading.Event, source: Any) -> None:
        self.stop, self.source = stop, source
        self._previous: dict[int, Any] = {}
        self.closer: threading.Thread | None = None
        self.signal: signal.Signals | None = None
        """The first signal received, if any."""

    def _handle(self, signum: int, _frame: Any) -> None:
        if not self.stop.is_set():
            self.signal = signal.Signals(signum)
            log.info("%s: stopping after the current frame", signal.Signals(signum).name)
            self.stop.set()
            self.closer = threading.Thread(target=self.source.close, name="edgeface-stop", daemon=True)
            self.closer.start()

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.closer is not None:  # let the source finish closing (its capture thread must not be killed at exit)
            self.closer.join()


def _cmd_run(args: argparse.Namespace) -> int:
    from edgeface.service.app import build_station, open_gallery, sink_kind
    from edgeface.service.cameras import camera_specs
    from edgeface.service.systemd import Notifier, WatchdogFeeder

    config = _config(args)
    given = args.source or ([os.environ[SOURCE_ENV]] if os.environ.get(SOURCE_ENV) else [])
    if not given and not config.cameras:  # a usage error, like a missing required option
        print(f"edgeface run: error: the following arguments are required: --source (or set ${SOURCE_ENV}, which "
              "keeps a camera password out of the process list, or list `cameras:` in the config)", file=sys.stderr)
        return 2
    specs = camera_specs(config, given)
    if len(specs) > 1:
        from edgeface.service.cameras import return_frames_to_the_system

        return_frames_to_the_system()
    mqtt_url = getattr(args, "mqtt_url", None)
    kind = sink_kind(config, args.sink, mqtt_url)

    def open_camera(spec: Any) -> Any:
        return _open_source(spec.source, args.every_frame, spec.config)

    sources: dict[str, Any] = {}
    stop = threading.Event()
    closer = _Sources(sources)
    stopper = _StopOnSignals(stop, closer)
    running = None
    notifier = Notifier()  # systemd Type=notify; every call is a no-op outside systemd
    listen = getattr(args, "web", None) or config.web.listen
    page = None
    try:
        for spec in specs:  # a bad source fails before anything is created
            sources[spec.name] = open_camera(spec)
        password = None
        if listen:
            from edgeface.service.web import parse_listen, resolve_password

            parse_listen(listen)
            password = resolve_password(config.web)  # no page without a password: fail before loading models
        gallery = open_gallery(config, args.gallery, create_default=True)
        running = build_station(config, gallery=gallery, sink=kind, stdout=sys.stdout, mqtt_url=mqtt_url,
                                commands=bool(listen), fleet=True, cameras=specs, sources=sources,
                                open_source=open_camera)
        cameras = closer.cameras = running.cameras
        assert cameras is not None
        if listen and password is not None:
            from edgeface.service.web import StationPage

            page = StationPage(running, listen, password).start()
        # The watchdog is fed while every camera processes frames (or retries within its limits): a hung
        # camera or model makes systemd restart us.
        feeder = WatchdogFeeder(notifier)
        described = ", ".join(getattr(source, "description", name) for name, source in sources.items())
        notifier.ready(f"models loaded, reading {described}")
        feeder.start()
        with stopper:
            cameras.run(stop, feeder, on_frame=_on_frame(page))
            stats = cameras.stats
            log.info("%d frames, %d faces, %d tracks, events %s, quality rejections %s", stats.frames, stats.faces,
                     stats.tracks_started, dict(stats.events), dict(stats.quality_rejections))
            for runner in cameras.runners:
                log.info("%s", runner.summary())
            if page is not None and not stop.is_set():
                ended = "the source ended" if len(cameras.runners) == 1 else "every camera's source ended"
                log.info("%s; the station page stays up on %s until Ctrl-C or SIGTERM", ended, page.url)
                while not stop.wait(0.5):
                    pass
    finally:
        notifier.stopping("closing tracks and flushing events")
        for source in sources.values():
            source.close()
        if running is not None and running.cameras is not None:
            running.cameras.close_sources()
        if page is not None:
            page.close()
        if running is not None:
            running.close()
        notifier.close()
    return EXIT_INTERRUPTED if stopper.signal is signal.SIGINT else EXIT_OK


class _Sources:
    """Every camera's source, as one thing the signal handler closes (so that waiting sources wake up)."""

    def __init__(self, sources: dict[str, Any]) -> None:
        self.sources = sources
        self.cameras: Any = None
        """Once built: the cameras, whose sources may have been opened again since."""

    def close(self) -> None:
        for source in list(self.sources.values()):
            source.close()
        if self.cameras is not None:
            self.cameras.close_sources()


def _on_frame(page: Any) -> Any:
    """With the station page, each camera's latest frame and result go to its live view."""
    if page is None:
        return None

    def on_frame(runner: Any, image: Any, result: Any) -> None:
        page.lives[runner.name].offer(image, result)

    return on_frame


# -- annotate ------------------------------------------------------------------------------------

def _scratch_copy(gallery: Any, path: Path) -> Any:
    """An open copy of `gallery` at `path` (an empty gallery when there is none), `gallery` closed."""
    import sqlite3

    from edgeface.storage.gallery import Gallery

    if gallery is None:
        return Gallery(path, create=True)
    source, copy = sqlite3.connect(gallery.path), sqlite3.connect(path)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
        gallery.close()
    return Gallery(path, create=False, match_max_distance=gallery.threshold)


def _cmd_annotate(args: argparse.Namespace) -> int:
    import cv2

    from edgeface.errors import EdgefaceError
    from edgeface.service.app import build_station, open_gallery

    config = _config(args)
    if args.output.suffix.lower() not in (".mp4", ".avi", ".mkv"):
        raise EdgefaceError(f"output {args.output} must end in .mp4, .avi or .mkv")
    if not args.output.parent.is_dir():
        raise EdgefaceError(f"output folder {args.output.parent} does not exist")
    source = _open_source(str(args.video), every_frame=True, config=config)
    gallery = open_gallery(config, args.gallery)
    writer = None
    running = None
    scratch = tempfile.TemporaryDirectory(prefix="edgeface-annotate-")
    try:
        # Unknown faces are clustered in a scratch copy of the gallery: the video shows cluster ids
        # (continuing the gallery's) and the user's gallery is left as it was.
        gallery = _scratch_copy(gallery, Path(scratch.name) / "gallery.db")
        running = build_station(config, gallery=gallery, stdout=sys.stdout)
        pipeline = running.pipeline
        fps = source.fps or 25.0
        for frame in source:
            result = pipeline.process(frame)
            if writer is None:
                h, w = frame.image.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(  # type: ignore[attr-defined]
                    *("mp4v" if args.output.suffix.lower() == ".mp4" else "MJPG"))
                writer = cv2.VideoWriter(str(args.output), fourcc, fps, (w, h))
                if not writer.isOpened():
                    raise EdgefaceError(f"cannot write video {args.output} (no encoder for it in this OpenCV)")
            writer.write(draw(frame.image, result))
        pipeline.flush()
        stats = pipeline.stats
        print(f"annotated {stats.frames} frames -> {args.output}: {stats.tracks_started} track"
              f"{'' if stats.tracks_started == 1 else 's'}, events "
              f"{dict(stats.events)}", file=sys.stderr)
    finally:
        source.close()
        if writer is not None:
            writer.release()
        if running is not None:
            running.close()
        if gallery is not None:
            gallery.close()
        scratch.cleanup()
    if pipeline.stats.frames == 0:
        raise EdgefaceError(f"{args.video}: no frames could be read")
    return EXIT_OK


# -- bench pipeline ------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_split_mb() -> dict[str, float]:
    """The current RSS as private memory (RssAnon) and mapped files (RssFile: the libraries' code, shared
    with the page cache), MiB, from /proc/self/status; {} where there is none. The file part depends on
    how the kernel holds those files in its cache (seen here: 38 to 89 MB for the same libraries)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    split = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile") and value.strip().endswith("kB"):
            split[f"rss_{key[3:].lower()}_mb"] = round(int(value.split()[0]) / 1024, 1)
    return split


def bench_once(config: Any, source_spec: str, gallery: Any, threads: int) -> dict[str, Any]:
    """One pass over every frame of a video: wall fps, per-stage ms, model floor, events."""
    from edgeface.bus import EventBus
    from edgeface.pipeline import TimedRunner, build_pipeline, use_opencv_threads

    use_opencv_threads(threads)
    timers: list[TimedRunner] = []

    def timed(runner: Any) -> TimedRunner:
        timers.append(TimedRunner(runner))
        return timers[-1]

    pipeline = build_pipeline(config, bus=EventBus(), matcher=gallery, wrap_runner=timed, threads=threads)  # counted only
    source = _open_source(source_spec, every_frame=True, config=config, decode_threads=threads)
    decode_s = 0.0
    started = time.perf_counter()
    try:
        frames: Iterator[Any] = iter(source)
        while True:
            t = time.perf_counter()
            frame = next(frames, None)
            decode_s += time.perf_counter() - t
            if frame is None:
                break
            pipeline.process(frame)
        pipeline.flush()
    finally:
        source.close()
    wall_s = time.perf_counter() - started
    stats = pipeline.stats
    detector_s = sum(timer.seconds for timer in timers)  # the detector's runs and the keypoint refiner's
    model_s = detector_s + stats.stage_s["embed"] + stats.stage_s["second_opinion"]  # SFace runs are model time too
    return {
        "frames": stats.frames,
        "fps": stats.frames / wall_s if wall_s > 0 else 0.0,
        "pipeline_fps": stats.frames / stats.process_s if stats.process_s > 0 else 0.0,
        "pipeline_ms_per_frame": 1000 * stats.process_s / max(stats.frames, 1),
        "decode_ms_per_frame": 1000 * decode_s / max(stats.frames, 1),
        "model_ms_per_frame": 1000 * model_s / max(stats.frames, 1),
        "detector_model_ms_per_frame": 1000 * detector_s / max(stats.frames, 1),
        "model_floor_ratio": stats.process_s / model_s if model_s > 0 else float("inf"),
        "stage_ms": {k: round(v, 4) for k, v in stats.stage_ms_per_frame().items()},
        "faces": stats.faces,
        "embedded": stats.embedded,
        "tracks": stats.tracks_started,
        "second_opinions": stats.second_opinions,
        "second_opinion_tracks": stats.second_opinion_tracks,
        "events": dict(stats.events),
    }


def _cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from edgeface.service.app import open_gallery

    config = _config(args)
    gallery = open_gallery(config, args.gallery) if args.gallery else None
    runs = []
    for i in range(args.repeats):
        run = bench_once(config, args.source, gallery, args.threads)
        runs.append(run)
        print(f"run {i + 1}/{args.repeats}: {run['fps']:.1f} fps end to end, {run['pipeline_fps']:.1f} fps pipeline, "
              f"model floor ratio {run['model_floor_ratio']:.3f}", file=sys.stderr if args.json else sys.stdout)
    best = max(runs, key=lambda r: r["fps"])
    summary = {
        "source": args.source,
        "threads": args.threads,
        "repeats": args.repeats,
        "fps": round(best["fps"], 2),
        "fps_median": round(statistics.median(r["fps"] for r in runs), 2),
        "pipeline_fps": round(best["pipeline_fps"], 2),
        "model_floor_ratio": round(min(r["model_floor_ratio"] for r in runs), 4),
        "model_floor_ratio_median": round(statistics.median(r["model_floor_ratio"] for r in runs), 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **rss_split_mb(),
        "load_average": round(os.getloadavg()[0], 2),
        "best_run": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in best.items()},
    }
    out = sys.stderr if args.json else sys.stdout
    print(f"edgeface bench pipeline: {args.source}, every frame, {args.threads} thread(s), {args.repeats} run(s)", file=out)
    print(f"  fps (end to end, decode included): best {summary['fps']}, median {summary['fps_median']}", file=out)
    print(f"  pipeline ms/frame {best['pipeline_ms_per_frame']:.3f} (model {best['model_ms_per_frame']:.3f}, "
          f"decode {best['decode_ms_per_frame']:.3f} outside it)", file=out)
    print(f"  model floor ratio (pipeline time / model run time): best {summary['model_floor_ratio']}, "
          f"median {summary['model_floor_ratio_median']}", file=out)
    print("  per stage ms/frame: " + ", ".join(f"{k} {v:.3f}" for k, v in best["stage_ms"].items()), file=out)
    split = f" (now {summary['rss_anon_mb']} MB private, {summary['rss_file_mb']} MB mapped files)" if "rss_anon_mb" in summary else ""
    print(f"  peak RSS {summary['peak_rss_mb']} MB{split}; faces {best['faces']}, embedded {best['embedded']}, "
          f"tracks {best['tracks']}, events {best['events']}", file=out)
    if args.json:
        print(json.dumps(summary))
    return EXIT_OK


# -- registration --------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `run` and `annotate` to the `edgeface` sub-commands."""
    run = subparsers.add_parser(
        "run", help="the camera loop: recognise faces and publish events",
        description="Read frames from SRC, track and recognise faces, publish one event per decision "
        "(jsonl on stdout by default). SIGTERM/SIGINT stop it cleanly: every open track gets its "
        "track_ended and the sink is flushed.",
        epilog="exit codes: 0 the source ended, or SIGTERM stopped the loop; 130 Ctrl-C (SIGINT) stopped it (both "
        "cleanly: tracks ended, events flushed); 1 a problem the message explains (config, gallery, no such camera, "
        "source lost after its retries, broker); 2 wrong usage",
    )
    run.add_argument("--source", metavar="[NAME=]SRC", action="append",
                     help="camera index or /dev/videoN, rtsp:// or http:// URL, GStreamer pipeline, video file, image "
                     "folder (default: $EDGEFACE_SOURCE, else the config's cameras:; use $EDGEFACE_SOURCE for a URL "
                     "with a password, so that it does not show in the process list). Several cameras: repeat "
                     "--source NAME=SRC (NAME in events; a cameras: entry of that name gives its settings)")
    run.add_argument("--config", type=Path, help="YAML or JSON config file (defaults apply without it)")
    run.add_argument("--gallery", type=Path, help="gallery file (default: $EDGEFACE_GALLERY, else ./gallery.db, created empty if absent: unknown faces are clustered there)")
    run.add_argument("--sink", choices=("jsonl", "mqtt"), default=None,
                     help="where events go (default: mqtt when the config has an mqtt section or --mqtt-url is "
                     "given, else jsonl on stdout)")
    run.add_argument("--mqtt-url", metavar="URL", help="mqtt://host[:port] or mqtts://... (overrides mqtt.url of the config)")
    run.add_argument("--station-id", metavar="ID", help="station id in events and topics (overrides the config)")
    run.add_argument("--every-frame", action="store_true", help="files and folders: process every frame in order")
    run.add_argument("--web", metavar="HOST:PORT",
                     help="serve the station page (live view, name unknown people, enroll) on HOST:PORT; a bare PORT "
                     "binds 127.0.0.1 (overrides web.listen; password: $EDGEFACE_WEB_PASSWORD, web.password_file or "
                     "the systemd credential web_password). With a file source the page stays up after it ends")
    run.set_defaults(handler=_cmd_run)

    annotate = subparsers.add_parser(
        "annotate", help="draw boxes, track ids and names on a video",
        description="Run the pipeline on every frame of VIDEO and write OUT with each face's box, track id and "
        "its decision (name, cluster id or 'unknown'; grey while undecided). Events go to stdout as jsonl.",
    )
    annotate.add_argument("video", type=Path, metavar="VIDEO")
    annotate.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.mp4")
    annotate.add_argument("--gallery", type=Path, help="gallery file (default: $EDGEFACE_GALLERY, else ./gallery.db if it exists)")
    annotate.add_argument("--config", type=Path, help="YAML or JSON config file")
    annotate.set_defaults(handler=_cmd_annotate)


def add_bench_pipeline(bench_subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `pipeline` to the `edgeface bench` sub-commands."""
    bench = bench_subparsers.add_parser(
        "pipeline", help="frames/s of the whole pipeline on a video, every frame",
        description="Every frame of VIDEO through the whole pipeline: frames/s, per-stage ms, the ratio of "
        "pipeline time to model run time (model floor), peak RSS. With --json the last line is one JSON object "
        "with at least fps, model_floor_ratio and peak_rss_mb.",
    )
    bench.add_argument("--source", required=True, metavar="VIDEO")
    bench.add_argument("--threads", type=positive_int, default=1, help="model threads (default 1)")
    bench.add_argument("--repeats", type=positive_int, default=1, help="passes over the video; best and median reported")
    bench.add_argument("--gallery", type=Path, help="gallery to match against (default: none, every face unknown)")
    bench.add_argument("--config", type=Path, help="YAML or JSON config file")
    bench.add_argument("--json", action="store_true", help="last line: one JSON object")
    bench.set_defaults(handler=_cmd_bench_pipeline)
