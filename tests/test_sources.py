"""Frame sources against real components: real video files (the shared clips and synthetic ones
written with cv2.VideoWriter), real image files, a real MJPEG-over-HTTP server on loopback
(tests/_mjpeg.py) that is stopped and restarted, real capture threads."""

from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from _mjpeg import MjpegServer, frame_number, free_port, make_frame

from edgeface.errors import EdgefaceError, SourceError
from edgeface.io.sources import (
    Frame,
    FrameSource,
    ImageFolderSource,
    LiveSource,
    SourceState,
    SourceStatus,
    VideoFileSource,
    _gstreamer_available,
    open_source,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAMILTON = DATA / "video" / "hamilton_clip.mp4"
CROWD = DATA / "video" / "crowd_walk.mp4"
needs_hamilton = pytest.mark.skipif(not HAMILTON.is_file(), reason="../shared/data/video is absent")

FAST_RETRY = {"backoff_initial_s": 0.1, "backoff_max_s": 0.4, "open_timeout_s": 2.0, "read_timeout_s": 2.0}


def write_numbered_video(path: Path, n: int, fps: float = 10.0, size: tuple[int, int] = (320, 240)) -> Path:
    """An MJPG AVI whose frame i shows the number i (readable back with frame_number)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(make_frame(i, *size))
    writer.release()
    return path


def wait_for(predicate, timeout_s: float, what: str) -> float:
    """Poll until predicate() is true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - start


# -- video files ----------------------------------------------------------------------------------


@needs_hamilton
@pytest.mark.parametrize("every_frame", [False, True])
def test_video_file_yields_every_frame_in_order(every_frame: bool) -> None:
    with open_source(str(HAMILTON), every_frame=every_frame) as source:
        assert isinstance(source, VideoFileSource) and not source.live
        assert source.fps == pytest.approx(29.97, abs=0.01)
        frames = list(source)
        status = source.status
    assert len(frames) == 275
    assert [f.index for f in frames] == list(range(275))
    assert [f.ts for f in frames] == pytest.approx([i / source.fps for i in range(275)])
    assert all(f.image.shape == (360, 640, 3) and f.image.dtype == np.uint8 and f.offset == (0, 0) for f in frames)
    # frames differ (a real decode, not one image repeated)
    assert not np.array_equal(frames[0].image, frames[-1].image)
    assert status == SourceStatus(SourceState.ENDED, "end of file after 275 frames", 0, 275, 0)


@needs_hamilton
def test_one_decoding_thread_reads_the_same_frames() -> None:
    """decode_threads (the pipeline benchmark asks for its own thread count) changes nothing but speed."""
    with open_source(str(HAMILTON), every_frame=True) as default, \
            open_source(str(HAMILTON), every_frame=True, decode_threads=1) as single:
        assert single._cap.get(cv2.CAP_PROP_N_THREADS) == 1
        for a, b in zip(default, single):
            assert a.index == b.index and np.array_equal(a.image, b.image)


def test_synthetic_video_frames_match_their_indices(tmp_path: Path) -> None:
    path = write_numbered_video(tmp_path / "numbered.avi", 40, fps=10.0)
    source = open_source(path)
    frames = list(source)
    assert [f.index for f in frames] == list(range(40))
    assert [frame_number(f.image) for f in frames] == list(range(40))
    assert frames[13].ts == pytest.approx(1.3)
    assert source.status.state is SourceState.ENDED
    # iterating again after the end yields nothing and does not raise
    assert list(source) == []
    source.close()
    source.close()  # idempotent
    assert source.status.state is SourceState.ENDED


def test_truncated_avi_ends_cleanly_with_the_frames_it_has(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    whole = write_numbered_video(tmp_path / "whole.avi", 40).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="edgeface.io.sources"), open_source(cut) as source:
        frames = list(source)
    assert 5 < len(frames) < 40
    assert [frame_number(f.image) for f in frames[:-1]] == list(range(len(frames) - 1))
    assert source.status.state is SourceState.ENDED
    assert "truncated" in (source.status.reason or "")
    assert any("truncated" in r.getMessage() for r in caplog.records)


def _mp4_boxes(data: bytes | bytearray, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        yield kind, pos, size, header
        pos += size


def mp4_faststart(data: bytes) -> bytes:
    """The same MP4 with its index (moov) moved in front of the media data, as `ffmpeg -movflags
    +faststart` does, so that a copy cut off mid-stream can still be read up to the cut."""
    top = list(_mp4_boxes(data, 0, len(data)))
    moov = next(b for b in top if b[0] == b"moov")
    mdat = next(b for b in top if b[0] == b"mdat")
    assert moov[1] > mdat[1], "already faststart"
    index = bytearray(data[moov[1] : moov[1] + moov[2]])

    def patch(start: int, end: int) -> None:  # chunk offsets move by the size of the moved index
        for kind, pos, size, header in _mp4_boxes(index, start, end):
            if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):
                patch(pos + header, pos + size)
            elif kind in (b"stco", b"co64"):
                fmt, width = (">I", 4) if kind == b"stco" else (">Q", 8)
                count = struct.unpack(">I", index[pos + header + 4 : pos + header + 8])[0]
                for i in range(count):
                    at = pos + header + 8 + i * width
                    index[at : at + width] = struct.pack(fmt, struct.unpack(fmt, index[at : at + width])[0] + moov[2])

    patch(8, len(index))
    out = bytearray()
    for kind, pos, size, _ in top:
        if kind == b"mdat":
            out += index
        if kind != b"moov":
            out += data[pos : pos + size]
    return bytes(out)


@needs_hamilton
def test_real_mp4_truncated_mid_stream_ends_cleanly(tmp_path: Path) -> None:
    streamable = mp4_faststart(HAMILTON.read_bytes())
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(streamable[: len(streamable) // 2])
    reference = [f.image for f in open_source(HAMILTON)]
    with open_source(cut) as source:
        frames = list(source)
    assert 50 < len(frames) < 275
    assert [f.index for f in frames] == list(range(len(frames)))
    # what was read is the real video up to the cut
    assert all(np.array_equal(f.image, reference[f.index]) for f in frames[:-3])
    assert source.status.state is SourceState.ENDED and "truncated" in source.status.reason


@needs_hamilton
def test_mp4_cut_before_its_index_is_a_clear_error_at_open(tmp_path: Path) -> None:
    data = HAMILTON.read_bytes()  # this file keeps its index (moov) at the end, like most recorders
    cut = tmp_path / "recording.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"no index \(moov box\).*cut off") as error:
        open_source(cut)
    assert "\n" not in str(error.value)


@needs_hamilton
def test_max_fps_on_a_file_skips_frames_by_timestamp() -> None:
    with open_source(HAMILTON, max_fps=10) as source:
        frames = list(source)
    assert len(frames) == 92  # 275 frames at 29.97 fps = 9.18 s -> one frame per 0.1 s
    steps = np.diff([f.ts for f in frames])
    assert steps.min() >= 0.1 - 1e-6 and steps.max() < 0.1 + 1 / 29.97
    assert source.status.frames_read == 275 and source.status.frames_dropped == 275 - 92
    # every_frame wins over max_fps: files are then never thinned out
    with open_source(HAMILTON, max_fps=10, every_frame=True) as source:
        assert sum(1 for _ in source) == 275


@needs_hamilton
def test_roi_crops_file_frames_and_reports_the_offset() -> None:
    full = next(iter(open_source(HAMILTON)))
    with open_source(HAMILTON, roi=(100, 50, 200, 120)) as source:
        frame = next(iter(source))
    assert frame.image.shape == (120, 200, 3) and frame.image.flags.c_contiguous
    assert frame.offset == (100, 50)
    assert np.array_equal(frame.image, full.image[50:170, 100:300])
    # an ROI reaching exactly to the frame's edge is fine, one pixel more is not
    assert next(iter(open_source(HAMILTON, roi=(440, 160, 200, 200)))).image.shape == (200, 200, 3)
    with pytest.raises(SourceError, match=r"does not fit in the 640x360 frames"):
        open_source(HAMILTON, roi=(441, 160, 200, 200))


@pytest.mark.skipif(not CROWD.is_file(), reason="../shared/data/video is absent")
def test_roi_on_1080p_video() -> None:
    with open_source(CROWD, roi=(960, 540, 640, 360), max_fps=5) as source:
        frames = list(source)
    assert all(f.image.shape == (360, 640, 3) and f.offset == (960, 540) for f in frames)
    assert len(frames) == 21  # 105 frames at 25 fps = 4.2 s at 5 frames/s


# -- image folders --------------------------------------------------------------------------------


def test_image_folder_natural_order_skips_unreadable_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in (1, 2, 10, 3):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), make_frame(i))
    (tmp_path / "frame4.jpg").write_bytes(b"not a jpeg at all")
    _, jpeg = cv2.imencode(".jpg", make_frame(5))
    (tmp_path / "frame5.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])  # truncated JPEG
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.png").write_bytes(b"ignored")
    with caplog.at_level(logging.WARNING, logger="edgeface.io.sources"):
        source = open_source(tmp_path, every_frame=True)
        frames = list(source)
    assert isinstance(source, ImageFolderSource)
    assert [frame_number(f.image) for f in frames] == [1, 2, 3, 10]
    # indices are positions in the sorted listing (frame4, frame5 were at 3 and 4)
    assert [f.index for f in frames] == [0, 1, 2, 5]
    assert frames[3].ts == pytest.approx(5 / 25.0)
    assert source.status.state is SourceState.ENDED
    assert source.status.frames_read == 4 and source.status.frames_dropped == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "frame4.jpg" in warnings[0] and "truncated" in warnings[1]


def test_image_folder_roi_and_max_fps(tmp_path: Path) -> None:
    for i in range(10):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), make_frame(i))
    frames = list(open_source(tmp_path, roi=(0, 0, 160, 10), max_fps=5, folder_fps=10))
    assert [f.index for f in frames] == [0, 2, 4, 6, 8]
    assert [frame_number(f.image) for f in frames] == [0, 2, 4, 6, 8]  # the number blocks lie in the ROI
    assert all(f.image.shape == (10, 160, 3) for f in frames)
    with pytest.raises(SourceError, match=r"000\.png"):
        open_source(tmp_path, roi=(0, 0, 400, 10))


