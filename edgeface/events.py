"""The event schema: the only place it is defined, and the MQTT topic names that carry it.

Every payload edgeface publishes is one JSON object produced from a model in this module. Events
share base fields (``id``, ``type``, ``schema``, ``ts``, ``station``, ``camera``, ``track_id``); the
``type`` field is the discriminator of the :data:`Event` union. Timestamps are UTC ISO-8601 strings
ending in ``Z`` with millisecond precision (``2024-05-01T12:00:00.123Z``).

Topic layout under a prefix (default ``edgeface/<station_id>/``)::

    <prefix>events/<type>       one topic per event type (QoS 1, not retained)
    <prefix>status              "online" / "offline" (retained; "offline" is the last will)
    <prefix>stats               Stats (retained, QoS 0)
    <prefix>cmd/<verb>          commands to this station
    <prefix>cmd/<verb>/reply    replies (unless the MQTT 5 request carried a response topic)

Consumers deduplicate by ``id``: delivery is at-least-once.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from edgeface.errors import ConfigError

SCHEMA_VERSION: Literal[2] = 2
"""Bumped on any incompatible change of a payload; consumers can route on it. 2: `recognized` has
`runner_up`."""

_TS_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"


def _to_utc_ms(value: datetime) -> datetime:
    value = value.astimezone(timezone.utc)
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def format_ts(value: datetime) -> str:
    """A timezone-aware datetime as the wire format: UTC, milliseconds, ``Z`` suffix."""
    return _to_utc_ms(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> datetime:
    """Now, as an aware UTC datetime truncated to milliseconds (what the wire carries)."""
    return _to_utc_ms(datetime.now(timezone.utc))


UtcTimestamp = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc_ms),
    PlainSerializer(format_ts, return_type=str),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "pattern": _TS_PATTERN,
         "description": "UTC ISO-8601 timestamp ending in Z, millisecond precision"}
    ),
]
"""An aware datetime in Python, a ``...Z`` string on the wire. Naive datetimes are refused."""

StationId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
CameraName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
PersonName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
ClusterId = Annotated[str, StringConstraints(pattern=r"^unknown-[0-9]{1,9}$")]
"""A cluster of unknown faces, stable across restarts: ``unknown-17``."""

EventId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
TrackId = Annotated[int, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0)]


def new_event_id() -> str:
    """A fresh, unique event id (uuid4 hex, 32 characters)."""
    return uuid.uuid4().hex


class _Payload(BaseModel):
    """Common model settings: strict shape, immutable, no NaN/inf, ``schema`` by alias."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,
        str_max_length=4096,
        # Fields with defaults (id, type, schema, ts, track_id...) are always present on the wire,
        # so the exported JSON Schema lists them as required.
        json_schema_serialization_defaults_required=True,
    )

    schema_version: Literal[2] = Field(
        SCHEMA_VERSION, alias="schema", description="Payload schema version (see SCHEMA_VERSION)"
    )
    ts: UtcTimestamp = Field(default_factory=utc_now, description="When the event happened (UTC)")
    station: StationId = Field(description="Station id (one edgeface process per station)")

    @model_validator(mode="before")
    @classmethod
    def _complete_on_the_wire(cls, data: Any, info: ValidationInfo) -> Any:
        """Defaults (a fresh id, now) help producers; a received payload must carry every field."""
        if info.context and info.context.get("wire") and isinstance(data, dict):
            missing = [f.alias or name for name, f in cls.model_fields.items() if (f.alias or name) not in data]
            if missing:
                raise ValueError(f"missing field(s): {', '.join(missing)}")
        return data

    def to_json(self) -> str:
        """The wire form: compact JSON with ``schema`` spelled by its alias."""
        return self.model_dump_json(by_alias=True)

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a JSON-compatible dict."""
        return self.model_dump(mode="json", by_alias=True)


class _EventBase(_Payload):
    id: EventId = Field(default_factory=new_event_id, description="Unique event id; deduplicate on it")
    camera: CameraName = Field(description="Camera (source) name within the station")
    track_id: TrackId | None = Field(None, description="Tracker id the event is about, if any")


class RunnerUp(BaseModel):
    """The second-nearest enrolled person, when nearly as near as the one decided (a look-alike)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: PersonName
    distance: float = Field(ge=0.0, description="Embedding distance to the runner-up")


