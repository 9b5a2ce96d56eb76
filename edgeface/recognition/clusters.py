"""Online clustering of unknown faces: stable `unknown-<n>` ids that a person can later name.

Input: one aggregated unit embedding per unknown *track* (not per frame), with its quality and time.

Algorithm (measured with `edgeface eval cluster`; see DEFAULT_ASSIGN_MAX_DISTANCE): incremental
average linkage on squared euclidean distance, less a share of the clusters' own spread. A cluster is
kept as the *sum* S and count n of its members' unit vectors; for unit vectors the mean squared
distance from x to every member is exactly 2 - 2 x.(S/n), and between two clusters
2 - 2 (S_a/n_a).(S_b/n_b). Each cluster's spread (mean squared distance of its members to their
mean) is 1 - |S/n|^2, and the linkage used is that mean squared distance minus `spread_discount`
times the two spreads (0: plain average linkage, which counts a spread-out cluster's spread against
every newcomer; 1: centroid linkage). So one matrix of means (a numpy (clusters, 128) float32 array)
and one vector of spreads answer both questions with one matrix-vector product each:

1. assign x to the cluster with the smallest linkage if it is below `assign_max_distance` squared,
   else open a new cluster;
2. the merge pass: the updated cluster then absorbs every cluster whose linkage to it fell below the
   same threshold (repeated until none is left). This repairs early splits as clusters grow, which is
   what makes the result nearly independent of arrival order. A merge keeps the older (smaller) id
   and reports both.

With `clusters.fused` (the default), each cluster also keeps the sum of its members' SFace unit
embeddings, and the linkage between a track (or cluster) and a cluster that both have SFace is the
fused score of edgeface.recognition.fusion: dlib's linkage above taken as a cosine and SFace's mean
cosine to the members, combined as z-scores and put back on dlib's cosine scale, so the one threshold
applies (`_fuse`). Either side without SFace: dlib's linkage. Measured with `edgeface eval cluster
--embedder dlib|fused` (3 seeds): LFW online BCubed F 0.942 -> 0.974, CelebA 0.922 -> 0.951.

Cannot-links: two tracks that were on one frame together are two people. The camera loop passes,
with each unknown track, the keys of the tracks seen with it (`apart_from`) and the names those were
recognised as (`not_names`). The track never joins the clusters of those tracks, the clusters are
marked apart (`ClusterState.apart`, persisted) and no merge ever joins them (a manual merge needs
force). When a cluster is named, the clusters apart from it become apart from that person
(`not_names`), and naming a cluster after a person it is apart from, after a person one of its faces
was reported not to be (`reject`: a gallery negative), or after an enrolled person it does not resemble
(median distance to their nearest template above `name_max_distance`) needs force.

Cost: one update is two (clusters x 128) products (assignment, then the merge pass), ~0.5 ms median at
10,000 clusters on this 2-core board (`edgeface eval cluster`), computed without BLAS threads (see
_matvec).

Memory is bounded: a cluster keeps at most `max_exemplars` member embeddings (the most redundant one,
the lower-quality half of the closest pair, is dropped when the cap is exceeded); these become the
gallery templates when the cluster is named. Tentative clusters (seen fewer than `min_observations`
times or from fewer than `min_tracks` tracks) are forgotten `tentative_max_age_s` after they were
last seen; a confirmed cluster stays until named or forgotten (or pushed out by max_clusters). Ids come from a counter that never
goes back: an id is never reused, not even after a cluster is forgotten, merged away or aged out.
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgeface.config import ClusterSettings
from edgeface.errors import EdgefaceError, GalleryError
from edgeface.events import (
    ClusterMergedEvent,
    Event,
    UnknownEvent,
)
from edgeface.recognition import fusion
from edgeface.recognition.vectors import EMBEDDING_DIM, unit_rows

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

DEFAULT_ASSIGN_MAX_DISTANCE = ClusterSettings().assign_max_distance
"""Root-mean-squared euclidean distance (unit vectors; less the spread discount, see the module doc)
from a face to a cluster's members below which it joins the cluster; also the cluster-to-cluster merge
threshold. Measured with `edgeface eval cluster` (3 seeds) on LFW (people with >= 4 images capped at
30 + all 4,069 one-image people as distractors; central face) and CelebA (100 people x 15 whole-scene
photos, no distractors; largest face), with one threshold for both (2026-12-06). Spread discount 0.5,
threshold 0.33: LFW online BCubed F 0.939 (offline average-linkage bound 0.941), CelebA 0.905 with the
"auto" detector's faces (bound 0.926), 0.853 with short range (bound 0.857), 0.912 with
face_recognition's faces (bound 0.940). Plain average linkage (discount 0) at 0.33 over-split CelebA:
0.846 / 0.792 / 0.816, recall 0.74. Grid: discount 0.4-0.6 x threshold 0.32-0.34; the choice held on
the even and the odd half of the people alike (LFW 0.959 / 0.951, CelebA 0.912 / 0.903)."""

DEFAULT_NAME_MAX_DISTANCE = ClusterSettings().name_max_distance
"""Median distance from a cluster's faces to a person's nearest template above which naming the
cluster after that (enrolled) person needs force. Measured: 3 photos as templates, up to 8 others as
the cluster; the right person's median was at most 0.41 (LFW 311 people, CelebA 100, both detectors
and face_recognition), so 0.45 refuses nobody right and refuses any clearly different person (the
nearest look-alike among 100 is below it 86-96% of the time: it is a check against naming the
wrong cluster, not a verifier)."""


SPREAD_CAP = 0.05
"""A cluster's spread counts for the discount up to this much (about a real person's spread on CelebA):
a cluster that grew wide by mixing people must not become ever easier to join. On LFW (3 seeds) the
largest online cluster went from 267 faces to 106 with the cap, at the same BCubed F on CelebA."""

RECENT_TRACKS_KEPT = 1000
"""Track keys remembered with their cluster (for cannot-links of tracks seen at the same time)."""

EXPIRY_CHECK_S = 60.0
"""observe() looks for tentative clusters to age out at most this often (in observation time)."""

CLUSTER_ID_RE = re.compile(r"^unknown-([0-9]{1,9})$")
"""Prefix of the pseudo source hash given to templates that came from a named cluster, so that naming
twice (e.g. after a crash between the gallery write and ours) never adds the same template twice."""

ClusterStatus = Literal["tentative", "confirmed"]


class ClusterError(EdgefaceError):
    """A cluster operation failed; the message says what to do."""


def format_cluster_id(number: int) -> str:
    return f"unknown-{int(number)}"


def parse_cluster_id(text: str) -> int:
    """`unknown-17` -> 17; ClusterError for anything else."""
    match = CLUSTER_ID_RE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ClusterError(f"invalid cluster id {text!r}: cluster ids look like unknown-17 (see `edgeface clusters list`)")
    return int(match.group(1))


def utc_from_epoch(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def to_epoch(when: datetime | float | None) -> float:
    if when is None:
        return datetime.now(timezone.utc).timestamp()
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ClusterError("observation time must be timezone-aware (e.g. datetime.now(timezone.utc))")
        return when.timestamp()
    value = float(when)
    if not math.isfinite(value):
        raise ClusterError(f"observation time must be finite, got {when!r}")
    return value


# -- in-memory clustering ----------------------------------------------------------------------


@dataclass
class Exemplar:
    id: int
    vector: np.ndarray
    quality: float
    ts: float
    crop: bytes | None = None
    """JPEG bytes; held only until written (the store keeps crops on disk, not in memory)."""
    second: SecondExemplar | None = None
    """The exemplar's SFace embedding; like `crop`, held only until written."""


