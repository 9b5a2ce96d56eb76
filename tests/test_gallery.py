from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edgeface.errors import GalleryError
from edgeface.storage.gallery import (
    DEFAULT_MATCH_MAX_DISTANCE,
    EXPORT_FORMAT_VERSION,
    MEAN_THRESHOLD_TIGHTENING,
    SCHEMA_VERSION,
    DuplicateNameError,
    Gallery,
    GallerySnapshot,
    GalleryVersionError,
    InvalidNameError,
    ModelMismatchError,
    UnknownIdentityError,
    _migrate_0_to_1,
    validate_name,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "people").is_dir(), reason="../shared/data is absent")


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    """Storage tests only need numbers to round-trip; matching tests use real faces below."""
    v = np.random.default_rng(seed).normal(size=(n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Zoë", "李雷", "Ólafur Arnalds", "O'Brien-Smith", "joe_biden", "Ελένη"])
def test_unicode_names_are_fine(name: str) -> None:
    assert validate_name(name) == name


def test_names_are_stored_in_nfc() -> None:
    assert validate_name("Zoe\u0308") == "Zoë"


@pytest.mark.parametrize(("name", "words"), [
    ("", "empty"), ("   ", "empty"), (" Zoë", "start or end"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("a\nb", "control character"), ("a\x00b", "control character"), ("a\u200bb", "invisible"), ("..", "reserved"),
    ("x" * 65, "at most 64"), (42, "must be text"),
])
def test_bad_names_are_refused_with_the_rule(name: object, words: str) -> None:
    with pytest.raises(InvalidNameError, match=words) as info:
        validate_name(name)
    assert "\n" not in str(info.value)


# -- storage ---------------------------------------------------------------------------------


def test_new_file_is_wal_with_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with Gallery(path) as gallery:
        gallery.add_templates("Zoë", _vectors(3), [0.9, 0.8, 0.7], ["a" * 64, "b" * 64, None], metadata={"role": "owner"})
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert db.execute("SELECT COUNT(*), MIN(model_id), MAX(model_id) FROM templates").fetchone() == (3, "dlib_resnet_v1", "dlib_resnet_v1")
    with Gallery(path, create=False) as gallery:
        info = gallery.show("Zoë")
    assert info.metadata == {"role": "owner"} and info.template_count == 3
    assert [t.source_sha256 for t in info.templates] == ["a" * 64, "b" * 64, None]
    assert [round(t.quality, 2) for t in info.templates] == [0.9, 0.8, 0.7]


def test_version_1_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    _migrate_0_to_1(db)
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute("INSERT INTO identities (id, name, created) VALUES (1, 'Ada', '2024-01-01T00:00:00+00:00')")
    vector = _vectors(1)[0]
    db.execute("INSERT INTO templates (identity_id, embedding, created) VALUES (1, ?, '2024-01-01')",
               (vector.astype("<f4").tobytes(),))
    db.close()
    with Gallery(path) as gallery:
        assert [(i.name, i.template_count, i.metadata) for i in gallery.list_identities()] == [("Ada", 1, {})]
        assert gallery.show("Ada").templates[0].model_id == "dlib_resnet_v1"
        assert gallery.match(vector[None])[0].name == "Ada"
        gallery.reject_match("Ada", _vectors(1, seed=5))  # the negatives table exists now
    assert sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)


def test_newer_and_foreign_files_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    Gallery(newer).close()
    db = sqlite3.connect(newer, isolation_level=None)
    db.execute("UPDATE schema_version SET version = 99")
    db.close()
    with pytest.raises(GalleryVersionError, match="newer edgeface"):
        Gallery(newer)
    foreign = tmp_path / "other.db"
    sqlite3.connect(foreign).execute("CREATE TABLE photos (x)")
    with pytest.raises(GalleryVersionError, match="not an edgeface gallery"):
        Gallery(foreign)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(GalleryError, match="cannot open gallery"):
        Gallery(garbage)
    with pytest.raises(GalleryError, match="no gallery at"):
        Gallery(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(GalleryError, match="is a folder"):
        Gallery(tmp_path)


def test_a_failing_batch_writes_nothing(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        bad = _vectors(3)
        bad[2, 5] = np.nan
        with pytest.raises(GalleryError, match="NaN"):
            gallery.add_templates("Ada", bad)
        with pytest.raises(GalleryError, match="sha256"):
            gallery.add_templates("Ada", _vectors(2), source_sha256s=["a" * 64, "not-a-hash"])
        with pytest.raises(UnknownIdentityError):
            gallery.add_templates("Ada", _vectors(1), create=False)
        assert gallery.list_identities() == []


def test_rename_and_remove(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add_templates("Ada", _vectors(2, 1))
        gallery.add_templates("Bob", _vectors(1, 2))
        gallery.add_templates("Ada", _vectors(1, 3), create=False)
        assert [(i.name, i.template_count) for i in gallery.list_identities()] == [("Ada", 3), ("Bob", 1)]
        with pytest.raises(DuplicateNameError, match="already exists"):
            gallery.rename("Ada", "Bob")
        with pytest.raises(InvalidNameError):
            gallery.rename("Ada", "A/da")
        gallery.rename("Ada", "Adèle")
        with pytest.raises(UnknownIdentityError, match="no identity named 'Ada'"):
            gallery.remove("Ada")
        gallery.remove("Adèle")
        assert [i.name for i in gallery.list_identities()] == ["Bob"]
        remaining = sqlite3.connect(gallery.path).execute("SELECT COUNT(*) FROM templates").fetchone()[0]
        assert remaining == 1


def test_a_second_connection_sees_changes_without_reopening(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    vectors = _vectors(2)
    with Gallery(path) as reader, Gallery(path) as writer:
        assert reader.match(vectors)[0].name is None
        writer.add_templates("Ada", vectors[:1])
        assert reader.match(vectors)[0].name == "Ada"
        writer.remove("Ada")
        assert reader.match(vectors)[0].name is None


def test_templates_of_another_model_are_not_matched(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    vector = _vectors(1)
    with Gallery(path, model_id="other_model_v2") as other:
        other.add_templates("Ada", vector)
    with Gallery(path) as gallery:
        assert gallery.match(vector)[0].name is None
        assert gallery.list_identities()[0].template_count == 1


# -- matching on real faces ------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    """Embedding of the largest face of each people/ and bbt/ photo, keyed like 'barack_obama/1.jpg'."""
    if not (DATA / "people").is_dir():
        pytest.skip("../shared/data is absent")
    from edgeface.config import Config
    from edgeface.io.images import read_image
    from edgeface.vision.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(Config().recognition)
    out = {}
    for path in sorted((DATA / "people").glob("*/*")) + sorted((DATA / "bbt").glob("[!_]*/*.png")):
        found = analyzer.analyze(read_image(path))
        out[f"{path.parent.name}/{path.name}"] = found.embeddings[int(np.argmax(found.detections.area))]
    return out


@pytest.fixture()
def people(tmp_path: Path, faces: dict[str, np.ndarray]) -> Gallery:
    gallery = Gallery(tmp_path / "people.db")
    for name, photos in [("barack_obama", ["1.jpg", "2.jpg"]), ("joe_biden", ["1.jpg", "2.jpg"]),
                         ("alex_lacamoire", ["1.png", "2.jpg"]), ("lin_manuel_miranda", ["1.png"])]:
        gallery.add_templates(name, np.stack([faces[f"{name}/{p}"] for p in photos]))
    yield gallery
    gallery.close()


@pytest.mark.parametrize("strategy", ["min", "mean"])
def test_known_faces_match_and_strangers_are_unknown(tmp_path: Path, faces: dict[str, np.ndarray], strategy: str) -> None:
    with Gallery(tmp_path / "g.db", strategy=strategy) as gallery:
        for name in ("barack_obama", "joe_biden", "alex_lacamoire"):
            gallery.add_templates(name, np.stack([v for k, v in faces.items() if k.startswith(name)]))
        matches = gallery.match(np.stack([faces["_group/obama-1080p.jpg"], faces["_group/obama-240p.jpg"]]))
        assert [m.name for m in matches] == ["barack_obama", "barack_obama"]
        assert all(m.distance < DEFAULT_MATCH_MAX_DISTANCE for m in matches)
        strangers = gallery.match(np.stack([v for k, v in faces.items() if "/" in k and k.split("/")[0] in
                                            {"amy", "penny", "raj", "sheldon", "lin_manuel_miranda"}]))
        assert all(m.nearest_name for m in strangers)
        if strategy == "min":  # the default threshold was measured for photo-to-photo distances
            assert [m.name for m in strangers] == [None] * len(strangers)


@pytest.mark.parametrize("strategy", ["min", "mean"])
def test_threshold_decides(people: Gallery, faces: dict[str, np.ndarray], strategy: str) -> None:
    """The nearest template must be closer than the threshold; a mean of k templates closer than the
    threshold tightened for k (barack_obama has 2 templates)."""
    probe = faces["_group/obama-240p.jpg"][None]
    snapshot = people.snapshot()
    distance = snapshot.match(probe, 2.0, strategy)[0].distance
    tightening = MEAN_THRESHOLD_TIGHTENING[2] if strategy == "mean" else 0.0
    assert snapshot.match(probe, distance + tightening + 1e-4, strategy)[0].name == "barack_obama"
    assert snapshot.match(probe, distance + tightening - 1e-4, strategy)[0].name is None


def test_a_match_names_its_runner_up(people: Gallery, faces: dict[str, np.ndarray]) -> None:
    """Rank-1 with the next nearest identity: a named face's runner-up is the nearest other person, an
    unknown face's the second nearest; with one identity there is none."""
    snapshot = people.snapshot()
    for key in ("joe_biden/1.jpg", "barack_obama/2.jpg", "alex_lacamoire/2.jpg"):
        probe = faces[key][None]
        to = snapshot.distances(probe, "mean")[0]
        first, second = np.argsort(to)[:2]
        named = people.match(probe, max_distance=2.0)[0]
        assert (named.name, named.runner_up) == (snapshot.names[first], snapshot.names[second])
        assert named.runner_up_distance == pytest.approx(float(to[second]))
        gap = float(to[second] - to[first])
        assert named.close_runner_up(gap + 1e-3) and not named.close_runner_up(gap - 1e-3)
        unknown = people.match(probe, max_distance=float(to[first]) - 1e-3)[0]
        assert (unknown.name, unknown.nearest_name, unknown.runner_up) == (None, snapshot.names[first], snapshot.names[second])
        assert not unknown.close_runner_up(2.0)  # only a named face has a look-alike to report
    alone = GallerySnapshot.build([("joe_biden", 1, faces["joe_biden/1.jpg"])], []).match(faces["joe_biden/2.jpg"][None], 2.0)[0]
    assert (alone.name, alone.runner_up, alone.runner_up_distance) == ("joe_biden", None, float("inf"))


def test_empty_gallery_answers_unknown(tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        match = gallery.match(faces["joe_biden/1.jpg"][None])[0]
        assert match.name is None and match.distance == float("inf")
        assert gallery.match(np.zeros((0, 128), np.float32)) == []


def test_bbt_greyscale_cast_is_recognised(tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    cast = sorted({k.split("/")[0] for k in faces if k.endswith(".png") and k[0].islower() and k[-5].isdigit()})
    cast = [c for c in cast if f"{c}/{c}1.png" in faces]
    assert len(cast) == 8
    with Gallery(tmp_path / "bbt.db") as gallery:
        for name in cast:
            gallery.add_templates(name, np.stack([faces[f"{name}/{name}{i}.png"] for i in range(1, 5)]))
        matches = gallery.match(np.stack([faces[f"{name}/{name}5.png"] for name in cast]))
    assert [m.nearest_name for m in matches] == cast
    assert sum(m.name == name for m, name in zip(matches, cast)) >= 6


def test_negative_stops_the_same_mistake(tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    """A threshold that accepts anything labels Obama as the only enrolled person, Amy; after "this was
    not Amy" other photos of Obama are not Amy (they are nearer the negative than Amy's template),
    while Amy's own photos still are."""
    obama = ["barack_obama/2.jpg", "_group/obama-1080p.jpg", "_group/obama-240p.jpg"]
    with Gallery(tmp_path / "g.db", match_max_distance=2.0) as gallery:
        gallery.add_templates("amy", faces["amy/amy1.png"][None])
        assert [m.name for m in gallery.match(np.stack([faces[k] for k in ["barack_obama/1.jpg", *obama]]))] == ["amy"] * 4
        assert gallery.reject_match("amy", faces["barack_obama/1.jpg"]) is None  # Amy's only template is kept
        again = gallery.match(np.stack([faces[k] for k in obama]))
        assert [(m.name, m.vetoed_by_negative, m.nearest_name) for m in again] == [(None, True, "amy")] * 3
        own = gallery.match(np.stack([faces[f"amy/amy{i}.png"] for i in range(2, 6)]))
        assert [(m.name, m.vetoed_by_negative) for m in own] == [("amy", False)] * 4
        assert gallery.show("amy").negative_count == 1


def test_a_vetoed_identity_lets_the_next_one_answer(tmp_path: Path, faces: dict[str, np.ndarray]) -> None:
    cast = ["amy", "bernadette", "howard", "leonard", "penny", "raj", "sheldon", "stuart"]
    with Gallery(tmp_path / "g.db", match_max_distance=2.0) as gallery:
        for name in cast:
            gallery.add_templates(name, faces[f"{name}/{name}1.png"][None])
        probe = faces["barack_obama/1.jpg"][None]
        first = gallery.match(probe)[0].name
        gallery.reject_match(first, probe[0])
        second = gallery.match(probe)[0]
        assert second.name in cast and second.name != first
        assert second.vetoed_by_negative and second.nearest_name == first


def test_rejecting_removes_a_bad_enrollment_photo(people: Gallery, faces: dict[str, np.ndarray]) -> None:
    """Obama's photo enrolled by mistake as Joe: rejecting a match removes exactly that template."""
    bad = people.add_templates("joe_biden", faces["barack_obama/1.jpg"][None], create=False)[0]
    probe = faces["_group/obama-1080p.jpg"]
    joe = people.snapshot().names.index("joe_biden")
    assert people.snapshot().distances(probe[None])[0, joe] < DEFAULT_MATCH_MAX_DISTANCE  # Joe now "matches" Obama
    assert people.reject_match("joe_biden", probe) == bad
    assert len(people.show("joe_biden").templates) == 2 and bad not in [t.id for t in people.show("joe_biden").templates]
    assert people.snapshot().distances(probe[None])[0, joe] > DEFAULT_MATCH_MAX_DISTANCE
    assert people.match(probe[None])[0].name == "barack_obama"
    assert people.match(faces["joe_biden/1.jpg"][None])[0].name == "joe_biden"


# -- export / import -------------------------------------------------------------------------


def test_export_import_round_trip(tmp_path: Path, people: Gallery, faces: dict[str, np.ndarray]) -> None:
    people.reject_match("lin_manuel_miranda", faces["amy/amy1.png"])
    exported = tmp_path / "export.json"
    assert people.export_to(exported) == (4, 7)
    document = json.loads(exported.read_text())
    assert document["format_version"] == EXPORT_FORMAT_VERSION and document["model_id"] == "dlib_resnet_v1"
    assert "jpg" not in exported.read_text()  # embeddings and metadata, never photos or paths
    with Gallery(tmp_path / "copy.db") as copy:
        report = copy.import_from(exported)
        assert (report.identities_created, report.templates_added, report.negatives_added) == (4, 7, 1)
        assert [(i.name, i.template_count, i.negative_count) for i in copy.list_identities()] == \
            [(i.name, i.template_count, i.negative_count) for i in people.list_identities()]
        probes = np.stack(list(faces.values()))
        copied, original = copy.match(probes), people.match(probes)
        assert [m.name for m in copied] == [m.name for m in original]
        assert np.allclose([m.distance for m in copied], [m.distance for m in original], atol=1e-4)
        again = copy.import_from(exported)
        assert (again.identities_merged, again.templates_added, again.templates_skipped) == (4, 0, 7)


def _tamper(source: Path, target: Path, **changes: object) -> Path:
    document = json.loads(source.read_text())
    document.update(changes)
    target.write_text(json.dumps(document))
    return target


def test_import_refuses_bad_files_and_writes_nothing(tmp_path: Path, people: Gallery) -> None:
    exported = tmp_path / "export.json"
    people.export_to(exported)
    with Gallery(tmp_path / "other.db") as other:
        with pytest.raises(ModelMismatchError, match="from model 'arcface_r100'.*cannot be compared"):
            other.import_from(_tamper(exported, tmp_path / "model.json", model_id="arcface_r100"))
        with pytest.raises(GalleryVersionError, match="newer edgeface"):
            other.import_from(_tamper(exported, tmp_path / "newer.json", format_version=EXPORT_FORMAT_VERSION + 1))
        document = json.loads(exported.read_text())
        document["identities"][-1]["name"] = "bad/name"
        with pytest.raises(InvalidNameError):
            other.import_from(_tamper(exported, tmp_path / "name.json", identities=document["identities"]))
        document = json.loads(exported.read_text())
        document["identities"][-1]["templates"][0]["embedding_f32le_b64"] = "AAAA"
        with pytest.raises(GalleryError, match="expected 128"):
            other.import_from(_tamper(exported, tmp_path / "short.json", identities=document["identities"]))
        (tmp_path / "text.json").write_text("not json")
        with pytest.raises(GalleryError, match="not JSON"):
            other.import_from(tmp_path / "text.json")
        assert other.list_identities() == []


# -- the vectorised search gives the answers of the loop it replaced ------------------------------


def _reference_match(snapshot: GallerySnapshot, probes: np.ndarray, max_distance: float, strategy: str) -> list[tuple]:
    """The per-identity Python loop that matching used before it was vectorised (issue 14), kept
    here as the reference the arrays must agree with."""
    from edgeface.recognition.vectors import pairwise_distances

    to_templates = pairwise_distances(probes, snapshot.templates)
    nearest_template = np.minimum.reduceat(to_templates, snapshot.starts, axis=1)
    by_identity = nearest_template if strategy == "min" else pairwise_distances(probes, snapshot.means)
    limits = [max_distance] * len(snapshot.names)
    if strategy == "mean":
        limits = [max_distance - MEAN_THRESHOLD_TIGHTENING[min(int(e - s), 3)]
                  for s, e in zip(snapshot.starts.tolist(), snapshot.ends.tolist())]
    to_negatives = pairwise_distances(probes, snapshot.negatives) if len(snapshot.negatives) else None
    results = []
    for i, (row, nearest_row) in enumerate(zip(by_identity.tolist(), nearest_template.tolist())):
        order = sorted(range(len(row)), key=row.__getitem__)
        nearest = snapshot.names[order[0]]
        answer: tuple = (None, row[order[0]], nearest, None)
        vetoed = False
        for k in order:
            if not row[k] < max_distance:
                break
            if not row[k] < limits[k]:
                continue
            if to_negatives is not None:
                mine = to_negatives[i, snapshot.negative_owner == k]
                if mine.size and mine.min() <= nearest_row[k]:
                    vetoed = True
                    continue
            start, end = int(snapshot.starts[k]), int(snapshot.ends[k])
            best = start + int(np.argmin(to_templates[i, start:end]))
            answer = (snapshot.names[k], row[k], nearest, int(snapshot.template_ids[best]))
            break
        chosen = answer[0] or nearest
        second = next((k for k in order if snapshot.names[k] != chosen), None)
        results.append((*answer, vetoed, None if second is None else snapshot.names[second],
                        float("inf") if second is None else row[second]))
    return results


def _as_tuple(match: object) -> tuple:
    return (match.name, match.distance, match.nearest_name, match.template_id, match.vetoed_by_negative,  # type: ignore[attr-defined]
            match.runner_up, match.runner_up_distance)  # type: ignore[attr-defined]


def _by_name(snapshot: GallerySnapshot) -> dict[str, tuple]:
    """Each identity's arrays (template ids, templates, mean, negatives, tightening) as bytes, by name."""
    out = {}
    for k, name in enumerate(snapshot.names):
        start, end = int(snapshot.starts[k]), int(snapshot.ends[k])
        out[name] = (snapshot.template_ids[start:end].tobytes(), snapshot.templates[start:end].tobytes(),
                     snapshot.means[k].tobytes(), snapshot.negatives[snapshot.negative_owner == k].tobytes(),
                     float(snapshot.mean_tightening[k]))
    assert len(out) == len(snapshot.names)
    return out


@pytest.mark.parametrize("strategy", ["min", "mean"])
def test_vectorised_search_gives_the_loops_answers(tmp_path: Path, faces: dict[str, np.ndarray], strategy: str) -> None:
    """Every real face as a probe against every person with 1 to 5 templates and some negatives, at
    thresholds from strict to accept-anything: the same name, distances, template, veto and runner-up
    as the loop it replaced; and the snapshot updated in place after the gallery's own writes equals
    one read afresh from the file."""
    people = sorted({k.split("/")[0] for k in faces if not k.startswith("_")})
    with Gallery(tmp_path / "g.db", strategy=strategy) as gallery:
        gallery.snapshot()
        for n, person in enumerate(people):
            keys = sorted(k for k in faces if k.startswith(f"{person}/"))[:1 + n % 5]
            gallery.add_templates(person, np.stack([faces[k] for k in keys]))
        for person, face in [("amy", "barack_obama/1.jpg"), ("penny", "joe_biden/2.jpg"), ("penny", "penny/penny5.png"),
                             ("raj", "raj/raj5.png"), ("sheldon", "sheldon/sheldon4.png")]:
            gallery.reject_match(person, faces[face])
        gallery.rename("howard", "zz_howard")
        gallery.remove("stuart")
        updated = gallery.snapshot()
        with Gallery(tmp_path / "g.db", strategy=strategy) as fresh:
            loaded = fresh.snapshot()
        assert _by_name(updated) == _by_name(loaded)  # names are in no particular order after own writes
        probes = np.stack(list(faces.values()))
        unit = probes / np.linalg.norm(probes, axis=1, keepdims=True)
        at_a_distance = [float(d) for d in loaded.distances(unit[:4], strategy).min(axis=1)]  # the boundary itself
        for threshold in (0.3, DEFAULT_MATCH_MAX_DISTANCE, 0.5, 2.0, *at_a_distance):
            expected = _reference_match(loaded, unit, threshold, strategy)
            assert [_as_tuple(m) for m in loaded.match(probes, threshold, strategy)] == expected
        for threshold in (0.3, DEFAULT_MATCH_MAX_DISTANCE, 0.5, 2.0):  # the updated arrays hold the rows elsewhere:
            expected = _reference_match(loaded, unit, threshold, strategy)  # float32 sums may differ in the last bit
            answers = [_as_tuple(m) for m in updated.match(probes, threshold, strategy)]
            assert [a[:1] + a[2:5] + a[5:6] for a in answers] == [e[:1] + e[2:5] + e[5:6] for e in expected]
            assert np.allclose([a[1] for a in answers], [e[1] for e in expected], atol=1e-6)
        assert sum(m.vetoed_by_negative for m in loaded.match(probes, 2.0, strategy)) >= 2


def test_own_writes_update_the_snapshot_and_other_writes_are_still_seen(tmp_path: Path) -> None:
    """The station's own enrollment is applied to its search arrays; when another process wrote in
    between, that write is not lost behind the in-place update."""
    vectors = _vectors(4)
    with Gallery(tmp_path / "g.db") as station, Gallery(tmp_path / "g.db") as other:
        station.add_templates("ann", vectors[0][None])
        assert station.snapshot().names == ("ann",)
        station.add_templates("bob", vectors[1][None])
        assert station.snapshot().names == ("ann", "bob")
        other.add_templates("cat", vectors[2][None])
        station.add_templates("dan", vectors[3][None])
        assert station.snapshot().names == ("ann", "bob", "cat", "dan")
        assert [m.name for m in station.match(vectors)] == ["ann", "bob", "cat", "dan"]


def test_bench_gallery_reports_its_figures() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "edgeface.cli", "bench", "gallery", "--size", "300", "--probes", "20", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["size"] == 300 and figures["probes"] == 20
    assert 0 < figures["match_ms"] < 100 and 0 < figures["snapshot_load_ms"] < 5000
    assert 512 < figures["bytes_per_identity"] < 4000  # two 128-float rows per identity, at least
    assert figures["other_catch_up_ms"] > 0 and 0 < figures["other_change_stall_ms"] <= figures["other_change_stall_ms_max"]
    assert figures["other_remove_stall_ms"] > 0 and figures["reload_ms"] > 0 and figures["reload_stall_ms"] > 0
    assert "snapshot load" in done.stderr


def test_a_new_identity_is_appended_in_place_and_older_snapshots_keep_theirs() -> None:
    """The station's own enrollment at scale: a new person's rows go into spare rows of the template
    buffer (no copy of the matrix); every older snapshot still sees exactly its own identities, and an
    append from an older snapshot (not the newest) copies instead of overwriting the newer one's row."""
    rows = _vectors(6)
    base = GallerySnapshot.build([(f"p{i}", i, rows[i]) for i in range(3)], [])
    first = base.replaced(None, "zed", np.array([10]), rows[3][None], rows[:0])  # copies into a buffer with spare rows
    second = first.replaced(None, "amy", np.array([11]), rows[4][None], rows[:0])
    assert np.shares_memory(first.templates, second.templates)  # in place
    assert second.names == ("p0", "p1", "p2", "zed", "amy") and first.names == ("p0", "p1", "p2", "zed")
    assert second.match(rows[4][None], 0.1)[0].name == "amy" and first.match(rows[4][None], 0.1)[0].name is None
    stale = first.replaced(None, "bob", np.array([12]), rows[5][None], rows[:0])  # first is not the newest: a copy
    assert not np.shares_memory(stale.templates, second.templates)
    assert np.array_equal(second.templates[4], rows[4]) and np.array_equal(stale.templates[4], rows[5])
    assert second.identity_rows("bob")[0].size == 0 and stale.identity_rows("amy")[0].size == 0
    assert stale.identity_rows("bob")[0].tolist() == [12] and second.identity_rows("amy")[0].tolist() == [11]
    assert second.means is second.templates  # one template each: still one matrix
