"""The ignore list ("not a face / ignore"): an ignored cluster keeps catching the same face, which is
then given no cluster (never offered again), its crops are erased, it survives a reopen and a
migration from the previous schema, and it can be taken off the list. Unlike forget, after which the
same face comes back as a new cluster. Real SQLite gallery file; random unit vectors."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from edgeface.recognition.clusters import ClusterError
from edgeface.recognition.decider import UnknownTrack
from edgeface.storage.cluster_store import CLUSTER_SCHEMA_VERSION, ClusterStage, ClusterStore


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _near(vector: np.ndarray, seed: int, noise: float = 0.01) -> np.ndarray:
    other = vector + noise * np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return other / np.linalg.norm(other)


def _track(embedding: np.ndarray, track_id: int) -> UnknownTrack:
    chip = np.full((150, 150, 3), 128, np.uint8)
    now = datetime.now(timezone.utc)
    return UnknownTrack(camera="door", track_id=track_id, embedding=embedding, quality=0.9, faces_used=3, started=now,
                        seen=now, chip=chip)


def test_an_ignored_face_is_not_offered_again(tmp_path: Path) -> None:
    face = _unit(1)
    with ClusterStore(tmp_path / "gallery.db") as store:
        stage = ClusterStage(store)
        first, _ = stage.assign(_track(face, 1))
        assert first is not None and store.crops(first.cluster_id, 4)
        assert store.ignore(first.cluster_id) == first.cluster_id
        assert store.crops(first.cluster_id, 4) == []  # its faces are not kept
        again, _ = stage.assign(_track(_near(face, 2), 2))
        assert again is None  # the same face: no cluster, so nothing new to name
        [info] = store.list_clusters()
        assert info.id == first.cluster_id and info.ignored and info.observations == 2
        assert store.crops(first.cluster_id, 4) == []  # nor the new sighting's
        other, _ = stage.assign(_track(_unit(3), 3))
        assert other is not None and other.cluster_id != first.cluster_id  # someone else is offered as usual

    with ClusterStore(tmp_path / "gallery.db") as store:  # kept across a restart
        stage = ClusterStage(store)
        assert stage.assign(_track(_near(face, 4), 4))[0] is None
        store.ignore(first.cluster_id, False)
        back, _ = stage.assign(_track(_near(face, 5), 5))
        assert back is not None and back.cluster_id == first.cluster_id

        # forget, by contrast, erases the cluster: the same face is offered again under a new id
        store.forget(first.cluster_id)
        new, _ = stage.assign(_track(_near(face, 6), 6))
        assert new is not None and new.cluster_id not in (first.cluster_id, other.cluster_id)


def test_a_gallery_from_the_previous_schema_gets_the_ignore_list(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    with ClusterStore(path) as store:
        kept = store.observe(_unit(1), ts=time.time(), track_key="t1").cluster.id
    with sqlite3.connect(path) as db:  # back to schema 2, as the previous edgeface left it
        for column in ("second_model_id", "second_model_version", "second_embedding"):
            db.execute(f"ALTER TABLE cluster_exemplars DROP COLUMN {column}")
        for column in ("second_sum", "second_count"):  # schema 5
            db.execute(f"ALTER TABLE cluster_clusters DROP COLUMN {column}")
        db.execute("ALTER TABLE cluster_clusters DROP COLUMN ignored")
        db.execute("DROP TABLE template_crops")
        db.execute("DROP TRIGGER template_crops_gone")
        db.execute("UPDATE cluster_schema_version SET version = 2")
    with ClusterStore(path) as store:
        [info] = store.list_clusters()
        assert info.id == kept and not info.ignored
        store.ignore(kept)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT MAX(version) FROM cluster_schema_version").fetchone()[0] == CLUSTER_SCHEMA_VERSION
        assert db.execute("SELECT ignored FROM cluster_clusters").fetchall() == [(1,)]


def test_a_schema_3_store_gets_sface_exemplars_and_names_its_old_ones_dlib_only(tmp_path: Path) -> None:
    from edgeface.recognition.clusters import SecondExemplar
    from edgeface.storage.gallery import Gallery

    path = tmp_path / "gallery.db"
    with ClusterStore(path) as store:
        old = store.observe(_unit(1), ts=time.time(), track_key="t1").cluster.id
    with sqlite3.connect(path) as db:  # back to schema 3, as issue 16's edgeface left it
        for column in ("second_model_id", "second_model_version", "second_embedding"):
            db.execute(f"ALTER TABLE cluster_exemplars DROP COLUMN {column}")
        for column in ("second_sum", "second_count"):  # schema 5
            db.execute(f"ALTER TABLE cluster_clusters DROP COLUMN {column}")
        db.execute("UPDATE cluster_schema_version SET version = 3")
    with ClusterStore(path) as store:
        new = store.observe(_unit(2), ts=time.time(), track_key="t2",
                            second=SecondExemplar("sface_2021dec", "int8", 3 * _unit(3))).cluster.id
        with pytest.raises(ClusterError, match="second-model embedding must be"):
            store.observe(_unit(4), ts=time.time(), track_key="t3", second=SecondExemplar("sface_2021dec", "int8", _unit(4)[:64]))
        store.name(old, "Ann")
        store.name(new, "Bo")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT MAX(version) FROM cluster_schema_version").fetchone()[0] == CLUSTER_SCHEMA_VERSION
        rows = db.execute("SELECT i.name, s.model_id, s.model_version, s.embedding FROM templates t JOIN identities i"
                          " ON i.id = t.identity_id LEFT JOIN second_embeddings s ON s.template_id = t.id").fetchall()
    by_name = {r[0]: r[1:] for r in rows}
    assert by_name["Ann"] == (None, None, None)  # exemplars from before keep dlib only
    assert by_name["Bo"][:2] == ("sface_2021dec", "int8")
    assert np.allclose(np.frombuffer(by_name["Bo"][2], "<f4"), _unit(3), atol=1e-6)
    with Gallery(path) as gallery:
        assert gallery.second_means("sface_2021dec").identities_with == 1


def test_stop_ignoring_brings_back_the_normal_expiry(tmp_path: Path) -> None:
    """Ignoring confirms a cluster (an ignored face must not age out and come back as new); taken off
    the list, its sightings decide again: one never confirmed by them expires like any tentative one,
    one they confirmed stays."""
    from edgeface.config import ClusterSettings

    settings = ClusterSettings(tentative_max_age_s=3600.0)
    day = 1.7e9
    with ClusterStore(tmp_path / "gallery.db", settings) as store:
        once = store.observe(_unit(1), ts=day, track_key="a").cluster.id  # one sighting: tentative
        often = store.observe(_unit(2), ts=day, track_key="b1").cluster.id
        for i, key in enumerate(("b2", "b3")):
            store.observe(_near(_unit(2), 10 + i), ts=day + 1 + i, track_key=key)
        statuses = {c.id: c.status for c in store.list_clusters()}
        assert statuses == {once: "tentative", often: "confirmed"}

        store.ignore(once)
        store.ignore(often)
        assert {c.id: c.status for c in store.list_clusters()} == {once: "confirmed", often: "confirmed"}
        store.observe(_unit(3), ts=day + 2 * 3600, track_key="c")  # later: an ignored cluster does not expire
        assert {once, often} <= {c.id for c in store.list_clusters()}

        store.ignore(once, False)
        store.ignore(often, False)
        assert {c.id: c.status for c in store.list_clusters() if c.id in (once, often)} == \
            {once: "tentative", often: "confirmed"}
        store.observe(_unit(4), ts=day + 3 * 3600, track_key="d")  # the next expiry check
        left = {c.id for c in store.list_clusters()}
        assert once not in left and often in left
