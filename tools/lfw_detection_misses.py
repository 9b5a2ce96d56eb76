"""Count BlazeFace misses on LFW (all 13,233 images by default), for each detector option.

LFW (deep-funneled, 250x250) has one face near the centre of every image, so a "hit" is a detection
whose box centre lies within --centre-fraction of the image size from the image centre; anything
else is a miss. The target is misses <= 0.3 % of the images.

Options measured (one pass over the images; each model runs once per image and variant):
  - short / full range, `detect` at a range of score thresholds (incl. MediaPipe's defaults 0.5 / 0.6),
    i.e. without any fallback;
  - `detect_central` as shipped (normal threshold; lower fallback threshold for a face covering the
    image centre);
  - full range on the image padded with black to twice its size (the full-range model prefers
    smaller faces than LFW's tight crops);
  - full range, then short range only for the images full range missed.

Usage: python tools/lfw_detection_misses.py [--data-dir ../shared/data] [--pairs-only] [--every N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgeface.io.images import read_image
from edgeface.vision.blazeface import BlazeFaceDetector
from edgeface.vision.detections import FaceDetections

SWEEP_LOW_SCORE = 0.05
"""Detections are collected once at this score; the misses at every higher threshold follow from it."""

THRESHOLDS = (0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
MAX_LISTED = 40


def all_images(lfw_dir: Path) -> list[Path]:
    return sorted((lfw_dir / "images").glob("*/*.jpg"))


def pairs_images(lfw_dir: Path) -> list[Path]:
    """Every image named in pairs.txt (same pairs: name i j; different pairs: name1 i name2 j)."""
    names: set[tuple[str, int]] = set()
    for line in (lfw_dir / "pairs.txt").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3:
            names |= {(parts[0], int(parts[1])), (parts[0], int(parts[2]))}
        elif len(parts) == 4:
            names |= {(parts[0], int(parts[1])), (parts[2], int(parts[3]))}
    return [lfw_dir / "images" / name / f"{name}_{index:04d}.jpg" for name, index in sorted(names)]


def central_score(faces: FaceDetections, width: int, height: int, centre_fraction: float) -> float:
    """Best score among detections centred near the image centre (0 when there is none)."""
    if not len(faces):
        return 0.0
    centres = (faces.xyxy[:, :2] + faces.xyxy[:, 2:]) / 2
    distance = np.hypot(centres[:, 0] - width / 2, centres[:, 1] - height / 2)
    near = distance <= centre_fraction * min(width, height)
    return float(faces.score[near].max()) if near.any() else 0.0


def pad_to_twice(image: np.ndarray) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    return cv2.copyMakeBorder(image, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_CONSTANT, value=0)


def measure(
    paths: list[Path], runs: dict[str, Callable[[np.ndarray], FaceDetections]], centre_fraction: float
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Central score per image and mean milliseconds per image, for each run."""
    scores = {name: np.zeros(len(paths)) for name in runs}
    seconds = dict.fromkeys(runs, 0.0)
    for i, path in enumerate(paths):
        image = read_image(path)
        h, w = image.shape[:2]
        for name, run in runs.items():
            t0 = time.perf_counter()
            faces = run(image)
            seconds[name] += time.perf_counter() - t0
            scale = 2 if name == "full_padded" else 1
            scores[name][i] = central_score(faces, w * scale, h * scale, centre_fraction)
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1}/{len(paths)}", file=sys.stderr)
    return scores, {name: 1e3 * s / max(1, len(paths)) for name, s in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--pairs-only", action="store_true", help="only the images named in pairs.txt")
    parser.add_argument("--every", type=int, default=1, help="use every Nth image (1 = all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--centre-fraction", type=float, default=0.2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    lfw_dir = args.data_dir / "lfw"
    if not (lfw_dir / "images").is_dir():
        print(f"no LFW data at {lfw_dir}; pass --data-dir", file=sys.stderr)
        return 2
    paths = (pairs_images(lfw_dir) if args.pairs_only else all_images(lfw_dir))[:: args.every]
    short = BlazeFaceDetector("short", threads=args.threads)
    full = BlazeFaceDetector("full", threads=args.threads)
    runs: dict[str, Callable[[np.ndarray], FaceDetections]] = {
        "short": lambda image: short.detect(image, score_threshold=SWEEP_LOW_SCORE),
        "full": lambda image: full.detect(image, score_threshold=SWEEP_LOW_SCORE),
        "full_padded": lambda image: full.detect(pad_to_twice(image), score_threshold=SWEEP_LOW_SCORE),
        "short_central": short.detect_central,
        "full_central": full.detect_central,
    }
    started = time.perf_counter()
    scores, ms = measure(paths, runs, args.centre_fraction)
    elapsed = time.perf_counter() - started

    missed: dict[str, np.ndarray] = {}
    rows: list[tuple[str, np.ndarray, float]] = []
    for model, detector in (("short", short), ("full", full)):
        for threshold in THRESHOLDS:
            mark = " (default, no fallback)" if threshold == detector.score_threshold else ""
            rows.append((f"{model}, detect, score >= {threshold:.2f}{mark}", scores[model] < threshold, ms[model]))
            if mark:
                missed[f"{model}, detect at default {threshold:.2f}"] = rows[-1][1]
        label = f"{model}, detect_central ({detector.score_threshold:.2f}, central fallback {detector.fallback_score_threshold:.2f})"
        rows.append((label, scores[f"{model}_central"] == 0, ms[f"{model}_central"]))
        missed[f"{model}, detect_central"] = rows[-1][1]
    for threshold in (0.6, 0.5):
        rows.append((f"full on image padded to 2x, score >= {threshold:.2f}", scores["full_padded"] < threshold, ms["full_padded"]))
    full_missed = scores["full"] < full.score_threshold
    rows.append(
        (
            "full (0.60), then short (0.50) where full missed",
            full_missed & (scores["short"] < short.score_threshold),
            ms["full"] + ms["short"] * float(full_missed.mean()),
        )
    )

    n = len(paths)
    print(
        f"LFW images: {n} ({'pairs.txt' if args.pairs_only else 'all'}, every {args.every}), hit = detection centred "
        f"within {args.centre_fraction:.0%} of the image size from the centre; target misses <= {0.003 * n:.1f} (0.3 %)"
    )
    print(f"{'option':70s} {'misses':>7s} {'rate':>7s} {'ms/img':>7s}")
    for label, misses, cost in rows:
        print(f"{label:70s} {int(misses.sum()):7d} {100 * misses.mean():6.2f}% {cost:7.2f}")
    for label, misses in missed.items():
        names = [paths[i].name for i in np.flatnonzero(misses)]
        more = f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
        print(f"missed by {label} ({len(names)}): {', '.join(names[:MAX_LISTED])}{more}")
    for model in ("short", "full"):
        lowest = np.argsort(scores[model], kind="stable")[:5]
        print(f"lowest central scores, {model}: " + ", ".join(f"{paths[i].name} {scores[model][i]:.2f}" for i in lowest))
    print(f"total {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
