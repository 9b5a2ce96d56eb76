from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edgeface.config import ClusterSettings
from edgeface.errors import GalleryError
from edgeface.eval.cluster import cluster_scores, measure_speed
from edgeface.events import (
    ClusterMergedEvent,
    ClusterNamedEvent,
    UnknownEvent,
    parse_event,
)
from edgeface.recognition.clusters import ClusterError, OnlineClusters, parse_cluster_id
from edgeface.storage.cluster_store import CLUSTER_SCHEMA_VERSION, ClusterStore
from edgeface.storage.gallery import Gallery

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster_faces import LFW, lfw_faces, of

needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason="../shared/data/lfw is absent")
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=timezone.utc)


def _store(tmp_path: Path, **settings) -> ClusterStore:
    return ClusterStore(tmp_path / "gallery.db", ClusterSettings(**settings), station="st1")


# -- input checks (no data needed) ---------------------------------------------------------


def test_settings_and_ids_are_checked() -> None:
    with pytest.raises(ValidationError):
        ClusterSettings(assign_max_distance=0)
    with pytest.raises(ValidationError):
        ClusterSettings(typo_field=1)  # type: ignore[call-arg]
    assert parse_cluster_id(" unknown-17 ") == 17
    for bad in ("unknown-", "unknown-x", "17", "Unknown-3", "unknown-1234567890"):
        with pytest.raises(ClusterError, match="cluster ids look like unknown-17"):
            parse_cluster_id(bad)


@pytest.mark.parametrize(("embedding", "message"), [
    (np.full(128, np.nan, np.float32), "NaN"),
    (np.zeros(128, np.float32), "all zeros"),
    (np.ones(64, np.float32), "shape"),
    (np.ones((2, 128), np.float32), "one embedding per observation"),
])
def test_bad_embeddings_are_refused_and_nothing_is_written(tmp_path: Path, embedding: np.ndarray, message: str) -> None:
    with _store(tmp_path) as store:
        with pytest.raises(ClusterError, match=message) as caught:
            store.observe(embedding, ts=T0, track_key="t1")
        assert "\n" not in str(caught.value)
        assert store.list_clusters() == []
    with _store(tmp_path) as store:
        assert store.list_clusters() == []


def test_bad_quality_and_naive_time_are_refused(tmp_path: Path) -> None:
    vector = np.eye(128, dtype=np.float32)[0]
    with _store(tmp_path) as store:
        with pytest.raises(ClusterError, match="quality"):
            store.observe(vector, quality=1.5, ts=T0, track_key="t")
        with pytest.raises(ClusterError, match="timezone-aware"):
            store.observe(vector, ts=datetime(2026, 5, 1), track_key="t")
        assert store.list_clusters() == []


def test_cluster_tables_live_beside_the_gallery(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    with Gallery(path) as gallery:
        gallery.add_templates("Ann", np.eye(128, dtype=np.float32)[:1])
    with ClusterStore(path) as store:
        store.observe(np.eye(128, dtype=np.float32)[5], ts=T0, track_key="t")
    with Gallery(path, create=False) as gallery:  # the gallery still opens and is intact
        assert [i.name for i in gallery.list_identities()] == ["Ann"]
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"identities", "templates", "cluster_clusters", "cluster_exemplars", "cluster_schema_version"} <= tables


