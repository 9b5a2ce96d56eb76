"""dlib alone vs SFace alone vs the two fused: verification and open-set identification, LFW and CelebA.

Every image is analysed once by edgeface's photo analyzer (FaceAnalyzer.from_config(Config().recognition):
the default detector, keypoint refiner and INT8 dlib embedder); SFace embeds the same faces, placed by
the same keypoints on its own template (edgeface.vision.sface.SFaceAligner.align_landmarks), in FP32 and INT8.
The embeddings are cached under /tmp (--cache), one FaceTable per model; the labelled face is chosen
as edgeface's evaluations do (LFW: central, CelebA: largest).

Fusion: each model's cosine similarity becomes a z-score against that model's impostor (different
people) similarities, and the fused score is w * z_dlib + (1 - w) * z_sface. The impostor statistics
and w are fitted on every pair of the LFW View 1 pairsDevTrain images and every pair of the CelebA
images: w maximises the mean, over the two, of the true-accept rate at 1e-4 false accepts per comparison
(1% open-set false alarms spread over a gallery of ~100 people).

Reported, for dlib, SFace FP32, SFace INT8, fused (FP32 and INT8 SFace):
- verification: LFW View 2 and CelebA pairs.txt, 10-fold accuracy (threshold from the other folds);
- open set, LFW: the 1,680 people with >= 2 images enrolled with their first photo, their other photos
  as mated probes, the one-image people as strangers; rank-1 and DIR at 1% FAR;
- open set, CelebA: half the people enrolled with one photo (the first), the other half strangers,
  `--seeds` seeded splits; mean rank-1 and DIR at 1% FAR;
- DIR at 1% FAR against w, so the choice of w can be judged.

    python tools/measure_fusion.py --data ../shared/data [--cache /tmp/edgeface-fusion] [--seeds 10]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edgeface.eval.data import EMBEDDING_DIM, FaceTable, dataset_people, default_face_rule
from edgeface.eval.verification import read_lfw_pairs, tar_at_far, ten_fold_accuracy
from edgeface.vision.align import dlib_chip_matrix, extract_chip

MODELS = ("dlib", "sface_fp32", "sface_int8")
FIT_FAR = 1e-4
"""Per-comparison false-accept rate the weight is fitted at: 1% open-set false alarms over a gallery of
~100 people is ~1e-4 per comparison."""
CHUNK = 500
log = logging.getLogger("measure_fusion")


# ----------------------------------------------------------------------------- analysis (cached)


class TwoModelAnalyzer:
    """Detect once, align twice, embed three times."""

    def __init__(self, sface_models: Path | None) -> None:
        from edgeface.config import Config
        from edgeface.vision.analyzer import FaceAnalyzer
        from edgeface.vision.sface import SFaceAligner, SFaceEmbedder

        self.analyzer = FaceAnalyzer.from_config(Config().recognition)
        self.sface_aligner = SFaceAligner()
        self.sface = {"sface_fp32": SFaceEmbedder("fp32", models_directory=sface_models),
                      "sface_int8": SFaceEmbedder("int8", models_directory=sface_models)}
        if self.sface["sface_int8"].precision != "int8":
            log.warning("the INT8 SFace failed its self-check here: its figures are FP32's")

    def analyze(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        import cv2

        detections = self.analyzer.detector.detect(image)
        if not len(detections):
            return detections.xyxy, {m: np.zeros((0, EMBEDDING_DIM), np.float32) for m in MODELS}
        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3]
        points, templates = self.analyzer.aligner.landmarks(image, detections)
        dlib_chips = np.stack([extract_chip(bgr, dlib_chip_matrix(t, p)) for t, p in zip(templates.tolist(), points.tolist())])
        sface_chips = self.sface_aligner.align_landmarks(bgr, points, templates)
        vectors = {"dlib": self.analyzer.embedder.embed(dlib_chips)}
        for name, embedder in self.sface.items():
            vectors[name] = embedder.embed(sface_chips)
        return detections.xyxy, vectors


def analyse(root: Path, files: list[str], cache: Path, tag: str, sface_models: Path | None) -> dict[str, FaceTable]:
    """One FaceTable per model over `files` (relative to root), extended chunk by chunk in the cache."""
    from edgeface.errors import ImageError
    from edgeface.io.images import read_image

    paths = {m: cache / f"{tag}.{m}.npz" for m in MODELS}
    tables = {m: FaceTable.load(p) if p.is_file() else FaceTable.empty("fusion") for m, p in paths.items()}
    done = set(tables["dlib"].files)
    missing = [f for f in files if f not in done]
    if not missing:
        return tables
    analyzer = TwoModelAnalyzer(sface_models)
    for start in range(0, len(missing), CHUNK):
        chunk = missing[start:start + CHUNK]
        sizes, owners, boxes = [], [], []
        vectors: dict[str, list[np.ndarray]] = {m: [] for m in MODELS}
        began = time.perf_counter()
        offset = len(tables["dlib"].files)
        for i, name in enumerate(chunk, start=offset):
            try:
                image = read_image(root / name)
            except ImageError as error:
                log.warning("%s; counted as an image without a face", error)
                sizes.append((0.0, 0.0))
                continue
            xyxy, found = analyzer.analyze(image)
            sizes.append((float(image.shape[1]), float(image.shape[0])))
            owners += [i] * len(xyxy)
            boxes.append(xyxy.reshape(-1, 4))
            for m in MODELS:
                vectors[m].append(found[m])
        seconds = (time.perf_counter() - began) / len(chunk)
        for m in MODELS:
            t = tables[m]
            tables[m] = FaceTable(
                t.files + chunk,
                np.concatenate([t.sizes, np.array(sizes, np.float32).reshape(-1, 2)]),
                np.concatenate([t.owner, np.array(owners, np.int64)]),
                np.concatenate([t.boxes, *boxes]).astype(np.float32),
                np.concatenate([t.vectors, *vectors[m]]).astype(np.float32),
                "fusion", seconds,
            )
            tables[m].save(paths[m])
        log.info("%s: %d/%d images analysed (%.0f ms/image)", tag, offset + len(chunk) - len(done) + len(done),
                 len(files), 1000 * seconds)
    return tables


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Embeddings:
    """Per model, (n, 128) unit rows of the chosen face of each file (NaN: no face)."""

    files: list[str]
    vectors: dict[str, np.ndarray]

    def rows(self, names: list[str]) -> dict[str, np.ndarray]:
        index = {f: i for i, f in enumerate(self.files)}
        take = np.array([index[n] for n in names], np.int64)
        return {m: v[take] for m, v in self.vectors.items()}


def chosen_embeddings(tables: dict[str, FaceTable], data: Path, files: list[str]) -> Embeddings:
    rule = default_face_rule(data)
    return Embeddings(files, {m: t.pick(rule, files) for m, t in tables.items()})


@dataclass(frozen=True)
class Fusion:
    """w * z_dlib + (1 - w) * z_sface, z = (cosine - impostor mean) / impostor sd."""

    sface: str
    weight_dlib: float
    mean: dict[str, float]
    sd: dict[str, float]

    def score(self, similarities: dict[str, np.ndarray]) -> np.ndarray:
        z_dlib = (similarities["dlib"] - self.mean["dlib"]) / self.sd["dlib"]
        z_sface = (similarities[self.sface] - self.mean[self.sface]) / self.sd[self.sface]
        return self.weight_dlib * z_dlib + (1 - self.weight_dlib) * z_sface


def pair_similarities(embeddings: Embeddings, pairs: list) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
    a = embeddings.rows([p.first for p in pairs])
    b = embeddings.rows([p.second for p in pairs])
    return {m: np.sum(a[m] * b[m], axis=1) for m in a}


def single(model: str) -> Fusion:
    """One model alone, on the fused score's scale (the ranking is the model's cosine)."""
    other = "sface_fp32" if model == "dlib" else model
    return Fusion(other, 1.0 if model == "dlib" else 0.0, {m: 0.0 for m in MODELS}, {m: 1.0 for m in MODELS})


def all_pairs(embeddings: Embeddings, files: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Cosines of every pair of `files` with a face (the person is the file's folder), and which are the
    same person."""
    rows = embeddings.rows(files)
    owner = np.array([f.split("/")[0] for f in files])
    found = ~np.isnan(rows["dlib"]).any(axis=1)
    rows, owner = {m: v[found] for m, v in rows.items()}, owner[found]
    upper = np.triu_indices(len(owner), 1)
    return {m: (v @ v.T)[upper] for m, v in rows.items()}, (owner[:, None] == owner[None, :])[upper]


