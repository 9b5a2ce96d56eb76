"""Measure the impostor-score figures the station derives its match threshold from, and write them to
models/impostor_scores.json (edgeface.recognition.false_alarm reads them).

Data: the images of LFW View 1's training list (pairsDevTrain.txt: 3,443 images of 2,132 people),
analysed with the default pipeline (`Config().recognition`, the face nearest the centre). Never LFW
View 2 (pairs.txt) or the CelebA set the evaluations report on. Measured:

- tail: every different-person comparison among those images (~5.9 million): the distance below
  which a share p of them fall, for p from 1e-6 to 0.5 where p rests on at least 30 comparisons;
- chance_exponent: galleries of N people (N = 10 ... 1,000, their first listed image; 20 or 6
  draws) searched by every image of the others; at the distance that gives a stranger false-alarm
  rate f (0.1%, 1%, 5%), the effective number of independent chances n with 1 - (1 - p)^n = f;
  fitted as n = N^b through the origin in log-log;
- the same tail and exponent for the fused score (FUSED_KIND: dlib's distance and SFace's cosine
  fused on dlib's distance scale, edgeface.recognition.fusion), which decides answers near the
  threshold whenever the second opinion is on (the default);
- template_tightening (dlib only): the same tail for a mean of k = 1, 2, 3 images (all LFW images of the
  training list's people; the last image of each person is the probe), the difference to k = 1 at
  1e-5 ... 1e-3 (for the record: the gallery's MEAN_THRESHOLD_TIGHTENING constants apply).

Usage:

    python tools/measure_impostor_scores.py [--data ../shared/data/lfw] [--cache faces.npz] [--write]

Without --write it prints the document; with it, writes models/impostor_scores.json and its manifest
entry.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from edgeface.config import Config
from edgeface.eval.data import dataset_faces, dataset_people
from edgeface.eval.verification import read_lfw_pairs
from edgeface.recognition.false_alarm import (
    DEFAULT_KIND,
    FUSED_KIND,
    IMPOSTOR_FORMAT,
    IMPOSTOR_SCORES_FILE,
    parse_tables,
)
from edgeface.recognition.fusion import rescore
from edgeface.vision.analyzer import FaceAnalyzer
from edgeface.vision.sface import SFACE_MODEL_ID

REPO = Path(__file__).resolve().parents[1]
TAIL_RATES = np.logspace(-6, math.log10(0.5), 41)
TAIL_MIN_COMPARISONS = 30
"""A tail point rests on at least this many impostor comparisons: below it a handful of pairs decide
the point (the fused score's 1e-6 point, 5 pairs, was 0.19 against 0.29 at 30 pairs), and the
extrapolation to large galleries continues the first segment."""
GALLERY_SIZES = (10, 30, 100, 300, 1000)
STRANGER_RATES = (0.001, 0.01, 0.05)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(2.0 - 2.0 * (a @ b.T), 0.0, 4.0))


def _kind_figures(distances: np.ndarray, owner: np.ndarray) -> dict[str, object]:
    """tail, comparisons and chance exponent of one score kind from all-pairs distances among images
    owned by `owner`."""
    upper = np.triu_indices(len(owner), 1)
    impostor = np.sort(distances[upper][owner[upper[0]] != owner[upper[1]]])
    count = len(impostor)
    tail = [[float(f"{r:.4g}"), round(float(impostor[int(r * count)]), 5)] for r in TAIL_RATES
            if r * count >= TAIL_MIN_COMPARISONS]

    def rate_at(threshold: float) -> float:
        return float(np.searchsorted(impostor, threshold)) / count

    names = sorted(set(owner.tolist()))
    first = {name: int(np.flatnonzero(owner == name)[0]) for name in names}
    rng = np.random.default_rng(0)
    points = []
    for size in GALLERY_SIZES:
        nearest = []
        for _ in range(20 if size < 300 else 6):
            chosen = rng.choice(len(names), size, replace=False)
            enrolled = {names[k] for k in chosen}
            strangers = np.array([i for i in range(len(owner)) if owner[i] not in enrolled])
            nearest.append(distances[np.ix_(strangers, [first[names[k]] for k in chosen])].min(axis=1))
        ordered = np.sort(np.concatenate(nearest))
        for f in STRANGER_RATES:
            p = rate_at(float(ordered[int(f * len(ordered))]))
            chances = math.log1p(-f) / math.log1p(-p)
            points.append({"gallery_size": size, "stranger_rate": f, "per_comparison_rate": float(f"{p:.4g}"),
                           "effective_chances": round(chances, 1)})
    logs = np.array([[math.log(q["gallery_size"]), math.log(q["effective_chances"])] for q in points])
    exponent = float(np.sum(logs[:, 0] * logs[:, 1]) / np.sum(logs[:, 0] ** 2))
    return {"images": int(len(owner)), "people": len(names), "comparisons": count,
            "measured_down_to": float(f"{1 / count:.3g}"), "tail": tail,
            "chance_exponent": round(exponent, 4), "chance_points": points}


def measure(data: Path, cache: Path | None) -> dict[str, object]:
    recognition = Config().recognition
    settings = {"detector": recognition.detector.model, "alignment": recognition.alignment.method,
                "precision": recognition.embedder.precision, "flip": recognition.embedder.flip}
    key = json.dumps({**settings, "second": SFACE_MODEL_ID}, sort_keys=True)  # the key eval identify uses
    pairs = read_lfw_pairs(data / "pairsDevTrain.txt")
    listed = sorted({p.first for p in pairs} | {p.second for p in pairs})
    people = dataset_people(data / "images")
    training_people = sorted({f.split("/")[0] for f in listed})
    every_image = [f"{name}/{path.name}" for name in training_people for path in people[name]]
    table = dataset_faces(data, sorted(set(listed) | set(every_image)), faces_file=None,
                          make_analyzer=lambda: FaceAnalyzer.from_config(recognition),
                          key=key, cache=cache, progress=True, second=True)

    vectors = table.pick("central", listed)
    second = table.pick("central", listed, second=True)
    found = ~np.isnan(vectors).any(axis=1)
    vectors, second, owner = vectors[found], second[found], np.array([f.split("/")[0] for f in listed])[found]
    distances = _distances(vectors, vectors)
    dlib = _kind_figures(distances, owner)
    cosines = np.nan_to_num(second) @ np.nan_to_num(second).T
    cosines[np.isnan(second).any(axis=1)] = np.nan  # no SFace face: dlib's distance (fusion.rescore)
    cosines[:, np.isnan(second).any(axis=1)] = np.nan
    fused = _kind_figures(rescore(distances, cosines), owner)

    all_vectors = table.pick("central", every_image)
    all_owner = np.array([f.split("/")[0] for f in every_image])
    rows = {name: np.flatnonzero(all_owner == name) for name in training_people}
    probe_rows = np.array([r[-1] for r in rows.values()])
    by_count = {}
    for k in (1, 2, 3):
        owners = [name for name, r in rows.items() if len(r) >= k + 1]
        means = np.stack([all_vectors[rows[name][:k]].mean(axis=0) for name in owners])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        d = _distances(all_vectors[probe_rows], means)
        other = all_owner[probe_rows][:, None] != np.array(owners)[None, :]
        by_count[k] = np.sort(d[other])
    tightening = {f"{r:g}": [round(float(by_count[1][int(r * len(by_count[1]))] - by_count[k][int(r * len(by_count[k]))]), 4)
                             for k in (1, 2, 3)] for r in (1e-5, 1e-4, 1e-3)}
    fitted_on = "LFW View 1 pairsDevTrain.txt images (never View 2 or CelebA), the face nearest the centre"
    command = "python tools/measure_impostor_scores.py --write"
    return {
        "format": IMPOSTOR_FORMAT,
        "format_version": 1,
        "kinds": {
            DEFAULT_KIND: {
                "score": "euclidean distance between unit dlib_resnet_v1 embeddings",
                "match_when": "lower", "pipeline": settings, "fitted_on": fitted_on, **dlib,
                "template_tightening_measured": tightening, "command": command,
            },
            FUSED_KIND: {
                "score": ("dlib_resnet_v1 distance and sface_2021dec cosine fused on dlib's distance scale "
                          "(edgeface.recognition.fusion.fused_distance; dlib's distance where SFace found no face)"),
                "match_when": "lower", "pipeline": {**settings, "second": SFACE_MODEL_ID}, "fitted_on": fitted_on,
                **fused, "command": command,
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "lfw")
    parser.add_argument("--cache", type=Path, help="faces .npz (edgeface eval identify --cache), reused when the settings match")
    parser.add_argument("--write", action="store_true", help=f"write models/{IMPOSTOR_SCORES_FILE} and its manifest entry")
    args = parser.parse_args(argv)
    document = measure(args.data, args.cache)
    parse_tables(document, "the measured document")  # what the station will read
    text = json.dumps(document, indent=1) + "\n"
    if not args.write:
        sys.stdout.write(text)
        return 0
    from edgeface.convert.manifest import record_model_file

    path = REPO / "models" / IMPOSTOR_SCORES_FILE
    path.write_text(text, encoding="utf-8")
    record_model_file(REPO / "models", IMPOSTOR_SCORES_FILE, source="measured on LFW View 1 pairsDevTrain.txt (numbers only, no images)",
                      license="derived figures (no image data)", made_by="python tools/measure_impostor_scores.py --write")
    for name in (DEFAULT_KIND, FUSED_KIND):
        kind = document["kinds"][name]  # type: ignore[index]
        print(f"wrote {path} {name}: {kind['comparisons']} comparisons, chance exponent {kind['chance_exponent']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
