"""Frame sources: one interface for cameras, stream URLs, GStreamer pipelines, video files and image folders.

`open_source(spec)` picks the kind from the spec:

- an int or a digit string ("0") or a device path ("/dev/video0"): a V4L2 camera;
- a URL (rtsp://, rtsps://, rtmp://, http://, https://, udp://, tcp://, srt://): a network stream
  through OpenCV's FFmpeg backend, including MJPEG over HTTP (multipart/x-mixed-replace), which many
  IP cameras serve;
- an existing folder: its image files, in natural sort order ("f2.jpg" before "f10.jpg");
- an existing file: a video file;
- anything else containing "!": a GStreamer pipeline ending in appsink (needs an OpenCV built with
  GStreamer; the pip wheels are not).

Live sources (camera, URL, pipeline) run a capture thread that reads continuously and keeps only the
newest frame: a slow consumer gets the latest frame, never a growing backlog, and every frame it
never saw is counted in `status.frames_dropped`. When the stream fails the thread reconnects with
exponential backoff (backoff_initial_s, doubling, capped at backoff_max_s) and reports
RECONNECTING with the reason; after `max_retries` consecutive failed attempts the source is FAILED
and the iterator raises SourceError with a one-line reason. Only a source that can come back is
retried: a network stream or pipeline, a camera that worked before (unplugged, it may be plugged in
again) or one that is present but busy. A camera device node that does not exist (or may not be
opened) when the source is opened is a configuration error, raised at once by `open_source`. The
first retry warning says how long the retries will go on. Frame indices keep counting across
reconnections, so they only ever increase.

Files and folders are read on demand, as fast as the consumer takes frames, without a thread: every
frame in order (with or without `every_frame`; live-style frame skipping never happens for files).
`max_fps` keeps a frame only when its position in the video (index / fps) has reached the next
1 / max_fps step, so a 30 fps file read with max_fps=10 yields every third frame; with
`every_frame=True` max_fps is ignored. A file that ends early (truncated mid-stream) ends the
iteration cleanly; a warning says how many frames were expected.

A region of interest (x, y, w, h) crops every frame; Frame.offset is its top-left corner so boxes
can be mapped back to the full frame. An ROI that does not fit in the frame is an error (at open time
for files and folders, on the first frame for live sources, which then go FAILED without retrying).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgeface.errors import ImageError, SourceError
from edgeface.io.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

_S = TypeVar("_S", bound="FrameSource")


URL_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt"})

DEFAULT_FOLDER_FPS = 25.0
"""Frame rate assumed for an image folder (Frame.ts = index / fps); FFmpeg's image2 default."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443}


@dataclass(frozen=True)
class Frame:
    """One frame from a source.

    image: uint8 BGR (h, w, 3), already cropped to the ROI if one is set.
    index: 0-based frame number as read from the source (gaps mean frames were dropped or skipped).
    ts: seconds; the position in the video (index / fps) for files and folders, wall-clock
        time.time() at capture for live sources.
    offset: (x, y) of the ROI's top-left corner in the full frame; add it to boxes found in `image`.
    """

    image: np.ndarray
    index: int
    ts: float
    offset: tuple[int, int] = (0, 0)


class SourceState(str, Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    ENDED = "ended"


@dataclass(frozen=True)
class SourceStatus:
    """A snapshot of a source's state.

    reason: why the source is RECONNECTING / FAILED / ENDED (None while all is well).
    reconnects: times a live source got frames flowing again after losing them.
    frames_read: frames taken from the source (decoded or grabbed), including dropped ones.
    frames_dropped: frames read but never yielded (overwritten by a newer frame in a live source,
        skipped by max_fps) plus unreadable images skipped in a folder.
    """

    state: SourceState
    reason: str | None
    reconnects: int
    frames_read: int
    frames_dropped: int


class FrameSource:
    """Base class of every source: iterate it for Frames, read `status`, `close()` it when done."""

    kind: str = "source"
    live: bool = False

    def __init__(self, description: str) -> None:
        self.description = description
        """The spec in words for messages and logs (credentials in a URL are masked)."""
        self._lock = threading.Lock()
        self._state = SourceState.CONNECTING
        self._reason: str | None = None
        self._reconnects = 0
        self._frames_read = 0
        self._frames_dropped = 0
        self._closed = False
        self._fps: float | None = None

    @property
    def fps(self) -> float | None:
        """The nominal frame rate of a file or folder; None for live sources."""
        return self._fps

    @property
    def status(self) -> SourceStatus:
        with self._lock:
            return SourceStatus(self._state, self._reason, self._reconnects, self._frames_read, self._frames_dropped)

    def _set_state(self, state: SourceState, reason: str | None) -> None:
        with self._lock:
            self._state, self._reason = state, reason

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description} {self.status.state.value}>"