@dataclass(frozen=True)
class SecondExemplar:
    """An exemplar's embedding by the second model (SFace), from the chips of the same faces, with that
    model's id and version: naming the cluster gives the person SFace templates too."""

    model_id: str
    model_version: str
    embedding: np.ndarray


@dataclass
class ClusterState:
    number: int
    first_seen: float
    last_seen: float
    observations: int
    visits: int
    tracks: list[str]
    """Up to min_tracks distinct track keys (enough to decide the status)."""
    confirmed: bool
    exemplars: list[Exemplar] = field(default_factory=list)
    sum: np.ndarray = field(default_factory=lambda: np.zeros(EMBEDDING_DIM, np.float64))
    apart: set[int] = field(default_factory=set)
    """Cannot-links: clusters this one must never join (a track of each was on screen at the same time)."""
    not_names: set[str] = field(default_factory=set)
    """Cannot-links to people: seen together with them, or a cluster it was apart from was named so."""
    ignored: bool = False
    """Marked "not a face / ignore": faces still join it (so the same face is not offered again as a new
    cluster), but it is not shown for naming and its faces get no cluster in events."""
    second_sum: np.ndarray = field(default_factory=lambda: np.zeros(EMBEDDING_DIM, np.float64))
    """Sum of the members' SFace unit embeddings (those that had one: `second_count`)."""
    second_count: int = 0

    @property
    def id(self) -> str:
        return format_cluster_id(self.number)

    @property
    def status(self) -> ClusterStatus:
        return "confirmed" if self.confirmed else "tentative"


