"""The numbers behind edgeface.recognition.fusion: impostor statistics, the fused score's calibration to
dlib's distance scale, and the `auto` band, from the evaluation caches of LFW and CelebA.

Fitting sets (as tools/measure_fusion.py): every pair of the CelebA images and every pair of the LFW
View 1 pairsDevTrain images, each image's labelled face (CelebA: largest, LFW: central), dlib and
SFace embeddings of the same face from `edgeface eval identify --cache FILE` (default config: both).

1. impostor (different people) cosine mean and sd of each model;
2. fused = w z_dlib + (1 - w) z_sface (w = fusion.WEIGHT_DLIB); its impostor scores are mapped to a
   dlib z-score linearly so that the per-comparison false-accept rates 1e-3 and 1e-4 fall at the same
   dlib distance for both (FUSED_SCALE, FUSED_OFFSET): a fused distance and a dlib distance then mean
   the same false-accept rate and the one threshold serves both;
3. the band: for pairs whose dlib distance is within 0.15 of the match threshold, the 99th
   percentile of how far the fused distance moves below / above dlib's (a decision outside the band
   flips for about 1% of the pairs near it).

    python tools/measure_second_opinion.py --celeba /tmp/wt19cache/celeba.npz --lfw /tmp/wt19cache/lfw.npz \
        --data ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edgeface.config import Config
from edgeface.eval.data import FaceTable
from edgeface.eval.verification import read_lfw_pairs
from edgeface.recognition import fusion

FARS = (1e-3, 1e-4)


def all_pairs(table: FaceTable, files: list[str], rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dlib cosines, SFace cosines, same person) over every pair of `files` with a face."""
    dlib = table.pick(rule, files)  # type: ignore[arg-type]
    sface = table.pick(rule, files, second=True)  # type: ignore[arg-type]
    owner = np.array([f.split("/")[0] for f in files])
    found = ~np.isnan(dlib).any(axis=1) & ~np.isnan(sface).any(axis=1)
    dlib, sface, owner = dlib[found], sface[found], owner[found]
    upper = np.triu_indices(len(owner), 1)
    return (dlib @ dlib.T)[upper], (sface @ sface.T)[upper], (owner[:, None] == owner[None, :])[upper]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--celeba", type=Path, required=True, help="eval identify --cache file of ../shared/data/celeba")
    parser.add_argument("--lfw", type=Path, required=True, help="eval identify --cache file of ../shared/data/lfw")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--runner-up-margins", type=float, nargs="+", metavar="M",
                        help="only measure the runner-up flag at these margins, on both open sets")
    args = parser.parse_args()

    celeba = FaceTable.load(args.celeba)
    lfw = FaceTable.load(args.lfw)
    threshold = Config().match_max_distance
    if args.runner_up_margins:
        for margin in args.runner_up_margins:
            for label, table, rule in (("LFW", lfw, "central"), ("CelebA", celeba, "largest")):
                print(f"runner-up flag (within {margin}) on {label}'s open set (first photo of each person with two or more):")
                runner_up_flags(table, rule, threshold, margin)
        return
    dev = read_lfw_pairs(args.data / "lfw" / "pairsDevTrain.txt")
    dev_files = sorted({p.first for p in dev} | {p.second for p in dev})
    sets = [all_pairs(celeba, celeba.files, "largest"), all_pairs(lfw, dev_files, "central")]
    dlib = np.concatenate([s[0] for s in sets])
    sface = np.concatenate([s[1] for s in sets])
    same = np.concatenate([s[2] for s in sets])
    print(f"pairs: {len(same)} ({same.sum()} same person)")
    imp_d, imp_s = dlib[~same], sface[~same]
    print(f"DLIB_IMPOSTOR_MEAN = {imp_d.mean():.4f}\nDLIB_IMPOSTOR_SD = {imp_d.std():.4f}")
    print(f"SFACE_IMPOSTOR_MEAN = {imp_s.mean():.4f}\nSFACE_IMPOSTOR_SD = {imp_s.std():.4f}")
    w = fusion.WEIGHT_DLIB
    z_d = (dlib - fusion.DLIB_IMPOSTOR_MEAN) / fusion.DLIB_IMPOSTOR_SD
    z_s = (sface - fusion.SFACE_IMPOSTOR_MEAN) / fusion.SFACE_IMPOSTOR_SD
    raw = w * z_d + (1 - w) * z_s
    q_d = np.array([np.quantile(z_d[~same], 1 - far) for far in FARS])
    q_f = np.array([np.quantile(raw[~same], 1 - far) for far in FARS])
    scale = (q_d[1] - q_d[0]) / (q_f[1] - q_f[0])
    offset = q_d[0] - scale * q_f[0]
    print(f"dlib z at FAR {FARS}: {np.round(q_d, 3)}; raw fused: {np.round(q_f, 3)}")
    print(f"FUSED_SCALE = {scale:.4f}\nFUSED_OFFSET = {offset:.4f}")

    d = np.sqrt(np.clip(2 - 2 * dlib, 0, 4))
    fused = fusion.fused_distance(d, sface)
    print("IMPOSTOR_DISTANCE_AT_FAR = {  # per-comparison false-accept rate: (dlib distance, fused distance)")
    for far in (1e-2, 1e-3, 1e-4, 1e-5):
        print(f"    {far:g}: ({np.quantile(d[~same], far):.4f}, {np.quantile(fused[~same], far):.4f}),")
    print("}")
    under = (d < threshold) & (d > threshold - 0.15)
    over = (d >= threshold) & (d < threshold + 0.15)
    up = float(np.quantile(fused[under] - d[under], 0.99))
    down = float(np.quantile(d[over] - fused[over], 0.99))
    print(f"pairs up to 0.15 below the threshold {threshold}: {under.sum()}, the fused distance is up to {up:.3f} "
          f"farther; up to 0.15 above: {over.sum()}, up to {down:.3f} nearer (99th percentiles)")
    print(f"SECOND_OPINION_BAND_BELOW = {up:.2f}  (a dlib match this far below the threshold can become unknown)")
    print(f"SECOND_OPINION_BAND_ABOVE = {down:.2f}  (an unknown this far above can become a match)")
    margin = Config().pipeline.decision.runner_up_margin
    print(f"runner-up flag (within {margin}) on LFW's open set, 1,680 people enrolled with one photo:")
    runner_up_flags(lfw, "central", threshold, margin)
    for t in (threshold, 0.34, 0.30):
        flips = (d < t) != (fused < t)
        print(f"  at threshold {t:.3f}: decisions that differ, dlib vs fused: {flips.sum()} of {len(d)} "
              f"(impostors accepted: dlib {(d[~same] < t).mean():.5f}, fused {(fused[~same] < t).mean():.5f}; "
              f"genuine accepted: dlib {(d[same] < t).mean():.4f}, fused {(fused[same] < t).mean():.4f})")





