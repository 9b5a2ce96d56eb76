"""`edgeface run` against sources that misbehave, as a user runs it: a real process, a real MJPEG-over-HTTP
camera on loopback (tests/_mjpeg.py) playing real video, and a real video file cut off mid-stream.

- the camera drops and comes back: the run reconnects and carries on (new tracks, new events), and
  SIGTERM still ends it cleanly (exit 0, every track ended);
- the camera drops for good: after the configured retries the run ends with one clear error line and
  exit code 1, every track it had opened still closed;
- a video file truncated mid-stream: the run processes what is there and ends cleanly (exit 0).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _mjpeg import MjpegServer

from edgeface.events import parse_event

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAMILTON = DATA / "video" / "hamilton_clip.mp4"
needs_video = pytest.mark.skipif(not HAMILTON.is_file(), reason="../shared/data is absent")

RETRY_CONFIG = """\
pipeline:
  source:
    max_retries: {max_retries}
    backoff_initial_s: 0.1
    backoff_max_s: 0.4
    open_timeout_s: 5
    read_timeout_s: 3
  tracking:
    track_max_gap_s: 1.0
"""


def hamilton_frames(first: int, last: int) -> list:
    import cv2

    capture = cv2.VideoCapture(str(HAMILTON))
    frames = []
    for index in range(last):
        ok, frame = capture.read()
        if not ok:
            break
        if index >= first:
            frames.append(frame)
    capture.release()
    return frames


class Run:
    """`edgeface run` in a subprocess, its stdout (events) and stderr (log) read line by line as they come."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EDGEFACE_GALLERY"}  # no gallery: every face is unknown
        self.process = subprocess.Popen([sys.executable, "-m", "edgeface.cli", "run", *args], cwd=tmp_path,
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                         for name, stream in (("out", self.process.stdout), ("err", self.process.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream) -> None:
        for line in stream:
            self._lines.put((name, line))

    def _drain(self, timeout: float) -> None:
        try:
            name, line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return
        if name == "out" and line.strip():
            self.events.append(parse_event(line))
        elif name == "err":
            self.stderr.append(line.rstrip("\n"))

    def wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"timed out waiting for {what}; stderr:\n" + "\n".join(self.stderr[-30:]))
            if self.process.poll() is not None and self._lines.empty() and not any(r.is_alive() for r in self._readers):
                raise AssertionError(f"the run exited ({self.process.returncode}) before {what}; stderr:\n"
                                     + "\n".join(self.stderr[-30:]))
            self._drain(0.2)

    def finish(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout)
        while not self._lines.empty():
            self._drain(0)
        return code

    def track_ids(self, kind: str | None = None) -> set[int]:
        return {e.track_id for e in self.events if kind is None or e.type == kind}


@needs_video
@pytest.mark.slow
def test_a_camera_that_drops_and_comes_back_is_reconnected_and_the_run_carries_on(tmp_path: Path) -> None:
    frames = hamilton_frames(90, 200)  # Miranda's close shot, looped by the camera
    config = tmp_path / "edgeface.yaml"
    config.write_text(RETRY_CONFIG.format(max_retries=100))
    camera = MjpegServer(fps=30, frames=frames).start()
    run = Run(tmp_path, "--source", camera.url, "--config", str(config))
    try:
        run.wait_for(lambda: run.track_ids("unknown"), 180, "a first decision")
        before = run.track_ids()
        camera.stop()  # the camera loses power ...
        time.sleep(2.5)  # ... for longer than track_max_gap_s, with several refused reconnections
        camera = MjpegServer(port=camera.port, fps=30, frames=frames).start()  # ... and comes back
        run.wait_for(lambda: run.track_ids("unknown") - before, 120, "a decision on a track started after the reconnection")
        run.wait_for(lambda: before <= run.track_ids("track_ended"), 30, "the tracks from before the drop to end")
        assert camera.connections >= 1
        run.process.send_signal(signal.SIGTERM)
        code = run.finish()
    finally:
        if run.process.poll() is None:
            run.process.kill()
        camera.stop()
    assert code == 0, "\n".join(run.stderr)
    log = "\n".join(run.stderr)
    assert "reconnected" in log and "retry" in log and "Traceback" not in log
    assert run.track_ids() == run.track_ids("track_ended")  # every track closed, the last ones by the final flush


@needs_video
def test_a_camera_that_never_comes_back_ends_the_run_with_one_error_line_after_the_retries(tmp_path: Path) -> None:
    config = tmp_path / "edgeface.yaml"
    config.write_text(RETRY_CONFIG.format(max_retries=3))
    camera = MjpegServer(fps=30, frames=hamilton_frames(90, 200)).start()
    run = Run(tmp_path, "--source", camera.url, "--config", str(config))
    try:
        run.wait_for(lambda: run.track_ids(), 180, "a first event")
        camera.stop()  # and never again
        started = time.monotonic()
        code = run.finish(timeout=120)
        took = time.monotonic() - started
    finally:
        if run.process.poll() is None:
            run.process.kill()
        camera.stop()
    assert code == 1
    errors = [line for line in run.stderr if line.startswith("edgeface: error:")]
    assert len(errors) == 1, run.stderr
    assert "gave up after 3 retries" in errors[0] and camera.url in errors[0] and "refused" in errors[0]
    assert sum("retry" in line for line in run.stderr) == 3  # one warning per retry, as configured
    assert took < 60  # 3 quick retries (0.1 + 0.2 + 0.4 s of backoff), not the default 10 with 30 s waits
    assert "Traceback" not in "\n".join(run.stderr)
    assert run.track_ids() == run.track_ids("track_ended")  # the tracks open at the loss were still closed


@needs_video
def test_a_video_file_truncated_mid_stream_ends_cleanly(tmp_path: Path) -> None:
    from test_sources import mp4_faststart

    streamable = mp4_faststart(HAMILTON.read_bytes())  # index first, as a streaming recorder writes it
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(streamable[: len(streamable) * 2 // 3])
    run = Run(tmp_path, "--source", str(cut), "--every-frame")
    code = run.finish(timeout=300)
    assert code == 0, "\n".join(run.stderr)
    log = "\n".join(run.stderr)
    assert "truncated" in log and "Traceback" not in log
    assert not [line for line in run.stderr if line.startswith("edgeface: error") or " ERROR " in line]
    assert run.track_ids() and run.track_ids() == run.track_ids("track_ended")


@needs_video
def test_the_configs_source_options_reach_the_source(tmp_path: Path) -> None:
    from edgeface.cli.run import _open_source
    from edgeface.config import load_config

    config_file = tmp_path / "edgeface.yaml"
    config_file.write_text("pipeline:\n  source:\n    roi: [100, 50, 320, 240]\n    max_fps: 10\n")
    config = load_config(config_file)
    with _open_source(str(HAMILTON), False, config) as source:  # 29.97 fps file, capped at 10 fps
        frames = list(source)
    assert all(f.image.shape == (240, 320, 3) and f.offset == (100, 50) for f in frames)
    assert 85 <= len(frames) <= 95 and frames[1].index == 3
    config_file.write_text("pipeline:\n  source:\n    roi: [600, 0, 100, 100]\n")
    from edgeface.errors import SourceError

    with pytest.raises(SourceError, match="does not fit"):
        _open_source(str(HAMILTON), True, load_config(config_file))
