"""Nearest template ("min") or mean template ("mean") per identity: which accepts more genuine faces
at the same false-accept rate, and at which threshold (edgeface.storage.gallery.MEAN_THRESHOLD_TIGHTENING).

    edgeface eval identify --data ../shared/data/lfw/images --cache emb.npz   # embeddings, default pipeline
    python tools/measure_match_strategies.py --cache emb.npz

People with >= 4 images: their first k images (k = 1, 2, 3) make the identity, the others are genuine
probes; every person with one image is a stranger probe compared with every identity. For each
strategy and k: the distance at a false-accept rate of 0.1% and 1% per identity comparison, and the
share of genuine probes accepted there.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="embeddings .npz written by `edgeface eval identify --cache`")
    args = parser.parse_args()
    stored = np.load(args.cache)
    files, vectors = [str(f) for f in stored["files"]], stored["vectors"].astype(np.float64)
    by_person: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(files):
        if not np.isnan(vectors[i]).any():
            by_person[Path(name).parent.name].append(i)
    people = sorted(p for p, rows in by_person.items() if len(rows) >= 4)
    strangers = vectors[[rows[0] for rows in by_person.values() if len(rows) == 1]]
    print(f"{len(people)} people with >= 4 images, {len(strangers)} strangers")
    for k in (1, 2, 3):
        for strategy in ("min", "mean"):
            genuine, impostor = [], []
            for person in people:
                rows = by_person[person]
                templates, probes = vectors[rows[:k]], vectors[rows[k:]]
                if strategy == "mean":
                    templates = unit(templates.mean(axis=0))[None]
                genuine += list(np.linalg.norm(probes[:, None] - templates[None], axis=2).min(axis=1))
                impostor += list(np.linalg.norm(strangers[:, None] - templates[None], axis=2).min(axis=1))
            ordered = np.sort(impostor)
            figures = []
            for far in (1e-3, 1e-2):
                threshold = ordered[int(far * len(ordered))]
                figures.append(f"FAR {far:g}: threshold {threshold:.4f}, TAR {np.mean(np.array(genuine) < threshold):.4f}")
            print(f"k={k} {strategy:4s}  " + "  ".join(figures))


if __name__ == "__main__":
    main()