def test_image_folder_with_mixed_sizes_reports_the_image_the_roi_does_not_fit(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), make_frame(0, 320, 240))
    cv2.imwrite(str(tmp_path / "b.png"), make_frame(1, 100, 80))
    source = open_source(tmp_path, roi=(0, 0, 200, 100))
    it = iter(source)
    assert next(it).image.shape == (100, 200, 3)
    with pytest.raises(SourceError, match=r"b\.png"):
        next(it)


# -- bad specs and options ------------------------------------------------------------------------


def _bad_specs(tmp_path: Path) -> dict[str, tuple[object, dict, str]]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "fake.mp4").write_text("this is not a video")
    (tmp_path / "zero.avi").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "still.jpg"), make_frame(0))
    return {
        "missing file": (tmp_path / "nope.mp4", {}, r"nope\.mp4: no such file or folder"),
        "not a video": (tmp_path / "fake.mp4", {}, r"fake\.mp4: not a readable video"),
        "empty file": (tmp_path / "zero.avi", {}, r"zero\.avi: not a readable video"),
        "single image": (tmp_path / "still.jpg", {}, r"a single image, not a video"),
        "empty folder": (tmp_path / "empty", {}, r"holds no image files"),
        "folder without images": (tmp_path / "texts", {}, r"holds no image files"),
        "empty spec": ("  ", {}, r"empty source"),
        "negative camera": (-1, {}, r"camera index must be 0 or more"),
        "bool": (True, {}, r"unsupported source"),
        "url scheme": ("ftp://cam.local/x", {}, r"unsupported URL scheme 'ftp'"),
        "url without host": ("http:///stream", {}, r"malformed URL.*no host"),
        "url bad port": ("rtsp://cam:99999/x", {}, r"malformed URL"),
        "credentials masked": ("ftp://admin:secret@cam/x", {}, r"\*\*\*@cam"),
        "every_frame on live": ("rtsp://127.0.0.1/x", {"every_frame": True}, r"every_frame applies to video files"),
        "max_fps": (tmp_path / "still.jpg", {"max_fps": 0}, r"max_fps must be a positive"),
        "roi length": (tmp_path / "still.jpg", {"roi": (1, 2, 3)}, r"four whole numbers"),
        "roi fraction": (tmp_path / "still.jpg", {"roi": (1, 2, 3.5, 4)}, r"four whole numbers"),
        "roi negative": (tmp_path / "still.jpg", {"roi": (-1, 0, 10, 10)}, r"x and y must be 0 or more"),
        "roi empty": (tmp_path / "still.jpg", {"roi": (0, 0, 0, 10)}, r"w and h more than 0"),
        "max_retries": (0, {"max_retries": -1}, r"max_retries must be"),
        "backoff": (0, {"backoff_initial_s": 2.0, "backoff_max_s": 1.0}, r"backoff_max_s"),
    }


