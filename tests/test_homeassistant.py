"""Home Assistant discovery: pure payload builders and presence logic, then the station against the
shared Mosquitto (a fresh subscriber to homeassistant/# sees the retained configs appear and
disappear). Real gallery (SQLite), real MqttPublisher, real paho subscribers; embeddings are random
unit vectors, so no model is needed."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from _mqtt_helpers import SHARED_PORT, Collector, clear_retained, wait_port

from edgeface.commands import CommandRouter
from edgeface.config import Config, MqttConfig
from edgeface.errors import ConfigError
from edgeface.events import RecognizedEvent, TrackEndedEvent, UnknownEvent
from edgeface.gallery import Gallery
from edgeface.homeassistant import (
    HaTopics,
    PresenceTracker,
    encode,
    last_person_config,
    person_config,
    person_key,
    station_configs,
    unknown_visitor_config,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


# -- pure builders -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "start"), [
    ("Ada Lovelace", "ada_lovelace_"), ("Zoë", "zoe_"), ("李雷", "person_"), ("O'Brien-Smith Jr.", "o_brien_smith_jr_"),
    ("x" * 64, "x" * 32 + "_"),
])
def test_person_key_is_an_ascii_object_id(name: str, start: str) -> None:
    key = person_key(name)
    assert key.startswith(start) and len(key) == len(start) + 8
    assert key.isascii() and all(c.isalnum() or c == "_" for c in key)
    assert person_key(name) == key


def test_person_keys_of_different_names_differ() -> None:
    names = ["Ada", "ada", "Adá", "Ada ", "李雷", "李", "Zoe", "Zoë"]
    assert len({person_key(n) for n in names}) == len(names)


def test_discovery_payloads() -> None:
    topics = HaTopics("hall", "edgeface/hall/")
    configs = station_configs(topics)
    assert set(configs) == {
        "homeassistant/sensor/edgeface_hall/last_person/config",
        "homeassistant/binary_sensor/edgeface_hall/unknown_visitor/config",
        "homeassistant/sensor/edgeface_hall/fps/config",
        "homeassistant/sensor/edgeface_hall/outbox_length/config",
    }
    person = person_config(topics, "Ada Lovelace")
    every = [*configs.values(), person]
    assert len({c["unique_id"] for c in every}) == len(every)
    for config in every:
        assert config["device"]["identifiers"] == ["edgeface_hall"]
        assert config["availability"][0]["topic"] == "edgeface/hall/status"
        assert config["state_topic"].startswith("edgeface/hall/")
        assert json.loads(encode(config)) == config
    assert topics.person_config("Ada Lovelace") == \
        f"homeassistant/binary_sensor/edgeface_hall/present_{person_key('Ada Lovelace')}/config"
    assert person["name"] == "Ada Lovelace present" and person["state_topic"] == topics.presence("Ada Lovelace")
    assert (person["payload_on"], person["payload_off"], person["device_class"]) == ("ON", "OFF", "presence")
    assert last_person_config(topics)["state_topic"] == "edgeface/hall/events/recognized"
    assert unknown_visitor_config(topics)["json_attributes_topic"] == "edgeface/hall/events/unknown"
    assert HaTopics("hall", "x/", "ha/discovery").person_config("A").startswith("ha/discovery/binary_sensor/")


@pytest.mark.parametrize("prefix", ["", "home/+", "#", "a//b", "/lead"])
def test_bad_discovery_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="discovery prefix"):
        HaTopics("hall", "edgeface/hall/", prefix)


def _recognized(track: int, name: str) -> RecognizedEvent:
    return RecognizedEvent(station="s", camera="c", track_id=track, name=name, confidence=0.9, distance=0.3, faces_used=3)


def _ended(track: int) -> TrackEndedEvent:
    return TrackEndedEvent(station="s", camera="c", track_id=track, started=T0, ended=T0, duration_s=0, faces_seen=3)


def test_presence_is_on_while_a_track_is_open_and_off_a_timeout_after_the_last_one() -> None:
    presence = PresenceTracker(timeout_s=10)
    assert presence.on_event(_recognized(1, "Ada"), now=0) == [("Ada", True)]
    assert presence.on_event(_recognized(2, "Ada"), now=1) == []  # already on
    assert presence.on_event(_ended(1), now=2) == []
    assert presence.tick(now=100) == []  # track 2 is still open
    assert presence.on_event(_ended(2), now=100) == []
    assert presence.tick(now=109.9) == []
    assert presence.tick(now=110) == [("Ada", False)]
    assert presence.tick(now=200) == []
    assert presence.on_event(_recognized(3, "Ada"), now=300) == [("Ada", True)]


def test_presence_follows_a_track_that_switches_people_and_unknowns() -> None:
    presence = PresenceTracker(timeout_s=5)
    presence.on_event(_recognized(1, "Ada"), now=0)
    assert presence.on_event(_recognized(1, "Bob"), now=1) == [("Bob", True)]
    assert presence.tick(now=6) == [("Ada", False)]  # track 1 is Bob's now
    unknown = UnknownEvent(station="s", camera="c", track_id=7, faces_used=6)
    assert presence.on_event(unknown, now=7) == [(None, True)]
    presence.on_event(_ended(7), now=8)
    presence.on_event(_ended(1), now=8)
    assert sorted(presence.tick(now=13), key=str) == [("Bob", False), (None, False)]
    presence.on_event(_recognized(9, "Cy"), now=20)
    presence.forget("Cy")
    assert presence.on_keys() == []


# -- the station against the shared broker -----------------------------------------------------


def _broker_up() -> bool:
    try:
        wait_port(SHARED_PORT, 1.0)
        return True
    except TimeoutError:
        return False


needs_broker = pytest.mark.skipif(not _broker_up(), reason="no Mosquitto on 127.0.0.1:1883")


class Clock:
    """A clock the test moves forward (the station's presence timeouts read it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return vector / np.linalg.norm(vector)


def retained(topic_filter: str, settle_s: float = 0.5) -> dict[str, bytes]:
    """What a new subscriber gets: the retained messages under the filter (empty payloads are none)."""
    collector = Collector(SHARED_PORT, topic_filter)
    try:
        time.sleep(settle_s)
        with collector.lock:
            return {t: p for t, p, r in collector.messages if r and p}
    finally:
        collector.close()


def wait_until(condition, timeout_s: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def _station(tmp_path: Path, station_id: str, gallery: Gallery, clock: Clock):  # type: ignore[no-untyped-def]
    from edgeface.mqtt import MqttPublisher
    from edgeface.station import Station

    mqtt = MqttConfig(url=f"mqtt://127.0.0.1:{SHARED_PORT}", outbox_path=tmp_path / "outbox.sqlite",
                      homeassistant=True, present_timeout_s=5, stats_interval_s=1, reconnect_min_s=0.1)
    config = Config(station_id=station_id, mqtt=mqtt)
    station = Station(config, gallery=gallery, clock=clock)
    router = station.register(CommandRouter(allow_unsigned=True))
    publisher = MqttPublisher(mqtt, station_id, router=router)
    station.attach(publisher)
    publisher.start()
    station.start()
    return station, router


@needs_broker
def test_station_publishes_configs_presence_and_clears_a_forgotten_person(tmp_path: Path) -> None:
    station_id = f"ha-{uuid.uuid4().hex[:8]}"
    node = f"edgeface_{station_id}"
    configs_filter = f"homeassistant/+/{node}/+/config"
    gallery = Gallery(tmp_path / "gallery.db")
    for i, name in enumerate(["Ada Lovelace", "Bob", "Zoë"]):
        gallery.add_templates(name, _unit(i))
    clock = Clock()
    topics = HaTopics(station_id, f"edgeface/{station_id}/")
    seen = Collector(SHARED_PORT, f"edgeface/{station_id}/#")
    station, router = _station(tmp_path, station_id, gallery, clock)
    everything: set[str] = set()
    try:
        assert station.publisher.wait_until_delivered(10)
        configs = retained(configs_filter)
        everything |= set(configs)
        expected = set(station_configs(topics)) | {topics.person_config(n) for n in ["Ada Lovelace", "Bob", "Zoë"]}
        assert set(configs) == expected
        zoe = json.loads(configs[topics.person_config("Zoë")])
        assert zoe["name"] == "Zoë present" and zoe["state_topic"] == topics.presence("Zoë")
        states = retained(f"edgeface/{station_id}/presence/+")
        assert states == {topics.presence(n): b"OFF" for n in ["Ada Lovelace", "Bob", "Zoë"]} | {topics.unknown_presence: b"OFF"}

        # Recognised: ON at once; the track ends; OFF only once the timeout has passed.
        station.sink.publish(_recognized(1, "Ada Lovelace"))
        presence = topics.presence("Ada Lovelace")
        assert wait_until(lambda: (presence, b"ON") in [(t, p) for t, p in seen_messages(seen)])
        assert json.loads(retained(topics.presence_attributes("Ada Lovelace"))[topics.presence_attributes("Ada Lovelace")])["track_id"] == 1
        station.sink.publish(_ended(1))
        time.sleep(1.5)  # several ticks, clock not advanced: still on
        assert [p for t, p in seen_messages(seen) if t == presence][-1] == b"ON"
        clock.advance(6)
        assert wait_until(lambda: [p for t, p in seen_messages(seen) if t == presence][-1] == b"OFF")
        assert station.stats_published >= 1 and seen.payloads("/stats")

        # Forget Bob through the command: his config and state topics are cleared (empty retained).
        reply = router.handle("forget", b'{"name": "Bob", "request_id": "f1"}')
        assert reply.ok and reply.result["templates"] == 1, reply
        assert station.publisher.wait_until_delivered(10)
        configs = retained(configs_filter)
        assert set(configs) == expected - {topics.person_config("Bob")}
        assert topics.presence("Bob") not in retained(f"edgeface/{station_id}/presence/+")
        assert wait_until(lambda: seen.payloads("/events/person_forgotten"))
        assert json.loads(seen.payloads("/events/person_forgotten")[0])["name"] == "Bob"
        again = router.handle("forget", b'{"name": "Bob"}')
        assert not again.ok and "Bob" in again.message

        # Another process enrolls Grace and removes Zoë: the next sync follows the gallery.
        with Gallery(tmp_path / "gallery.db") as other:
            other.add_templates("Grace", _unit(7))
            other.remove("Zoë")
        assert station.sync_people() == (["Grace"], ["Zoë"])
        assert station.publisher.wait_until_delivered(10)
        configs = retained(configs_filter)
        everything |= set(configs)
        assert topics.person_config("Grace") in configs and topics.person_config("Zoë") not in configs
    finally:
        station.sink.close()
        seen.close()

    # Ada is removed while the station is down: the next start clears her entity too.
    gallery.remove("Ada Lovelace")
    station, router = _station(tmp_path, station_id, gallery, clock)
    try:
        assert station.publisher.wait_until_delivered(10)
        configs = retained(configs_filter)
        assert topics.person_config("Ada Lovelace") not in configs and topics.person_config("Grace") in configs
    finally:
        station.sink.close()
        gallery.close()
        leftovers = set(retained(f"edgeface/{station_id}/#")) | set(retained(configs_filter))
        clear_retained(station_id, topics=sorted(leftovers | everything))
    assert not retained(configs_filter, 0.3) and not retained(f"edgeface/{station_id}/#", 0.3)


def seen_messages(collector: Collector) -> list[tuple[str, bytes]]:
    with collector.lock:
        return [(t, p) for t, p, _ in collector.messages]


@needs_broker
def test_homeassistant_off_publishes_no_discovery(tmp_path: Path) -> None:
    from edgeface.mqtt import MqttPublisher
    from edgeface.station import Station

    station_id = f"ha-{uuid.uuid4().hex[:8]}"
    gallery = Gallery(tmp_path / "gallery.db")
    gallery.add_templates("Ada", _unit(1))
    mqtt = MqttConfig(url=f"mqtt://127.0.0.1:{SHARED_PORT}", outbox_path=tmp_path / "outbox.sqlite")
    station = Station(Config(station_id=station_id, mqtt=mqtt), gallery=gallery)
    publisher = MqttPublisher(mqtt, station_id, router=station.register(CommandRouter(allow_unsigned=True)))
    station.attach(publisher)
    publisher.start()
    station.start()
    try:
        station.sink.publish(_recognized(1, "Ada"))
        assert publisher.wait_until_delivered(10)
        assert not retained(f"homeassistant/+/edgeface_{station_id}/+/config", 0.3)
        assert not retained(f"edgeface/{station_id}/presence/#", 0.1)
    finally:
        station.sink.close()
        gallery.close()
        clear_retained(station_id)
