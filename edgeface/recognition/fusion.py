"""The second opinion: dlib's and SFace's similarities fused into one score, on dlib's distance scale.

Each model's cosine similarity becomes a z-score against that model's impostor (different people)
similarities; the fused score is `WEIGHT_DLIB * z_dlib + (1 - WEIGHT_DLIB) * z_sface`, divided by the
fused impostor spread so that it is a z-score itself. Everything downstream (the match threshold
`Config.match_max_distance`, the runner-up margin, the decider's vote, the events' `distance`) stays
in dlib's units: a fused score is handed on as the dlib distance with the same z-score
(`equivalent_distance`). So there is ONE threshold, and a gallery without SFace templates is decided
by dlib alone on the same scale.

The figures below were measured on every pair of the CelebA images and of the LFW View 1
pairsDevTrain images (7,043,663 pairs, 12,653 of one person; default pipeline: detector auto with
keypoint refinement, INT8 dlib with flip, INT8 SFace; each image's labelled face), printed by

    edgeface eval identify --data ../shared/data/celeba --cache /tmp/c.npz   # (and lfw, /tmp/l.npz)
    python tools/measure_second_opinion.py --celeba /tmp/c.npz --lfw /tmp/l.npz --data ../shared/data

(the weight by tools/measure_fusion.py). At the shipped threshold 0.3776 on those pairs: impostors
accepted dlib 0.130%, fused 0.130%; same-person pairs accepted dlib 88.2%, fused 94.2%.

`auto` (recognition.second_opinion) asks SFace only when dlib's answer is not clear-cut: the nearest
identity within `SECOND_OPINION_BAND_BELOW` below / `SECOND_OPINION_BAND_ABOVE` above the threshold,
or a runner-up within `SECOND_OPINION_RUNNER_UP_MARGIN` of a match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

SecondOpinion = Literal["auto", "always", "off"]
SECOND_OPINIONS: tuple[str, ...] = ("auto", "always", "off")

DLIB_IMPOSTOR_MEAN = 0.8394
DLIB_IMPOSTOR_SD = 0.0350
"""dlib's cosine similarity between different people (INT8, flip on): mean and standard deviation."""
SFACE_IMPOSTOR_MEAN = 0.0925
SFACE_IMPOSTOR_SD = 0.0888
"""SFace INT8's cosine similarity between different people."""
WEIGHT_DLIB = 0.55
"""Weight of dlib's z-score in the fused score (fitted: the best mean true-accept rate at 1e-4 false
accepts per comparison over the two fitting sets; CelebA open-set DIR at 1% moved by < 0.02 over 0.5-0.6)."""
FUSED_SCALE = 0.8058
FUSED_OFFSET = 0.5682
"""The fused score `WEIGHT_DLIB * z_dlib + (1 - WEIGHT_DLIB) * z_sface` as a dlib z-score:
`FUSED_SCALE * fused + FUSED_OFFSET` puts the fitting impostors' 1e-3 and 1e-4 false-accept points
where dlib's are, so a fused distance and a dlib distance mean the same false-accept rate per
comparison and the one threshold serves both."""

IMPOSTOR_DISTANCE_AT_FAR: dict[float, tuple[float, float]] = {
    1e-2: (0.4187, 0.4167),
    1e-3: (0.3729, 0.3729),
    1e-4: (0.3331, 0.3332),
    1e-5: (0.2930, 0.2746),
}
"""Per-comparison false-accept rate -> (dlib distance, fused distance) below which that share of the
fitting impostor pairs falls (the two agree by construction at 1e-3 and 1e-4; 1e-5 rests on ~70 pairs).
For the record: the threshold for a false-alarm target is derived from the fused kind of
models/impostor_scores.json (edgeface.recognition.false_alarm.FUSED_KIND: the stricter of its LFW View 1 and CelebA parts)."""