BAD_SPEC_NAMES = [
    "missing file", "not a video", "empty file", "single image", "empty folder", "folder without images",
    "empty spec", "negative camera", "bool", "url scheme", "url without host", "url bad port",
    "credentials masked", "every_frame on live", "max_fps", "roi length", "roi fraction", "roi negative",
    "roi empty", "max_retries", "backoff",
]


@pytest.mark.parametrize("name", BAD_SPEC_NAMES)
def test_bad_spec_is_a_one_line_error_at_open(tmp_path: Path, name: str) -> None:
    spec, options, pattern = _bad_specs(tmp_path)[name]
    with pytest.raises(SourceError, match=pattern) as error:
        open_source(spec, **options)  # type: ignore[arg-type]
    assert isinstance(error.value, EdgefaceError)
    assert "\n" not in str(error.value) and "secret" not in str(error.value)


def test_gstreamer_pipeline_needs_an_opencv_with_gstreamer() -> None:
    pipeline = ("videotestsrc ! video/x-raw,width=320,height=240 ! videoconvert ! video/x-raw,format=BGR"
                " ! appsink drop=true max-buffers=1")
    if not _gstreamer_available():  # the pip wheels
        with pytest.raises(SourceError, match=r"built without GStreamer"):
            open_source(pipeline)
        return
    with pytest.raises(SourceError, match=r"must end in appsink"):
        open_source("videotestsrc ! videoconvert ! autovideosink")
    with open_source(pipeline, max_retries=0) as source:
        it = iter(source)
        frames = [next(it) for _ in range(3)]
    assert all(f.image.shape == (240, 320, 3) for f in frames)
    assert [f.index for f in frames] == sorted({f.index for f in frames})