class RecognizedEvent(_EventBase):
    """A track was decided to be an enrolled person."""

    type: Literal["recognized"] = "recognized"
    track_id: TrackId
    name: PersonName
    confidence: float = Field(ge=0.0, le=1.0, description="Decision confidence, 0..1")
    distance: float = Field(ge=0.0, description="Embedding distance to the matched identity")
    faces_used: int = Field(ge=1, description="Number of face crops that voted for the decision")
    runner_up: RunnerUp | None = Field(
        None, description="Another enrolled person within pipeline.decision.runner_up_margin of the distance on most "
        "of the faces that voted (a relative, a look-alike); null otherwise"
    )

    @model_validator(mode="after")
    def _check(self) -> RecognizedEvent:
        if self.runner_up is not None and self.runner_up.name == self.name:
            raise ValueError("runner_up names the recognised person")
        return self


class UnknownEvent(_EventBase):
    """A track was decided to be nobody enrolled; it may belong to a cluster of unknowns."""

    type: Literal["unknown"] = "unknown"
    track_id: TrackId
    faces_used: Count = Field(description="Number of good face crops the decision was made on")
    cluster_id: ClusterId | None = Field(None, description="Cluster of unknowns; null until clustering assigns one")
    cluster_status: Literal["tentative", "confirmed"] | None = Field(
        None, description="tentative until the cluster has been seen often enough; null without a cluster"
    )
    visit_count: Count | None = Field(None, description="Visits of this cluster so far (this one included)")
    first_seen: UtcTimestamp | None = Field(None, description="First sighting of this cluster")
    last_seen: UtcTimestamp | None = Field(None, description="Latest sighting of this cluster")

    @model_validator(mode="after")
    def _check(self) -> UnknownEvent:
        cluster_fields = (self.cluster_status, self.visit_count, self.first_seen, self.last_seen)
        if self.cluster_id is None and any(v is not None for v in cluster_fields):
            raise ValueError("cluster_status, visit_count, first_seen and last_seen need a cluster_id")
        if self.cluster_id is not None and any(v is None for v in cluster_fields):
            raise ValueError("a cluster_id needs cluster_status, visit_count, first_seen and last_seen")
        if self.first_seen is not None and self.last_seen is not None and self.last_seen < self.first_seen:
            raise ValueError("last_seen is before first_seen")
        return self


class TrackEndedEvent(_EventBase):
    """A track ended (the face left the picture or was lost)."""

    type: Literal["track_ended"] = "track_ended"
    track_id: TrackId
    started: UtcTimestamp
    ended: UtcTimestamp
    duration_s: Seconds
    faces_seen: Count
    decision: PersonName | None = Field(
        None, description='The enrolled name, "unknown", or null when no decision was reached'
    )
    cluster_id: ClusterId | None = Field(None, description="The unknown's cluster, when the decision is unknown")

    @model_validator(mode="after")
    def _check(self) -> TrackEndedEvent:
        if self.ended < self.started:
            raise ValueError("ended is before started")
        if self.cluster_id is not None and self.decision != "unknown":
            raise ValueError('cluster_id is only for tracks whose decision is "unknown"')
        return self


class _StationEvent(_EventBase):
    """An event about the station's state rather than a track: ``camera`` and ``track_id`` are null."""

    camera: CameraName | None = Field(None, description="Null: not tied to one camera")  # type: ignore[assignment]
    track_id: None = None


class ClusterMergedEvent(_StationEvent):
    """Two clusters of unknowns turned out to be one person; ``merged_id`` no longer exists."""

    type: Literal["cluster_merged"] = "cluster_merged"
    kept_id: ClusterId
    merged_id: ClusterId


class ClusterNamedEvent(_StationEvent):
    """A cluster of unknowns was given a name and moved into the gallery."""

    type: Literal["cluster_named"] = "cluster_named"
    cluster_id: ClusterId
    name: PersonName


class PersonForgottenEvent(_StationEvent):
    """An enrolled person was removed from the gallery."""

    type: Literal["person_forgotten"] = "person_forgotten"
    name: PersonName


class CameraStateEvent(_EventBase):
    """A camera of the station failed after its retries (``failed``: the station's other cameras go on,
    and this one is opened again later) or delivers frames again after such a failure (``connected``)."""

    type: Literal["camera_state"] = "camera_state"
    track_id: None = None
    state: Literal["failed", "connected"]
    reason: str | None = Field(None, max_length=1000, description="Why it failed (one line), null when connected")
    failures: Count = Field(description="Times this camera failed since the station started")


Event = Annotated[
    RecognizedEvent | UnknownEvent | TrackEndedEvent | ClusterMergedEvent | ClusterNamedEvent | PersonForgottenEvent
    | CameraStateEvent,
    Field(discriminator="type"),
]
"""Any event; ``type`` selects the model."""

