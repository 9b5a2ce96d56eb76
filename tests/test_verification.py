from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeface.eval.verification import best_threshold, read_lfw_pairs, tar_at_far, ten_fold_accuracy

SHARED_LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"


def test_best_threshold_separates_clean_data() -> None:
    distances = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    same = np.array([True, True, True, False, False, False])
    threshold = best_threshold(distances, same)
    assert 0.3 < threshold < 0.7


def test_missing_pairs_count_as_errors() -> None:
    distances = np.array([0.1, np.nan, 0.9, np.nan] * 10)
    same = np.array([True, True, False, False] * 10)
    folds = np.repeat(np.arange(10), 4)
    result = ten_fold_accuracy(distances, same, folds)
    assert result.mean_accuracy == pytest.approx(0.5)


def test_tar_at_far_counts_allowed_false_accepts() -> None:
    different = np.linspace(0.5, 1.5, 1000)
    genuine = np.linspace(0.0, 1.0, 1000)
    distances = np.concatenate([genuine, different])
    same = np.concatenate([np.ones(1000, bool), np.zeros(1000, bool)])
    tar, threshold = tar_at_far(distances, same, far=1e-3)
    assert ((different < threshold).mean()) <= 1e-3
    assert tar == pytest.approx((genuine < threshold).mean())
    assert 0.49 < tar < 0.52


@pytest.mark.skipif(not SHARED_LFW.is_dir(), reason="../shared/data/lfw is absent")
@pytest.mark.parametrize(("name", "count", "folds"), [("pairs.txt", 6000, 10), ("pairsDevTrain.txt", 2200, 1)])
def test_reads_real_pair_lists(name: str, count: int, folds: int) -> None:
    pairs = read_lfw_pairs(SHARED_LFW / name)
    assert len(pairs) == count
    assert len({p.fold for p in pairs}) == folds
    assert sum(p.same for p in pairs) == count // 2
    assert all((SHARED_LFW / "images" / p.first).is_file() for p in pairs[:50])


def test_malformed_pair_list_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.txt"
    bad.write_text("1 1\nA 1\nB 1 2\n")
    with pytest.raises(ValueError, match="not a pair"):
        read_lfw_pairs(bad)
