"""`edgeface run` with MQTT, as a user runs it: a real `edgeface run` process reading a real MJPEG camera
stream (the Hamilton clip served in a loop over HTTP), a real gallery, the shared Mosquitto on
127.0.0.1:1883, and a real paho client sending commands and reading replies, events, Home Assistant
configs and stats."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from _mjpeg import MjpegServer
from _mqtt_helpers import SHARED_PORT, Collector, clear_retained, shared_broker_up
from paho.mqtt.enums import CallbackAPIVersion

from edgeface.events import parse_event
from edgeface.service.mqtt.commands import sign_command

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAMILTON = DATA / "video" / "hamilton_clip.mp4"
PEOPLE = DATA / "people"
LFW = DATA / "lfw" / "images"
NEWCOMER = LFW / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
pytestmark = pytest.mark.skipif(not (HAMILTON.is_file() and PEOPLE.is_dir() and NEWCOMER.is_file()),
                                reason="../shared/data is absent")


class ClipServer(MjpegServer):
    """The MJPEG server of tests/_mjpeg.py serving the frames of a video in a loop at its frame rate."""

    def __init__(self, video: Path, fps: float = 30.0) -> None:
        import cv2

        super().__init__(fps=fps)
        capture = cv2.VideoCapture(str(video))
        self.jpegs: list[bytes] = []
        while True:
            ok, image = capture.read()
            if not ok:
                break
            self.jpegs.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        capture.release()

    def _tick(self) -> None:
        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                self._jpeg = self.jpegs[self.counter % len(self.jpegs)]
                self.counter += 1
                self._fresh.notify_all()
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))


@pytest.fixture(scope="module")
def gallery_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeface.config import Config
    from edgeface.storage.enroll import Enroller, image_files, person_folders
    from edgeface.storage.gallery import Gallery
    from edgeface.vision.analyzer import FaceAnalyzer

    path = tmp_path_factory.mktemp("gallery") / "gallery.db"
    with Gallery(path) as gallery:
        enroller = Enroller(FaceAnalyzer.from_config(Config().recognition), gallery)
        for name, folder in person_folders(PEOPLE)[0]:
            enroller.enroll(name, image_files(folder))
    return path


class Commander:
    """A paho client that sends commands and waits for the reply carrying its request_id."""

    def __init__(self, station: str, secret: bytes | None = None) -> None:
        self.prefix = f"edgeface/{station}/"
        self.secret = secret
        self.replies: dict[str, list[dict]] = {}
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"commander-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{self.prefix}cmd/+/reply", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", SHARED_PORT)
        self.client.loop_start()
        assert ready.wait(5)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        reply = json.loads(message.payload)
        with self.lock:
            self.replies.setdefault(str(reply.get("request_id")), []).append(reply)

    def send(self, verb: str, payload: bytes | dict, request_id: str | None = None, timeout_s: float = 30.0) -> dict:
        """Publish and wait for the reply with request_id (for payloads that cannot carry one, the
        reply with request_id null whose verb matches, counted from before sending)."""
        key = str(request_id)
        with self.lock:
            before = len(self.replies.get(key, []))
        if isinstance(payload, dict):
            command = {**payload, **({"request_id": request_id} if request_id else {})}
            payload = sign_command(self.secret, verb, command) if self.secret else json.dumps(command).encode()
        self.client.publish(f"{self.prefix}cmd/{verb}", payload, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                got = self.replies.get(key, [])
                if len(got) > before:
                    return got[before]
            time.sleep(0.02)
        raise AssertionError(f"no reply to {verb} {payload[:80]!r} within {timeout_s} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _events(collector: Collector, start: int = 0) -> list:
    with collector.lock:
        messages = collector.messages[start:]
    return [parse_event(p) for t, p, _ in messages if "/events/" in t]


@pytest.mark.skipif(not shared_broker_up(), reason="no Mosquitto on 127.0.0.1:1883")
@pytest.mark.slow
def test_run_with_mqtt_answers_commands_while_events_keep_flowing(tmp_path: Path, gallery_file: Path) -> None:
    import shutil
    import sqlite3

    station = f"run-{uuid.uuid4().hex[:8]}"
    gallery = tmp_path / "gallery.db"
    shutil.copy(gallery_file, gallery)
    config = tmp_path / "station.json"
    config.write_text(json.dumps({"station_id": station, "mqtt": {
        "url": "mqtt://127.0.0.1:1883", "outbox_path": str(tmp_path / "outbox.sqlite"), "homeassistant": True,
        "stats_interval_s": 1, "present_timeout_s": 5}}))
    events = Collector(SHARED_PORT, f"edgeface/{station}/#")
    discovery = Collector(SHARED_PORT, f"homeassistant/+/edgeface_{station}/+/config")
    secret = b"0123456789abcdef0123456789abcdef"
    commander = Commander(station, secret)
    camera = ClipServer(HAMILTON).start()
    # No --sink: the broker in the config makes MQTT the sink.
    process = subprocess.Popen([sys.executable, "-m", "edgeface.cli", "run", "--source", camera.url, "--config",
                                str(config), "--gallery", str(gallery)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "EDGEFACE_COMMAND_SECRET": secret.decode()})
    published_configs: list[str] = []
    try:
        assert events.wait_for(1, 20, suffix="/status"), "the station never said online"
        deadline = time.monotonic() + 30
        while not any(e.type == "recognized" for e in _events(events)) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1][-2000:]
            time.sleep(0.05)
        first = next(e for e in _events(events) if e.type == "recognized")
        assert first.name == "lin_manuel_miranda" and first.station == station

        # Malformed commands: each gets exactly one ok=false reply with a one-line message.
        malformed = [
            ("reject", b"not json at all"),
            ("reject", b"[1, 2]"),
            ("forget", b'{"name": 5}'),
            ("reject", b'{"track_id": "seven", "name": "x"}'),
            ("enroll", b'{"name": "Eve", "image": "%%% not base64 %%%"}'),
            ("enroll", b'{"name": "Eve", "image": "' + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40) + b'"}'),
            ("explode", b"{}"),
            ("status", b"\xff\xfe\x00garbage"),
        ]
        for verb, payload in malformed:
            reply = commander.send(verb, payload)
            assert reply["ok"] is False and reply["message"] and "\n" not in reply["message"], reply
        # Well-formed but wrong: still answered, still ok=false, with the reason.
        wrong = commander.send("reject", {"track_id": 99999, "name": "lin_manuel_miranda"}, "w1")
        assert not wrong["ok"] and "99999" in wrong["message"]
        wrong = commander.send("reject", {"track_id": first.track_id, "name": "joe_biden"}, "w2")
        assert not wrong["ok"] and "never recognised as 'joe_biden'" in wrong["message"]
        wrong = commander.send("forget", {"name": "Nobody Here"}, "w3")
        assert not wrong["ok"] and "Nobody Here" in wrong["message"]
        import cv2

        blank = cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes()
        faceless = commander.send("enroll", {"name": "Eve", "image": base64.b64encode(blank).decode()}, "w4")
        assert not faceless["ok"] and "no_face" in faceless["message"], faceless
        # dogs: no face (short range alone gave one weak candidate, a dog's face: still no face, not a poor one)
        dogs = (DATA / "detection" / "dogs.jpg").read_bytes()
        dogs_reply = commander.send("enroll", {"name": "Eve", "image": base64.b64encode(dogs).decode()}, "w5")
        assert not dogs_reply["ok"] and "no_face (no " in dogs_reply["message"], dogs_reply

        status = commander.send("status", {}, "s1")
        assert status["ok"] and status["result"]["station"] == station and status["result"]["frames"] > 0
        assert status["result"]["mqtt"]["connected"] is True and status["result"]["homeassistant"] is True

        # Negative feedback on the recognised track: kept as a negative exemplar of that person.
        rejected = commander.send("reject", {"track_id": first.track_id, "name": "lin_manuel_miranda"}, "r1")
        assert rejected["ok"], rejected
        assert rejected["result"]["negatives"] == 1

        # Enroll a newcomer from a photo, see their Home Assistant entity, then forget them.
        image = base64.b64encode(NEWCOMER.read_bytes()).decode()
        enrolled = commander.send("enroll", {"name": "Aaron Eckhart", "image": image}, "e1")
        assert enrolled["ok"], enrolled
        assert enrolled["result"]["templates"] == 1
        # the running station's models stored both embeddings (the second opinion is on by default)
        stored = sqlite3.connect(gallery).execute(
            "SELECT s.model_id, length(c.chip) FROM templates t JOIN identities i ON i.id = t.identity_id"
            " JOIN second_embeddings s ON s.template_id = t.id JOIN template_chips c ON c.template_id = t.id"
            " WHERE i.name = 'Aaron Eckhart'").fetchall()
        assert stored == [("sface_2021dec", 112 * 112 * 3)], stored
        again = commander.send("enroll", {"name": "Aaron Eckhart", "image": image}, "e2")
        assert not again["ok"] and "duplicate" in again["message"]
        # The reply can overtake the config (replies go straight out, configs through the outbox): wait for it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with discovery.lock:
                published_configs = sorted({t for t, p, _ in discovery.messages})
            if any("/present_aaron_eckhart_" in t for t in published_configs):
                break
            time.sleep(0.05)
        person_topic = next(t for t in published_configs if "/present_aaron_eckhart_" in t)
        forgotten = commander.send("forget", {"name": "Aaron Eckhart"}, "f1")
        assert forgotten["ok"] and forgotten["result"]["templates"] == 1, forgotten
        assert events.wait_for(1, 5, suffix="/events/person_forgotten")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with discovery.lock:
                cleared = [p for t, p, _ in discovery.messages if t == person_topic and p == b""]
            if cleared:
                break
            time.sleep(0.05)
        assert cleared, "forgetting a person did not clear their discovery config"
        # Signed commands are accepted once; a captured one replayed is refused, and unsigned ones too.
        envelope = sign_command(secret, "reload", {"request_id": "p1"})
        assert commander.send("reload", envelope, "p1")["ok"]
        replay = commander.send("reload", envelope, "p1")
        assert not replay["ok"] and "replayed" in replay["message"], replay
        unsigned = commander.send("forget", json.dumps({"name": "lin_manuel_miranda", "request_id": "u1"}).encode(), "u1")
        assert not unsigned["ok"] and "signed" in unsigned["message"], unsigned
        # The ignore list: an unknown id is refused with the reason; a cluster goes on it and off again
        # (one made in the gallery file by this process, as `edgeface clusters` would: the clip's unknowns
        # here are too few to be sure of one).
        missing = commander.send("ignore_cluster", {"cluster_id": "unknown-999"}, "i0")
        assert not missing["ok"] and "no cluster unknown-999" in missing["message"], missing
        from edgeface.storage.cluster_store import ClusterStore

        with ClusterStore(gallery, create=False) as shell:
            visitor = shell.observe(np.eye(128, dtype=np.float32)[7], track_key="shell:1").cluster.id
            ignored = commander.send("ignore_cluster", {"cluster_id": visitor}, "i1")
            assert ignored["ok"] and ignored["result"] == {"cluster_id": visitor, "ignored": True}, ignored
            assert [c.ignored for c in shell.list_clusters() if c.id == visitor] == [True]
            undone = commander.send("ignore_cluster", {"cluster_id": visitor, "undo": True}, "i2")
            assert undone["ok"] and undone["result"] == {"cluster_id": visitor, "ignored": False}, undone
            assert [c.ignored for c in shell.list_clusters() if c.id == visitor] == [False]
        unsigned = commander.send("ignore_cluster", json.dumps({"cluster_id": visitor, "request_id": "i3"}).encode(), "i3")
        assert not unsigned["ok"] and "signed" in unsigned["message"], unsigned
        last_reply_at = len(events.messages)

        # The loop kept running: events after the last reply, through one more pass of the clip.
        loop_done = camera.counter + len(camera.jpegs) + 45
        deadline = time.monotonic() + 30
        while camera.counter < loop_done and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1][-2000:]
            time.sleep(0.1)
        time.sleep(1.0)
        later = _events(events, last_reply_at)
        assert sum(e.type == "track_ended" for e in later) >= 3, [e.type for e in later]
        assert [e for e in later if e.type in ("recognized", "unknown")], "no decision after the commands"
        stats = [json.loads(p) for p in events.payloads("/stats")]
        assert stats and max(s["fps"] for s in stats) > 5, stats
        assert all(s["model"].startswith("dlib_resnet_v1-") for s in stats)
        assert max(sum(s["quality_rejections"].values()) for s in stats) > 0  # the clip has turned heads
        assert max(s["uptime_s"] for s in stats) > 5 and all(s["station"] == station for s in stats)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        camera.stop()
        commander.close()
        events.close()
        discovery.close()
        with events.lock:
            retained = sorted({t for t, p, r in events.messages if "/presence/" in t or t.endswith(("/status", "/stats"))})
        clear_retained(station, topics=retained + published_configs)
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    all_events = _events(events)
    opened = {e.track_id for e in all_events if e.type in ("recognized", "unknown")}
    ended = {e.track_id for e in all_events if e.type == "track_ended"}
    assert opened <= ended
    # The negative stored by reject is the track's face: near the person's template (it matched it).
    from edgeface.recognition.vectors import pairwise_distances
    from edgeface.storage.gallery import Gallery

    with Gallery(gallery, create=False) as stored:
        assert stored.show("lin_manuel_miranda").negative_count == 1
        assert "Aaron Eckhart" not in {i.name for i in stored.list_identities()}
        export = tmp_path / "export.json"
        stored.export_to(export)
    record = next(r for r in json.loads(export.read_text())["identities"] if r["name"] == "lin_manuel_miranda")
    vectors = [np.frombuffer(base64.b64decode(x["embedding_f32le_b64"]), "<f4")[None]
               for x in (record["negatives"][0], record["templates"][0])]
    assert pairwise_distances(*vectors)[0, 0] < stored.match_max_distance
    print(f"\n{len(all_events)} events, {len(stats)} stats, {len(malformed) + 4} malformed/wrong commands answered; "
          f"events: {[(e.type, e.track_id, getattr(e, 'name', None)) for e in all_events]}")
