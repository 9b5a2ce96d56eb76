"""Several cameras in one `edgeface run` process (edgeface/service/cameras.py).

- config and command line: `cameras:` validated (unique, topic-safe names, one-line errors), `--source
  NAME=SRC` repeated, a plain `--source SRC` as before;
- shared models: runner pools and the combining embedder give what the models give alone;
- real runs: four cameras (the two videos twice) in one process decide what each video decides alone,
  with each event carrying its camera's name and track ids unique across cameras;
- a camera that dies (a real MJPEG camera on loopback, stopped) is reported on a real broker
  (`camera_state`, stats) while the other camera goes on, and comes back when the camera does;
- the systemd watchdog (a real NOTIFY_SOCKET stand-in) is fed while every camera delivers or retries,
  and not while one camera's picture is frozen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _mjpeg import MjpegServer

from edgeface.config import Config, load_config
from edgeface.errors import ConfigError
from edgeface.events import parse_event

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAMILTON = DATA / "video" / "hamilton_clip.mp4"
CROWD = DATA / "video" / "crowd_walk.mp4"
PEOPLE = DATA / "people"
needs_videos = pytest.mark.skipif(not (HAMILTON.is_file() and CROWD.is_file() and PEOPLE.is_dir()),
                                  reason="../shared/data is absent")


# -- config and command line ---------------------------------------------------------------------


def _config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "edgeface.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_camera_names_must_be_unique_and_safe_for_topics(tmp_path: Path) -> None:
    twice = _config_error(tmp_path, "cameras:\n  - {name: door, source: a.mp4}\n  - {name: door, source: b.mp4}\n")
    assert "line 1: cameras: camera names must be unique; 'door' is used more than once" in twice
    for bad in ("front door", "a/b", "cam+", "#", "x" * 65):
        message = _config_error(tmp_path, f"cameras:\n  - name: '{bad}'\n    source: a.mp4\n")
        assert "line 2: cameras.0.name: camera name" in message and "is not allowed" in message, message
    missing = _config_error(tmp_path, "cameras:\n  - name: door\n")
    assert "line 2: cameras.0.source: Field required" in missing
    typo = _config_error(tmp_path, "cameras:\n  - name: door\n    source: a.mp4\n    detecter: {model: full}\n")
    assert "line 4: cameras.0.detecter: unknown key" in typo


def test_each_camera_sees_its_own_detector_quality_and_tiles(tmp_path: Path) -> None:
    path = tmp_path / "edgeface.yaml"
    path.write_text("pipeline: {detect_tiles_x: 1}\ncameras:\n"
                    "  - {name: hall, source: a.mp4, detector: {model: full}, detect_tiles_x: 2, detect_tiles_y: 2,\n"
                    "     quality: {min_face_px: 24}}\n"
                    "  - {name: door, source: b.mp4}\n")
    config = load_config(path)
    hall, door = (config.for_camera(c) for c in config.cameras)
    assert hall.pipeline.camera == "hall" and door.pipeline.camera == "door"
    assert hall.recognition.detector.model == "full" and door.recognition.detector.model == "auto"
    assert (hall.pipeline.detect_tiles_x, hall.pipeline.detect_tiles_y) == (2, 2)
    assert (door.pipeline.detect_tiles_x, door.pipeline.detect_tiles_y) == (1, 1)
    assert hall.pipeline.quality.min_face_px == 24 and door.pipeline.quality.min_face_px == 40


def test_sources_on_the_command_line(tmp_path: Path) -> None:
    from edgeface.service.cameras import camera_specs, split_named_source

    assert split_named_source("door=rtsp://cam/stream?channel=1") == ("door", "rtsp://cam/stream?channel=1")
    assert split_named_source("rtsp://cam/stream?channel=1") == (None, "rtsp://cam/stream?channel=1")
    pipeline = "v4l2src device=/dev/video0 ! videoconvert ! appsink"
    assert split_named_source(pipeline) == (None, pipeline)
    odd = tmp_path / "a=b.mp4"
    odd.write_bytes(b"")
    assert split_named_source(str(odd)) == (None, str(odd))  # a file of that name is the file
    config = Config.model_validate({"cameras": [{"name": "door", "source": "x.mp4", "detector": {"model": "full"}}]})
    (single,) = camera_specs(config, ["clip.mp4"])
    assert (single.name, single.source, single.config.cameras) == ("cam0", "clip.mp4", [])
    door, yard = camera_specs(config, ["door=0", "yard=http://cam/video.mjpg"])
    assert (door.name, door.source, door.config.recognition.detector.model) == ("door", "0", "full")
    assert (yard.name, yard.config.recognition.detector.model) == ("yard", "auto")
    assert [s.name for s in camera_specs(config, [])] == ["door"]
    with pytest.raises(ConfigError, match="every --source is NAME=SRC"):
        camera_specs(config, ["door=0", "clip.mp4"])
    with pytest.raises(ConfigError, match="door=... is given more than once"):
        camera_specs(config, ["door=0", "door=1"])
    with pytest.raises(ConfigError, match="no camera"):
        camera_specs(Config(), [])


def test_a_bad_camera_name_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEFACE_GALLERY": str(tmp_path / "gallery.db")}
    done = subprocess.run([sys.executable, "-m", "edgeface.cli", "run", "--source", "a=x.mp4", "--source",
                           "b c=y.mp4"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "edgeface: error: with several cameras every --source is NAME=SRC (NAME: letters, digits, '_', '.', '-'); "
        "got 'b c=y.mp4'"]
    assert not (tmp_path / "gallery.db").exists()


# -- shared models -------------------------------------------------------------------------------


def test_the_combining_embedder_gives_each_camera_its_own_embeddings() -> None:
    from edgeface.io.models import models_dir
    from edgeface.vision.embed import Embedder
    from edgeface.vision.shared import CombiningEmbedder

    with np.load(models_dir() / "embedder_selfcheck.npz") as data:
        chips = data["chips"]  # real face chips shipped with the models
    embedder = Embedder(flip=True)
    expected = [embedder.embed(chips[i : i + 2]) for i in range(0, len(chips), 2)]
    shared = CombiningEmbedder(embedder)
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(4)

    def camera(k: int) -> None:
        start.wait()
        for _ in range(20):
            got[k] = shared.embed(chips[2 * k : 2 * k + 2])

    threads = [threading.Thread(target=camera, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(4):
        np.testing.assert_allclose(got[k], expected[k], atol=2e-5)
    assert shared.requests == 80 and shared.calls < 80  # some calls served several cameras at once


def test_a_runner_pool_serves_threads_with_what_one_runner_gives() -> None:
    import cv2

    from edgeface.vision.blazeface import BlazeFaceDetector, litert_runner
    from edgeface.vision.shared import RunnerPool

    if not HAMILTON.is_file():
        pytest.skip("../shared/data is absent")
    capture = cv2.VideoCapture(str(HAMILTON))
    frames = [capture.read()[1] for _ in range(12)]
    capture.release()
    alone = BlazeFaceDetector("full", runner=litert_runner("full"), resize="fast")
    expected = [alone.detect(f).xyxy for f in frames]
    pool = RunnerPool(lambda: litert_runner("full"), size=2)
    results: dict[int, list[np.ndarray]] = {}

    def camera(k: int) -> None:
        detector = BlazeFaceDetector("full", runner=pool, resize="fast")  # type: ignore[arg-type]
        results[k] = [detector.detect(f).xyxy for f in frames]

    threads = [threading.Thread(target=camera, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(3):
        for a, b in zip(results[k], expected):
            np.testing.assert_array_equal(a, b)
    assert pool.runners <= 2


# -- real runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gallery_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not PEOPLE.is_dir():
        pytest.skip("../shared/data is absent")
    from edgeface.storage.enroll import Enroller, image_files, person_folders
    from edgeface.storage.gallery import Gallery
    from edgeface.vision.analyzer import FaceAnalyzer

    path = tmp_path_factory.mktemp("gallery") / "gallery.db"
    gallery = Gallery(path)
    enroller = Enroller(FaceAnalyzer.from_config(Config().recognition), gallery)
    for name, folder in person_folders(PEOPLE)[0]:
        enroller.enroll(name, image_files(folder))
    gallery.close()
    return path


def _run(tmp_path: Path, *args: str, gallery: Path) -> tuple[list, str]:
    import shutil

    copy = tmp_path / f"gallery-{len(list(tmp_path.iterdir()))}.db"
    shutil.copy(gallery, copy)
    done = subprocess.run([sys.executable, "-m", "edgeface.cli", "run", "--every-frame", "--gallery", str(copy), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    return [parse_event(line) for line in done.stdout.splitlines() if line.strip()], done.stderr


def _decisions(events: list) -> Counter:
    """What a camera decided: recognised names, unknowns, and how its tracks ended."""
    return Counter((e.type, getattr(e, "name", None) or getattr(e, "decision", None)) for e in events
                   if e.type in ("recognized", "unknown", "track_ended"))


@needs_videos
def test_four_cameras_in_one_process_decide_what_each_video_decides_alone(tmp_path: Path, gallery_file: Path) -> None:
    alone = {video: _run(tmp_path, "--source", str(video), gallery=gallery_file)[0] for video in (HAMILTON, CROWD)}
    assert {e.camera for events in alone.values() for e in events} == {"cam0"}  # one camera: named as before
    assert ("recognized", "lin_manuel_miranda") in _decisions(alone[HAMILTON])
    sources = {"front": HAMILTON, "hall": CROWD, "back": HAMILTON, "garage": CROWD}
    events, log = _run(tmp_path, *[arg for name, video in sources.items() for arg in ("--source", f"{name}={video}")],
                       gallery=gallery_file)
    by_camera = {name: [e for e in events if e.camera == name] for name in sources}
    assert {e.camera for e in events} <= set(sources) | {None}
    for name, video in sources.items():
        assert _decisions(by_camera[name]) == _decisions(alone[video]), name
        assert f"camera {name}: " in log
    ended = [e.track_id for e in events if e.type == "track_ended"]
    assert len(ended) == len(set(ended))  # one counter: a track id names one track of the station
    assert {e.track_id for e in events if e.track_id is not None} == set(ended)  # every track closed
    assert "Traceback" not in log
