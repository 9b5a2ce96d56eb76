"""The MQTT publisher against real Mosquitto: the shared broker on 127.0.0.1:1883 for the normal
flow, private brokers for authentication and for a broker that is not there yet."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import jsonschema
import paho.mqtt.client as paho
import pytest
from _mqtt_helpers import (
    SHARED_PORT,
    Collector,
    Gate,
    PrivateBroker,
    _pump,
    clear_retained,
    free_port,
    make_events,
    unique_station,
)
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeface.config import MqttConfig
from edgeface.errors import ConfigError
from edgeface.events import (
    ClusterMergedEvent,
    ClusterNamedEvent,
    PersonForgottenEvent,
    Stats,
    event_json_schema,
)
from edgeface.service.mqtt.client import MqttPublisher, parse_mqtt_url, resolve_password
from edgeface.service.mqtt.commands import CommandRouter, status_handler
from edgeface.storage.outbox import Outbox

TESTS = Path(__file__).parent


@pytest.fixture
def station():  # type: ignore[no-untyped-def]
    name = unique_station()
    yield name
    clear_retained(name)


def config(tmp_path: Path, **overrides: object) -> MqttConfig:
    values: dict[str, object] = {
        "url": f"mqtt://127.0.0.1:{SHARED_PORT}",
        "outbox_path": tmp_path / "outbox.sqlite",
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
    }
    values.update(overrides)
    return MqttConfig(**values)  # type: ignore[arg-type]


def wait(predicate, timeout_s: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


# ------------------------------------------------------------------------------------ normal flow


def test_every_event_arrives_once_in_order_and_matches_the_json_schema(tmp_path: Path, station: str) -> None:
    events = make_events(300, station) + [
        ClusterMergedEvent(station=station, kept_id="unknown-1", merged_id="unknown-2"),
        ClusterNamedEvent(station=station, cluster_id="unknown-1", name="Grace Hopper"),
        PersonForgottenEvent(station=station, name="Grace Hopper"),
    ]
    collector = Collector(SHARED_PORT, f"edgeface/{station}/#")
    try:
        with MqttPublisher(config(tmp_path), station) as publisher:
            for event in events:
                publisher.publish(event)
            assert publisher.wait_until_delivered(20)
            assert collector.wait_for(len(events), 5, suffix="")
        time.sleep(0.1)
        validator = jsonschema.Draft202012Validator(event_json_schema(), format_checker=jsonschema.FormatChecker())
        received = [(t, json.loads(p)) for t, p, _ in collector.messages if "/events/" in t]
        for topic, payload in received:
            validator.validate(payload)
            assert topic == f"edgeface/{station}/events/{payload['type']}"
        assert [p["id"] for _, p in received] == [e.id for e in events]  # exactly once, in order
        assert [p for _, p in received] == [json.loads(e.to_json()) for e in events]
        statuses = [p for t, p, _ in collector.messages if t.endswith("/status")]
        assert statuses[0] == b"online" and statuses[-1] == b"offline"
    finally:
        collector.close()


def test_status_is_retained_and_stats_are_published(tmp_path: Path, station: str) -> None:
    publisher = MqttPublisher(config(tmp_path), station).start()
    try:
        assert wait(lambda: publisher.connected)
        publisher.publish_stats(Stats(station=station, fps=9.0, queue_depth=1, outbox_length=0, model="m",
                                      uptime_s=1.0))
        late = Collector(SHARED_PORT, f"edgeface/{station}/+")  # subscribes after the fact
        assert late.wait_for(2, 5)
        retained = {t.rsplit("/", 1)[1]: (p, r) for t, p, r in late.messages}
        assert retained["status"] == (b"online", True)
        assert json.loads(retained["stats"][0])["fps"] == 9.0 and retained["stats"][1]
        late.close()
    finally:
        publisher.close()
    after = Collector(SHARED_PORT, f"edgeface/{station}/status")
    assert after.wait_for(1, 5)
    assert after.messages[0][1:] == (b"offline", True)
    after.close()


_PUBLISHER_PROCESS = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[4])
    from _mqtt_helpers import make_events
    from edgeface.service.mqtt.client import MqttConfig, MqttPublisher
    station, outbox, url = sys.argv[1:4]
    publisher = MqttPublisher(MqttConfig(url=url, outbox_path=outbox, reconnect_min_s=0.05,
                                         reconnect_max_s=0.5), station).start()
    if "1883" in url:
        while not publisher.connected:
            time.sleep(0.01)
    for event in make_events(100_000, station):
        publisher.publish(event)
        print(event.id, flush=True)  # printed once the event is in the outbox
        time.sleep(0.001)
    """
)