def fit_fusion(fitting: list[tuple[dict[str, np.ndarray], np.ndarray]], sface: str, far: float = FIT_FAR
               ) -> tuple[Fusion, list[tuple[float, float]]]:
    """Impostor statistics pooled over the fitting sets; w on a 0.05 grid maximising the mean TAR at `far`."""
    impostors = {m: np.concatenate([s[m][~same] for s, same in fitting]) for m in ("dlib", sface)}
    mean = {m: float(np.nanmean(v)) for m, v in impostors.items()}
    sd = {m: float(np.nanstd(v)) for m, v in impostors.items()}
    curve = []
    for w in np.round(np.arange(0.0, 1.0001, 0.05), 2):
        fusion = Fusion(sface, float(w), mean, sd)
        tars = [tar_at_far(-fusion.score(s), same, far)[0] for s, same in fitting]
        curve.append((float(w), float(np.mean(tars))))
    best = max(curve, key=lambda point: (point[1], -abs(point[0] - 0.5)))[0]
    return Fusion(sface, best, mean, sd), curve


def verification(fusion: Fusion, similarities: dict[str, np.ndarray], pairs: list) -> tuple[float, float]:  # type: ignore[type-arg]
    """(10-fold accuracy, TAR at 1% FAR)."""
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    distance = -fusion.score(similarities)
    return ten_fold_accuracy(distance, same, folds).mean_accuracy, tar_at_far(distance, same, 0.01)[0]


