"""The clusters of a gallery file: `ClusterStore` (SQLite persistence of `OnlineClusters`).

Persistence: `ClusterStore` keeps the clusters in the gallery's SQLite file, in its own tables
(prefix `cluster_`, own schema version in `cluster_schema_version`), one transaction per update,
so a restart or kill -9 loses nothing that was reported. Several processes may share the file: a
process reloads its matrix when another one changed the clusters (PRAGMA data_version + a
generation counter), e.g. `edgeface clusters name` while the camera loop runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeface.config import ClusterSettings
from edgeface.events import (
    ClusterMergedEvent,
    ClusterNamedEvent,
    Event,
    parse_event,
    utc_now,
)
from edgeface.recognition.clusters import (
    ClusterError,
    ClusterInfo,
    ClusterState,
    Exemplar,
    OnlineClusters,
    SecondExemplar,
    Update,
    cluster_info,
    format_cluster_id,
    parse_cluster_id,
    to_epoch,
    utc_from_epoch,
)
from edgeface.recognition.vectors import EMBEDDING_DIM, pairwise_distances
from edgeface.storage.gallery import Gallery, SecondTemplate, validate_name
from edgeface.storage.sqlite import apply_migrations, transaction

if TYPE_CHECKING:
    from edgeface.recognition.decider import ClusterAssignment, UnknownTrack

log = logging.getLogger(__name__)

SOURCE_TAG = "edgeface-cluster-exemplar"

CLUSTER_SCHEMA_VERSION = 5


# -- persistence -------------------------------------------------------------------------------


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE cluster_schema_version (version INTEGER NOT NULL)")
    db.execute("CREATE TABLE cluster_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("CREATE TABLE cluster_clusters (number INTEGER PRIMARY KEY, first_seen REAL NOT NULL,"
               " last_seen REAL NOT NULL, observations INTEGER NOT NULL, visits INTEGER NOT NULL,"
               " tracks TEXT NOT NULL, confirmed INTEGER NOT NULL, sum BLOB NOT NULL)")
    db.execute("CREATE TABLE cluster_exemplars (id INTEGER PRIMARY KEY, number INTEGER NOT NULL,"
               " embedding BLOB NOT NULL, quality REAL NOT NULL, ts REAL NOT NULL, crop BLOB)")
    db.execute("CREATE INDEX cluster_exemplars_by_number ON cluster_exemplars(number)")
    db.execute("CREATE TABLE cluster_history (number INTEGER PRIMARY KEY, fate TEXT NOT NULL,"
               " into_number INTEGER, name TEXT, ts REAL NOT NULL)")
    db.execute("CREATE TABLE cluster_pending_events (id INTEGER PRIMARY KEY, event TEXT NOT NULL)")
    for key in ("next_number", "next_exemplar", "generation"):
        db.execute("INSERT INTO cluster_meta (key, value) VALUES (?, ?)", (key, 1 if key != "generation" else 0))


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Cannot-links: the clusters (numbers) and the people (names) each cluster is apart from."""
    db.execute("ALTER TABLE cluster_clusters ADD COLUMN apart TEXT NOT NULL DEFAULT '[]'")
    db.execute("ALTER TABLE cluster_clusters ADD COLUMN not_names TEXT NOT NULL DEFAULT '[]'")


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """The ignore list: clusters marked "not a face / ignore" (ClusterState.ignored). The face crops of
    gallery templates (a named cluster's exemplars keep theirs; an enrollment photo's face), erased
    with their template (trigger; orphans are also swept with the old crops and never shown)."""
    db.execute("ALTER TABLE cluster_clusters ADD COLUMN ignored INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE TABLE IF NOT EXISTS template_crops (template_id INTEGER PRIMARY KEY, crop BLOB NOT NULL, ts REAL NOT NULL)")
    db.execute("CREATE TRIGGER IF NOT EXISTS template_crops_gone AFTER DELETE ON templates"
               " BEGIN DELETE FROM template_crops WHERE template_id = old.id; END")


def _migrate_3_to_4(db: sqlite3.Connection) -> None:
    """An exemplar's SFace embedding (the second opinion), tagged with the model's id and version, so a
    cluster named a person gives them SFace templates too (NULL for exemplars made before, or with
    recognition.second_opinion off)."""
    db.execute("ALTER TABLE cluster_exemplars ADD COLUMN second_model_id TEXT")
    db.execute("ALTER TABLE cluster_exemplars ADD COLUMN second_model_version TEXT")
    db.execute("ALTER TABLE cluster_exemplars ADD COLUMN second_embedding BLOB")