@pytest.mark.parametrize("broker", ["connected", "unreachable"])
@pytest.mark.slow
def test_publisher_killed_with_sigkill_loses_nothing(tmp_path: Path, station: str, broker: str) -> None:
    """A station process is killed -9 mid-stream (while connected, or while its broker is away);
    the restarted station delivers every event it had accepted, in order, and the last will
    announced it offline."""
    outbox = tmp_path / "outbox.sqlite"
    url = f"mqtt://127.0.0.1:{SHARED_PORT if broker == 'connected' else free_port()}"
    script = tmp_path / "station.py"
    script.write_text(_PUBLISHER_PROCESS)
    collector = Collector(SHARED_PORT, f"edgeface/{station}/#")
    proc = subprocess.Popen([sys.executable, str(script), station, str(outbox), url, str(TESTS)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        accepted = [proc.stdout.readline().strip() for _ in range(250)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before_restart = len(collector.unique_events())
    if broker == "connected":
        assert before_restart > 0
        assert collector.wait_for(2, 5, suffix="/status")  # online, then the will
        assert collector.payloads("/status")[-1] == b"offline"
    else:
        assert before_restart == 0
    with Outbox(outbox) as box:  # opening it also proves the kill released the file
        left = len(box)
    with MqttPublisher(config(tmp_path, outbox_path=outbox), station) as publisher:
        assert publisher.wait_until_delivered(20)
    ids = [str(e["id"]) for e in collector.unique_events()]
    print(f"\nkill -9 ({broker}): {len(accepted)} accepted before the kill, {before_restart} delivered "
          f"before it, {left} waiting in the outbox, {len(ids)} delivered in all")
    assert ids[: len(accepted)] == accepted  # every accepted event, in order, nothing before it
    assert ids == sorted(ids)  # anything after: later events the killed process had also stored
    collector.close()


# --------------------------------------------------------------------------------------- commands


def make_router() -> CommandRouter:
    router = CommandRouter()
    router.register("status", status_handler(lambda: {"state": "running"}))
    return router


def test_command_reply_uses_mqtt5_response_topic_and_correlation(tmp_path: Path, station: str) -> None:
    response_topic = f"test/{uuid.uuid4().hex}/reply"
    collector = Collector(SHARED_PORT, response_topic)
    got: list[paho.MQTTMessage] = []
    collector.client.on_message = lambda c, u, m: got.append(m)
    with MqttPublisher(config(tmp_path, response_topic_prefix="test/"), station, router=make_router()) as publisher:
        assert wait(lambda: publisher.connected)
        time.sleep(0.1)  # the station's SUBACK
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = response_topic
        properties.CorrelationData = b"req-42"
        collector.client.publish(f"edgeface/{station}/cmd/status", b"{}", qos=1, properties=properties)
        assert wait(lambda: len(got) == 1)
    reply = json.loads(got[0].payload)
    assert reply["ok"] is True and reply["result"] == {"state": "running"}
    assert got[0].properties.CorrelationData == b"req-42"
    collector.close()


def test_commands_over_mqtt311_and_malformed_ones_are_all_answered(tmp_path: Path, station: str) -> None:
    """A 3.1.1 station answers on cmd/<verb>/reply; 300 malformed commands each get an error reply
    and events keep flowing."""
    collector = Collector(SHARED_PORT, f"edgeface/{station}/#", protocol=MQTTProtocolVersion.MQTTv311)
    malformed = [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"request_id": 5}', b'{"x": 1}', b"1e999999"]
    with MqttPublisher(config(tmp_path, protocol="3.1.1"), station, router=make_router()) as publisher:
        assert wait(lambda: publisher.connected) and publisher.status().protocol == "3.1.1"
        time.sleep(0.1)
        collector.client.publish(f"edgeface/{station}/cmd/status", b'{"request_id": "r1"}', qos=1)
        assert collector.wait_for(1, 5, suffix="cmd/status/reply")
        reply = json.loads(collector.payloads("cmd/status/reply")[0])
        assert reply == {"ok": True, "message": "ok", "request_id": "r1", "verb": "status",
                         "result": {"state": "running"}}
        for i in range(300):
            verb = "status" if i % 3 else "nonsense"
            payload = malformed[i % len(malformed)] if verb == "status" else b"{}"
            if verb == "status" and payload == b"":
                payload = b"{{"
            collector.client.publish(f"edgeface/{station}/cmd/{verb}", payload, qos=1)
        assert collector.wait_for(301, 20, suffix="/reply")
        event = make_events(1, station)[0]
        publisher.publish(event)
        assert publisher.wait_until_delivered(5)
    time.sleep(0.1)
    replies = [json.loads(p) for t, p, _ in collector.messages if t.endswith("/reply")][1:]
    assert len(replies) == 300
    assert all(r["ok"] is False and r["message"] for r in replies)
    assert any("unknown command" in r["message"] for r in replies)
    assert event.id in [e["id"] for e in collector.unique_events()]
    collector.close()


# --------------------------------------------------------------------------- connection and secrets


def test_events_wait_for_a_broker_that_is_not_there_yet(tmp_path: Path) -> None:
    station = unique_station()
    unreachable = MqttPublisher(config(tmp_path, url=f"mqtt://127.0.0.1:{free_port()}",
                                       outbox_path=tmp_path / "u.sqlite"), station).start()
    assert wait(lambda: "cannot reach" in (unreachable.status().last_error or ""))
    unreachable.close(flush_timeout_s=0)

    broker = PrivateBroker(tmp_path)  # not started yet; the gate refuses until the subscriber is in
    gate = Gate(broker.port)
    events = make_events(50, station)
    publisher = MqttPublisher(config(tmp_path, url=f"mqtt://127.0.0.1:{gate.port}"), station).start()
    try:
        started = time.monotonic()
        for event in events:
            publisher.publish(event)
        assert time.monotonic() - started < 2, "publish must not wait for the network"
        assert wait(lambda: publisher.status().last_error is not None)
        status = publisher.status()
        assert not status.connected and status.outbox_length == 50
        broker.start()
        collector = Collector(broker.port, f"edgeface/{station}/events/#")
        gate.is_open.set()
        assert publisher.wait_until_delivered(10)
        assert collector.wait_for(50, 5)
        assert [e["id"] for e in collector.unique_events()] == [e.id for e in events]
        collector.close()
    finally:
        publisher.close(flush_timeout_s=0)
        gate.close()
        broker.close()


def test_username_password_from_env_and_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "station", secret], check=True,
                   capture_output=True)
    broker = PrivateBroker(tmp_path, port=free_port())
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
        "persistence false\nuser root\n"
    )
    broker.start()
    station = unique_station()
    caplog.set_level(logging.DEBUG)
    try:
        url = f"mqtt://station@127.0.0.1:{broker.port}"
        good = MqttPublisher(config(tmp_path, url=url), station, environ={"EDGEFACE_MQTT_PASSWORD": secret}).start()
        assert wait(lambda: good.connected)
        good.close()
        (tmp_path / "wrong").write_text("not-the-password\n")
        bad = MqttPublisher(config(tmp_path, url=url, password_file=tmp_path / "wrong",
                                   outbox_path=tmp_path / "bad.sqlite"), station, environ={}).start()
        assert wait(lambda: bad.status().last_error is not None)
        assert not bad.connected
        assert "refused" in (bad.status().last_error or "") and "username and password" in (bad.status().last_error or "")
        bad.close(flush_timeout_s=0)
    finally:
        broker.close()
    assert secret not in caplog.text and "not-the-password" not in caplog.text
    assert "refused the connection" in caplog.text