SECOND_OPINION_CANDIDATES = 5
"""The nearest identities by dlib distance whose SFace templates the fused score is computed for."""
SECOND_OPINION_BAND_BELOW = 0.12
SECOND_OPINION_BAND_ABOVE = 0.07
"""dlib distances within this below / above the match threshold are not clear-cut: the 99th percentile
of how much farther the fused distance is than dlib's for the fitting pairs up to 0.15 below the
threshold (0.117), and how much nearer for those up to 0.15 above (0.066). So outside the band the
fused answer would land on dlib's side of the threshold for about 99% of such comparisons.
Measured effect (eval identify, cached faces): CelebA half split DIR at 1% 0.863 (median of 5) as with
`always`, SFace asked for 74% of the probes; LFW (1,680 enrolled) 0.960 as `always`, 84% asked. A
narrower band (0.06 / 0.04): CelebA 0.861, LFW 0.890, 37% / 59% asked."""
SECOND_OPINION_RUNNER_UP_MARGIN = 0.04
"""A match whose runner-up is less than this farther (dlib distance) is not clear-cut either (the
`recognized` event's look-alike flag, pipeline.decision.runner_up_margin, is 0.06: a runner-up 0.04-0.06
behind outside the band is flagged on dlib's distances without asking SFace). Within the band
above it changes little (0 / 0.04 / 0.1: LFW DIR at 1% 0.959 / 0.960 / 0.960)."""


def cosine_from_distance(distance: np.ndarray | float) -> np.ndarray:
    """Cosine similarity of two unit vectors from their euclidean distance."""
    return 1.0 - np.square(np.asarray(distance, np.float64)) / 2.0


def dlib_z(distance: np.ndarray | float) -> np.ndarray:
    return (cosine_from_distance(distance) - DLIB_IMPOSTOR_MEAN) / DLIB_IMPOSTOR_SD


def sface_z(cosine: np.ndarray | float) -> np.ndarray:
    return (np.asarray(cosine, np.float64) - SFACE_IMPOSTOR_MEAN) / SFACE_IMPOSTOR_SD


def fused_z(dlib_distance: np.ndarray | float, sface_cosine: np.ndarray | float) -> np.ndarray:
    """The fused score on dlib's z scale (see FUSED_SCALE)."""
    raw = WEIGHT_DLIB * dlib_z(dlib_distance) + (1 - WEIGHT_DLIB) * sface_z(sface_cosine)
    return FUSED_SCALE * raw + FUSED_OFFSET


EQUIVALENT_LINEAR_UP_TO = 0.98
"""Cosine (dlib distance 0.2) up to which a z-score maps linearly onto dlib's cosine scale; above it
the map bends smoothly towards 1 without reaching it, so very confident fused scores (both models
sure) stay ordered instead of all becoming distance 0. The threshold region (0.3-0.45) is linear."""


def equivalent_distance(z: np.ndarray | float) -> np.ndarray:
    """The dlib distance whose z-score is z: how a fused score is compared with the one threshold."""
    cosine = DLIB_IMPOSTOR_MEAN + np.asarray(z, np.float64) * DLIB_IMPOSTOR_SD
    top = EQUIVALENT_LINEAR_UP_TO
    gap = np.where(cosine > top, (1.0 - top) * np.exp(-(np.maximum(cosine, top) - top) / (1.0 - top)), 1.0 - cosine)
    return np.sqrt(2.0 * np.clip(gap, 0.0, 2.0))  # 1 - cosine kept as such: no rounding to distance 0


def fused_distance(dlib_distance: np.ndarray | float, sface_cosine: np.ndarray | float) -> np.ndarray:
    """dlib distance and SFace cosine -> the fused score as an equivalent dlib distance."""
    return equivalent_distance(fused_z(dlib_distance, sface_cosine))


