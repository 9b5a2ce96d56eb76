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
from test_run_cli import enrolled_gallery

from edgeface.config import Config, load_config
from edgeface.errors import ConfigError
from edgeface.events import parse_event
from edgeface.vision.analyzer import camera_models

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
    assert "line 2: cameras.0: camera 'door' needs a source or a source_env (one of them)" in missing
    both = _config_error(tmp_path, "cameras:\n  - {name: door, source: a.mp4, source_env: DOOR_URL}\n")
    assert "needs a source or a source_env (one of them)" in both
    typo = _config_error(tmp_path, "cameras:\n  - name: door\n    source: a.mp4\n    detecter: {model: full}\n")
    assert "line 4: cameras.0.detecter: unknown key" in typo


def test_each_camera_sees_its_own_detector_quality_and_tiles(tmp_path: Path) -> None:
    path = tmp_path / "edgeface.yaml"
    path.write_text("pipeline: {detect_tiles_x: 1}\ncameras:\n"
                    "  - {name: hall, source: a.mp4, detector: {model: full}, detect_tiles_x: 2, detect_tiles_y: 2,\n"
                    "     quality: {min_face_px: 24}, capture: {roi: [0, 0, 320, 200], max_retries: 3}}\n"
                    "  - {name: door, source: b.mp4}\n")
    config = load_config(path)
    hall, door = (config.for_camera(c) for c in config.cameras)
    assert hall.pipeline.camera == "hall" and door.pipeline.camera == "door"
    assert hall.recognition.detector.model == "full" and door.recognition.detector.model == "auto"
    assert (hall.pipeline.detect_tiles_x, hall.pipeline.detect_tiles_y) == (2, 2)
    assert (door.pipeline.detect_tiles_x, door.pipeline.detect_tiles_y) == (1, 1)
    assert hall.pipeline.quality.min_face_px == 24 and door.pipeline.quality.min_face_px == 40
    assert (hall.pipeline.source.roi, hall.pipeline.source.max_retries) == ((0, 0, 320, 200), 3)
    assert (door.pipeline.source.roi, door.pipeline.source.max_retries) == (None, 10)


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


def test_a_camera_password_can_stay_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeface.service.cameras import camera_specs

    config = Config.model_validate({"cameras": [{"name": "door", "source_env": "EDGEFACE_TEST_DOOR"},
                                                {"name": "yard", "source": "1"}]})
    monkeypatch.delenv("EDGEFACE_TEST_DOOR", raising=False)
    with pytest.raises(ConfigError, match=r"camera door: \$EDGEFACE_TEST_DOOR \(its source_env\) is not set"):
        camera_specs(config, [])
    monkeypatch.setenv("EDGEFACE_TEST_DOOR", "rtsp://user:secret@door.lan/stream")
    door, yard = camera_specs(config, [])
    assert (door.source, yard.source) == ("rtsp://user:secret@door.lan/stream", "1")