def open_set(fusion: Fusion, gallery: dict[str, np.ndarray], owner: np.ndarray, mated: dict[str, np.ndarray],
             mated_owner: np.ndarray, strangers: dict[str, np.ndarray], far: float = 0.01) -> tuple[float, float]:
    """(rank-1, DIR at `far`): one template per person; a probe without a face is a miss, never an alarm."""
    keep = ~np.isnan(gallery["dlib"]).any(axis=1) & ~np.isnan(gallery["sface_fp32"]).any(axis=1)
    gallery = {m: np.nan_to_num(v[keep]) for m, v in gallery.items()}
    owner = owner[keep]

    def best(probes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        found = ~np.isnan(probes["dlib"]).any(axis=1)
        who = np.full(len(found), -1)
        score = np.full(len(found), -np.inf)
        rows = np.flatnonzero(found)
        for start in range(0, len(rows), 2048):
            part = rows[start:start + 2048]
            s = fusion.score({m: np.nan_to_num(probes[m][part]) @ gallery[m].T for m in gallery})
            top = np.argmax(s, axis=1)
            who[part], score[part] = owner[top], s[np.arange(len(part)), top]
        return who, score

    mated_who, mated_score = best(mated)
    _, stranger_score = best(strangers)
    ordered = np.sort(stranger_score)[::-1]
    threshold = ordered[int(np.floor(far * len(ordered)))]
    correct = mated_who == mated_owner
    return float(correct.mean()), float(np.mean(correct & (mated_score > threshold)))


# ----------------------------------------------------------------------------- protocols


def lfw_open_set(embeddings: Embeddings, people: dict[str, list[str]], fusion: Fusion) -> tuple[float, float]:
    several = [n for n, f in people.items() if len(f) >= 2]
    singles = [n for n, f in people.items() if len(f) == 1]
    ids = {n: i for i, n in enumerate(people)}
    gallery = embeddings.rows([people[n][0] for n in several])
    mated_files = [(n, f) for n in several for f in people[n][1:]]
    mated = embeddings.rows([f for _, f in mated_files])
    strangers = embeddings.rows([people[n][0] for n in singles])
    return open_set(fusion, gallery, np.array([ids[n] for n in several]), mated,
                    np.array([ids[n] for n, _ in mated_files]), strangers)


def half_split_open_set(embeddings: Embeddings, people: dict[str, list[str]], fusion: Fusion,
                        seeds: int) -> tuple[float, float]:
    names = sorted(people)
    ids = {n: i for i, n in enumerate(names)}
    results = []
    for seed in range(seeds):
        chosen = sorted(np.random.default_rng(seed).choice(names, size=len(names) // 2, replace=False))
        others = [n for n in names if n not in set(chosen)]
        gallery = embeddings.rows([people[n][0] for n in chosen])
        mated_files = [(n, f) for n in chosen for f in people[n][1:]]
        results.append(open_set(fusion, gallery, np.array([ids[n] for n in chosen]),
                                embeddings.rows([f for _, f in mated_files]),
                                np.array([ids[n] for n, _ in mated_files]),
                                embeddings.rows([f for n in others for f in people[n]])))
    return float(np.mean([r[0] for r in results])), float(np.mean([r[1] for r in results]))


def relative_people(root: Path) -> dict[str, list[str]]:
    return {n: [p.relative_to(root).as_posix() for p in paths] for n, paths in dataset_people(root).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/edgeface-fusion"))
    parser.add_argument("--sface-models", type=Path, default=None,
                        help="folder with the SFace model files and their manifest (default: edgeface's models/)")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--only", choices=["celeba", "lfw"], default=None, help="analyse one dataset only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.cache.mkdir(parents=True, exist_ok=True)

    sets = {}
    for name in ("celeba", "lfw"):
        if args.only and name != args.only:
            continue
        data = args.data / name
        root = data / "images"
        people = relative_people(root)
        files = [f for images in people.values() for f in images]
        tables = analyse(root, files, args.cache, name, args.sface_models)
        sets[name] = (data, people, chosen_embeddings(tables, data, files), tables["dlib"].seconds_per_image)
    if args.only:
        return

    lfw_data, lfw_people, lfw, lfw_seconds = sets["lfw"]
    celeba_data, celeba_people, celeba, _ = sets["celeba"]
    dev_pairs = read_lfw_pairs(lfw_data / "pairsDevTrain.txt")
    celeba_pairs = read_lfw_pairs(celeba_data / "pairs.txt")
    lfw_pairs = read_lfw_pairs(lfw_data / "pairs.txt")
    dev_files = sorted({p.first for p in dev_pairs} | {p.second for p in dev_pairs})
    fitting = [all_pairs(celeba, celeba.files), all_pairs(lfw, dev_files)]
    print(f"fitting sets: every pair of the CelebA images ({len(fitting[0][1])} pairs, {fitting[0][1].sum()} "
          f"same person) and of the LFW View 1 pairsDevTrain images ({len(fitting[1][1])}, {fitting[1][1].sum()})")
    print(f"analysis: {1000 * lfw_seconds:.0f} ms per LFW image (detect, refine, dlib, SFace FP32 and INT8)")
    systems: dict[str, Fusion] = {"dlib": single("dlib"), "sface_fp32": single("sface_fp32"),
                                  "sface_int8": single("sface_int8")}
    for sface in ("sface_fp32", "sface_int8"):
        fusion, curve = fit_fusion(fitting, sface)
        systems[f"fused_{sface}"] = fusion
        print(f"\nfit ({sface}): impostor cosine mean/sd dlib {fusion.mean['dlib']:.4f}/{fusion.sd['dlib']:.4f}, "
              f"{sface} {fusion.mean[sface]:.4f}/{fusion.sd[sface]:.4f}; weight on dlib {fusion.weight_dlib:.2f}")
        print("  w: " + " ".join(f"{w:.2f}:{tar:.3f}" for w, tar in curve[::2])
              + f"  (mean TAR at FAR {FIT_FAR:g} over the fitting sets)")
        impostor = np.concatenate([fusion.score(s)[~same] for s, same in fitting])
        print("  fused-score thresholds on the fitting impostors: "
              + ", ".join(f"FAR {far:g}: {np.quantile(impostor, 1 - far):.2f}" for far in (1e-2, 1e-3, 1e-4)))

    print("\n| system | LFW View 2 acc | LFW TAR@1% | CelebA acc | CelebA TAR@1% | LFW open-set rank-1 | "
          "LFW DIR@1% | CelebA rank-1 | CelebA DIR@1% |")
    print("|---|---|---|---|---|---|---|---|---|")
    lfw_sims = pair_similarities(lfw, lfw_pairs)
    celeba_sims = pair_similarities(celeba, celeba_pairs)
    for name, fusion in systems.items():
        lfw_acc, lfw_tar = verification(fusion, lfw_sims, lfw_pairs)
        celeba_acc, celeba_tar = verification(fusion, celeba_sims, celeba_pairs)
        lfw_rank1, lfw_dir = lfw_open_set(lfw, lfw_people, fusion)
        celeba_rank1, celeba_dir = half_split_open_set(celeba, celeba_people, fusion, args.seeds)
        label = name if not name.startswith("fused") else f"{name} (w={fusion.weight_dlib:.2f})"
        print(f"| {label} | {lfw_acc:.4f} | {lfw_tar:.3f} | {celeba_acc:.4f} | {celeba_tar:.3f} | {lfw_rank1:.3f} | "
              f"{lfw_dir:.3f} | {celeba_rank1:.3f} | {celeba_dir:.3f} |")

    print("\nDIR@1% against the weight on dlib (fused with SFace FP32; the fitted statistics):")
    base = systems["fused_sface_fp32"]
    for w in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        fusion = Fusion(base.sface, w, base.mean, base.sd)
        print(f"  w={w:.1f}: LFW {lfw_open_set(lfw, lfw_people, fusion)[1]:.3f}  "
              f"CelebA {half_split_open_set(celeba, celeba_people, fusion, args.seeds)[1]:.3f}")
    faces = {name: int((~np.isnan(e.vectors['dlib']).any(axis=1)).sum()) for name, e in (("lfw", lfw), ("celeba", celeba))}
    print(f"\nfaces found: LFW {faces['lfw']}/{len(lfw.files)}, CelebA {faces['celeba']}/{len(celeba.files)}")


if __name__ == "__main__":
    main()