def test_update_cost_grows_at_most_linearly_with_the_clusters() -> None:
    """One update is one (clusters x 128) product or two: 10x the clusters costs at most ~10x (a ratio measured
    in one run, not a time; `edgeface eval cluster` prints the time itself)."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(50, 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    small = measure_speed(centres, ClusterSettings(), clusters=1_000, updates=200, persisted_updates=20)
    large = measure_speed(centres, ClusterSettings(), clusters=10_000, updates=200, persisted_updates=20)
    assert 0 < small.memory_ms_median and 0 < large.persisted_ms_median
    assert large.memory_ms_median < 15 * small.memory_ms_median, (small, large)


# -- real faces ----------------------------------------------------------------------------


def _stream(clusters: OnlineClusters, faces, order) -> list[str]:
    """Final cluster id of each face (in the faces' order) after streaming them in `order`."""
    assigned, redirect = {}, {}
    for k, i in enumerate(order):
        update = clusters.observe(faces[i].embedding, ts=60.0 * k, track_key=f"t{k}")
        assigned[i] = update.cluster.id
        redirect.update({gone: kept for kept, gone in update.merged})

    def final(cluster: str) -> str:
        while cluster in redirect:
            cluster = redirect[cluster]
        return cluster

    return [final(assigned[i]) for i in range(len(faces))]


@needs_lfw
def test_real_faces_group_by_person_whatever_the_order() -> None:
    faces = lfw_faces()
    truth = [f.person for f in faces]
    scores = []
    for seed in range(4):
        order = np.random.default_rng(seed).permutation(len(faces))
        scores.append(cluster_scores(_stream(OnlineClusters(), faces, order), truth))
    assert min(s.bcubed_f for s in scores) >= 0.93, scores
    assert max(s.bcubed_f for s in scores) - min(s.bcubed_f for s in scores) <= 0.05
    assert all(abs(s.clusters - s.classes) <= 2 for s in scores)
    # a too loose threshold lumps strangers together: the measured default is what makes this work
    loose = cluster_scores(_stream(OnlineClusters(ClusterSettings(assign_max_distance=0.6)), faces, range(len(faces))), truth)
    assert loose.bcubed_f < min(s.bcubed_f for s in scores)


@needs_lfw
def test_same_person_returns_to_the_same_stable_id_across_restarts(tmp_path: Path) -> None:
    colin, hugo = of("Colin_Powell"), of("Hugo_Chavez")
    with _store(tmp_path) as store:
        first = store.observe(colin[0].embedding, ts=T0, track_key="a")
        assert first.created and first.cluster.id == "unknown-1" and first.cluster.status == "tentative"
        assert store.observe(hugo[0].embedding, ts=T0 + timedelta(minutes=1), track_key="b").cluster.id == "unknown-2"
        store.observe(colin[1].embedding, ts=T0 + timedelta(minutes=2), track_key="c")
    with _store(tmp_path) as store:  # restart
        assert [(c.id, c.observations) for c in store.list_clusters()] == [("unknown-1", 2), ("unknown-2", 1)]
        again = store.observe(colin[2].embedding, ts=T0 + timedelta(days=1), track_key="d")
        assert again.cluster.id == "unknown-1" and not again.created
        # 2 minutes apart is one visit (visit_gap_s 300), the next day another
        assert again.cluster.visits == 2 and again.cluster.observations == 3 and again.cluster.first_seen == T0


@needs_lfw
def test_ids_are_never_reused(tmp_path: Path) -> None:
    colin, hugo, jean = of("Colin_Powell"), of("Hugo_Chavez"), of("Jean_Chretien")
    with _store(tmp_path) as store:
        store.observe(colin[0].embedding, ts=T0, track_key="a")
        store.observe(hugo[0].embedding, ts=T0, track_key="b")
        assert store.forget("unknown-2") == "unknown-2"
        assert store.observe(hugo[1].embedding, ts=T0, track_key="c").cluster.id == "unknown-3"
        with pytest.raises(ClusterError, match="unknown-2 was forgotten"):
            store.show("unknown-2")
    with _store(tmp_path) as store:
        assert store.observe(jean[0].embedding, ts=T0, track_key="d").cluster.id == "unknown-4"
        store.forget("unknown-4")
    with _store(tmp_path) as store:  # the highest id was forgotten: the counter still does not go back
        assert store.observe(jean[1].embedding, ts=T0, track_key="e").cluster.id == "unknown-5"


def _merging_triple(faces) -> tuple[int, int, int]:
    """Three photos of one person such that the first two open two clusters and the third joins one
    of them and makes the two one (found by running the real clustering)."""
    for a, b, c in itertools.permutations(range(len(faces)), 3):
        clusters = OnlineClusters()
        updates = [clusters.observe(faces[i].embedding, ts=float(k), track_key=str(k)) for k, i in enumerate((a, b, c))]
        if updates[1].created and updates[2].merged:
            return a, b, c
    raise AssertionError("no merge among these photos")


@needs_lfw
def test_a_merge_keeps_the_older_id_and_reports_both(tmp_path: Path) -> None:
    faces = of("Hugo_Chavez")
    a, b, c = _merging_triple(faces)
    with _store(tmp_path) as store:
        store.observe(faces[a].embedding, ts=T0, track_key="a")
        assert store.observe(faces[b].embedding, ts=T0 + timedelta(minutes=1), track_key="b").cluster.id == "unknown-2"
        update = store.observe(faces[c].embedding, ts=T0 + timedelta(minutes=2), track_key="c")
        assert update.merged == [("unknown-1", "unknown-2")]
        assert update.cluster.id == "unknown-1" and update.cluster.observations == 3
        assert update.cluster.status == "confirmed"  # 3 observations from 3 tracks
        events = update.events(station="st1", camera="cam1", track_id=7, faces_used=4)
        assert isinstance(events[0], ClusterMergedEvent) and (events[0].kept_id, events[0].merged_id) == ("unknown-1", "unknown-2")
        assert isinstance(events[1], UnknownEvent) and events[1].cluster_id == "unknown-1"
        assert [type(parse_event(e.to_json())) for e in events] == [ClusterMergedEvent, UnknownEvent]
    with _store(tmp_path) as store:
        assert [c.id for c in store.list_clusters()] == ["unknown-1"]
        with pytest.raises(ClusterError, match="unknown-2 was merged into unknown-1"):
            store.name("unknown-2", "Hugo")


@needs_lfw
def test_manual_merge_keeps_the_older_id(tmp_path: Path) -> None:
    with _store(tmp_path, max_exemplars=3) as store:
        store.observe(of("Colin_Powell")[0].embedding, ts=T0, track_key="a")
        for k, face in enumerate(of("Hugo_Chavez")[:3]):
            store.observe(face.embedding, ts=T0, track_key=f"h{k}")
        event = store.merge("unknown-2", "unknown-1")
        assert (event.kept_id, event.merged_id) == ("unknown-1", "unknown-2")
        info, exemplars = store.show("unknown-1")
        assert info.observations == 4 and len(exemplars) == 3
        with pytest.raises(ClusterError, match="same cluster"):
            store.merge("unknown-1", "unknown-1")


@needs_lfw
def test_tentative_until_n_observations_from_two_tracks(tmp_path: Path) -> None:
    faces = of("Serena_Williams")
    with _store(tmp_path, min_observations=3, min_tracks=2) as store:
        statuses = [store.observe(f.embedding, ts=T0, track_key="same-track").cluster.status for f in faces[:4]]
        assert statuses == ["tentative"] * 4  # one long track is not enough, however often it is seen
        assert store.observe(faces[4].embedding, ts=T0, track_key="other").cluster.status == "confirmed"


@needs_lfw
def test_exemplars_are_capped_and_keep_the_best(tmp_path: Path) -> None:
    faces = of("Junichiro_Koizumi")
    with _store(tmp_path, max_exemplars=3) as store:
        for k, face in enumerate(faces):
            quality = 0.95 if k == 2 else 0.3
            store.observe(face.embedding, quality=quality, ts=T0 + timedelta(minutes=k), track_key=f"t{k}")
        [info] = store.list_clusters()
        _, exemplars = store.show(info.id)
    assert info.observations == len(faces) and len(exemplars) == 3
    rows = sqlite3.connect(tmp_path / "gallery.db").execute("SELECT COUNT(*) FROM cluster_exemplars").fetchone()[0]
    assert rows == 3
    # of the closest pair the lower-quality face goes: the best face can never be dropped
    assert max(e.quality for e in exemplars) == 0.95


@needs_lfw
def test_one_off_clusters_age_out_but_confirmed_ones_stay(tmp_path: Path) -> None:
    colin, stranger, hugo = of("Colin_Powell"), of("AJ_Lamas")[0], of("Hugo_Chavez")[0]
    with _store(tmp_path, tentative_max_age_s=3600) as store:
        for k, face in enumerate(colin[:3]):
            store.observe(face.embedding, ts=T0 + timedelta(minutes=k), track_key=f"c{k}")
        store.observe(stranger.embedding, ts=T0, track_key="s")
        assert [c.status for c in store.list_clusters()] == ["confirmed", "tentative"]
        later = store.observe(hugo.embedding, ts=T0 + timedelta(hours=2), track_key="h")
        assert later.expired == ["unknown-2"] and later.cluster.id == "unknown-3"
        assert [c.id for c in store.list_clusters()] == ["unknown-1", "unknown-3"]
    with _store(tmp_path, tentative_max_age_s=3600) as store:
        assert [c.id for c in store.list_clusters()] == ["unknown-1", "unknown-3"]
        assert store.expire(T0 + timedelta(days=30)) == ["unknown-3"]
        assert [c.id for c in store.list_clusters()] == ["unknown-1"]


@needs_lfw
def test_naming_moves_the_cluster_into_the_gallery(tmp_path: Path) -> None:
    serena = of("Serena_Williams")
    with _store(tmp_path) as store:
        for k, face in enumerate(serena[:4]):
            store.observe(face.embedding, ts=T0 + timedelta(minutes=k), track_key=f"t{k}")
        store.observe(of("Hugo_Chavez")[0].embedding, ts=T0, track_key="h")
        with Gallery(tmp_path / "gallery.db") as gallery:
            assert gallery.match(serena[5].embedding[None])[0].name is None  # not known yet
        with pytest.raises(GalleryError, match="path separator"):
            store.name("unknown-1", "bad/name")
        event = store.name("unknown-1", "Serena")
        assert isinstance(event, ClusterNamedEvent) and (event.cluster_id, event.name, event.station) == ("unknown-1", "Serena", "st1")
        assert [c.id for c in store.list_clusters()] == ["unknown-2"]
        with pytest.raises(ClusterError, match="was named 'Serena'"):
            store.name("unknown-1", "Serena")
        assert store.forget_person("Serena") == 1  # forgetting her erases her name from the history too
        assert store.forget_person("Serena") == 0
        with pytest.raises(ClusterError) as gone:
            store.name("unknown-1", "Serena")
        assert "Serena" not in str(gone.value)
    with Gallery(tmp_path / "gallery.db") as gallery:
        assert gallery.show("Serena").template_count == 4
        assert [m.name for m in gallery.match(np.stack([f.embedding for f in serena[4:]]))] == ["Serena"] * 4
        assert gallery.match(of("Colin_Powell")[0].embedding[None])[0].name is None


@needs_lfw
def test_face_crops_are_stored_only_when_allowed(tmp_path: Path) -> None:
    face = of("Colin_Powell")[0]
    with ClusterStore(tmp_path / "off.db", ClusterSettings(store_face_crops=False)) as store:
        store.observe(face.embedding, ts=T0, track_key="a", crop=face.chip)
        assert store.crops("unknown-1", 5) == []
    with ClusterStore(tmp_path / "on.db") as store:  # stored by default (the station page shows them)
        store.observe(face.embedding, ts=T0, track_key="a", crop=face.chip)
        [jpeg] = store.crops("unknown-1", 5)
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == face.chip.shape
    assert np.abs(decoded.astype(int) - face.chip.astype(int)).mean() < 6  # the real chip, JPEG-compressed


@needs_lfw
def test_face_crops_are_erased_after_their_retention(tmp_path: Path) -> None:
    face = of("Colin_Powell")[0]
    settings = ClusterSettings(crop_retention_days=30, tentative_max_age_s=365 * 86400.0)
    with ClusterStore(tmp_path / "g.db", settings) as store:
        store.observe(face.embedding, ts=T0, track_key="a", crop=face.chip)
        store.observe(face.embedding, ts=T0 + timedelta(days=20), track_key="b", crop=face.chip)
        assert len(store.crops("unknown-1", 5)) == 2
        assert store.erase_old_crops(T0 + timedelta(days=31)) == 1  # the first one only
        assert len(store.crops("unknown-1", 5)) == 1
        assert store.show("unknown-1")[0].observations == 2  # the cluster stays
        # The camera loop erases them as it goes (at most hourly, in observed time).
        store.observe(face.embedding, ts=T0 + timedelta(days=52), track_key="c", crop=face.chip)
        assert len(store.crops("unknown-1", 5)) == 1  # the day-20 crop went, the day-52 one came


@needs_lfw
def test_another_process_changes_are_picked_up(tmp_path: Path) -> None:
    colin, hugo = of("Colin_Powell"), of("Hugo_Chavez")
    path = tmp_path / "gallery.db"
    with ClusterStore(path, station="st1") as camera:
        for k, face in enumerate(colin[:3]):
            camera.observe(face.embedding, ts=T0, track_key=f"c{k}")
        camera.observe(hugo[0].embedding, ts=T0, track_key="h")
        for args in (["name", "unknown-1", "Colin"], ["forget", "unknown-2"]):
            done = subprocess.run([sys.executable, "-m", "edgeface.cli", "clusters", *args, "--gallery", str(path)],
                                  check=False, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        # the camera loop's next update sees both changes: Hugo's cluster is not resurrected
        update = camera.observe(hugo[1].embedding, ts=T0, track_key="h2")
        assert update.created and update.cluster.id == "unknown-3"
        assert [c.id for c in camera.list_clusters()] == ["unknown-3"]
        before = datetime.now(timezone.utc)
        events = camera.take_events()
        assert [type(e) for e in events] == [ClusterNamedEvent] and events[0].name == "Colin"
        # the shell's config named no station (default "edgeface"): the station serving the file announces
        # the change as its own, now, so it is never published under another station's name or out of order
        assert events[0].station == "st1" and events[0].ts >= before.replace(microsecond=before.microsecond // 1000 * 1000)
        assert camera.take_events() == []


_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from edgeface.storage.cluster_store import ClusterStore
    vectors = np.load(sys.argv[2])
    with ClusterStore(sys.argv[1]) as store:
        k = 0
        while True:
            update = store.observe(vectors[k % len(vectors)], ts=1.7e9 + k, track_key=f"t{k}")
            print(k, update.cluster.id, flush=True)
            k += 1
""")


@needs_lfw
def test_kill_9_loses_no_reported_observation(tmp_path: Path) -> None:
    vectors = np.stack([f.embedding for f in lfw_faces()])
    np.save(tmp_path / "vectors.npy", vectors)
    path = tmp_path / "gallery.db"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(tmp_path / "vectors.npy")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reported = []
    deadline = time.monotonic() + 120
    try:
        while len(reported) < 80 and time.monotonic() < deadline:
            line = child.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            reported.append(line.split())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert len(reported) == 80, child.stderr.read()  # type: ignore[union-attr]
    reported += [line.split() for line in child.stdout.read().splitlines()]  # type: ignore[union-attr]  # printed before the kill
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with ClusterStore(path) as store:
        clusters = store.list_clusters()
        # nothing expires here and merges add counts up: every committed observation is counted once;
        # at most one more than was reported (committed, killed before printing)
        assert len(reported) <= sum(c.observations for c in clusters) <= len(reported) + 1
        # it carries on where it stopped: the next face of a known person joins its cluster
        update = store.observe(vectors[0], ts=1.8e9, track_key="after")
        assert not update.created
    with Gallery(path, create=False) as gallery:
        assert gallery.list_identities() == []


def test_newer_cluster_schema_and_foreign_gallery_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    with ClusterStore(path):
        pass
    db = sqlite3.connect(path)
    db.execute("UPDATE cluster_schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(ClusterError, match="newer edgeface"):
        ClusterStore(path)
    with Gallery(tmp_path / "other.db") as other, pytest.raises(ClusterError, match="not the file"):
        ClusterStore(path, gallery=other)


@needs_lfw
def test_max_clusters_drops_the_least_recently_seen_tentative_one(tmp_path: Path) -> None:
    strangers = [of(p)[0] for p in ("Gerhard_Schroeder", "Hugo_Chavez", "Jean_Chretien", "Serena_Williams", "AJ_Lamas",
                                    "Aaron_Guiel", "Abdel_Aziz_Al-Hakim", "Adam_Rich", "Adrian_Fernandez",
                                    "Abdul_Majeed_Shobokshi")]
    with Gallery(tmp_path / "gallery.db") as gallery:
        with ClusterStore(tmp_path / "gallery.db", ClusterSettings(max_clusters=10), gallery=gallery) as store:
            for k, face in enumerate(of("Colin_Powell")[:3]):  # unknown-1: confirmed
                store.observe(face.embedding, ts=T0, track_key=f"c{k}")
            for k, face in enumerate(strangers):  # unknown-2 ... unknown-11, one sighting each, a minute apart
                update = store.observe(face.embedding, ts=T0 + timedelta(minutes=k + 1), track_key=f"s{k}")
            assert update.cluster.id == "unknown-11" and update.expired == ["unknown-2"]
            ids = [c.id for c in store.list_clusters()]
            assert len(ids) == 10 and "unknown-1" in ids and "unknown-2" not in ids
        assert gallery.list_identities() == []  # the caller's gallery is still open after the store closed


@needs_lfw
def test_the_cluster_stage_answers_with_merges_and_queued_events(tmp_path: Path) -> None:
    from edgeface.recognition.decider import ClusterAssignment, UnknownTrack
    from edgeface.storage.cluster_store import ClusterStage

    faces = of("Hugo_Chavez")
    a, b, c = _merging_triple(faces)
    with _store(tmp_path) as store:
        stage = ClusterStage(store)
        answers = [stage.assign(UnknownTrack("cam1", k, faces[i].embedding, 0.7, 5, T0 + timedelta(minutes=k),
                                             T0 + timedelta(minutes=k, seconds=20)))
                   for k, i in enumerate((a, b, c))]
        assert all(isinstance(x, ClusterAssignment) for x, _ in answers)
        assert [x.cluster_id for x, _ in answers if x] == ["unknown-1", "unknown-2", "unknown-1"]
        third = answers[2][0]
        assert third is not None and third.status == "confirmed"
        assert third.last_seen == T0 + timedelta(minutes=2, seconds=20)
        caused = [e for _, events in answers for e in events]
        assert [(e.type, e.kept_id, e.merged_id) for e in caused] == [("cluster_merged", "unknown-1", "unknown-2")]
        with ClusterStore(tmp_path / "gallery.db") as shell:  # `edgeface clusters name` from a shell
            shell.name("unknown-1", "Hugo", queue_event=True)
        colin = of("Colin_Powell")[0]
        answer, events = stage.assign(UnknownTrack("cam1", 9, colin.embedding, 0.7, 5, T0 + timedelta(hours=1),
                                                   T0 + timedelta(hours=1)))
        assert answer is not None and answer.cluster_id == "unknown-3"
        assert [e.type for e in events] == ["cluster_named"] and events[0].name == "Hugo"


# -- cannot-links -------------------------------------------------------------------------------


@needs_lfw
def test_tracks_seen_together_are_never_one_cluster(tmp_path: Path) -> None:
    """Four photos of one person that would form one cluster: a track that was on screen with the
    first one is kept out of its cluster, and no later face or merge joins the two, across a restart."""
    colin = of("Colin_Powell")
    with _store(tmp_path) as store:
        store.observe(colin[0].embedding, ts=T0, track_key="cam:1")
        apart = store.observe(colin[1].embedding, ts=T0, track_key="cam:2", apart_from=["cam:1", "cam:unseen"])
        assert apart.created and apart.cluster.id == "unknown-2"
    with _store(tmp_path) as store:  # the link is in the file
        for k, face in enumerate(colin[2:], start=3):
            update = store.observe(face.embedding, ts=T0 + timedelta(minutes=k), track_key=f"cam:{k}")
            assert update.cluster.id in ("unknown-1", "unknown-2") and not update.merged
        assert len(store.list_clusters()) == 2
        with pytest.raises(ClusterError, match="on screen at the same time"):
            store.merge("unknown-1", "unknown-2")
        assert store.merge("unknown-1", "unknown-2", force=True).kept_id == "unknown-1"
    free = OnlineClusters()  # without the link the same faces are one cluster
    for k, face in enumerate(colin):
        free.observe(face.embedding, ts=float(k), track_key=str(k))
    assert len(free) == 1


@needs_lfw
def test_the_merge_pass_joins_clusters_unless_they_are_apart() -> None:
    faces = of("Hugo_Chavez")
    a, b, c = _merging_triple(faces)
    together = OnlineClusters()
    together.observe(faces[a].embedding, ts=0.0, track_key="a")
    together.observe(faces[b].embedding, ts=1.0, track_key="b", apart_from=["a"])
    update = together.observe(faces[c].embedding, ts=2.0, track_key="c")
    assert update.merged == [] and len(together) == 2
    assert together.get(1).apart == {2} and together.get(2).apart == {1}  # type: ignore[union-attr]


@needs_lfw
def test_naming_respects_cannot_links_resemblance_and_rejections(tmp_path: Path) -> None:
    colin, hugo = of("Colin_Powell"), of("Hugo_Chavez")
    with Gallery(tmp_path / "gallery.db") as gallery:
        gallery.add_templates("Hugo", hugo[7].embedding)
    with _store(tmp_path) as store:
        for k, face in enumerate(hugo[:3]):  # unknown-1: Hugo, seen with a recognised Ada
            store.observe(face.embedding, ts=T0 + timedelta(minutes=k), track_key=f"h{k}", not_names=["Ada"] if k == 0 else [])
        for k, face in enumerate(colin[:3]):  # unknown-2: Colin, on screen with Hugo's first track
            store.observe(face.embedding, ts=T0 + timedelta(minutes=k), track_key=f"c{k}", apart_from=["h0"] if k == 0 else [])
        assert [c.id for c in store.list_clusters()] == ["unknown-1", "unknown-2"]
        with pytest.raises(ClusterError, match="^unknown-1 is not Ada: it was on screen at the same time as Ada; not named"):
            store.name("unknown-1", "Ada")
        with pytest.raises(ClusterError, match=r"unknown-2 does not look like Hugo: its faces are 0\.\d\d from Hugo's"):
            store.name("unknown-2", "Hugo")
        store.name("unknown-1", "Hugo")  # resembles Hugo: accepted
        with pytest.raises(ClusterError, match="unknown-2 is not Hugo: it was on screen at the same time"):
            store.name("unknown-2", "Hugo")  # the cluster it was apart from is Hugo now
        assert store.name("unknown-2", "Hugo", force=True).name == "Hugo"
    with Gallery(tmp_path / "gallery.db") as gallery:
        assert gallery.show("Hugo").template_count == 1 + 3 + 3
        gallery.add_templates("Colin", colin[7].embedding)
        gallery.reject_match("Colin", colin[4].embedding)  # "that face was not Colin"
    with _store(tmp_path) as store:
        for k, face in enumerate(colin[4:7]):
            store.observe(face.embedding, ts=T0 + timedelta(hours=1, minutes=k), track_key=f"d{k}")
        (cluster,) = store.list_clusters()
        with pytest.raises(ClusterError, match=f"{cluster.id} holds 1 face\\(s\\) reported as not Colin"):
            store.name(cluster.id, "Colin")


def test_cluster_schema_1_is_migrated_with_its_clusters(tmp_path: Path) -> None:
    """A gallery file written before cannot-links existed (cluster schema 1) opens, keeps its
    clusters and ids, and gains the columns."""
    from edgeface.storage.cluster_store import _migrate_0_to_1

    path = tmp_path / "gallery.db"
    Gallery(path).close()
    vector = np.zeros(128)
    vector[0] = 1.0
    with sqlite3.connect(path) as db:
        _migrate_0_to_1(db)
        db.execute("INSERT INTO cluster_schema_version (version) VALUES (1)")
        db.execute("INSERT INTO cluster_clusters VALUES (7, 1e9, 1e9, 3, 1, '[\"a\", \"b\"]', 1, ?)", ((3 * vector).tobytes(),))
        db.execute("INSERT INTO cluster_exemplars VALUES (1, 7, ?, 0.5, 1e9, NULL)", (vector.astype("<f4").tobytes(),))
        db.execute("UPDATE cluster_meta SET value = 8 WHERE key = 'next_number'")
    with ClusterStore(path) as store:
        (info,) = store.list_clusters()
        assert (info.id, info.status, info.observations, info.exemplars) == ("unknown-7", "confirmed", 3, 1)
        far = np.zeros(128)
        far[1] = 1.0
        update = store.observe(far, ts=2e9, track_key="new", apart_from=["old"])
        assert update.cluster.id == "unknown-8"
        again = store.observe(vector, ts=2e9, track_key="x", apart_from=["new"])
        assert again.cluster.id == "unknown-7"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM cluster_schema_version").fetchall() == [(CLUSTER_SCHEMA_VERSION,)]
        rows = db.execute("SELECT number, apart, not_names, ignored FROM cluster_clusters ORDER BY number").fetchall()
    assert rows == [(7, "[8]", "[]", 0), (8, "[7]", "[]", 0)]
