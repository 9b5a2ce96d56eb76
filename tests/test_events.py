from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgeface.cli import mqtt as mqtt_cli
from edgeface.errors import ConfigError
from edgeface.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    ClusterMergedEvent,
    ClusterNamedEvent,
    PersonForgottenEvent,
    RecognizedEvent,
    RunnerUp,
    Stats,
    Topics,
    TrackEndedEvent,
    UnknownEvent,
    event_json_schema,
    parse_event,
    stats_json_schema,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def examples() -> list:  # type: ignore[type-arg]
    return [
        RecognizedEvent(station="hall", camera="door", track_id=4, name="Ada Lovelace", confidence=0.93,
                        distance=0.35, faces_used=5, ts=T0),
        RecognizedEvent(station="hall", camera="door", track_id=8, name="Evan", confidence=0.8, distance=0.31,
                        faces_used=4, ts=T0, runner_up=RunnerUp(name="Louis", distance=0.34)),
        UnknownEvent(station="hall", camera="door", track_id=5, faces_used=3),
        UnknownEvent(station="hall", camera="door", track_id=6, faces_used=3, cluster_id="unknown-17",
                     cluster_status="confirmed", visit_count=4, first_seen=T0 - timedelta(days=2), last_seen=T0),
        TrackEndedEvent(station="hall", camera="door", track_id=4, started=T0 - timedelta(seconds=3), ended=T0,
                        duration_s=3.0, faces_seen=41, decision="Ada Lovelace"),
        TrackEndedEvent(station="hall", camera="door", track_id=7, started=T0, ended=T0, duration_s=0,
                        faces_seen=1, decision=None),
        ClusterMergedEvent(station="hall", kept_id="unknown-3", merged_id="unknown-9"),
        ClusterNamedEvent(station="hall", cluster_id="unknown-3", name="Grace"),
        PersonForgottenEvent(station="hall", name="Grace"),
    ]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = event_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("event", examples(), ids=lambda e: e.type)
def test_round_trip_and_schema(event, validator) -> None:  # type: ignore[no-untyped-def]
    wire = event.to_json()
    data = json.loads(wire)
    validator.validate(data)
    assert parse_event(wire) == event
    assert data["schema"] == SCHEMA_VERSION
    for key in ("id", "type", "ts", "station", "camera", "track_id"):
        assert key in data, key
    assert data["ts"].endswith("Z")


def test_runner_up_is_null_or_another_person() -> None:
    plain = json.loads(examples()[0].to_json())
    assert plain["schema"] == 2 and plain["runner_up"] is None
    assert json.loads(examples()[1].to_json())["runner_up"] == {"name": "Louis", "distance": 0.34}
    with pytest.raises(ValidationError, match="runner_up names the recognised person"):
        RecognizedEvent(station="s", camera="c", track_id=1, name="Evan", confidence=1, distance=0.3,
                        faces_used=1, runner_up=RunnerUp(name="Evan", distance=0.31))
    del plain["runner_up"]  # a schema-1 consumer's payload lacks it: refused on the wire, not guessed
    with pytest.raises(ValidationError, match="runner_up"):
        parse_event(json.dumps(plain))


def test_every_event_type_requires_the_common_fields() -> None:
    definitions = event_json_schema()["$defs"]
    for name in ("RecognizedEvent", "UnknownEvent", "TrackEndedEvent", "ClusterMergedEvent",
                 "ClusterNamedEvent", "PersonForgottenEvent"):
        required = set(definitions[name]["required"])
        assert {"id", "type", "ts", "station", "camera", "track_id", "schema"} <= required, name
    assert set(event_json_schema()["discriminator"]["mapping"]) == set(EVENT_TYPES)


def test_timestamps_are_utc_milliseconds() -> None:
    plus2 = timezone(timedelta(hours=2))
    event = RecognizedEvent(station="s", camera="c", track_id=1, name="A", confidence=1, distance=0,
                            faces_used=1, ts=datetime(2024, 5, 1, 14, 0, 0, 987654, tzinfo=plus2))
    assert json.loads(event.to_json())["ts"] == "2024-05-01T12:00:00.987Z"
    with pytest.raises(ValidationError, match="timezone"):
        RecognizedEvent(station="s", camera="c", track_id=1, name="A", confidence=1, distance=0,
                        faces_used=1, ts=datetime(2024, 5, 1, 12, 0))
    default = UnknownEvent(station="s", camera="c", track_id=1, faces_used=1)
    assert abs((default.ts - datetime.now(timezone.utc)).total_seconds()) < 5


