"""Home Assistant MQTT discovery: topic names and payload builders (pure functions, no I/O).

One Home Assistant *device* per station (``edgeface <station>``) with these entities, each announced
by a retained JSON config on ``<discovery_prefix>/<component>/edgeface_<station>/<object_id>/config``
and made unavailable by the station's ``<prefix>status`` (``online``/``offline``, the last will):

- ``sensor`` **Last recognised person** (``last_person``): state = ``name`` of the latest recognized
  event, attributes = its camera, track, confidence, distance, time; read from ``<prefix>last_person``,
  a retained copy of that event, so Home Assistant shows it again after its own restart;
- ``binary_sensor`` **<NAME> present**, one per enrolled person (``present_<key>``): ``ON``/``OFF``
  on ``<prefix>presence/<key>`` (retained). The station publishes ``ON`` when the person is recognised
  and ``OFF`` once none of their tracks is open and ``present_timeout_s`` has passed since the last
  one ended; attributes (last camera, track, confidence, time) on ``<prefix>presence/<key>/attributes``;
- ``binary_sensor`` **Unknown visitor** (``unknown_visitor``): the same for tracks decided unknown,
  on ``<prefix>presence/unknown_visitor``, attributes from the latest ``<prefix>events/unknown`` event
  (cluster id, visit count, ...);
- ``image`` **Last unknown visitor** (``last_unknown_face``): the best stored face crop of the cluster
  of the latest unknown visitor, a retained JPEG on ``<prefix>last_unknown/face`` (only when face crops
  are stored; emptied when that face is erased: edgeface.service.unknown_face);
- ``sensor`` diagnostics **Frames per second** and **Outbox length** from ``<prefix>stats``.

``<key>`` is :func:`person_key` (an ASCII slug of the name plus 8 hex digits of its hash, so any
Unicode name gets a stable, collision-free object id). Removing an entity = an empty retained
payload on its config topic (:func:`removal`).

Message order (edgeface.service.station), because Home Assistant acts on each message as it arrives:
- the current presence of everyone (``OFF`` after a crash) goes out before ``online`` on every
  connect, so a retained ``ON`` from before a crash never shows as a fresh arrival;
- a person's attributes go out before their ``ON``, so the state never shows the previous visit's;
- removed entities are cleared before new ones are announced (a renamed person keeps a clean entity
  id, not ``..._2``), and a removed entity's state and attributes topics are emptied a few seconds
  after its config, once Home Assistant has dropped the entity (else it logs ``Erroneous JSON``).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from edgeface import __version__
from edgeface.errors import ConfigError

DEFAULT_DISCOVERY_PREFIX = "homeassistant"
PAYLOAD_ON = "ON"
PAYLOAD_OFF = "OFF"
UNKNOWN_VISITOR = "unknown_visitor"

_DISCOVERY_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
_STATION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def person_key(name: str) -> str:
    """A stable object id for a person: ``ada_lovelace_1a2b3c4d`` (ASCII slug, at most 32 characters,
    plus the first 8 hex digits of sha256 of the NFC name). Names differing only in case or accents
    get different keys; a name without ASCII letters (``李雷``) is ``person_<hash>``."""
    normal = unicodedata.normalize("NFC", name)
    ascii_text = unicodedata.normalize("NFKD", normal).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text).strip("_")[:32].strip("_") or "person"
    return f"{slug}_{hashlib.sha256(normal.encode('utf-8')).hexdigest()[:8]}"


@dataclass(frozen=True)
class HaTopics:
    """Every topic the Home Assistant integration of one station uses."""

    station: str
    prefix: str
    """The station's topic prefix (``edgeface/<station>/``)."""
    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX

    def __post_init__(self) -> None:
        if not _STATION_RE.match(self.station):
            raise ConfigError(f"station id {self.station!r} is invalid for Home Assistant discovery")
        if not _DISCOVERY_PREFIX_RE.match(self.discovery_prefix):
            raise ConfigError(f"Home Assistant discovery prefix {self.discovery_prefix!r} is invalid: "
                              "use letters, digits, '_', '-' and '/' between levels")

    @property
    def node_id(self) -> str:
        return f"edgeface_{self.station}"

    def config(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"

    @property
    def availability(self) -> str:
        return f"{self.prefix}status"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats"

    @property
    def recognized(self) -> str:
        return f"{self.prefix}events/recognized"

    @property
    def last_person(self) -> str:
        """Retained copy of the latest recognized event (events themselves are not retained)."""
        return f"{self.prefix}last_person"

    @property
    def unknown(self) -> str:
        return f"{self.prefix}events/unknown"

    def presence(self, name: str) -> str:
        return f"{self.prefix}presence/{person_key(name)}"

    def presence_attributes(self, name: str) -> str:
        return f"{self.prefix}presence/{person_key(name)}/attributes"

    @property
    def unknown_face(self) -> str:
        """Retained JPEG of the last unknown visitor's face (empty: none, or erased)."""
        return f"{self.prefix}last_unknown/face"

    @property
    def unknown_face_config(self) -> str:
        return self.config("image", "last_unknown_face")

    @property
    def unknown_presence(self) -> str:
        return f"{self.prefix}presence/{UNKNOWN_VISITOR}"

    def person_config(self, name: str) -> str:
        return self.config("binary_sensor", f"present_{person_key(name)}")

    @property
    def last_person_config(self) -> str:
        return self.config("sensor", "last_person")

    @property
    def unknown_visitor_config(self) -> str:
        return self.config("binary_sensor", UNKNOWN_VISITOR)

    def stats_config(self, field: str) -> str:
        return self.config("sensor", field)


STATS_SENSORS: dict[str, dict[str, Any]] = {
    "fps": {"name": "Frames per second", "unit_of_measurement": "fps", "state_class": "measurement",
            "icon": "mdi:speedometer"},
    "outbox_length": {"name": "Outbox length", "unit_of_measurement": "messages", "state_class": "measurement",
                      "icon": "mdi:tray-full"},
}
"""Diagnostic sensors read from the stats payload (field name -> entity settings)."""


def _device(topics: HaTopics) -> dict[str, Any]:
    return {
        "identifiers": [topics.node_id],
        "name": f"edgeface {topics.station}",
        "manufacturer": "edgeface",
        "model": "face recognition station",
        "sw_version": __version__,
    }


def _common(topics: HaTopics, object_id: str) -> dict[str, Any]:
    return {
        "unique_id": f"{topics.node_id}_{object_id}",
        "availability": [{"topic": topics.availability, "payload_available": "online",
                          "payload_not_available": "offline"}],
        "device": _device(topics),
        "origin": {"name": "edgeface", "sw_version": __version__},
        "qos": 1,
    }


def last_person_config(topics: HaTopics) -> dict[str, Any]:
    """The ``sensor`` whose state is the name in the latest recognized event."""
    return {
        "name": "Last recognised person",
        **_common(topics, "last_person"),
        "state_topic": topics.last_person,
        "value_template": "{{ value_json.name }}",
        "json_attributes_topic": topics.last_person,
        "json_attributes_template": "{{ {'camera': value_json.camera, 'track_id': value_json.track_id, "
                                    "'confidence': value_json.confidence, 'distance': value_json.distance, "
                                    "'ts': value_json.ts} | tojson }}",
        "icon": "mdi:account-check",
    }


def person_config(topics: HaTopics, name: str) -> dict[str, Any]:
    """The ``present`` ``binary_sensor`` of one enrolled person."""
    key = person_key(name)
    return {
        "name": f"{name} present",
        **_common(topics, f"present_{key}"),
        "state_topic": topics.presence(name),
        "payload_on": PAYLOAD_ON,
        "payload_off": PAYLOAD_OFF,
        "device_class": "presence",
        "icon": "mdi:account",
        "json_attributes_topic": topics.presence_attributes(name),
    }


def unknown_visitor_config(topics: HaTopics) -> dict[str, Any]:
    """The ``binary_sensor`` that is on while an unknown visitor is (or just was) in view."""
    return {
        "name": "Unknown visitor",
        **_common(topics, UNKNOWN_VISITOR),
        "state_topic": topics.unknown_presence,
        "payload_on": PAYLOAD_ON,
        "payload_off": PAYLOAD_OFF,
        "device_class": "presence",
        "icon": "mdi:account-question",
        "json_attributes_topic": topics.unknown,
        "json_attributes_template": "{{ {'cluster_id': value_json.cluster_id, 'cluster_status': "
                                    "value_json.cluster_status, 'visit_count': value_json.visit_count, "
                                    "'camera': value_json.camera, 'track_id': value_json.track_id, "
                                    "'ts': value_json.ts} | tojson }}",
    }


def unknown_face_config(topics: HaTopics) -> dict[str, Any]:
    """The ``image`` entity showing the last unknown visitor's face (raw JPEG bytes on its topic)."""
    return {
        "name": "Last unknown visitor",
        **_common(topics, "last_unknown_face"),
        "image_topic": topics.unknown_face,
        "content_type": "image/jpeg",
        "icon": "mdi:account-question",
    }


def stats_config(topics: HaTopics, field: str) -> dict[str, Any]:
    """A diagnostic ``sensor`` reading one field of the stats payload."""
    if field not in STATS_SENSORS:
        raise ValueError(f"no stats sensor {field!r}; known: {', '.join(STATS_SENSORS)}")
    return {
        **STATS_SENSORS[field],
        **_common(topics, field),
        "state_topic": topics.stats,
        "value_template": f"{{{{ value_json.{field} }}}}",
        "entity_category": "diagnostic",
    }


def station_configs(topics: HaTopics) -> dict[str, dict[str, Any]]:
    """Config topic -> payload of every entity that does not depend on the gallery."""
    configs = {topics.last_person_config: last_person_config(topics),
               topics.unknown_visitor_config: unknown_visitor_config(topics),
               topics.unknown_face_config: unknown_face_config(topics)}
    for field in STATS_SENSORS:
        configs[topics.stats_config(field)] = stats_config(topics, field)
    return configs


def encode(payload: dict[str, Any]) -> bytes:
    """The wire form of a discovery config: compact JSON, UTF-8 (names stay readable)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def removal() -> bytes:
    """The payload that deletes a retained config (and with it the Home Assistant entity)."""
    return b""


# -- presence: which person (or unknown visitor) is in view, as a pure state machine ---------------

UNKNOWN_KEY = None
"""The presence key of unknown visitors (persons are keyed by name)."""


@dataclass
class _Presence:
    open_tracks: set[int]
    on: bool = False
    off_at: float | None = None


class PresenceTracker:
    """Turns events into ``present`` transitions. A person (or the unknown visitor, key ``None``) is on
    from their first recognized (unknown) event until none of their tracks is open and ``timeout_s``
    has passed since the last one ended. A track that switches people leaves the first one. Pure:
    times come with the calls; not thread-safe (the caller holds a lock)."""

    def __init__(self, timeout_s: float) -> None:
        if timeout_s < 0:
            raise ValueError("timeout_s must be >= 0")
        self.timeout_s = timeout_s
        self._state: dict[str | None, _Presence] = {}

    def _leave(self, track_id: int, now: float, keep: str | None | object = object()) -> None:
        for key, state in self._state.items():
            if key != keep and track_id in state.open_tracks:
                state.open_tracks.discard(track_id)
                if not state.open_tracks:
                    state.off_at = now + self.timeout_s

    def on_event(self, event: Any, now: float) -> list[tuple[str | None, bool]]:
        """(key, True) for each key the event turned on; ended tracks only start the timeout."""
        kind = getattr(event, "type", None)
        if kind in ("recognized", "unknown"):
            key = event.name if kind == "recognized" else UNKNOWN_KEY
            self._leave(event.track_id, now, keep=key)
            state = self._state.setdefault(key, _Presence(set()))
            state.open_tracks.add(event.track_id)
            state.off_at = None
            if not state.on:
                state.on = True
                return [(key, True)]
        elif kind == "track_ended":
            self._leave(event.track_id, now)
        return []

    def tick(self, now: float) -> list[tuple[str | None, bool]]:
        """(key, False) for each key whose timeout has passed."""
        out = []
        for key, state in list(self._state.items()):
            if state.on and not state.open_tracks and state.off_at is not None and now >= state.off_at:
                state.on = False
                out.append((key, False))
                del self._state[key]
        return out

    def forget(self, name: str) -> None:
        self._state.pop(name, None)

    def on_keys(self) -> list[str | None]:
        return [key for key, state in self._state.items() if state.on]