@needs_videos
def test_doctor_reads_a_frame_from_each_camera(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeface.service.doctor import DoctorOptions, run_checks

    config = tmp_path / "edgeface.yaml"
    config.write_text(f"cameras:\n  - {{name: front, source: '{HAMILTON}'}}\n  - {{name: back, source_env: EDGEFACE_TEST_BACK}}\n")
    monkeypatch.delenv("EDGEFACE_TEST_BACK", raising=False)
    checks = {c.name: c for c in run_checks(DoctorOptions(config_path=config, gallery=tmp_path / "gallery.db"))}
    assert checks["camera front"].status == "ok" and "read a 640x360 frame" in checks["camera front"].detail
    assert checks["camera back"].status == "fail" and "$EDGEFACE_TEST_BACK" in checks["camera back"].detail
    assert "camera" not in checks


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


def test_cameras_share_one_sface_model() -> None:
    from edgeface.vision.shared import SharedModels

    shared = SharedModels()
    for_door, for_yard = (camera_models(Config(), shared=shared) for _ in range(2))
    assert for_door.second is not None and for_yard.second is not None
    assert for_door.second.aligner is not for_yard.second.aligner  # each camera its own aligner
    assert for_door.second.embedder is for_yard.second.embedder  # one SFace model, loaded on first use
    assert for_door.embedder is for_yard.embedder
    off = Config.model_validate({"recognition": {"second_opinion": "off"}})
    assert camera_models(off, shared=shared).second is None


def test_interpreters_made_on_several_threads_at_once_leave_stderr_alone() -> None:
    """LiteRT interpreters are made with fd 2 swapped for a moment (to drop the runtime's chatter); made on
    several camera threads at once, the swaps must not interleave, or fd 2 stays on a temporary file and
    every later log line is lost (found with four cameras: a run's log ended at start-up)."""
    from edgeface.vision.blazeface import litert_runner

    before = os.fstat(2)
    start = threading.Barrier(6)

    def make() -> None:
        start.wait()
        for _ in range(3):
            litert_runner("short")

    threads = [threading.Thread(target=make) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


# -- real runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gallery_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return enrolled_gallery(tmp_path_factory.mktemp("gallery") / "gallery.db")


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


@needs_videos
def test_the_stations_commands_reach_every_camera(tmp_path: Path, gallery_file: Path) -> None:
    """status lists each camera and adds them up; reject finds a track of whichever camera decided it
    (track ids are the station's)."""
    import io
    import shutil

    from edgeface.io.sources import open_source
    from edgeface.service.app import build_station
    from edgeface.service.cameras import camera_specs
    from edgeface.service.mqtt.commands import RejectCommand, StatusCommand
    from edgeface.storage.gallery import Gallery

    copy = tmp_path / "gallery.db"
    shutil.copy(gallery_file, copy)
    config = Config()
    specs = camera_specs(config, [f"front={HAMILTON}", f"back={HAMILTON}"])

    def opened(spec):
        return open_source(spec.source, every_frame=True)

    out = io.StringIO()
    running = build_station(config, gallery=Gallery(copy, create=False), stdout=out, commands=True, cameras=specs,
                            sources={s.name: opened(s) for s in specs}, open_source=opened)
    try:
        assert running.cameras is not None and running.station is not None
        running.cameras.run(threading.Event())
        events = [parse_event(line) for line in out.getvalue().splitlines()]
        recognized = {e.camera: e.track_id for e in events if e.type == "recognized" and e.name == "lin_manuel_miranda"}
        assert set(recognized) == {"front", "back"} and recognized["front"] != recognized["back"]
        status = running.station.status(StatusCommand()).result
        assert {name: (c["state"], c["frames"]) for name, c in status["cameras"].items()} == \
            {"front": ("ended", 275), "back": ("ended", 275)}
        assert status["frames"] == 550
        assert status["events"]["track_ended"] == sum(e.type == "track_ended" for e in events)
        reply = running.station.reject(RejectCommand(track_id=recognized["back"], name="lin_manuel_miranda"))
        assert f"track {recognized['back']} was not lin_manuel_miranda" in reply.message
    finally:
        running.close()


# -- a camera that dies, the watchdog --------------------------------------------------------------


def hamilton_frames(first: int, last: int) -> list:
    import cv2

    capture = cv2.VideoCapture(str(HAMILTON))
    frames = [capture.read()[1] for _ in range(last)][first:]
    capture.release()
    return frames


class Run:
    """`edgeface run` in a subprocess; stdout and stderr collected as they come."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if k not in ("EDGEFACE_GALLERY", "EDGEFACE_SOURCE")}
        self.process = subprocess.Popen([sys.executable, "-m", "edgeface.cli", "run", *args], cwd=tmp_path,
                                        env={**environ, **(env or {})}, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=lambda s=stream, out=out: out.extend(s), daemon=True)
                         for stream, out in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the run exited ({self.process.returncode}) before {what}:\n"
                                     + "".join(self.stderr[-30:]))
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n" + "".join(self.stderr[-30:]))
            time.sleep(0.05)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


RETRY = """\
pipeline:
  source:
    max_retries: {max_retries}
    backoff_initial_s: 0.1
    backoff_max_s: 0.5
    open_timeout_s: 3
    read_timeout_s: {read_timeout_s}
  tracking:
    track_max_gap_s: 1.0
"""


@needs_videos
@pytest.mark.slow
def test_a_camera_that_dies_is_reported_while_the_other_goes_on_and_comes_back(tmp_path: Path) -> None:
    from _mqtt_helpers import MOSQUITTO, Collector, PrivateBroker

    if not Path(MOSQUITTO).is_file():
        pytest.skip("no mosquitto")
    broker = PrivateBroker(tmp_path)
    broker.start()
    frames = hamilton_frames(90, 200)
    door, yard = MjpegServer(fps=15, frames=frames).start(), MjpegServer(fps=15, frames=frames).start()
    config = tmp_path / "edgeface.yaml"
    config.write_text(RETRY.format(max_retries=1, read_timeout_s=3) + f"""\
station_id: twocams
mqtt:
  url: mqtt://127.0.0.1:{broker.port}
  commands: false
  stats_interval_s: 1
  outbox_path: {tmp_path / 'outbox.sqlite'}
""")
    collector = Collector(broker.port, "edgeface/twocams/#")
    run = Run(tmp_path, "--source", f"door={door.url}", "--source", f"yard={yard.url}", "--config", str(config))

    def stats() -> dict:
        payloads = collector.payloads("/stats")
        return json.loads(payloads[-1]) if payloads else {}

    def states(kind: str) -> list[dict]:
        return [e for e in collector.unique_events() if e.get("type") == kind]

    try:
        run.wait_for(lambda: all(stats().get("cameras", {}).get(c, {}).get("frames", 0) > 10 for c in ("door", "yard")),
                     120, "both cameras delivering")
        door.stop()  # the door camera loses power for good (one retry allowed)
        run.wait_for(lambda: states("camera_state"), 60, "the door camera reported failed")
        (failed,) = states("camera_state")
        assert (failed["camera"], failed["state"], failed["failures"]) == ("door", "failed", 1)
        assert "gave up after 1 retry" in failed["reason"] and door.url in failed["reason"]
        yard_frames = stats()["cameras"]["yard"]["frames"]
        run.wait_for(lambda: stats()["cameras"]["yard"]["frames"] > yard_frames + 20
                     and stats()["cameras"]["door"]["state"] == "failed", 60, "the yard camera going on")
        assert stats()["cameras"]["yard"]["state"] == "running"
        door = MjpegServer(port=door.port, fps=15, frames=frames).start()  # power is back
        run.wait_for(lambda: len(states("camera_state")) == 2, 60, "the door camera back")
        back = states("camera_state")[1]
        assert (back["camera"], back["state"], back["reason"]) == ("door", "connected", None)
        door_frames = stats()["cameras"]["door"]["frames"]
        run.wait_for(lambda: stats()["cameras"]["door"]["frames"] > door_frames + 10, 60, "door frames again")
        code = run.stop()
    finally:
        run.kill()
        door.stop()
        yard.stop()
        collector.close()
        broker.close()
    assert code == 0, "".join(run.stderr)
    log = "".join(run.stderr)
    assert "camera door failed:" in log and "the other cameras go on" in log and "Traceback" not in log
    events = [parse_event(line) for line in run.stdout if line.strip()]
    assert not events  # everything went to the broker
    for event in collector.unique_events():
        parse_event(json.dumps(event))  # every payload is a valid event of the schema


@needs_videos
def test_the_last_camera_failing_ends_the_run_with_its_error(tmp_path: Path) -> None:
    config = tmp_path / "edgeface.yaml"
    config.write_text(RETRY.format(max_retries=1, read_timeout_s=3))
    frames = hamilton_frames(90, 120)
    door, yard = MjpegServer(fps=15, frames=frames).start(), MjpegServer(fps=15, frames=frames).start()
    run = Run(tmp_path, "--source", f"door={door.url}", "--source", f"yard={yard.url}", "--config", str(config),
              env={"EDGEFACE_GALLERY": str(tmp_path / "gallery.db")})
    try:
        run.wait_for(lambda: any("camera_state" not in line for line in run.stdout), 120, "a first event")
        door.stop()
        run.wait_for(lambda: any('"camera_state"' in line for line in run.stdout), 60, "door reported")
        yard.stop()
        code = run.process.wait(timeout=60)
    finally:
        run.kill()
        door.stop()
        yard.stop()
    for reader in run._readers:
        reader.join(10)
    assert code == 1
    errors = [line for line in run.stderr if line.startswith("edgeface: error:")]
    assert len(errors) == 1 and errors[0].startswith("edgeface: error: every camera stopped: door: "), run.stderr
    assert "yard: " in errors[0]
    events = [parse_event(line) for line in run.stdout if line.strip()]
    tracks = {e.track_id for e in events if e.track_id is not None}
    assert tracks == {e.track_id for e in events if e.type == "track_ended"}  # both cameras' tracks closed


@needs_videos
@pytest.mark.slow
def test_the_watchdog_is_fed_while_every_camera_delivers_or_retries(tmp_path: Path) -> None:
    """WATCHDOG_USEC 0.4 s: a ping at most every 0.2 s while every camera delivers; a camera that is
    reconnecting (its camera stopped, retries left) does not stop the pings; a camera whose picture
    froze (connected, no frame, before its read timeout) does."""
    import tempfile

    from test_systemd import FakeSystemd

    directory = Path(tempfile.mkdtemp(prefix="sdn"))  # sun_path is 108 bytes
    systemd = FakeSystemd(str(directory / "notify"), str(directory / "notify"))
    messages: list[tuple[float, str]] = []
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            try:
                message = systemd.receive(0.05)
            except TimeoutError:
                continue
            messages.append((time.monotonic(), next(iter(message))))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def pings(since: float, until: float | None = None) -> int:
        return sum(kind == "WATCHDOG" and at >= since and (until is None or at < until) for at, kind in messages)

    config = tmp_path / "edgeface.yaml"
    config.write_text(RETRY.format(max_retries=1000, read_timeout_s=30))
    frames = hamilton_frames(90, 120)
    door, yard = MjpegServer(fps=15, frames=frames).start(), MjpegServer(fps=15, frames=frames).start()
    run = Run(tmp_path, "--source", f"door={door.url}", "--source", f"yard={yard.url}", "--config", str(config),
              env={"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "400000",
                   "EDGEFACE_GALLERY": str(tmp_path / "gallery.db")})
    try:
        run.wait_for(lambda: pings(0) >= 3, 120, "pings while both cameras deliver")
        door.stop()  # reconnecting, retries left
        time.sleep(1.0)
        reconnecting = time.monotonic()
        time.sleep(2.0)
        assert pings(reconnecting) >= 4, messages[-10:]
        door = MjpegServer(port=door.port, fps=15, frames=frames).start()
        time.sleep(3.0)  # reconnected
        yard.paused.set()  # the yard picture freezes: connected, no frame
        time.sleep(1.0)
        frozen = time.monotonic()
        time.sleep(2.5)
        assert pings(frozen) == 0, messages[-10:]
        yard.paused.clear()
        thawed = time.monotonic()
        run.wait_for(lambda: pings(thawed) >= 2, 30, "pings again once the yard delivers")
        code = run.stop()
    finally:
        run.kill()
        door.stop()
        yard.stop()
        done.set()
        reader.join(5)
        systemd.close()
    assert code == 0, "".join(run.stderr)
    kinds = [kind for _, kind in messages]
    assert kinds[0] == "READY" and kinds[-1] == "STOPPING"


@needs_videos
def test_the_station_page_shows_each_camera_by_name(tmp_path: Path) -> None:
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request

    import cv2

    config = tmp_path / "edgeface.yaml"  # the hall camera's settings (its own region of interest) by its name
    config.write_text("cameras:\n  - {name: hall, source: unused.mp4, capture: {roi: [0, 0, 960, 540]}}\n")
    run = Run(tmp_path, "--source", f"front={HAMILTON}", "--source", f"hall={CROWD}", "--every-frame",
              "--config", str(config),
              "--web", "127.0.0.1:0", env={"EDGEFACE_WEB_PASSWORD": "correct horse battery",
                                           "EDGEFACE_GALLERY": str(tmp_path / "gallery.db")})
    try:
        run.wait_for(lambda: any("every camera's source ended" in line for line in run.stderr), 180,
                     "both videos processed")
        url = next(re.search(r"station page on (\S+)", line).group(1)  # type: ignore[union-attr]
                   for line in run.stderr if "station page on" in line)
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        opener.open(url + "/login", urllib.parse.urlencode({"password": "correct horse battery"}).encode(), timeout=10)
        sizes = {}
        for camera in ("front", "hall"):
            jpeg = opener.open(f"{url}/live.jpg?camera={camera}", timeout=10).read()
            sizes[camera] = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        page = opener.open(f"{url}/live?camera=hall", timeout=10).read().decode()
        status = opener.open(f"{url}/status", timeout=10).read().decode()
        code = run.stop()
    finally:
        run.kill()
    assert sizes == {"front": (360, 640), "hall": (540, 960)}  # each camera's own last frame, hall's cropped
    assert 'data-src="/live.jpg?camera=hall"' in page and 'href="/live?camera=front"' in page
    assert "camera front" in status and "camera hall" in status and "275 frames" in status
    assert code == 0, "".join(run.stderr)
