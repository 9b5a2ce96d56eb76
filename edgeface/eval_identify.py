"""`edgeface eval identify`: open-set identification on any folder-per-person dataset.

Protocol: every image is analysed as `edgeface embed` does it and the face nearest the image centre
is the labelled person (an image without a face is a miss when mated and never a false alarm).
Gallery = the first `templates` image(s) (sorted by file name) of each person with at least two
images, always leaving that person at least one probe; mated probes = their other images;
non-mated probes = every image of people with one image (never enrolled). Matching is the gallery's
own (`GallerySnapshot`, nearest template).

- rank-1: share of mated probes whose nearest identity is the right one;
- DIR at FAR x: the threshold t lets at most x of the non-mated probes match anyone (distance < t);
  DIR = share of mated probes matched to the right identity below t;
- station: 50 random people with >= 2 images form the gallery (5 seeds); mated probes are their
  other images, non-mated probes every image of everyone else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeface.enroll import IMAGE_SUFFIXES
from edgeface.errors import EdgefaceError
from edgeface.gallery import EMBEDDING_DIM, GallerySnapshot, MatchStrategy
from edgeface.report import print_figures

FARS = (0.01, 0.001)
STATION_PEOPLE = 50
STATION_SEEDS = 5


def dataset_people(root: Path) -> dict[str, list[Path]]:
    """person -> sorted image files, for each sub-folder of root (or of root/images) with images."""
    root = root / "images" if (root / "images").is_dir() else root
    if not root.is_dir():
        raise EdgefaceError(f"{root}: not a folder; --data takes a folder with one sub-folder per person")
    people = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            people[folder.name] = files
    if sum(len(f) >= 2 for f in people.values()) < 2:
        raise EdgefaceError(f"{root}: needs at least two sub-folders (people) with two or more images each")
    return people


@dataclass(frozen=True)
class Figures:
    rank1: float
    dir_at_far: dict[float, float | None]
    """None when there are no non-mated probes (or too few) to measure the false-alarm rate on."""
    threshold_at_far: dict[float, float | None]
    gallery_people: int
    mated: int
    non_mated: int


def identification_figures(gallery: np.ndarray, gallery_owner: np.ndarray, mated: np.ndarray, mated_owner: np.ndarray,
                           non_mated: np.ndarray, fars: tuple[float, ...] = FARS, strategy: MatchStrategy = "min") -> Figures:
    """gallery (g, d) unit rows owned by people gallery_owner (g,) ints; probes as (n, d) rows (NaN rows:
    no face found), mated_owner (m,) ints."""
    names = sorted(set(gallery_owner.tolist()))
    snapshot = GallerySnapshot.build([(f"{o:09d}", i, v) for i, (o, v) in enumerate(zip(gallery_owner, gallery))], [])
    owners = np.array(names)

    def nearest(probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = ~np.isnan(probes).any(axis=1)
        who = np.full(len(probes), -1)
        distance = np.full(len(probes), np.inf)
        for start in range(0, int(found.sum()), 4096):
            rows = np.flatnonzero(found)[start:start + 4096]
            d = snapshot.distances(probes[rows], strategy)
            best = np.argmin(d, axis=1)
            who[rows], distance[rows] = owners[best], d[np.arange(len(rows)), best]
        return who, distance

    mated_who, mated_distance = nearest(mated)
    _, non_mated_distance = nearest(non_mated)
    correct = mated_who == mated_owner
    ordered = np.sort(non_mated_distance)
    dir_at_far: dict[float, float | None] = {}
    thresholds: dict[float, float | None] = {}
    for far in fars:  # undefined without strangers to measure false alarms on
        allowed = int(np.floor(far * len(ordered)))
        threshold = float(ordered[allowed]) if allowed < len(ordered) and np.isfinite(ordered[allowed]) else None
        thresholds[far] = threshold
        dir_at_far[far] = None if threshold is None else float(np.mean(correct & (mated_distance < threshold)))
    return Figures(float(np.mean(correct)), dir_at_far, thresholds, len(names), len(mated), len(non_mated))


@dataclass
class IdentifyReport:
    full: Figures
    station: list[Figures]
    images: int
    images_without_face: int
    seconds_per_image: float
    templates: int
    settings: dict[str, object] = field(default_factory=dict)

    def lines(self) -> list[str]:
        def far(figures: Figures) -> str:
            return ", ".join(f"DIR {_fmt(figures.dir_at_far[f])} at FAR {100 * f:g}% "
                             f"(threshold {_fmt(figures.threshold_at_far[f])})" for f in FARS)

        station_far = ", ".join(f"DIR {_fmt(_mean([s.dir_at_far[f] for s in self.station]))} "
                        f"(min {_fmt(_min([s.dir_at_far[f] for s in self.station]))}) at FAR {100 * f:g}%" for f in FARS)
        return [
            (f"{self.images} images, {self.images_without_face} without a face, "
             f"{1000 * self.seconds_per_image:.1f} ms/image; {self.templates} template(s) per person; {self.settings}"),
            (f"full gallery: {self.full.gallery_people} people, {self.full.mated} mated and {self.full.non_mated} "
             f"non-mated probes: rank-1 {self.full.rank1:.3f}, {far(self.full)}"),
            (f"station gallery ({STATION_PEOPLE} people x {len(self.station)} seeds): rank-1 "
             f"{np.mean([s.rank1 for s in self.station]):.3f}, {station_far}"),
        ]

    def as_dict(self) -> dict[str, object]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "rank1": r(self.full.rank1),
            "dir_at_far_1pct": r(self.full.dir_at_far[0.01]),
            "dir_at_far_0_1pct": r(self.full.dir_at_far[0.001]),
            "threshold_at_far_1pct": r(self.full.threshold_at_far[0.01]),
            "threshold_at_far_0_1pct": r(self.full.threshold_at_far[0.001]),
            "gallery_people": self.full.gallery_people, "mated": self.full.mated, "non_mated": self.full.non_mated,
            "station_rank1": r(float(np.mean([s.rank1 for s in self.station]))),
            "station_dir_at_far_1pct": r(_mean([s.dir_at_far[0.01] for s in self.station])),
            "station_dir_at_far_0_1pct": r(_mean([s.dir_at_far[0.001] for s in self.station])),
            "station_dir_at_far_1pct_per_seed": [r(s.dir_at_far[0.01]) for s in self.station],
            "images": self.images, "images_without_face": self.images_without_face,
            "ms_per_image": round(1000 * self.seconds_per_image, 2), "templates": self.templates, **self.settings,
        }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known and len(known) == len(values) else None


def _min(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.min(known)) if known and len(known) == len(values) else None


def central_embedding(analyzer, path: Path) -> np.ndarray:
    """Embedding of the face nearest the image centre; NaN row when no face is found (or the file
    cannot be read)."""
    from edgeface.errors import ImageError
    from edgeface.eval_lfw import central_face
    from edgeface.imageio import read_image

    try:
        image = read_image(path)
    except ImageError as error:
        logging.getLogger(__name__).warning("%s; counted as an image without a face", error)
        return np.full(EMBEDDING_DIM, np.nan, np.float32)
    faces = analyzer.analyze(image)
    index = central_face(faces.detections, image.shape[1], image.shape[0])
    return np.full(EMBEDDING_DIM, np.nan, np.float32) if index is None else faces.embeddings[index]


def run_identify_evaluation(data: Path, analyzer, templates: int = 1, strategy: MatchStrategy = "mean", progress: bool = True,
                            seeds: int = STATION_SEEDS, cache: Path | None = None, cache_key: str = "") -> IdentifyReport:
    """cache: an .npz of the embeddings, reused when it holds the same files and cache_key (the
    pipeline settings), so that gallery variants can be compared without analysing again."""
    if templates < 1:
        raise EdgefaceError("--templates must be at least 1")
    people = dataset_people(data)
    files = [f for images in people.values() for f in images]
    names = np.array([str(f) for f in files])
    started = time.perf_counter()
    stored = np.load(cache) if cache is not None and cache.is_file() else None
    if stored is not None and str(stored["key"]) == cache_key and np.array_equal(stored["files"], names):
        vectors = dict(zip(files, stored["vectors"]))
        seconds = float(stored["seconds"])
    else:
        iterator = files
        if progress:
            from tqdm import tqdm  # type: ignore[import-untyped]

            iterator = tqdm(files, desc="analyse", unit="img", file=sys.stderr)
        vectors = {f: central_embedding(analyzer, f) for f in iterator}
        seconds = (time.perf_counter() - started) / max(len(files), 1)
        if cache is not None:
            with open(cache, "wb") as out:
                np.savez(out, files=names, vectors=np.stack([vectors[f] for f in files]), key=cache_key, seconds=seconds)

    ids = {name: i for i, name in enumerate(people)}
    enrolled = [name for name, images in people.items() if len(images) >= 2]
    split = {name: min(templates, len(people[name]) - 1) for name in enrolled}

    def stack(pairs: list[tuple[str, Path]]) -> tuple[np.ndarray, np.ndarray]:
        if not pairs:
            return np.zeros((0, EMBEDDING_DIM), np.float32), np.zeros(0, int)
        return np.stack([vectors[f] for _, f in pairs]), np.array([ids[n] for n, _ in pairs])

    def figures(chosen: list[str], strangers: list[str]) -> Figures:
        gallery_pairs = [(n, f) for n in chosen for f in people[n][:split[n]]]
        kept = [(n, v) for n, v in gallery_pairs if not np.isnan(vectors[v]).any()]
        gallery, owner = stack(kept)
        mated, mated_owner = stack([(n, f) for n in chosen for f in people[n][split[n]:]])
        non_mated, _ = stack([(n, f) for n in strangers for f in people[n]])
        return identification_figures(gallery, owner, mated, mated_owner, non_mated, strategy=strategy)

    full = figures(enrolled, [n for n, images in people.items() if len(images) == 1])
    station = []
    for seed in range(seeds):
        chosen = sorted(np.random.default_rng(seed).choice(enrolled, size=min(STATION_PEOPLE, len(enrolled)), replace=False))
        station.append(figures(chosen, [n for n in people if n not in set(chosen)]))
    missing = sum(bool(np.isnan(v).any()) for v in vectors.values())
    return IdentifyReport(full, station, len(files), missing, seconds, templates, {"strategy": strategy})


def _run(args: argparse.Namespace) -> int:
    from edgeface.analyze import FaceAnalyzer
    from edgeface.config import load_config

    recognition = load_config(args.config).recognition
    settings = {"detector": recognition.detector.model, "alignment": recognition.alignment.method,
                "precision": recognition.embedder.precision, "flip": recognition.embedder.flip}
    report = run_identify_evaluation(args.data, FaceAnalyzer.from_config(recognition), templates=args.templates,
                                     strategy=args.strategy, progress=not args.json, cache=args.cache,
                                     cache_key=json.dumps(settings, sort_keys=True))
    report.settings.update(settings)
    return print_figures(report.lines(), report.as_dict(), args.json)


def register_eval(eval_kinds: argparse._SubParsersAction) -> None:
    """Add `identify` under `edgeface eval`."""
    parser = eval_kinds.add_parser("identify", help="open-set identification on a folder-per-person dataset")
    parser.add_argument("--data", type=Path, required=True, help="folder with one sub-folder of images per person")
    parser.add_argument("--templates", type=int, default=1, help="gallery images per person (default 1)")
    parser.add_argument("--strategy", choices=["min", "mean"], default="mean",
                        help="distance to a person: nearest template (min) or mean template (mean)")
    parser.add_argument("--cache", type=Path, help="embeddings .npz, reused when the files and settings match")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object with the figures")
    parser.add_argument("--config", type=Path, help="YAML or JSON config file (defaults apply without it)")
    parser.set_defaults(handler=_run)
