from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeface.errors import EdgefaceError
from edgeface.eval.identify import (
    dataset_people,
    identification_figures,
    run_identify_evaluation,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _unit(angle_deg: float) -> np.ndarray:
    """A unit vector in the plane of the first two axes."""
    v = np.zeros(128, np.float32)
    v[0], v[1] = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return v


def test_figures_follow_the_definitions() -> None:
    gallery = np.stack([_unit(0), _unit(90)])
    owner = np.array([0, 1])
    # mated: two right and near, one right but far, one nearer the wrong person, one without a face
    mated = np.stack([_unit(5), _unit(82), _unit(40), _unit(50), np.full(128, np.nan, np.float32)])
    mated_owner = np.array([0, 1, 0, 0, 1])
    # 100 strangers: one at 10 degrees from person 0, the rest far away (or no face)
    strangers = np.stack([_unit(10)] + [-_unit(45)] * 98 + [np.full(128, np.nan, np.float32)])
    figures = identification_figures(gallery, owner, mated, mated_owner, strangers)
    assert figures.rank1 == pytest.approx(3 / 5)
    # FAR 1%: one stranger may match: the threshold is the 2nd-nearest stranger (far): all 3 correct count
    assert figures.dir_at_far[0.01] == pytest.approx(3 / 5)
    # FAR 0.1%: no stranger may match: threshold = distance at 10 degrees: only the probes 5 and 8 degrees from their person
    assert figures.threshold_at_far[0.001] == pytest.approx(np.linalg.norm(_unit(10) - _unit(0)), abs=1e-5)
    assert figures.dir_at_far[0.001] == pytest.approx(2 / 5)


def test_without_strangers_dir_is_undefined() -> None:
    figures = identification_figures(np.stack([_unit(0)]), np.array([0]), np.stack([_unit(1)]), np.array([0]),
                                     np.zeros((0, 128), np.float32))
    assert figures.rank1 == 1.0 and figures.dir_at_far[0.01] is None


def test_dataset_needs_people_with_two_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.jpg").write_bytes(b"")
    with pytest.raises(EdgefaceError, match="two or more images"):
        dataset_people(tmp_path)


@pytest.mark.skipif(not (DATA / "orl").is_dir(), reason="../shared/data is absent")
def test_real_faces_cast_plus_strangers(tmp_path: Path) -> None:
    """bbt's 8 people (5 crops each) enrolled; one photo each of 40 ORL people as strangers."""
    from edgeface.config import Config
    from edgeface.vision.analyzer import FaceAnalyzer

    for person in (DATA / "bbt").iterdir():
        if not person.name.startswith("_"):
            (tmp_path / person.name).symlink_to(person)
    for person in sorted(p for p in (DATA / "orl").iterdir() if p.is_dir()):
        (tmp_path / f"orl_{person.name}").mkdir()
        (tmp_path / f"orl_{person.name}" / "1.pgm").symlink_to(person / "1.pgm")
    report = run_identify_evaluation(tmp_path, lambda: FaceAnalyzer.from_config(Config().recognition), templates=2,
                                     progress=False, seeds=1, cache=tmp_path / "cache.npz")
    assert (report.full.gallery_people, report.full.mated, report.full.non_mated) == (8, 24, 40)
    assert report.full.rank1 >= 0.95
    assert report.full.dir_at_far[0.01] is not None and report.full.dir_at_far[0.01] >= 0.8
    again = run_identify_evaluation(tmp_path, None, templates=2, progress=False, seeds=1, cache=tmp_path / "cache.npz")
    assert again.as_dict()["rank1"] == report.as_dict()["rank1"]  # from the cache: no analyser needed


def _near(rows: np.ndarray, cosines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors with the given cosine to each row (rows unit)."""
    noise = rng.normal(size=rows.shape).astype(np.float32)
    noise -= np.sum(noise * rows, axis=1, keepdims=True) * rows
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cosines[:, None] * rows + np.sqrt(1 - cosines[:, None] ** 2) * noise).astype(np.float32)


def test_gallery_size_figures_decide_as_the_station_does(tmp_path: Path) -> None:
    """`--gallery-size` figures with fused scoring are the station's own decision (Gallery with SFace
    templates, match_with_second_opinion, the auto band around the threshold): same people named, on
    probes whose dlib and SFace answers disagree around the threshold; dlib's search alone names others."""
    from edgeface.eval.identify import Scoring, default_figures
    from edgeface.storage.gallery import Gallery, SecondTemplate
    from edgeface.storage.second_opinion import match_with_second_opinion
    from edgeface.vision.sface import SFACE_MODEL_ID

    rng = np.random.default_rng(7)
    people, threshold = 30, 0.36
    dlib = _near(np.eye(128, dtype=np.float32)[:people], np.zeros(people), rng)
    sface = _near(np.eye(128, dtype=np.float32)[-people:], np.zeros(people), rng)
    owner = np.arange(people)
    who = rng.integers(0, people, 400)
    dlib_distance = rng.uniform(0.25, 0.5, 400)
    probes = _near(dlib[who], 1 - dlib_distance ** 2 / 2, rng)
    second = _near(sface[who], rng.uniform(-0.1, 0.7, 400), rng)
    mated, non_mated = slice(0, 200), slice(200, 400)  # the second half plays strangers near someone

    def station_rates() -> tuple[float, float]:
        with Gallery(tmp_path / "g.db") as gallery:
            for i in range(people):
                gallery.add_templates(f"{i:09d}", dlib[i][None], second=[SecondTemplate(SFACE_MODEL_ID, "int8", sface[i])])
            matches, asked = match_with_second_opinion(gallery, probes, threshold, "auto", SFACE_MODEL_ID,
                                                       lambda rows: second[rows])
        assert 0 < asked.sum() < len(probes)
        named = np.array([-1 if m.name is None else int(m.name) for m in matches])
        return float(np.mean(named[non_mated] >= 0)), float(np.mean(named[mated] == who[mated]))

    fused = default_figures(dlib, owner, probes[mated], who[mated], probes[non_mated], threshold, "mean",
                            (sface, second[mated], second[non_mated]), Scoring("fused", "auto", threshold))
    alone = default_figures(dlib, owner, probes[mated], who[mated], probes[non_mated], threshold, "mean")
    assert fused == pytest.approx(station_rates())
    assert fused != pytest.approx(alone)
