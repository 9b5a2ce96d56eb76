"""The fleet: change records, the merge rule, signatures, and stations (real gallery files, real
Mosquitto brokers on free ports, real `edgeface run` processes in the slow tests)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from _mqtt_helpers import MOSQUITTO, Collector, PrivateBroker

from edgeface.config import Config
from edgeface.storage.changes import (
    Clock,
    Face,
    PersonState,
    RecordError,
    content_id,
    display_names,
    encode_vector,
    merge,
    open_envelope,
    seal,
    tombstone,
)
from edgeface.storage.gallery import Gallery

KEY = b"fleet-test-key-0123456789abcdef"
needs_mosquitto = pytest.mark.skipif(not Path(MOSQUITTO).is_file(), reason="no mosquitto binary")


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _face(hlc: str, seed: int) -> Face:
    return Face(hlc, {"dlib_resnet_v1": encode_vector(_unit(seed))})


def _hlc(ms: int, station: str = "a") -> str:
    return f"{ms:013d}.00000.{station}"


# -- the merge rule --------------------------------------------------------------------------------


def test_merge_is_a_join_any_order_gives_one_state() -> None:
    pid = "p" * 24
    versions = [
        PersonState(pid, "alice", _hlc(1), None, {"t1": _face(_hlc(1), 1)}),
        PersonState(pid, "alicia", _hlc(5, "b"), None, {"t1": _face(_hlc(1), 1), "t2": _face(_hlc(5, "b"), 2)}),
        PersonState(pid, "alice", _hlc(1), None, {}, frozenset({"t1"}), {"n1": _face(_hlc(3), 3)}),
        PersonState(pid, "al", _hlc(4, "c"), None, {"t3": _face(_hlc(4, "c"), 4)}),
    ]
    results = set()
    for order in itertools.permutations(versions):
        state = order[0]
        for other in order[1:]:
            state = merge(state, other)
        assert merge(state, state).canonical() == state.canonical()  # idempotent
        results.add(state.canonical())
    assert len(results) == 1
    final = PersonState.from_json(json.loads(results.pop()))
    assert final.name == "alicia"  # the later name clock
    assert set(final.templates) == {"t2", "t3"} and final.removed == {"t1"}  # removed stays removed
    assert set(final.negatives) == {"n1"}


def test_forget_wins_over_any_concurrent_or_later_change() -> None:
    pid = "q" * 24
    live = PersonState(pid, "bob", _hlc(10), None, {"t1": _face(_hlc(10), 1)})
    renamed_later = PersonState(pid, "robert", _hlc(99), None, {"t1": _face(_hlc(10), 1), "t9": _face(_hlc(99), 9)})
    gone = tombstone(pid, _hlc(20))
    for a, b in itertools.permutations([live, renamed_later, gone], 2):
        if gone in (a, b):
            assert merge(a, b).deleted == _hlc(20)
    result = merge(merge(live, gone), renamed_later)
    assert result.deleted is not None and result.name is None and not result.templates and not result.negatives
    assert "robert" not in result.canonical().decode() and "bob" not in result.canonical().decode()


def test_two_live_people_with_one_name_first_claim_keeps_it() -> None:
    first = PersonState("a" * 24, "sam", _hlc(1), None, {"t": _face(_hlc(1), 1)})
    second = PersonState("b" * 24, "sam", _hlc(2), None, {"u": _face(_hlc(2), 2)})
    names = display_names([second, first])
    assert names == {"a" * 24: "sam", "b" * 24: "sam (bbbbbb)"}
    assert display_names([second, tombstone("a" * 24, _hlc(3))]) == {"b" * 24: "sam"}


def test_clock_moves_past_what_it_receives() -> None:
    clock = Clock("a", wall_ms=lambda: 1000)
    first = clock.now()
    clock.observe(_hlc(5000, "b"))
    later = clock.now()
    assert first < later and later > _hlc(5000, "b") and clock.now() > later


def test_forged_and_unsigned_records_are_refused() -> None:
    body = {"v": 1, "group": "g", "type": "person", "origin": "a", "state": {"pid": "x" * 24, "deleted": _hlc(1)}}
    sealed = seal(KEY, body)
    assert open_envelope(KEY, sealed, "g")["state"]["pid"] == "x" * 24
    with pytest.raises(RecordError, match="wrongly signed"):
        open_envelope(b"another key entirely, 32 chars", sealed, "g")
    tampered = json.loads(sealed)
    tampered["state"]["deleted"] = _hlc(2)
    with pytest.raises(RecordError, match="wrongly signed"):
        open_envelope(KEY, json.dumps(tampered).encode(), "g")
    with pytest.raises(RecordError, match="unsigned"):
        open_envelope(KEY, json.dumps(body).encode(), "g")
    with pytest.raises(RecordError, match="another group"):
        open_envelope(KEY, sealed, "h")


@pytest.mark.parametrize("state", [
    {"pid": "x" * 24, "name": "../etc", "name_hlc": _hlc(1)},
    {"pid": "x" * 24, "name": "ok", "name_hlc": "yesterday"},
    {"pid": "short", "deleted": _hlc(1)},
    {"pid": "x" * 24, "name": "ok", "name_hlc": _hlc(1), "templates": {"t": {"hlc": _hlc(1), "vectors": [
        {"model": "dlib_resnet_v1", "f32": "not base64!"}]}}},
    {"pid": "x" * 24, "name": "ok", "name_hlc": _hlc(1), "templates": {"t": {"hlc": _hlc(1), "quality": 7, "vectors": [
        {"model": "dlib_resnet_v1", "f32": encode_vector(_unit(1))}]}}},
])
def test_a_signed_but_malformed_record_is_refused_with_a_reason(state: dict) -> None:
    with pytest.raises(RecordError):
        PersonState.from_json(state)


# -- the change log --------------------------------------------------------------------------------


def test_every_gallery_write_leaves_a_change_row_in_its_transaction(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add_templates("ann", np.stack([_unit(1), _unit(2)]))
        gallery.rename("ann", "anna")
        gallery.reject_match("anna", _unit(1))
        with gallery.remote_changes():
            gallery.add_templates("anna", _unit(3)[None])
        gallery.remove("anna")
        kinds = [(c.kind, c.remote) for c in gallery.changes_after(0)]
        assert kinds == [("templates", False), ("renamed", False), ("rejected", False), ("templates", True),
                         ("removed", False)]
        assert gallery.changes_after(0)[0].identity_id == gallery.changes_after(0)[-1].identity_id
        gallery.prune_changes(gallery.last_change())
        assert gallery.changes_after(0) == []


# -- stations in one process (real galleries, a real broker) -------------------------------------------


def _config(station: str, port: int, group: str = "test") -> Config:
    return Config.model_validate({"station_id": station, "mqtt": {"url": f"mqtt://127.0.0.1:{port}"},
                                  "fleet": {"enabled": True, "group": group, "poll_s": 0.1}})


def _contents(gallery: Gallery) -> dict[str, tuple[int, int]]:
    return {i.name: (i.template_count, i.negative_count) for i in gallery.list_identities()}


def _wait(predicate, timeout_s: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@dataclass
class _Site:
    """A private broker and a gallery per station; the test adds the fleets (and any cluster stores)."""

    broker: PrivateBroker
    galleries: list[Gallery]
    fleets: list = field(default_factory=list)
    stores: list = field(default_factory=list)

    @classmethod
    def open(cls, tmp_path: Path, stations: str = "ab") -> _Site:
        broker = PrivateBroker(tmp_path)
        broker.start()
        return cls(broker, [Gallery(tmp_path / f"{s}.db") for s in stations])

    def start_fleets(self, stations: str = "ab") -> list:
        from edgeface.service.fleet import Fleet

        self.fleets.extend(Fleet(_config(f"st-{s}", self.broker.port), g, key=KEY).start()
                           for s, g in zip(stations, self.galleries))
        return self.fleets

    def close(self) -> None:
        """The fleets first, then the stores, the galleries and the broker."""
        for fleet in self.fleets:
            fleet.close()
        for store in self.stores:
            store.close()
        for gallery in self.galleries:
            gallery.close()
        self.broker.close()


@needs_mosquitto
def test_two_stations_converge_and_forget_everywhere(tmp_path: Path) -> None:
    from edgeface.service.fleet import Fleet

    site = _Site.open(tmp_path)
    broker, galleries = site.broker, site.galleries
    galleries[0].add_templates("existing", _unit(7)[None])  # enrolled before the fleet: published on join
    fleets = site.start_fleets()
    audit = Collector(broker.port, "edgeface/fleet/test/erased/#")
    try:
        assert _wait(lambda: _contents(galleries[1]) == {"existing": (1, 0)})
        # another process writes A's file (as `edgeface enroll` does)
        with Gallery(tmp_path / "a.db") as other:
            other.add_templates("zoe", np.stack([_unit(1), _unit(2)]))
        assert _wait(lambda: _contents(galleries[1]).get("zoe") == (2, 0))
        galleries[1].rename("zoe", "zoey")
        galleries[1].reject_match("zoey", _unit(1))
        assert _wait(lambda: _contents(galleries[0]) == _contents(galleries[1]) == {"existing": (1, 0), "zoey": (1, 1)}), \
            (_contents(galleries[0]), _contents(galleries[1]))
        # the identical embeddings, bit for bit
        a, b = (g.stored_person(g.identity_ids()["zoey"]) for g in galleries)
        assert a is not None and b is not None and a.templates[0][1].tobytes() == b.templates[0][1].tobytes()
        # a forged record: ignored and counted
        Collector(broker.port, "x/none").client.publish(
            "edgeface/fleet/test/person/" + "f" * 24,
            json.dumps({"v": 1, "group": "test", "type": "person", "origin": "evil", "sig": "00" * 32,
                        "state": {"pid": "f" * 24, "name": "mallory", "name_hlc": _hlc(1), "templates": {}}}),
            qos=1).wait_for_publish(5)
        assert _wait(lambda: fleets[0].stats.refused.get("wrongly signed", 0) >= 1)
        assert "mallory" not in _contents(galleries[0])
        # forget on B: gone from A, with an acknowledgement from both
        with Gallery(tmp_path / "b.db") as other:
            other.remove("zoey")
        assert _wait(lambda: "zoey" not in _contents(galleries[0]))
        assert _wait(lambda: len(audit.payloads()) >= 2)
        acks = [json.loads(p) for p in audit.payloads()]
        assert {a["origin"] for a in acks} == {"st-a", "st-b"} and all(a["templates"] == 1 for a in acks)

        # A stale station: B is down while "existing" is forgotten on A and "yan" enrolled; back, B erases
        # "existing" and gets "yan", and "existing" does not come back to A from B's stale copy.
        fleets[1].close()
        galleries[0].remove("existing")
        galleries[0].add_templates("yan", _unit(11)[None])
        fleets[1] = Fleet(_config("st-b", broker.port), galleries[1], key=KEY).start()
        assert _wait(lambda: _contents(galleries[1]) == {"yan": (1, 0)})
        time.sleep(1.0)
        assert _contents(galleries[0]) == {"yan": (1, 0)}
        # A new station catches up from the retained records alone: the living, never the forgotten.
        late = Gallery(tmp_path / "c.db")
        galleries.append(late)
        fleets.append(Fleet(_config("st-c", broker.port), late, key=KEY).start())
        assert _wait(lambda: _contents(late) == {"yan": (1, 0)})
        # Catching up re-sent nothing: the broker's retained records were up to date (after the settle time).
        time.sleep(3.5)
        assert fleets[1].stats.published == 0 and fleets[2].stats.published == 0, (fleets[1].stats, fleets[2].stats)
        # Enrolling a forgotten name again makes a new person, who is shared like any other.
        galleries[1].add_templates("zoey", _unit(21)[None])
        assert _wait(lambda: _contents(galleries[0]).get("zoey") == (1, 0) and _contents(late).get("zoey") == (1, 0))
    finally:
        audit.close()
        site.close()


@needs_mosquitto
def test_two_people_given_one_name_apart_are_told_apart_the_same_way_everywhere(tmp_path: Path) -> None:
    from edgeface.service.fleet import Fleet

    site = _Site.open(tmp_path)
    broker, galleries = site.broker, site.galleries
    galleries[0].add_templates("samuel", _unit(41)[None])
    fleets = site.start_fleets()
    try:
        assert _wait(lambda: _contents(galleries[1]) == {"samuel": (1, 0)})
        fleets[1].close()  # B is cut off
        galleries[0].rename("samuel", "sam")  # first claim of "sam"
        time.sleep(0.05)
        galleries[1].add_templates("sam", _unit(42)[None])  # another person, later, on the other side
        fleets[1] = Fleet(_config("st-b", broker.port), galleries[1], key=KEY).start()
        assert _wait(lambda: _contents(galleries[0]) == _contents(galleries[1]) and len(_contents(galleries[0])) == 2), \
            (_contents(galleries[0]), _contents(galleries[1]))
        names = sorted(_contents(galleries[0]))
        assert names[0] == "sam" and names[1].startswith("sam (") and len(names[1]) == len("sam (123456)")
        first = galleries[0].stored_person(galleries[0].identity_ids()["sam"])
        assert first is not None and np.allclose(first.templates[0][1], _unit(41), atol=1e-6)  # the first claim kept it
        # Renaming the second one anywhere ends the collision everywhere.
        galleries[1].rename(names[1], "samantha")
        assert _wait(lambda: sorted(_contents(galleries[0])) == ["sam", "samantha"] == sorted(_contents(galleries[1])))
    finally:
        site.close()


@needs_mosquitto
def test_another_models_vectors_travel_along_and_the_same_name_joins_one_person(tmp_path: Path) -> None:
    from edgeface.storage.changes import person_id

    site = _Site.open(tmp_path, "b")
    broker, (gallery,), (fleet,) = site.broker, site.galleries, site.start_fleets("b")
    pid = person_id(KEY, "kim", 0)
    records = Collector(broker.port, f"edgeface/fleet/test/person/{pid}")
    try:
        # A station running another embedder enrolled kim: a template with an SFace vector only.
        foreign = PersonState(pid, "kim", _hlc(1, "st-x"), None, {"s1": Face(_hlc(1, "st-x"), {"sface_v1": encode_vector(
            np.ones(128, np.float32) / np.sqrt(128))})})
        body = {"v": 1, "group": "test", "type": "person", "origin": "st-x", "state": foreign.to_json()}
        records.client.publish(f"edgeface/fleet/test/person/{pid}", seal(KEY, body), qos=1, retain=True).wait_for_publish(5)
        assert _wait(lambda: pid in fleet.state.people)
        assert _contents(gallery) == {}  # nothing this station's model can match with
        # kim enrolled here too: the same person (the same pid); the record carries both models' templates.
        gallery.add_templates("kim", _unit(51)[None])

        def latest() -> dict:
            return json.loads(records.payloads()[-1])["state"] if records.payloads() else {}

        assert _wait(lambda: len(latest().get("templates", {})) == 2)
        models = sorted(v["model"] for t in latest()["templates"].values() for v in t["vectors"])
        assert models == ["dlib_resnet_v1", "sface_v1"] and _contents(gallery) == {"kim": (1, 0)}
    finally:
        records.close()
        site.close()


@needs_mosquitto
def test_the_second_opinions_embeddings_travel_with_their_templates_never_the_chips(tmp_path: Path) -> None:
    from edgeface.storage.gallery import SecondTemplate

    site = _Site.open(tmp_path)
    galleries = site.galleries
    site.start_fleets()
    chip = np.full((112, 112, 3), 7, np.uint8)
    try:
        galleries[0].add_templates("uma", np.stack([_unit(61), _unit(62)]),
                                   second=[SecondTemplate("sface_2021dec", "int8", _unit(71), chip), None])

        def seconds(gallery: Gallery) -> dict:
            ids = gallery.identity_ids()
            person = gallery.stored_person(ids["uma"]) if "uma" in ids else None
            return {} if person is None else {content_id(t[1]): person.seconds.get(t[0]) for t in person.templates}

        assert _wait(lambda: len(seconds(galleries[1])) == 2)
        at_b = seconds(galleries[1])
        with_second = [s for s in at_b.values() if s is not None]
        assert len(with_second) == 1 and with_second[0].model_id == "sface_2021dec" and with_second[0].model_version == "int8"
        assert np.allclose(with_second[0].embedding, _unit(71), atol=1e-6)
        assert galleries[1].stored_person(galleries[1].identity_ids()["uma"]) is not None
        import sqlite3

        assert sqlite3.connect(tmp_path / "b.db").execute("SELECT COUNT(*) FROM template_chips").fetchone() == (0,)
        # `edgeface gallery upgrade` gives the other template its SFace embedding later: that travels too.
        person = galleries[0].stored_person(galleries[0].identity_ids()["uma"])
        assert person is not None
        missing = next(t[0] for t in person.templates if t[0] not in person.seconds)
        galleries[0].add_second_embeddings([(missing, SecondTemplate("sface_2021dec", "int8", _unit(72)))])
        assert _wait(lambda: all(s is not None for s in seconds(galleries[1]).values()))
    finally:
        site.close()


def _sightings(store, base: np.ndarray, station: str, start: float, tracks: int = 3) -> str:  # type: ignore[no-untyped-def]
    """`tracks` tracks of one stranger (noisy copies of `base`) at `store`; returns their cluster id."""
    rng = np.random.default_rng(int(start))
    cluster = ""
    for k in range(tracks):
        face = base + rng.normal(scale=0.02, size=128).astype(np.float32)
        cluster = store.observe(face / np.linalg.norm(face), quality=0.9, ts=start + 30 * k,
                                track_key=f"{station}:{start}:{k}").cluster.id
    return cluster


@needs_mosquitto
def test_one_stranger_at_two_stations_is_one_fleet_wide_unknown_named_everywhere(tmp_path: Path) -> None:
    from edgeface.service.fleet import Fleet
    from edgeface.storage.cluster_store import ClusterStore

    site = _Site.open(tmp_path)
    broker, galleries = site.broker, site.galleries
    stores = site.stores
    stores.extend(ClusterStore(g.path, station=f"st-{s}", gallery=g) for s, g in zip("ab", galleries))
    events: list[list] = [[], []]
    fleets = site.fleets
    fleets.extend(Fleet(_config(f"st-{s}", broker.port), g, key=KEY, clusters=c, emit=e.append)
                  for s, g, c, e in zip("ab", galleries, stores, events))
    stranger, newcomer = _unit(31), _unit(32)
    try:
        for fleet in fleets:
            fleet.clusters.use_number_block(fleet.block * 1_000_000, (fleet.block + 1) * 1_000_000)  # type: ignore[union-attr]
        # Before the fleet links them, B saw the stranger first (t=1000), A later (t=5000): two local ids.
        at_b = _sightings(stores[1], stranger, "b", 1000.0)
        at_a = _sightings(stores[0], stranger, "a", 5000.0)
        assert at_a != at_b
        for fleet in fleets:
            fleet.start()
        # Linked: one fleet-wide id, B's (the older), at both stations; A says so with a cluster_merged.
        assert _wait(lambda: [c.id for c in stores[0].list_clusters()] == [at_b] == [c.id for c in stores[1].list_clusters()]), \
            ([c.id for c in stores[0].list_clusters()], [c.id for c in stores[1].list_clusters()])
        assert any(getattr(e, "kept_id", None) == at_b and e.merged_id == at_a for e in events[0])
        # A newcomer confirmed at A is adopted by B: B's first sighting of them joins A's id.
        first = _sightings(stores[0], newcomer, "a", 9000.0)
        assert _wait(lambda: first in [c.id for c in stores[1].list_clusters()])
        assert _sightings(stores[1], newcomer, "b", 9500.0, tracks=1) == first
        # Naming it at B names it at A too: the person reaches A's gallery and A's cluster is retired.
        stores[1].name(at_b, "yolanda", force=True)
        assert _wait(lambda: "yolanda" in _contents(galleries[0]) and at_b not in [c.id for c in stores[0].list_clusters()])
        assert any(getattr(e, "type", "") == "cluster_named" and e.name == "yolanda" for e in events[0])
    finally:
        site.close()


def test_fleet_without_key_refuses_to_join(tmp_path: Path) -> None:
    video = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video" / "hamilton_clip.mp4"
    if not video.is_file():
        pytest.skip("../shared/data is absent")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"fleet": {"enabled": True, "group": "g"}}))
    env = {k: v for k, v in os.environ.items() if k != "EDGEFACE_FLEET_KEY"}
    env.pop("CREDENTIALS_DIRECTORY", None)
    Gallery(tmp_path / "g.db").close()
    result = subprocess.run([sys.executable, "-m", "edgeface.cli", "run", "--source", str(video), "--config", str(config),
                             "--gallery", str(tmp_path / "g.db"), "--sink", "jsonl"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no shared key" in lines[0] and "does not join" in lines[0], result.stderr


# -- stations as `edgeface run` processes ------------------------------------------------------------

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAMILTON = DATA / "video" / "hamilton_clip.mp4"
PEOPLE = DATA / "people"
needs_data = pytest.mark.skipif(not (HAMILTON.is_file() and PEOPLE.is_dir()), reason="../shared/data is absent")
GROUP = "proc"


class RunningStation:
    """`edgeface run` in its own process, in a fleet, its events on `port`'s broker."""

    def __init__(self, tmp_path: Path, name: str, port: int, source: str, max_fps: float = 5.0) -> None:
        self.name = name
        self.gallery = tmp_path / f"{name}.db"
        if not self.gallery.exists():
            Gallery(self.gallery).close()
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps({
            "station_id": name, "pipeline": {"source": {"max_fps": max_fps}},
            "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "outbox_path": str(tmp_path / f"{name}-outbox.sqlite"),
                     "stats_interval_s": 30, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
            "fleet": {"enabled": True, "group": GROUP, "poll_s": 0.2}}))
        self.log = (tmp_path / f"{name}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgeface.cli", "run", "--source", source, "--config", str(config),
             "--gallery", str(self.gallery)], stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, "EDGEFACE_FLEET_KEY": KEY.decode(), "OMP_NUM_THREADS": "1"})

    def contents(self) -> dict[str, list[str]]:
        """Every identity with the digests of its templates and negatives: equal means identical."""
        from edgeface.storage.changes import content_id

        with Gallery(self.gallery, read_only=True) as gallery:
            out = {}
            for name, identity_id in gallery.identity_ids().items():
                person = gallery.stored_person(identity_id)
                assert person is not None
                out[name] = sorted(content_id(t[1]) for t in person.templates) + \
                    sorted("n" + content_id(n[1]) for n in person.negatives)
            return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def _cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "edgeface.cli", *args], capture_output=True, text=True, timeout=180,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def _online(status: Collector, names: list[str]) -> bool:
    seen = set()
    for _topic, payload, _ in list(status.messages):
        body = json.loads(payload)
        if body.get("online"):
            seen.add(body["origin"])
    return set(names) <= seen


