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
from _mqtt_helpers import SHARED_PORT, Collector, clear_retained, shared_broker_up

from edgeface.config import Config, MqttConfig
from edgeface.errors import ConfigError
from edgeface.events import RecognizedEvent, TrackEndedEvent, UnknownEvent
from edgeface.service.homeassistant import (
    HaTopics,
    PresenceTracker,
    encode,
    last_person_config,
    person_config,
    person_key,
    station_configs,
    unknown_visitor_config,
)
from edgeface.service.mqtt.commands import CommandRouter
from edgeface.service.station import REMOVAL_DELAY_S
from edgeface.storage.gallery import Gallery

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
        "homeassistant/image/edgeface_hall/last_unknown_face/config",
        "homeassistant/sensor/edgeface_hall/fps/config",
        "homeassistant/sensor/edgeface_hall/outbox_length/config",
    }
    person = person_config(topics, "Ada Lovelace")
    every = [*configs.values(), person]
    assert len({c["unique_id"] for c in every}) == len(every)
    for config in every:
        assert config["device"]["identifiers"] == ["edgeface_hall"]
        assert config["availability"][0]["topic"] == "edgeface/hall/status"
        assert config.get("state_topic", config.get("image_topic", "")).startswith("edgeface/hall/")
        assert json.loads(encode(config)) == config
    assert topics.person_config("Ada Lovelace") == \
        f"homeassistant/binary_sensor/edgeface_hall/present_{person_key('Ada Lovelace')}/config"
    assert person["name"] == "Ada Lovelace present" and person["state_topic"] == topics.presence("Ada Lovelace")
    assert (person["payload_on"], person["payload_off"], person["device_class"]) == ("ON", "OFF", "presence")
    assert last_person_config(topics)["state_topic"] == "edgeface/hall/last_person"  # retained, unlike events
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


needs_broker = pytest.mark.skipif(not shared_broker_up(), reason="no Mosquitto on 127.0.0.1:1883")


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
    from edgeface.bus import EventBus
    from edgeface.service.app import start_mqtt_station

    mqtt = MqttConfig(url=f"mqtt://127.0.0.1:{SHARED_PORT}", outbox_path=tmp_path / "outbox.sqlite",
                      homeassistant=True, present_timeout_s=5, stats_interval_s=1, reconnect_min_s=0.1)
    config = Config(station_id=station_id, mqtt=mqtt)
    router = CommandRouter(allow_unsigned=True)
    station, _ = start_mqtt_station(config, EventBus(), gallery, router=router, clock=clock)
    return station, router


@needs_broker
@pytest.mark.slow
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
        station.bus.publish(_recognized(1, "Ada Lovelace"))
        presence = topics.presence("Ada Lovelace")
        attributes = topics.presence_attributes("Ada Lovelace")
        assert wait_until(lambda: (presence, b"ON") in [(t, p) for t, p in seen_messages(seen)])
        # the attributes went out before the ON (test_message_order_...); still, wait until the broker has them
        # rather than reading them the moment the ON is seen
        assert wait_until(lambda: attributes in retained(attributes, 0.2))
        assert json.loads(retained(attributes)[attributes])["track_id"] == 1
        station.bus.publish(_ended(1))
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
        clock.advance(REMOVAL_DELAY_S)  # his state topic is emptied once Home Assistant has dropped the entity
        assert wait_until(lambda: topics.presence("Bob") not in retained(f"edgeface/{station_id}/presence/+", 0.2))
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
        station.bus.close()
        seen.close()

    # Ada is removed while the station is down: the next start clears her entity too.
    gallery.remove("Ada Lovelace")
    station, router = _station(tmp_path, station_id, gallery, clock)
    try:
        assert station.publisher.wait_until_delivered(10)
        configs = retained(configs_filter)
        assert topics.person_config("Ada Lovelace") not in configs and topics.person_config("Grace") in configs
    finally:
        station.bus.close()
        gallery.close()
        leftovers = set(retained(f"edgeface/{station_id}/#")) | set(retained(configs_filter))
        clear_retained(station_id, topics=sorted(leftovers | everything))
    assert not retained(configs_filter, 0.3) and not retained(f"edgeface/{station_id}/#", 0.3)


def seen_messages(collector: Collector) -> list[tuple[str, bytes]]:
    with collector.lock:
        return [(t, p) for t, p, _ in collector.messages]


@needs_broker
def test_homeassistant_off_publishes_no_discovery(tmp_path: Path) -> None:
    from edgeface.bus import EventBus
    from edgeface.service.app import start_mqtt_station

    station_id = f"ha-{uuid.uuid4().hex[:8]}"
    gallery = Gallery(tmp_path / "gallery.db")
    gallery.add_templates("Ada", _unit(1))
    mqtt = MqttConfig(url=f"mqtt://127.0.0.1:{SHARED_PORT}", outbox_path=tmp_path / "outbox.sqlite")
    station, publisher = start_mqtt_station(Config(station_id=station_id, mqtt=mqtt), EventBus(), gallery,
                                            router=CommandRouter(allow_unsigned=True))
    try:
        station.bus.publish(_recognized(1, "Ada"))
        assert publisher.wait_until_delivered(10)
        assert not retained(f"homeassistant/+/edgeface_{station_id}/+/config", 0.3)
        assert not retained(f"edgeface/{station_id}/presence/#", 0.1)
    finally:
        station.bus.close()
        gallery.close()
        clear_retained(station_id)


