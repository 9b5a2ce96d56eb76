"""Would fusing SFace help the clustering of unknowns? The offline upper bound (average linkage cut at the
best BCubed F, edgeface.eval.cluster.offline_best) with dlib's embeddings, SFace's, and both fused.

Fused vectors: edgeface.eval.cluster.fused_vectors (the offline bound `edgeface eval cluster --embedder
fused` reports; the online clusterer's own fused distance is measured there).

Faces from `edgeface eval identify --cache FILE` (default config: both embeddings). CelebA: all 100
people; LFW: the people with >= 4 images, the first `--per-person` of each (no distractors, to keep the
O(n^2) linkage in memory).

    python tools/measure_fused_clustering.py --celeba /tmp/c.npz --lfw /tmp/l.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edgeface.eval.cluster import fused_vectors, offline_best
from edgeface.eval.data import FaceTable


def chosen(table: FaceTable, rule: str, min_images: int, per_person: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    by_person: dict[str, list[str]] = {}
    for name in table.files:
        by_person.setdefault(name.split("/")[0], []).append(name)
    files = [f for images in by_person.values() if len(images) >= min_images for f in sorted(images)[:per_person]]
    dlib = table.pick(rule, files)  # type: ignore[arg-type]
    sface = table.pick(rule, files, second=True)  # type: ignore[arg-type]
    found = ~np.isnan(dlib).any(axis=1) & ~np.isnan(sface).any(axis=1)
    labels = np.array([f.split("/")[0] for f in files])[found]
    return dlib[found], sface[found], np.unique(labels, return_inverse=True)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--celeba", type=Path, required=True)
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--per-person", type=int, default=10)
    args = parser.parse_args()
    for name, path, rule, min_images, per_person in (("CelebA", args.celeba, "largest", 2, 15),
                                                     ("LFW", args.lfw, "central", 4, args.per_person)):
        dlib, sface, truth = chosen(FaceTable.load(path), rule, min_images, per_person)
        print(f"{name}: {len(truth)} faces of {truth.max() + 1} people")
        for label, vectors in (("dlib", dlib), ("SFace", sface), ("fused", fused_vectors(dlib, sface))):
            best = offline_best(vectors, truth)
            print(f"  {label:6s} offline best BCubed F {best.scores.bcubed_f:.3f} (P {best.scores.bcubed_precision:.3f}, "
                  f"R {best.scores.bcubed_recall:.3f}) at distance {best.threshold:.3f}")


if __name__ == "__main__":
    main()
