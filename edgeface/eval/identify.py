"""`edgeface eval identify`: open-set identification on any folder-per-person dataset.

Protocol: every image is analysed as `edgeface identify` does it; the labelled person is the face
nearest the image centre on LFW and the largest face elsewhere (`--face`; an image without a face is a
miss when mated and never a false alarm). Gallery = the first `templates` image(s) (sorted by file
name) of each enrolled person, always leaving that person at least one probe; mated probes = their
other images; non-mated probes = every image of people never enrolled. Matching is the gallery's own
(`GallerySnapshot`). Who is enrolled:

- a dataset with one-image people (LFW): everyone with >= 2 images; the one-image people are the
  strangers ("full gallery"), plus the station galleries below;
- a dataset where everyone has several images (CelebA): half the people, drawn with a fixed seed
  per split (`--seeds` splits), are enrolled and the other half are strangers ("half split").

- rank-1: share of mated probes whose nearest identity is the right one;
- DIR at FAR x: the threshold t lets at most x of the non-mated probes match anyone (distance < t);
  DIR = share of mated probes matched to the right identity below t;
- station: 50 random people with >= 2 images form the gallery (5 seeds); mated probes are their
  other images, non-mated probes every image of everyone else.

- at the default (`--gallery-size N`): N random people with >= 2 images (one draw per seed) are
  enrolled, every image of everyone else is a stranger, and matching runs at the threshold the station
  would use for N people (`MatchThreshold.from_config`: derived from `gallery.false_alarm_rate`, or
  `--false-alarm-rate`, unless a fixed `match_max_distance` is configured; derived from the fused
  score's figures when scoring is fused) and decided as the station decides (dlib's search, the second
  opinion fused in where recognition.second_opinion asks, its band around that threshold). false_alarm_rate_at_default
  = share of stranger images given a name; dir_at_default = share of mated probes given the right one.

`--faces FILE` scores another system's faces (face_recognition's, tools/face_recognition_faces.py)
by the same protocol.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from edgeface.config import Config
from edgeface.errors import EdgefaceError
from edgeface.eval.data import FaceRule, PeoplePart, dataset_faces, default_face_rule, images_root, people_part
from edgeface.eval.data import dataset_people as _folder_people
from edgeface.eval.report import print_figures
from edgeface.recognition.false_alarm import MatchThreshold, score_kind
from edgeface.recognition.fusion import Band, SecondOpinion, rank_with_second_opinion
from edgeface.recognition.vectors import EMBEDDING_DIM
from edgeface.storage.gallery import DEFAULT_MATCH_MAX_DISTANCE, GallerySnapshot, MatchStrategy
from edgeface.vision.sface import SFACE_MODEL_ID

FARS = (0.01, 0.001)
STATION_PEOPLE = 50
STATION_SEEDS = 5


def dataset_people(root: Path) -> dict[str, list[Path]]:
    """person -> sorted image files, for each sub-folder of root (or of root/images) with images."""
    root = images_root(root)
    if not root.is_dir():
        raise EdgefaceError(f"{root}: not a folder; --data takes a folder with one sub-folder per person")
    people = _folder_people(root)
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
    second_opinion_share: float | None = None
    """Share of the probes (with a face) whose answer had the second opinion (fused scoring)."""


Embedding = Literal["dlib", "sface", "fused"]
EMBEDDINGS: tuple[str, ...] = ("dlib", "sface", "fused")


@dataclass(frozen=True)
class Scoring:
    """How probes are scored: dlib alone, SFace alone, or fused (the second opinion asked as `mode`
    says, at the match threshold `threshold`)."""

    embedding: Embedding = "dlib"
    mode: SecondOpinion = "auto"
    threshold: float = 0.3776


class ProtocolRows(NamedTuple):
    """One open-set draw: the enrolled rows with their owners, the enrolled people's other photos with
    their owners, the strangers' photos; the SFace rows of the same three sets when scored fused."""

    gallery: np.ndarray
    owner: np.ndarray
    mated: np.ndarray
    mated_owner: np.ndarray
    non_mated: np.ndarray
    second: tuple[np.ndarray, np.ndarray, np.ndarray] | None