def _shut_down(*things) -> None:  # type: ignore[no-untyped-def]
    """Ends each in the order given: closes what can be closed (collectors, brokers), stops the rest."""
    for thing in things:
        thing.close() if hasattr(thing, "close") else thing.stop()


def _blank_camera():  # type: ignore[no-untyped-def]
    from _mjpeg import MjpegServer

    return MjpegServer(fps=5).start()


@needs_mosquitto
@needs_data
@pytest.mark.slow
def test_three_stations_one_broker_enroll_reaches_the_camera_forget_reaches_everyone(tmp_path: Path) -> None:
    from test_run_mqtt import ClipServer

    broker = PrivateBroker(tmp_path)
    broker.start()
    clip = ClipServer(HAMILTON, fps=10).start()
    blanks = [_blank_camera(), _blank_camera()]
    status = Collector(broker.port, f"edgeface/fleet/{GROUP}/station/+")
    acks = Collector(broker.port, f"edgeface/fleet/{GROUP}/erased/#")
    events = Collector(broker.port, "edgeface/st-c/events/recognized")
    forgotten = Collector(broker.port, "edgeface/+/events/person_forgotten")
    stations = [RunningStation(tmp_path, "st-a", broker.port, blanks[0].url),
                RunningStation(tmp_path, "st-b", broker.port, blanks[1].url),
                RunningStation(tmp_path, "st-c", broker.port, clip.url, max_fps=10)]
    a, b, c = stations
    try:
        assert _wait(lambda: _online(status, ["st-a", "st-b", "st-c"]), 90), "the stations did not join"
        # Enroll on A's file while A runs; C, watching the clip, recognises him within 30 s.
        _cli("enroll", "lin_manuel_miranda", str(PEOPLE / "lin_manuel_miranda"), "--gallery", str(a.gallery))
        enrolled = time.monotonic()
        assert _wait(lambda: any(json.loads(p)["name"] == "lin_manuel_miranda" for p in events.payloads()), 30), \
            "C did not recognise the person enrolled on A within 30 s"
        print(f"enroll on A -> recognised on C: {time.monotonic() - enrolled:.1f} s")
        assert _wait(lambda: a.contents() == b.contents() == c.contents() and "lin_manuel_miranda" in b.contents(), 10)

        # A forged record: ignored (no gallery gains it) and counted.
        forger = Collector(broker.port, "nothing/here")
        forger.client.publish(f"edgeface/fleet/{GROUP}/person/" + "e" * 24, json.dumps(
            {"v": 1, "group": GROUP, "type": "person", "origin": "st-x", "sig": "ab" * 32,
             "state": {"pid": "e" * 24, "deleted": None, "name": "mallory", "name_hlc": _hlc(1)}}), qos=1,
            retain=True).wait_for_publish(5)
        forger.close()

        # Forget on B: gone from every gallery within 30 s, and every station acknowledges it.
        _cli("gallery", "remove", "lin_manuel_miranda", "--gallery", str(b.gallery))
        removed = time.monotonic()
        assert _wait(lambda: all("lin_manuel_miranda" not in s.contents() for s in stations), 30)
        print(f"forget on B -> gone everywhere: {time.monotonic() - removed:.1f} s")
        assert _wait(lambda: len({json.loads(p)["origin"] for p in acks.payloads()}) == 3, 10)
        assert all(json.loads(p)["templates"] == 1 for p in acks.payloads())
        # The stations it was forgotten at from afar say so on their own event topics too.
        assert _wait(lambda: {(json.loads(p)["station"], json.loads(p)["name"]) for p in forgotten.payloads()}
                     >= {("st-a", "lin_manuel_miranda"), ("st-c", "lin_manuel_miranda")}, 15)
        assert all("mallory" not in s.contents() for s in stations)
        # The refusal shows in each station's status record (sent every 10 s).
        assert _wait(lambda: any(json.loads(p)["stats"]["refused"].get("wrongly signed", 0) >= 1
                                 for p in status.payloads() if json.loads(p)["origin"] == "st-c"), 15)
        for station in stations:
            assert station.process.poll() is None
    finally:
        _shut_down(*stations, status, acks, events, forgotten, clip, *blanks, broker)