@pytest.mark.parametrize("spec", ["/dev/video99", 99, "99"])
def test_a_missing_camera_device_is_a_configuration_error_at_once(spec: str | int) -> None:
    # retrying cannot create a device node: no retries, no capture thread, the reason in one line
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"^no such camera device /dev/video99 \(.*--source") as error:
        open_source(spec)
    assert time.monotonic() - started < 1.0
    assert "\n" not in str(error.value)


def test_retry_span_is_the_sum_of_the_capped_backoffs() -> None:
    from edgeface.io.sources import _duration, retry_span_s

    # the defaults: 0.5 + 1 + 2 + 4 + 8 + 16 + 4 x 30 s
    assert retry_span_s(10, 0.5, 30.0) == pytest.approx(151.5)
    assert _duration(retry_span_s(10, 0.5, 30.0)) == "2 min 32 s"
    assert retry_span_s(0, 0.5, 30.0) == 0 and _duration(0.7) == "0.7 s" and _duration(3600 * 2 + 60) == "2 h 1 min"
    assert retry_span_s(100, 1.0, 2.0) == pytest.approx(1 + 99 * 2)


# -- MJPEG over HTTP (a real server on loopback) ----------------------------------------------------


def test_mjpeg_stream_drops_reconnects_and_carries_on() -> None:
    server = MjpegServer(fps=30).start()
    states: list[SourceState] = []
    try:
        source = open_source(server.url, max_retries=20, **FAST_RETRY)
        assert isinstance(source, LiveSource) and source.kind == "url"
        it = iter(source)
        first = [next(it) for _ in range(10)]
        assert [f.index for f in first] == sorted({f.index for f in first})
        before = [frame_number(f.image) for f in first]
        assert before == sorted(before)
        assert source.status.state is SourceState.CONNECTED and source.status.reason is None
        assert all(abs(f.ts - time.time()) < 5 for f in first)  # wall-clock for live sources

        server.stop()
        lost_after = wait_for(lambda: source.status.state is SourceState.RECONNECTING, 5, "RECONNECTING")
        states.append(source.status.state)
        reason = source.status.reason or ""
        assert "lost" in reason or "refused" in reason
        # while the server is down the source keeps retrying, and reports why
        wait_for(lambda: "connection refused" in (source.status.reason or ""), 5, "a refused retry")
        assert source.status.state is SourceState.RECONNECTING
        down_frames = source.status.frames_read

        restart = MjpegServer(port=server.port, fps=30)
        restart.counter = server.counter + 1000  # frames after the restart are recognisable
        server = restart.start()
        t0 = time.monotonic()
        after = next(it)
        reconnect_s = time.monotonic() - t0
        more = [next(it) for _ in range(5)]
        status = source.status
        assert frame_number(after.image) >= restart.counter - 1000 - 60  # not a stale pre-drop frame...
        assert all(frame_number(f.image) > 1000 for f in more)  # ...and the stream really resumed
        assert after.index > first[-1].index and [f.index for f in more] == sorted(f.index for f in more)
        assert status.state is SourceState.CONNECTED and status.reconnects == 1
        assert status.frames_read > down_frames
        # the retry waits are 0.1, 0.2, 0.4, 0.4, ... s, so frames flow again within one capped wait
        assert reconnect_s < 0.4 + 2.0, reconnect_s
        assert lost_after < 1.0
        source.close()
        assert source.status.state is SourceState.ENDED
        assert not source._thread.is_alive()
    finally:
        server.stop()