def identification_figures(gallery: np.ndarray, gallery_owner: np.ndarray, mated: np.ndarray, mated_owner: np.ndarray,
                           non_mated: np.ndarray, fars: tuple[float, ...] = FARS, strategy: MatchStrategy = "min",
                           second: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                           scoring: Scoring = Scoring()) -> Figures:
    """gallery (g, d) unit rows owned by people gallery_owner (g,) ints; probes as (n, d) rows (NaN rows:
    no face found), mated_owner (m,) ints. `second`: the SFace rows of the same gallery, mated and
    non-mated faces (needed unless scoring is dlib alone)."""
    names = sorted(set(gallery_owner.tolist()))
    owners = np.array(names)
    if scoring.embedding == "sface":
        if second is None:
            raise EdgefaceError("SFace scoring needs the faces' SFace embeddings")
        gallery, mated, non_mated = second
    snapshot = GallerySnapshot.build([(f"{o:09d}", i, v) for i, (o, v) in enumerate(zip(gallery_owner, gallery))], [])
    second_snapshot = None
    if scoring.embedding == "fused":
        if second is None:
            raise EdgefaceError("fused scoring needs the faces' SFace embeddings")
        second_snapshot = GallerySnapshot.build(
            [(f"{o:09d}", i, np.nan_to_num(v)) for i, (o, v) in enumerate(zip(gallery_owner, second[0]))], [])
    band = Band(scoring.threshold)
    asked = [0, 0]

    def nearest(probes: np.ndarray, second_probes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        found = ~np.isnan(probes).any(axis=1)
        who = np.full(len(probes), -1)
        distance = np.full(len(probes), np.inf)
        for start in range(0, int(found.sum()), 4096):
            rows = np.flatnonzero(found)[start:start + 4096]
            d = snapshot.distances(probes[rows], strategy)
            if second_snapshot is None or second_probes is None:
                best = np.argmin(d, axis=1)
                who[rows], distance[rows] = owners[best], d[np.arange(len(rows)), best]
                continue
            chunk = second_probes[rows]

            def cosines(r: np.ndarray, candidates: np.ndarray, chunk: np.ndarray = chunk) -> np.ndarray:
                c = 1.0 - np.square(second_snapshot.distances(np.nan_to_num(chunk[r]), strategy)) / 2.0
                c[np.isnan(chunk[r]).any(axis=1)] = np.nan
                return np.take_along_axis(c, candidates, axis=1)

            ranked = rank_with_second_opinion(d, cosines, scoring.mode, band)
            who[rows], distance[rows] = owners[ranked.nearest], ranked.distance
            asked[0] += int(ranked.asked.sum())
            asked[1] += len(rows)
        return who, distance

    second_mated, second_non_mated = (second[1], second[2]) if second is not None else (None, None)
    mated_who, mated_distance = nearest(mated, second_mated)
    _, non_mated_distance = nearest(non_mated, second_non_mated)
    correct = mated_who == mated_owner
    ordered = np.sort(non_mated_distance)
    dir_at_far: dict[float, float | None] = {}
    thresholds: dict[float, float | None] = {}
    for far in fars:  # undefined without strangers to measure false alarms on
        allowed = int(np.floor(far * len(ordered)))
        threshold = float(ordered[allowed]) if allowed < len(ordered) and np.isfinite(ordered[allowed]) else None
        thresholds[far] = threshold
        dir_at_far[far] = None if threshold is None else float(np.mean(correct & (mated_distance < threshold)))
    return Figures(float(np.mean(correct)), dir_at_far, thresholds, len(names), len(mated), len(non_mated),
                   asked[0] / asked[1] if asked[1] else None)


@dataclass(frozen=True)
class DefaultFigures:
    """Open-set figures at the station's own threshold for a gallery of gallery_size people, per seed."""

    gallery_size: int
    target: float | None
    threshold: float
    false_alarm_rate: list[float]
    dir: list[float]
    strangers: int

    def as_dict(self) -> dict[str, object]:
        return {"gallery_size": self.gallery_size, "false_alarm_target": self.target,
                "threshold_at_default": round(self.threshold, 4),
                "false_alarm_rate_at_default": round(float(np.mean(self.false_alarm_rate)), 5),
                "dir_at_default": round(float(np.mean(self.dir)), 4),
                "false_alarm_rate_at_default_per_seed": [round(f, 5) for f in self.false_alarm_rate],
                "dir_at_default_per_seed": [round(d, 4) for d in self.dir], "strangers_per_seed": self.strangers}

    def line(self) -> str:
        target = "a fixed threshold" if self.target is None else f"false-alarm target {100 * self.target:g}%"
        return (f"at the default ({target}, {self.gallery_size} people, threshold {self.threshold:.4f}; "
                f"{len(self.dir)} seeds): false alarms {100 * float(np.mean(self.false_alarm_rate)):.2f}% of strangers "
                f"(range {100 * min(self.false_alarm_rate):.2f}-{100 * max(self.false_alarm_rate):.2f}%), "
                f"DIR {float(np.mean(self.dir)):.3f}")


def default_figures(gallery: np.ndarray, gallery_owner: np.ndarray, mated: np.ndarray, mated_owner: np.ndarray,
                    non_mated: np.ndarray, threshold: float, strategy: MatchStrategy,
                    second: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                    scoring: Scoring = Scoring()) -> tuple[float, float]:
    """(false-alarm rate, DIR) of the station's decision at this threshold: the gallery's own search
    (dlib), with the second opinion fused in as the station does it (`scoring.mode`, the band around
    this threshold) when scoring is fused; a probe without a face (NaN row) is a miss when mated and
    never a false alarm."""
    snapshot = GallerySnapshot.build([(f"{o:09d}", i, v) for i, (o, v) in enumerate(zip(gallery_owner, gallery))], [])
    fused = scoring.embedding == "fused"
    if fused and second is None:
        raise EdgefaceError("fused scoring needs the faces' SFace embeddings")
    if scoring.embedding == "sface":
        raise EdgefaceError("--gallery-size measures the station's decision: dlib alone or fused, not SFace alone")
    second_snapshot = None if second is None or not fused else GallerySnapshot.build(
        [(f"{o:09d}", i, np.nan_to_num(v)) for i, (o, v) in enumerate(zip(gallery_owner, second[0]))], [])
    limits = snapshot.limits(threshold, strategy)
    band = Band(threshold)

    def named(probes: np.ndarray, second_probes: np.ndarray | None) -> np.ndarray:
        found = np.flatnonzero(~np.isnan(probes).any(axis=1))
        who = np.full(len(probes), -1)
        for start in range(0, len(found), 4096):
            rows = found[start:start + 4096]
            if second_snapshot is None or second_probes is None:
                who[rows] = [-1 if m.name is None else int(m.name) for m in snapshot.match(probes[rows], threshold, strategy)]
                continue
            chunk = second_probes[rows]

            def cosines(r: np.ndarray, candidates: np.ndarray, chunk: np.ndarray = chunk) -> np.ndarray:
                c = 1.0 - np.square(second_snapshot.distances(np.nan_to_num(chunk[r]), strategy)) / 2.0
                c[np.isnan(chunk[r]).any(axis=1)] = np.nan  # no SFace face: dlib's distance
                return np.take_along_axis(c, candidates, axis=1)

            ranked = rank_with_second_opinion(snapshot.distances(probes[rows], strategy), cosines, scoring.mode, band)
            accepted = ranked.distance < limits[ranked.nearest]
            who[rows] = np.where(accepted, [int(snapshot.names[k]) for k in ranked.nearest], -1)
        return who

    second_mated, second_non_mated = (second[1], second[2]) if second is not None else (None, None)
    alarms = float(np.mean(named(non_mated, second_non_mated) >= 0)) if len(non_mated) else 0.0
    return alarms, float(np.mean(named(mated, second_mated) == mated_owner)) if len(mated) else 0.0


@dataclass
class IdentifyReport:
    full: Figures | None
    """Everyone with >= 2 images enrolled, one-image people as strangers; None without one-image people."""
    station: list[Figures]
    """Station galleries (LFW-like data) or half splits (everyone has several images)."""
    protocol: Literal["station", "half split"]
    images: int
    images_without_face: int
    seconds_per_image: float
    templates: int
    settings: dict[str, object] = field(default_factory=dict)
    at_default: DefaultFigures | None = None

    def _station_label(self) -> str:
        if self.protocol == "half split":
            return f"half split ({self.station[0].gallery_people} people enrolled, the rest strangers; {len(self.station)} seeds)"
        return f"station gallery ({STATION_PEOPLE} people x {len(self.station)} seeds)"

    def lines(self) -> list[str]:
        def far(figures: Figures) -> str:
            return ", ".join(f"DIR {_fmt(figures.dir_at_far[f])} at FAR {100 * f:g}% "
                             f"(threshold {_fmt(figures.threshold_at_far[f])})" for f in FARS)

        def spread(values: list[float | None]) -> str:
            known = [v for v in values if v is not None]
            if len(known) != len(values) or not known:
                return "n/a"
            return f"{np.median(known):.3f} (range {min(known):.3f}-{max(known):.3f})"

        station_far = ", ".join(f"DIR {spread([s.dir_at_far[f] for s in self.station])} at FAR {100 * f:g}%" for f in FARS)
        lines = [(f"{self.images} images, {self.images_without_face} without a face, "
                  f"{1000 * self.seconds_per_image:.1f} ms/image; {self.templates} template(s) per person; {self.settings}")]
        if self.full is not None:
            lines.append(f"full gallery: {self.full.gallery_people} people, {self.full.mated} mated and {self.full.non_mated} "
                         f"non-mated probes: rank-1 {self.full.rank1:.3f}, {far(self.full)}")
        lines.append(f"{self._station_label()}: rank-1 {spread([s.rank1 for s in self.station])}, {station_far}")
        if self.at_default is not None:
            lines.append(self.at_default.line())
        station_share = _mean([s.second_opinion_share for s in self.station])
        if station_share is not None:
            full_share = None if self.full is None else self.full.second_opinion_share
            lines.append("second opinion asked for " + (f"{100 * full_share:.1f}% of the full gallery's probes, "
                                                        if full_share is not None else "")
                         + f"{100 * station_share:.1f}% of the {self.protocol}'s")
        return lines

    def as_dict(self) -> dict[str, object]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        out: dict[str, object] = {"protocol": self.protocol}
        if self.full is not None:
            out.update({
                "rank1": r(self.full.rank1),
                "dir_at_far_1pct": r(self.full.dir_at_far[0.01]),
                "dir_at_far_0_1pct": r(self.full.dir_at_far[0.001]),
                "threshold_at_far_1pct": r(self.full.threshold_at_far[0.01]),
                "threshold_at_far_0_1pct": r(self.full.threshold_at_far[0.001]),
                "gallery_people": self.full.gallery_people, "mated": self.full.mated, "non_mated": self.full.non_mated,
            })
        out.update({
            "station_rank1": r(float(np.mean([s.rank1 for s in self.station]))),
            "station_dir_at_far_1pct": r(_mean([s.dir_at_far[0.01] for s in self.station])),
            "station_dir_at_far_0_1pct": r(_mean([s.dir_at_far[0.001] for s in self.station])),
            "station_dir_at_far_1pct_per_seed": [r(s.dir_at_far[0.01]) for s in self.station],
            "station_threshold_at_far_1pct_per_seed": [r(s.threshold_at_far[0.01]) for s in self.station],
            "images": self.images, "images_without_face": self.images_without_face,
            "ms_per_image": round(1000 * self.seconds_per_image, 2), "templates": self.templates, **self.settings,
        })
        if self.at_default is not None:
            out.update(self.at_default.as_dict())
        if self.full is not None and self.full.second_opinion_share is not None:
            out["second_opinion_share"] = r(self.full.second_opinion_share)
        station_share = _mean([s.second_opinion_share for s in self.station])
        if station_share is not None:
            out["station_second_opinion_share"] = r(station_share)
        return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known and len(known) == len(values) else None


def _min(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.min(known)) if known and len(known) == len(values) else None


def run_identify_evaluation(data: Path, make_analyzer: Callable[[], Any], templates: int = 1,
                            strategy: MatchStrategy = "mean", progress: bool = True, seeds: int = STATION_SEEDS,
                            cache: Path | None = None, cache_key: str = "", *, face_rule: FaceRule | None = None,
                            faces_file: Path | None = None, second: bool = False,
                            scoring: Scoring = Scoring(), gallery_size: int | None = None,
                            threshold: MatchThreshold | None = None,
                            people_split: PeoplePart | None = None) -> IdentifyReport:
    """cache: an .npz of every face (edgeface.eval.data), reused and extended when made with the same
    cache_key (the pipeline settings), so gallery variants can be compared without analysing again.
    gallery_size: also measure N random people at `threshold` (default: the default config's).
    people_split: only that half of the people (edgeface.eval.data.people_part), e.g. "eval" to measure
    on the people a tool did not fit on."""
    if templates < 1:
        raise EdgefaceError("--templates must be at least 1")
    if seeds < 1:
        raise EdgefaceError("--seeds must be at least 1")
    people = dataset_people(data)
    if people_split is not None:
        people = people_part(people, people_split)
    root = images_root(data)
    relative = {f: f.relative_to(root).as_posix() for images in people.values() for f in images}
    table = dataset_faces(data, list(relative.values()), faces_file=faces_file, make_analyzer=make_analyzer,
                          key=cache_key, cache=cache, progress=progress, second=second and faces_file is None)
    rule = face_rule or default_face_rule(data)
    picked = table.pick(rule, list(relative.values()))
    vectors = dict(zip(relative, picked))
    second_vectors: dict[Path, np.ndarray] = {}
    if scoring.embedding != "dlib":
        if table.second_vectors is None:
            raise EdgefaceError(f"--embedder {scoring.embedding} needs SFace embeddings: recognition.second_opinion "
                                "must not be off (and --faces files have none)")
        second_vectors = dict(zip(relative, table.pick(rule, list(relative.values()), second=True)))

    ids = {name: i for i, name in enumerate(people)}
    several = [name for name, images in people.items() if len(images) >= 2]
    split = {name: min(templates, len(people[name]) - 1) for name in several}

    def stack(pairs: list[tuple[str, Path]], rows: dict[Path, np.ndarray] = vectors) -> tuple[np.ndarray, np.ndarray]:
        if not pairs:
            return np.zeros((0, EMBEDDING_DIM), np.float32), np.zeros(0, int)
        return np.stack([rows[f] for _, f in pairs]), np.array([ids[n] for n, _ in pairs])

    def protocol_rows(chosen: list[str], strangers: list[str]) -> ProtocolRows:
        gallery_pairs = [(n, f) for n in chosen for f in people[n][:split[n]]]
        kept = [(n, v) for n, v in gallery_pairs if not np.isnan(vectors[v]).any()]
        mated_pairs = [(n, f) for n in chosen for f in people[n][split[n]:]]
        non_mated_pairs = [(n, f) for n in strangers for f in people[n]]
        second = None
        if second_vectors:
            second = (stack(kept, second_vectors)[0], stack(mated_pairs, second_vectors)[0],
                      stack(non_mated_pairs, second_vectors)[0])
        return ProtocolRows(*stack(kept), *stack(mated_pairs), stack(non_mated_pairs)[0], second)

    def figures(chosen: list[str], strangers: list[str]) -> Figures:
        r = protocol_rows(chosen, strangers)
        return identification_figures(r.gallery, r.owner, r.mated, r.mated_owner, r.non_mated, strategy=strategy,
                                      second=r.second, scoring=scoring)

    singles = [n for n, images in people.items() if len(images) == 1]
    full = figures(several, singles) if singles else None
    station = []
    for seed in range(seeds):
        size = min(STATION_PEOPLE, len(several)) if singles else len(several) // 2
        chosen = sorted(np.random.default_rng(seed).choice(several, size=size, replace=False))
        station.append(figures(chosen, [n for n in people if n not in set(chosen)]))
    at_default = None
    if gallery_size is not None:
        if not 1 <= gallery_size < len(people) or gallery_size > len(several):
            raise EdgefaceError(f"--gallery-size {gallery_size}: {data} has {len(several)} people with two or more "
                                f"images and {len(people)} in all; at most {min(len(several), len(people) - 1)} "
                                "(someone must be left as a stranger)")
        station_threshold = threshold or MatchThreshold.from_config(Config())
        if station_threshold.fixed is None:  # the figures of the score that decides
            station_threshold = replace(station_threshold,
                                        kind=score_kind("off" if scoring.embedding == "dlib" else scoring.mode))
        limit = station_threshold.at(gallery_size)
        alarms, identified = [], []
        strangers = 0
        for seed in range(seeds):
            chosen = sorted(np.random.default_rng(seed).choice(several, size=gallery_size, replace=False))
            chosen_set = set(chosen)
            r = protocol_rows(chosen, [n for n in people if n not in chosen_set])
            alarm, identified_share = default_figures(r.gallery, r.owner, r.mated, r.mated_owner, r.non_mated, limit,
                                                      strategy, r.second, scoring)
            alarms.append(alarm)
            identified.append(identified_share)
            strangers = len(r.non_mated)
        at_default = DefaultFigures(gallery_size, station_threshold.false_alarm_rate, limit, alarms, identified, strangers)
    missing = int(np.isnan(picked).any(axis=1).sum())
    return IdentifyReport(full, station, "station" if singles else "half split", len(relative), missing,
                          table.seconds_per_image, templates, {"strategy": strategy, **_scoring_settings(scoring)},
                          at_default)


def _scoring_settings(scoring: Scoring) -> dict[str, object]:
    if scoring.embedding != "fused":
        return {"embedder": scoring.embedding}
    return {"embedder": "fused", "second_opinion": scoring.mode, "match_max_distance": scoring.threshold}


def _run(args: argparse.Namespace) -> int:
    from edgeface.config import load_config
    from edgeface.vision.analyzer import FaceAnalyzer

    config = load_config(args.config)
    threshold = (MatchThreshold.from_config(config) if args.false_alarm_rate is None
                 else MatchThreshold(false_alarm_rate=args.false_alarm_rate))
    recognition = config.recognition
    settings: dict[str, object] = {"detector": recognition.detector.model, "alignment": recognition.alignment.method,
                                   "precision": recognition.embedder.precision, "flip": recognition.embedder.flip}
    if recognition.second_opinion != "off":
        settings["second"] = SFACE_MODEL_ID
    embedding: Embedding = args.embedder or ("dlib" if recognition.second_opinion == "off" else "fused")
    if embedding != "dlib" and (recognition.second_opinion == "off" or args.faces):
        raise EdgefaceError(f"--embedder {embedding} needs SFace embeddings: recognition.second_opinion must not be off "
                            "(and --faces files have none)")
    mode: SecondOpinion = "always" if recognition.second_opinion == "off" else recognition.second_opinion
    # the full/station figures' band sits around the fixed threshold (or the one-comparison 0.1% distance when
    # the threshold is derived from gallery.false_alarm_rate); --gallery-size puts it around the station's threshold
    fixed = config.match_max_distance
    scoring = Scoring(embedding, mode, DEFAULT_MATCH_MAX_DISTANCE if fixed is None else fixed)
    report = run_identify_evaluation(args.data, lambda: FaceAnalyzer.from_config(recognition), templates=args.templates,
                                     strategy=args.strategy, progress=not args.json, cache=args.cache,
                                     cache_key=json.dumps(settings, sort_keys=True), seeds=args.seeds,
                                     face_rule=args.face, faces_file=args.faces, second="second" in settings,
                                     scoring=scoring, gallery_size=args.gallery_size, threshold=threshold,
                                     people_split=args.people_split)
    report.settings.update({"faces": str(args.faces)} if args.faces else settings)
    return print_figures(report.lines(), report.as_dict(), args.json)


def register_eval(eval_kinds: argparse._SubParsersAction) -> None:
    """Add `identify` under `edgeface eval`."""
    parser = eval_kinds.add_parser("identify", help="open-set identification on a folder-per-person dataset")
    parser.add_argument("--data", type=Path, required=True, help="folder with one sub-folder of images per person")
    parser.add_argument("--templates", type=int, default=1, help="gallery images per person (default 1)")
    parser.add_argument("--strategy", choices=["min", "mean"], default="mean",
                        help="distance to a person: nearest template (min) or mean template (mean)")
    parser.add_argument("--cache", type=Path, help="faces .npz, reused and extended when the settings match")
    parser.add_argument("--seeds", type=int, default=STATION_SEEDS,
                        help=f"station galleries or half splits drawn (default {STATION_SEEDS})")
    parser.add_argument("--face", choices=["largest", "central"],
                        help="which face is the labelled person (default: central on LFW, largest elsewhere)")
    parser.add_argument("--faces", type=Path, help="score another system's faces (.npz from tools/face_recognition_faces.py)")
    parser.add_argument("--gallery-size", type=int, metavar="N",
                        help="also enroll N random people (one draw per seed) and measure false alarms and DIR at the "
                        "threshold the station would use for N people (JSON: false_alarm_target, "
                        "false_alarm_rate_at_default, dir_at_default)")
    parser.add_argument("--people-split", choices=["fit", "eval"],
                        help="only one half of the people (a fixed-seed split of people, never images): tools/"
                        "measure_impostor_scores.py --wild-people fit fits on 'fit'; measure on 'eval'")
    parser.add_argument("--false-alarm-rate", type=float, metavar="F",
                        help="target false alarms per stranger for --gallery-size (default: the config's gallery.false_alarm_rate)")
    parser.add_argument("--embedder", choices=EMBEDDINGS,
                        help="score with dlib alone, SFace alone or fused (default: fused as recognition.second_opinion "
                        "says; dlib when it is off)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object with the figures")
    parser.add_argument("--config", type=Path, help="YAML or JSON config file (defaults apply without it)")
    parser.set_defaults(handler=_run)