@needs_mosquitto
@needs_data
@pytest.mark.slow
def test_two_sites_bridged_partition_and_heal_converge_by_the_rule(tmp_path: Path) -> None:
    from test_run_mqtt import ClipServer

    site1 = PrivateBroker(tmp_path)
    site1.start()
    site2 = PrivateBroker(tmp_path, extra_config=(
        f"connection site2-site1\naddress 127.0.0.1:{site1.port}\ntopic edgeface/fleet/# both 1\n"
        "cleansession true\nrestart_timeout 1\nkeepalive_interval 5\n"))
    site2.start()
    blanks = [_blank_camera(), _blank_camera()]
    clip = ClipServer(HAMILTON, fps=10).start()
    status = Collector(site1.port, f"edgeface/fleet/{GROUP}/station/+")
    acks = Collector(site2.port, f"edgeface/fleet/{GROUP}/erased/#")
    events = Collector(site2.port, "edgeface/site2-c/events/recognized")
    a = RunningStation(tmp_path, "site1-a", site1.port, blanks[0].url)
    b = RunningStation(tmp_path, "site2-b", site2.port, blanks[1].url)
    c = RunningStation(tmp_path, "site2-c", site2.port, clip.url, max_fps=10)
    try:
        assert _wait(lambda: _online(status, ["site1-a", "site2-b", "site2-c"]), 90), "the stations did not join"
        # Enrolled at site 1, recognised by the camera at site 2 across the bridge.
        _cli("enroll", "lin_manuel_miranda", str(PEOPLE / "lin_manuel_miranda"), "--gallery", str(a.gallery))
        assert _wait(lambda: any(json.loads(p)["name"] == "lin_manuel_miranda" for p in events.payloads()), 30), \
            "site 2's camera did not recognise the person enrolled at site 1 within 30 s"
        others = tmp_path / "others"
        others.mkdir()
        for person in ("alex_lacamoire", "barack_obama", "joe_biden"):
            (others / person).symlink_to(PEOPLE / person)
        _cli("enroll", "--from-folders", str(others), "--gallery", str(a.gallery))
        assert _wait(lambda: a.contents() == b.contents() == c.contents() and len(b.contents()) == 4, 30), \
            (a.contents(), b.contents())

        # Partition: site 2's broker dies; both sides change the same people.
        site2.stop()
        _cli("gallery", "rename", "lin_manuel_miranda", "Lin-Manuel", "--gallery", str(a.gallery))
        _cli("gallery", "rename", "joe_biden", "joe", "--gallery", str(a.gallery))
        _cli("gallery", "remove", "lin_manuel_miranda", "--gallery", str(b.gallery))
        _cli("gallery", "rename", "joe_biden", "joseph biden", "--gallery", str(b.gallery))  # later: wins
        time.sleep(1.0)
        assert "Lin-Manuel" in a.contents() and "lin_manuel_miranda" not in b.contents()

        # Heal: the rule says forget beats the rename, the later rename beats the earlier one.
        site2.start()
        assert _wait(lambda: a.contents() == b.contents() == c.contents(), 45), \
            (sorted(a.contents()), sorted(b.contents()), sorted(c.contents()))
        names = set(a.contents())
        assert names == {"alex_lacamoire", "barack_obama", "joseph biden"}, names
        assert _wait(lambda: {json.loads(p)["origin"] for p in acks.payloads()} >= {"site1-a", "site2-b", "site2-c"}, 15)
    finally:
        _shut_down(a, b, c, status, acks, events, *blanks, clip, site2, site1)


