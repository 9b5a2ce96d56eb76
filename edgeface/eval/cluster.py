"""`edgeface eval cluster`: how well the online clustering of unknowns groups people, on any
folder-per-person dataset (LFW: `--data ../shared/data/lfw`; CelebA: `--data ../shared/data/celeba`).

Selection: every person with >= `min_images` images (at most `max_per_person`, the first by file
name) plus a distractor stream: every person with exactly one image (`--distractors` caps it, a
fixed random subset). LFW: 610 people with >= 4 images + 4,069 one-image distractors; CelebA: all
100 people (15 photos each), no distractors. Every face of every image is analysed once
(edgeface/eval/data.py, cached with --cache) and the labelled person's face is chosen by `--face`:
the central face on LFW (pre-aligned), the largest elsewhere (whole-scene photos). `--faces FILE`
scores another system's precomputed faces (e.g. face_recognition's, tools/face_recognition_faces.py)
by the same protocol. Images without a face are left out. Each image stands for one unknown *track*.

- online: the selection is streamed in a random order (one per seed) through `OnlineClusters` with
  the configured settings; a face's cluster is its cluster at the end (after merges).
- offline upper bound: average-linkage agglomerative clustering (euclidean, nearest-neighbour chain,
  O(n^2) memory and time) of the same embeddings, cut at the threshold with the best BCubed F
  (an oracle: it looks at the labels).
- BCubed precision/recall/F (Bagga & Baldwin; per item, averaged), pairwise precision/recall/F (over
  same-cluster pairs), clusters found vs true people.
- tentative rule: for N = 1..5, the clusters that would be confirmed (>= N tracks), how many of them
  are spurious (their majority is a one-image person, i.e. nobody who came back), and the share of
  returning people (>= min_images) who own a confirmed cluster.
- speed: one update with 10,000 live clusters, in memory and with the SQLite commit (median, p95).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.config import ClusterSettings
from edgeface.errors import EdgefaceError
from edgeface.eval.data import FaceRule, dataset_faces, dataset_people, default_face_rule, images_root
from edgeface.eval.report import print_figures
from edgeface.recognition import fusion
from edgeface.recognition.clusters import ClusterState, OnlineClusters, SecondExemplar
from edgeface.storage.cluster_store import ClusterStore

DEFAULT_SEEDS = 3
MIN_IMAGES = 4
MAX_PER_PERSON = 30
BENCH_CLUSTERS = 10_000
TENTATIVE_NS = (1, 2, 3, 4, 5)


# -- scores ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f: float
    pairwise_precision: float
    pairwise_recall: float
    pairwise_f: float
    clusters: int
    classes: int


def _f(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def cluster_scores(predicted: np.ndarray | list, truth: np.ndarray | list) -> Scores:
    """BCubed and pairwise precision/recall/F of a clustering against true labels (any hashables).
    Pairwise precision is 1 when no cluster has two members; recall 1 when no class has two."""
    predicted, truth = list(predicted), list(truth)
    if len(predicted) != len(truth) or not truth:
        raise EdgefaceError(f"cluster_scores needs two equally long non-empty labelings, got {len(predicted)} and {len(truth)}")
    joint = Counter(zip(predicted, truth))
    sizes, classes = Counter(predicted), Counter(truth)
    n = len(truth)
    precision = sum(v * v / sizes[c] for (c, _), v in joint.items()) / n
    recall = sum(v * v / classes[t] for (_, t), v in joint.items()) / n
    same = sum(v * (v - 1) / 2 for v in joint.values())
    cluster_pairs = sum(v * (v - 1) / 2 for v in sizes.values())
    class_pairs = sum(v * (v - 1) / 2 for v in classes.values())
    pp = same / cluster_pairs if cluster_pairs else 1.0
    pr = same / class_pairs if class_pairs else 1.0
    return Scores(precision, recall, _f(precision, recall), pp, pr, _f(pp, pr), len(sizes), len(classes))


# -- offline average linkage -------------------------------------------------------------------


def average_linkage(vectors: np.ndarray) -> np.ndarray:
    """Average-linkage (UPGMA) dendrogram of unit rows under euclidean distance, by the
    nearest-neighbour chain algorithm: O(n^2) time and one (n, n) float32 matrix.

    Returns (n - 1, 3) rows (a, b, height) sorted by height: merging the cluster holding item a with
    the one holding item b. Average linkage has no inversions, so applying the rows in order with
    heights <= t gives the clustering cut at t."""
    n = len(vectors)
    if n < 2:
        return np.zeros((0, 3))
    x = np.asarray(vectors, np.float32)
    distance = x @ x.T
    np.multiply(distance, -2.0, out=distance)
    distance += 2.0
    np.clip(distance, 0.0, 4.0, out=distance)
    np.sqrt(distance, out=distance)
    np.fill_diagonal(distance, np.inf)
    size = np.ones(n)
    alive = np.ones(n, bool)
    merges: list[tuple[int, int, float]] = []
    chain: list[int] = []
    start = 0
    while len(merges) < n - 1:
        if not chain:
            while not alive[start]:
                start += 1
            chain.append(start)
        a = chain[-1]
        row = distance[a]
        b = int(np.argmin(row))
        if len(chain) >= 2 and row[chain[-2]] <= row[b]:
            b = chain[-2]  # ties go back down the chain, which guarantees termination
        if len(chain) >= 2 and b == chain[-2]:
            chain.pop()
            chain.pop()
            height = float(row[b])
            merged = (size[a] * distance[a] + size[b] * distance[b]) / (size[a] + size[b])
            merged[a] = merged[b] = np.inf
            distance[b, :] = np.inf
            distance[:, b] = np.inf
            distance[a, :] = merged
            distance[:, a] = merged
            alive[b] = False
            size[a] += size[b]
            merges.append((a, b, height))
        else:
            chain.append(b)
    out = np.array(merges, dtype=np.float64)
    return out[np.argsort(out[:, 2], kind="stable")]


@dataclass(frozen=True)
class CutCurve:
    """Scores after each merge of a dendrogram (row i: after merges[: i + 1])."""

    heights: np.ndarray
    bcubed_precision: np.ndarray
    bcubed_recall: np.ndarray
    pairwise_precision: np.ndarray
    pairwise_recall: np.ndarray
    clusters: np.ndarray

    @property
    def bcubed_f(self) -> np.ndarray:
        p, r = self.bcubed_precision, self.bcubed_recall
        return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)

    @property
    def pairwise_f(self) -> np.ndarray:
        p, r = self.pairwise_precision, self.pairwise_recall
        return np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)


def cut_curve(merges: np.ndarray, truth: np.ndarray | list) -> CutCurve:
    """BCubed and pairwise scores at every cut of a dendrogram, in O(n log n) (small-to-large
    merging of per-cluster label counts)."""
    truth = list(truth)
    n = len(truth)
    classes = Counter(truth)
    parent = list(range(n))
    counts: list[dict | None] = [{t: 1} for t in truth]
    size = [1] * n
    square = [1.0] * n  # sum over labels of count^2, per cluster
    precision_sum, recall_sum = float(n), float(len(classes))
    same_pairs, cluster_pairs = 0.0, 0.0
    class_pairs = sum(v * (v - 1) / 2 for v in classes.values())
    rows = np.zeros((len(merges), 5))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k, (a, b, _) in enumerate(merges):
        a, b = find(int(a)), find(int(b))
        if len(counts[a]) < len(counts[b]):  # type: ignore[arg-type]
            a, b = b, a
        big, small = counts[a], counts[b]
        assert big is not None and small is not None
        cross = recall_gain = 0.0
        for label, v in small.items():
            u = big.get(label, 0)
            if u:
                cross += u * v
                recall_gain += u * v / classes[label]
            big[label] = u + v
        precision_sum += (square[a] + square[b] + 2 * cross) / (size[a] + size[b]) - square[a] / size[a] - square[b] / size[b]
        recall_sum += 2 * recall_gain
        same_pairs += cross
        cluster_pairs += size[a] * size[b]
        square[a] += square[b] + 2 * cross
        size[a] += size[b]
        parent[b] = a
        counts[b] = None
        rows[k] = (precision_sum / n, recall_sum / n, same_pairs / cluster_pairs if cluster_pairs else 1.0,
                   same_pairs / class_pairs if class_pairs else 1.0, n - k - 1)
    return CutCurve(merges[:, 2].copy(), rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4].astype(int))


@dataclass(frozen=True)
class OfflineResult:
    scores: Scores
    threshold: float
    best_pairwise_f: float
    seconds: float


def fused_vectors(dlib: np.ndarray, sface: np.ndarray) -> np.ndarray:
    """Each face's dlib and SFace unit rows concatenated with weights sqrt(w / sd_dlib) and
    sqrt((1 - w) / sd_sface), normalised: the cosine of two such rows is a linear function of the fused
    score of edgeface.recognition.fusion, so average linkage on them is the fused offline bound."""
    a = np.sqrt(fusion.WEIGHT_DLIB / fusion.DLIB_IMPOSTOR_SD)
    b = np.sqrt((1 - fusion.WEIGHT_DLIB) / fusion.SFACE_IMPOSTOR_SD)
    joined = np.concatenate([a * dlib, b * sface], axis=1)
    return (joined / np.linalg.norm(joined, axis=1, keepdims=True)).astype(np.float32)


def offline_best(vectors: np.ndarray, truth: np.ndarray) -> OfflineResult:
    started = time.perf_counter()
    merges = average_linkage(vectors)
    curve = cut_curve(merges, truth)
    f = curve.bcubed_f
    # only the last merge at each height is a valid cut
    valid = np.append(curve.heights[1:] != curve.heights[:-1], True)
    best = int(np.argmax(np.where(valid, f, -1.0)))
    following = curve.heights[best + 1] if best + 1 < len(curve.heights) else curve.heights[best] + 1e-3
    scores = Scores(float(curve.bcubed_precision[best]), float(curve.bcubed_recall[best]), float(f[best]),
                    float(curve.pairwise_precision[best]), float(curve.pairwise_recall[best]),
                    float(curve.pairwise_f[best]), int(curve.clusters[best]), len(set(truth.tolist())))
    threshold = float((curve.heights[best] + following) / 2)
    return OfflineResult(scores, threshold, float(curve.pairwise_f.max()), time.perf_counter() - started)


# -- online ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnlineRun:
    seed: int
    scores: Scores
    announced: Scores
    """The ids as the unknown events announced them (before later merges corrected them)."""
    final: np.ndarray
    """Final cluster number of every item (in selection order)."""
    ms_per_update: float
    merges: int


def run_online(vectors: np.ndarray, truth: np.ndarray, settings: ClusterSettings, seed: int,
               second: np.ndarray | None = None) -> OnlineRun:
    """Stream the selection in a seeded random order, one observation (track) a minute. Ageing and
    the max_clusters cap are switched off: the stream is about grouping, not forgetting."""
    order = np.random.default_rng(seed).permutation(len(vectors))
    settings = settings.model_copy(update={"tentative_max_age_s": 1e12, "max_clusters": max(settings.max_clusters, len(vectors) + 1)})
    clusters = OnlineClusters(settings)
    assigned = np.zeros(len(vectors), np.int64)
    redirect: dict[int, int] = {}
    merges = 0
    started = time.perf_counter()
    for k, i in enumerate(order):
        update = clusters.observe(vectors[i], ts=60.0 * k, track_key=f"t{k}",
                                  second=None if second is None else SecondExemplar("sface", "eval", second[i]))
        assigned[i] = int(update.cluster.id.split("-")[1])
        for kept, gone in update.merged:
            redirect[int(gone.split("-")[1])] = int(kept.split("-")[1])
            merges += 1
    elapsed = time.perf_counter() - started

    def final(number: int) -> int:
        while number in redirect:
            number = redirect[number]
        return number

    result = np.array([final(int(c)) for c in assigned])
    return OnlineRun(seed, cluster_scores(result, truth), cluster_scores(assigned, truth), result,
                     1000 * elapsed / len(vectors), merges)


@dataclass(frozen=True)
class TentativeRule:
    n: int
    confirmed: float
    spurious: float
    returning_people_confirmed: float
    """Share of people with >= min_images who are the majority of a confirmed cluster."""


def tentative_rule(final: np.ndarray, truth: np.ndarray, returning: set, ns: tuple[int, ...] = TENTATIVE_NS) -> list[TentativeRule]:
    """What the `>= N observations from >= 2 tracks` rule would confirm, on the final clusters (each
    item is its own track). Spurious: a confirmed cluster whose majority is not a returning person."""
    members: dict[int, list] = {}
    for c, t in zip(final.tolist(), truth.tolist()):
        members.setdefault(c, []).append(t)
    out = []
    for n in ns:
        confirmed = [m for m in members.values() if len(m) >= max(n, 2 if n > 1 else 1)]
        majority = [Counter(m).most_common(1)[0][0] for m in confirmed]
        spurious = sum(label not in returning for label in majority)
        out.append(TentativeRule(n, len(confirmed), spurious, len(set(majority) & returning) / max(len(returning), 1)))
    return out


# -- speed -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speed:
    clusters: int
    memory_ms_median: float
    memory_ms_p95: float
    persisted_ms_median: float
    persisted_ms_p95: float


def _seeded_states(vectors: np.ndarray, count: int, rng: np.random.Generator,
                   second: np.ndarray | None = None) -> list[ClusterState]:
    """`count` plausible clusters: real embeddings, jittered, 1-5 members each, all confirmed (with the
    same faces' SFace embeddings, jittered, when `second` is given)."""
    chosen = rng.integers(0, len(vectors), count)
    picks = vectors[chosen]
    means = picks + rng.normal(0, 0.03, picks.shape).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    states = []
    for k in range(count):
        members = int(rng.integers(1, 6))
        states.append(ClusterState(k + 1, 0.0, 0.0, members, 1, ["a", "b"], members >= 3, [], means[k].astype(np.float64) * members))
    if second is not None:
        # jittered as much on SFace's scale as the dlib means are on dlib's (0.03 there): copies of one face
        # stay as far apart by the fused distance as by dlib's, instead of merging into each other
        jitter = 0.03 * fusion.SFACE_IMPOSTOR_SD / fusion.DLIB_IMPOSTOR_SD
        jittered = second[chosen] + np.random.default_rng(1).normal(0, jitter, picks.shape).astype(np.float32)
        jittered /= np.linalg.norm(jittered, axis=1, keepdims=True)
        for state, row in zip(states, jittered):
            state.second_sum, state.second_count = row.astype(np.float64) * state.observations, state.observations
    return states


def measure_speed(vectors: np.ndarray, settings: ClusterSettings, clusters: int = BENCH_CLUSTERS,
                  updates: int = 300, persisted_updates: int = 100, second: np.ndarray | None = None) -> Speed:
    """Per-update time with `clusters` live clusters built from real embeddings; the probes are the
    real embeddings themselves (so most join a cluster, the costlier path); with `second` (the same
    faces' SFace rows) and clusters.fused, clusters and probes carry SFace and the fused distance is timed."""
    rng = np.random.default_rng(0)
    settings = settings.model_copy(update={"tentative_max_age_s": 1e12, "max_clusters": 4 * clusters})
    second = second if settings.fused else None
    memory = OnlineClusters(settings)
    for state in _seeded_states(vectors, clusters, rng, second):
        memory.insert(state)
    chosen = rng.integers(0, len(vectors), updates)
    probes = vectors[chosen]

    def sface(i: int) -> SecondExemplar | None:
        return None if second is None else SecondExemplar("sface", "eval", second[chosen[i]])

    times = []
    for k, x in enumerate(probes):
        started = time.perf_counter()
        memory.observe(x, ts=1.0 + k, track_key=f"bench{k}", second=sface(k))
        times.append(time.perf_counter() - started)
    persisted = []
    with tempfile.TemporaryDirectory() as folder, ClusterStore(Path(folder) / "bench.db", settings) as store:
        store._seed_for_benchmark(_seeded_states(vectors, clusters, np.random.default_rng(0), second))
        for k, x in enumerate(probes[:persisted_updates]):
            started = time.perf_counter()
            store.observe(x, ts=1.0 + k, track_key=f"bench{k}", second=sface(k))
            persisted.append(time.perf_counter() - started)
    ms, pms = 1000 * np.array(times), 1000 * np.array(persisted)
    return Speed(clusters, float(np.median(ms)), float(np.percentile(ms, 95)), float(np.median(pms)),
                 float(np.percentile(pms, 95)))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# -- the whole evaluation --------------------------------------------------------------------


def select(people: dict[str, list[Path]], min_images: int = MIN_IMAGES, max_per_person: int = MAX_PER_PERSON,
           distractors: int | None = None) -> tuple[list[Path], list[int], set[int]]:
    """(files, label per file, labels of returning people): people with >= min_images images (the
    first max_per_person) and people with exactly one image (a fixed random subset of `distractors`)."""
    names = sorted(people)
    files: list[Path] = []
    labels: list[int] = []
    returning = set()
    for k, name in enumerate(names):
        if len(people[name]) >= min_images:
            chosen = sorted(people[name])[:max_per_person]
            files += chosen
            labels += [k] * len(chosen)
            returning.add(k)
    singles = [k for k, name in enumerate(names) if len(people[name]) == 1]
    if distractors is not None and distractors < len(singles):
        singles = sorted(np.random.default_rng(12345).choice(singles, size=distractors, replace=False).tolist())
    for k in singles:
        files.append(people[names[k]][0])
        labels.append(k)
    if len(returning) < 2:
        raise EdgefaceError(f"the dataset needs at least two people with {min_images} or more images")
    return files, labels, returning


@dataclass
class ClusterReport:
    settings: ClusterSettings
    items: int
    people: int
    returning_people: int
    distractors: int
    without_face: int
    online: list[OnlineRun]
    offline: OfflineResult
    tentative: list[TentativeRule]
    speed: Speed | None
    extra: dict[str, object] = field(default_factory=dict)

    def _mean(self, attribute: str) -> float:
        return float(np.mean([getattr(run.scores, attribute) for run in self.online]))

    def order_agreement(self) -> float | None:
        """Mean BCubed F between the final clusterings of every two stream orders (1 = the order did
        not matter at all); None with one seed."""
        pairs = [cluster_scores(a.final, b.final).bcubed_f for i, a in enumerate(self.online) for b in self.online[i + 1:]]
        return float(np.mean(pairs)) if pairs else None

    def lines(self) -> list[str]:
        s, o = self.settings, self.offline.scores
        f_per_seed = ", ".join(f"{run.scores.bcubed_f:.4f}" for run in self.online)
        f = [run.scores.bcubed_f for run in self.online]
        out = [
            (f"{self.items} faces: {self.returning_people} people with >= {MIN_IMAGES} images (<= {MAX_PER_PERSON} each) "
             f"+ {self.distractors} one-image distractors; {self.without_face} images without a face left out; {self.extra}"),
            (f"online  (threshold {s.assign_max_distance}, spread discount {s.spread_discount}, {len(self.online)} seeds): BCubed P {self._mean('bcubed_precision'):.4f} "
             f"R {self._mean('bcubed_recall'):.4f} F {self._mean('bcubed_f'):.4f} (median {np.median(f):.4f}, range "
             f"{min(f):.4f}-{max(f):.4f}; per seed {f_per_seed}); pairwise P "
             f"{self._mean('pairwise_precision'):.4f} R {self._mean('pairwise_recall'):.4f} F {self._mean('pairwise_f'):.4f}; "
             f"clusters {self._mean('clusters'):.0f} vs {self.people} true; "
             f"{np.mean([r.merges for r in self.online]):.0f} merges, {np.mean([r.ms_per_update for r in self.online]):.3f} ms/update"),
            (f"offline (average linkage, best cut {self.offline.threshold:.4f}): BCubed P {o.bcubed_precision:.4f} "
             f"R {o.bcubed_recall:.4f} F {o.bcubed_f:.4f}; pairwise P {o.pairwise_precision:.4f} R {o.pairwise_recall:.4f} "
             f"F {o.pairwise_f:.4f} (best pairwise F {self.offline.best_pairwise_f:.4f}); clusters {o.clusters} vs {o.classes} true; "
             f"{self.offline.seconds:.1f} s"),
            (f"online F / offline F = {self._mean('bcubed_f') / o.bcubed_f:.4f}; BCubed F of the ids as announced at "
             f"each sighting (before later merges): {np.mean([r.announced.bcubed_f for r in self.online]):.4f}; "
             f"agreement between stream orders (BCubed F): {_fmt(self.order_agreement())}"),
        ]
        for rule in self.tentative:
            out.append(f"tentative rule N={rule.n}: {rule.confirmed:.0f} confirmed clusters, {rule.spurious:.1f} spurious "
                       f"(majority nobody who came back), {100 * rule.returning_people_confirmed:.1f}% of returning people "
                       "confirmed (mean over seeds)")
        if self.speed:
            sp = self.speed
            out.append(f"update at {sp.clusters} clusters: {sp.memory_ms_median:.3f} ms median ({sp.memory_ms_p95:.3f} p95) "
                       f"in memory; {sp.persisted_ms_median:.3f} ms ({sp.persisted_ms_p95:.3f} p95) with the SQLite commit")
        return out

    def as_dict(self) -> dict[str, object]:
        o = self.offline.scores

        def r4(value: float | np.floating) -> float:
            return round(float(value), 4)

        result: dict[str, object] = {
            "online_f": r4(self._mean("bcubed_f")),
            "online_precision": r4(self._mean("bcubed_precision")),
            "online_recall": r4(self._mean("bcubed_recall")),
            "online_f_per_seed": [r4(run.scores.bcubed_f) for run in self.online],
            "online_f_median": r4(np.median([run.scores.bcubed_f for run in self.online])),
            "online_f_min": r4(min(run.scores.bcubed_f for run in self.online)),
            "online_f_max": r4(max(run.scores.bcubed_f for run in self.online)),
            "online_pairwise_f": r4(self._mean("pairwise_f")),
            "online_clusters": r4(self._mean("clusters")),
            "online_announced_f": r4(np.mean([r.announced.bcubed_f for r in self.online])),
            "order_agreement_f": None if (agreement := self.order_agreement()) is None else r4(agreement),
            "offline_f": r4(o.bcubed_f), "offline_precision": r4(o.bcubed_precision), "offline_recall": r4(o.bcubed_recall),
            "offline_pairwise_f": r4(o.pairwise_f), "offline_best_pairwise_f": r4(self.offline.best_pairwise_f),
            "offline_threshold": r4(self.offline.threshold), "offline_clusters": o.clusters,
            "online_over_offline": r4(self._mean("bcubed_f") / o.bcubed_f if o.bcubed_f else 0.0),
            "true_clusters": self.people, "returning_people": self.returning_people, "distractors": self.distractors,
            "items": self.items, "without_face": self.without_face,
            "threshold": self.settings.assign_max_distance,
            "spread_discount": self.settings.spread_discount,
            "tentative": [{"n": t.n, "confirmed": r4(t.confirmed), "spurious": r4(t.spurious),
                           "returning_people_confirmed": r4(t.returning_people_confirmed)} for t in self.tentative],
            "update_ms_at_10k": None if self.speed is None else r4(self.speed.memory_ms_median),
            "update_ms_at_10k_p95": None if self.speed is None else r4(self.speed.memory_ms_p95),
            "update_persisted_ms_at_10k": None if self.speed is None else r4(self.speed.persisted_ms_median),
            **self.extra,
        }
        return result


def evaluate(vectors: np.ndarray, labels: np.ndarray, returning: set, settings: ClusterSettings,
             seeds: int = DEFAULT_SEEDS, speed: bool = True, without_face: int = 0,
             second: np.ndarray | None = None) -> ClusterReport:
    """Everything but the image analysis: vectors (n, 128) unit rows with their true labels; `second`:
    the same faces' SFace rows (fed to the clusterer; with clusters.fused the offline bound clusters
    the fused vectors, fused_vectors)."""
    if seeds < 1:
        raise EdgefaceError("--seeds must be at least 1")
    if len(vectors) < 2:
        raise EdgefaceError("fewer than two faces to cluster")
    online = [run_online(vectors, labels, settings, seed, second) for seed in range(seeds)]
    rules = [tentative_rule(run.final, labels, returning) for run in online]
    tentative = [TentativeRule(r[0].n, float(np.mean([x.confirmed for x in r])), float(np.mean([x.spurious for x in r])),
                               float(np.mean([x.returning_people_confirmed for x in r]))) for r in zip(*rules)]
    counts = Counter(labels.tolist())
    return ClusterReport(settings, len(vectors), len(counts), sum(1 for k in counts if k in returning),
                         sum(1 for k, v in counts.items() if k not in returning), without_face, online,
                         offline_best(fused_vectors(vectors, second) if settings.fused and second is not None else vectors,
                                      labels), tentative,
                         measure_speed(vectors, settings, second=second) if speed else None)


def run_cluster_evaluation(data: Path, make_analyzer: Callable[[], Any], settings: ClusterSettings, *, seeds: int = DEFAULT_SEEDS,
                           distractors: int | None = None, cache: Path | None = None, cache_key: str = "",
                           faces_file: Path | None = None, face_rule: FaceRule | None = None,
                           progress: bool = True, speed: bool = True, second: bool = False,
                           fused_required: bool = False) -> ClusterReport:
    """The whole evaluation of one dataset: selection, faces (analysed and cached, or read from
    `faces_file`), the labelled face of each image (`face_rule`, default by dataset), scores. With
    clusters.fused and faces without SFace embeddings (e.g. another system's --faces): dlib's distance,
    as the station clusters such tracks, unless `fused_required` (--embedder fused): then an error."""
    root = images_root(data)
    files, labels, returning = select(dataset_people(root), distractors=distractors)
    names = [f.relative_to(root).as_posix() for f in files]
    table = dataset_faces(data, names, faces_file=faces_file, make_analyzer=make_analyzer, key=cache_key, cache=cache,
                          progress=progress, second=second and faces_file is None)
    rule = face_rule or default_face_rule(data)
    vectors = table.pick(rule, names)
    found = ~np.isnan(vectors).any(axis=1)
    second_vectors = None
    if settings.fused and table.second_vectors is None and not fused_required:
        settings = settings.model_copy(update={"fused": False})
    if settings.fused:
        if table.second_vectors is None:
            raise EdgefaceError("--embedder fused needs SFace embeddings: recognition.second_opinion must not be off "
                                "(and --faces files have none)")
        second_vectors = table.pick(rule, names, second=True)[found]
    labels_array = np.array(labels)[found]
    report = evaluate(vectors[found], labels_array, returning & set(labels_array.tolist()), settings, seeds=seeds,
                      speed=speed, without_face=int((~found).sum()), second=second_vectors)
    report.extra.update({"dataset": root.parent.name if root.name == "images" else root.name, "face": rule,
                         "faces": table.key if faces_file is not None else "edgeface"})
    return report


def _run(args: argparse.Namespace) -> int:
    from edgeface.config import load_config
    from edgeface.vision.analyzer import FaceAnalyzer
    from edgeface.vision.sface import SFACE_MODEL_ID

    config = load_config(args.config)
    recognition = config.recognition
    settings = getattr(config, "clusters", None) or ClusterSettings()
    if args.threshold is not None:
        if not 0 < args.threshold <= 2:
            raise EdgefaceError(f"--threshold must be in (0, 2], got {args.threshold}")
        settings = settings.model_copy(update={"assign_max_distance": args.threshold})
    if args.distractors is not None and args.distractors < 0:
        raise EdgefaceError("--distractors must be 0 or more")
    pipeline: dict[str, object] = {"detector": recognition.detector.model, "alignment": recognition.alignment.method,
                                   "precision": recognition.embedder.precision, "flip": recognition.embedder.flip}
    if recognition.second_opinion != "off":
        pipeline["second"] = SFACE_MODEL_ID
    if args.embedder is not None:
        settings = settings.model_copy(update={"fused": args.embedder == "fused"})
    elif recognition.second_opinion == "off":  # the station has no SFace then: dlib's distance
        settings = settings.model_copy(update={"fused": False})
    if args.embedder == "fused" and recognition.second_opinion == "off" and not args.faces:
        raise EdgefaceError("--embedder fused needs SFace embeddings: recognition.second_opinion must not be off")
    report = run_cluster_evaluation(args.data, lambda: FaceAnalyzer.from_config(recognition), settings, seeds=args.seeds,
                                    distractors=args.distractors, cache=args.cache,
                                    cache_key=json.dumps(pipeline, sort_keys=True), faces_file=args.faces,
                                    face_rule=args.face, progress=not args.json, speed=not args.no_speed,
                                    second="second" in pipeline, fused_required=args.embedder == "fused")
    report.extra["embedder"] = "fused" if report.settings.fused else "dlib"
    if args.faces is None:
        report.extra.update(pipeline)
    return print_figures(report.lines(), report.as_dict(), args.json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder with one sub-folder of images per person")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"stream orders (default {DEFAULT_SEEDS})")
    parser.add_argument("--distractors", type=int, help="at most this many one-image people (default: all)")
    parser.add_argument("--threshold", type=float, help="override clusters.assign_max_distance")
    parser.add_argument("--cache", type=Path, help="faces .npz, reused and extended when the settings match")
    parser.add_argument("--faces", type=Path, metavar="FILE",
                        help="score these precomputed faces (.npz, e.g. face_recognition's) instead of analysing")
    parser.add_argument("--face", choices=["largest", "central"],
                        help="which face of an image is the labelled person (default: central on LFW, else largest)")
    parser.add_argument("--embedder", choices=["dlib", "fused"],
                        help="track-to-cluster distance: dlib's, or fused with SFace (default: clusters.fused)")
    parser.add_argument("--no-speed", action="store_true", help="skip the 10,000-cluster timing")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object with the figures")
    parser.add_argument("--config", type=Path, help="YAML or JSON config file (defaults apply without it)")
    parser.set_defaults(handler=_run)
