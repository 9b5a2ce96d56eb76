"""The keypoint refiner once per track against once per embedding: the same faces, aligned both ways.

The camera loop runs on a video as `edgeface run` would (the people of ../shared/data/people enrolled
as tools/dump_frames.py does, refiner on every embedding: today's behaviour). Every face it embeds is
aligned again, on the same frame and detection, with the track's keypoint correction taken from the
track's FIRST refined embedding instead of a fresh refiner run:

- fresh:  the refiner on this frame (what the loop embedded; checked);
- delta:  detector keypoints + (refined - detector keypoints at the first refinement), in units of the box;
- box:    the refined keypoints of the first refinement relative to the box, placed on this frame's box;
- track:  the camera loop's once-per-track refiner (edgeface.vision.track_keypoints: the first
          refinement's keypoints followed by registering a patch; refined afresh when stale);
- none:   no refinement (detector keypoints alone: refine_face_max_frac 0).

Per variant: the keypoint error against the fresh refinement (mean over the 4 points, fraction of the
box side), the embedding's distance to the fresh one, and on named tracks (hamilton_clip: the label the
loop decided) the distance to the right person's templates, to the nearest wrong person and the share
of embeddings the gallery matches to the right person; on every track the distance of each embedding
to its track's mean and to the nearest other track's mean (clustering).

    python tools/measure_refine_per_track.py ../shared/data/video/hamilton_clip.mp4 [--json out.json]
    python tools/measure_refine_per_track.py --pseudo ../shared/data/celeba [--folds N] [--json out.json]

With --pseudo, each photo of a pair list is a short pseudo-video (see MOTIONS): refined on the photo,
embedded on a moved copy; verification (10-fold accuracy, TAR at 1% FAR) per variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeface.bus import EventBus
from edgeface.config import Config
from edgeface.io.sources import open_source
from edgeface.pipeline import build_pipeline
from edgeface.storage.gallery import Gallery
from edgeface.vision.align import BLAZEFACE_POINTS, BLAZEFACE_TEMPLATES, as_bgr
from edgeface.vision.track_keypoints import TrackKeypoints

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VARIANTS = ("fresh", "delta", "box", "track", "none")


class _Discard:
    def publish(self, event: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _dump_tool() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dump_frames", Path(__file__).resolve().parent / "dump_frames.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _box_frame(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre, (w, h)) of an xyxy box."""
    return (box[:2] + box[2:]) / 2, np.maximum(box[2:] - box[:2], 1e-6)


@dataclass(frozen=True)
class Carried:
    """What a track keeps from its first refinement."""

    box: np.ndarray
    kps: np.ndarray
    refined: np.ndarray
    ok: bool
    follower: TrackKeypoints
    """The camera loop's once-per-track refiner, holding this one track."""


def carried(image: np.ndarray, det: Any, refiner: Any, frame_index: int = 0) -> Carried:
    again, ok = refiner.refine(image, det)
    follower = TrackKeypoints(refiner)
    follower.refine(image, det, [0], frame_index)
    return Carried(det.xyxy[0].astype(np.float64), det.kps[0].astype(np.float64), again.kps[0].astype(np.float64),
                   bool(ok[0]), follower)


