"""The pieces `edgeface run --sink mqtt` is made of, without a broker: the config's mqtt section, the
command secret, the decider's recent-track memory (negative feedback), and the gallery shared by the
camera thread and the command thread."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from edgeface.config import Config, MqttConfig, load_config
from edgeface.errors import ConfigError
from edgeface.recognition.decider import Decider, DecisionPolicy, Vote
from edgeface.service.mqtt.commands import CommandRouter, NameClusterCommand, sign_command
from edgeface.service.station import resolve_command_secret
from edgeface.storage.gallery import Gallery

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return vector / np.linalg.norm(vector)


# -- config ------------------------------------------------------------------------------------


def test_config_mqtt_section(tmp_path: Path) -> None:
    assert Config().mqtt is None
    path = tmp_path / "c.yaml"
    path.write_text("station_id: hall\nmqtt:\n  url: mqtt://broker:1884\n  homeassistant: true\n  stats_interval_s: 5\n")
    config = load_config(path)
    assert config.mqtt == MqttConfig(url="mqtt://broker:1884", homeassistant=True, stats_interval_s=5)
    from edgeface.config import MqttConfig as Reexported

    assert Reexported is MqttConfig


@pytest.mark.parametrize(("text", "where"), [
    ("mqtt:\n  urll: mqtt://x\n", "mqtt.urll"),
    ("mqtt:\n  stats_interval_s: 0\n", "mqtt.stats_interval_s"),
    ("mqtt:\n  discovery_prefix: 'home/#'\n", "mqtt.discovery_prefix"),
    ("pipeline:\n  decision:\n    recent_tracks_kept: -1\n", "pipeline.decision.recent_tracks_kept"),
])
def test_bad_mqtt_config_is_one_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert where in str(error.value) and "\n" not in str(error.value)


def _run(*args: str) -> subprocess.CompletedProcess:
    # Without --gallery, `run` creates the default gallery: keep that in a fresh folder, not the checkout.
    env = {**os.environ, "EDGEFACE_GALLERY": str(Path(tempfile.mkdtemp(prefix="edgeface-test-")) / "gallery.db")}
    return subprocess.run([sys.executable, "-m", "edgeface.cli", "run", *args], capture_output=True, text=True,
                          timeout=120, check=False, env=env)


@pytest.mark.parametrize(("args", "words"), [
    (["--sink", "jsonl", "--mqtt-url", "mqtt://127.0.0.1:1883"], "--mqtt-url needs --sink mqtt"),
    (["--sink", "mqtt", "--mqtt-url", "http://127.0.0.1:1883"], "mqtt://"),
    (["--mqtt-url", "mqtt://user:secret@127.0.0.1"], "must not contain a password"),
])
def test_run_mqtt_usage_errors_are_one_line(tmp_path: Path, args: list[str], words: str) -> None:
    video = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video" / "hamilton_clip.mp4"
    if not video.is_file():
        pytest.skip("../shared/data is absent")
    done = _run("--source", str(video), *args)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in done.stderr
    assert "secret" not in done.stderr.replace("must not contain a password", "")


# -- command secret --------------------------------------------------------------------------------


def test_command_secret_sources(tmp_path: Path) -> None:
    config = MqttConfig()
    assert resolve_command_secret(config, {}) is None
    assert resolve_command_secret(config, {"EDGEFACE_COMMAND_SECRET": "s" * 32}) == b"s" * 32
    (tmp_path / "command_secret").write_text("from-credentials-0123456789\n")
    assert resolve_command_secret(config, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == b"from-credentials-0123456789"
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file-0123456789abcdef\nignored\n")
    with_file = MqttConfig(command_secret_file=secret_file)
    assert resolve_command_secret(with_file, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == b"from-file-0123456789abcdef"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_command_secret(MqttConfig(command_secret_file=tmp_path / "missing"), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        resolve_command_secret(MqttConfig(command_secret_file=tmp_path / "empty"), {})


def test_station_router_with_a_secret_refuses_unsigned_commands(tmp_path: Path) -> None:
    from edgeface.service.station import Station

    secret = b"0123456789abcdef0123456789abcdef"
    gallery = Gallery(tmp_path / "g.db")
    gallery.add_templates("Ada", _unit(1))
    station = Station(Config(station_id="hall", mqtt=MqttConfig()), gallery=gallery)
    router = station.register(CommandRouter(secret=secret))
    assert router.verbs == ["enroll", "forget", "ignore_cluster", "name_cluster", "reject", "reload", "status"]
    unsigned = router.handle("reload", b"{}")
    assert not unsigned.ok and "signed" in unsigned.message
    signed = router.handle("reload", sign_command(secret, "reload", {"request_id": "r"}))
    assert signed.ok and signed.result == {"identities": 1} and signed.request_id == "r"
    no_pipeline = router.handle("reject", sign_command(secret, "reject", {"track_id": 1, "name": "Ada"}))
    assert not no_pipeline.ok and "starting" in no_pipeline.message


def test_commands_without_a_gallery_say_how_to_get_one() -> None:
    from edgeface.service.station import Station

    router = Station(Config(station_id="hall", mqtt=MqttConfig())).register(CommandRouter(allow_unsigned=True))
    for verb, payload in [("forget", b'{"name": "Ada"}'), ("name_cluster", b'{"cluster_id": "unknown-3", "name": "Ada"}'),
                          ("reject", b'{"track_id": 3, "name": "Ada"}')]:
        reply = router.handle(verb, payload)
        assert not reply.ok and "--gallery" in reply.message, reply


# -- recent tracks (negative feedback) ---------------------------------------------------------------


def _vote(vector: np.ndarray, name: str | None, frame: int) -> Vote:
    return Vote(vector, 1.0, name, 0.3 if name else 0.9, frame)


def test_decider_remembers_the_last_decided_tracks_per_name() -> None:
    decider = Decider("s", "c", DecisionPolicy(min_good_faces=2, min_good_faces_unknown=2, max_faces_undecided=4),
                      recent_tracks=2, recheck_every_frames=1)
    ada = [_unit(1) + 0.05 * _unit(10 + i) for i in range(3)]
    for frame, vector in enumerate(ada[:2]):
        events = decider.add_vote(1, _vote(vector, "Ada", frame), T0)
    assert [e.type for e in events] == ["recognized"]
    recent = decider.recent(1)
    assert recent is not None and recent.decision == "Ada" and set(recent.embeddings) == {"Ada"}
    expected = (ada[0] / np.linalg.norm(ada[0]) + ada[1] / np.linalg.norm(ada[1]))
    np.testing.assert_allclose(recent.embeddings["Ada"], expected / np.linalg.norm(expected), atol=1e-6)
    decider.add_vote(1, _vote(ada[2], "Ada", 5), T0)  # an agreeing re-check joins the aggregate
    assert not np.allclose(decider.recent(1).embeddings["Ada"], recent.embeddings["Ada"])
    decider.end_track(1, T0 + timedelta(seconds=1))
    assert decider.recent(1) is not None  # ended tracks stay rejectable
    for track in (2, 3):
        for frame in range(2):
            decider.add_vote(track, _vote(_unit(100 + track), None, frame), T0)
    assert decider.recent(1) is None and decider.recent_track_ids() == [2, 3]  # bounded
    assert decider.recent(2).decision == "unknown"
    assert decider.forget_name("unknown") == 2 and decider.recent_track_ids() == []
    assert Decider("s", "c", recent_tracks=0).recent_tracks == 0
    with pytest.raises(ValueError):
        Decider("s", "c", recent_tracks=-1)


# -- one gallery, two threads ------------------------------------------------------------------------


def test_gallery_is_shared_safely_by_the_camera_and_command_threads(tmp_path: Path) -> None:
    """The camera thread matches while the command thread enrolls, rejects and forgets on the same
    Gallery object: no error, and every match answers from a consistent state."""
    gallery = Gallery(tmp_path / "g.db")
    gallery.add_templates("Ada", np.stack([_unit(1), _unit(2)]))
    probes = np.stack([_unit(1), _unit(3)])
    errors: list[BaseException] = []
    stop = threading.Event()
    matches = 0

    def camera() -> None:
        nonlocal matches
        try:
            while not stop.is_set():
                result = gallery.match(probes)
                assert len(result) == 2 and result[1].name in (None, "Bob")
                matches += 1
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=camera)
    thread.start()
    try:
        for i in range(40):
            gallery.add_templates("Bob", _unit(3) if i % 2 == 0 else _unit(1000 + i))
            gallery.reject_match("Ada", _unit(500 + i))
            gallery.remove("Bob")
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors[0]
    assert matches > 0
    assert gallery.show("Ada").negative_count == 40 and [i.name for i in gallery.list_identities()] == ["Ada"]


# -- fuzz: the station's own handlers behind the router ---------------------------------------------

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_fields = st.dictionaries(
    st.sampled_from(["name", "image", "cluster_id", "track_id", "request_id", "ts", "x"]), _json_values, max_size=4)


@pytest.fixture(scope="module")
def fuzz_router(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from edgeface.service.station import Station

    gallery = Gallery(tmp_path_factory.mktemp("fuzz") / "g.db")
    gallery.add_templates("Ada", _unit(1))
    return Station(Config(station_id="hall", mqtt=MqttConfig()), gallery=gallery).register(CommandRouter(allow_unsigned=True)), gallery


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(verb=st.sampled_from(["enroll", "name_cluster", "ignore_cluster", "forget", "reject", "reload", "status", "nope"]),
       body=_fields | st.binary(max_size=64).map(lambda b: b))  # type: ignore[arg-type]
def test_station_answers_every_malformed_command(fuzz_router, verb: str, body) -> None:  # type: ignore[no-untyped-def]
    import json

    router, gallery = fuzz_router
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = router.handle(verb, payload)
    assert reply.verb == verb and reply.message and "\n" not in reply.message
    if verb == "forget" and reply.ok:  # only a real name can be forgotten; put Ada back
        gallery.add_templates("Ada", _unit(1))
    assert "internal error" not in reply.message, reply


def test_cluster_commands_move_a_cluster_into_the_gallery(tmp_path: Path) -> None:
    from edgeface.service.station import Station
    from edgeface.storage.cluster_store import ClusterStore

    gallery = Gallery(tmp_path / "g.db")
    gallery.add_templates("Ada", _unit(1))
    store = ClusterStore(gallery.path, station="hall", gallery=gallery)
    ids = []
    for person in (50, 60):
        for visit in range(3):
            vector = _unit(person) + 0.05 * _unit(person * 100 + visit)
            update = store.observe(vector / np.linalg.norm(vector), ts=1e9 + visit, track_key=f"{person}:{visit}")
        ids.append(update.cluster.id)
    assert len(set(ids)) == 2
    station = Station(Config(station_id="hall", mqtt=MqttConfig()), gallery=gallery, clusters=store)
    router = station.register(CommandRouter(allow_unsigned=True))
    named = router.handle("name_cluster", f'{{"cluster_id": "{ids[0]}", "name": "Grace"}}'.encode())
    assert named.ok and named.result["name"] == "Grace" and named.result["templates"] >= 1, named
    # Ada is enrolled and this cluster does not resemble her: refused in one line, unless forced
    enrolled = router.handle("enroll", f'{{"cluster_id": "{ids[1]}", "name": "Ada"}}'.encode())
    assert not enrolled.ok and f"{ids[1]} does not look like Ada" in enrolled.message, enrolled
    refused = router.handle("name_cluster", f'{{"cluster_id": "{ids[1]}", "name": "Ada"}}'.encode())
    assert not refused.ok and '"force": true' in refused.message and "\n" not in refused.message, refused
    assert gallery.show("Ada").template_count == 1
    forced = router.handle("name_cluster", f'{{"cluster_id": "{ids[1]}", "name": "Ada", "force": true}}'.encode())
    assert forced.ok and forced.message == f"{ids[1]} is now Ada", forced
    assert gallery.show("Ada").template_count == forced.result["templates"] > 1
    gone = router.handle("name_cluster", f'{{"cluster_id": "{ids[0]}", "name": "Grace"}}'.encode())
    assert not gone.ok and "named 'Grace'" in gone.message
    assert {c.id for c in store.list_clusters()} == set()
    store.close()


def test_ignore_cluster_command_is_signed_and_can_be_undone(tmp_path: Path) -> None:
    from edgeface.service.station import Station
    from edgeface.storage.cluster_store import ClusterStore

    secret = b"0123456789abcdef0123456789abcdef"
    gallery = Gallery(tmp_path / "g.db")
    store = ClusterStore(gallery.path, station="hall", gallery=gallery)
    chip = np.full((150, 150, 3), 90, np.uint8)
    for visit in range(3):
        vector = _unit(50) + 0.05 * _unit(5000 + visit)
        cluster = store.observe(vector / np.linalg.norm(vector), ts=1e9 + visit, track_key=f"50:{visit}",
                                crop=chip).cluster.id
    station = Station(Config(station_id="hall", mqtt=MqttConfig()), gallery=gallery, clusters=store)
    router = station.register(CommandRouter(secret=secret))

    unsigned = router.handle("ignore_cluster", f'{{"cluster_id": "{cluster}"}}'.encode())
    assert not unsigned.ok and "signed" in unsigned.message
    assert store.crops(cluster, 5)
    ignored = router.handle("ignore_cluster", sign_command(secret, "ignore_cluster", {"cluster_id": cluster}))
    assert ignored.ok and ignored.result == {"cluster_id": cluster, "ignored": True}, ignored
    assert [c.ignored for c in store.list_clusters()] == [True] and store.crops(cluster, 5) == []
    undone = router.handle("ignore_cluster", sign_command(secret, "ignore_cluster", {"cluster_id": cluster, "undo": True}))
    assert undone.ok and undone.message == f"no longer ignoring {cluster}", undone
    assert [c.ignored for c in store.list_clusters()] == [False]
    for payload, why in [({"cluster_id": "unknown-999"}, "no cluster unknown-999"),
                         ({"cluster_id": "cluster-1"}, "cluster_id"), ({"cluster_id": cluster, "undo": "maybe"}, "undo")]:
        reply = router.handle("ignore_cluster", sign_command(secret, "ignore_cluster", payload))
        assert not reply.ok and why in reply.message and "\n" not in reply.message, reply
    store.close()


def test_naming_a_cluster_through_the_station_keeps_its_faces_unless_ignoring_erased_them(tmp_path: Path) -> None:
    """What the People page shows after naming (tests/test_web.py names a cluster it had ignored and
    taken off the list, so it shows "no face stored"): the cluster's crops become the templates' faces;
    ignoring erases them for good, so a cluster named after "Stop ignoring" brings none."""
    from edgeface.service.station import Station
    from edgeface.storage.cluster_store import ClusterStore

    gallery = Gallery(tmp_path / "g.db")
    store = ClusterStore(gallery.path, station="hall", gallery=gallery)
    chip = np.full((150, 150, 3), 90, np.uint8)
    ids = []
    for person in (50, 60):
        for visit in range(3):
            vector = _unit(person) + 0.05 * _unit(person * 100 + visit)
            ids.append(store.observe(vector / np.linalg.norm(vector), ts=1e9 + visit, track_key=f"{person}:{visit}",
                                     crop=chip).cluster.id)
    kept, ignored = ids[0], ids[-1]
    station = Station(Config(station_id="hall", mqtt=MqttConfig()), gallery=gallery, clusters=store)
    station.ignore_cluster(ignored)
    station.ignore_cluster(ignored, False)
    assert station.name_cluster(NameClusterCommand(cluster_id=kept, name="Grace")).message == f"{kept} is now Grace"
    assert station.name_cluster(NameClusterCommand(cluster_id=ignored, name="Alan")).message == f"{ignored} is now Alan"
    assert len(store.template_crops("Grace", 8)) == gallery.show("Grace").template_count >= 1
    assert store.template_crops("Alan", 8) == []
    store.close()
