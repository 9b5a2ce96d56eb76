"""Another process's gallery change reaches the station's snapshot from the change log: each changed
identity re-read and applied in place, the result equal to a fresh read of the whole file; the whole
file is read again only when the log cannot cover the change (rows pruned, unknown kinds, too many rows).
Real SQLite files, two real Gallery objects or a real `edgeface` process, real face embeddings."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeface.storage.gallery import CATCH_UP_MAX_CHANGES, Gallery, GallerySnapshot, SecondTemplate
from edgeface.storage.gallery_scan import Int8Scan

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SECOND = "sface_2021dec"


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    """Unit embedding of the largest face of each people/ and bbt/ photo, keyed like 'bbt/raj/raj1.png'."""
    if not (DATA / "bbt").is_dir():
        pytest.skip("../shared/data is absent")
    from edgeface.config import Config
    from edgeface.io.images import read_image
    from edgeface.vision.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(Config().recognition)
    out = {}
    for path in sorted((DATA / "people").glob("[!_]*/*")) + sorted((DATA / "bbt").glob("[!_]*/*.png")):
        found = analyzer.analyze(read_image(path))
        vector = found.embeddings[int(np.argmax(found.detections.area))]
        out[f"{path.parent.parent.name}/{path.parent.name}/{path.name}"] = vector / np.linalg.norm(vector)
    return out


def _photos(faces: dict[str, np.ndarray], person: str) -> np.ndarray:
    return np.stack([v for k, v in sorted(faces.items()) if k.split("/")[1] == person])


def _state(snapshot: GallerySnapshot) -> dict[str, tuple]:
    """Every field of every identity, by name (names are in no particular order after in-place updates)."""
    out = {}
    for k, name in enumerate(snapshot.names):
        start, end = int(snapshot.starts[k]), int(snapshot.ends[k])
        out[name] = (int(snapshot.identity_ids[k]), snapshot.template_ids[start:end].tolist(),
                     snapshot.templates[start:end].tobytes(), snapshot.means[k].tobytes(),
                     snapshot.negatives[snapshot.negative_owner == k].tobytes(), float(snapshot.mean_tightening[k]))
    assert len(out) == len(snapshot) == len(snapshot.starts) == len(snapshot.identity_ids) == len(snapshot.means)
    assert np.all(np.diff(snapshot.negative_owner) >= 0) and len(snapshot.template_ids) == len(snapshot.templates)
    return out


def _same_as_a_fresh_read(station: Gallery, strategy: str = "mean") -> None:
    """The station's snapshot holds what a fresh read of the file holds, its int8 copy is the one built
    afresh from its means, and its SFace means are the ones computed afresh."""
    snapshot = station.snapshot()
    with Gallery(station.path, create=False, strategy=station.strategy) as fresh:
        assert _state(snapshot) == _state(fresh.snapshot())
        if snapshot._scan:
            kept, built = snapshot._scan[0], Int8Scan.build(snapshot.means)
            assert np.array_equal(kept.codes_t, built.codes_t) and np.array_equal(kept.scales, built.scales)
            assert np.array_equal(kept.errors, built.errors)
        ours, theirs = station.second_means(SECOND), fresh.second_means(SECOND)
        order = [fresh.snapshot().names.index(name) for name in snapshot.names]
        assert np.array_equal(ours.means, theirs.means[order], equal_nan=True)
        assert ours.identities_with == theirs.identities_with


def _second(faces: np.ndarray, seed: int) -> list[SecondTemplate | None]:
    """Second-model embeddings for some templates (rows of another real face: only their bookkeeping is tested here)."""
    rng = np.random.default_rng(seed)
    return [SecondTemplate(SECOND, "int8", faces[rng.integers(len(faces))]) if rng.random() < 0.7 else None
            for _ in range(len(faces))]


@pytest.mark.parametrize("strategy", ["mean", "min"])
def test_another_connections_changes_are_applied_in_place_as_a_fresh_read_holds_them(
        tmp_path: Path, faces: dict[str, np.ndarray], strategy: str) -> None:
    everyone = np.stack(list(faces.values()))
    path = tmp_path / "g.db"
    people = sorted({k.split("/")[1] for k in faces if k.startswith("bbt/")})
    with Gallery(path, strategy=strategy) as other:
        for n, person in enumerate(people[:6]):
            photos = _photos(faces, person)[:1 + n % 3]
            other.add_templates(person, photos, second=_second(photos, n))
    with Gallery(path, create=False, strategy=strategy, background_reload=True) as station, \
            Gallery(path, create=False, strategy=strategy) as other:
        station.snapshot().mean_scan()  # kept up to date in place from here on (built at 20,000 people otherwise)
        station.second_means(SECOND)
        reads = station.full_reads
        steps = [
            lambda: other.add_templates(people[6], _photos(faces, people[6])[:2], second=_second(everyone[:2], 7)),
            lambda: other.add_templates(people[0], _photos(faces, people[0])[3:5]),  # more photos of someone
            lambda: other.rename(people[1], "zz renamed"),
            lambda: other.remove(people[2]),
            lambda: other.reject_match(people[3], faces["people/barack_obama/1.jpg"]),  # a negative
            lambda: other.reject_match(people[4], _photos(faces, people[4])[0]),  # a negative and a bad template gone
            lambda: other.add_templates(people[7], _photos(faces, people[7])[:1]),
        ]
        for step in steps:
            step()
            _same_as_a_fresh_read(station)
        # several changes between two searches, names swapped through a third, a person added and removed
        other.rename(people[0], "tmp")
        other.rename(people[3], people[0])
        other.rename("tmp", people[3])
        other.add_templates("brief", faces["people/joe_biden/1.jpg"][None])
        other.remove("brief")
        other.add_templates(people[2], _photos(faces, people[2])[:3])  # a removed name again, a new identity
        _same_as_a_fresh_read(station)
        assert station.full_reads == reads, "the change log covered every change: no full read"
        probes = everyone
        with Gallery(path, create=False, strategy=strategy) as fresh:
            for threshold in (0.3, 0.45, 2.0):
                ours, theirs = station.match(probes, threshold), fresh.match(probes, threshold)
                assert [(m.name, m.template_id, m.vetoed_by_negative, m.runner_up) for m in ours] == \
                    [(m.name, m.template_id, m.vetoed_by_negative, m.runner_up) for m in theirs]
                assert np.allclose([m.distance for m in ours], [m.distance for m in theirs], atol=1e-6)


def test_own_writes_and_another_connections_interleaved(tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    """The station's own write right after another connection's: neither is lost, no full read."""
    path = tmp_path / "g.db"
    with Gallery(path) as station, Gallery(path, create=False) as other:
        station.add_templates("raj", _photos(faces, "raj")[:2])
        station.snapshot()
        reads = station.full_reads
        other.add_templates("penny", _photos(faces, "penny")[:2])
        station.add_templates("sheldon", _photos(faces, "sheldon")[:1])  # not in place: the log brings both
        station.rename("raj", "koothrappali")
        other.reject_match("koothrappali", _photos(faces, "raj")[4])
        station.remove("penny")
        _same_as_a_fresh_read(station)
        assert set(station.snapshot().names) == {"koothrappali", "sheldon"}
        assert station.full_reads == reads


def _log_rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM changes").fetchone()[0])
    finally:
        db.close()


def test_the_whole_file_is_read_when_the_log_cannot_cover_the_change(tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    everyone = np.stack(list(faces.values()))
    path = tmp_path / "g.db"
    with Gallery(path) as station, Gallery(path, create=False) as other:
        station.add_templates("raj", _photos(faces, "raj")[:2])
        station.snapshot()
        # every row pruned before the station read them
        other.add_templates("penny", _photos(faces, "penny")[:2])
        other.prune_changes(other.last_change())
        reads = station.full_reads
        _same_as_a_fresh_read(station)
        assert station.full_reads == reads + 1 and "penny" in station.snapshot().names
        # a gap: the first of two new rows pruned
        other.add_templates("amy", _photos(faces, "amy")[:1])
        other.add_templates("leonard", _photos(faces, "leonard")[:1])
        other.prune_changes(other.last_change() - 1)
        assert _log_rows(path) == 1
        _same_as_a_fresh_read(station)
        assert station.full_reads == reads + 2
        # a kind this edgeface does not know (a newer one wrote it)
        other.add_templates("howard", _photos(faces, "howard")[:1])
        db = sqlite3.connect(path)
        with db:
            db.execute("INSERT INTO changes (identity_id, kind, remote, at_ms) VALUES (1, 'merged', 0, 0)")
        db.close()
        _same_as_a_fresh_read(station)
        assert station.full_reads == reads + 3 and "howard" in station.snapshot().names
        # more rows than CATCH_UP_MAX_CHANGES at once
        other.add_identities([(f"bulk {k:03d}", everyone[k % len(everyone)][None]) for k in range(CATCH_UP_MAX_CHANGES + 1)])
        _same_as_a_fresh_read(station)
        assert station.full_reads == reads + 4 and len(station.snapshot()) == 5 + CATCH_UP_MAX_CHANGES + 1
        # and then the log covers the next change again
        other.remove("bulk 000")
        _same_as_a_fresh_read(station)
        assert station.full_reads == reads + 4


def _edgeface(*args: object) -> list[str]:
    return [sys.executable, "-m", "edgeface.cli", *map(str, args)]


@pytest.mark.slow
def test_changes_by_edgeface_processes_reach_the_station_never_half_applied(
        tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    """`edgeface enroll`, `gallery rename|remove|import|reject` run as their own processes while the
    station matches on a thread: each reaches its snapshot from the change log, equal to a fresh read, and
    an import of several people in one transaction is seen whole or not at all."""
    if not (DATA / "people").is_dir():
        pytest.skip("../shared/data is absent")
    path = tmp_path / "g.db"
    run = [("enroll", "joe_biden", DATA / "people" / "joe_biden", "--gallery", path),
           ("enroll", "barack_obama", DATA / "people" / "barack_obama", "--gallery", path)]
    with Gallery(path) as setup:
        setup.add_templates("raj", _photos(faces, "raj")[:2])
    bbt = ["amy", "howard", "leonard", "penny", "sheldon"]
    with Gallery(path) as exporter:  # an export of five people, imported by another process in one transaction
        exporter.add_identities([(name, _photos(faces, name)[:2]) for name in bbt])
        exporter.export_to(tmp_path / "five.json")
        for name in bbt:
            exporter.remove(name)
    with Gallery(path, create=False, background_reload=True) as station:
        station.second_means(SECOND)
        reads = station.full_reads
        probes = np.stack([_photos(faces, name)[0] for name in bbt])
        seen: set[int] = set()
        stop = threading.Event()

        def camera() -> None:
            while not stop.is_set():
                seen.add(sum(m.name == name for m, name in zip(station.match(probes), bbt)))

        loop = threading.Thread(target=camera)
        loop.start()
        try:
            for args in [*run, ("gallery", "rename", "raj", "koothrappali", "--gallery", path),
                         ("gallery", "import", tmp_path / "five.json", "--gallery", path),
                         ("gallery", "reject", "joe_biden", DATA / "people" / "barack_obama" / "1.jpg", "--gallery", path),
                         ("gallery", "remove", "barack_obama", "--gallery", path)]:
                done = subprocess.run(_edgeface(*args), capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, (args, done.stderr)
                _same_as_a_fresh_read(station)
        finally:
            stop.set()
            loop.join()
        assert seen <= {0, 5} and 5 in seen, f"the five imported people seen {sorted(seen)} at a time"
        assert station.full_reads == reads
        assert station.second_means(SECOND).identities_with >= 1  # `edgeface enroll` stored SFace embeddings


def test_a_change_that_copies_the_arrays_of_a_large_gallery_is_applied_on_a_thread(
        tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    """From BACKGROUND_COPY_MIN_ROWS rows, another process's removal (a copy of every array) is applied
    from the change log on a thread: the station answers from the old snapshot meanwhile, then from
    one equal to a fresh read, int8 scan included, without reading the whole file."""
    from edgeface.storage.gallery import BACKGROUND_COPY_MIN_ROWS

    everyone = np.stack(list(faces.values()))
    rng = np.random.default_rng(0)
    crowd = everyone[rng.integers(len(everyone), size=BACKGROUND_COPY_MIN_ROWS)] + \
        rng.uniform(0.01, 0.03, size=(BACKGROUND_COPY_MIN_ROWS, 1)) * rng.normal(size=(BACKGROUND_COPY_MIN_ROWS, 128))
    path = tmp_path / "g.db"
    with Gallery(path) as setup:
        setup.add_identities([(f"alike {k:05d}", crowd[k][None]) for k in range(len(crowd))])
        setup.add_templates("raj", _photos(faces, "raj")[:2])
        setup.add_templates("penny", _photos(faces, "penny")[:1])
    with Gallery(path, create=False, background_reload=True) as station, Gallery(path, create=False) as other:
        station.match(everyone[:1])  # the first search builds the int8 copy
        before = station.snapshot()
        assert before._scan  # a scanned gallery: its int8 copy is kept up to date too
        station.second_means(SECOND)
        reads = station.full_reads
        other.remove("raj")
        other.add_templates("penny", _photos(faces, "penny")[1:3])
        assert station.snapshot() is before  # the old snapshot answers while the thread copies
        deadline = time.monotonic() + 60
        while station.snapshot() is before:
            assert time.monotonic() < deadline, "the change never reached the station's snapshot"
            time.sleep(0.01)
        assert "raj" not in station.snapshot().names
        _same_as_a_fresh_read(station)
        other.add_templates("sheldon", _photos(faces, "sheldon")[:1])  # an append: in place, right away
        assert "sheldon" in station.snapshot().names
        assert station.full_reads == reads
