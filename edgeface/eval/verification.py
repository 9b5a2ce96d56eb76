"""Face verification metrics on labelled pairs: the LFW 10-fold protocol and TAR at a fixed FAR.

A pair whose distance is NaN (an image without a detected face) always counts as an error: a
same-person pair is rejected and a different-person pair is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Pair:
    first: str
    second: str
    same: bool
    fold: int


def lfw_image_path(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def read_lfw_pairs(path: Path) -> list[Pair]:
    """Pairs from an LFW pair list: View 2 (`folds  per_fold` header) or View 1 (one count header)."""
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    if len(header) == 2:
        folds, per_fold = int(header[0]), int(header[1])
    else:
        folds, per_fold = 1, int(header[0])
    if len(rows) != folds * 2 * per_fold:
        raise ValueError(f"{path}: expected {folds * 2 * per_fold} pairs after the header, found {len(rows)}")
    pairs: list[Pair] = []
    for index, row in enumerate(rows):
        fold = index // (2 * per_fold)
        if len(row) == 3:
            pairs.append(Pair(lfw_image_path(row[0], int(row[1])), lfw_image_path(row[0], int(row[2])), True, fold))
        elif len(row) == 4:
            pairs.append(Pair(lfw_image_path(row[0], int(row[1])), lfw_image_path(row[2], int(row[3])), False, fold))
        else:
            raise ValueError(f"{path}: line {index + 2} is not a pair: {' '.join(row)}")
    return pairs


def _accept(distances: np.ndarray, threshold: float) -> np.ndarray:
    return distances < threshold


def _accuracy(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
    accepted = _accept(distances, threshold)
    missing = np.isnan(distances)
    correct = (accepted == same) & ~missing
    return float(correct.mean())


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The threshold (accept when distance < threshold) with the highest accuracy on these pairs."""
    finite = np.sort(distances[~np.isnan(distances)])
    if finite.size == 0:
        return 0.0
    candidates = np.concatenate([[finite[0] - 1e-6], (finite[:-1] + finite[1:]) / 2, [finite[-1] + 1e-6]])
    valid = ~np.isnan(distances)
    d, s = distances[valid], same[valid]
    order = np.argsort(d)
    d, s = d[order], s[order]
    # accuracy(candidate i) = same pairs below it + different pairs at or above it
    same_below = np.concatenate([[0], np.cumsum(s)])
    diff_above = (~s).sum() - np.concatenate([[0], np.cumsum(~s)])
    return float(candidates[int(np.argmax(same_below + diff_above))])


@dataclass(frozen=True)
class TenFoldResult:
    mean_accuracy: float
    std_accuracy: float
    fold_accuracies: list[float]
    thresholds: list[float]


def ten_fold_accuracy(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> TenFoldResult:
    """Threshold chosen on the other folds, accuracy measured on the held-out fold."""
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        threshold = best_threshold(distances[train], same[train])
        thresholds.append(threshold)
        accuracies.append(_accuracy(distances[test], same[test], threshold))
    return TenFoldResult(float(np.mean(accuracies)), float(np.std(accuracies)), accuracies, thresholds)


def tar_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """(true accept rate, threshold) at the largest threshold whose false accept rate is <= far."""
    different = np.where(np.isnan(distances[~same]), -np.inf, distances[~same])
    genuine = np.where(np.isnan(distances[same]), np.inf, distances[same])
    allowed_false_accepts = int(np.floor(far * different.size))
    ordered = np.sort(different)
    threshold = float(ordered[allowed_false_accepts]) if allowed_false_accepts < ordered.size else np.inf
    return float((genuine < threshold).mean()), threshold