@needs_mosquitto
@needs_data
@pytest.mark.slow
def test_two_stations_watching_one_stranger_give_one_unknown_id_and_name_it_together(tmp_path: Path) -> None:
    from test_run_mqtt import ClipServer

    broker = PrivateBroker(tmp_path)
    broker.start()
    clip = ClipServer(HAMILTON, fps=30).start()
    unknowns = Collector(broker.port, "edgeface/+/events/unknown")
    named = Collector(broker.port, "edgeface/+/events/cluster_named")
    a = RunningStation(tmp_path, "st-a", broker.port, clip.url, max_fps=10)
    b = RunningStation(tmp_path, "st-b", broker.port, clip.url, max_fps=10)

    def common() -> set[str]:
        seen: dict[str, set[str]] = {"st-a": set(), "st-b": set()}
        for payload in unknowns.payloads():
            event = json.loads(payload)
            if event.get("cluster_status") == "confirmed":
                seen[event["station"]].add(event["cluster_id"])
        return seen["st-a"] & seen["st-b"]

    try:
        assert _wait(lambda: bool(common()), 120), "no stranger got one id at both stations"
        shared = sorted(common())[0]
        _cli("clusters", "name", shared, "the_stranger", "--gallery", str(b.gallery))
        assert _wait(lambda: "the_stranger" in a.contents(), 30)
        assert _wait(lambda: any(json.loads(p)["station"] == "st-a" and json.loads(p)["cluster_id"] == shared
                                 for p in named.payloads()), 30), "A did not name its copy of the stranger"
        for station in (a, b):
            assert station.process.poll() is None
    finally:
        _shut_down(a, b, unknowns, named, clip, broker)


def test_doctor_says_whether_the_fleet_key_is_there(tmp_path: Path) -> None:
    from edgeface.service.doctor import check_fleet, private_paths

    assert check_fleet(Config()) is None
    key_file = tmp_path / "fleet_key"
    config = Config.model_validate({"fleet": {"enabled": True, "group": "home", "key_file": str(key_file)}})
    missing = check_fleet(config, environ={})
    assert missing is not None and missing.status == "fail" and "does not exist" in missing.detail
    key_file.write_text("k" * 32 + "\n")
    found = check_fleet(config, environ={})
    assert found is not None and found.status == "ok"
    assert key_file in private_paths(config, tmp_path / "g.db", environ={})[0]  # a key must be 0600 like a secret