def test_mjpeg_server_that_never_returns_fails_after_the_retries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edgeface.io.sources")
    server = MjpegServer(fps=30).start()
    source = open_source(server.url, max_retries=3, **FAST_RETRY)
    seen: list[SourceState] = []
    try:
        it = iter(source)
        next(it)
        server.stop()
        t0 = time.monotonic()
        with pytest.raises(SourceError) as error:
            while True:
                next(it)
                seen.append(source.status.state)
        elapsed = time.monotonic() - t0
    finally:
        source.close()
        server.stop()
    message = str(error.value)
    assert "\n" not in message
    assert "connection refused" in message and "gave up after 3 retries over 0.7 s" in message and server.url in message
    assert source.status.state is SourceState.FAILED and source.status.reason == message
    # the first warning says how long the retries go on; the failure itself is left to the consumer to report
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "retrying 3 times over about 0.7 s before giving up" in warnings[0]
    assert len(warnings) == 3 and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # waits 0.1 + 0.2 + 0.4 s between the four attempts after the drop, then it gives up
    assert 0.6 <= elapsed < 5.0, elapsed


def test_url_nobody_ever_serves_fails_with_the_reason() -> None:
    url = f"http://admin:secret@127.0.0.1:{free_port()}/stream.mjpg"
    source = open_source(url, max_retries=1, **FAST_RETRY)
    assert source.status.state in (SourceState.CONNECTING, SourceState.RECONNECTING)
    with source, pytest.raises(SourceError, match=r"connection refused by 127\.0\.0\.1.*gave up after 1 retry ") as error:
        list(source)
    assert "http://***@127.0.0.1:" in str(error.value) and "secret" not in str(error.value)
    assert "secret" not in source.description and "secret" not in source._thread.name


def test_http_error_is_reported(tmp_path: Path) -> None:
    with MjpegServer(fps=30) as server:
        url = server.url.replace("stream.mjpg", "wrong-path")
        with open_source(url, max_retries=0, **FAST_RETRY) as source, \
                pytest.raises(SourceError, match=r"HTTP 404.*check the path.*no retries allowed"):
            next(iter(source))


