"""Count BlazeFace misses on the LFW images used by pairs.txt (View 2), for each detector option.

LFW (deep-funneled, 250x250) has one face near the centre of every image, so a "hit" is a detection
whose box centre lies within --centre-fraction of the image size from the image centre; anything
else is a miss. The target is misses <= 0.3 % of the images.

Options measured (one pass over the images, each model run once per image and variant):
  - short / full range, `detect` at a range of score thresholds (incl. MediaPipe's defaults 0.5 / 0.6);
  - `detect_central` as shipped (normal threshold, then the lower fallback threshold);
  - full range on the image padded with black to twice its size (the full-range model prefers
    smaller faces than LFW's tight crops);
  - full range, then short range only for the images full range missed.

Usage: python tools/lfw_detection_misses.py [--data-dir ../shared/data] [--every N] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgeface.detect import BlazeFaceDetector  # noqa: E402
from edgeface.imageio import read_image  # noqa: E402
from edgeface.types import FaceDetections  # noqa: E402

SWEEP_LOW_SCORE = 0.05
"""Detections are collected once at this score; the misses at every higher threshold follow from it."""

THRESHOLDS = (0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def pairs_images(lfw_dir: Path) -> list[Path]:
    """Every image named in pairs.txt (same pairs: name i j; different pairs: name1 i name2 j)."""
    names: set[tuple[str, int]] = set()
    lines = (lfw_dir / "pairs.txt").read_text().splitlines()[1:]
    for line in lines:
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


@dataclass
class Variant:
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--every", type=int, default=1, help="use every Nth image (1 = all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--centre-fraction", type=float, default=0.2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    lfw_dir = args.data_dir / "lfw"
    if not (lfw_dir / "pairs.txt").is_file():
        print(f"no LFW data at {lfw_dir}; pass --data-dir", file=sys.stderr)
        return 2
    paths = pairs_images(lfw_dir)[:: args.every]
    short = BlazeFaceDetector("short", threads=args.threads)
    full = BlazeFaceDetector("full", threads=args.threads)
    import cv2

    variants: dict[str, Variant] = {
        name: Variant() for name in ("short", "full", "full_padded", "short_central", "full_central")
    }
    started = time.perf_counter()
    for path in paths:
        image = read_image(path)
        h, w = image.shape[:2]
        padded = cv2.copyMakeBorder(image, h // 2, h // 2, w // 2, w // 2, cv2.BORDER_CONSTANT, value=0)
        runs = {
            "short": lambda: short.detect(image, score_threshold=SWEEP_LOW_SCORE),
            "full": lambda: full.detect(image, score_threshold=SWEEP_LOW_SCORE),
            "full_padded": lambda: full.detect(padded, score_threshold=SWEEP_LOW_SCORE),
            "short_central": lambda: short.detect_central(image),
            "full_central": lambda: full.detect_central(image),
        }
        for name, run in runs.items():
            t0 = time.perf_counter()
            faces = run()
            variants[name].seconds += time.perf_counter() - t0
            size = padded.shape[:2] if name == "full_padded" else (h, w)
            variants[name].scores.append(central_score(faces, size[1], size[0], args.centre_fraction))
    elapsed = time.perf_counter() - started

    n = len(paths)
    scores = {name: np.asarray(v.scores) for name, v in variants.items()}
    ms = {name: 1e3 * v.seconds / n for name, v in variants.items()}
    rows: list[tuple[str, int, float]] = []
    for model, detector in (("short", short), ("full", full)):
        for threshold in THRESHOLDS:
            mark = " (default)" if threshold == detector.score_threshold else ""
            rows.append((f"{model}, detect, score >= {threshold:.2f}{mark}", int((scores[model] < threshold).sum()), ms[model]))
        rows.append(
            (
                f"{model}, detect_central ({detector.score_threshold:.2f}, fallback {detector.fallback_score_threshold:.2f})",
                int((scores[f"{model}_central"] == 0).sum()),
                ms[f"{model}_central"],
            )
        )
    for threshold in (0.6, 0.5):
        rows.append(
            (f"full on image padded to 2x, score >= {threshold:.2f}", int((scores["full_padded"] < threshold).sum()), ms["full_padded"])
        )
    full_missed = scores["full"] < full.score_threshold
    rows.append(
        (
            "full (0.60), then short (0.50) where full missed",
            int((full_missed & (scores["short"] < short.score_threshold)).sum()),
            ms["full"] + ms["short"] * float(full_missed.mean()),
        )
    )

    print(f"LFW pairs.txt images: {n} (every {args.every}), hit = detection centred within "
          f"{args.centre_fraction:.0%} of the image size from the centre; target misses <= {0.003 * n:.1f} (0.3 %)")
    print(f"{'option':62s} {'misses':>7s} {'rate':>7s} {'ms/img':>7s}")
    for label, misses, cost in rows:
        print(f"{label:62s} {misses:7d} {100 * misses / n:6.2f}% {cost:7.2f}")
    worst = {model: np.argsort(scores[model])[:5] for model in ("short", "full")}
    for model, indices in worst.items():
        listed = ", ".join(f"{paths[i].name} {scores[model][i]:.2f}" for i in indices)
        print(f"lowest central scores, {model}: {listed}")
    print(f"total {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