def _migrate_4_to_5(db: sqlite3.Connection) -> None:
    """Each cluster's running sum and count of its members' SFace embeddings (clusters.fused scores a
    track against it by the fused distance); 0 for clusters made before: dlib's distance for them."""
    db.execute("ALTER TABLE cluster_clusters ADD COLUMN second_sum BLOB")
    db.execute("ALTER TABLE cluster_clusters ADD COLUMN second_count INTEGER NOT NULL DEFAULT 0")


CROP_ERASE_INTERVAL_S = 3600.0
"""How often (in observed time) the camera loop erases crops past their retention."""

CLUSTER_MIGRATIONS = (_migrate_0_to_1, _migrate_1_to_2, _migrate_2_to_3, _migrate_3_to_4, _migrate_4_to_5)


@dataclass(frozen=True)
class StoredExemplar:
    id: int
    quality: float
    ts: datetime
    crop_jpeg: bytes | None


class ClusterStore:
    """The clusters of one gallery file. Thread-safe; several processes may open the same file.

    `observe` is what the camera loop calls for each unknown track; `name`, `merge`, `forget` are
    what `edgeface clusters` and the MQTT commands call."""

    def __init__(self, path: str | Path, settings: ClusterSettings | None = None, *, station: str = "edgeface",
                 create: bool = True, busy_timeout_ms: int = 5000, gallery: Gallery | None = None) -> None:
        """gallery: the caller's open Gallery of the same file (the camera loop's), else one is opened
        (and closed with the store). Either way the gallery schema exists before the cluster tables."""
        self.settings = settings or ClusterSettings()
        self.station = station
        self.path = Path(path)
        self._lock = threading.RLock()
        if gallery is not None and Path(gallery.path).resolve() != self.path.resolve():
            raise ClusterError(f"the gallery {gallery.path} is not the file {self.path}: clusters live in the gallery's file")
        self._own_gallery = gallery is None
        self.gallery = gallery if gallery is not None else Gallery(self.path, create=create, busy_timeout_ms=busy_timeout_ms)
        self._generation = -1
        self._data_version = -1
        self.number_block: tuple[int, int] | None = None
        self.clusters = OnlineClusters(self.settings)
        self._db: sqlite3.Connection | None = None
        self._crops_erased_at = 0.0
        try:
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000, isolation_level=None,
                                       check_same_thread=False)
            # NORMAL in WAL mode: a commit survives a killed process (kill -9); only a power cut can
            # lose the last observations. Clusters are cheap to rebuild; enrollments use FULL.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
            with self._transaction(write=False):
                pass  # loads the clusters
            self.erase_old_crops()
        except (sqlite3.DatabaseError, ClusterError) as error:
            if self._db is not None:
                self._db.close()
            if self._own_gallery:
                self.gallery.close()
            if isinstance(error, ClusterError):
                raise
            raise ClusterError(f"cannot open clusters in {self.path}: {error}") from None

    # -- plumbing --------------------------------------------------------------------------

    def _migrate(self) -> None:
        with transaction(self._conn) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = 0
            if "cluster_schema_version" in tables:
                version = int(db.execute("SELECT MAX(version) FROM cluster_schema_version").fetchone()[0] or 0)
            if version > CLUSTER_SCHEMA_VERSION:
                raise ClusterError(f"{self.path}: clusters schema version {version} was written by a newer edgeface "
                                   f"(this one reads up to {CLUSTER_SCHEMA_VERSION}); upgrade edgeface")
            apply_migrations(db, "cluster_schema_version", version, CLUSTER_MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._own_gallery:
                self.gallery.close()

    def __enter__(self) -> ClusterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    def _meta(self, key: str) -> int:
        return int(self._conn.execute("SELECT value FROM cluster_meta WHERE key = ?", (key,)).fetchone()[0])

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE, bring the in-memory clusters up to date with the file, run, write the
        generation and counters, COMMIT. On any failure the memory is reloaded from the file."""
        with self._lock:
            db = self._conn
            try:
                try:
                    with transaction(db, write):
                        version = int(db.execute("PRAGMA data_version").fetchone()[0])
                        if version != self._data_version:
                            generation = self._meta("generation")
                            if generation != self._generation:
                                self._load(db)
                                self._generation = generation
                            self._data_version = version
                        yield db
                        if write:
                            self._generation += 1
                            db.executemany("UPDATE cluster_meta SET value = ? WHERE key = ?",
                                           [(self._generation, "generation"), (self.clusters.next_number, "next_number"),
                                            (self.clusters.next_exemplar, "next_exemplar")])
                except BaseException:
                    self._generation = -1  # memory may be ahead of the file: reload next time
                    self._data_version = -1
                    raise
            except sqlite3.OperationalError as error:
                if "locked" in str(error) or "busy" in str(error):
                    raise ClusterError(f"{self.path} is busy: another process held it too long; try again") from None
                raise ClusterError(f"clusters in {self.path}: {error}") from None
            except sqlite3.DatabaseError as error:
                raise ClusterError(f"clusters in {self.path} are damaged ({error})") from None

    def _load(self, db: sqlite3.Connection) -> None:
        clusters = OnlineClusters(self.settings, next_number=self._meta("next_number"),
                                  next_exemplar=self._meta("next_exemplar"), number_block=self.number_block)
        exemplars: dict[int, list[Exemplar]] = {}
        for eid, number, blob, quality, ts in db.execute(
                "SELECT id, number, embedding, quality, ts FROM cluster_exemplars ORDER BY id"):
            exemplars.setdefault(number, []).append(Exemplar(eid, _vector(blob), quality, ts))
        for (number, first, last, observations, visits, tracks, confirmed, blob, apart, not_names, ignored, second_blob,
             second_count) in db.execute(
                "SELECT number, first_seen, last_seen, observations, visits, tracks, confirmed, sum, apart, not_names,"
                " ignored, second_sum, second_count FROM cluster_clusters"):
            size = 8 * EMBEDDING_DIM
            if len(blob) != size or (second_blob is not None and len(second_blob) != size) or second_count < 0:
                raise ClusterError(f"{self.path}: cluster {format_cluster_id(number)} is damaged")
            total = np.frombuffer(blob, "<f8").astype(np.float64)
            second_total = (np.zeros(EMBEDDING_DIM) if second_blob is None
                            else np.frombuffer(second_blob, "<f8").astype(np.float64))
            clusters.insert(ClusterState(number, first, last, observations, visits, json.loads(tracks), bool(confirmed),
                                         exemplars.get(number, []), total, set(json.loads(apart)),
                                         set(json.loads(not_names)), bool(ignored), second_total, int(second_count)))
        clusters.recent_tracks = self._resolve_tracks(db, clusters)
        self.clusters = clusters

    def _resolve_tracks(self, db: sqlite3.Connection, clusters: OnlineClusters) -> OrderedDict[str, int | str]:
        """The recent tracks' clusters after another process changed the file: a cluster merged away
        becomes the one it went into, a named one its person; a forgotten one is dropped."""
        resolved: OrderedDict[str, int | str] = OrderedDict()
        for key, value in self.clusters.recent_tracks.items():
            for _ in range(1000):
                if isinstance(value, str) or value in clusters:
                    resolved[key] = value
                    break
                row = db.execute("SELECT fate, into_number, name FROM cluster_history WHERE number = ?", (value,)).fetchone()
                if row is None or row[0] not in ("merged", "named"):
                    break
                value = row[1] if row[0] == "merged" else row[2]
        return resolved
        log.debug("clusters of %s loaded: %d", self.path, len(clusters))

    def _write(self, db: sqlite3.Connection, changed: set[int], removed: set[int], dropped: Sequence[int]) -> None:
        changed = changed | self.clusters.take_touched()
        if dropped:
            db.executemany("DELETE FROM cluster_exemplars WHERE id = ?", [(i,) for i in dropped])
        for number in changed:
            state = self.clusters.get(number)
            if state is None:
                continue
            db.execute("INSERT OR REPLACE INTO cluster_clusters (number, first_seen, last_seen, observations, visits,"
                       " tracks, confirmed, sum, apart, not_names, ignored, second_sum, second_count)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (number, state.first_seen, state.last_seen, state.observations, state.visits,
                        json.dumps(state.tracks), int(state.confirmed), np.asarray(state.sum, "<f8").tobytes(),
                        json.dumps(sorted(state.apart)), json.dumps(sorted(state.not_names)), int(state.ignored),
                        np.asarray(state.second_sum, "<f8").tobytes() if state.second_count else None,
                        state.second_count))
            for e in state.exemplars:
                if state.ignored:
                    e.crop = None  # an ignored face is not kept
                second = e.second
                db.execute("INSERT INTO cluster_exemplars (id, number, embedding, quality, ts, crop, second_model_id,"
                           " second_model_version, second_embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                           " ON CONFLICT(id) DO UPDATE SET number = excluded.number",
                           (e.id, number, np.asarray(e.vector, "<f4").tobytes(), e.quality, e.ts, e.crop,
                            None if second is None else second.model_id, None if second is None else second.model_version,
                            None if second is None else np.asarray(second.embedding, "<f4").tobytes()))
                e.crop = None
                e.second = None
            if state.ignored:
                db.execute("UPDATE cluster_exemplars SET crop = NULL WHERE number = ? AND crop IS NOT NULL", (number,))
        for number in removed:  # after the upserts: a merged cluster's exemplars now belong to the kept one
            db.execute("DELETE FROM cluster_clusters WHERE number = ?", (number,))
            db.execute("DELETE FROM cluster_exemplars WHERE number = ?", (number,))

    def _history(self, db: sqlite3.Connection, number: int, fate: str, into: int | None = None,
                 name: str | None = None, ts: float | None = None) -> None:
        db.execute("INSERT OR REPLACE INTO cluster_history (number, fate, into_number, name, ts) VALUES (?, ?, ?, ?, ?)",
                   (number, fate, into, name, to_epoch(ts)))

    def _queue(self, db: sqlite3.Connection, event: Event) -> None:
        db.execute("INSERT INTO cluster_pending_events (event) VALUES (?)", (event.to_json(),))

    # -- the camera loop -------------------------------------------------------------------

    def observe(self, embedding: np.ndarray, *, quality: float = 1.0, ts: datetime | float | None = None,
                track_key: str, crop: np.ndarray | None = None, apart_from: Sequence[str] = (),
                not_names: Sequence[str] = (), second: SecondExemplar | None = None) -> Update:
        """Cluster one unknown track: its aggregated unit embedding (128,), quality in [0, 1], time
        (aware datetime or epoch seconds; default now), a key unique per track (e.g. "cam1:42:<start>"),
        and optionally its best aligned face chip (uint8 BGR), kept only when store_face_crops is on.
        apart_from: keys of the tracks on screen at the same time; not_names: people recognised on
        screen at the same time (cannot-links, see OnlineClusters.observe); second: the track's SFace
        embedding, stored with its exemplar and given to the person's templates when it is named.
        Committed before it returns. Turn the result into events with `update.events(...)`."""
        when = to_epoch(ts)
        jpeg = _encode_crop(crop) if crop is not None and self.settings.store_face_crops else None
        with self._transaction() as db:
            update = self.clusters.observe(embedding, quality=quality, ts=when, track_key=str(track_key), crop=jpeg,
                                           apart_from=[str(k) for k in apart_from], not_names=list(not_names),
                                           second=_checked_second(second))
            self._write(db, update.changed, update.removed, update.dropped_exemplars)
            for kept, gone in update.merged:
                self._history(db, parse_cluster_id(gone), "merged", parse_cluster_id(kept), ts=when)
            for gone in update.expired:
                self._history(db, parse_cluster_id(gone), "expired", ts=when)
        if when - self._crops_erased_at >= CROP_ERASE_INTERVAL_S:
            self.erase_old_crops(when)
        return update

    def erase_old_crops(self, now: datetime | float | None = None) -> int:
        """Erase the face crops older than clusters.crop_retention_days, of clusters and of templates (the
        clusters, templates and embeddings stay); returns how many were erased."""
        when = to_epoch(now)
        self._crops_erased_at = when
        cutoff = when - self.settings.crop_retention_days * 86400.0
        with self._transaction() as db:
            erased = db.execute("DELETE FROM template_crops WHERE ts < ? OR template_id NOT IN (SELECT id FROM templates)",
                                (cutoff,)).rowcount
            erased += db.execute("UPDATE cluster_exemplars SET crop = NULL WHERE crop IS NOT NULL AND ts < ?",
                                 (cutoff,)).rowcount
            if not self.settings.store_face_crops:  # turned off: the SFace chips kept for `gallery upgrade` go too
                erased += db.execute("DELETE FROM template_chips").rowcount
        if erased:
            log.info("erased %d face crop%s older than %g days", erased, "" if erased == 1 else "s",
                     self.settings.crop_retention_days)
        return erased

    def _seed_for_benchmark(self, states: Sequence[ClusterState]) -> None:
        """Add ready-made clusters in one transaction (for timing at scale; not for production)."""
        with self._transaction() as db:
            for state in states:
                self.clusters.insert(state)
            self._write(db, {s.number for s in states}, set(), [])

    def take_events(self) -> list[Event]:
        """Events queued by other processes (`edgeface clusters name|merge|forget`), removed from
        the queue as they are returned: publish them through the sink. Cheap when there are none
        (one read, no write lock), so it can be called every second.

        A queued event records a change made to this gallery file from outside the station; the
        station serving the file announces it as its own event: under this store's station id (not
        the id in the shell's config, which may be another station's or the default) and stamped now
        (when the station learns of it, so its events stay in ts order); the id is kept."""
        with self._lock:
            try:
                if self._conn.execute("SELECT 1 FROM cluster_pending_events LIMIT 1").fetchone() is None:
                    return []
            except sqlite3.Error as error:
                raise ClusterError(f"clusters in {self.path}: {error}") from None
        with self._transaction() as db:
            rows = db.execute("SELECT id, event FROM cluster_pending_events ORDER BY id").fetchall()
            if rows:
                db.execute("DELETE FROM cluster_pending_events WHERE id <= ?", (rows[-1][0],))
        if rows:
            log.info("announcing %d cluster change(s) made from outside the station", len(rows))
        now = utc_now()
        return [parse_event(text).model_copy(update={"station": self.station, "ts": now}) for _, text in rows]

    def expire(self, now: datetime | float | None = None) -> list[str]:
        """Forget tentative clusters not seen for tentative_max_age_s (observe does it too)."""
        when = to_epoch(now)
        with self._transaction() as db:
            gone = self.clusters.expire(when)
            numbers = {parse_cluster_id(g) for g in gone}
            self._write(db, set(), numbers, [])
            for number in numbers:
                self._history(db, number, "expired", ts=when)
        return gone

    # -- management ------------------------------------------------------------------------

    def _require(self, db: sqlite3.Connection, cluster_id: str) -> ClusterState:
        number = parse_cluster_id(cluster_id)
        state = self.clusters.get(number)
        if state is not None:
            return state
        row = db.execute("SELECT fate, into_number, name FROM cluster_history WHERE number = ?", (number,)).fetchone()
        where = f"in {self.path}"
        if row is None:
            raise ClusterError(f"no cluster {format_cluster_id(number)} {where}; see `edgeface clusters list`")
        fate, into, name = row
        if fate == "merged":
            final = into
            for _ in range(1000):
                nxt = db.execute("SELECT into_number FROM cluster_history WHERE number = ? AND fate = 'merged'",
                                 (final,)).fetchone()
                if nxt is None:
                    break
                final = nxt[0]
            raise ClusterError(f"{format_cluster_id(number)} was merged into {format_cluster_id(final)}; use that id")
        if fate == "named":
            raise ClusterError(f"{format_cluster_id(number)} was named {name!r}; it is in the gallery now")
        raise ClusterError(f"{format_cluster_id(number)} was {fate} and no longer exists; ids are never reused")

    def list_clusters(self) -> list[ClusterInfo]:
        with self._transaction(write=False):
            return [cluster_info(s) for s in self.clusters.states()]

    def show(self, cluster_id: str) -> tuple[ClusterInfo, list[StoredExemplar]]:
        with self._transaction(write=False) as db:
            state = self._require(db, cluster_id)
            rows = db.execute("SELECT id, quality, ts, crop FROM cluster_exemplars WHERE number = ?"
                              " ORDER BY quality DESC, id", (state.number,)).fetchall()
            return cluster_info(state), [StoredExemplar(r[0], r[1], utc_from_epoch(r[2]), r[3]) for r in rows]

    def name(self, cluster_id: str, name: str, *, force: bool = False, queue_event: bool = False) -> ClusterNamedEvent:
        """Move the cluster's exemplars into the gallery as templates of NAME (new or existing) and
        retire the cluster. Safe to repeat after a crash: templates carry a source hash derived from
        the exemplar, so none is added twice. queue_event: also leave the event for the station
        process (`take_events`), for callers in another process such as the CLI.

        Refused (ClusterError) unless `force`: when the cluster is apart from NAME (seen on screen with
        them, or with a cluster since named so), and, for a person already in the gallery, when the
        cluster does not resemble their templates (`naming_check`)."""
        person = validate_name(name)
        with self._transaction(write=False) as db:
            state = self._require(db, cluster_id)
            exemplars = list(state.exemplars)
            not_names = set(state.not_names)
        if not force:
            reason = self.naming_check(state.id, exemplars, not_names, person)
            if reason:
                raise ClusterError(f"{reason}; not named (to name it anyway: --force, or \"force\": true over MQTT)")
        hashes = [_exemplar_hash(state.number, e) for e in exemplars]
        have = self.gallery.source_hashes()
        conflicting = {have[h] for h in hashes if h in have and have[h] != person}
        if conflicting:
            raise ClusterError(f"{state.id} was already added to the gallery as {min(conflicting)!r}; "
                               "rename that identity instead (`edgeface gallery rename`)")
        todo = [(e, h) for e, h in zip(exemplars, hashes) if h not in have]
        template_ids = []
        if todo:
            seconds = self._second_templates([e.id for e, _ in todo])
            template_ids = self.gallery.add_templates(person, np.stack([e.vector for e, _ in todo]),
                                                      [e.quality for e, _ in todo], [h for _, h in todo], create=True,
                                                      second=seconds)
        event = ClusterNamedEvent(station=self.station, cluster_id=state.id, name=person)
        with self._transaction() as db:
            for (exemplar, _), template_id in zip(todo, template_ids):  # the faces go with their templates
                db.execute("INSERT OR IGNORE INTO template_crops (template_id, crop, ts) SELECT ?, crop, ts"
                           " FROM cluster_exemplars WHERE id = ? AND crop IS NOT NULL", (template_id, exemplar.id))
            if self.clusters.get(state.number) is not None:
                gone = self.clusters.remove(state.number, named=person)
                self._write(db, set(), {gone.number}, [])
                self._history(db, gone.number, "named", name=person)
                if queue_event:
                    self._queue(db, event)
        log.info("%s named %r: %d templates added to the gallery", state.id, person, len(todo))
        return event

    def _second_templates(self, exemplar_ids: Sequence[int]) -> list[SecondTemplate | None]:
        """The exemplars' stored SFace embeddings as templates (tagged as enrollment tags them; no chip:
        `gallery upgrade` asks for a photo of such a template when the model changes)."""
        with self._transaction(write=False) as db:
            found: dict[int, SecondTemplate] = {}
            for eid, model_id, version, blob in db.execute(
                    "SELECT id, second_model_id, second_model_version, second_embedding FROM cluster_exemplars"
                    f" WHERE second_embedding IS NOT NULL AND id IN ({','.join('?' * len(exemplar_ids))})",
                    list(exemplar_ids)):
                found[int(eid)] = SecondTemplate(model_id, version, _vector(blob))
        return [found.get(int(i)) for i in exemplar_ids]

    def naming_check(self, cluster_id: str, exemplars: Sequence[Exemplar], not_names: set[str], person: str) -> str | None:
        """Why the cluster should not be named `person`, or None. Apart from them (seen together);
        holding a face reported as not them (`reject`: one of their negatives is at least as near as
        their nearest template); or, when they are enrolled, its faces' median distance to their
        nearest template above clusters.name_max_distance."""
        if person in not_names:
            return f"{cluster_id} is not {person}: it was on screen at the same time as {person}"
        snapshot = self.gallery.snapshot()
        if person not in snapshot.names or not exemplars:
            return None
        k = snapshot.names.index(person)
        vectors = np.stack([e.vector for e in exemplars])
        by_identity = snapshot.distances(vectors, "min")
        mine = by_identity[:, k]
        negatives = snapshot.negatives[snapshot.negative_owner == k]
        if len(negatives):
            vetoed = pairwise_distances(vectors, negatives).min(axis=1) <= mine
            if vetoed.any():
                return (f"{cluster_id} holds {int(vetoed.sum())} face(s) reported as not {person} "
                        "(`edgeface gallery reject` or the reject command)")
        distance = float(np.median(mine))
        limit = self.settings.name_max_distance
        if distance <= limit:
            return None
        medians = np.median(by_identity, axis=0)
        nearest = int(np.argmin(medians))
        hint = f"; it is nearest {snapshot.names[nearest]} ({medians[nearest]:.2f})" if nearest != k else ""
        return (f"{cluster_id} does not look like {person}: its faces are {distance:.2f} from {person}'s templates "
                f"(the same person is usually below {limit:.2f}){hint}")

    def merge(self, a: str, b: str, *, force: bool = False, queue_event: bool = False) -> ClusterMergedEvent:
        """Merge two clusters (a person says they are one); the older id is kept. Two clusters that
        were on screen at the same time are refused unless `force`."""
        with self._transaction() as db:
            first, second = self._require(db, a), self._require(db, b)
            if first.number == second.number:
                raise ClusterError(f"{a} and {b} are the same cluster")
            if second.number in first.apart and not force:
                raise ClusterError(f"{first.id} and {second.id} were on screen at the same time, so they are two "
                                   "people; not merged (add --force if you are sure)")
            kept, gone = min(first.number, second.number), max(first.number, second.number)
            dropped = self.clusters.merge(kept, gone)
            self._write(db, {kept}, {gone}, dropped)
            self._history(db, gone, "merged", kept)
            event = ClusterMergedEvent(station=self.station, kept_id=format_cluster_id(kept),
                                       merged_id=format_cluster_id(gone))
            if queue_event:
                self._queue(db, event)
        return event

    def forget(self, cluster_id: str) -> str:
        """Delete a cluster with its exemplars and face crops; its id is never reused."""
        with self._transaction() as db:
            state = self._require(db, cluster_id)
            self.clusters.remove(state.number)
            self._write(db, set(), {state.number}, [])
            self._history(db, state.number, "forgotten")
        return state.id

    def ignore(self, cluster_id: str, ignored: bool = True) -> str:
        """Put a cluster on the ignore list ("not a face / ignore"), or take it off. Unlike `forget`,
        the cluster stays, without its face crops: the same face joins it again and is not offered
        as a new unknown person (`ClusterStage` gives its tracks no cluster)."""
        with self._transaction() as db:
            state = self._require(db, cluster_id)
            self.clusters.set_ignored(state.number, ignored)
            self._write(db, {state.number}, set(), [])
        return state.id

    def add_template_crop(self, template_id: int, chip: np.ndarray, ts: datetime | float | None = None) -> bool:
        """Keep the face a template was made from (an enrollment photo's aligned chip), when face crops
        are stored; True when kept."""
        if not self.settings.store_face_crops:
            return False
        jpeg = _encode_crop(chip)
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO template_crops (template_id, crop, ts) SELECT id, ?, ? FROM templates"
                       " WHERE id = ?", (jpeg, to_epoch(ts), template_id))
        return True

    def template_crops(self, name: str, limit: int) -> list[int]:
        """Ids of `name`'s templates that have a stored face crop, newest first."""
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT c.template_id FROM template_crops c JOIN templates t ON t.id = c.template_id"
                              " JOIN identities i ON i.id = t.identity_id WHERE i.name = ? ORDER BY c.ts DESC LIMIT ?",
                              (name, limit)).fetchall()
        return [int(r[0]) for r in rows]

    def template_crop(self, template_id: int) -> bytes | None:
        """The stored face crop of one template (JPEG), None when there is none."""
        with self._transaction(write=False) as db:
            row = db.execute("SELECT c.crop FROM template_crops c JOIN templates t ON t.id = c.template_id"
                             " WHERE c.template_id = ?", (template_id,)).fetchone()
        return bytes(row[0]) if row is not None else None

    def forget_person(self, name: str) -> int:
        """Erase `name` from the clusters' history (clusters named after the person become plain
        forgotten ids); returns how many clusters mentioned them. Their exemplars already left with
        the naming; the person's templates are the gallery's to delete."""
        with self._transaction() as db:
            cursor = db.execute("UPDATE cluster_history SET fate = 'forgotten', name = NULL WHERE name = ?", (name,))
            return cursor.rowcount

    # -- the fleet (edgeface.service.fleet): strangers shared between stations ----------------------

    def use_number_block(self, first: int, end: int) -> None:
        """New clusters take numbers in [first, end) from now on (this station's block in its fleet)."""
        with self._transaction() as db:
            used = [n + 1 for n in self._numbers(db) if first <= n < end]
            current = [self.clusters.next_number] if first <= self.clusters.next_number < end else []
            self.number_block = (first, end)
            self.clusters.number_block = self.number_block
            self.clusters.next_number = max([first, *used, *current])

    @staticmethod
    def _numbers(db: sqlite3.Connection) -> list[int]:
        return [int(r[0]) for r in db.execute("SELECT number FROM cluster_clusters UNION SELECT number FROM cluster_history")]

    def confirmed(self) -> list[ClusterState]:
        """The confirmed clusters as they are now (copies of their states' fields are the caller's to read)."""
        with self._transaction(write=False):
            return [s for s in self.clusters.states() if s.confirmed]

    def adopt(self, number: int, first_seen: float, centroid: np.ndarray, apart: Sequence[int],
              not_names: Sequence[str]) -> bool:
        """Hold another station's confirmed cluster under its number (its centroid as the one exemplar),
        so this station's sightings of that stranger join it. False when the number is taken or was
        used here before (a cluster's id is never reused)."""
        vector = np.asarray(centroid, np.float32)
        with self._transaction() as db:
            if number in self.clusters or number in self._numbers(db):
                return False
            exemplar = Exemplar(self.clusters.next_exemplar, vector, 0.5, first_seen)
            self.clusters.next_exemplar += 1
            state = ClusterState(number, first_seen, first_seen, 1, 1, [], True, [exemplar], vector.astype(np.float64),
                                 {a for a in apart if a in self.clusters}, set(not_names))
            self.clusters.insert(state)
            for other in state.apart:  # cannot-links hold both ways
                linked = self.clusters.get(other)
                if linked is not None:
                    linked.apart.add(number)
            self._write(db, {number, *state.apart}, set(), [])
        return True

    def fate(self, number: int) -> tuple[str, int | None, str | None] | None:
        """(fate, merged into, named) of a cluster that is gone, None while it lives or never was."""
        with self._transaction(write=False) as db:
            if number in self.clusters:
                return None
            row = db.execute("SELECT fate, into_number, name FROM cluster_history WHERE number = ?", (number,)).fetchone()
        return None if row is None else (str(row[0]), row[1], row[2])

    def absorb(self, kept: int, gone: int) -> ClusterMergedEvent | None:
        """The fleet found `gone` and `kept` to be one stranger: merge, keeping `kept` (the older id).
        None when either is not here or they are apart (a cannot-link is never overridden)."""
        with self._transaction() as db:
            first, second = self.clusters.get(kept), self.clusters.get(gone)
            if first is None or second is None or kept == gone or gone in first.apart:
                return None
            dropped = self.clusters.merge(kept, gone)
            self._write(db, {kept}, {gone}, dropped)
            self._history(db, gone, "merged", kept)
        return ClusterMergedEvent(station=self.station, kept_id=format_cluster_id(kept), merged_id=format_cluster_id(gone))

    def crops(self, cluster_id: str, limit: int) -> list[bytes]:
        """Stored JPEG face crops of a cluster, best quality first (empty when crops are off)."""
        _, exemplars = self.show(cluster_id)
        return [e.crop_jpeg for e in exemplars if e.crop_jpeg][:limit]


