from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeface.errors import EdgefaceError
from edgeface.eval.cluster import (
    average_linkage,
    cluster_scores,
    cut_curve,
    select,
    tentative_rule,
)

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw" / "images"


def test_scores_follow_the_definitions() -> None:
    # clusters {a, a, b} and {b, b}
    scores = cluster_scores([1, 1, 1, 2, 2], ["a", "a", "b", "b", "b"])
    assert scores.bcubed_precision == pytest.approx(11 / 15)  # (2/3 + 2/3 + 1/3 + 1 + 1) / 5
    assert scores.bcubed_recall == pytest.approx(11 / 15)  # (1 + 1 + 1/3 + 2/3 + 2/3) / 5
    assert scores.pairwise_precision == pytest.approx(2 / 4) and scores.pairwise_recall == pytest.approx(2 / 4)
    assert (scores.clusters, scores.classes) == (2, 2)
    perfect = cluster_scores([7, 7, 3], ["x", "x", "y"])
    assert perfect.bcubed_f == perfect.pairwise_f == 1.0
    lumped = cluster_scores([0, 0, 0, 0], ["a", "b", "c", "d"])
    assert lumped.bcubed_precision == pytest.approx(0.25) and lumped.bcubed_recall == 1.0
    with pytest.raises(EdgefaceError):
        cluster_scores([1], [1, 2])


def _naive_average_linkage(x: np.ndarray) -> list[tuple[float, frozenset]]:
    """Textbook O(n^3) UPGMA: (height, merged cluster) per step."""
    d = np.sqrt(np.clip(2 - 2 * x @ x.T, 0, 4))
    clusters = [frozenset([i]) for i in range(len(x))]
    out = []
    while len(clusters) > 1:
        best = None
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                h = np.mean([d[a, b] for a in clusters[i] for b in clusters[j]])
                if best is None or h < best[0]:
                    best = (h, i, j)
        h, i, j = best  # type: ignore[misc]
        merged = clusters[i] | clusters[j]
        clusters = [c for k, c in enumerate(clusters) if k not in (i, j)] + [merged]
        out.append((float(h), merged))
    return out


def _cut(merges: np.ndarray, n: int, steps: int) -> list[int]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b, _ in merges[:steps]:
        parent[find(int(b))] = find(int(a))
    return [find(i) for i in range(n)]


def test_average_linkage_matches_the_textbook_algorithm() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 128)).astype(np.float32)
    x[10:20] += 2 * x[10]  # a few tight groups so that the tree has real structure
    x[20:] += 2 * x[20]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    fast = average_linkage(x)
    slow = _naive_average_linkage(x)
    assert np.allclose(fast[:, 2], [h for h, _ in slow], atol=1e-4)
    for steps in (5, 15, 25, 28):
        groups: dict[int, set] = {}
        for item, root in enumerate(_cut(fast, len(x), steps)):
            groups.setdefault(root, set()).add(item)
        expected = {frozenset([i]) for i in range(len(x))}
        for _, merged in slow[:steps]:
            expected = {c for c in expected if not c <= merged} | {merged}
        assert {frozenset(g) for g in groups.values()} == expected


def test_cut_curve_equals_scoring_each_cut() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, 40)
    x = rng.normal(size=(6, 128))[labels] + rng.normal(scale=0.9, size=(40, 128))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    merges = average_linkage(x.astype(np.float32))
    curve = cut_curve(merges, labels)
    for steps in (1, 10, 20, 34, 39):
        direct = cluster_scores(_cut(merges, 40, steps), labels)
        k = steps - 1
        assert curve.bcubed_precision[k] == pytest.approx(direct.bcubed_precision)
        assert curve.bcubed_recall[k] == pytest.approx(direct.bcubed_recall)
        assert curve.pairwise_precision[k] == pytest.approx(direct.pairwise_precision)
        assert curve.pairwise_recall[k] == pytest.approx(direct.pairwise_recall)
        assert curve.clusters[k] == direct.clusters


def test_tentative_rule_counts_spurious_clusters() -> None:
    # cluster 1: person 0 x3; cluster 2: strangers 8 and 9 lumped; cluster 3: person 1 x2; cluster 4: stranger 7
    final = np.array([1, 1, 1, 2, 2, 3, 3, 4])
    truth = np.array([0, 0, 0, 8, 9, 1, 1, 7])
    rules = {r.n: r for r in tentative_rule(final, truth, returning={0, 1})}
    assert (rules[1].confirmed, rules[1].spurious) == (4, 2)
    assert (rules[2].confirmed, rules[2].spurious, rules[2].returning_people_confirmed) == (3, 1, 1.0)
    assert (rules[3].confirmed, rules[3].spurious, rules[3].returning_people_confirmed) == (1, 0, 0.5)