def variant_vectors(image: np.ndarray, det: Any, first: Carried, aligner: Any, embedder: Any, frame_index: int
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Each variant's embedding of this face, and (ok, side, side ratio, keypoint error per variant)."""
    box, kps = det.xyxy[0].astype(np.float64), det.kps[0].astype(np.float64)
    now = carried(image, det, aligner.refiner)
    followed, was_followed = first.follower.refine(image, det, [0], frame_index)
    centre0, size0 = _box_frame(first.box)
    centre, size = _box_frame(box)
    seconds: dict[str, np.ndarray | None] = {
        "fresh": now.refined if now.ok else None,
        "delta": kps + (first.refined - first.kps) / size0 * size if first.ok else None,
        "box": centre + (first.refined - centre0) / size0 * size if first.ok else None,
        "track": followed.kps[0].astype(np.float64) if was_followed[0] else None,
        "none": None,
    }
    template = aligner.blazeface_template
    refined_template = BLAZEFACE_TEMPLATES[aligner.refiner.detector.model]
    chips = []
    for second in seconds.values():
        points = kps[list(BLAZEFACE_POINTS), :][None]
        templates = template[None]
        if second is not None:
            points = np.concatenate([points, second[list(BLAZEFACE_POINTS), :][None]], axis=1)
            templates = np.concatenate([templates, refined_template[None]], axis=1)
        chips.append(aligner.align_landmarks(image, points, templates))
    from edgeface.vision.quality import laplacian_variance

    blur = {name: laplacian_variance(chip[0]) for name, chip in zip(seconds, chips)}
    vectors = embedder.embed(np.concatenate(chips))
    side = float(np.sqrt(size[0] * size[1]))
    kp_error = {name: (float(np.linalg.norm((s if s is not None else kps)[:4] - now.refined[:4], axis=1).mean()) / side
                       if now.ok else float("nan")) for name, s in seconds.items()}
    return dict(zip(VARIANTS, vectors)), {"ok": now.ok, "first_ok": first.ok, "side": side,
                                          "side_ratio": side / float(np.sqrt(size0[0] * size0[1])), "kp_error": kp_error,
                                          "blur": blur}


def measure(video: Path, people: Path) -> dict[str, Any]:
    config = Config.model_validate({"pipeline": {"refine_once_per_track": False}})  # the loop refines every face
    records: list[dict[str, Any]] = []
    labels: dict[int, str | None] = {}
    with tempfile.TemporaryDirectory(prefix="edgeface-refine-") as scratch:
        gallery = Gallery(Path(scratch) / "gallery.db", create=True)
        _dump_tool().enroll_people(gallery, people, config)
        pipeline = build_pipeline(config, bus=EventBus(_Discard()), matcher=gallery, threads=1)
        aligner, embedder = pipeline.aligner, pipeline.embedder
        refiner = aligner.refiner  # type: ignore[attr-defined]
        current: dict[str, Any] = {}
        first: dict[int, Carried] = {}
        decide = pipeline._decide

        def recording_decide(faces: Any) -> Any:
            image = as_bgr(current["image"])
            for i in faces.weights:
                track = faces.track_ids[i]
                det = faces.detections[np.array([i])]
                if track not in first:
                    first[track] = carried(image, det, refiner, faces.index)
                vectors, row = variant_vectors(image, det, first[track], aligner, embedder, faces.index)
                row.update({"frame": faces.index, "track": track, "vectors": vectors,
                            "loop_vs_fresh": float(np.linalg.norm(faces.embeddings[i] - vectors["fresh"]))})
                records.append(row)
            return decide(faces)

        pipeline._decide = recording_decide  # type: ignore[method-assign]

        def frames() -> Iterator[Any]:
            with open_source(video, every_frame=True) as opened:
                for frame in opened:
                    current["image"] = frame.image
                    yield frame

        pipeline.run(frames(), on_frame=lambda r: labels.update({f.track_id: f.label for f in r.faces if f.label}))
        snapshot = gallery.snapshot()
        threshold = pipeline.matcher.max_distance  # type: ignore[attr-defined]
        gallery.close()
    return summarise(records, labels, snapshot, threshold)


def summarise(records: list[dict[str, Any]], labels: dict[int, str | None], snapshot: Any, threshold: float) -> dict[str, Any]:
    names = list(snapshot.names)
    out: dict[str, Any] = {"embeddings": len(records), "tracks": len({r["track"] for r in records}),
                           "refined_fresh": sum(r["ok"] for r in records),
                           "loop_vs_fresh_max": max((r["loop_vs_fresh"] for r in records), default=0.0)}
    later = [r for r in records if r["frame"] != min(q["frame"] for q in records if q["track"] == r["track"])]
    out["later_embeddings"] = len(later)
    out["side_ratio_later"] = [round(min((r["side_ratio"] for r in later), default=1), 3),
                               round(max((r["side_ratio"] for r in later), default=1), 3)]
    for variant in VARIANTS:
        row: dict[str, Any] = {}
        errors = [r["kp_error"][variant] for r in later if r["ok"] and r["first_ok"]]
        row["kp_error_later_mean"] = round(statistics.fmean(errors), 4) if errors else None
        row["kp_error_later_p90"] = round(float(np.percentile(errors, 90)), 4) if errors else None
        moved = [float(np.linalg.norm(r["vectors"][variant] - r["vectors"]["fresh"])) for r in later]
        row["dist_to_fresh_later_mean"] = round(statistics.fmean(moved), 4) if moved else None
        ratios = [np.log(r["blur"][variant] / r["blur"]["fresh"]) for r in later if r["blur"]["fresh"] > 0 and r["blur"][variant] > 0]
        row["blur_var_ratio_to_fresh_later"] = round(float(np.exp(np.mean(ratios))), 3) if ratios else None
        row["blur_var_median"] = round(float(np.median([r["blur"][variant] for r in records])), 1)
        named = [r for r in records if labels.get(r["track"]) in names]
        if named:
            d = snapshot.distances(np.stack([r["vectors"][variant] for r in named]))
            right = np.array([names.index(labels[r["track"]]) for r in named])  # type: ignore[arg-type]
            genuine = d[np.arange(len(named)), right]
            wrong = np.where(np.eye(len(names), dtype=bool)[right], np.inf, d).min(axis=1)
            best = d.argmin(axis=1)
            row["named_embeddings"] = len(named)
            row["genuine_mean"] = round(float(genuine.mean()), 4)
            row["nearest_wrong_mean"] = round(float(wrong.mean()), 4)
            row["margin_mean"] = round(float((wrong - genuine).mean()), 4)
            row["matched_right"] = int(((best == right) & (d.min(axis=1) < threshold)).sum())
            row["matched_wrong"] = int(((best != right) & (d.min(axis=1) < threshold)).sum())
        by_track: dict[int, list[np.ndarray]] = defaultdict(list)
        for r in records:
            by_track[r["track"]].append(r["vectors"][variant])
        means = {t: np.mean(v, axis=0) / np.linalg.norm(np.mean(v, axis=0)) for t, v in by_track.items()}
        own, other = [], []
        for t, vectors in by_track.items():
            if len(vectors) < 2:
                continue
            for v in vectors:
                own.append(float(np.linalg.norm(v - means[t])))
                other.append(min((float(np.linalg.norm(v - m)) for u, m in means.items() if u != t), default=np.nan))
        row["to_own_track_mean"] = round(statistics.fmean(own), 4) if own else None
        row["to_other_track_mean_min"] = round(float(np.nanmin(other)), 4) if other else None
        row["nearest_gallery_unnamed_mean"] = None
        unnamed = [r for r in records if labels.get(r["track"]) not in names]
        if unnamed and names:
            d = snapshot.distances(np.stack([r["vectors"][variant] for r in unnamed]))
            row["nearest_gallery_unnamed_mean"] = round(float(d.min(axis=1).mean()), 4)
            row["unnamed_false_matches"] = int((d.min(axis=1) < threshold).sum())
        out[variant] = row
    out["labels"] = {str(t): label for t, label in sorted(labels.items())}
    return out


MOTIONS = {"next": (3, 1.08, 3.0, (6.0, 4.0)), "recheck": (30, 0.85, -6.0, (-12.0, 8.0))}
"""Pseudo-video: the later frame (frame number, then scale, degrees, shift px) is the photo moved about its centre and
re-encoded (JPEG 80), as a face that came nearer and turned its head a little ("next": a few frames
later) or moved more ("recheck": a re-check 30 frames later)."""


def _moved(image: np.ndarray, scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, scale)
    matrix[:, 2] += shift
    moved = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return _jpeg(moved)


def _jpeg(image: np.ndarray) -> np.ndarray:
    import cv2

    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR) if ok else image