# --------------------------------------------------------------------------------------------------
# helpers


def _check_roi(roi: tuple[int, int, int, int] | None, width: int, height: int, where: str) -> None:
    if roi is None:
        return
    x, y, w, h = roi
    if x + w > width or y + h > height:
        raise SourceError(
            f"region of interest x={x} y={y} w={w} h={h} does not fit in the {width}x{height} frames of {where}"
            f" (it must lie inside the frame)"
        )


def _crop(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    if roi is None:
        return image
    x, y, w, h = roi
    return np.ascontiguousarray(image[y : y + h, x : x + w])


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """Frames from OpenCV captures are normally BGR already; greyscale or BGRA ones are converted."""
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    from edgeface.io.images import to_bgr8

    return to_bgr8(image)


def _natural_key(name: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def _mask_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def _mp4_without_index(path: Path) -> bool:
    """True for an MP4/MOV file whose top-level boxes have no 'moov' (the index): a recording that was
    cut off or never finalised. FFmpeg cannot read any frame of such a file."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 8 or head[4:8] != b"ftyp":
                return False
            size_total = os.fstat(f.fileno()).st_size
            pos = 0
            while pos + 8 <= size_total:
                f.seek(pos)
                header = f.read(16)
                size = int.from_bytes(header[:4], "big")
                kind = header[4:8]
                if kind == b"moov":
                    return False
                if size == 1 and len(header) >= 16:
                    size = int.from_bytes(header[8:16], "big")
                elif size == 0:
                    break
                if size < 8:
                    return False  # not a structure we understand; let the generic message speak
                pos += size
            return True
    except OSError:
        return False


def retry_span_s(max_retries: int, backoff_initial_s: float, backoff_max_s: float) -> float:
    """Seconds a live source waits in total over `max_retries` retries (attempt time not included)."""
    return sum(min(backoff_initial_s * 2 ** i, backoff_max_s) for i in range(min(max_retries, 64))) + \
        max(0, max_retries - 64) * backoff_max_s


def _duration(seconds: float) -> str:
    """'0.5 s', '42 s', '2 min 32 s', '1 h 5 min' for messages."""
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s" if whole % 60 else f"{whole // 60} min"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def _camera_device(target: str | int) -> str:
    return target if isinstance(target, str) else f"/dev/video{target}"


def _check_camera_device(target: str | int) -> None:
    """A camera device node that is missing or may not be opened is a configuration error: retrying
    cannot fix it, so it is reported at once (POSIX only; elsewhere OpenCV's own open decides)."""
    if os.name != "posix":
        return
    device = _camera_device(target)
    if not os.path.exists(device):
        others = sorted(str(p) for p in Path("/dev").glob("video*"))
        found = f"cameras here: {', '.join(others)}" if others else "no /dev/video* device on this machine"
        raise SourceError(f"no such camera device {device} ({found}; check the cable, or give another "
                          f"--source: a device, URL, video file or image folder)")
    if not os.access(device, os.R_OK | os.W_OK):
        raise SourceError(f"no permission to open {device} (add the user to the 'video' group)")


def _quiet_video_libraries() -> None:
    """FFmpeg and OpenCV print their own warnings on stderr, thousands of lines for a garbage stream
    (2,898 in 120 s), which we report in one line each ourselves. Silence them unless the user asked
    (OPENCV_FFMPEG_LOGLEVEL / OPENCV_LOG_LEVEL set) or debug logging is on. FFmpeg reads its level once,
    when the first stream is opened."""
    if log.isEnabledFor(logging.DEBUG):
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if "OPENCV_LOG_LEVEL" not in os.environ:
        import cv2

        try:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except AttributeError:
            pass


def _gstreamer_available() -> bool:
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1].upper()
    return False


# --------------------------------------------------------------------------------------------------
# files and folders


def _fps_skipper(max_fps: float | None) -> Callable[[float], bool]:
    """A predicate keep(ts) for frames in time order: keep a frame when its ts reaches the next
    1/max_fps step. The steps are counted from the first frame, so they do not drift."""
    if max_fps is None:
        return lambda ts: True
    step = 1.0 / max_fps
    next_due: list[float] = []

    def keep(ts: float) -> bool:
        if next_due and ts < next_due[0] - 1e-6:
            return False
        due = next_due[0] if next_due else ts
        while due <= ts + 1e-6:
            due += step
        next_due[:] = [due]
        return True

    return keep


class VideoFileSource(FrameSource):
    """A video file read frame by frame with OpenCV's FFmpeg backend, as fast as it is consumed."""

    kind = "file"

    def __init__(self, path: Path, *, every_frame: bool, max_fps: float | None,
                 roi: tuple[int, int, int, int] | None, decode_threads: int | None = None) -> None:
        import cv2

        super().__init__(str(path))
        self.path = path
        self._roi = roi
        self._max_fps = None if every_frame else max_fps
        self._read_lock = threading.Lock()
        # FFmpeg's default decodes ahead on every core, in the background; a benchmark that times the
        # pipeline on one core asks for one decoding thread so that nothing competes with it.
        params = [cv2.CAP_PROP_N_THREADS, decode_threads] if decode_threads else []
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            if _mp4_without_index(path):
                raise SourceError(f"{path}: the MP4 file has no index (moov box): it was cut off or never finalised"
                                  f" by the recorder, and no frame can be read from it")
            raise SourceError(f"{path}: not a readable video (FFmpeg cannot open it: corrupt or unsupported format)")
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not (fps and np.isfinite(fps) and 0 < fps < 1000):
            log.warning("%s: the file has no usable frame rate (%s); assuming %.0f fps for timestamps",
                        path, fps, DEFAULT_FOLDER_FPS)
            fps = DEFAULT_FOLDER_FPS
        self._fps = float(fps)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count: int | None = int(count) if count and np.isfinite(count) and count > 0 else None
        """Frames the container says it holds (None when unknown); a truncated file yields fewer."""
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(f"{path}: a video file without any readable frame (empty, corrupt or truncated)")
        self.frame_size = (int(first.shape[1]), int(first.shape[0]))
        """(width, height) of the full frames, before the ROI crop."""
        _check_roi(roi, first.shape[1], first.shape[0], str(path))
        self._cap: Any = cap
        self._pending: np.ndarray | None = first
        self._next_index = 0
        self._keep = _fps_skipper(self._max_fps)
        if every_frame and max_fps is not None:
            log.info("%s: every_frame is set, so max_fps=%s is ignored", path, max_fps)
        self._set_state(SourceState.CONNECTED, None)

    def __iter__(self) -> Iterator[Frame]:
        offset = (self._roi[0], self._roi[1]) if self._roi else (0, 0)
        while True:
            with self._read_lock:
                if self._closed or self._cap is None:
                    return
                index = self._next_index
                ts = index / (self._fps or 1.0)
                keep = self._keep(ts)
                if self._pending is not None:
                    image, self._pending, ok = self._pending, None, True
                elif keep:
                    ok, image = self._cap.read()
                else:
                    ok, image = self._cap.grab(), None
                if not ok:
                    self._finish()
                    return
                self._next_index += 1
                with self._lock:
                    self._frames_read += 1
                    if not keep:
                        self._frames_dropped += 1
            if keep and image is not None:
                yield Frame(_crop(_as_bgr(image), self._roi), index, ts, offset)

    def _finish(self) -> None:
        read = self._next_index
        if self.frame_count is not None and read < self.frame_count:
            reason = f"the file ended after {read} of the {self.frame_count} frames its header announces (truncated?)"
            log.warning("%s: %s", self.path, reason)
        else:
            reason = f"end of file after {read} frames"
        self._set_state(SourceState.ENDED, reason)
        self._release()

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def close(self) -> None:
        with self._read_lock:
            if self._closed:
                return
            self._closed = True
            if self._cap is not None:
                self._set_state(SourceState.ENDED, "closed")
            self._release()


class ImageFolderSource(FrameSource):
    """The image files of a folder in natural sort order; unreadable images are skipped with a warning."""

    kind = "folder"

    def __init__(self, path: Path, *, every_frame: bool, max_fps: float | None,
                 roi: tuple[int, int, int, int] | None, fps: float = DEFAULT_FOLDER_FPS) -> None:
        from edgeface.io.images import read_image

        super().__init__(str(path))
        self.path = path
        self._roi = roi
        self._fps = fps
        try:
            entries = [p for p in path.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
        except OSError as error:
            raise SourceError(f"{path}: cannot list the folder ({error.strerror or error})") from None
        if not entries:
            raise SourceError(f"{path}: the folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.files: list[Path] = sorted(entries, key=lambda p: _natural_key(p.name))
        self._keep = _fps_skipper(None if every_frame else max_fps)
        self._next_index = 0
        self._unreadable = 0
        self._iter_lock = threading.Lock()
        self._first: tuple[int, np.ndarray] | None = None
        if roi is not None:  # check the ROI against the first readable image now, not mid-run
            for file in self.files:
                try:
                    image = read_image(file)
                except ImageError:
                    continue
                _check_roi(roi, image.shape[1], image.shape[0], str(file))
                break
        self._set_state(SourceState.CONNECTED, None)

    def __iter__(self) -> Iterator[Frame]:
        from edgeface.io.images import read_image

        offset = (self._roi[0], self._roi[1]) if self._roi else (0, 0)
        while True:
            with self._iter_lock:
                if self._closed:
                    return
                index = self._next_index
                if index >= len(self.files):
                    if self._unreadable == len(self.files):
                        reason = f"{self.path}: none of its {len(self.files)} images could be read"
                        self._set_state(SourceState.FAILED, reason)
                        raise SourceError(reason)
                    self._set_state(SourceState.ENDED, f"end of folder after {len(self.files)} files")
                    return
                self._next_index += 1
                file = self.files[index]
                ts = index / (self._fps or 1.0)
                if not self._keep(ts):
                    with self._lock:
                        self._frames_dropped += 1
                    continue
                try:
                    image = read_image(file)
                except ImageError as error:
                    log.warning("skipping an unreadable image: %s", error)
                    self._unreadable += 1
                    with self._lock:
                        self._frames_dropped += 1
                    continue
                with self._lock:
                    self._frames_read += 1
                _check_roi(self._roi, image.shape[1], image.shape[0], str(file))
            yield Frame(_crop(image, self._roi), index, ts, offset)

    def close(self) -> None:
        with self._iter_lock:
            if self._closed:
                return
            self._closed = True
            if self._state is not SourceState.ENDED:
                self._set_state(SourceState.ENDED, "closed")


# --------------------------------------------------------------------------------------------------
# live sources


class _Fatal(Exception):
    """A failure that retrying cannot fix (the ROI does not fit the stream's frames)."""


class LiveSource(FrameSource):
    """A camera, network stream or GStreamer pipeline read by a capture thread that keeps the newest frame."""

    live = True

    def __init__(self, kind: str, target: str | int, api: int, description: str, *,
                 max_fps: float | None, roi: tuple[int, int, int, int] | None, max_retries: int,
                 backoff_initial_s: float, backoff_max_s: float, open_timeout_s: float,
                 read_timeout_s: float) -> None:
        super().__init__(description)
        self.kind = kind
        self._target = target
        self._api = api
        self._roi = roi
        self._min_interval = 1.0 / max_fps if max_fps else 0.0
        self._max_retries = max_retries
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._open_timeout_s = open_timeout_s
        self._read_timeout_s = read_timeout_s
        self._cond = threading.Condition(self._lock)
        self._latest: Frame | None = None
        self._failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture {description}", daemon=True)
        self._thread.start()

    # -- capture thread ----------------------------------------------------------------------------

    def _open(self) -> Any:
        import cv2

        if self.kind == "url":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self._open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self._read_timeout_s * 1000)]
            return cv2.VideoCapture(self._target, self._api, params)
        cap = cv2.VideoCapture(self._target, self._api)
        if self.kind == "camera" and cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    def _open_failure_reason(self, elapsed_s: float) -> str:
        if self.kind == "url":
            if elapsed_s >= 0.9 * self._open_timeout_s:
                return f"no video from {self.description} within {self._open_timeout_s:g} s (open timed out)"
            return _diagnose_url(str(self._target), self.description, self._open_timeout_s)
        if self.kind == "camera":
            device = _camera_device(self._target)
            if os.name == "posix" and not os.path.exists(device):
                return f"no such camera device {device} (unplugged, or a different index?)"
            if os.name == "posix" and not os.access(device, os.R_OK | os.W_OK):
                return f"no permission to open {device} (add the user to the 'video' group)"
            return f"cannot open camera {device} (busy with another program, or not a video capture device)"
        return ("the GStreamer pipeline did not start (check it with gst-launch-1.0, and that it ends in"
                " appsink)")

    def _run(self) -> None:
        failures = 0
        connected_before = False
        index = 0
        cap = None
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                cap = self._open()
                if not cap.isOpened():
                    cap.release()
                    cap = None
                    reason = self._open_failure_reason(time.monotonic() - started)
                else:
                    got_frame = False
                    connected_at = 0.0
                    while not self._stop.is_set():
                        t0 = time.monotonic()
                        ok, image = cap.read()
                        if ok and image is not None and self.kind == "url" and \
                                time.monotonic() - t0 >= 0.9 * self._read_timeout_s:
                            # FFmpeg hands over what it has when the read times out: a half-decoded frame.
                            reason = (f"only a partial frame from {self.description} within {self._read_timeout_s:g} s "
                                      "(stream stalled mid-frame)")
                            break
                        if not ok or image is None:
                            stalled = time.monotonic() - t0 >= 0.9 * self._read_timeout_s
                            if stalled:
                                reason = f"no frame from {self.description} for {self._read_timeout_s:g} s (stream stalled)"
                            elif got_frame:
                                reason = f"lost {self.description}: the stream ended or the connection dropped"
                            else:
                                reason = f"{self.description} opened but delivered no frame"
                            break
                        ts = time.time()
                        if got_frame and failures and ts - connected_at >= self._read_timeout_s:
                            failures = 0  # frames kept coming: a healthy connection, not a flapping one
                        if not got_frame:
                            got_frame = True
                            connected_at = ts
                            try:
                                _check_roi(self._roi, image.shape[1], image.shape[0], self.description)
                            except SourceError as error:
                                raise _Fatal(str(error)) from None
                            with self._cond:
                                if connected_before:
                                    self._reconnects += 1
                                    log.info("%s: reconnected (%d reconnections so far)", self.description,
                                             self._reconnects)
                                else:
                                    log.info("%s: connected (%dx%d)", self.description, image.shape[1],
                                             image.shape[0])
                                self._state, self._reason = SourceState.CONNECTED, None
                            connected_before = True
                        frame = Frame(_crop(_as_bgr(image), self._roi), index, ts,
                                      (self._roi[0], self._roi[1]) if self._roi else (0, 0))
                        index += 1
                        with self._cond:
                            self._frames_read += 1
                            if self._latest is not None:
                                self._frames_dropped += 1
                            self._latest = frame
                            self._cond.notify_all()
                    cap.release()
                    cap = None
                if self._stop.is_set():
                    break
                if not connected_before and self.kind == "camera":
                    try:  # the device node went away or lost its permissions while we tried: no retry helps
                        _check_camera_device(self._target)
                    except SourceError as error:
                        raise _Fatal(str(error)) from None
                failures += 1
                span = retry_span_s(self._max_retries, self._backoff_initial_s, self._backoff_max_s)
                if failures > self._max_retries:
                    attempts = "no retries allowed" if self._max_retries == 0 else \
                        f"gave up after {self._max_retries} {'retry' if self._max_retries == 1 else 'retries'} over {_duration(span)}"
                    self._fail(f"{reason} ({attempts})")
                    return
                delay = min(self._backoff_initial_s * 2 ** (failures - 1), self._backoff_max_s)
                if failures == 1:
                    log.warning("%s; retrying %d times over about %s before giving up (retry 1 in %s)", reason,
                                self._max_retries, _duration(span), _duration(delay))
                else:
                    log.warning("%s; retry %d of %d in %s", reason, failures, self._max_retries, _duration(delay))
                self._set_state(SourceState.RECONNECTING, reason)
                with self._cond:
                    self._cond.notify_all()
                self._stop.wait(delay)
        except _Fatal as error:
            self._fail(str(error))
        except Exception as error:  # an OpenCV error or a bug: report it instead of dying silently
            log.exception("%s: capture thread crashed", self.description)
            self._fail(f"{self.description}: capture failed ({type(error).__name__}: {error})")
        finally:
            if cap is not None:
                cap.release()
            with self._cond:
                if self._stop.is_set() and self._state is not SourceState.FAILED:
                    self._state, self._reason = SourceState.ENDED, "closed"
                self._cond.notify_all()

    def _fail(self, reason: str) -> None:
        log.debug("%s", reason)  # the consumer's iterator raises it: the one place it is reported
        with self._cond:
            self._state, self._reason, self._failure = SourceState.FAILED, reason, reason
            self._cond.notify_all()

    # -- consumer ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame]:
        next_due: float | None = None
        while True:
            with self._cond:
                if next_due is not None:
                    while not self._closed and self._failure is None:
                        wait = next_due - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                self._cond.wait_for(lambda: self._latest is not None or self._closed or self._failure is not None)
                if self._closed:
                    return
                frame, self._latest = self._latest, None
                failure = self._failure
            if frame is None:
                raise SourceError(failure or f"{self.description}: failed")
            if self._min_interval:  # at most one frame per interval on average, never two in one interval
                now = time.monotonic()
                if next_due is None or next_due + self._min_interval < now:
                    next_due = now + self._min_interval
                else:
                    next_due += self._min_interval
            yield frame

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._cond.notify_all()
        self._thread.join(timeout=max(self._open_timeout_s, self._read_timeout_s) + 2.0)
        if self._thread.is_alive():
            log.warning("%s: the capture thread did not stop in time (a blocked read); leaving it behind",
                        self.description)
        with self._cond:
            if self._state is not SourceState.FAILED:
                self._state, self._reason = SourceState.ENDED, "closed"


def _diagnose_url(url: str, description: str, timeout_s: float) -> str:
    """Why a stream URL could not be opened, in words (OpenCV itself only says it failed)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return f"cannot open {description}: invalid port"
    if port is None or parts.scheme in ("udp", "srt"):
        return f"cannot open {description} (FFmpeg could not read a video stream there)"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except socket.gaierror:
        return f"cannot open {description}: unknown host {host!r}"
    except ConnectionRefusedError:
        return f"cannot open {description}: connection refused by {host}:{port} (is the camera or server running?)"
    except TimeoutError:
        return f"cannot open {description}: no answer from {host}:{port} within {timeout_s:g} s"
    except OSError as error:
        return f"cannot open {description}: {error.strerror or error}"
    if parts.scheme not in ("http", "https"):
        return f"cannot open {description}: {host}:{port} answers but FFmpeg could not read a video stream there"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    plain = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    request = urllib.request.Request(plain, method="GET")
    if parts.username is not None:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            content_type = response.headers.get("Content-Type", "no content type")
    except urllib.error.HTTPError as error:
        hint = " (check the user name and password in the URL)" if error.code in (401, 403) else \
            " (check the path)" if error.code == 404 else ""
        return f"cannot open {description}: HTTP {error.code} {error.reason}{hint}"
    except (urllib.error.URLError, OSError) as error:
        return f"cannot open {description}: {getattr(error, 'reason', error)}"
    return f"cannot open {description}: the server sends {content_type!r}, which FFmpeg could not read as video"


# --------------------------------------------------------------------------------------------------
# the one entry point


def open_source(spec: str | int | os.PathLike[str], *, every_frame: bool = False, max_fps: float | None = None,
                roi: tuple[int, int, int, int] | None = None, max_retries: int = 10,
                backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                open_timeout_s: float = 10.0, read_timeout_s: float = 10.0,
                folder_fps: float = DEFAULT_FOLDER_FPS, decode_threads: int | None = None) -> FrameSource:
    """Open a camera, stream URL, GStreamer pipeline, video file or image folder (see the module doc).

    every_frame: files and folders only (they yield every frame anyway; with it, max_fps is ignored);
        asking it of a live source is an error, since live sources always keep only the newest frame.
    max_fps: cap on the rate of yielded frames (live: frames in between are dropped; files: frames are
        skipped by their position in the video).
    roi: (x, y, w, h) crop, in pixels of the full frame.
    max_retries: consecutive failed (re)connection attempts of a live source before it is FAILED.
    backoff_initial_s, backoff_max_s: the wait before the first retry, doubled after each failure,
        capped at backoff_max_s.
    open_timeout_s, read_timeout_s: network streams: how long to wait for the stream to open and
        for each frame before the attempt counts as failed.
    folder_fps: image folders: the frame rate for timestamps (ts = index / folder_fps) and max_fps.
    decode_threads: video files: FFmpeg's decoding threads (None: its default, one per core).

    Raises SourceError with a one-line reason for a bad spec or option, a missing or unreadable file,
    an empty folder, an ROI outside the frame, a camera device node that is missing or not permitted,
    or a pipeline when OpenCV lacks GStreamer. Any other live source that cannot connect does not
    raise here: its iterator raises after the retries.
    """
    _check_options(max_fps, roi, max_retries, backoff_initial_s, backoff_max_s, open_timeout_s,
                   read_timeout_s, folder_fps)
    roi = tuple(int(v) for v in roi) if roi is not None else None  # type: ignore[assignment]
    _quiet_video_libraries()
    live_options: dict[str, Any] = {
        "max_fps": max_fps, "roi": roi, "max_retries": max_retries, "backoff_initial_s": backoff_initial_s,
        "backoff_max_s": backoff_max_s, "open_timeout_s": open_timeout_s, "read_timeout_s": read_timeout_s,
    }
    import cv2

    if isinstance(spec, bool) or not isinstance(spec, (str, int, os.PathLike)):
        raise SourceError(f"unsupported source {spec!r}: give a camera index, device path, URL, pipeline, "
                          f"video file or image folder")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        if index < 0:
            raise SourceError(f"camera index must be 0 or more, got {index}")
        _no_every_frame(every_frame, f"camera {index}")
        _check_camera_device(index)
        api = cv2.CAP_V4L2 if os.name == "posix" else cv2.CAP_ANY
        return LiveSource("camera", index, api, f"camera {index}", **live_options)  # type: ignore[arg-type]
    text = os.fspath(spec)
    if not text.strip():
        raise SourceError("empty source: give a camera index, device path, URL, pipeline, video file or image folder")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        scheme = text.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise SourceError(f"unsupported URL scheme {scheme!r} in {_mask_url(text)} "
                              f"(use one of {', '.join(sorted(URL_SCHEMES))})")
        try:
            parts = urllib.parse.urlsplit(text)
            parts.port  # noqa: B018  (raises ValueError for a bad port)
        except ValueError as error:
            raise SourceError(f"malformed URL {_mask_url(text)}: {error}") from None
        if not parts.hostname and scheme not in ("udp", "srt"):
            raise SourceError(f"malformed URL {_mask_url(text)}: no host")
        _no_every_frame(every_frame, _mask_url(text))
        return LiveSource("url", text, cv2.CAP_FFMPEG, _mask_url(text), **live_options)  # type: ignore[arg-type]
    if text.startswith("/dev/"):
        _no_every_frame(every_frame, text)
        _check_camera_device(text)
        return LiveSource("camera", text, cv2.CAP_V4L2, text, **live_options)  # type: ignore[arg-type]
    path = Path(text).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, every_frame=every_frame, max_fps=max_fps, roi=roi, fps=folder_fps)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise SourceError(f"{path}: a single image, not a video; put images in a folder to use them as a source")
        return VideoFileSource(path, every_frame=every_frame, max_fps=max_fps, roi=roi, decode_threads=decode_threads)
    if "!" in text:
        if not _gstreamer_available():
            raise SourceError("this OpenCV was built without GStreamer (the pip wheels are), so a pipeline source "
                              "cannot be used; install an OpenCV with GStreamer (e.g. the distribution's "
                              "python3-opencv) or give a device, URL or file")
        if "appsink" not in text:
            raise SourceError("a GStreamer pipeline source must end in appsink, e.g. "
                              "'... ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1'")
        _no_every_frame(every_frame, "the GStreamer pipeline")
        return LiveSource("gstreamer", text, cv2.CAP_GSTREAMER, "GStreamer pipeline", **live_options)  # type: ignore[arg-type]
    if path.exists():
        raise SourceError(f"{path}: not a regular file or folder")
    raise SourceError(f"{path}: no such file or folder (and not a camera index, device, URL or pipeline)")


def _no_every_frame(every_frame: bool, what: str) -> None:
    if every_frame:
        raise SourceError(f"every_frame applies to video files and image folders; {what} is a live source, "
                          f"which always keeps only the newest frame")


def _check_options(max_fps: float | None, roi: Any, max_retries: int, backoff_initial_s: float,
                   backoff_max_s: float, open_timeout_s: float, read_timeout_s: float, folder_fps: float) -> None:
    if max_fps is not None and not (max_fps > 0 and np.isfinite(max_fps)):
        raise SourceError(f"max_fps must be a positive number of frames per second, got {max_fps}")
    if roi is not None:
        try:
            values = [int(v) for v in roi]
            exact = all(float(v) == int(v) for v in roi)
        except (TypeError, ValueError):
            values, exact = [], False
        if len(values) != 4 or not exact:
            raise SourceError(f"region of interest must be four whole numbers x, y, w, h in pixels, got {roi!r}")
        x, y, w, h = values
        if x < 0 or y < 0 or w <= 0 or h <= 0:
            raise SourceError(f"region of interest x={x} y={y} w={w} h={h}: x and y must be 0 or more, "
                              f"w and h more than 0")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise SourceError(f"max_retries must be a whole number 0 or more, got {max_retries!r}")
    if not backoff_initial_s > 0:
        raise SourceError(f"backoff_initial_s must be more than 0, got {backoff_initial_s}")
    if not backoff_max_s >= backoff_initial_s:
        raise SourceError(f"backoff_max_s ({backoff_max_s}) must be at least backoff_initial_s ({backoff_initial_s})")
    if not (open_timeout_s > 0 and read_timeout_s > 0):
        raise SourceError(f"open_timeout_s and read_timeout_s must be more than 0, got {open_timeout_s}, {read_timeout_s}")
    if not folder_fps > 0:
        raise SourceError(f"folder_fps must be more than 0, got {folder_fps}")
