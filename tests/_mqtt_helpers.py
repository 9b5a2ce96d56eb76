"""Test helpers for the MQTT tests: a private Mosquitto, a subscriber that records, deterministic
events, and a TCP gate. Nothing here replaces a real component: the brokers are real Mosquitto
processes and the clients are real paho clients."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgeface.events import Event, RecognizedEvent, TrackEndedEvent, UnknownEvent

SHARED_HOST = "127.0.0.1"
SHARED_PORT = 1883
MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def shared_broker_up() -> bool:
    """Whether the shared Mosquitto answers on 127.0.0.1:1883."""
    try:
        wait_port(SHARED_PORT, 1.0)
        return True
    except TimeoutError:
        return False


def unique_station() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


class PrivateBroker:
    """A Mosquitto of our own on a free port (persistence off), which tests may kill and restart."""

    def __init__(self, directory: Path, extra_config: str = "", port: int | None = None) -> None:
        self.port = port or free_port()
        self.config = directory / f"mosquitto-{self.port}.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous true\npersistence false\nuser root\n{extra_config}"
        )
        self.log = directory / f"mosquitto-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        self.starts += 1
        wait_port(self.port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class Collector:
    """A real paho subscriber recording every message (duplicates included), reconnecting fast."""

    def __init__(self, port: int, topic_filter: str, *, protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5) -> None:
        self.filter = topic_filter
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol)
        self.client.reconnect_delay_set(0.02, 0.1)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self.subscribed.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(5):
            raise TimeoutError(f"collector could not subscribe on port {port}")

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        client.subscribe(self.filter, qos=1)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def payloads(self, suffix: str = "") -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def unique_events(self) -> list[dict[str, object]]:
        """Events in order of first arrival, deduplicated by id (what a consumer does)."""
        seen: set[str] = set()
        out = []
        for payload in self.payloads():
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            if isinstance(event, dict) and "id" in event and event["id"] not in seen:
                seen.add(str(event["id"]))
                out.append(event)
        return out

    def wait_for(self, count: int, timeout_s: float, suffix: str = "") -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.payloads(suffix)) >= count:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def clear_retained(station: str, host: str = SHARED_HOST, port: int = SHARED_PORT,
                   topics: list[str] | None = None) -> None:
    """Remove the retained messages a test left on the shared broker: the station's status/stats plus
    any other `topics`."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    try:
        client.connect(host, port)
    except OSError:
        return
    client.loop_start()
    for topic in [f"edgeface/{station}/status", f"edgeface/{station}/stats", *(topics or [])]:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(2)
    client.disconnect()
    client.loop_stop()


def make_events(n: int, station: str, camera: str = "front") -> list[Event]:
    """A deterministic stream (fixed ids and times) mixing the three per-track event types."""
    t0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    events: list[Event] = []
    for i in range(n):
        ts = t0 + timedelta(milliseconds=100 * i)
        event_id = f"ev{i:06d}"
        kind = i % 3
        if kind == 0:
            events.append(RecognizedEvent(id=event_id, ts=ts, station=station, camera=camera, track_id=i,
                                          name="Ada Lovelace", confidence=0.9, distance=0.31, faces_used=3))
        elif kind == 1:
            events.append(UnknownEvent(id=event_id, ts=ts, station=station, camera=camera, track_id=i,
                                       faces_used=2))
        else:
            events.append(TrackEndedEvent(id=event_id, ts=ts, station=station, camera=camera, track_id=i,
                                          started=ts - timedelta(seconds=2), ended=ts, duration_s=2.0,
                                          faces_seen=12, decision="unknown"))
    return events


@dataclass
class Gate:
    """A TCP forwarder in front of a broker port that the test can shut. It lets a fault test make
    the recording subscriber resubscribe to a restarted broker before the publisher gets back in
    (with persistence off a restarted broker has no memory of subscriptions, so whatever is
    published before the subscriber is back would be lost to it, not to the publisher)."""

    upstream_port: int
    port: int = field(default_factory=free_port)
    is_open: threading.Event = field(default_factory=threading.Event)
    accepted: int = 0
    refused: int = 0

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.is_open.is_set():
                self.refused += 1
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=1)
            except OSError:
                self.refused += 1
                conn.close()
                continue
            self.accepted += 1
            upstream.settimeout(None)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(2)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
