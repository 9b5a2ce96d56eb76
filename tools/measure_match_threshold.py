"""Measure the gallery's default open-set threshold: the distance at a false-accept rate of 0.1% on
LFW View 1 (pairsDevTrain.txt: 1,100 same + 1,100 different pairs), with the default pipeline
(`Config().recognition`: detector, alignment, embedder precision and flip as shipped).

Each image is analysed as `edgeface embed` does it; the face nearest the image centre is the
labelled person. A pair with an image where no face was found counts as an error (a missing
different-person pair as a false accept). Usage:

    python tools/measure_match_threshold.py [--data ../shared/data/lfw] [--far 0.001] [--json]

Prints the threshold (accept when distance < threshold), TAR there, and the same at FAR 1%.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgeface.config import Config
from edgeface.eval.lfw import central_face
from edgeface.eval.verification import read_lfw_pairs, tar_at_far
from edgeface.io.images import read_image
from edgeface.vision.analyzer import FaceAnalyzer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw")
    parser.add_argument("--pairs", default="pairsDevTrain.txt", help="pair list inside --data")
    parser.add_argument("--far", type=float, default=0.001)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    pairs = read_lfw_pairs(args.data / args.pairs)
    recognition = Config().recognition
    analyzer = FaceAnalyzer.from_config(recognition)
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    embeddings: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    for name in names:
        image = read_image(args.data / "images" / name)
        faces = analyzer.analyze(image)
        index = central_face(faces.detections, image.shape[1], image.shape[0])
        if index is not None:
            embeddings[name] = faces.embeddings[index]
    seconds = time.perf_counter() - started
    distances = np.array([
        float(np.linalg.norm(embeddings[p.first] - embeddings[p.second]))
        if p.first in embeddings and p.second in embeddings else np.nan
        for p in pairs
    ])
    same = np.array([p.same for p in pairs])
    figures: dict[str, object] = {
        "pairs": len(pairs), "images": len(names), "images_without_face": len(names) - len(embeddings),
        "detector": recognition.detector.model, "alignment": recognition.alignment.method,
        "precision": analyzer.embedder.precision, "flip": recognition.embedder.flip,
        "seconds": round(seconds, 1),
    }
    for far in sorted({args.far, 0.01}):
        tar, threshold = tar_at_far(distances, same, far)
        different = distances[~same]
        figures[f"threshold_at_far_{far:g}"] = round(threshold, 4)
        figures[f"tar_at_far_{far:g}"] = round(tar, 4)
        figures[f"false_accepts_at_far_{far:g}"] = int(np.sum(np.nan_to_num(different, nan=-1.0) < threshold))
    for key, value in figures.items():
        print(f"{key}: {value}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