@dataclass(frozen=True)
class ClusterInfo:
    """A read-only view of one cluster (for events, `clusters list|show`)."""

    id: str
    status: ClusterStatus
    observations: int
    visits: int
    first_seen: datetime
    last_seen: datetime
    exemplars: int
    ignored: bool = False


def cluster_info(state: ClusterState) -> ClusterInfo:
    return ClusterInfo(state.id, state.status, state.observations, state.visits, utc_from_epoch(state.first_seen),
                       utc_from_epoch(state.last_seen), len(state.exemplars), state.ignored)


@dataclass
class Update:
    """What one observation did. `cluster` is the cluster the face now belongs to (after merges);
    `merged` lists (kept_id, merged_id) in the order they happened."""

    cluster: ClusterInfo
    created: bool
    merged: list[tuple[str, str]]
    expired: list[str]
    changed: set[int] = field(default_factory=set, repr=False)
    removed: set[int] = field(default_factory=set, repr=False)
    dropped_exemplars: list[int] = field(default_factory=list, repr=False)

    def events(self, *, station: str, camera: str, track_id: int, faces_used: int) -> list[Event]:
        """cluster_merged events (if any) followed by the unknown event of this track."""
        out: list[Event] = [ClusterMergedEvent(station=station, kept_id=k, merged_id=m) for k, m in self.merged]
        out.append(UnknownEvent(station=station, camera=camera, track_id=track_id, faces_used=faces_used,
                                cluster_id=self.cluster.id, cluster_status=self.cluster.status,
                                visit_count=self.cluster.visits, first_seen=self.cluster.first_seen,
                                last_seen=self.cluster.last_seen))
        return out


