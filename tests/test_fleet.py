"""The fleet: change records, the merge rule, signatures, and stations (real gallery files, real
Mosquitto brokers on free ports, real `edgeface run` processes in the slow tests)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
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


@needs_mosquitto
def test_two_stations_converge_and_forget_everywhere(tmp_path: Path) -> None:
    from edgeface.service.fleet import Fleet

    broker = PrivateBroker(tmp_path)
    broker.start()
    galleries = [Gallery(tmp_path / f"{s}.db") for s in "ab"]
    galleries[0].add_templates("existing", _unit(7)[None])  # enrolled before the fleet: published on join
    fleets = [Fleet(_config(f"st-{s}", broker.port), g, key=KEY).start() for s, g in zip("ab", galleries)]
    audit = Collector(broker.port, "edgeface/fleet/test/erased/#")
    try:
        assert _wait(lambda: _contents(galleries[1]) == {"existing": (1, 0)})
        # another process writes A's file (as `edgeface enroll` does)
        with Gallery(tmp_path / "a.db") as other:
            other.add_templates("zoe", np.stack([_unit(1), _unit(2)]))
        assert _wait(lambda: _contents(galleries[1]).get("zoe") == (2, 0))
        galleries[1].rename("zoe", "zoey")
        galleries[1].reject_match("zoey", _unit(1))
        assert _wait(lambda: _contents(galleries[0]) == _contents(galleries[1]) == {"existing": (1, 0), "zoey": (1, 1)})
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
    finally:
        audit.close()
        for fleet in fleets:
            fleet.close()
        for gallery in galleries:
            gallery.close()
        broker.close()


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
