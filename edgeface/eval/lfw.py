"""`edgeface eval lfw`: face verification on any pair list in LFW View 2 format, 10-fold, full pipeline.

It runs on LFW (`--data ../shared/data/lfw`) and on any dataset laid out the same way, such as the
in-the-wild CelebA set (`--data ../shared/data/celeba`). Each image goes through the same analyzer
as `edgeface embed`/`enroll`/`identify` (detector, keypoint refiner, aligner, embedder); the labelled
person is the face nearest the image centre on LFW (its images are centred on them) and the largest
face elsewhere (`--face` overrides). An image without a face has no embedding, and every pair it is in
counts as an error (a same pair rejected, a different pair accepted). With `--faces FILE` the faces of
another system (face_recognition's, from tools/face_recognition_faces.py) are scored the same way.

Besides the 10-fold accuracy it reports what the fixed threshold (gallery.match_max_distance when
given, else 0.3776: 0.1% false accepts per comparison on LFW View 1; the station derives its own from
gallery.false_alarm_rate and the gallery size) does on these pairs (those where both faces were found): its false-accept and true-accept rates, so a
threshold that holds on one set but not another shows.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edgeface.config import RecognitionConfig
from edgeface.errors import EdgefaceError
from edgeface.eval.data import FaceRule, dataset_faces, default_face_rule, images_root
from edgeface.eval.verification import Pair, read_lfw_pairs, tar_at_far, ten_fold_accuracy
from edgeface.vision.detections import FaceDetections


def central_face(detections: FaceDetections, width: int, height: int) -> int | None:
    """Index of the detection whose box centre is nearest the image centre, or None."""
    if len(detections) == 0:
        return None
    centres = (detections.xyxy[:, :2] + detections.xyxy[:, 2:]) / 2
    offsets = np.linalg.norm(centres - np.array([width / 2, height / 2]), axis=1)
    return int(np.argmin(offsets))


@dataclass
class PrecisionResult:
    precision: str
    accuracy: float
    accuracy_std: float
    tar_at_far_1e3: float
    threshold_at_far_1e3: float
    mean_threshold: float
    analyse_ms_per_image: float
    far_at_match_threshold: float
    tar_at_match_threshold: float


@dataclass
class LfwReport:
    dataset: str
    pairs: int
    images: int
    images_without_face: list[str]
    pairs_with_missing_face: int
    face_rule: str
    system: str
    match_max_distance: float
    results: list[PrecisionResult] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        lines = [
            f"{self.dataset}: {self.pairs} pairs, {self.images} images; {self.system}; labelled face: {self.face_rule}",
            f"images without a detected face: {len(self.images_without_face)} "
            f"({100 * len(self.images_without_face) / max(self.images, 1):.2f}%), "
            f"their {self.pairs_with_missing_face} pairs count as errors"
            + (f": {', '.join(self.images_without_face[:10])}" if self.images_without_face else ""),
        ]
        for r in self.results:
            lines.append(
                f"{r.precision}: accuracy {100 * r.accuracy:.2f}% ± {100 * r.accuracy_std:.2f} (10-fold), "
                f"TAR {100 * r.tar_at_far_1e3:.2f}% at FAR 1e-3, best threshold ~{r.mean_threshold:.3f}; "
                f"at the shipped threshold {self.match_max_distance:.4f}: FAR {100 * r.far_at_match_threshold:.2f}%, "
                f"TAR {100 * r.tar_at_match_threshold:.2f}%; {r.analyse_ms_per_image:.1f} ms/image"
            )
        return lines

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "dataset": self.dataset,
            "pairs": self.pairs,
            "images": self.images,
            "images_without_face": len(self.images_without_face),
            "pairs_with_missing_face": self.pairs_with_missing_face,
            "face_rule": self.face_rule,
            "system": self.system,
            "match_max_distance": self.match_max_distance,
        }
        for r in self.results:
            out[f"{r.precision}_accuracy"] = round(r.accuracy, 5)
            out[f"{r.precision}_accuracy_std"] = round(r.accuracy_std, 5)
            out[f"{r.precision}_tar_at_far_1e3"] = round(r.tar_at_far_1e3, 5)
            out[f"{r.precision}_far_at_match_threshold"] = round(r.far_at_match_threshold, 5)
            out[f"{r.precision}_tar_at_match_threshold"] = round(r.tar_at_match_threshold, 5)
            out[f"{r.precision}_analyse_ms_per_image"] = round(r.analyse_ms_per_image, 3)
        return out


def pair_distances(pairs: list[Pair], embeddings: dict[str, np.ndarray]) -> np.ndarray:
    """Euclidean distance of each pair's embeddings; NaN where either image has none."""
    return np.array([float(np.linalg.norm(embeddings[p.first] - embeddings[p.second])) for p in pairs])


