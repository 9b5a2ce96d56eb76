"""The second opinion (issue 19): fused scores, SFace templates in the gallery (schema 3, upgrade,
export/import, doctor), enrollment storing both, matching and the camera loop with auto/always/off."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeface.config import Config, load_config
from edgeface.recognition import fusion
from edgeface.recognition.false_alarm import MatchThreshold
from edgeface.storage.gallery import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SECOND_CHIP_SHAPE,
    Gallery,
    SecondTemplate,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "people").is_dir(), reason="../shared/data is absent")


# -- the score maths ---------------------------------------------------------------------------


def test_a_fused_score_is_a_dlib_distance_with_the_same_meaning() -> None:
    distances = np.linspace(0.2, 0.9, 15)
    assert np.allclose(fusion.equivalent_distance(fusion.dlib_z(distances)), distances, atol=1e-9)
    # beyond dlib distance 0.2 (both models sure) scores stay ordered and never reach 0
    confident = fusion.equivalent_distance(np.linspace(5.0, 40.0, 8))
    assert np.all(np.diff(confident) < 0) and confident.min() > 0
    # SFace agreeing more (higher cosine) makes the fused distance smaller, never larger
    fused = fusion.fused_distance(np.full(5, 0.38), np.array([0.0, 0.2, 0.4, 0.6, 0.8]))
    assert np.all(np.diff(fused) < 0)
    # SFace at its impostor mean pulls a borderline dlib match away; at a typical genuine cosine it confirms it
    assert fusion.fused_distance(0.37, fusion.SFACE_IMPOSTOR_MEAN) > 0.3776 > fusion.fused_distance(0.37, 0.6)


def test_identities_without_an_sface_template_keep_their_dlib_distance() -> None:
    dlib = np.array([[0.30, 0.35, 0.50]])
    rescored = fusion.rescore(dlib, np.array([[0.7, np.nan, 0.1]]))
    assert rescored[0, 1] == pytest.approx(0.35) and rescored[0, 0] != pytest.approx(0.30)


def test_the_band_asks_near_the_threshold_and_for_close_runner_ups() -> None:
    band = fusion.Band(0.3776)
    nearest = np.array([0.10, 0.30, 0.37, 0.42, 0.60, 0.20])
    runner_up = np.array([0.50, 0.50, 0.50, 0.60, 0.70, 0.22])
    asked = band.needs_second_opinion(nearest, runner_up)
    assert asked.tolist() == [False, True, True, True, False, True]


def test_the_fused_ranking_can_overturn_dlib_among_the_candidates() -> None:
    """dlib puts A just ahead of B; SFace is sure it is B and not A: B wins, A is the runner-up."""
    dlib = np.array([[0.36, 0.37, 0.80]])
    sface = {0: 0.05, 1: 0.75, 2: 0.0}

    def cosines(rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return np.vectorize(sface.get)(candidates).astype(np.float64)

    ranked = fusion.rank_with_second_opinion(dlib, cosines, "always", fusion.Band(0.3776))
    assert ranked.nearest.tolist() == [1] and ranked.runner_up.tolist() == [0] and ranked.asked.all()
    assert ranked.distance[0] < 0.3776 < ranked.runner_up_distance[0]
    off = fusion.rank_with_second_opinion(dlib, cosines, "off", fusion.Band(0.3776))
    assert off.nearest.tolist() == [0] and not off.asked.any()


def test_yaml_off_means_off() -> None:
    """YAML 1.1 reads a bare `off` as false."""
    assert Config.model_validate({"recognition": {"second_opinion": False}}).recognition.second_opinion == "off"
    assert Config().recognition.second_opinion == "auto"


def test_yaml_file_with_bare_off(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("recognition:\n  second_opinion: off\n")
    assert load_config(path).recognition.second_opinion == "off"


# -- the gallery -----------------------------------------------------------------------------


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_templates_keep_their_sface_embedding_tagged_with_model_and_version(tmp_path: Path) -> None:
    chip = np.random.default_rng(1).integers(0, 255, SECOND_CHIP_SHAPE, dtype=np.uint8)
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add_templates("ada", _unit(2, 0), second=[SecondTemplate("sface_2021dec", "int8", _unit(1, 2)[0], chip), None])
        means = gallery.second_means("sface_2021dec")
        assert means.identities_with == 1 and np.allclose(means.means[0], _unit(1, 2)[0], atol=2e-3)
        missing = gallery.templates_without_second("sface_2021dec")
        assert [(m.name, m.chip) for m in missing] == [("ada", None)]
        assert gallery.second_means("another_model").identities_with == 0
        with pytest.raises(Exception, match="chip must be uint8"):
            gallery.add_templates("bob", _unit(1, 3), second=[SecondTemplate("sface_2021dec", "int8", _unit(1, 4)[0],
                                                                              np.zeros((10, 10, 3), np.uint8))])
        assert [i.name for i in gallery.list_identities()] == ["ada"]  # nothing written for bob
    db = sqlite3.connect(tmp_path / "g.db")
    assert db.execute("SELECT model_id, model_version FROM second_embeddings").fetchall() == [("sface_2021dec", "int8")]
    assert db.execute("SELECT length(chip) FROM template_chips").fetchall() == [(int(np.prod(SECOND_CHIP_SHAPE)),)]
    # removing the person removes their SFace embeddings and chips with the templates
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.remove("ada")
    assert db.execute("SELECT COUNT(*) FROM second_embeddings").fetchone() == (0,)
    assert db.execute("SELECT COUNT(*) FROM template_chips").fetchone() == (0,)


def test_export_and_import_keep_both_embeddings(tmp_path: Path) -> None:
    with Gallery(tmp_path / "a.db") as gallery:
        gallery.add_templates("ada", _unit(2, 0), second=[SecondTemplate("sface_2021dec", "fp32", _unit(1, 2)[0]), None])
        gallery.export_to(tmp_path / "out.json")
    document = json.loads((tmp_path / "out.json").read_text())
    templates = document["identities"][0]["templates"]
    assert document["format_version"] == 2
    assert templates[0]["second"]["model_id"] == "sface_2021dec" and templates[0]["second"]["model_version"] == "fp32"
    assert "second" not in templates[1] or templates[1]["second"] is None
    with Gallery(tmp_path / "b.db") as gallery:
        gallery.import_from(tmp_path / "out.json")
        assert np.allclose(gallery.second_means("sface_2021dec").means[0], _unit(1, 2)[0], atol=2e-3)
        assert len(gallery.templates_without_second("sface_2021dec")) == 1


def _version_2_gallery(path: Path, name: str, vector: np.ndarray, source: str) -> None:
    """A gallery as the edgeface before the second opinion wrote it (schema 2, dlib templates only)."""
    db = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS[:2]:
        step(db)
    db.execute("INSERT INTO schema_version VALUES (2)")
    db.execute("INSERT INTO identities (id, name, created) VALUES (1, ?, '2026-01-01T00:00:00+00:00')", (name,))
    db.execute("INSERT INTO templates (identity_id, embedding, source_sha256, created) VALUES (1, ?, ?, '2026-01-01')",
               (vector.astype("<f4").tobytes(), source))
    db.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeface.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


@needs_data
def test_an_old_gallery_works_dlib_only_is_flagged_and_upgraded_from_its_photos(tmp_path: Path) -> None:
    from edgeface.io.images import read_image
    from edgeface.service.doctor import check_gallery
    from edgeface.vision.analyzer import FaceAnalyzer

    photo = DATA / "people" / "barack_obama" / "1.jpg"
    analyzer = FaceAnalyzer.for_camera(Config())
    faces = analyzer.analyze(read_image(photo))
    k = int(np.argmax(faces.detections.area))
    path = tmp_path / "old.db"
    _version_2_gallery(path, "barack_obama", faces.embeddings[k], hashlib.sha256(photo.read_bytes()).hexdigest())

    check = check_gallery(path)
    assert check.status == "warn" and "barack_obama" in check.detail and "gallery upgrade" in (check.fix or "")

    with Gallery(path) as gallery:  # opened: migrated to 3; dlib alone decides for barack
        from edgeface.storage.second_opinion import match_with_second_opinion

        probe = analyzer.analyze(read_image(DATA / "people" / "barack_obama" / "2.jpg"))
        vector = probe.embeddings[int(np.argmax(probe.detections.area))][None]
        matches, asked = match_with_second_opinion(gallery, vector, 0.3776, "always", "sface_2021dec",
                                                   lambda rows: pytest.fail("no SFace template: SFace not asked"))
        assert matches[0].name == "barack_obama" and not asked.any()
        assert matches == gallery.match(vector, 0.3776)
    assert sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)

    without = _cli("gallery", "upgrade", "--gallery", str(path))
    assert without.returncode == 1 and "barack_obama" in without.stderr and "--photos" in without.stderr
    upgraded = _cli("gallery", "upgrade", "--gallery", str(path), "--photos", str(DATA / "people"))
    assert upgraded.returncode == 0, upgraded.stderr
    assert "added 1 SFace embedding" in upgraded.stderr
    assert check_gallery(path).status == "ok"
    with Gallery(path) as gallery:
        assert gallery.second_means("sface_2021dec").identities_with == 1
        assert gallery.templates_without_second("sface_2021dec") == []


@needs_data
def test_enrollment_stores_both_and_matching_fuses_them(tmp_path: Path) -> None:
    from edgeface.io.images import read_image
    from edgeface.storage.second_opinion import match_with_second_opinion
    from edgeface.vision.analyzer import FaceAnalyzer

    gallery_path = tmp_path / "g.db"
    enrolled = _cli("enroll", "--from-folders", str(DATA / "people"), "--gallery", str(gallery_path))
    assert enrolled.returncode == 0, enrolled.stderr
    db = sqlite3.connect(gallery_path)
    templates = db.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
    assert db.execute("SELECT COUNT(*), MIN(model_id), MIN(model_version) FROM second_embeddings").fetchone() == \
        (templates, "sface_2021dec", "int8")
    assert db.execute("SELECT COUNT(*) FROM template_chips").fetchone()[0] == templates
    # a gallery enrolled with the second opinion is not flagged; stored chips re-embed to the stored vectors
    upgrade = _cli("gallery", "upgrade", "--gallery", str(gallery_path))
    assert upgrade.returncode == 0 and "nothing to do" in upgrade.stderr

    analyzer = FaceAnalyzer.from_config(Config().recognition)
    probes = {}
    for key in ("barack_obama/3.jpg", "joe_biden/2.jpg"):
        faces = analyzer.analyze(read_image(DATA / "people" / key))
        k = int(np.argmax(faces.detections.area))
        probes[key] = (faces.embeddings[k], faces.second_embeddings[k])  # type: ignore[index]
    strangers = []
    for path in sorted((DATA / "bbt").glob("[!_]*/*.png"))[::6]:
        faces = analyzer.analyze(read_image(path))
        if len(faces):
            k = int(np.argmax(faces.detections.area))
            strangers.append((faces.embeddings[k], faces.second_embeddings[k]))  # type: ignore[index]
    rows = list(probes.values()) + strangers
    dlib = np.stack([r[0] for r in rows])
    sface = np.stack([r[1] for r in rows])
    with Gallery(gallery_path) as gallery:
        fused, asked = match_with_second_opinion(gallery, dlib, 0.3776, "always", "sface_2021dec", lambda r: sface[r])
        dlib_only = gallery.match(dlib, 0.3776)
    assert asked.all()
    assert [m.name for m in fused[:2]] == ["barack_obama", "joe_biden"]
    assert all(m.name is None for m in fused[2:]), [(m.name, m.distance) for m in fused[2:]]
    # both people are farther from strangers and nearer themselves than dlib alone says (SFace agrees)
    assert fused[0].distance < dlib_only[0].distance and fused[1].distance < dlib_only[1].distance


@pytest.mark.slow
@needs_data
def test_the_camera_loop_asks_sface_only_when_dlib_is_not_clear_cut(tmp_path: Path) -> None:
    """hamilton_clip: Lin-Manuel Miranda is recognised on the same tracks with auto, always and off; auto
    asks SFace for fewer faces than always, off for none; the fused distances are smaller (SFace agrees)."""
    from edgeface.bus import EventBus
    from edgeface.io.sources import open_source
    from edgeface.pipeline import build_pipeline

    clip = DATA / "video" / "hamilton_clip.mp4"
    if not clip.is_file():
        pytest.skip("../shared/data/video is absent")
    gallery_path = tmp_path / "g.db"
    assert _cli("enroll", "--from-folders", str(DATA / "people"), "--gallery", str(gallery_path)).returncode == 0
    outcome = {}
    for mode in ("off", "auto", "always"):
        config = Config.model_validate({"recognition": {"second_opinion": mode}})
        events: list = []
        bus = EventBus()
        bus.subscribe(events.append, name="test", required=True)
        with Gallery(gallery_path) as gallery:
            pipeline = build_pipeline(config, bus=bus, matcher=gallery)
            stats = pipeline.run(open_source(str(clip), every_frame=True))
        recognized = sorted((e.track_id, e.name, round(e.distance, 3)) for e in events if e.type == "recognized")
        outcome[mode] = (recognized, stats.second_opinions, stats.embedded)
    assert [(t, n) for t, n, _ in outcome["off"][0]] == [(t, n) for t, n, _ in outcome["auto"][0]] == \
        [(t, n) for t, n, _ in outcome["always"][0]]
    assert outcome["off"][0] and all(n == "lin_manuel_miranda" for _, n, _ in outcome["off"][0])
    assert outcome["off"][1] == 0 < outcome["auto"][1] <= outcome["always"][1]
    assert all(f < d for (_, _, f), (_, _, d) in zip(outcome["auto"][0], outcome["off"][0]))


@needs_data
def test_eval_identify_scores_dlib_sface_and_fused_from_one_cache(tmp_path: Path) -> None:
    """bbt/ (8 people, half enrolled): one analysis gives both embeddings; each scoring reports its figures,
    fused says how many probes had the second opinion (all with always, at most all with auto)."""
    cache = tmp_path / "faces.npz"
    figures = {}
    for embedder, config in (("dlib", None), ("sface", None), ("fused", None), ("fused", "always")):
        args = ["eval", "identify", "--data", str(DATA / "bbt"), "--cache", str(cache), "--json", "--embedder", embedder]
        if config:
            path = tmp_path / f"{config}.yaml"
            path.write_text(f"recognition:\n  second_opinion: {config}\n")
            args += ["--config", str(path)]
        result = _cli(*args)
        assert result.returncode == 0, result.stderr
        figures[(embedder, config)] = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures[("dlib", None)]["embedder"] == "dlib" and "station_second_opinion_share" not in figures[("dlib", None)]
    assert figures[("fused", "always")]["station_second_opinion_share"] == 1.0
    assert 0.0 <= figures[("fused", None)]["station_second_opinion_share"] <= 1.0
    for result in figures.values():
        assert 0.0 < result["station_rank1"] <= 1.0
    off = tmp_path / "off.yaml"
    off.write_text("recognition:\n  second_opinion: off\n")
    refused = _cli("eval", "identify", "--data", str(DATA / "bbt"), "--cache", str(tmp_path / "off.npz"),
                   "--embedder", "sface", "--config", str(off))
    assert refused.returncode == 1 and "second_opinion" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


@needs_data
def test_identify_asks_the_second_opinion_as_the_camera_loop_does(tmp_path: Path) -> None:
    """bbt/: the cast enrolled, the group photos identified with auto and off: the same names, and the faces
    dlib was not sure about (distance above the band's lower edge) get a fused distance."""
    gallery = tmp_path / "bbt.db"
    assert _cli("enroll", "--from-folders", str(DATA / "bbt"), "--gallery", str(gallery)).returncode == 0
    answers = {}
    for mode in ("auto", "off"):
        config = tmp_path / f"{mode}.yaml"
        config.write_text(f"recognition:\n  second_opinion: {mode}\n")
        result = _cli("identify", "--jsonl", "--gallery", str(gallery), "--config", str(config),
                      *map(str, sorted((DATA / "bbt" / "_group").glob("bbt[345].jpg"))))
        assert result.returncode == 0, result.stderr
        answers[mode] = [(r["path"], f["name"], f["distance"]) for line in result.stdout.splitlines()
                         for r in [json.loads(line)] for f in r["faces"]]
    assert [a[:2] for a in answers["auto"]] == [a[:2] for a in answers["off"]]
    cast = sum(1 for d in (DATA / "bbt").iterdir() if d.is_dir() and not d.name.startswith("_"))
    threshold = MatchThreshold.from_config(Config()).at(cast)  # the band sits around the station's threshold
    lower_edge = threshold - fusion.SECOND_OPINION_BAND_BELOW
    changed = [(a, o) for a, o in zip(answers["auto"], answers["off"]) if a[2] != o[2]]
    assert changed and all(o[2] > lower_edge for _, o in changed)
    assert all(a[2] == o[2] for a, o in zip(answers["auto"], answers["off"]) if o[2] <= lower_edge)


def test_the_shipped_impostor_figures_agree_with_the_fused_calibration() -> None:
    """The fused scale was mapped onto dlib's at the 1e-3 and 1e-4 false-accept points: the shipped
    figures say the same distance for both there."""
    for far in (1e-3, 1e-4):
        dlib, fused = fusion.IMPOSTOR_DISTANCE_AT_FAR[far]
        assert abs(dlib - fused) < 0.002
    distances = [fusion.IMPOSTOR_DISTANCE_AT_FAR[far][1] for far in sorted(fusion.IMPOSTOR_DISTANCE_AT_FAR)]
    assert distances == sorted(distances) and fusion.IMPOSTOR_DISTANCE_AT_FAR[1e-3][0] < 0.3776


def test_upgrade_refuses_a_missing_photo_folder_in_one_line(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add_templates("ada", _unit(1, 0))
    result = _cli("gallery", "upgrade", "--gallery", str(tmp_path / "g.db"), "--photos", str(tmp_path / "nowhere"))
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0 and "not a folder" in result.stderr
    with Gallery(tmp_path / "g.db") as gallery:  # nothing lost
        assert [(i.name, i.template_count) for i in gallery.list_identities()] == [("ada", 1)]


@pytest.mark.slow
@needs_data
def test_a_cluster_named_from_the_camera_gives_the_person_sface_templates_and_fused_decisions(tmp_path: Path) -> None:
    """hamilton_clip with nobody enrolled: the unknown tracks' exemplars carry SFace embeddings; naming the
    biggest cluster stores them with its templates, tagged as enrollment tags them, and a second pass
    over the clip recognises that person with the fused score (distances unlike dlib's alone)."""
    from edgeface.bus import EventBus
    from edgeface.io.sources import open_source
    from edgeface.pipeline import build_pipeline
    from edgeface.storage.cluster_store import ClusterStage, ClusterStore

    clip = DATA / "video" / "hamilton_clip.mp4"
    if not clip.is_file():
        pytest.skip("../shared/data/video is absent")
    gallery_path = tmp_path / "g.db"
    config = Config()
    assert config.recognition.second_opinion == "auto"
    with Gallery(gallery_path) as gallery, ClusterStore(gallery_path, config.clusters, gallery=gallery) as store:
        pipeline = build_pipeline(config, bus=EventBus(), matcher=gallery, clusters=ClusterStage(store))
        stats = pipeline.run(open_source(str(clip), every_frame=True))
        assert stats.second_exemplars > 0
        db = sqlite3.connect(gallery_path)
        exemplars = db.execute("SELECT COUNT(*), COUNT(second_embedding), MIN(second_model_id), MIN(second_model_version)"
                               " FROM cluster_exemplars").fetchone()
        assert exemplars[0] > 0 and exemplars == (exemplars[0], exemplars[0], "sface_2021dec", "int8")
        biggest = max(store.list_clusters(), key=lambda c: c.exemplars)
        store.name(biggest.id, "visitor")
    templates = db.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
    assert templates > 0
    assert db.execute("SELECT COUNT(*), MIN(model_id), MIN(model_version) FROM second_embeddings").fetchone() == \
        (templates, "sface_2021dec", "int8")
    # the stored SFace embeddings are unit vectors, one per template, like enrollment's
    vectors = np.stack([np.frombuffer(b, "<f4") for (b,) in db.execute("SELECT embedding FROM second_embeddings")])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    db.close()

    outcome = {}
    for mode in ("off", "always"):
        events: list = []
        bus = EventBus()
        bus.subscribe(events.append, name="test", required=True)
        with Gallery(gallery_path) as gallery:
            pipeline = build_pipeline(Config.model_validate({"recognition": {"second_opinion": mode}}), bus=bus,
                                      matcher=gallery)
            stats = pipeline.run(open_source(str(clip), every_frame=True))
        outcome[mode] = ([(e.track_id, round(e.distance, 4)) for e in events
                          if e.type == "recognized" and e.name == "visitor"], stats.second_opinions)
    assert outcome["always"][0], "the named cluster's person was not recognised with the second opinion"
    assert outcome["off"][1] == 0 < outcome["always"][1]
    fused, dlib = dict(outcome["always"][0]), dict(outcome["off"][0])
    assert any(fused[t] != dlib[t] for t in fused.keys() & dlib.keys()), (fused, dlib)


@needs_data
def test_sface_chips_follow_store_face_crops_and_go_with_their_person(tmp_path: Path) -> None:
    """The 112 px SFace chips are face images: with clusters.store_face_crops off none is stored (the
    embeddings are), turning it off erases those kept before, and removing a person erases theirs."""
    from edgeface.config import ClusterSettings
    from edgeface.storage.cluster_store import ClusterStore

    people = tmp_path / "people"
    for name in ("barack_obama", "joe_biden"):
        (people / name).mkdir(parents=True)
        for photo in sorted((DATA / "people" / name).glob("*.jpg"))[:2]:
            (people / name / photo.name).symlink_to(photo)
    off = tmp_path / "off.yaml"
    off.write_text("clusters:\n  store_face_crops: false\n")

    def counts(path: Path) -> tuple[int, int, int]:
        with sqlite3.connect(path) as db:
            return tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # type: ignore[return-value]
                         for t in ("templates", "second_embeddings", "template_chips"))

    without = tmp_path / "without.db"
    enrolled = _cli("enroll", "--from-folders", str(people), "--gallery", str(without), "--config", str(off))
    assert enrolled.returncode == 0, enrolled.stderr
    templates, seconds, chips = counts(without)
    assert templates == seconds > 0 and chips == 0

    kept = tmp_path / "kept.db"
    assert _cli("enroll", "--from-folders", str(people), "--gallery", str(kept)).returncode == 0
    templates, seconds, chips = counts(kept)
    assert templates == seconds == chips > 0
    with Gallery(kept) as gallery:
        obama = gallery.show("barack_obama").template_count
    removed = _cli("gallery", "remove", "barack_obama", "--gallery", str(kept))
    assert removed.returncode == 0, removed.stderr
    assert counts(kept) == (templates - obama, seconds - obama, chips - obama)
    ClusterStore(kept, ClusterSettings(store_face_crops=False)).close()  # as `run` opens it with crops off
    assert counts(kept) == (templates - obama, seconds - obama, 0)
