"""Gallery matching with the second opinion (SFace) fused in (edgeface.recognition.fusion).

dlib's distances over the whole gallery come first, as `Gallery.match` computes them. A probe whose
answer is not clear-cut (`auto`) or every probe (`always`) is embedded by SFace (lazily: the caller
hands a function that embeds the rows asked for), and its `SECOND_OPINION_CANDIDATES` nearest
identities by dlib are scored by the fused distance against the mean of their SFace templates. The
answer is then the nearest of them by fused distance below its threshold (the gallery's, tightened by
template count as dlib's is), unless a negative ("this was not NAME") is at least as near as NAME's
own templates (dlib distances, as `GallerySnapshot.match`). Identities without SFace templates (enrolled
before this change) keep their dlib distance, so a dlib-only gallery is matched as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from edgeface.recognition.fusion import Band, SecondOpinion, rank_with_second_opinion
from edgeface.recognition.vectors import pairwise_distances, unit_rows
from edgeface.storage.gallery import Gallery, GallerySnapshot, Match

SecondEmbed = Callable[[np.ndarray], np.ndarray]
"""Row indices of the probes -> their (r, 128) unit SFace embeddings."""


def _vetoed(snapshot: GallerySnapshot, probe: np.ndarray, k: int) -> bool:
    _, templates, negatives = snapshot.identity_rows(snapshot.names[k])
    if not len(negatives):
        return False
    return bool(pairwise_distances(probe[None], negatives).min() <= pairwise_distances(probe[None], templates).min())


def _nearest_template(snapshot: GallerySnapshot, probe: np.ndarray, k: int) -> int:
    ids, templates, _ = snapshot.identity_rows(snapshot.names[k])
    return int(ids[int(np.argmin(pairwise_distances(probe[None], templates)[0]))])


def match_with_second_opinion(gallery: Gallery, embeddings: np.ndarray, max_distance: float, mode: SecondOpinion,
                              model_id: str, second: SecondEmbed, band: Band | None = None) -> tuple[list[Match], np.ndarray]:
    """(one Match per row, which rows had the second opinion). Distances of fused answers are on dlib's
    scale (fusion.equivalent_distance)."""
    matches = gallery.match(embeddings, max_distance)
    asked = np.zeros(len(matches), bool)
    if mode == "off" or not matches:
        return matches, asked
    band = band or Band(max_distance)
    nearest = np.array([m.distance for m in matches])
    runner_up = np.array([m.runner_up_distance for m in matches])
    wanted = np.ones(len(matches), bool) if mode == "always" else band.needs_second_opinion(nearest, runner_up)
    if not wanted.any():  # clear-cut: the SFace templates are not even read
        return matches, asked
    snapshot = gallery.snapshot()
    means = gallery.second_means(model_id)
    if len(snapshot) == 0 or means.snapshot is not snapshot or means.identities_with == 0:
        return matches, asked
    asked = wanted
    rows = np.flatnonzero(asked)
    probes = unit_rows(embeddings)[rows]
    second_probes = np.asarray(second(rows), np.float32)
    dlib = snapshot.distances(probes, gallery.strategy)

    def cosines(r: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        rows = means.means[candidates].astype(np.float32)  # (r, k, 128): only the candidates' templates
        return np.einsum("rkd,rd->rk", rows, second_probes[r])  # NaN where an identity has no SFace template

    ranked = rank_with_second_opinion(dlib, cosines, "always", band)
    limits = snapshot.limits(max_distance, gallery.strategy)
    out = list(matches)
    for j, row in enumerate(rows.tolist()):
        order = [ranked.nearest[j], ranked.runner_up[j]]
        distances = [ranked.distance[j], ranked.runner_up_distance[j]]
        answer = None
        vetoed = False
        for k, d in zip(order, distances):
            if k < 0 or not d < limits[k]:
                continue
            if _vetoed(snapshot, probes[j], int(k)):
                vetoed = True
                continue
            answer = int(k)
            break
        best = int(ranked.nearest[j])
        name = None if answer is None else snapshot.names[answer]
        chosen = best if answer is None else answer
        other = int(ranked.runner_up[j]) if chosen == best else best
        other_distance = float(ranked.runner_up_distance[j] if chosen == best else ranked.distance[j])
        out[row] = Match(name, float(ranked.distance[j] if chosen == best else ranked.runner_up_distance[j]),
                         snapshot.names[best], None if answer is None else _nearest_template(snapshot, probes[j], answer),
                         vetoed, None if other < 0 else snapshot.names[other], math.inf if other < 0 else other_distance)
    return out, asked