class OrderedSubscriber:
    """One real subscriber on several filters: the messages in the order the broker delivered them
    (what Home Assistant's MQTT client sees), live ones only (retained replays are marked)."""

    def __init__(self, *filters: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"order-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe([(f, 1) for f in filters])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", SHARED_PORT, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client: object, userdata: object, message) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def live(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(t, p) for t, p, r in self.messages if not r]

    def mark(self) -> int:
        with self.lock:
            return len(self.messages)

    def since(self, mark: int) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(t, p) for t, p, r in self.messages[mark:] if not r]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


_CRASHING_STATION = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_homeassistant import Clock, _recognized, _station
from edgeface.storage.gallery import Gallery
station, _ = _station(Path(sys.argv[1]), sys.argv[2], Gallery(Path(sys.argv[1]) / "gallery.db"), Clock())
station.bus.publish(_recognized(1, "Ada Lovelace"))
assert station.publisher.wait_until_delivered(10)
print("ON", flush=True)
time.sleep(60)
"""


@needs_broker
def test_message_order_on_the_broker_is_the_one_home_assistant_needs(tmp_path: Path) -> None:
    import subprocess
    import sys

    station_id = f"ha-{uuid.uuid4().hex[:8]}"
    node = f"edgeface_{station_id}"
    topics = HaTopics(station_id, f"edgeface/{station_id}/")
    with Gallery(tmp_path / "gallery.db") as gallery:
        gallery.add_templates("Ada Lovelace", _unit(1))
        gallery.add_templates("Lin", _unit(2))
    watch = OrderedSubscriber(f"edgeface/{station_id}/#", f"homeassistant/+/{node}/+/config")
    station = None
    try:
        # 1. A station sees Ada (retained ON) and is killed with SIGKILL: the broker keeps her ON.
        crashing = subprocess.Popen([sys.executable, "-c", _CRASHING_STATION, str(tmp_path), station_id,
                                     str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True)
        assert crashing.stdout is not None and crashing.stdout.readline().strip() == "ON"
        crashing.kill()
        crashing.wait(10)
        assert wait_until(lambda: (topics.availability, b"offline") in watch.live())  # its last will
        assert retained(topics.presence("Ada Lovelace"))[topics.presence("Ada Lovelace")] == b"ON"

        # 2. The restart: Ada's OFF reaches Home Assistant before `online` makes the entities available.
        gallery = Gallery(tmp_path / "gallery.db")
        clock = Clock()
        restart = watch.mark()
        station, _ = _station(tmp_path, station_id, gallery, clock)
        assert wait_until(lambda: (topics.availability, b"online") in watch.since(restart))
        after = watch.since(restart)
        online = after.index((topics.availability, b"online"))
        assert (topics.presence("Ada Lovelace"), b"OFF") in after[:online], after[: online + 1]
        assert not [m for m in after if m == (topics.presence("Ada Lovelace"), b"ON")]

        # 3. Recognised: the attributes (and the retained last person) before the ON.
        mark = watch.mark()
        station.bus.publish(_recognized(5, "Ada Lovelace"))
        assert wait_until(lambda: (topics.presence("Ada Lovelace"), b"ON") in watch.since(mark))
        # (start-up messages of the station may still arrive after the mark on a loaded machine: find the ON)
        messages = watch.since(mark)
        on = messages.index((topics.presence("Ada Lovelace"), b"ON"))
        assert topics.presence_attributes("Ada Lovelace") in [t for t, _ in messages[:on]], messages[: on + 1]
        assert json.loads(retained(topics.last_person)[topics.last_person])["name"] == "Ada Lovelace"

        # 4. Lin renamed: the old entity's config is emptied before the new one is announced.
        gallery.rename("Lin", "Lin-Manuel")
        mark = watch.mark()
        assert station.sync_people() == (["Lin-Manuel"], ["Lin"])
        assert station.publisher.wait_until_delivered(10)
        configs = [(t, p) for t, p in watch.since(mark) if t.endswith("/config")]
        assert configs[0] == (topics.person_config("Lin"), b"")
        assert configs[1][0] == topics.person_config("Lin-Manuel") and configs[1][1]
        new = [t for t, _ in watch.since(mark)]
        assert new.index(topics.presence("Lin-Manuel")) < new.index(topics.person_config("Lin-Manuel"))  # OFF first

        # 5. Lin's old state and attributes are emptied only after the removal delay, config first.
        assert (topics.presence("Lin"), b"") not in watch.since(mark)
        clock.advance(REMOVAL_DELAY_S)
        assert wait_until(lambda: {(topics.presence("Lin"), b""), (topics.presence_attributes("Lin"), b"")}
                          <= set(watch.since(mark)))  # both, not only the first of the two to arrive
        cleared = [t for t, p in watch.since(mark) if p == b""]
        assert cleared[0] == topics.person_config("Lin") and set(cleared[1:]) >= {topics.presence("Lin"),
                                                                                  topics.presence_attributes("Lin")}
    finally:
        watch.close()
        if station is not None:
            station.bus.close()
            station.gallery.close()
        leftovers = set(retained(f"edgeface/{station_id}/#")) | set(retained(f"homeassistant/+/{node}/+/config"))
        clear_retained(station_id, topics=sorted(leftovers))
