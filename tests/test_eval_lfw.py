"""`edgeface eval lfw` on LFW-format pair lists: LFW itself and the in-the-wild CelebA set, edgeface's
own faces and another system's faces file. Reads ../shared/data and skips when it is absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeface.eval.data import FaceTable, default_face_rule
from edgeface.eval.lfw import run_lfw_evaluation
from edgeface.eval.verification import read_lfw_pairs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CELEBA = DATA / "celeba"
needs_celeba = pytest.mark.skipif(not (CELEBA / "pairs.txt").is_file(), reason="../shared/data/celeba is absent")


def test_the_labelled_face_is_central_on_lfw_and_the_largest_elsewhere() -> None:
    assert default_face_rule(DATA / "lfw") == "central"
    assert default_face_rule(CELEBA) == "largest"


def test_face_table_picks_per_rule_and_marks_images_without_a_face(tmp_path: Path) -> None:
    # image a: a small central face and a big corner face; image b: no face
    vectors = np.eye(3, 128, dtype=np.float32) * 2
    table = FaceTable(["a.jpg", "b.jpg"], np.array([[200, 200], [100, 100]], np.float32), np.array([0, 0, 0]),
                      np.array([[90, 90, 110, 110], [0, 0, 80, 80], [150, 150, 170, 170]], np.float32), vectors, "k", 0.1)
    table.save(tmp_path / "t.npz")
    again = FaceTable.load(tmp_path / "t.npz")
    central, largest = again.pick("central"), again.pick("largest")
    assert central[0].tolist() == np.eye(3, 128)[0].tolist()  # unit length
    assert largest[0].tolist() == np.eye(3, 128)[1].tolist()
    assert np.isnan(central[1]).all() and np.isnan(largest[1]).all()
    assert np.isnan(again.pick("central", ["missing.jpg"])).all()


@needs_celeba
def test_celeba_verification_subset_through_the_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgeface.cli", "eval", "lfw", "--data", str(CELEBA), "--precision", "int8",
         "--max-pairs-per-fold", "3", "--cache-dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["pairs"] == 60 and figures["face_rule"] == "largest"
    assert figures["images_without_face"] <= 2  # 5 of the 1,500 photos have no face the detector finds
    assert figures["int8_accuracy"] >= 0.85
    assert 0 <= figures["int8_far_at_match_threshold"] <= 0.05
    assert list(tmp_path.glob("faces-*.npz"))  # the cache the next run reuses


@needs_celeba
def test_another_systems_faces_are_scored_by_the_same_protocol(tmp_path: Path) -> None:
    """A faces file (as tools/face_recognition_faces.py writes) with a face for only some images: the
    others count as errors in every pair they are in."""
    from edgeface.config import RecognitionConfig

    every = read_lfw_pairs(CELEBA / "pairs.txt")
    pairs = [p for fold in (0, 1) for same in (True, False) for p in [q for q in every if q.fold == fold and q.same == same][:5]]
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    people = sorted({n.split("/")[0] for n in names})
    rng = np.random.default_rng(0)
    identity = {person: rng.normal(size=128) for person in people}
    with_face = names[1:]  # the first image "has no face"
    vectors = np.stack([identity[n.split("/")[0]] + 0.01 * rng.normal(size=128) for n in with_face]).astype(np.float32)
    FaceTable(names, np.full((len(names), 2), 100, np.float32), np.arange(1, len(names)),
              np.tile(np.array([[10, 10, 90, 90]], np.float32), (len(with_face), 1)), vectors, "other", 0.0
              ).save(tmp_path / "other.npz")
    (tmp_path / "pairs.txt").write_text("2 5\n" + "\n".join(
        f"{p.first.split('/')[0]}\t{int(p.first[-8:-4])}\t{int(p.second[-8:-4])}" if p.same else
        f"{p.first.split('/')[0]}\t{int(p.first[-8:-4])}\t{p.second.split('/')[0]}\t{int(p.second[-8:-4])}"
        for p in pairs) + "\n")
    report = run_lfw_evaluation(CELEBA, tmp_path / "pairs.txt", RecognitionConfig(), ["int8"], progress=False,
                                faces_file=tmp_path / "other.npz")
    assert report.images_without_face == [names[0]]
    broken = report.pairs_with_missing_face
    assert broken >= 1
    assert report.results[0].accuracy == pytest.approx(1 - broken / 20)
