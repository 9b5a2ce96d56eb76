"""How well the shipped impostor tables (models/impostor_scores.json, measured on LFW View 1) describe
another set's strangers: the share of its different-person pairs below a distance, dlib's and fused,
against what each table says, and each model's impostor cosine mean and spread.

Caches come from `edgeface eval identify --data DIR --cache FILE` with the default config (so they hold
SFace embeddings too). LFW is subsampled to 4,000 images (8 million pairs).

    python tools/measure_impostor_transfer.py --cache celeba=/tmp/celeba.npz --cache lfw=/tmp/lfw.npz \\
        [--data ../shared/data] [--at 0.3797 0.365 0.3536]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgeface.eval.data import FaceTable, dataset_people, default_face_rule, images_root
from edgeface.recognition.false_alarm import DEFAULT_KIND, FUSED_KIND, impostor_table
from edgeface.recognition.fusion import rescore

REPO = Path(__file__).resolve().parents[1]
MAX_IMAGES = 4000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", action="append", required=True, metavar="SET=FILE",
                        help="a set under --data and its eval identify cache")
    parser.add_argument("--at", type=float, nargs="+", default=[0.3797, 0.365, 0.3536, 0.3444, 0.3184, 0.2943],
                        help="distances to compare at (default: the fused thresholds at 1%% for 10-1,680 people)")
    args = parser.parse_args(argv)
    tables = {kind: impostor_table(kind) for kind in (DEFAULT_KIND, FUSED_KIND)}
    for spec in args.cache:
        name, _, file = spec.partition("=")
        data = args.data / name
        table = FaceTable.load(Path(file))
        people = dataset_people(images_root(data))
        files = [f"{person}/{path.name}" for person, paths in people.items() for path in paths]
        if len(files) > MAX_IMAGES:
            files = sorted(np.random.default_rng(0).choice(files, MAX_IMAGES, replace=False).tolist())
        rule = default_face_rule(data)
        dlib, sface = table.pick(rule, files), table.pick(rule, files, second=True)
        found = ~np.isnan(dlib).any(axis=1)
        dlib, sface = dlib[found], sface[found]
        owner = np.array([f.split("/")[0] for f in files])[found]
        distances = np.sqrt(np.clip(2 - 2 * dlib @ dlib.T, 0, 4))
        cosines = np.nan_to_num(sface) @ np.nan_to_num(sface).T
        missing = np.isnan(sface).any(axis=1)
        cosines[missing], cosines[:, missing] = np.nan, np.nan
        upper = np.triu_indices(len(owner), 1)
        impostor = owner[upper[0]] != owner[upper[1]]
        by_kind = {DEFAULT_KIND: np.sort(distances[upper][impostor]), FUSED_KIND: np.sort(rescore(distances, cosines)[upper][impostor])}
        sface_cos = cosines[upper][impostor]
        sface_cos = sface_cos[np.isfinite(sface_cos)]
        dlib_cos = 1 - by_kind[DEFAULT_KIND] ** 2 / 2
        print(f"{name}: {len(by_kind[DEFAULT_KIND])} different-person pairs; impostor cosine dlib "
              f"{dlib_cos.mean():.4f} sd {dlib_cos.std():.4f}, SFace {sface_cos.mean():.4f} sd {sface_cos.std():.4f}")
        for at in args.at:
            cells = []
            for kind, ordered in by_kind.items():
                measured = np.searchsorted(ordered, at) / len(ordered)
                said = tables[kind].stranger_rate(at, 1)
                cells.append(f"{kind} {measured:.2e} (table {said:.2e}, {measured / said:.1f}x)")
            print(f"  below {at}: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