def runner_up_flags(table: FaceTable, rule: str, threshold: float, margin: float) -> None:
    """LFW-style open set (first photo of each person with >= 2 enrolled; their other photos and every
    one-image person's photo as probes): of the probes given a name, how often the name is wrong when
    the runner-up is within `margin` (flagged) and when it is not, dlib alone vs fused (always)."""
    by_person: dict[str, list[str]] = {}
    for name in table.files:
        by_person.setdefault(name.split("/")[0], []).append(name)
    enrolled = sorted(p for p, files in by_person.items() if len(files) >= 2)
    gallery_files = [sorted(by_person[p])[0] for p in enrolled]
    probes = [f for p, files in by_person.items() for f in sorted(files)[(1 if len(files) >= 2 else 0):]]
    truth = np.array([enrolled.index(f.split("/")[0]) if len(by_person[f.split("/")[0]]) >= 2 else -1 for f in probes])
    g_d, g_s = table.pick(rule, gallery_files), table.pick(rule, gallery_files, second=True)  # type: ignore[arg-type]
    p_d, p_s = table.pick(rule, probes), table.pick(rule, probes, second=True)  # type: ignore[arg-type]
    keep = ~np.isnan(p_d).any(axis=1)
    p_d, p_s, truth = p_d[keep], p_s[keep], truth[keep]
    g_d, g_s = np.nan_to_num(g_d), np.nan_to_num(g_s)
    for mode in ("off", "always"):
        who, dist, second, second_dist = [], [], [], []
        for start in range(0, len(p_d), 2048):
            rows = slice(start, start + 2048)
            d = np.sqrt(np.clip(2 - 2 * p_d[rows] @ g_d.T, 0, 4))
            cos = p_s[rows] @ g_s.T
            ranked = fusion.rank_with_second_opinion(d, lambda r, c, cos=cos: np.take_along_axis(cos[r], c, axis=1),
                                                     mode, fusion.Band(threshold))  # type: ignore[arg-type]
            who.append(ranked.nearest)
            dist.append(ranked.distance)
            second.append(ranked.runner_up)
            second_dist.append(ranked.runner_up_distance)
        nearest, distance = np.concatenate(who), np.concatenate(dist)
        runner_gap = np.concatenate(second_dist) - distance
        named = distance < threshold
        wrong = named & (nearest != truth)
        flagged = named & (runner_gap < margin)
        print(f"  {mode:6s}: named {named.sum()} of {len(named)} probes; wrong when flagged "
              f"{wrong[flagged].mean():.3f} ({wrong[flagged].sum()} of {flagged.sum()} flagged), when not flagged "
              f"{wrong[named & ~flagged].mean():.3f} ({wrong[named & ~flagged].sum()} of {(named & ~flagged).sum()}); "
              f"wrong names caught by the flag {wrong[flagged].sum() / max(wrong.sum(), 1):.3f}")


if __name__ == "__main__":
    main()