def _vector(blob: bytes) -> np.ndarray:
    if len(blob) != 4 * EMBEDDING_DIM:
        raise ClusterError("a stored cluster exemplar is damaged (wrong size)")
    return np.frombuffer(blob, "<f4").astype(np.float32)


def _checked_second(second: SecondExemplar | None) -> SecondExemplar | None:
    if second is None:
        return None
    if not second.model_id or not second.model_version:
        raise ClusterError("an exemplar's second-model embedding needs the model's id and version")
    vector = _one_unit(second.embedding)
    return SecondExemplar(second.model_id, second.model_version, vector)


def _one_unit(embedding: np.ndarray) -> np.ndarray:
    vector = np.asarray(embedding, np.float64).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if vector.shape != (EMBEDDING_DIM,) or not np.isfinite(vector).all() or norm < 1e-6:
        raise ClusterError(f"a second-model embedding must be a finite non-zero ({EMBEDDING_DIM},) vector")
    return (vector / norm).astype(np.float32)


def _exemplar_hash(number: int, exemplar: Exemplar) -> str:
    digest = hashlib.sha256(f"{SOURCE_TAG}:{number}:{exemplar.id}:".encode())
    digest.update(np.asarray(exemplar.vector, "<f4").tobytes())
    return digest.hexdigest()