def run_lfw_evaluation(
    data_dir: Path,
    pairs_path: Path | None,
    recognition: RecognitionConfig,
    precisions: list[Literal["int8", "fp32"]],
    progress: bool = True,
    max_pairs_per_fold: int | None = None,
    *,
    face_rule: FaceRule | None = None,
    faces_file: Path | None = None,
    cache_dir: Path | None = None,
    match_max_distance: float | None = None,
    embedder: Literal["dlib", "sface", "fused"] | None = None,
) -> LfwReport:
    """`cache_dir`: keep each precision's faces in an .npz there (reused when the settings match).
    `embedder`: dlib alone, SFace alone, or fused as recognition.second_opinion says (default: fused
    unless it is off)."""
    from edgeface.recognition.fusion import Band, fused_distance
    from edgeface.storage.gallery import DEFAULT_MATCH_MAX_DISTANCE
    from edgeface.vision.analyzer import FaceAnalyzer

    pairs_path = pairs_path or data_dir / "pairs.txt"
    if not pairs_path.is_file():
        raise EdgefaceError(f"no pair list at {pairs_path}; pass --pairs or point --data at the dataset folder")
    pairs = read_lfw_pairs(pairs_path)
    if max_pairs_per_fold is not None:
        pairs = _subsample(pairs, max_pairs_per_fold)
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    rule = face_rule or default_face_rule(data_dir)
    # the fixed threshold, or the per-comparison 0.1% distance when the station derives its own from
    # gallery.false_alarm_rate (that one depends on the gallery's size; eval identify --gallery-size measures it)
    threshold = match_max_distance if match_max_distance is not None else DEFAULT_MATCH_MAX_DISTANCE
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    settings: dict[str, object] = {"detector": recognition.detector.model, "alignment": recognition.alignment.method,
                                   "flip": recognition.embedder.flip}
    second = recognition.second_opinion != "off" and faces_file is None
    if second:
        from edgeface.vision.sface import SFACE_MODEL_ID

        settings["second"] = SFACE_MODEL_ID
    scoring = embedder or ("fused" if second else "dlib")
    if scoring != "dlib" and not second:
        raise EdgefaceError(f"--embedder {scoring} needs SFace embeddings: recognition.second_opinion must not be off "
                            "(and --faces files have none)")
    mode = recognition.second_opinion if recognition.second_opinion != "off" else "always"
    shown = {**settings, "embedder": scoring if scoring != "fused" else f"fused ({mode})"}
    system = "faces from " + str(faces_file) if faces_file else "edgeface " + ", ".join(f"{k} {v}" for k, v in shown.items())
    report = LfwReport(dataset=f"{data_dir} ({pairs_path.name})", pairs=len(pairs), images=len(names),
                       images_without_face=[], pairs_with_missing_face=0, face_rule=rule, system=system,
                       match_max_distance=threshold)
    for precision in (["file"] if faces_file else precisions):
        key = json.dumps({**settings, "precision": precision}, sort_keys=True)
        digest = hashlib.sha256(f"{images_root(data_dir).resolve()} {key}".encode()).hexdigest()[:12]
        cache = None if cache_dir is None else cache_dir / f"faces-{digest}.npz"
        started = time.perf_counter()
        table = dataset_faces(
            data_dir, names, faces_file=faces_file, key=key, cache=cache, progress=progress,
            make_analyzer=lambda p=precision: FaceAnalyzer.from_config(recognition, precision=p),  # type: ignore[misc]
            second=second,
        )
        embeddings = dict(zip(names, table.pick(rule, names)))
        second_embeddings = dict(zip(names, table.pick(rule, names, second=True))) if scoring != "dlib" else {}
        missing = [n for n in names if np.isnan(embeddings[n]).any()]
        if len(missing) >= len(report.images_without_face):  # the precision that missed most (they agree but for ties)
            report.images_without_face = missing
            report.pairs_with_missing_face = sum(1 for p in pairs if p.first in set(missing) or p.second in set(missing))
        distances = pair_distances(pairs, embeddings)
        if scoring == "sface":
            distances = pair_distances(pairs, second_embeddings)
        elif scoring == "fused":
            cosines = 1.0 - np.square(pair_distances(pairs, second_embeddings)) / 2.0
            asked = np.ones(len(pairs), bool) if mode == "always" else \
                Band(threshold).needs_second_opinion(np.nan_to_num(distances, nan=np.inf), np.full(len(pairs), np.inf))
            asked &= ~np.isnan(distances)
            distances = distances.copy()
            distances[asked] = fused_distance(distances[asked], cosines[asked])
        ten_fold = ten_fold_accuracy(distances, same, folds)
        tar, at = tar_at_far(distances, same, 1e-3)
        # The shipped threshold's rates are over the pairs where both faces were found: what it does, not
        # what the detector missed (that is in the accuracy and in images_without_face).
        found = ~np.isnan(distances)
        accepted = np.nan_to_num(distances, nan=np.inf) < threshold
        false_accepts = accepted[~same & found]
        report.results.append(PrecisionResult(
            precision=precision, accuracy=ten_fold.mean_accuracy, accuracy_std=ten_fold.std_accuracy,
            tar_at_far_1e3=tar, threshold_at_far_1e3=at, mean_threshold=float(np.mean(ten_fold.thresholds)),
            analyse_ms_per_image=1000 * (table.seconds_per_image if faces_file or cache
                                         else (time.perf_counter() - started) / max(len(names), 1)),
            far_at_match_threshold=float(false_accepts.mean()) if false_accepts.size else 0.0,
            tar_at_match_threshold=float(accepted[same & found].mean()) if (same & found).any() else 0.0,
        ))
    return report


def _subsample(pairs: list[Pair], per_fold: int) -> list[Pair]:
    """The first `per_fold` same and `per_fold` different pairs of each fold (for quick checks)."""
    kept: list[Pair] = []
    counts: dict[tuple[int, bool], int] = {}
    for pair in pairs:
        key = (pair.fold, pair.same)
        if counts.get(key, 0) < per_fold:
            kept.append(pair)
            counts[key] = counts.get(key, 0) + 1
    return kept