def pseudo_video(data: Path, limit: int | None) -> dict[str, Any]:
    """Verification on a pair list (LFW View 2 format) with each photo's face taken from a pseudo-video:
    the camera loop's models refine it on the photo (frame 0) and embed it on a moved frame, each variant."""
    import cv2

    from edgeface.eval.verification import read_lfw_pairs, tar_at_far, ten_fold_accuracy
    from edgeface.vision.analyzer import camera_models

    pairs = read_lfw_pairs(data / "pairs.txt")
    if limit:
        pairs = [p for p in pairs if p.fold < limit]
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    models = camera_models(Config(), threads=1)
    aligner, embedder, detector = models.aligner, models.embedder, models.detector
    vectors: dict[str, dict[str, dict[str, np.ndarray]]] = {m: {v: {} for v in VARIANTS} for m in MOTIONS}
    errors: dict[str, dict[str, list[float]]] = {m: {v: [] for v in VARIANTS} for m in MOTIONS}
    missing = 0
    for name in names:
        photo = cv2.imread(str(data / "images" / name))
        frame0 = _jpeg(photo)
        found0 = detector.detect(frame0)
        if not len(found0):
            missing += 1
            continue
        for motion, (frame_index, scale, degrees, shift) in MOTIONS.items():
            first = carried(frame0, _largest(found0), aligner.refiner)
            frame = _moved(photo, scale, degrees, shift)
            found = detector.detect(frame)
            if not len(found):
                continue
            got, row = variant_vectors(frame, _largest(found), first, aligner, embedder, frame_index)
            for variant in VARIANTS:
                vectors[motion][variant][name] = got[variant]
                if row["ok"] and row["first_ok"]:
                    errors[motion][variant].append(row["kp_error"][variant])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    out: dict[str, Any] = {"dataset": str(data), "pairs": len(pairs), "images": len(names), "no_face_on_frame0": missing,
                           "pairs_without_face": {m: int(sum(p.first not in vectors[m]["fresh"] or p.second not in vectors[m]["fresh"]
                                                             for p in pairs)) for m in MOTIONS}}
    for motion in MOTIONS:
        rows = {}
        for variant in VARIANTS:
            table = vectors[motion][variant]
            distances = np.array([float(np.linalg.norm(table[p.first] - table[p.second]))
                                  if p.first in table and p.second in table else np.nan for p in pairs])
            found = ~np.isnan(distances)  # the same pairs for every variant (one detection per frame)
            tar, _ = tar_at_far(distances[found], same[found], 1e-2)
            moved = [float(np.linalg.norm(table[n] - vectors[motion]["fresh"][n])) for n in table]
            rows[variant] = {"accuracy_10fold": round(ten_fold_accuracy(distances, same, folds).mean_accuracy, 4),
                             "tar_at_far_1e2": round(tar, 4),
                             "genuine_mean": round(float(np.nanmean(distances[same])), 4),
                             "impostor_mean": round(float(np.nanmean(distances[~same])), 4),
                             "kp_error_mean": round(statistics.fmean(errors[motion][variant]), 4),
                             "dist_to_fresh_mean": round(statistics.fmean(moved), 4)}
        out[motion] = rows
    return out


def _largest(found: Any) -> Any:
    areas = (found.xyxy[:, 2] - found.xyxy[:, 0]) * (found.xyxy[:, 3] - found.xyxy[:, 1])
    return found[np.array([int(np.argmax(areas))])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, nargs="?")
    parser.add_argument("--pseudo", type=Path, metavar="DATASET",
                        help="instead of a video: a pseudo-video of each photo of DATASET's pairs.txt (e.g. ../shared/data/celeba)")
    parser.add_argument("--folds", type=int, help="with --pseudo: only the first FOLDS folds")
    parser.add_argument("--people", type=Path, default=DATA / "people")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.pseudo is not None:
        result = pseudo_video(args.pseudo, args.folds)
    elif args.video is not None:
        result = measure(args.video, args.people)
    else:
        parser.error("give a video or --pseudo DATASET")
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