class OnlineClusters:
    """The clustering itself, in memory and without I/O (ClusterStore persists it).

    Slots of a growing matrix hold the clusters; a removed cluster's row is zeroed (a zero mean can
    never be within the threshold) and the slot is reused."""

    def __init__(self, settings: ClusterSettings | None = None, *, next_number: int = 1, next_exemplar: int = 1,
                 number_block: tuple[int, int] | None = None) -> None:
        self.settings = settings or ClusterSettings()
        self.number_block = number_block
        """[first, end) of the numbers new clusters take (a fleet station's own block, so that two stations
        never give one number to two people); None: any number above the highest seen."""
        self.next_number = max(next_number, number_block[0]) if number_block else next_number
        self.next_exemplar = next_exemplar
        capacity = 64
        self._means = np.zeros((capacity, EMBEDDING_DIM), np.float32)
        self._last_seen = np.full(capacity, np.inf)
        self._confirmed = np.zeros(capacity, bool)
        self._spread = np.zeros(capacity)
        self._second_means = np.zeros((capacity, EMBEDDING_DIM), np.float32)
        self._has_second = np.zeros(capacity, bool)
        self._states: list[ClusterState | None] = [None] * capacity
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._slot: dict[int, int] = {}
        self._top = 0  # rows >= _top were never used
        self._last_expiry = -math.inf
        threshold = self.settings.assign_max_distance
        self._min_similarity = 1.0 - threshold * threshold / 2.0  # rms distance < t  <=>  x.mean > this
        self._half_discount = self.settings.spread_discount / 2.0
        self.recent_tracks: OrderedDict[str, int | str] = OrderedDict()
        """Track key -> the cluster it joined (or the person that cluster was named), for the cannot-links
        of tracks seen later at the same time. Bounded by RECENT_TRACKS_KEPT; not persisted: tracks
        from before a restart never overlap new ones."""
        self._touched: set[int] = set()

    # -- bookkeeping -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, number: int) -> bool:
        return number in self._slot

    def get(self, number: int) -> ClusterState | None:
        slot = self._slot.get(number)
        return None if slot is None else self._states[slot]

    def states(self) -> Iterator[ClusterState]:
        for slot in sorted(self._slot.values(), key=lambda s: self._states[s].number):  # type: ignore[union-attr]
            yield self._states[slot]  # type: ignore[misc]

    def _grow(self) -> None:
        old = len(self._states)
        new = old * 2
        self._means = np.vstack([self._means, np.zeros((old, EMBEDDING_DIM), np.float32)])
        self._last_seen = np.concatenate([self._last_seen, np.full(old, np.inf)])
        self._confirmed = np.concatenate([self._confirmed, np.zeros(old, bool)])
        self._spread = np.concatenate([self._spread, np.zeros(old)])
        self._second_means = np.vstack([self._second_means, np.zeros((old, EMBEDDING_DIM), np.float32)])
        self._has_second = np.concatenate([self._has_second, np.zeros(old, bool)])
        self._states.extend([None] * old)
        self._free.extend(range(new - 1, old - 1, -1))

    def _refresh(self, slot: int) -> None:
        state = self._states[slot]
        assert state is not None
        self._means[slot] = (state.sum / max(state.observations, 1)).astype(np.float32)
        self._last_seen[slot] = state.last_seen
        self._confirmed[slot] = state.confirmed
        self._spread[slot] = min(max(0.0, 1.0 - float(self._means[slot] @ self._means[slot])), SPREAD_CAP)
        self._has_second[slot] = state.second_count > 0
        self._second_means[slot] = (state.second_sum / max(state.second_count, 1)).astype(np.float32)

    def insert(self, state: ClusterState) -> int:
        """Add a cluster as it is (loading from disk)."""
        if state.number in self._slot:
            raise ClusterError(f"{state.id} exists twice")
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._states[slot] = state
        self._slot[state.number] = slot
        self._top = max(self._top, slot + 1)
        self._refresh(slot)
        if self.number_block is None or self.number_block[0] <= state.number < self.number_block[1]:
            self.next_number = max(self.next_number, state.number + 1)
        self.next_exemplar = max([self.next_exemplar] + [e.id + 1 for e in state.exemplars])
        return slot

    def remove(self, number: int, *, named: str | None = None) -> ClusterState:
        """Take a cluster out; the clusters apart from it lose that link (or, when it was `named`, are
        now apart from that person). Those clusters are reported by `take_touched`."""
        slot = self._slot.pop(number)
        state = self._states[slot]
        assert state is not None
        for other in state.apart:
            linked = self.get(other)
            if linked is not None:
                linked.apart.discard(number)
                if named is not None:
                    linked.not_names.add(named)
                self._touched.add(other)
        for key, value in self.recent_tracks.items():
            if value == number and named is not None:
                self.recent_tracks[key] = named
        self._states[slot] = None
        self._means[slot] = 0.0
        self._last_seen[slot] = np.inf
        self._confirmed[slot] = False
        self._spread[slot] = 0.0
        self._second_means[slot] = 0.0
        self._has_second[slot] = False
        self._free.append(slot)
        return state

    def set_ignored(self, number: int, ignored: bool) -> ClusterState:
        """Mark a cluster ignored (confirmed too, so it never expires: an expired one would let the face
        come back as new) or not ignored any more: then its sightings decide its status again, and a
        cluster they never confirmed ages out like any tentative one."""
        state = self.get(number)
        if state is None:
            raise ClusterError(f"no cluster {format_cluster_id(number)}")
        state.ignored = ignored
        state.confirmed = ignored or (state.observations >= self.settings.min_observations
                                      and len(state.tracks) >= self.settings.min_tracks)
        self._refresh(self._slot[number])
        return state

    def take_touched(self) -> set[int]:
        """Clusters whose cannot-links changed as a side effect since the last call (to be written)."""
        touched, self._touched = self._touched, set()
        return {n for n in touched if n in self._slot}

    def _forbidden(self, apart_from: Sequence[str]) -> tuple[set[int], set[str]]:
        """The live clusters and the people that the tracks `apart_from` (keys) joined or were named."""
        clusters: set[int] = set()
        names: set[str] = set()
        for key in apart_from:
            value = self.recent_tracks.get(key)
            if isinstance(value, str):
                names.add(value)
            elif value is not None and value in self._slot:
                clusters.add(value)
        return clusters, names

    def _status_of(self, state: ClusterState) -> bool:
        return state.confirmed or (state.observations >= self.settings.min_observations
                                   and len(state.tracks) >= self.settings.min_tracks)

    # -- exemplars -------------------------------------------------------------------------

    def _cap_exemplars(self, state: ClusterState) -> list[int]:
        """Drop the most redundant exemplars until at most max_exemplars remain; returns dropped ids."""
        dropped = []
        while len(state.exemplars) > self.settings.max_exemplars:
            vectors = np.stack([e.vector for e in state.exemplars])
            similarity = vectors @ vectors.T
            np.fill_diagonal(similarity, -np.inf)
            i, j = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
            a, b = state.exemplars[i], state.exemplars[j]
            victim = i if (a.quality, a.ts) < (b.quality, b.ts) else j
            dropped.append(state.exemplars.pop(int(victim)).id)
        return dropped

    # -- the update ------------------------------------------------------------------------

    def nearest(self, vector: np.ndarray) -> tuple[int | None, float]:
        """(cluster number, rms distance) of the nearest cluster, or (None, inf) when there is none."""
        if not self._slot:
            return None, math.inf
        similarity = _matvec(self._means[:self._top], vector)
        slot = int(np.argmax(similarity))
        state = self._states[slot]
        if state is None:
            return None, math.inf
        return state.number, math.sqrt(max(0.0, 2.0 - 2.0 * float(similarity[slot])))

    def observe(self, embedding: np.ndarray, *, quality: float = 1.0, ts: float, track_key: str,
                crop: bytes | None = None, apart_from: Sequence[str] = (), not_names: Sequence[str] = (),
                second: SecondExemplar | None = None) -> Update:
        """Cluster one unknown track's aggregated embedding (128,) seen at `ts` (epoch seconds).
        apart_from: keys of tracks that were on screen at the same time (their clusters are never
        joined nor merged with this one); not_names: people seen at the same time (this cluster is
        never named after them without force)."""
        vector = _one_unit_vector(embedding)
        second_vector = None if second is None else _one_unit_vector(second.embedding)
        if not 0.0 <= quality <= 1.0 or not math.isfinite(quality):
            raise ClusterError(f"quality must be in [0, 1], got {quality}")
        expired = self.expire(ts) if ts - self._last_expiry >= EXPIRY_CHECK_S or ts < self._last_expiry else []
        changed: set[int] = set()
        removed: set[int] = {parse_cluster_id(gone) for gone in expired}
        dropped: list[int] = []
        created = False
        slot = -1
        forbidden, names = self._forbidden(apart_from)
        names.update(not_names)
        if self._slot:
            score = self._scores(vector, 0.0, second_vector)
            for number in forbidden:
                score[self._slot[number]] = -np.inf
            slot = int(np.argmax(score))
            if not (score[slot] > self._min_similarity and self._states[slot] is not None):
                slot = -1
        if slot < 0:
            while len(self._slot) >= self.settings.max_clusters:
                victim = self._eviction_candidate()
                log.warning("%d live clusters (max_clusters); dropping %s, least recently seen",
                            len(self._slot), format_cluster_id(victim))
                self.remove(victim)
                removed.add(victim)
                expired.append(format_cluster_id(victim))
            number = self.next_number
            if self.number_block is not None and number >= self.number_block[1]:
                raise ClusterError(f"this station's cluster numbers ({self.number_block[0]}-{self.number_block[1] - 1}) are used up")
            self.next_number += 1
            slot = self.insert(ClusterState(number, ts, ts, 0, 0, [], False))
            created = True
        state = self._states[slot]
        assert state is not None
        state.sum = state.sum + vector
        if second_vector is not None:
            state.second_sum = state.second_sum + second_vector
            state.second_count += 1
        state.observations += 1
        if created or ts - state.last_seen >= self.settings.visit_gap_s:
            state.visits += 1
        state.first_seen = min(state.first_seen, ts)
        state.last_seen = max(state.last_seen, ts)
        if track_key not in state.tracks and len(state.tracks) < max(self.settings.min_tracks, 1):
            state.tracks.append(track_key)
        state.exemplars.append(Exemplar(self.next_exemplar, vector, float(quality), ts, crop, second))
        self.next_exemplar += 1
        dropped += self._cap_exemplars(state)
        state.confirmed = self._status_of(state)
        for number in forbidden:
            linked = self.get(number)
            if linked is not None:  # (not pushed out by max_clusters just now)
                state.apart.add(number)
                linked.apart.add(state.number)
                changed.add(number)
        state.not_names.update(names)
        self._refresh(slot)
        changed.add(state.number)
        self.recent_tracks[track_key] = state.number
        self.recent_tracks.move_to_end(track_key)
        while len(self.recent_tracks) > RECENT_TRACKS_KEPT:
            self.recent_tracks.popitem(last=False)
        merged = self._merge_around(state.number, changed, removed, dropped) if len(self._slot) > 1 else []
        final = self.get(merged[-1][0] if merged else state.number)
        assert final is not None
        changed |= self.take_touched()
        return Update(cluster_info(final), created, [(format_cluster_id(k), format_cluster_id(m)) for k, m in merged],
                      expired, changed - removed, removed, dropped)

    def _scores(self, mean: np.ndarray, spread: float, second_mean: np.ndarray | None = None) -> np.ndarray:
        """Per slot, 1 - linkage / 2 against a cluster (or a face: spread 0) with this mean (S/n) and
        spread; a slot joins or merges when its score is above _min_similarity (linkage below t^2).
        With `second_mean` (the SFace mean of the face or cluster) and clusters.fused on, the slots that
        have SFace members score the fused linkage instead (see _fuse)."""
        score = _matvec(self._means[:self._top], mean)
        if self._half_discount:
            score += self._half_discount * (self._spread[:self._top] + spread)
        if self.settings.fused and second_mean is not None:
            known = self._has_second[:self._top]
            if known.any():  # whole rows, no gather: a copy of 10,000 rows costs more than the product
                score = np.where(known, _fuse(score, _matvec(self._second_means[:self._top], second_mean)), score)
        return score

    def _merge_around(self, number: int, changed: set[int], removed: set[int], dropped: list[int]) -> list[tuple[int, int]]:
        """Merge every cluster within the threshold of cluster `number` into it (older id kept), except
        those it is apart from, repeating with the grown cluster. Returns (kept, merged) numbers."""
        merges = []
        while len(self._slot) > 1:
            slot = self._slot[number]
            apart = [self._slot[a] for a in self._states[slot].apart if a in self._slot]  # type: ignore[union-attr]
            score = self._scores(self._means[slot], self._spread[slot],
                                 self._second_means[slot] if self._has_second[slot] else None)
            score[slot] = -np.inf
            score[apart] = -np.inf
            other = int(np.argmax(score))
            if not (score[other] > self._min_similarity and self._states[other] is not None):
                break
            other_number = self._states[other].number  # type: ignore[union-attr]
            kept, gone = min(number, other_number), max(number, other_number)
            if self.number_block is not None:  # numbers of a fleet come from several stations: the older id is kept
                older = min((self._states[slot], self._states[other]),  # type: ignore[union-attr]
                            key=lambda state: (state.first_seen, state.number))  # type: ignore[union-attr]
                kept, gone = older.number, other_number if older.number == number else number  # type: ignore[union-attr]
            dropped += self.merge(kept, gone)
            merges.append((kept, gone))
            changed.add(kept)
            removed.add(gone)
            number = kept
        return merges

    def merge(self, kept: int, gone: int) -> list[int]:
        """Merge cluster `gone` into `kept` (both numbers); returns the dropped exemplar ids."""
        a, b = self.get(kept), self.get(gone)
        if a is None or b is None or kept == gone:
            raise ClusterError(f"cannot merge {format_cluster_id(kept)} and {format_cluster_id(gone)}")
        a.apart.discard(gone)  # a merge the user forced: the two are one now
        b.apart.discard(kept)
        for other in b.apart:
            linked = self.get(other)
            if linked is not None:
                linked.apart.add(kept)
                a.apart.add(other)
        a.not_names |= b.not_names
        a.ignored = a.ignored or b.ignored  # within the threshold of an ignored face: the same face
        self.remove(gone)
        for key, value in self.recent_tracks.items():
            if value == gone:
                self.recent_tracks[key] = kept
        a.sum = a.sum + b.sum
        a.second_sum = a.second_sum + b.second_sum
        a.second_count += b.second_count
        a.observations += b.observations
        a.visits += b.visits
        a.first_seen = min(a.first_seen, b.first_seen)
        a.last_seen = max(a.last_seen, b.last_seen)
        for track in b.tracks:
            if track not in a.tracks and len(a.tracks) < max(self.settings.min_tracks, 1):
                a.tracks.append(track)
        a.exemplars.extend(b.exemplars)
        dropped = self._cap_exemplars(a)
        a.confirmed = a.confirmed or b.confirmed or self._status_of(a)
        self._refresh(self._slot[kept])
        return dropped

    def _eviction_candidate(self) -> int:
        last = np.where(self._confirmed[:self._top], np.inf, self._last_seen[:self._top])
        slot = int(np.argmin(last))
        if not np.isfinite(last[slot]):  # every cluster is confirmed: the least recently seen goes
            slot = int(np.argmin(self._last_seen[:self._top]))
        return self._states[slot].number  # type: ignore[union-attr]

    def expire(self, now: float) -> list[str]:
        """Forget tentative clusters last seen more than tentative_max_age_s before `now`."""
        self._last_expiry = now
        if not self._slot:
            return []
        old = np.flatnonzero(~self._confirmed[:self._top]
                             & (self._last_seen[:self._top] < now - self.settings.tentative_max_age_s))
        gone = []
        for slot in old:
            state = self._states[int(slot)]
            if state is not None:
                self.remove(state.number)
                gone.append(state.id)
        return gone