EVENT_TYPES: tuple[str, ...] = (
    "recognized", "unknown", "track_ended", "cluster_merged", "cluster_named", "person_forgotten", "camera_state",
)


class CameraStats(BaseModel):
    """One camera's numbers in Stats."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    state: Literal["running", "reconnecting", "failed", "ended"] = Field(
        description="running: delivering frames; reconnecting: retrying within its limits; failed: out of retries, "
        "opened again later; ended: its file or folder was read to the end")
    fps: float = Field(ge=0.0, description="Frames processed per second since the previous stats")
    frames: Count = Field(description="Frames processed since the station started")
    failures: Count = Field(description="Times the camera failed after its retries")


class Stats(_Payload):
    """Periodic health numbers of a station (retained on ``<prefix>stats``; not an event)."""

    fps: float = Field(ge=0.0, description="Frames processed per second")
    queue_depth: Count = Field(description="Frames waiting between stages")
    outbox_length: Count = Field(description="Messages waiting in the MQTT outbox")
    model: str = Field(max_length=256, description="Embedder model name/version")
    uptime_s: Seconds
    quality_rejections: dict[str, Count] = Field(
        default_factory=dict, description="Faces rejected by the quality gate, per reason"
    )
    dropped_events: Count = Field(0, description="Events dropped because the outbox was full")
    outbox_write_failures: Count = Field(
        0, description="Events the outbox could not store at once (full disk, I/O error); they waited in memory"
    )
    cameras: dict[CameraName, CameraStats] = Field(
        default_factory=dict, description="Each camera of the station by name (absent in stats of older versions)"
    )


_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: str | bytes | bytearray) -> Event:
    """Parse one received event from its JSON text: every field must be present (no defaults).
    Raises pydantic.ValidationError on anything invalid."""
    return _EVENT_ADAPTER.validate_json(data, context={"wire": True})


def event_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of every event payload: a ``oneOf`` over the event types."""
    schema = _EVENT_ADAPTER.json_schema(mode="serialization", by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"edgeface event (schema {SCHEMA_VERSION})",
        "description": "Payload of <prefix>events/<type>; deduplicate by id (at-least-once delivery).",
        **schema,
    }


def stats_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the Stats payload on ``<prefix>stats``."""
    schema = Stats.model_json_schema(mode="serialization", by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# ----------------------------------------------------------------------------------------- topics

_PREFIX_RE = re.compile(r"^[^+#\x00]*/$")
_VERB_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def default_prefix(station_id: str) -> str:
    """``edgeface/<station_id>/``."""
    return f"edgeface/{station_id}/"


def check_prefix(prefix: str) -> str:
    """Return the prefix if usable for topics; ConfigError otherwise."""
    if not prefix or not _PREFIX_RE.match(prefix) or len(prefix.encode()) > 200 or prefix.startswith("$"):
        raise ConfigError(
            f"MQTT topic prefix {prefix!r} is invalid: it must end with '/', not start with '$', "
            "and contain no '+', '#' or NUL"
        )
    return prefix


@dataclass(frozen=True)
class Topics:
    """All topic names of one station, derived from a prefix ending in '/'."""

    prefix: str

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    @classmethod
    def for_station(cls, station_id: str, prefix: str | None = None) -> Topics:
        return cls(prefix if prefix is not None else default_prefix(station_id))

    def event(self, event_type: str) -> str:
        return f"{self.prefix}events/{event_type}"

    @property
    def status(self) -> str:
        return f"{self.prefix}status"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats"

    @property
    def command_filter(self) -> str:
        """What the station subscribes to: ``<prefix>cmd/+`` (replies one level deeper don't match)."""
        return f"{self.prefix}cmd/+"

    def command(self, verb: str) -> str:
        return f"{self.prefix}cmd/{verb}"

    def reply(self, verb: str) -> str:
        return f"{self.prefix}cmd/{verb}/reply"

    def verb_of(self, topic: str) -> str | None:
        """The verb of a command topic, or None when the topic is not ``<prefix>cmd/<verb>``."""
        head = f"{self.prefix}cmd/"
        if not topic.startswith(head):
            return None
        verb = topic[len(head):]
        return verb if verb and "/" not in verb else None


def is_valid_verb(verb: str) -> bool:
    """Command verbs are short lower-case identifiers (``name_cluster``)."""
    return bool(_VERB_RE.match(verb))