def test_ids_are_unique() -> None:
    ids = {UnknownEvent(station="s", camera="c", track_id=1, faces_used=1).id for _ in range(1000)}
    assert len(ids) == 1000


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.pop("id"), "'id' is a required property"),
        (lambda d: d.update(type="waved"), None),
        (lambda d: d.update(extra=1), "Additional properties"),
        (lambda d: d.update(ts="2024-05-01 12:00:00"), "does not match"),
        (lambda d: d.update(confidence=1.5), "maximum"),
        (lambda d: d.update(schema=1), None),  # schema 1 had no runner_up
        (lambda d: d.update(schema=3), None),
        (lambda d: d.update(station="has space"), "does not match"),
    ],
)
def test_schema_and_model_refuse_the_same_bad_payloads(validator, change, fragment) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(examples()[0].to_json())
    change(data)
    with pytest.raises(jsonschema.ValidationError) as error:
        validator.validate(data)
    if fragment:
        assert any(fragment in str(e.message) for e in [error.value, *error.value.context]), error.value.message
    with pytest.raises(ValidationError):
        parse_event(json.dumps(data))


def test_consistency_rules() -> None:
    with pytest.raises(ValidationError, match="need a cluster_id"):
        UnknownEvent(station="s", camera="c", track_id=1, faces_used=1, visit_count=2)
    with pytest.raises(ValidationError, match="needs cluster_status"):
        UnknownEvent(station="s", camera="c", track_id=1, faces_used=1, cluster_id="unknown-1")
    with pytest.raises(ValidationError, match="before started"):
        TrackEndedEvent(station="s", camera="c", track_id=1, started=T0, ended=T0 - timedelta(seconds=1),
                        duration_s=1, faces_seen=1)
    with pytest.raises(ValidationError, match="only for tracks"):
        TrackEndedEvent(station="s", camera="c", track_id=1, started=T0, ended=T0, duration_s=0,
                        faces_seen=1, decision="Ada", cluster_id="unknown-2")
    with pytest.raises(ValidationError, match="finite"):
        RecognizedEvent(station="s", camera="c", track_id=1, name="A", confidence=float("nan"),
                        distance=0, faces_used=1)


_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=40).filter(
    lambda s: s.strip() != "")


@settings(max_examples=200, deadline=None)
@given(
    name=_names,
    confidence=st.floats(0, 1),
    distance=st.floats(0, 10),
    track_id=st.integers(0, 2**40),
    ts=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.timezones()),
)
def test_model_and_json_schema_agree_on_generated_events(validator, name, confidence, distance, track_id, ts) -> None:  # type: ignore[no-untyped-def]
    event = RecognizedEvent(station="s", camera="c", track_id=track_id, name=name, confidence=confidence,
                            distance=distance, faces_used=1, ts=ts)
    validator.validate(json.loads(event.to_json()))
    assert parse_event(event.to_json()) == event


def test_stats_schema() -> None:
    stats = Stats(station="hall", fps=9.5, queue_depth=0, outbox_length=3, model="dlib-resnet-int8",
                  uptime_s=12.5, quality_rejections={"blur": 3})
    jsonschema.validate(json.loads(stats.to_json()), stats_json_schema())


def test_topics() -> None:
    topics = Topics.for_station("hall")
    assert topics.event("recognized") == "edgeface/hall/events/recognized"
    assert topics.status == "edgeface/hall/status"
    assert topics.command_filter == "edgeface/hall/cmd/+"
    assert topics.reply("enroll") == "edgeface/hall/cmd/enroll/reply"
    assert topics.verb_of("edgeface/hall/cmd/enroll") == "enroll"
    assert topics.verb_of("edgeface/hall/cmd/enroll/reply") is None
    assert topics.verb_of("edgeface/other/cmd/enroll") is None
    assert Topics.for_station("hall", "home/cams/").status == "home/cams/status"
    for bad in ("no-slash", "a/+/", "$SYS/", "a/#/", ""):
        with pytest.raises(ConfigError):
            Topics(bad)


@pytest.mark.parametrize("what", ["events", "stats", "reply"])
def test_schema_command_prints_a_valid_json_schema(capsys, what) -> None:  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser(prog="edgeface")
    mqtt_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["schema", what])
    assert args.handler(args) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    if what == "events":
        assert schema == event_json_schema()
