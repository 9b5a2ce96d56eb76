"""Home Assistant's `image` entity of the last unknown visitor's face, on the shared Mosquitto: the
retained JPEG is the cluster's stored crop, and it is emptied when that face is erased (the cluster
forgotten, the person it was named after forgotten, or the cluster forgotten from a shell while the
station was down). Real gallery and cluster store (SQLite), real publisher, real paho subscribers."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from _mqtt_helpers import SHARED_PORT, clear_retained, shared_broker_up
from test_homeassistant import Clock, _station, _unit, retained, wait_until

from edgeface.events import UnknownEvent
from edgeface.service.homeassistant import HaTopics, unknown_face_config
from edgeface.storage.cluster_store import ClusterStore
from edgeface.storage.gallery import Gallery

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHOTO = DATA / "people" / "lin_manuel_miranda" / "1.png"

needs_broker = pytest.mark.skipif(not shared_broker_up(), reason=f"no MQTT broker on 127.0.0.1:{SHARED_PORT}")


def test_image_config_is_home_assistants_mqtt_image_schema() -> None:
    topics = HaTopics("hall", "edgeface/hall/")
    config = unknown_face_config(topics)
    assert topics.unknown_face_config == "homeassistant/image/edgeface_hall/last_unknown_face/config"
    # image_topic (raw bytes) with its content type; url_topic and content_type may not go together
    assert config["image_topic"] == "edgeface/hall/last_unknown/face" and config["content_type"] == "image/jpeg"
    assert "url_topic" not in config and "image_encoding" not in config
    assert config["unique_id"] == "edgeface_hall_last_unknown_face"


def _face(seed: int) -> np.ndarray:
    """A 150 px face crop, different for each seed: the photo of a real face (lit differently) when the
    data is there, else a pattern."""
    image = cv2.imread(str(PHOTO)) if PHOTO.is_file() else None
    if image is None:
        image = np.random.default_rng(seed).integers(0, 255, (150, 150, 3), dtype=np.uint8)
    return cv2.convertScaleAbs(cv2.resize(image, (150, 150)), alpha=1.0, beta=8.0 * seed)


def _unknown(station_id: str, cluster_id: str, track: int) -> UnknownEvent:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    return UnknownEvent(station=station_id, camera="front", track_id=track, faces_used=3, cluster_id=cluster_id,
                        cluster_status="tentative", visit_count=1, first_seen=now, last_seen=now)


def _station_without_crops(tmp_path: Path, station_id: str, gallery: Gallery, clock: Clock):  # type: ignore[no-untyped-def]
    from edgeface.bus import EventBus
    from edgeface.config import ClusterSettings, Config, MqttConfig
    from edgeface.service.app import start_mqtt_station
    from edgeface.service.mqtt.commands import CommandRouter

    mqtt = MqttConfig(url=f"mqtt://127.0.0.1:{SHARED_PORT}", outbox_path=tmp_path / "outbox.sqlite",
                      homeassistant=True, reconnect_min_s=0.1)
    config = Config(station_id=station_id, mqtt=mqtt, clusters=ClusterSettings(store_face_crops=False))
    station, _ = start_mqtt_station(config, EventBus(), gallery, router=CommandRouter(allow_unsigned=True), clock=clock)
    return station


@needs_broker
@pytest.mark.slow
def test_last_unknown_face_is_published_and_erased(tmp_path: Path) -> None:
    station_id = f"face-{uuid.uuid4().hex[:8]}"
    topics = HaTopics(station_id, f"edgeface/{station_id}/")
    gallery = Gallery(tmp_path / "gallery.db")
    with ClusterStore(tmp_path / "gallery.db") as clusters:  # the camera loop's store would do this
        first = clusters.observe(_unit(1), ts=time.time(), track_key="t1", crop=_face(1)).cluster.id
        second = clusters.observe(-_unit(1), ts=time.time(), track_key="t2", crop=_face(2)).cluster.id
        stored = {first: clusters.crops(first, 1)[0], second: clusters.crops(second, 1)[0]}
    assert first != second and stored[first] != stored[second]
    clock = Clock()
    station, _ = _station(tmp_path, station_id, gallery, clock)
    face = topics.unknown_face
    try:
        assert station.publisher.wait_until_delivered(10)
        config = json.loads(retained(topics.unknown_face_config)[topics.unknown_face_config])
        assert config["image_topic"] == face
        assert face not in retained(face, 0.2)

        station.bus.publish(_unknown(station_id, first, 1))
        assert wait_until(lambda: retained(face, 0.2).get(face) == stored[first], 10)
        assert stored[first][:2] == b"\xff\xd8"  # a JPEG, the raw bytes Home Assistant shows

        # A later visitor replaces it; forgetting an unrelated cluster leaves it; forgetting theirs erases it.
        station.bus.publish(_unknown(station_id, second, 2))
        assert wait_until(lambda: retained(face, 0.2).get(face) == stored[second], 10)
        station.forget_cluster(first)
        assert station.publisher.wait_until_delivered(10)
        assert retained(face, 0.2).get(face) == stored[second]
        station.forget_cluster(second)
        assert station.publisher.wait_until_delivered(10)
        assert wait_until(lambda: face not in retained(face, 0.2), 10)
    finally:
        station.bus.close()

    # Named, then the person forgotten: erased. Forgotten from a shell while the station was down: erased at start.
    with ClusterStore(tmp_path / "gallery.db") as clusters:
        third = clusters.observe(_unit(3), ts=time.time(), track_key="t3", crop=_face(3)).cluster.id
        fourth = clusters.observe(-_unit(3), ts=time.time(), track_key="t4", crop=_face(4)).cluster.id
        fifth = clusters.observe(_unit(5), ts=time.time(), track_key="t5", crop=_face(5)).cluster.id
    station, router = _station(tmp_path, station_id, gallery, clock)
    try:
        station.bus.publish(_unknown(station_id, third, 3))
        assert wait_until(lambda: face in retained(face, 0.2), 10)
        reply = router.handle("name_cluster", json.dumps({"cluster_id": third, "name": "Visitor"}).encode())
        assert reply.ok, reply
        time.sleep(1.0)  # a few ticks: a named face stays while the person is enrolled
        assert face in retained(face, 0.2)
        assert router.handle("forget", b'{"name": "Visitor"}').ok
        assert station.publisher.wait_until_delivered(10)
        assert wait_until(lambda: face not in retained(face, 0.2), 10)

        station.bus.publish(_unknown(station_id, fifth, 5))  # "not a face / ignore" erases it too
        assert wait_until(lambda: face in retained(face, 0.2), 10)
        station.ignore_cluster(fifth)
        assert station.publisher.wait_until_delivered(10)
        assert wait_until(lambda: face not in retained(face, 0.2), 10)

        station.bus.publish(_unknown(station_id, fourth, 4))
        assert wait_until(lambda: face in retained(face, 0.2), 10)
    finally:
        station.bus.close()
    with ClusterStore(tmp_path / "gallery.db") as clusters:
        clusters.forget(fourth)  # `edgeface clusters forget` while the station is down
        sixth = clusters.observe(_unit(6), ts=time.time(), track_key="t6", crop=_face(6)).cluster.id
    station, _ = _station(tmp_path, station_id, gallery, clock)
    try:
        assert station.publisher.wait_until_delivered(10)
        assert wait_until(lambda: face not in retained(face, 0.2), 10)
        station.bus.publish(_unknown(station_id, sixth, 6))
        assert wait_until(lambda: face in retained(face, 0.2), 10)
    finally:
        station.bus.close()
    station = _station_without_crops(tmp_path, station_id, gallery, clock)  # crops turned off since: no face
    try:
        assert station.publisher.wait_until_delivered(10)
        assert wait_until(lambda: face not in retained(face, 0.2), 10)
    finally:
        station.bus.close()
        gallery.close()
        leftovers = set(retained(f"edgeface/{station_id}/#")) | set(retained(f"homeassistant/+/edgeface_{station_id}/+/config"))
        clear_retained(station_id, topics=sorted(leftovers))