def test_server_that_accepts_but_never_answers_times_out() -> None:
    with MjpegServer(mode="hang") as server:
        t0 = time.monotonic()
        with open_source(server.url, max_retries=1, backoff_initial_s=0.1, open_timeout_s=0.5,
                         read_timeout_s=0.5) as source, \
                pytest.raises(SourceError, match=r"within 0\.5 s \(open timed out\)"):
            next(iter(source))
        assert time.monotonic() - t0 < 4.0


def test_slow_consumer_gets_the_newest_frame_not_a_backlog() -> None:
    with MjpegServer(fps=40) as server, open_source(server.url, **FAST_RETRY) as source:
        it = iter(source)
        next(it)
        lags, indices = [], []
        for _ in range(8):
            time.sleep(0.2)  # a consumer 8x slower than the camera
            frame = next(it)
            lags.append(server.counter - 1 - frame_number(frame.image))
            indices.append(frame.index)
        status = source.status
    # each frame handed out is (nearly) the newest the server has sent, and the lag does not grow
    assert max(lags) <= 3, lags
    assert all(b - a >= 4 for a, b in itertools.pairwise(indices)), indices  # ~8 frames skipped per take
    assert status.frames_dropped >= 8 * 4
    assert status.frames_read - status.frames_dropped in (9, 10)  # yielded (+ the one waiting)


def test_max_fps_caps_a_live_stream() -> None:
    with MjpegServer(fps=30) as server, open_source(server.url, max_fps=5, **FAST_RETRY) as source:
        it = iter(source)
        next(it)
        t0 = time.monotonic()
        taken = [next(it) for _ in range(6)]
        elapsed = time.monotonic() - t0
        status = source.status
    assert elapsed >= 6 * 0.2 - 0.05, elapsed
    assert elapsed < 6 * 0.2 + 1.0, elapsed
    assert [f.index for f in taken] == sorted({f.index for f in taken})
    assert status.frames_dropped >= 6 * 4


def test_roi_on_a_live_stream_and_an_roi_that_does_not_fit() -> None:
    with MjpegServer(fps=30) as server:
        with open_source(server.url, roi=(0, 0, 160, 10), **FAST_RETRY) as source:
            frame = next(iter(source))
        assert frame.image.shape == (10, 160, 3) and frame.offset == (0, 0)
        assert frame_number(frame.image) >= 0
        # a configuration error: no retrying, FAILED at once with the reason
        t0 = time.monotonic()
        with open_source(server.url, roi=(300, 0, 100, 100), max_retries=10, **FAST_RETRY) as source:
            with pytest.raises(SourceError, match=r"does not fit in the 320x240 frames"):
                next(iter(source))
            assert source.status.state is SourceState.FAILED
        assert time.monotonic() - t0 < 3.0


def test_close_from_another_thread_ends_a_waiting_consumer() -> None:
    url = f"http://127.0.0.1:{free_port()}/stream.mjpg"
    source = open_source(url, max_retries=100, backoff_initial_s=5.0, backoff_max_s=5.0)
    result: list[object] = []

    def consume() -> None:
        try:
            result.append(list(source))
        except SourceError as error:  # pragma: no cover - the test fails on it below
            result.append(error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    wait_for(lambda: source.status.state is SourceState.RECONNECTING, 5, "RECONNECTING")
    t0 = time.monotonic()
    source.close()
    consumer.join(2)
    assert not consumer.is_alive() and result == [[]]
    assert time.monotonic() - t0 < 1.0  # close does not sit out the 5 s backoff
    assert not source._thread.is_alive()
    assert source.status.state is SourceState.ENDED and source.status.reason == "closed"
    source.close()


def test_public_types() -> None:
    frame = Frame(np.zeros((2, 2, 3), np.uint8), 3, 0.1)
    assert frame.offset == (0, 0)
    with pytest.raises(AttributeError):
        frame.index = 4  # type: ignore[misc]
    assert SourceState.RECONNECTING == "reconnecting"
    assert issubclass(LiveSource, FrameSource) and issubclass(VideoFileSource, FrameSource)