def _encode_crop(chip: np.ndarray) -> bytes:
    import cv2

    image = np.asarray(chip)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or min(image.shape[:2]) < 8:
        raise ClusterError(f"a face crop must be a uint8 image (h, w[, 3]), got {image.dtype} {image.shape}")
    ok, data = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), 90])
    if not ok:
        raise ClusterError("could not encode the face crop as JPEG")
    return data.tobytes()


# -- the camera loop's hook ------------------------------------------------------------------


class ClusterStage:
    """The camera loop's cluster stage (`Pipeline(clusters=...)`): clusters each unknown track in the
    store and answers with the cluster fields of its unknown event, and the events the update caused:
    merges, and events other processes queued in the file (`edgeface clusters name|merge` run from a
    shell; `take_pending()` collects those between tracks too). A storage failure is logged and the
    track stays without a cluster: the camera loop never stops for the clustering."""

    def __init__(self, store: ClusterStore) -> None:
        self.store = store

    def assign(self, track: UnknownTrack) -> tuple[ClusterAssignment | None, list[Event]]:
        from edgeface.recognition.decider import ClusterAssignment

        quality = min(max(float(track.quality), 0.0), 1.0)
        try:
            second = None if track.second_embedding is None or track.second_model is None else \
                SecondExemplar(track.second_model[0], track.second_model[1], track.second_embedding)
            update = self.store.observe(track.embedding, quality=quality, ts=track.seen, track_key=track.key,
                                        crop=track.chip, apart_from=track.apart_from, not_names=track.not_names,
                                        second=second)
        except ClusterError as error:
            log.warning("track %s of %s was not clustered: %s", track.track_id, track.camera, error)
            return None, []
        caused: list[Event] = [ClusterMergedEvent(station=self.store.station, kept_id=kept, merged_id=gone)
                               for kept, gone in update.merged]
        caused += self.take_pending()
        info = update.cluster
        if info.ignored:
            log.debug("track %s of %s joined the ignored %s", track.track_id, track.camera, info.id)
            return None, caused
        return ClusterAssignment(info.id, info.status, info.visits, info.first_seen, info.last_seen), caused

    def take_pending(self) -> list[Event]:
        """The events other processes queued (none when they cannot be read now: logged)."""
        try:
            return list(self.store.take_events())
        except ClusterError as error:
            log.warning("queued cluster events not read: %s", error)
            return []