@dataclass(frozen=True)
class Band:
    """When dlib's answer is not clear-cut, at the match threshold `threshold`."""

    threshold: float
    below: float = SECOND_OPINION_BAND_BELOW
    above: float = SECOND_OPINION_BAND_ABOVE
    runner_up_margin: float = SECOND_OPINION_RUNNER_UP_MARGIN

    def needs_second_opinion(self, nearest: np.ndarray, runner_up: np.ndarray) -> np.ndarray:
        """(n,) bools from each probe's nearest and runner-up dlib distances (inf: none)."""
        nearest = np.asarray(nearest, np.float64)
        runner_up = np.asarray(runner_up, np.float64)
        near_threshold = (nearest > self.threshold - self.below) & (nearest < self.threshold + self.above)
        with np.errstate(invalid="ignore"):  # inf - inf (an empty gallery): NaN, compared as False
            close_runner_up = (nearest < self.threshold) & (runner_up - nearest < self.runner_up_margin)
        return near_threshold | close_runner_up


def rescore(dlib_distances: np.ndarray, sface_cosines: np.ndarray) -> np.ndarray:
    """Fused distances where an SFace cosine is known (finite), dlib's where it is not (NaN: the
    identity has no SFace template, or the probe no SFace embedding)."""
    dlib_distances = np.asarray(dlib_distances, np.float64)
    sface_cosines = np.asarray(sface_cosines, np.float64)
    known = np.isfinite(sface_cosines)
    out = dlib_distances.copy()
    out[known] = fused_distance(dlib_distances[known], sface_cosines[known])
    return out


@dataclass(frozen=True)
class Ranked:
    """Each probe's answer over a gallery of identities: nearest identity and runner-up (index, -1 for
    none) with their distances (fused where the second opinion was asked, dlib's elsewhere)."""

    nearest: np.ndarray
    distance: np.ndarray
    runner_up: np.ndarray
    runner_up_distance: np.ndarray
    asked: np.ndarray
    """Probes whose answer had the second opinion."""


SFaceCosines = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(probe rows (r,), candidate identities (r, k)) -> SFace cosines (r, k); NaN where the probe or the
identity has no SFace embedding."""


def rank_with_second_opinion(dlib_distances: np.ndarray, sface_cosines: SFaceCosines | None,
                             mode: SecondOpinion, band: Band,
                             candidates: int = SECOND_OPINION_CANDIDATES) -> Ranked:
    """dlib distances (n, identities) over the whole gallery, as now; where the mode asks (always, or
    auto and not clear-cut) the `candidates` nearest identities by dlib are scored by the fused
    distance, and the nearest and runner-up are taken among them."""
    d = np.asarray(dlib_distances, np.float64)
    n, g = d.shape
    nearest = np.full(n, -1, np.int64)
    runner_up = np.full(n, -1, np.int64)
    distance = np.full(n, np.inf)
    runner_up_distance = np.full(n, np.inf)
    asked = np.zeros(n, bool)
    if g == 0 or n == 0:
        return Ranked(nearest, distance, runner_up, runner_up_distance, asked)
    k = min(max(candidates, 2), g)
    top = np.argpartition(d, k - 1, axis=1)[:, :k] if k < g else np.tile(np.arange(g), (n, 1))
    top_d = np.take_along_axis(d, top, axis=1)
    order = np.argsort(top_d, axis=1, kind="stable")
    top, top_d = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_d, order, axis=1)
    nearest, distance = top[:, 0].copy(), top_d[:, 0].copy()
    if g > 1:
        runner_up, runner_up_distance = top[:, 1].copy(), top_d[:, 1].copy()
    if mode != "off" and sface_cosines is not None:
        asked = np.ones(n, bool) if mode == "always" else band.needs_second_opinion(distance, runner_up_distance)
        rows = np.flatnonzero(asked)
        if len(rows):
            fused = rescore(top_d[rows], sface_cosines(rows, top[rows]))
            order = np.argsort(fused, axis=1, kind="stable")
            fused_top = np.take_along_axis(top[rows], order, axis=1)
            fused = np.take_along_axis(fused, order, axis=1)
            nearest[rows], distance[rows] = fused_top[:, 0], fused[:, 0]
            if g > 1:
                runner_up[rows], runner_up_distance[rows] = fused_top[:, 1], fused[:, 1]
    return Ranked(nearest, distance, runner_up, runner_up_distance, asked)