def test_url_and_secret_errors_are_one_line(tmp_path: Path) -> None:
    assert parse_mqtt_url("mqtt://broker.local").port == 1883
    assert parse_mqtt_url("mqtts://broker.local").port == 8883
    assert parse_mqtt_url("mqtts://broker.local").tls
    address = parse_mqtt_url("mqtt://user@[::1]:1884/")
    assert (address.host, address.port, address.username) == ("::1", 1884, "user")
    assert str(address) == "mqtt://::1:1884"
    for bad, fragment in [
        ("http://x", "must start with mqtt://"),
        ("broker:1883", "must start with mqtt://"),
        ("mqtt://user:pw@host", "must not contain a password"),
        ("mqtt://host:99999", "invalid"),
        ("mqtt://host/topic", "no path"),
        ("mqtt://:1883", "no host"),
    ]:
        with pytest.raises(ConfigError, match=fragment) as error:
            parse_mqtt_url(bad)
        assert "\n" not in str(error.value)
    base = MqttConfig()
    assert resolve_password(base, {}) is None
    assert resolve_password(base, {"EDGEFACE_MQTT_PASSWORD": "env"}) == "env"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-systemd\n")
    assert resolve_password(base, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-systemd"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_password(MqttConfig(password_file=tmp_path / "missing"), {})
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        resolve_password(MqttConfig(password_file=tmp_path / "empty"), {})
    with pytest.raises(ConfigError, match="no username"):
        MqttPublisher(config(tmp_path), "s", environ={"EDGEFACE_MQTT_PASSWORD": "x"})
    with pytest.raises(ConfigError, match="ca_file"):
        MqttPublisher(config(tmp_path, ca_file=tmp_path / "nope.pem"), "s", environ={})


def test_publish_after_close_is_a_clear_error(tmp_path: Path, station: str) -> None:
    publisher = MqttPublisher(config(tmp_path), station).start()
    publisher.close()
    with pytest.raises(Exception, match="closed"):
        publisher.publish(make_events(1, station)[0])


class OldBrokerFront:
    """Makes the real Mosquitto behind it look like a broker that only speaks MQTT 3.1.1: a v5
    CONNECT gets the 3.1.1 answer "unacceptable protocol version" (CONNACK code 1); anything else
    is forwarded untouched."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refused_v5 = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            head = b""
            while len(head) < 12:  # fixed header + length + "\x00\x04MQTT" + level
                chunk = conn.recv(12 - len(head))
                if not chunk:
                    break
                head += chunk
            length_bytes = 1 + next(i for i, b in enumerate(head[1:5]) if b < 0x80)
            level = head[1 + length_bytes + 6] if len(head) > 1 + length_bytes + 6 else 0
            if level == 5:
                self.refused_v5 += 1
                conn.sendall(b"\x20\x02\x00\x01")
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            upstream.sendall(head)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.server.close()


def test_auto_protocol_falls_back_to_mqtt311(tmp_path: Path, station: str) -> None:
    front = OldBrokerFront(SHARED_PORT)
    collector = Collector(SHARED_PORT, f"edgeface/{station}/events/#")
    try:
        with MqttPublisher(config(tmp_path, url=f"mqtt://127.0.0.1:{front.port}"), station) as publisher:
            assert wait(lambda: publisher.connected, 10)
            assert publisher.status().protocol == "3.1.1" and front.refused_v5 >= 1
            events = make_events(20, station)
            for event in events:
                publisher.publish(event)
            assert publisher.wait_until_delivered(5)
        assert collector.wait_for(20, 5)
        assert [e["id"] for e in collector.unique_events()] == [e.id for e in events]
    finally:
        collector.close()
        front.close()


def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=edgeface test CA", "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr")
    (tmp_path / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    broker = PrivateBroker(tmp_path)
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"
        f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}\n"
    )
    broker.start()
    station = unique_station()
    try:
        url = f"mqtts://localhost:{broker.port}"
        with MqttPublisher(config(tmp_path, url=url, ca_file=tmp_path / "ca.pem"), station) as publisher:
            assert wait(lambda: publisher.connected, 10)
            publisher.publish(make_events(1, station)[0])
            assert publisher.wait_until_delivered(5)
        # without the CA the broker's certificate is not trusted: never connected, clear error
        untrusted = MqttPublisher(config(tmp_path, url=url, outbox_path=tmp_path / "u.sqlite"), station).start()
        assert wait(lambda: untrusted.status().last_error is not None, 10)
        assert "TLS handshake failed" in (untrusted.status().last_error or "") and not untrusted.connected
        untrusted.close(flush_timeout_s=0)
    finally:
        broker.close()


def test_replies_never_go_to_a_foreign_response_topic(tmp_path: Path, station: str) -> None:
    """Issue 15: an unsigned command naming the response topic of a Home Assistant config got its
    refusal published there, under the station's identity. Now the reply goes to the station's own
    reply topic; response topics are honoured only below it or under mqtt.response_topic_prefix."""
    evil = f"homeassistant/switch/evil-{uuid.uuid4().hex[:8]}/config"
    own_below = f"edgeface/{station}/cmd/forget/reply/client-7"
    collector = Collector(SHARED_PORT, f"edgeface/{station}/#")
    spy = Collector(SHARED_PORT, evil)
    router = CommandRouter(secret=b"0123456789abcdef0123456789abcdef")
    router.register("forget", lambda _: None)
    with MqttPublisher(config(tmp_path), station, router=router) as publisher:
        assert wait(lambda: publisher.connected)
        time.sleep(0.2)
        for topic in (evil, own_below, "edgeface/+/cmd/forget/reply", "$SYS/x"):
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = topic
            collector.client.publish(f"edgeface/{station}/cmd/forget", b'{"name": "alex_lacamoire"}', qos=1,
                                     properties=properties)
        assert collector.wait_for(3, 10, suffix="cmd/forget/reply")
        assert collector.wait_for(1, 10, suffix="cmd/forget/reply/client-7")
        time.sleep(0.5)
    assert spy.messages == []
    refusals = [json.loads(p) for p in collector.payloads("cmd/forget/reply")]
    assert len(refusals) == 3 and all(not r["ok"] and "signed" in r["message"] for r in refusals)
    collector.close()
    spy.close()


def test_unsigned_forget_over_the_broker_is_refused_by_default(tmp_path: Path, station: str) -> None:
    """Issue 15: `mosquitto_pub -t edgeface/<station>/cmd/forget -m '{"name": "alex_lacamoire"}'` gave
    ok: true. A station without a command secret now refuses it; status stays open."""
    forgotten: list[object] = []
    router = CommandRouter()  # no secret: what `edgeface run` builds by default
    router.register("forget", forgotten.append)
    router.register("status", status_handler(lambda: {"state": "running"}))
    collector = Collector(SHARED_PORT, f"edgeface/{station}/cmd/+/reply")
    with MqttPublisher(config(tmp_path), station, router=router) as publisher:
        assert wait(lambda: publisher.connected)
        time.sleep(0.2)
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(SHARED_PORT), "-q", "1",
                        "-t", f"edgeface/{station}/cmd/forget", "-m", '{"name": "alex_lacamoire"}'], check=True)
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(SHARED_PORT), "-q", "1",
                        "-t", f"edgeface/{station}/cmd/status", "-m", "{}"], check=True)
        assert collector.wait_for(2, 10, suffix="/reply")
    replies = {json.loads(p)["verb"]: json.loads(p) for t, p, _ in collector.messages}
    assert replies["forget"]["ok"] is False and forgotten == []
    assert replies["forget"]["message"].startswith("this station has no command secret, so it refuses forget")
    assert replies["status"]["ok"] is True
    collector.close()


def test_oversized_commands_never_reach_the_station_over_mqtt5(tmp_path: Path, station: str) -> None:
    """Issue 15: 250 MB publishes to cmd/enroll were read into memory before being refused. The MQTT 5
    CONNECT now carries a Maximum Packet Size, so the broker drops them: no reply, no copy in memory,
    while a normal command still gets its answer."""
    seen: list[int] = []
    router = CommandRouter(max_payload_bytes=100_000)
    router.register("status", lambda c: seen.append(1))
    collector = Collector(SHARED_PORT, f"edgeface/{station}/cmd/+/reply")
    with MqttPublisher(config(tmp_path), station, router=router) as publisher:
        assert wait(lambda: publisher.connected) and publisher.status().protocol == "5"
        assert publisher.max_packet_bytes == 100_000 + 64 * 1024
        time.sleep(0.2)
        big = b'{"pad": "' + b"x" * 2_000_000 + b'"}'
        collector.client.publish(f"edgeface/{station}/cmd/status", big, qos=1).wait_for_publish(5)
        collector.client.publish(f"edgeface/{station}/cmd/status", b'{"request_id": "small"}', qos=1)
        assert collector.wait_for(1, 10, suffix="/reply")
        time.sleep(0.5)
    replies = [json.loads(p) for t, p, _ in collector.messages]
    assert [r["request_id"] for r in replies] == ["small"] and seen == [1]
    collector.close()


def test_oversized_commands_over_mqtt311_are_refused_without_queueing(tmp_path: Path, station: str) -> None:
    """MQTT 3.1.1 has no Maximum Packet Size: a message larger than the limit is answered at once
    (payload too large) without being queued for the command thread."""
    router = CommandRouter(max_payload_bytes=100_000, allow_unsigned=True)
    router.register("status", lambda c: None)
    collector = Collector(SHARED_PORT, f"edgeface/{station}/cmd/+/reply", protocol=MQTTProtocolVersion.MQTTv311)
    with MqttPublisher(config(tmp_path, protocol="3.1.1"), station, router=router) as publisher:
        assert wait(lambda: publisher.connected)
        time.sleep(0.2)
        collector.client.publish(f"edgeface/{station}/cmd/status", b"x" * 300_000, qos=1)
        assert collector.wait_for(1, 10, suffix="/reply")
    reply = json.loads(collector.payloads("/reply")[0])
    assert not reply["ok"] and reply["message"].startswith("payload too large (300000 bytes, limit 100000)")
    collector.close()


def test_mqtt311_fallback_the_broker_limit_keeps_big_messages_away(tmp_path: Path, station: str) -> None:
    """The documented fallback for 3.1.1 (no Maximum Packet Size there): Mosquitto's max_packet_size.
    The broker refuses the oversized publish; the station receives nothing and still answers."""
    broker = PrivateBroker(tmp_path, extra_config="max_packet_size 200000\n")
    broker.start()
    received: list[int] = []
    router = CommandRouter()
    router.register("status", lambda c: received.append(1))
    try:
        collector = Collector(broker.port, f"edgeface/{station}/cmd/+/reply", protocol=MQTTProtocolVersion.MQTTv311)
        settings = config(tmp_path, url=f"mqtt://127.0.0.1:{broker.port}", protocol="3.1.1")
        with MqttPublisher(settings, station, router=router) as publisher:
            assert wait(lambda: publisher.connected)
            time.sleep(0.2)
            attacker = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
            attacker.connect("127.0.0.1", broker.port)
            attacker.loop_start()
            attacker.publish(f"edgeface/{station}/cmd/status", b"x" * 1_000_000, qos=1)
            time.sleep(1.0)
            attacker.loop_stop()
            collector.client.publish(f"edgeface/{station}/cmd/status", b'{"request_id": "ok"}', qos=1)
            assert collector.wait_for(1, 10, suffix="/reply")
            time.sleep(0.3)
        assert [json.loads(p)["request_id"] for p in collector.payloads("/reply")] == ["ok"] and received == [1]
        collector.close()
    finally:
        broker.close()
