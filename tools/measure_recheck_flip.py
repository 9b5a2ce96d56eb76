"""What skipping the flip on re-check embeddings would cost: templates enrolled with flip (as the station
does), probes embedded with and without flip, matched at the station's threshold for the gallery size.

A re-check embedding is a later face of a track already decided; without flip it costs one embedder
input instead of two. Both probe kinds come from `edgeface eval identify` face caches made with the
default pipeline and with `recognition.embedder.flip: false` (same detector, alignment, INT8):

    edgeface eval identify --data ../shared/data/lfw --cache lfw.npz
    edgeface eval identify --data ../shared/data/lfw --cache lfw_noflip.npz --config noflip.yaml
    python tools/measure_recheck_flip.py --data ../shared/data/lfw --flip lfw.npz --no-flip lfw_noflip.npz --sizes 50 500

Prints, per gallery size, strangers named and DIR (right name) for both probe kinds (mean of --seeds draws).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgeface.eval.data import FaceTable, dataset_people, default_face_rule, images_root
from edgeface.eval.identify import default_figures
from edgeface.recognition.false_alarm import MatchThreshold


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--flip", type=Path, required=True, help="faces cache made with flip (the default)")
    parser.add_argument("--no-flip", type=Path, required=True, help="faces cache made with flip: false")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--false-alarm-rate", type=float, default=0.01)
    args = parser.parse_args(argv)

    people = dataset_people(images_root(args.data))
    files = [f"{name}/{path.name}" for name, paths in people.items() for path in paths]
    rule = default_face_rule(args.data)
    flipped = dict(zip(files, FaceTable.load(args.flip).pick(rule, files)))
    plain = dict(zip(files, FaceTable.load(args.no_flip).pick(rule, files)))
    several = [n for n, paths in people.items() if len(paths) >= 2]
    ids = {n: i for i, n in enumerate(people)}
    threshold = MatchThreshold(false_alarm_rate=args.false_alarm_rate)
    rows = []
    for size in args.sizes:
        limit = threshold.at(size)
        figures: dict[str, list[tuple[float, float]]] = {"flip": [], "no_flip": []}
        for seed in range(args.seeds):
            chosen = sorted(np.random.default_rng(seed).choice(several, size=size, replace=False))
            chosen_set = set(chosen)
            gallery_files = [f"{n}/{people[n][0].name}" for n in chosen]
            gallery = np.stack([flipped[f] for f in gallery_files])
            owner = np.array([ids[n] for n in chosen])
            mated_files = [(n, f"{n}/{p.name}") for n in chosen for p in people[n][1:]]
            stranger_files = [f"{n}/{p.name}" for n in people if n not in chosen_set for p in people[n]]
            mated_owner = np.array([ids[n] for n, _ in mated_files])
            for kind, table in (("flip", flipped), ("no_flip", plain)):
                mated = np.stack([table[f] for _, f in mated_files])
                strangers = np.stack([table[f] for f in stranger_files])
                figures[kind].append(default_figures(gallery, owner, mated, mated_owner, strangers, limit, "mean"))
        row = {"data": str(args.data), "gallery_size": size, "threshold": round(limit, 4)}
        for kind, values in figures.items():
            row[f"{kind}_strangers_named"] = round(float(np.mean([v[0] for v in values])), 5)
            row[f"{kind}_dir"] = round(float(np.mean([v[1] for v in values])), 4)
        rows.append(row)
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
