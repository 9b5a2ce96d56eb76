"""`edgeface eval lfw`: the full pipeline (detect -> align -> embed) on LFW View 2, 10-fold.

Each image goes through the same detector, aligner and embedder as `edgeface embed`; the labelled
person is the face nearest the image centre (LFW's images are centred on them), and when no face
reaches the detector's threshold the most central candidate above its fallback threshold (0.3) is
taken (`BlazeFaceDetector.detect_central`). An image where even that finds nothing has no embedding,
and every pair it is in counts as an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edgeface.config import RecognitionConfig
from edgeface.errors import EdgefaceError
from edgeface.types import FaceDetections
from edgeface.verification import Pair, read_lfw_pairs, tar_at_far, ten_fold_accuracy


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
    embed_ms_per_face: float


@dataclass
class LfwReport:
    pairs: int
    images: int
    images_without_face: list[str]
    pairs_with_missing_face: int
    detect_align_ms_per_image: float
    flip: bool
    alignment: str
    detector: str
    results: list[PrecisionResult] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        lines = [
            f"LFW View 2: {self.pairs} pairs, {self.images} images; detector {self.detector}, "
            f"alignment {self.alignment}, flip {'on' if self.flip else 'off'}",
            f"images without a detected face: {len(self.images_without_face)} "
            f"({100 * len(self.images_without_face) / max(self.images, 1):.2f}%), "
            f"their {self.pairs_with_missing_face} pairs count as errors"
            + (f": {', '.join(self.images_without_face[:10])}" if self.images_without_face else ""),
        ]
        for r in self.results:
            lines.append(
                f"{r.precision}: accuracy {100 * r.accuracy:.2f}% ± {100 * r.accuracy_std:.2f} (10-fold), "
                f"TAR {100 * r.tar_at_far_1e3:.2f}% at FAR 1e-3, threshold ~{r.mean_threshold:.3f}, "
                f"embed {r.embed_ms_per_face:.2f} ms/face, detect+align {self.detect_align_ms_per_image:.2f} ms/image"
            )
        return lines

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "pairs": self.pairs,
            "images": self.images,
            "images_without_face": len(self.images_without_face),
            "pairs_with_missing_face": self.pairs_with_missing_face,
            "detect_align_ms_per_image": round(self.detect_align_ms_per_image, 3),
            "flip": self.flip,
            "alignment": self.alignment,
            "detector": self.detector,
        }
        for r in self.results:
            out[f"{r.precision}_accuracy"] = round(r.accuracy, 5)
            out[f"{r.precision}_accuracy_std"] = round(r.accuracy_std, 5)
            out[f"{r.precision}_tar_at_far_1e3"] = round(r.tar_at_far_1e3, 5)
            out[f"{r.precision}_embed_ms_per_face"] = round(r.embed_ms_per_face, 3)
        return out


def _images_dir(data_dir: Path) -> Path:
    return data_dir / "images" if (data_dir / "images").is_dir() else data_dir


def run_lfw_evaluation(
    data_dir: Path,
    pairs_path: Path | None,
    recognition: RecognitionConfig,
    precisions: list[Literal["int8", "fp32"]],
    progress: bool = True,
    max_pairs_per_fold: int | None = None,
) -> LfwReport:
    from edgeface.align import Aligner
    from edgeface.detect import BlazeFaceDetector
    from edgeface.embed import Embedder
    from edgeface.imageio import read_image

    pairs_path = pairs_path or data_dir / "pairs.txt"
    if not pairs_path.is_file():
        raise EdgefaceError(f"no pair list at {pairs_path}; pass --pairs or point --data at the LFW folder")
    pairs = read_lfw_pairs(pairs_path)
    if max_pairs_per_fold is not None:
        pairs = _subsample(pairs, max_pairs_per_fold)
    images_dir = _images_dir(data_dir)
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})

    detector = BlazeFaceDetector(model=recognition.detector.model, score_threshold=recognition.detector.min_score)
    aligner = Aligner(method=recognition.alignment.method, detector_model=recognition.detector.model)
    embedders = {
        p: Embedder(precision=p, threads=recognition.embedder.threads, flip=recognition.embedder.flip)
        for p in precisions
    }

    chips: dict[str, np.ndarray] = {}
    missing: list[str] = []
    started = time.perf_counter()
    iterator = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="detect+align", unit="img")
    for name in iterator:
        image = read_image(images_dir / name)
        face = detector.detect_central(image)
        if not len(face):
            missing.append(name)
            continue
        chips[name] = aligner.align(image, face)[0]
    detect_align_ms = 1000 * (time.perf_counter() - started) / max(len(names), 1)

    report = LfwReport(
        pairs=len(pairs),
        images=len(names),
        images_without_face=missing,
        pairs_with_missing_face=sum(1 for p in pairs if p.first in missing or p.second in missing),
        detect_align_ms_per_image=detect_align_ms,
        flip=recognition.embedder.flip,
        alignment=recognition.alignment.method,
        detector=recognition.detector.model,
    )
    found = sorted(chips)
    stacked = np.stack([chips[n] for n in found]) if found else np.zeros((0, 150, 150, 3), np.uint8)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    for embedder in embedders.values():
        started = time.perf_counter()
        embeddings = np.concatenate([embedder.embed(stacked[i : i + 32]) for i in range(0, len(stacked), 32)]) \
            if found else np.zeros((0, 128), np.float32)
        embed_ms = 1000 * (time.perf_counter() - started) / max(len(found), 1)
        by_name = dict(zip(found, embeddings))
        distances = np.array([
            float(np.linalg.norm(by_name[p.first] - by_name[p.second])) if p.first in by_name and p.second in by_name
            else np.nan
            for p in pairs
        ])
        ten_fold = ten_fold_accuracy(distances, same, folds)
        tar, threshold = tar_at_far(distances, same, 1e-3)
        report.results.append(PrecisionResult(
            precision=embedder.precision, accuracy=ten_fold.mean_accuracy, accuracy_std=ten_fold.std_accuracy,
            tar_at_far_1e3=tar, threshold_at_far_1e3=threshold, mean_threshold=float(np.mean(ten_fold.thresholds)),
            embed_ms_per_face=embed_ms,
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