def _fuse(dlib_cosine: np.ndarray, sface_cosine: np.ndarray) -> np.ndarray:
    """The fused score (edgeface.recognition.fusion) of a dlib linkage score (1 - linkage / 2, a cosine)
    and an SFace mean cosine, back on dlib's cosine scale so that the one threshold applies. Linear
    (fusion.equivalent_distance bends only above cosine 0.98, far from any cluster threshold), so it
    is computed on whole score vectors."""
    raw = (fusion.WEIGHT_DLIB * (dlib_cosine - fusion.DLIB_IMPOSTOR_MEAN) / fusion.DLIB_IMPOSTOR_SD
           + (1 - fusion.WEIGHT_DLIB) * fusion.sface_z(sface_cosine))
    z = fusion.FUSED_SCALE * raw + fusion.FUSED_OFFSET
    return fusion.DLIB_IMPOSTOR_MEAN + z * fusion.DLIB_IMPOSTOR_SD


def _matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """matrix @ vector without BLAS: numpy's own single-threaded loop. A BLAS sgemv on a busy
    2-core board spins up its thread pool for every call and is 5-20x slower (measured: 0.45 ms
    vs 2-7 ms for 10,000 x 128 under load)."""
    return np.einsum("ij,j->i", matrix, vector)


def _one_unit_vector(embedding: np.ndarray) -> np.ndarray:
    try:
        rows = unit_rows(embedding)
    except GalleryError as error:
        raise ClusterError(f"bad embedding: {error}") from None
    if len(rows) != 1:
        raise ClusterError(f"one embedding per observation, got {len(rows)}")
    return rows[0]
