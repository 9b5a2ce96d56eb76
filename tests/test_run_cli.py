"""`run`, `annotate` and `bench pipeline` as a user runs them: real processes, real video, real gallery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgeface.events import parse_event

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAMILTON = DATA / "video" / "hamilton_clip.mp4"
PEOPLE = DATA / "people"
needs_data = pytest.mark.skipif(not (HAMILTON.is_file() and PEOPLE.is_dir()), reason="../shared/data is absent")


def edgeface(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    # Without --gallery, `run` creates the default gallery: keep that in a fresh folder, not the checkout.
    env = {**os.environ, "EDGEFACE_GALLERY": str(Path(tempfile.mkdtemp(prefix="edgeface-test-")) / "gallery.db")}
    return subprocess.run([sys.executable, "-m", "edgeface.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def enrolled_gallery(path: Path) -> Path:
    """A gallery at `path` with everyone in ../shared/data/people enrolled; skips the test when that is absent."""
    if not PEOPLE.is_dir():
        pytest.skip("../shared/data is absent")
    from edgeface.config import Config
    from edgeface.storage.enroll import Enroller, image_files, person_folders
    from edgeface.storage.gallery import Gallery
    from edgeface.vision.analyzer import FaceAnalyzer

    with Gallery(path) as gallery:
        enroller = Enroller(FaceAnalyzer.from_config(Config().recognition), gallery)
        for name, folder in person_folders(PEOPLE)[0]:
            enroller.enroll(name, image_files(folder))
    return path


@pytest.fixture(scope="module")
def gallery_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return enrolled_gallery(tmp_path_factory.mktemp("gallery") / "gallery.db")


def events_of(stdout: str) -> list:
    return [parse_event(line) for line in stdout.splitlines() if line.strip()]


@needs_data
def test_run_on_a_file_prints_events_and_closes_every_track(gallery_file: Path) -> None:
    from datetime import datetime, timezone

    started = datetime.now(timezone.utc)
    done = edgeface("run", "--source", str(HAMILTON), "--every-frame", "--gallery", str(gallery_file),
                    "--station-id", "hall")
    finished = datetime.now(timezone.utc)
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    # Miranda twice: standing far on stage (frames 0-19), then in his close shot (82-210); nobody else
    assert [e.name for e in events if e.type == "recognized"] == ["lin_manuel_miranda"] * 2
    assert all(e.station == "hall" for e in events)
    tracks = {e.track_id for e in events}
    assert tracks == {e.track_id for e in events if e.type == "track_ended"}
    # Timestamps are wall-clock times (a 9 s clip is read in about a second): never in the future, in the
    # order the events came out, and a track_ended says when the face was last seen, no later than its ts.
    stamps = [e.ts for e in events]
    assert stamps == sorted(stamps) and started <= stamps[0] and stamps[-1] <= finished
    for ended in (e for e in events if e.type == "track_ended"):
        assert started <= ended.started <= ended.ended <= ended.ts <= finished


@pytest.mark.parametrize(("args", "words"), [
    (["--source", "/nonexistent/video.mp4"], "nonexistent"),
    (["--source", str(HAMILTON), "--gallery", "/nonexistent/gallery.db"], "no gallery"),
    (["--source", str(HAMILTON), "--station-id", "bad id!"], "station-id"),
])
def test_bad_input_is_one_line_and_exit_1(tmp_path: Path, args: list[str], words: str) -> None:
    done = edgeface("run", *args)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in done.stderr


def test_bad_config_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("pipeline:\n  embed_every_frames: 0\n")
    done = edgeface("run", "--source", "0", "--config", str(config))
    assert done.returncode == 1 and "embed_every_frames" in done.stderr and "Traceback" not in done.stderr


def test_usage_errors_exit_2() -> None:
    assert edgeface("run").returncode == 2
    assert edgeface("run", "--source", "x", "--sink", "kafka").returncode == 2


class _VideoMjpeg:
    """A real MJPEG-over-HTTP server on loopback that plays a video's frames in a loop (an IP camera)."""

    def __init__(self, video: Path, first: int, last: int, fps: float = 30.0) -> None:
        import cv2

        capture = cv2.VideoCapture(str(video))
        self.jpegs = []
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if first <= index < last:
                self.jpegs.append(cv2.imencode(".jpg", frame)[1].tobytes())
            index += 1
        capture.release()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not server.stopped.is_set():
                        jpeg = server.jpegs[i % len(server.jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                        i += 1
                        time.sleep(1 / fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.stopped = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@needs_data
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_live_run_cleanly_with_track_ended(gallery_file: Path, sig: signal.Signals) -> None:
    camera = _VideoMjpeg(HAMILTON, 90, 200)  # Miranda's close shot, looped
    try:
        process = subprocess.Popen([sys.executable, "-m", "edgeface.cli", "run", "--source", camera.url,
                                    "--gallery", str(gallery_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if '"recognized"' in line:
                break
        assert any('"recognized"' in line for line in lines), process.stderr.read() if process.poll() is not None else lines
        process.send_signal(sig)
        out, err = process.communicate(timeout=60)
    finally:
        camera.close()
    # the exit-code rule (edgeface/cli.py): SIGTERM is how a service is stopped (0), Ctrl-C an interruption (130)
    assert process.returncode == (0 if sig == signal.SIGTERM else 130), err
    events = events_of("".join(lines) + out)
    recognized = next(e for e in events if e.type == "recognized")
    ended = [e for e in events if e.type == "track_ended"]
    assert recognized.track_id in {e.track_id for e in ended}  # the open track was closed by the final flush
    assert {e.track_id for e in events} == {e.track_id for e in ended}
    assert "Traceback" not in err


@needs_data
@pytest.mark.slow
def test_annotate_draws_names_on_every_frame(gallery_file: Path, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    out = tmp_path / "out.mp4"
    def dump() -> list[str]:
        import sqlite3

        with sqlite3.connect(gallery_file) as db:
            return list(db.iterdump())

    before = dump()
    done = edgeface("annotate", str(HAMILTON), "-o", str(out), "--gallery", str(gallery_file))
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert any(e.type == "recognized" for e in events)
    assert dump() == before  # annotate clusters in a scratch copy, never in the gallery
    annotated, original = cv2.VideoCapture(str(out)), cv2.VideoCapture(str(HAMILTON))
    count, changed = 0, 0
    while True:
        ok, a = annotated.read()
        ok2, b = original.read()
        if not ok or not ok2:
            break
        count += 1
        # The green "known" label colour appears only where a name was drawn.
        changed += int(np.any(np.all(np.abs(a.astype(int) - (60, 200, 60)) < 40, axis=2).sum() > 200))
    assert count == 275 and changed > 60


@needs_data
@pytest.mark.slow
def test_annotate_labels_unknown_faces_with_their_cluster_ids(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    done = edgeface("annotate", str(HAMILTON), "-o", str(out))  # no gallery: everyone is unknown
    assert done.returncode == 0, done.stderr
    unknowns = [e for e in events_of(done.stdout) if e.type == "unknown"]
    # the label drawn is the decision's cluster id (Pipeline._label), as `annotate --help` promises
    assert unknowns and all(e.cluster_id and e.cluster_id.startswith("unknown-") for e in unknowns)
    assert out.stat().st_size > 0 and "no gallery" in done.stderr


@needs_data
def test_bench_pipeline_json_last_line() -> None:
    done = edgeface("bench", "pipeline", "--source", str(HAMILTON), "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["fps"] > 0 and figures["peak_rss_mb"] > 0 and figures["model_floor_ratio"] >= 1.0
    assert figures["best_run"]["frames"] == 275
    # no stage counted twice (the tracker's embeddings were in "track" and in "align"/"embed"): with "other",
    # the glue between stages, the stages add up to the time inside the pipeline
    stages = figures["best_run"]["stage_ms"]
    assert stages["other"] >= 0 and "track" in stages
    assert sum(stages.values()) == pytest.approx(figures["best_run"]["pipeline_ms_per_frame"], abs=0.01)
    if sys.platform.startswith("linux"):  # private memory and mapped library files, which make up the RSS
        assert 0 < figures["rss_anon_mb"] < figures["peak_rss_mb"] and figures["rss_file_mb"] > 0


@pytest.mark.skipif(not HAMILTON.is_file(), reason="../shared/data/video is absent")
def test_run_without_a_gallery_creates_one_and_clusters_unknowns(tmp_path: Path) -> None:
    """A fresh station: no gallery yet. `edgeface run` creates the default one, so unknown faces get
    stable cluster ids from the first run on."""
    env = {k: v for k, v in os.environ.items() if k != "EDGEFACE_GALLERY"}
    result = subprocess.run([sys.executable, "-m", "edgeface.cli", "run", "--source", str(HAMILTON), "--every-frame"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gallery.db").is_file()
    events = [json.loads(line) for line in result.stdout.splitlines()]
    unknown = [e for e in events if e["type"] == "unknown"]
    assert unknown and all(e["cluster_id"].startswith("unknown-") for e in unknown)