def test_selection_caps_people_and_picks_distractors(tmp_path: Path) -> None:
    people = {f"p{k}": [tmp_path / f"p{k}_{i:02d}.jpg" for i in range(n)] for k, n in enumerate([40, 4, 3, 1, 1, 1])}
    files, labels, returning = select(people, min_images=4, max_per_person=30, distractors=2)
    assert returning == {0, 1}
    assert labels.count(0) == 30 and labels.count(1) == 4 and 2 not in labels
    assert len([label for label in labels if label >= 3]) == 2
    assert files[:30] == people["p0"][:30]
    with pytest.raises(EdgefaceError, match="at least two people"):
        select({"a": people["p0"], "b": people["p3"]})


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeface.cli", "eval", "cluster", *args],
                          check=False, capture_output=True, text=True, timeout=900)


def test_bad_data_folder_is_one_clear_line(tmp_path: Path) -> None:
    done = _run("--data", str(tmp_path / "missing"))
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "not a folder" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(not LFW.is_dir(), reason="../shared/data/lfw is absent")
def test_real_lfw_subset_end_to_end(tmp_path: Path) -> None:
    """10 returning people (4-9 photos) and 15 one-photo strangers, linked (not copied) from LFW."""
    data = tmp_path / "data"
    data.mkdir()
    folders = sorted(p for p in LFW.iterdir() if p.is_dir())
    returning = [p for p in folders if 4 <= len(list(p.iterdir())) <= 9][:10]
    strangers = [p for p in folders if len(list(p.iterdir())) == 1][:15]
    for folder in returning + strangers:
        (data / folder.name).symlink_to(folder)
    cache = tmp_path / "cache.npz"
    done = _run("--data", str(data), "--seeds", "2", "--json", "--cache", str(cache), "--face", "central")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["items"] == sum(len(list(p.iterdir())) for p in returning) + 15
    assert figures["true_clusters"] == 25 and figures["returning_people"] == 10 and figures["distractors"] == 15
    assert figures["online_f"] >= 0.85 and figures["offline_f"] >= 0.85
    assert figures["online_f"] >= 0.95 * figures["offline_f"]
    assert 0 < figures["update_ms_at_10k"] < 5
    assert [t["n"] for t in figures["tentative"]] == [1, 2, 3, 4, 5]
    assert "BCubed" in done.stderr and "offline" in done.stderr
    assert cache.is_file() and len(np.load(cache)["files"]) == figures["items"]


CELEBA = LFW.parents[1] / "celeba" / "images"


@pytest.mark.slow
@pytest.mark.skipif(not CELEBA.is_dir(), reason="../shared/data/celeba is absent")
def test_real_celeba_subset_largest_face_and_precomputed_faces(tmp_path: Path) -> None:
    """6 CelebA people x 15 whole-scene photos (linked, not copied): every person streamed, no
    distractors, the largest face; the faces table written by --cache scores the same through --faces."""
    data = tmp_path / "celeba" / "images"
    data.mkdir(parents=True)
    for folder in sorted(p for p in CELEBA.iterdir() if p.is_dir())[:6]:
        (data / folder.name).symlink_to(folder)
    cache = tmp_path / "faces.npz"
    done = _run("--data", str(data.parent), "--seeds", "2", "--json", "--no-speed", "--cache", str(cache))
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["face"], figures["dataset"], figures["faces"]) == ("largest", "celeba", "edgeface")
    assert figures["true_clusters"] == figures["returning_people"] == 6 and figures["distractors"] == 0
    assert figures["items"] + figures["without_face"] == 90
    assert figures["online_f"] >= 0.8 and figures["online_f_min"] <= figures["online_f_median"] <= figures["online_f_max"]
    again = _run("--data", str(data.parent), "--seeds", "2", "--json", "--no-speed", "--faces", str(cache))
    assert again.returncode == 0, again.stderr
    reference = json.loads(again.stdout.strip().splitlines()[-1])
    assert reference["online_f"] == figures["online_f"] and reference["faces"] != "edgeface"
    missing = _run("--data", str(LFW.parent), "--faces", str(cache))
    assert missing.returncode == 1 and "lacks" in missing.stderr and missing.stderr.count("\n") == 1
