"""The gallery: known people and their face templates in one SQLite file, searched in memory.

Storage: tables `identities` (name, created, metadata), `templates` (unit float32 embedding,
quality, source-file sha256, created, model id), `negatives` (faces that were wrongly matched to an
identity: "this was not NAME"), `changes` (a change log: which identity changed and how, written in
the same transaction as the change, whatever process made it; `edgeface.service.fleet` publishes it)
and `schema_version`, upgraded by MIGRATIONS. The file runs in WAL
mode, so a camera loop reads while `edgeface enroll` writes from another process. Every change is
one transaction: a process killed mid-enrollment leaves each identity either complete or absent.

Search: a `GallerySnapshot` (template matrix grouped by identity, per-identity mean templates and
threshold tightenings, negatives) lives in memory and is searched with array operations, no Python
loop over identities. This process's own writes are applied to it in place (a copy of the arrays, no
re-read of the file); `Gallery.match` checks `PRAGMA data_version` (a few microseconds) and, when
another connection committed a change, reads the change-log rows after the last one the snapshot
reflects and applies each changed identity in place the same way (re-read by its id: a cost in
proportion to the change, not to the gallery). When the log cannot cover it (rows pruned, a schema
change, more than CATCH_UP_MAX_CHANGES rows) the file is read again whole: synchronously, or with
`background_reload` (the camera loop's gallery) on a thread with its own read connection, the old
snapshot answering meanwhile and the new one swapped in whole (a reload older than one of this
process's own writes is dropped).

Matching is open-set: the nearest identity answers only when its distance is below the match
threshold; otherwise the face is unknown. Distances are euclidean between unit vectors. The threshold
is fixed (a float) or a `MatchThreshold` derived from a false-alarm target per stranger, re-derived
from the number of identities searched at every match (edgeface.recognition.false_alarm).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import sqlite3
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeface.errors import GalleryError
from edgeface.recognition.false_alarm import MatchThreshold
from edgeface.recognition.vectors import EMBEDDING_DIM, pairwise_distances, unit_rows
from edgeface.storage.gallery_scan import SCAN_MIN_ROWS, Int8Scan, scanned_distances
from edgeface.storage.sqlite import apply_migrations, transaction

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "dlib_resnet_v1"
"""The embedding space of every template written by this edgeface (dlib's ResNet; its FP32 and INT8
builds agree to ~0.07 and share it). Templates of another model id are never compared with it."""

DEFAULT_MATCH_MAX_DISTANCE = 0.3776
"""A plain `Gallery(path)`'s fixed threshold (the station instead derives one from
`gallery.false_alarm_rate`: MatchThreshold.from_config). Accept a match when distance < this.
Measured, not guessed: the distance at a false-accept rate of 0.1% on LFW View 1 `pairsDevTrain.txt`
(1 of 1,100 different-person pairs accepted; TAR 0.943 there) with the default pipeline of 2026-11-23
(`Config().recognition`: BlazeFace short, blazeface alignment, INT8 embedder, flip on; the face nearest
the image centre), printed by `python tools/measure_match_threshold.py` (FAR 1%: 0.4201, TAR 0.990;
without flip the same run gave 0.3896). 1,100 impostor pairs make the 0.1% point coarse; re-measure
whenever the pipeline's defaults change.

This is a per-comparison rate: a stranger is compared with every identity, so the share of strangers
matched to someone grows with the gallery (LFW, one template per person, shape_predictor alignment:
3-6% for 50 people, 54% for 1,680): hence the station's threshold derived from a target per stranger."""

MEAN_THRESHOLD_TIGHTENING = (0.0, 0.0, 0.0166, 0.0221)
"""With the "mean" strategy, an identity with k templates is matched below match_max_distance minus
MEAN_THRESHOLD_TIGHTENING[min(k, 3)]: a mean of several faces lies nearer to everyone, strangers
included, so the same false-accept rate needs a tighter threshold. Measured on LFW (people with >= 4
images: the first k images make the identity, the others are genuine probes; every one-image person
is a stranger probe; default pipeline, flip on; python tools/measure_match_strategies.py): the
distance at a false-accept rate of 0.1% per identity is 0.3741 (k=1), 0.3575 (k=2), 0.3520 (k=3). At
that rate the mean template accepts 98.5% (k=2) and 99.0% (k=3) of genuine probes against 97.6% and
98.3% for the nearest template, so "mean" is the default; with one template both are the same.
The tightening holds at the much lower per-comparison rates a derived threshold works at: measured
0.0172-0.0182 (k=2) and 0.0235-0.0319 (k=3) at 1e-3 ... 1e-5 (models/impostor_scores.json,
template_tightening_measured), so a k-template identity keeps about the one-template rate."""

_SCAN_LOCK = threading.Lock()

MatchStrategy = Literal["min", "mean"]
MATCH_STRATEGIES: tuple[str, ...] = ("min", "mean")
"""min: distance to an identity = to its nearest template; mean: to its normalised mean template."""

DEFAULT_BUSY_TIMEOUT_MS = 5000
RELOAD_RETRY_S = 5.0
"""After a failed background reload, the old snapshot keeps answering this long before the next try."""
BACKGROUND_COPY_MIN_ROWS = 20_000
"""From this many template rows, a change-log change that copies whole arrays (a removal: 51 MB and more
at 100,000 rows, fresh memory) is applied on a thread when the gallery has `background_reload`."""
CATCH_UP_MAX_CHANGES = 64
"""Another process's changes are applied to the snapshot from the change log when at most this many log
rows are new (each changed identity is re-read by its id); more (a bulk enrollment or import) read the
whole file again instead."""
MAX_NAME_CHARS = 64
SAME_TEMPLATE_MAX_DISTANCE = 1e-3
"""Import: an incoming template (or negative) this close to a stored one of its identity is already there."""
EXPORT_FORMAT: Literal["edgeface-gallery"] = "edgeface-gallery"
EXPORT_FORMAT_VERSION = 2
"""2: a template may carry its second-model (SFace) embedding, tagged with model id and version."""


class InvalidNameError(GalleryError):
    pass


class DuplicateNameError(GalleryError):
    pass


class UnknownIdentityError(GalleryError):
    pass


class ModelMismatchError(GalleryError):
    pass


class GalleryVersionError(GalleryError):
    pass


class ChangesPendingError(GalleryError):
    """A fleet write refused: this gallery has changes of its own that the fleet has not read yet."""


# -- names -----------------------------------------------------------------------------------

_FORBIDDEN_CATEGORIES = {"Cc": "a control character", "Cf": "an invisible format character",
                         "Cs": "a surrogate", "Co": "a private-use character", "Cn": "an unassigned character",
                         "Zl": "a line separator", "Zp": "a paragraph separator"}


def validate_name(name: object) -> str:
    """The name in Unicode NFC form, or InvalidNameError saying which rule it breaks.

    Any script is fine ("Zoë", "李雷"). Refused: empty, leading/trailing whitespace, "/" or "\\",
    "." and "..", control and invisible characters, more than MAX_NAME_CHARS characters."""
    if not isinstance(name, str):
        raise InvalidNameError(f"invalid name {name!r}: must be text")
    normal = unicodedata.normalize("NFC", name)
    if not normal.strip():
        raise InvalidNameError("invalid name: must not be empty")
    for char in normal:
        category = unicodedata.category(char)
        if category in _FORBIDDEN_CATEGORIES:
            raise InvalidNameError(f"invalid name {name!r}: contains {_FORBIDDEN_CATEGORIES[category]} (U+{ord(char):04X})")
    if normal != normal.strip():
        raise InvalidNameError(f"invalid name {name!r}: must not start or end with a space")
    if "/" in normal or "\\" in normal:
        raise InvalidNameError(f"invalid name {name!r}: must not contain a path separator ('/' or '\\')")
    if normal in (".", ".."):
        raise InvalidNameError(f"invalid name {name!r}: '.' and '..' are reserved")
    if len(normal) > MAX_NAME_CHARS:
        raise InvalidNameError(f"invalid name {normal[:20]!r}...: {len(normal)} characters, at most {MAX_NAME_CHARS}")
    return normal


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


# -- embeddings ------------------------------------------------------------------------------


def _to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def _from_blob(blob: bytes, what: str) -> np.ndarray:
    if len(blob) != 4 * EMBEDDING_DIM:
        raise GalleryError(f"{what} holds {len(blob) // 4} numbers, expected {EMBEDDING_DIM}; the file is damaged")
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _unit(vector: np.ndarray) -> np.ndarray:
    """A vector another station stored, kept bit for bit (its digest names it on every station)."""
    vector = np.asarray(vector, dtype=np.float32)
    if vector.shape != (EMBEDDING_DIM,) or not np.all(np.isfinite(vector)) or abs(float(np.linalg.norm(vector)) - 1) > 1e-3:
        raise GalleryError(f"an embedding must be {EMBEDDING_DIM} finite numbers of unit length")
    return vector


LOAD_SPARE_ROWS = 1 / 64
"""A snapshot read from the file keeps this share of spare template rows (64 at least, never touched
until used, so not resident): the first changes after a load are then appended in place, without a
copy of the whole matrix (about 17 ms at 100,000 identities, 150 ms on a loaded machine)."""

_BLOCK_ROWS = 8192
"""Large arrays are made in blocks of this many rows: a background reload then never holds the GIL
(some numpy steps keep it) long enough to stall the camera loop's search for long."""


def _unit_rows_in_blocks(rows: np.ndarray) -> np.ndarray:
    """unit_rows(rows), the same numbers, a block of rows at a time."""
    if len(rows) <= _BLOCK_ROWS:
        return unit_rows(rows)
    out = np.empty((len(rows), EMBEDDING_DIM), np.float32)
    for start in range(0, len(rows), _BLOCK_ROWS):
        out[start:start + _BLOCK_ROWS] = unit_rows(rows[start:start + _BLOCK_ROWS])
    return out


def _stack(blobs: Sequence[bytes], what: str, spare: int = 0) -> np.ndarray:
    """Stored rows as stored (unit rows), a block at a time; a stray row that is not a unit row is
    normalised. spare: the result is the start of an array with this many more rows (`.base`)."""
    if not blobs and not spare:
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    if any(len(b) != 4 * EMBEDDING_DIM for b in blobs):
        for b in blobs:
            _from_blob(b, what)
    out = np.empty((len(blobs) + spare, EMBEDDING_DIM), np.float32)[:len(blobs)]
    for start in range(0, len(blobs), _BLOCK_ROWS):
        chunk = blobs[start:start + _BLOCK_ROWS]
        rows = np.frombuffer(b"".join(chunk), dtype="<f4").reshape(len(chunk), EMBEDDING_DIM).astype(np.float32)
        # Stored rows are unit rows already: re-dividing by a norm of 1 +- 1 ulp would change their last
        # bits on some CPUs, and the snapshot updated in place would then differ from one read afresh.
        stray = ~(np.abs(np.linalg.norm(rows, axis=1) - 1.0) <= 1e-5)  # NaN, inf and zero rows included
        if np.any(stray):
            rows[stray] = unit_rows(rows[stray])  # refuses NaN, inf and zero rows
        out[start:start + len(chunk)] = rows
    return out


def _check_sha256(value: str | None) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) != 64
                              or any(c not in "0123456789abcdef" for c in value)):
        raise GalleryError(f"source hash {value!r} is not a lowercase hex sha256")
    return value


def _row_id(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just wrote."""
    if cursor.lastrowid is None:
        raise GalleryError("the gallery did not report the id of a new row")
    return int(cursor.lastrowid)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _metadata_json(metadata: dict[str, Any]) -> str:
    if not isinstance(metadata, dict):
        raise GalleryError("identity metadata must be a JSON object")
    try:
        return json.dumps(metadata, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise GalleryError(f"identity metadata is not JSON-serialisable: {error}") from None


# -- schema and migrations: MIGRATIONS[i] takes a file from version i to i + 1 inside the caller's
# transaction (never executescript: it commits). Append new steps; never edit old ones.


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    """The first layout: names and their templates."""
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("CREATE TABLE identities (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created TEXT NOT NULL)")
    db.execute("CREATE TABLE templates (id INTEGER PRIMARY KEY,"
               " identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,"
               " embedding BLOB NOT NULL, source_sha256 TEXT, created TEXT NOT NULL)")


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Identity metadata, template quality and model id (version-1 templates were all made by
    dlib_resnet_v1), negatives."""
    db.execute("ALTER TABLE identities ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'")
    db.execute("ALTER TABLE templates ADD COLUMN quality REAL NOT NULL DEFAULT 1.0")
    db.execute("ALTER TABLE templates ADD COLUMN model_id TEXT NOT NULL DEFAULT 'dlib_resnet_v1'")
    db.execute("CREATE INDEX templates_by_identity ON templates(identity_id)")
    db.execute("CREATE TABLE negatives (id INTEGER PRIMARY KEY,"
               " identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,"
               " embedding BLOB NOT NULL, created TEXT NOT NULL, model_id TEXT NOT NULL)")
    db.execute("CREATE INDEX negatives_by_identity ON negatives(identity_id)")


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """The second opinion: a template's embedding by a second model (SFace), tagged with that model's
    id and version, and the aligned chip it was made from (so it can be made again by a new model
    version: `edgeface gallery upgrade`). Templates of version-2 files have neither (dlib only)."""
    db.execute("CREATE TABLE second_embeddings (template_id INTEGER PRIMARY KEY"
               " REFERENCES templates(id) ON DELETE CASCADE, model_id TEXT NOT NULL, model_version TEXT NOT NULL,"
               " embedding BLOB NOT NULL)")
    db.execute("CREATE TABLE template_chips (template_id INTEGER PRIMARY KEY"
               " REFERENCES templates(id) ON DELETE CASCADE, kind TEXT NOT NULL, chip BLOB NOT NULL)")


def _migrate_3_to_4(db: sqlite3.Connection) -> None:
    """The change log: one row per change of an identity (no name: a forgotten person's name must not
    linger here), with its time (ms since the epoch). remote = 1 for changes a fleet station applied
    from another station's record."""
    db.execute("CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, identity_id INTEGER NOT NULL,"
               " kind TEXT NOT NULL, remote INTEGER NOT NULL DEFAULT 0, at_ms INTEGER NOT NULL)")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migrate_0_to_1, _migrate_1_to_2, _migrate_2_to_3,
                                                                 _migrate_3_to_4)
SCHEMA_VERSION = len(MIGRATIONS)


def _log_top(db: sqlite3.Connection) -> int | None:
    """The last change-log number ever given out (pruned rows included); None when the file has no log."""
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    except sqlite3.OperationalError:  # no AUTOINCREMENT table in the file: no change log
        return None
    return 0 if row is None else int(row[0])


def _stored_version(db: sqlite3.Connection, path: Path) -> int:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        if tables:
            raise GalleryVersionError(f"{path} is an SQLite file but not an edgeface gallery; choose another path")
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    if row[0] is None:
        raise GalleryVersionError(f"{path}: schema_version is empty; the file is damaged, restore it from an export")
    return int(row[0])


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """One probe's answer. name is None for an unknown face; distance is then to the nearest identity
    (inf for an empty gallery) and nearest_name says who that was."""

    name: str | None
    distance: float
    nearest_name: str | None = None
    template_id: int | None = None
    vetoed_by_negative: bool = False
    """A below-threshold identity was refused because the probe is nearer one of its negatives."""
    runner_up: str | None = None
    """The nearest identity other than the answer (other than nearest_name for an unknown face);
    None when the gallery has one identity."""
    runner_up_distance: float = math.inf

    def close_runner_up(self, margin: float) -> bool:
        """A named match whose runner-up is less than `margin` farther than the answer: a look-alike."""
        return self.name is not None and self.runner_up_distance - self.distance < margin


@dataclass(frozen=True)
class TemplateInfo:
    id: int
    quality: float
    source_sha256: str | None
    created: str
    model_id: str
    second_model: str | None = None
    """"model_id/model_version" of its second-model (SFace) embedding; None: dlib only."""


@dataclass(frozen=True)
class IdentityInfo:
    name: str
    created: str
    metadata: dict[str, Any]
    template_count: int
    negative_count: int
    templates: tuple[TemplateInfo, ...] = ()


ChangeKind = Literal["templates", "renamed", "removed", "rejected"]
CHANGE_KINDS: frozenset[str] = frozenset(("templates", "renamed", "removed", "rejected"))


@dataclass(frozen=True)
class Change:
    """One row of the change log: identity `identity_id` changed (`kind`); remote when applied from
    another fleet station's record."""

    seq: int
    identity_id: int
    kind: ChangeKind
    remote: bool
    at_ms: int


@dataclass(frozen=True)
class StoredPerson:
    """An identity as stored: its templates (id, unit vector, quality, source sha256, created) and
    negatives (id, unit vector, created), this gallery's model only."""

    identity_id: int
    name: str
    templates: tuple[tuple[int, np.ndarray, float, str | None, str], ...]
    negatives: tuple[tuple[int, np.ndarray, str], ...]
    seconds: dict[int, SecondTemplate] = field(default_factory=dict)
    """Template id -> its second-model embedding (without the chip: chips are images and stay here)."""


@dataclass(frozen=True)
class ImportReport:
    identities_created: int
    identities_merged: int
    templates_added: int
    templates_skipped: int
    negatives_added: int


@dataclass(frozen=True)
class SecondTemplate:
    """A template's embedding by the second model (SFace), tagged with its id and version, and the
    aligned chip it was made from (kept so `edgeface gallery upgrade` can embed it again)."""

    model_id: str
    model_version: str
    embedding: np.ndarray
    chip: np.ndarray | None = None


SECOND_CHIP_KIND = "sface_112x112_bgr_u8"
"""How template_chips stores a chip: the raw bytes of a (112, 112, 3) uint8 BGR array."""
SECOND_CHIP_SHAPE = (112, 112, 3)


@dataclass(frozen=True)
class SecondMeans:
    """Per identity of one GallerySnapshot (same order), the unit mean of its templates' second-model
    embeddings; NaN rows for identities without any (dlib alone decides for them)."""

    snapshot: GallerySnapshot
    model_id: str
    means: np.ndarray
    identities_with: int
    """How many identities have an SFace template."""


@dataclass(frozen=True)
class _ChangedPerson:
    """One identity as the file holds it now, re-read after a change-log row named it."""

    identity_id: int
    name: str | None
    """None: removed."""
    template_ids: np.ndarray
    templates: np.ndarray
    negatives: np.ndarray
    second_mean: np.ndarray | None = None
    """The (128,) float16 mean of its second-model embeddings (NaN without any); None when not read."""


@dataclass(frozen=True)
class _PendingSecondMeans:
    """SecondMeans of an earlier snapshot and the row edits ("set" k, "del" k, "add") that the change
    log made since, replayed when the second opinion next asks (not on the change's own path)."""

    base: SecondMeans
    snapshot: GallerySnapshot
    edits: tuple[tuple[str, int, np.ndarray | None], ...]

    def replayed(self) -> SecondMeans:
        means = self.base.means
        copied = False
        for op, k, row in self.edits:
            if op == "del":
                means, copied = np.delete(means, k, axis=0), True
            elif op == "add":
                means, copied = np.vstack([means, np.asarray(row, np.float16)[None]]), True
            else:
                if not copied:
                    means, copied = means.copy(), True
                means[k] = row
        return SecondMeans(self.snapshot, self.base.model_id, means, int((~np.isnan(means[:, 0])).sum()) if len(means) else 0)


# -- in-memory search ------------------------------------------------------------------------


@dataclass
class _RowBuffer:
    """Template rows with spare capacity at the end: rows[:used] are claimed by the newest snapshot."""

    rows: np.ndarray
    used: int


@dataclass(frozen=True)
class GallerySnapshot:
    """Everything matching needs, as arrays. Identity k (names sorted when read from the file; this
    process's new identities are appended after them; each with at least one template) owns template
    rows starts[k]:ends[k]; negatives are sorted by owner and negatives[j]
    belongs to identity negative_owner[j]. mean_tightening[k] is what the "mean" strategy subtracts
    from the threshold for identity k (MEAN_THRESHOLD_TIGHTENING by its template count)."""

    names: tuple[str, ...]
    starts: np.ndarray
    ends: np.ndarray
    templates: np.ndarray
    template_ids: np.ndarray
    means: np.ndarray
    negatives: np.ndarray
    negative_owner: np.ndarray
    mean_tightening: np.ndarray
    identity_ids: np.ndarray
    """Each identity's row id in the file's `identities` table (-1 when not read from a file): the change
    log names identities by it."""
    _limit_cache: dict[tuple[float, str], np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    _scan: list[Int8Scan] = field(default_factory=list, compare=False, repr=False)
    """The int8 copy of `means` for galleries of SCAN_MIN_ROWS or more identities, made at the first search."""
    _positions: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    """name -> identity index, filled at the first look-up; shared with the snapshots that only append
    to this one (an entry at or past a snapshot's length is not its own)."""
    _buffer: _RowBuffer | None = field(default=None, compare=False, repr=False)
    """Spare rows after `templates` (a view of the buffer) that the next appended identity fills in place."""

    @staticmethod
    def build(rows: Sequence[tuple[str, int, np.ndarray]], negative_rows: Sequence[tuple[str, np.ndarray]]) -> GallerySnapshot:
        """rows: (identity name, template id, unit embedding); negative_rows: (identity name, unit embedding)."""
        order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1]))
        templates = (np.stack([rows[i][2] for i in order]).astype(np.float32) if rows
                     else np.zeros((0, EMBEDDING_DIM), np.float32))
        negatives = [(n, v) for n, v in negative_rows]
        return GallerySnapshot._from_sorted(
            [rows[i][0] for i in order], np.array([rows[i][1] for i in order], dtype=np.int64), templates,
            [n for n, _ in negatives],
            np.stack([v for _, v in negatives]).astype(np.float32) if negatives else np.zeros((0, EMBEDDING_DIM), np.float32),
            np.full(len(rows), -1, np.int64))

    @staticmethod
    def _from_sorted(owners: Sequence[str], template_ids: np.ndarray, templates: np.ndarray,
                     negative_names: Sequence[str], negatives: np.ndarray, owner_ids: np.ndarray,
                     buffer: _RowBuffer | None = None) -> GallerySnapshot:
        """Template rows already sorted by (name, id), owner_ids[i] the identity id of row i; negatives
        in any order, an identity's kept in theirs (those of an identity without templates are dropped).
        buffer: `templates` is its start, the rest spare rows for appends in place."""
        names: list[str] = []
        starts: list[int] = []
        for i, name in enumerate(owners):
            if not names or names[-1] != name:
                names.append(name)
                starts.append(i)
        start_array = np.array(starts, dtype=np.int64)
        end_array = np.append(start_array[1:], len(owners)).astype(np.int64) if names else start_array
        means = _mean_templates(templates, start_array, end_array)
        index = {name: k for k, name in enumerate(names)}
        owner = np.array([index.get(n, -1) for n in negative_names], dtype=np.int64)
        keep = np.flatnonzero(owner >= 0)
        keep = keep[np.argsort(owner[keep], kind="stable")]
        return GallerySnapshot(tuple(names), start_array, end_array, templates, template_ids, means,
                               negatives[keep], owner[keep], _tightening(end_array - start_array),
                               owner_ids[start_array].astype(np.int64), _buffer=buffer)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays and the names."""
        arrays = (self.starts, self.ends, self.templates, self.template_ids, self.negatives,
                  self.negative_owner, self.mean_tightening, self.identity_ids) + (() if self.means is self.templates else (self.means,))
        return sum(a.nbytes for a in arrays) + sys.getsizeof(self.names) + sum(sys.getsizeof(n) for n in self.names)

    def distances(self, probes: np.ndarray, strategy: MatchStrategy = "min") -> np.ndarray:
        """(n, identities) distances from unit probes to each identity under the strategy."""
        if strategy == "mean":
            return pairwise_distances(probes, self.means)
        if not self.names:
            return np.zeros((len(probes), 0), np.float32)
        return np.minimum.reduceat(pairwise_distances(probes, self.templates), self.starts, axis=1)

    def _limits(self, max_distance: float, strategy: MatchStrategy) -> np.ndarray:
        """Per-identity thresholds as float32 that compare with float32 distances exactly as the
        float64 thresholds do (each rounded up to the next float32: d < L64 iff d < ceil32(L64)),
        kept for the last threshold asked."""
        key = (float(max_distance), strategy)
        cached = self._limit_cache.get(key)
        if cached is None:
            exact = np.float64(max_distance) - (self.mean_tightening if strategy == "mean" else np.zeros(len(self.names)))
            cached = exact.astype(np.float32)
            below = cached.astype(np.float64) < exact
            cached[below] = np.nextafter(cached[below], np.float32(np.inf))
            self._limit_cache.clear()
            self._limit_cache[key] = cached
        return cached

    def mean_scan(self) -> Int8Scan:
        if not self._scan:  # built outside the lock: a background reload's build never blocks another snapshot's search
            built = Int8Scan.build(self.means)
            with _SCAN_LOCK:
                if not self._scan:
                    self._scan.append(built)
        return self._scan[0]

    def limits(self, max_distance: float, strategy: MatchStrategy) -> np.ndarray:
        """Each identity's threshold (max_distance, tightened by template count under "mean")."""
        return self._limits(max_distance, strategy)

    def _nearest_templates(self, probe: np.ndarray, identities: np.ndarray) -> np.ndarray:
        """Distance from one unit probe to the nearest template of each given identity."""
        rows = np.concatenate([np.arange(self.starts[k], self.ends[k]) for k in identities.tolist()])
        segment_starts = np.concatenate([[0], np.cumsum((self.ends - self.starts)[identities])[:-1]])
        return np.minimum.reduceat(pairwise_distances(probe[None], self.templates[rows])[0], segment_starts)

    def match(self, embeddings: np.ndarray, max_distance: float, strategy: MatchStrategy = "min") -> list[Match]:
        """Open-set search, one Match per row: the nearest identity below its threshold (max_distance,
        tightened by template count under "mean") answers, unless the probe is at least as near one
        of its negatives as to its nearest template; the next nearest below its threshold may then
        answer. Ties go to the identity whose name sorts first."""
        if strategy not in MATCH_STRATEGIES:
            raise GalleryError(f"unknown match strategy {strategy!r}; use one of {', '.join(MATCH_STRATEGIES)}")
        probes = unit_rows(embeddings) if len(embeddings) else np.zeros((0, EMBEDDING_DIM), np.float32)
        if not self.names:
            return [Match(None, math.inf) for _ in probes]
        to_templates = None
        if strategy == "mean" and len(self.names) >= SCAN_MIN_ROWS:  # int8 scan, exact re-rank: the same answers
            by_identity = scanned_distances(probes, self.means, self.mean_scan(), self._limits(max_distance, strategy))
        elif strategy == "mean":
            by_identity = pairwise_distances(probes, self.means)
        else:
            to_templates = pairwise_distances(probes, self.templates)
            by_identity = np.minimum.reduceat(to_templates, self.starts, axis=1)
        accepted = by_identity < self._limits(max_distance, strategy)
        owners = np.unique(self.negative_owner)
        to_negatives = pairwise_distances(probes, self.negatives) if len(owners) else None
        negative_starts = np.searchsorted(self.negative_owner, owners)
        results = []
        for i, row in enumerate(by_identity):
            allowed = accepted[i]
            vetoed_rows = np.zeros(0, np.int64)
            if to_negatives is not None:
                candidates = owners[allowed[owners]]
                if len(candidates):
                    nearest_negative = np.minimum.reduceat(to_negatives[i], negative_starts)[allowed[owners]]
                    nearest_own = (by_identity[i, candidates] if strategy == "min"
                                   else self._nearest_templates(probes[i], candidates))
                    vetoed_rows = candidates[nearest_negative <= nearest_own]
                    if len(vetoed_rows):
                        allowed = allowed.copy()
                        allowed[vetoed_rows] = False
            nearest = int(np.argmin(row))
            answer = None
            if allowed[nearest]:  # the usual known face: the first of the nearest is allowed
                answer = nearest
            elif allowed.any():
                answer = int(np.argmin(np.where(allowed, row, np.inf)))
            name = template_id = None
            if answer is not None:
                start, end = int(self.starts[answer]), int(self.ends[answer])
                own = (to_templates[i, start:end] if to_templates is not None
                       else pairwise_distances(probes[i][None], self.templates[start:end])[0])
                name, template_id = self.names[answer], int(self.template_ids[start + int(np.argmin(own))])
            distance = float(row[nearest if answer is None else answer])
            vetoed = bool(len(vetoed_rows)) and (answer is None or any(
                (row[k], k) < (row[answer], answer) for k in vetoed_rows.tolist()))
            chosen = nearest if answer is None else answer
            second = None
            if len(self.names) > 1:
                others = row.copy()
                others[chosen] = np.inf
                second = int(np.argmin(others))
            results.append(Match(name, distance, self.names[nearest], template_id, vetoed,
                                 None if second is None else self.names[second],
                                 math.inf if second is None else float(row[second])))
        return results

    # -- updates after this process's own writes: a new snapshot, the old one stays valid for its readers

    def identity_rows(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(template ids, templates, negatives) of one identity; empty when it is not here."""
        k = self._index(name)
        if k is None:
            return np.zeros(0, np.int64), self.templates[:0], self.negatives[:0]
        start, end = int(self.starts[k]), int(self.ends[k])
        mine = self.negative_owner == k
        return self.template_ids[start:end], self.templates[start:end], self.negatives[mine]

    def _index(self, name: str) -> int | None:
        positions = self._positions
        if len(positions) < len(self.names):
            positions.update(zip(self.names, range(len(self.names))))
        k = positions.get(name)
        return k if k is not None and k < len(self.names) and self.names[k] == name else None

    def _appended_rows(self, rows: np.ndarray) -> tuple[np.ndarray, _RowBuffer, bool]:
        """(`templates` with rows after it, its buffer, whether in place): written into the spare rows
        when this snapshot is the buffer's newest user (older snapshots see only their own view), else
        copied into a new buffer with 1/8 spare."""
        n, count = len(self.templates), len(rows)
        buffer = self._buffer
        in_place = buffer is not None and buffer.used == n and n + count <= len(buffer.rows)
        if buffer is None or not in_place:
            capacity = n + count + max((n + count) // 8, 64)
            buffer = _RowBuffer(np.empty((capacity, EMBEDDING_DIM), np.float32), n)
            buffer.rows[:n] = self.templates
        buffer.rows[n:n + count] = rows
        buffer.used = n + count
        return buffer.rows[:n + count], buffer, in_place

    def position_of(self, identity_id: int) -> int | None:
        """The index of the identity with this id in the file, or None when it is not searched here."""
        found = np.flatnonzero(self.identity_ids == identity_id)
        return int(found[0]) if len(found) else None

    def _append(self, name: str, template_ids: np.ndarray, templates: np.ndarray, negatives: np.ndarray,
                identity_id: int) -> GallerySnapshot:
        """This snapshot with a new identity after the others: its template rows go into spare rows in
        place (no copy of the matrix; names are in no particular order, looked up by `_positions`)."""
        j, at, count = len(self.names), len(self.templates), len(templates)
        rows, buffer, in_place = self._appended_rows(templates.astype(np.float32))
        shared = self.means is self.templates
        mean_row = _mean_row(templates)
        means = rows if shared and count == 1 else (
            _mean_templates(rows, np.append(self.starts, at), np.append(self.ends, at + count)) if shared
            else np.vstack([self.means, mean_row]))
        # the newest snapshot of its line shares the look-ups; a copy gets its own (entries are checked
        # against the names at look-up, so one from another line never answers for a wrong identity)
        positions = self._positions if in_place else dict(self._positions)
        if positions:
            positions[name] = j
        ends = np.append(self.ends, at + count).astype(np.int64)
        return GallerySnapshot(
            (*self.names, name), np.append(self.starts, at).astype(np.int64), ends, rows,
            np.concatenate([self.template_ids, template_ids.astype(np.int64)]), means,
            np.vstack([self.negatives, negatives.astype(np.float32)]),
            np.concatenate([self.negative_owner, np.full(len(negatives), j, np.int64)]),
            np.append(self.mean_tightening, _tightening(np.array([count]))),
            np.append(self.identity_ids, np.int64(identity_id)),
            _scan=[s.with_row(j, mean_row[0]) for s in self._scan], _positions=positions, _buffer=buffer)

    def replaced(self, old_name: str | None, new_name: str | None, template_ids: np.ndarray, templates: np.ndarray,
                 negatives: np.ndarray, identity_id: int | None = None) -> GallerySnapshot:
        """This snapshot without identity old_name and with new_name holding these rows (template ids
        ascending; an identity without templates is not searched). Costs copying the arrays, not
        reading the file. identity_id: the file's id of new_name (old_name's when None)."""
        k = None if old_name is None else self._index(old_name)
        if k is None and new_name is not None and self._index(new_name) is not None:
            raise GalleryError(f"{new_name!r} is searched already")
        return self.replaced_at(k, new_name, template_ids, templates, negatives, identity_id)

    def replaced_at(self, k: int | None, new_name: str | None, template_ids: np.ndarray, templates: np.ndarray,
                    negatives: np.ndarray, identity_id: int | None = None) -> GallerySnapshot:
        """`replaced` for the identity at index k (None: a new one, appended after the others). An
        identity keeps its place; one copy of each array at most, none for a rename or an append."""
        if identity_id is None:
            identity_id = -1 if k is None else int(self.identity_ids[k])
        add = new_name is not None and len(templates) > 0
        if k is None:
            return self._append(new_name, template_ids, templates, negatives, identity_id) if add and new_name else self
        start, end = int(self.starts[k]), int(self.ends[k])
        negative_at, negative_end = (int(i) for i in np.searchsorted(self.negative_owner, [k, k + 1]))
        if add and new_name is not None and np.array_equal(template_ids, self.template_ids[start:end]) \
                and np.array_equal(negatives, self.negatives[negative_at:negative_end]):
            return self._renamed(k, new_name, identity_id)
        count = len(templates) if add else 0
        change = count - (end - start)
        names = list(self.names)
        empty = self.templates[:0]
        rows = np.concatenate([self.templates[:start], templates.astype(np.float32) if add else empty,
                               self.templates[end:]])
        ids = np.concatenate([self.template_ids[:start], template_ids.astype(np.int64) if add else
                              self.template_ids[:0], self.template_ids[end:]])
        shared = self.means is self.templates  # every identity had one template: no second matrix
        mean_row = _mean_row(templates) if add else empty
        if add and new_name is not None:
            renamed = names[k] != new_name
            names[k] = new_name
            starts, ends = self.starts.copy(), self.ends.copy()
            ends[k] = start + count
            starts[k + 1:] += change
            ends[k + 1:] += change
            negative_owner = np.concatenate([self.negative_owner[:negative_at], np.full(len(negatives), k, np.int64),
                                             self.negative_owner[negative_end:]])
            negative_rows = np.concatenate([self.negatives[:negative_at], negatives.astype(np.float32),
                                            self.negatives[negative_end:]])
            tightening = self.mean_tightening.copy()
            tightening[k] = _tightening(np.array([count]))[0]
            identity_ids = self.identity_ids.copy()
            identity_ids[k] = identity_id
            means = None if shared else np.concatenate([self.means[:k], mean_row, self.means[k + 1:]])
            scan = [s.with_column(k, mean_row[0]) for s in self._scan]
            positions = dict(self._positions) if renamed and self._positions else self._positions
            if renamed and positions:
                positions[new_name] = k
        else:
            del names[k]
            starts, ends = np.delete(self.starts, k), np.delete(self.ends, k)
            starts[k:] += change
            ends[k:] += change
            negative_owner = np.concatenate([self.negative_owner[:negative_at], self.negative_owner[negative_end:] - 1])
            negative_rows = np.concatenate([self.negatives[:negative_at], self.negatives[negative_end:]])
            tightening = np.delete(self.mean_tightening, k)
            identity_ids = np.delete(self.identity_ids, k)
            means = None if shared else np.delete(self.means, k, axis=0)
            scan = [s.without(k) for s in self._scan]
            positions = {}  # indices moved: rebuilt at the next look-up
        if means is None or len(names) == len(rows):
            means = _mean_templates(rows, starts, ends)
        return GallerySnapshot(tuple(names), starts, ends, rows, ids, means, negative_rows, negative_owner, tightening,
                               identity_ids, _scan=scan, _positions=positions)

    def _renamed(self, k: int, name: str, identity_id: int) -> GallerySnapshot:
        """The same rows under another name (or id): a new names tuple, every array shared."""
        if name == self.names[k] and identity_id == int(self.identity_ids[k]):
            return self
        positions = dict(self._positions) if self._positions else {}
        if positions:
            positions[name] = k
        identity_ids = self.identity_ids
        if identity_id != int(identity_ids[k]):
            identity_ids = identity_ids.copy()
            identity_ids[k] = identity_id
        return dataclasses.replace(self, names=(*self.names[:k], name, *self.names[k + 1:]), identity_ids=identity_ids,
                                   _positions=positions)


_SecondEdit = tuple[str, int, "np.ndarray | None"]
"""A row edit of SecondMeans: ("set", k, row), ("del", k, None) or ("add", k, row)."""


def _applies_without_copy(snapshot: GallerySnapshot, person: _ChangedPerson) -> bool:
    """Whether applying this change to the snapshot copies no whole array: a new identity (appended in
    spare rows), a rename, an identity that is not searched here and stays so."""
    k = snapshot.position_of(person.identity_id)
    if k is None:
        return True
    start, end = int(snapshot.starts[k]), int(snapshot.ends[k])
    return person.name is not None and np.array_equal(person.template_ids, snapshot.template_ids[start:end]) \
        and np.array_equal(person.negatives, snapshot.negatives[snapshot.negative_owner == k])


def _applied(snapshot: GallerySnapshot, people: Sequence[_ChangedPerson]) -> tuple[GallerySnapshot, list[_SecondEdit]]:
    """The snapshot with each changed identity as the file holds it now, and the matching SecondMeans
    row edits. The identities searched here already come first (they keep their places), then the new
    ones: a name is then never held by two identities of the result."""
    edits: list[_SecondEdit] = []
    for person in sorted(people, key=lambda p: snapshot.position_of(p.identity_id) is None):
        k = snapshot.position_of(person.identity_id)
        searched = person.name is not None and len(person.templates) > 0
        if k is None and not searched:
            continue
        snapshot = snapshot.replaced_at(k, person.name, person.template_ids, person.templates, person.negatives,
                                        person.identity_id)
        if k is None:
            edits.append(("add", len(snapshot) - 1, person.second_mean))
        else:
            edits.append(("set", k, person.second_mean) if searched else ("del", k, None))
    return snapshot, edits


def _second_means_of(vectors: np.ndarray, owners: np.ndarray, identities: int) -> np.ndarray:
    """(identities, 128) float16 unit means of the second-model embeddings by owner; NaN rows for none.
    float16: half the memory (51 -> 26 MB at 100,000 people); cosines move by < 1e-3."""
    sums = np.zeros((identities, EMBEDDING_DIM), np.float32)
    np.add.at(sums, owners, vectors)
    have = np.bincount(owners, minlength=identities) > 0
    means = np.full(sums.shape, np.nan, np.float16)
    if have.any():
        means[have] = unit_rows(sums[have]).astype(np.float16)
    return means


def _mean_row(templates: np.ndarray) -> np.ndarray:
    """One identity's (1, 128) normalised mean template, as _mean_templates makes it."""
    templates = templates.astype(np.float32)
    return templates[:1].copy() if len(templates) == 1 else unit_rows(np.add.reduceat(templates, [0], axis=0))


def _mean_templates(templates: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Each identity's normalised mean template. A one-template identity's is its template row itself
    (already a unit row), and when every identity has one template the result IS the template array:
    no second 512-byte copy per identity."""
    if len(starts) == len(templates):
        return templates
    means = _unit_rows_in_blocks(_segment_sums(templates, starts, ends))
    single = np.flatnonzero(ends - starts == 1)
    means[single] = templates[starts[single]]
    return means


def _segment_sums(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """np.add.reduceat(rows, starts, axis=0), the same numbers, but only the identities with several
    templates go through reduceat (slow per segment); a one-template identity's sum is its row."""
    sums = rows[starts].copy()
    several = np.flatnonzero(ends - starts > 1)
    if len(several):
        counts = (ends - starts)[several]
        picked = np.concatenate([np.arange(starts[k], ends[k]) for k in several.tolist()])
        sums[several] = np.add.reduceat(rows[picked], np.concatenate([[0], np.cumsum(counts)[:-1]]), axis=0)
    return sums


def _tightening(counts: np.ndarray) -> np.ndarray:
    table = np.array(MEAN_THRESHOLD_TIGHTENING, dtype=np.float64)
    return table[np.minimum(counts, len(table) - 1)]


# -- export file format ----------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _SecondRecord(_Strict):
    model_id: str = Field(min_length=1)
    model_version: str = Field(min_length=1)
    embedding_f32le_b64: str


class _TemplateRecord(_Strict):
    embedding_f32le_b64: str
    quality: float = Field(1.0, ge=0.0, le=1.0)
    source_sha256: str | None = None
    created: str
    second: _SecondRecord | None = None


class _NegativeRecord(_Strict):
    embedding_f32le_b64: str
    created: str


class _IdentityRecord(_Strict):
    name: str
    created: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    templates: list[_TemplateRecord] = Field(default_factory=list)
    negatives: list[_NegativeRecord] = Field(default_factory=list)


class _ExportFile(_Strict):
    format: Literal["edgeface-gallery"]
    format_version: int = Field(ge=1)
    model_id: str = Field(min_length=1)
    dim: int
    exported: str
    identities: list[_IdentityRecord]


def _encode(vector: np.ndarray) -> str:
    return base64.b64encode(_to_blob(vector)).decode("ascii")


def _decode(text: str, what: str) -> np.ndarray:
    try:
        blob = base64.b64decode(text, validate=True)
    except ValueError:
        raise GalleryError(f"{what}: embedding is not valid base64") from None
    return unit_rows(_from_blob(blob, what))[0]


def _read_export(path: Path) -> _ExportFile:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GalleryError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GalleryError(f"cannot read {path}: {error}") from None
    except ValueError as error:
        raise GalleryError(f"{path} is not JSON ({error}); is it an edgeface gallery export?") from None
    if not isinstance(raw, dict) or raw.get("format") != EXPORT_FORMAT:
        raise GalleryError(f"{path} is not an edgeface gallery export (no \"format\": \"{EXPORT_FORMAT}\")")
    version = raw.get("format_version")
    if isinstance(version, int) and version > EXPORT_FORMAT_VERSION:
        raise GalleryVersionError(f"{path} is export format version {version}, written by a newer edgeface "
                                  f"(this one reads up to {EXPORT_FORMAT_VERSION}); upgrade edgeface to import it")
    try:
        return _ExportFile.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        raise GalleryError(f"{path} is not a valid gallery export: "
                           f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _checked_second(template: SecondTemplate | None) -> SecondTemplate | None:
    if template is None:
        return None
    if not template.model_id or not template.model_version:
        raise GalleryError("a second-model template needs its model id and version")
    chip = template.chip
    if chip is not None and (chip.shape != SECOND_CHIP_SHAPE or chip.dtype != np.uint8):
        raise GalleryError(f"a second-model chip must be uint8 {SECOND_CHIP_SHAPE}, got {chip.dtype} {chip.shape}")
    return SecondTemplate(template.model_id, template.model_version, unit_rows(template.embedding)[0], chip)


def _insert_second(db: sqlite3.Connection, template_id: int, template: SecondTemplate) -> None:
    db.execute("INSERT OR REPLACE INTO second_embeddings (template_id, model_id, model_version, embedding)"
               " VALUES (?, ?, ?, ?)", (template_id, template.model_id, template.model_version, _to_blob(template.embedding)))
    if template.chip is not None:
        db.execute("INSERT OR REPLACE INTO template_chips (template_id, kind, chip) VALUES (?, ?, ?)",
                   (template_id, SECOND_CHIP_KIND, np.ascontiguousarray(template.chip).tobytes()))


@dataclass(frozen=True)
class MissingSecond:
    """A template without an embedding by the second model: its person, id and stored chip (None when
    the template was enrolled before chips were kept: that person needs a new photo)."""

    name: str
    template_id: int
    chip: np.ndarray | None
    source_sha256: str | None = None
    """The sha256 of the photo the template was made from (the same photo can then be embedded again)."""


# -- the gallery -----------------------------------------------------------------------------


class Gallery:
    """One gallery file. Safe to share between threads; several processes may open the same file.

    create=False refuses a path where no gallery exists yet (for commands that only read).
    read_only=True opens it without writing anything (a user who may read the file but not write it,
    or its folder, can still list and identify); writes then fail. A new file is created 0600."""

    def __init__(
        self,
        path: str | Path,
        *,
        model_id: str = DEFAULT_MODEL_ID,
        match_max_distance: float | MatchThreshold = DEFAULT_MATCH_MAX_DISTANCE,
        strategy: MatchStrategy = "mean",
        create: bool = True,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        read_only: bool = False,
        background_reload: bool = False,
    ) -> None:
        if strategy not in MATCH_STRATEGIES:
            raise GalleryError(f"unknown match strategy {strategy!r}; use one of {', '.join(MATCH_STRATEGIES)}")
        if not isinstance(match_max_distance, MatchThreshold):
            if not 0 < match_max_distance <= 2:
                raise GalleryError(f"match_max_distance must be in (0, 2], got {match_max_distance}")
            match_max_distance = MatchThreshold(fixed=float(match_max_distance))
        self.path = Path(path)
        self.model_id = model_id
        self.threshold = match_max_distance
        self.strategy: MatchStrategy = strategy
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()
        self._snapshot: GallerySnapshot | None = None
        self._before_write: GallerySnapshot | None = None
        self._data_version = -1
        self._generation = 0  # counts snapshot replacements; a background reload from an older one is dropped
        self._reloader: threading.Thread | None = None
        self._reload_retry_at = 0.0
        self._closed = False
        self.background_reload = background_reload
        self._second_means: SecondMeans | _PendingSecondMeans | None = None
        self._seq = 0
        """The last change-log row the snapshot reflects."""
        self._behind = False
        """The snapshot may lack this process's own changes: the change log brings it up to date."""
        self._logged_seq = 0
        self.full_reads = 0
        """How often the whole file was read into a snapshot (the change log could not cover a change)."""
        self._remote = False
        self.read_only = read_only
        self._db = self._open_read_only() if read_only else self._open(create)

    def _connect_read_only(self, immutable: bool) -> sqlite3.Connection:
        from urllib.parse import quote

        option = "immutable=1" if immutable else "mode=ro"
        return sqlite3.connect(f"file:{quote(str(self.path.absolute()))}?{option}", uri=True,
                               timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)

    def _open_read_only(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise GalleryError(f"gallery path {self.path} is a folder; give a file name such as {self.path / 'gallery.db'}")
        if not self.path.exists():
            raise GalleryError(f"no gallery at {self.path}; enroll someone first or pass --gallery FILE")
        try:
            db = self._connect_read_only(immutable=False)
            try:
                version = _stored_version(db, self.path)
            except sqlite3.OperationalError:
                # A WAL file whose -shm cannot be created (read-only folder, no writer running): read
                # the file as it is. Nothing can change it meanwhile without write access anyway.
                db.close()
                db = self._connect_read_only(immutable=True)
                version = _stored_version(db, self.path)
        except GalleryError:
            raise
        except sqlite3.DatabaseError as error:
            raise GalleryError(f"cannot open gallery {self.path} read-only: {error} (is it an edgeface gallery?)") from None
        if version != SCHEMA_VERSION:
            db.close()
            newer = "a newer edgeface (upgrade edgeface)" if version > SCHEMA_VERSION else \
                "an older edgeface: open it once with write access to upgrade it (`edgeface gallery upgrade`)"
            raise GalleryVersionError(f"gallery {self.path} has schema version {version}, written by {newer}")
        return db

    def _open(self, create: bool) -> sqlite3.Connection:
        if self.path.is_dir():
            raise GalleryError(f"gallery path {self.path} is a folder; give a file name such as {self.path / 'gallery.db'}")
        if not self.path.exists():
            if not create:
                raise GalleryError(f"no gallery at {self.path}; enroll someone first or pass --gallery FILE")
            if not self.path.parent.is_dir():
                raise GalleryError(f"cannot create gallery {self.path}: folder {self.path.parent} does not exist")
            from edgeface.storage.fileperm import create_private_file

            try:
                create_private_file(self.path)  # 0600 before SQLite creates it (and its -wal, -shm) by the umask
            except OSError as error:
                raise GalleryError(f"cannot create gallery {self.path}: {error.strerror or error}") from None
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as error:
            raise GalleryError(f"cannot open gallery {self.path}: {error}") from None
        try:
            db.execute("PRAGMA foreign_keys = ON")
            version = _stored_version(db, self.path)
            if version > SCHEMA_VERSION:
                raise GalleryVersionError(f"gallery {self.path} has schema version {version}, written by a newer "
                                          f"edgeface (this one reads up to {SCHEMA_VERSION}); upgrade edgeface")
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")  # enrollments are rare; survive power cuts on SD cards
            if version < SCHEMA_VERSION:
                self._migrate(db)
        except GalleryError:
            db.close()
            raise
        except sqlite3.DatabaseError as error:
            db.close()
            raise GalleryError(f"cannot open gallery {self.path}: {error} (is it an edgeface gallery?)") from None
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        with transaction(db):
            version = _stored_version(db, self.path)  # another process may have migrated meanwhile
            apply_migrations(db, "schema_version", version, MIGRATIONS)
        if 0 < version < SCHEMA_VERSION:
            log.info("gallery %s upgraded from schema version %d to %d", self.path, version, SCHEMA_VERSION)

    @property
    def match_max_distance(self) -> float:
        """The match threshold now: the fixed one, or the one derived for the current number of identities."""
        if self.threshold.fixed is not None:
            return self.threshold.fixed
        return self.threshold.at(self.size())

    def size(self) -> int:
        """Identities searched (those with a template of this gallery's model)."""
        return len(self.snapshot())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            reloader = self._reloader
        if reloader is not None:
            reloader.join(timeout=30)
        with self._lock:
            self._db.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """A write transaction commits all or nothing; a read sees one committed state throughout."""
        with self._lock:
            try:
                if write:
                    self._logged_seq = 0
                with transaction(self._db, write) as db:
                    yield db
                if write:  # our own commits do not change data_version: _after_write updates the snapshot
                    self._before_write, self._snapshot = self._snapshot, None
                    self._generation += 1
            except sqlite3.OperationalError as error:
                if "locked" in str(error) or "busy" in str(error):
                    raise GalleryError(f"gallery {self.path} is busy: another process held it for more than "
                                       f"{self.busy_timeout_ms} ms; try again") from None
                raise GalleryError(f"gallery {self.path}: {error}") from None
            except sqlite3.DatabaseError as error:
                raise GalleryError(f"gallery {self.path} is damaged ({error}); restore it from an export") from None

    @staticmethod
    def _find_id(db: sqlite3.Connection, name: str) -> int | None:
        row = db.execute("SELECT id FROM identities WHERE name = ?", (_nfc(name),)).fetchone()
        return None if row is None else int(row[0])

    def _identity_id(self, db: sqlite3.Connection, name: str) -> int:
        identity_id = self._find_id(db, name)
        if identity_id is None:
            raise UnknownIdentityError(f"no identity named {name!r} in gallery {self.path}")
        return identity_id

    def _data_version_now(self) -> int:
        try:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as error:
            raise GalleryError(f"gallery {self.path}: {error}") from None

    def _after_write(self, update: Callable[[GallerySnapshot], GallerySnapshot] | None) -> None:
        """Apply this process's committed write to the snapshot in memory (call under self._lock,
        right after the write). When another process committed since the snapshot was read, or without
        an `update`, the snapshot is kept as it was and the next search applies the change log (both
        processes' changes) to it."""
        before, self._before_write = self._before_write, None
        if before is None or self._snapshot is not None:
            return
        if update is not None and not self._behind and self._data_version_now() == self._data_version:
            self._snapshot = update(before)
            self._seq = max(self._seq, self._logged_seq)
        else:
            self._snapshot, self._behind = before, True

    def _log(self, db: sqlite3.Connection, identity_id: int, kind: ChangeKind) -> None:
        """The change-log row of a change, in the change's own transaction."""
        cursor = db.execute("INSERT INTO changes (identity_id, kind, remote, at_ms) VALUES (?, ?, ?, ?)",
                            (identity_id, kind, int(self._remote), int(time.time() * 1000)))
        self._logged_seq = _row_id(cursor)

    def _insert_template(self, db: sqlite3.Connection, identity_id: int, vector: np.ndarray, quality: float,
                         source: str | None, created: str) -> int:
        return _row_id(db.execute(
            "INSERT INTO templates (identity_id, embedding, quality, source_sha256, created, model_id)"
            " VALUES (?, ?, ?, ?, ?, ?)", (identity_id, _to_blob(vector), quality, source, created, self.model_id),
        ))

    def _insert_negative(self, db: sqlite3.Connection, identity_id: int, vector: np.ndarray, created: str) -> int:
        return _row_id(db.execute("INSERT INTO negatives (identity_id, embedding, created, model_id) VALUES (?, ?, ?, ?)",
                              (identity_id, _to_blob(vector), created, self.model_id)))

    def _templates_of(self, db: sqlite3.Connection, identity_id: int) -> tuple[list[int], np.ndarray, set[str]]:
        rows = db.execute("SELECT id, embedding, source_sha256 FROM templates WHERE identity_id = ? AND model_id = ?"
                          " ORDER BY id", (identity_id, self.model_id)).fetchall()
        return [r[0] for r in rows], _stack([r[1] for r in rows], "a template"), {r[2] for r in rows if r[2]}

    # -- writes ------------------------------------------------------------------------------

    def add_templates(
        self,
        name: str,
        embeddings: np.ndarray,
        qualities: Sequence[float] | None = None,
        source_sha256s: Sequence[str | None] | None = None,
        *,
        create: bool = True,
        metadata: dict[str, Any] | None = None,
        second: Sequence[SecondTemplate | None] | None = None,
    ) -> list[int]:
        """Store templates for NAME in ONE transaction, creating the identity when `create` (metadata
        applies to a new identity), each with its second-model embedding and chip when `second` gives
        one. Returns the new template ids. Nothing is written on error."""
        name = validate_name(name)
        vectors = unit_rows(embeddings)
        count = len(vectors)
        qualities = [1.0] * count if qualities is None else [float(q) for q in qualities]
        sources = [None] * count if source_sha256s is None else [_check_sha256(s) for s in source_sha256s]
        if count == 0:
            raise GalleryError(f"no embeddings given for {name!r}; nothing was written")
        if len(qualities) != count or len(sources) != count:
            raise GalleryError(f"{count} embeddings but {len(qualities)} qualities and {len(sources)} source hashes")
        if not all(0.0 <= q <= 1.0 for q in qualities):
            raise GalleryError("template qualities must be in [0, 1]")
        seconds = [None] * count if second is None else [_checked_second(t) for t in second]
        if len(seconds) != count:
            raise GalleryError(f"{count} embeddings but {len(seconds)} second-model templates")
        encoded = _metadata_json(metadata or {})
        with self._lock:
            with self._transaction(write=True) as db:
                identity_id = self._find_id(db, name) if create else self._identity_id(db, name)
                if identity_id is None:
                    identity_id = _row_id(db.execute("INSERT INTO identities (name, created, metadata) VALUES (?, ?, ?)",
                                                     (name, _now(), encoded)))
                created = _now()
                ids = [self._insert_template(db, identity_id, v, q, s, created)
                       for v, q, s in zip(vectors, qualities, sources)]
                for template_id, extra in zip(ids, seconds):
                    if extra is not None:
                        _insert_second(db, template_id, extra)
                self._log(db, identity_id, "templates")

            def added(snapshot: GallerySnapshot) -> GallerySnapshot:
                old_ids, old_templates, negatives = snapshot.identity_rows(name)
                return snapshot.replaced(name, name, np.concatenate([old_ids, np.array(ids, np.int64)]),
                                         np.vstack([old_templates, vectors]), negatives, identity_id)

            self._after_write(added)
            return ids

    def add_identities(self, people: Sequence[tuple[str, np.ndarray]]) -> int:
        """Create new identities, each with its templates (name, (k, 128) embeddings), in ONE
        transaction; refused with nothing written when a name exists already. Returns the templates
        written. For bulk loads (benchmarks, imports of many people)."""
        checked = [(validate_name(name), unit_rows(vectors)) for name, vectors in people]
        if len({name for name, _ in checked}) != len(checked):
            raise GalleryError("the same name is given twice; nothing was written")
        with self._lock:
            with self._transaction(write=True) as db:
                created = _now()
                for name, vectors in checked:
                    if self._find_id(db, name) is not None:
                        raise DuplicateNameError(f"an identity named {name!r} already exists; nothing was written")
                    identity_id = _row_id(db.execute("INSERT INTO identities (name, created, metadata) VALUES (?, ?, '{}')",
                                                     (name, created)))
                    for vector in vectors:
                        self._insert_template(db, identity_id, vector, 1.0, None, created)
                    self._log(db, identity_id, "templates")
            self._after_write(None)
        return sum(len(v) for _, v in checked)

    def rename(self, old_name: str, new_name: str) -> None:
        new_name = validate_name(new_name)
        with self._lock:
            with self._transaction(write=True) as db:
                identity_id = self._identity_id(db, old_name)
                if new_name != _nfc(old_name) and self._find_id(db, new_name) is not None:
                    raise DuplicateNameError(f"cannot rename {old_name!r}: an identity named {new_name!r} already exists")
                db.execute("UPDATE identities SET name = ? WHERE id = ?", (new_name, identity_id))
                self._log(db, identity_id, "renamed")
            self._after_write(lambda snapshot: snapshot.replaced(_nfc(old_name), new_name,
                                                                 *snapshot.identity_rows(_nfc(old_name)), identity_id))

    def remove(self, name: str) -> None:
        """Delete the identity with its templates and negatives."""
        with self._lock:
            with self._transaction(write=True) as db:
                identity_id = self._identity_id(db, name)
                db.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
                self._log(db, identity_id, "removed")
            self._after_write(lambda snapshot: snapshot.replaced(_nfc(name), None, *snapshot.identity_rows(_nfc(name))))

    def reject_match(self, name: str, embedding: np.ndarray) -> int | None:
        """"This face was not NAME", in one transaction: the face is kept as a negative of NAME (a later
        probe nearer to it than to NAME's templates is not labelled NAME), and when exactly one of NAME's
        templates is below the match threshold from it and NAME has others, that template (a bad
        enrollment photo) is deleted. Returns the deleted template's id, or None."""
        vector = unit_rows(embedding)
        if len(vector) != 1:
            raise GalleryError(f"reject_match takes one embedding, got {len(vector)}")
        with self._lock:
            limit = self.match_max_distance
            with self._transaction(write=True) as db:
                identity_id = self._identity_id(db, name)
                ids, stored, _ = self._templates_of(db, identity_id)
                removed = None
                offending = np.flatnonzero(pairwise_distances(vector, stored)[0] < limit)
                if len(ids) > 1 and len(offending) == 1:
                    removed = ids[int(offending[0])]
                    db.execute("DELETE FROM templates WHERE id = ?", (removed,))
                    log.info("removed template %d of %r: it alone matched a face that was not them", removed, name)
                self._insert_negative(db, identity_id, vector[0], _now())
                self._log(db, identity_id, "rejected")

            def rejected(snapshot: GallerySnapshot) -> GallerySnapshot:
                key = _nfc(name)
                template_ids, templates, negatives = snapshot.identity_rows(key)
                keep = template_ids != removed
                return snapshot.replaced(key, key, template_ids[keep], templates[keep], np.vstack([negatives, vector]))

            self._after_write(rejected)
        return removed

    # -- the change log and the fleet's writes ---------------------------------------------------

    @contextmanager
    def remote_changes(self) -> Iterator[Gallery]:
        """Writes made inside are logged as remote (a fleet station applying another station's record,
        which it must not publish again as its own). Holds the gallery's lock throughout."""
        with self._lock:
            self._remote = True
            try:
                yield self
            finally:
                self._remote = False

    def changes_after(self, seq: int, limit: int = 1000) -> list[Change]:
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT seq, identity_id, kind, remote, at_ms FROM changes WHERE seq > ? ORDER BY seq"
                              " LIMIT ?", (seq, limit)).fetchall()
        return [Change(int(r[0]), int(r[1]), r[2], bool(r[3]), int(r[4])) for r in rows]

    def last_change(self) -> int:
        with self._transaction(write=False) as db:
            return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])

    def prune_changes(self, through_seq: int) -> None:
        """Drop the log rows up to `through_seq` (published by the fleet station; AUTOINCREMENT never
        reuses their numbers)."""
        with self._lock:
            if self._snapshot is not None:
                self.snapshot()  # apply the rows to be pruned first: a gap in the log means reading the whole file
            with self._transaction(write=True) as db:
                db.execute("DELETE FROM changes WHERE seq <= ?", (through_seq,))
            self._after_write(lambda snapshot: snapshot)  # no identity changed: the snapshot stays

    def identity_ids(self) -> dict[str, int]:
        with self._transaction(write=False) as db:
            return {name: int(iid) for iid, name in db.execute("SELECT id, name FROM identities")}

    def stored_person(self, identity_id: int) -> StoredPerson | None:
        """The identity with this id as stored, or None when it is gone."""
        with self._transaction(write=False) as db:
            row = db.execute("SELECT name FROM identities WHERE id = ?", (identity_id,)).fetchone()
            if row is None:
                return None
            templates = db.execute("SELECT id, embedding, quality, source_sha256, created FROM templates"
                                   " WHERE identity_id = ? AND model_id = ? ORDER BY id", (identity_id, self.model_id)).fetchall()
            negatives = db.execute("SELECT id, embedding, created FROM negatives WHERE identity_id = ? AND model_id = ?"
                                   " ORDER BY id", (identity_id, self.model_id)).fetchall()
            seconds = db.execute("SELECT s.template_id, s.model_id, s.model_version, s.embedding FROM second_embeddings s"
                                 " JOIN templates t ON t.id = s.template_id WHERE t.identity_id = ?", (identity_id,)).fetchall()
        return StoredPerson(identity_id, row[0],
                            tuple((int(t[0]), _from_blob(t[1], "a template"), float(t[2]), t[3], t[4]) for t in templates),
                            tuple((int(n[0]), _from_blob(n[1], "a negative"), n[2]) for n in negatives),
                            {int(r[0]): SecondTemplate(r[1], r[2], _from_blob(r[3], "a second-model embedding"))
                             for r in seconds})

    def apply_person(self, identity_id: int | None, name: str,
                     add_templates: Sequence[tuple[np.ndarray, float, str | None, str]],
                     drop_template_ids: Sequence[int], add_negatives: Sequence[tuple[np.ndarray, str]],
                     read_through: int | None = None, add_seconds: Sequence[SecondTemplate | None] = (),
                     seconds_of: Sequence[tuple[int, SecondTemplate]] = ()) -> int:
        """Bring one identity in line with a fleet record in ONE transaction: create it (identity_id
        None) or rename it to `name`, add templates (unit vector, quality, source sha256, created) and
        negatives (unit vector, created), drop templates by id. Returns the identity's id. Logged as
        remote inside `remote_changes()`. `add_seconds[i]`: the second-model embedding of add_templates[i]
        (or None); `seconds_of`: second-model embeddings for templates stored already (by id).
        `read_through`: the last change-log row the caller has read;
        a local change logged after it refuses the write (ChangesPendingError), so that a change made
        meanwhile by another process is never overwritten by a record computed without it."""
        name = validate_name(name)
        with self._lock:
            with self._transaction(write=True) as db:
                if read_through is not None and db.execute(
                        "SELECT 1 FROM changes WHERE seq > ? AND remote = 0 LIMIT 1", (read_through,)).fetchone():
                    raise ChangesPendingError(f"gallery {self.path} changed meanwhile; read its changes first")
                if identity_id is None:
                    if self._find_id(db, name) is not None:
                        raise DuplicateNameError(f"an identity named {name!r} already exists")
                    identity_id = _row_id(db.execute("INSERT INTO identities (name, created, metadata) VALUES (?, ?, '{}')",
                                                     (name, _now())))
                    self._log(db, identity_id, "templates")
                else:
                    current = db.execute("SELECT name FROM identities WHERE id = ?", (identity_id,)).fetchone()
                    if current is None:
                        raise UnknownIdentityError(f"identity {identity_id} is gone from gallery {self.path}")
                    if current[0] != name:
                        if self._find_id(db, name) is not None:
                            raise DuplicateNameError(f"an identity named {name!r} already exists")
                        db.execute("UPDATE identities SET name = ? WHERE id = ?", (name, identity_id))
                        self._log(db, identity_id, "renamed")
                extra = list(add_seconds) + [None] * (len(add_templates) - len(add_seconds))
                for (vector, quality, source, created), second in zip(add_templates, extra):
                    template_id = self._insert_template(db, identity_id, _unit(vector), quality, _check_sha256(source),
                                                        created)
                    if second is not None:
                        _insert_second(db, template_id, _checked_second(second))  # type: ignore[arg-type]
                for template_id, second in seconds_of:
                    _insert_second(db, template_id, _checked_second(second))  # type: ignore[arg-type]
                for template_id in drop_template_ids:
                    db.execute("DELETE FROM templates WHERE id = ? AND identity_id = ?", (template_id, identity_id))
                for vector, created in add_negatives:
                    self._insert_negative(db, identity_id, _unit(vector), created)
                if add_templates or drop_template_ids or add_negatives or seconds_of:
                    self._log(db, identity_id, "templates")
            self._after_write(None)  # the next search applies the logged rows
        return identity_id

    # -- reads -------------------------------------------------------------------------------

    def list_identities(self) -> list[IdentityInfo]:
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT i.name, i.created, i.metadata,"
                " (SELECT COUNT(*) FROM templates t WHERE t.identity_id = i.id),"
                " (SELECT COUNT(*) FROM negatives n WHERE n.identity_id = i.id)"
                " FROM identities i ORDER BY i.name").fetchall()
        return [IdentityInfo(r[0], r[1], json.loads(r[2]), int(r[3]), int(r[4])) for r in rows]

    def show(self, name: str) -> IdentityInfo:
        with self._transaction(write=False) as db:
            identity_id = self._identity_id(db, name)
            created, metadata = db.execute("SELECT created, metadata FROM identities WHERE id = ?", (identity_id,)).fetchone()
            templates = db.execute("SELECT t.id, t.quality, t.source_sha256, t.created, t.model_id,"
                                   " s.model_id || '/' || s.model_version FROM templates t"
                                   " LEFT JOIN second_embeddings s ON s.template_id = t.id"
                                   " WHERE t.identity_id = ? ORDER BY t.id", (identity_id,)).fetchall()
            negatives = db.execute("SELECT COUNT(*) FROM negatives WHERE identity_id = ?", (identity_id,)).fetchone()[0]
        infos = tuple(TemplateInfo(int(t[0]), float(t[1]), t[2], t[3], t[4], t[5]) for t in templates)
        return IdentityInfo(_nfc(name), created, json.loads(metadata), len(infos), int(negatives), infos)

    def source_hashes(self, among: Sequence[str] | None = None) -> dict[str, str]:
        """sha256 of every enrolled source file (or only of those `among` these) -> its identity."""
        query = ("SELECT t.source_sha256, i.name FROM templates t JOIN identities i ON i.id = t.identity_id"
                 " WHERE t.source_sha256 IS NOT NULL")
        wanted = [] if among is None else sorted(set(among))
        if among is not None:
            if not wanted:
                return {}
            query += f" AND t.source_sha256 IN ({', '.join('?' * len(wanted))})"
        with self._transaction(write=False) as db:
            rows = db.execute(query, wanted).fetchall()
        return dict(rows)

    # -- search ------------------------------------------------------------------------------

    def snapshot(self) -> GallerySnapshot:
        """The search structure, brought up to date when this or another process changed the file: from
        the change log when it covers the change, else by reading the whole file (on a thread with
        `background_reload`, the old snapshot answering meanwhile)."""
        with self._lock:
            version = self._data_version_now()
            stale = self._snapshot is not None and (version != self._data_version or self._behind)
            if stale and self._reloader is None and self._catch_up(version):
                return self._snapshot  # type: ignore[return-value]
            if stale and self.background_reload:
                self._start_reload(version)  # the old snapshot answers until the new one is ready
            elif self._snapshot is None or stale:
                with self._transaction(write=False) as db:
                    self._snapshot, self._seq = self._read_snapshot(db)
                self._data_version, self._behind = version, False
                self._generation += 1
                log.debug("gallery %s loaded: %d identities", self.path, len(self._snapshot))
            assert self._snapshot is not None
            return self._snapshot

    def _read_snapshot(self, db: sqlite3.Connection) -> tuple[GallerySnapshot, int]:
        """The search arrays from the file and the last change-log row they reflect (call inside a read
        transaction)."""
        self.full_reads += 1
        # SQLite's BINARY order of UTF-8 text is Python's order of str: rows come sorted as the snapshot needs
        templates = db.execute("SELECT i.name, t.id, t.embedding, t.identity_id FROM templates t JOIN identities i"
                               " ON i.id = t.identity_id WHERE t.model_id = ? ORDER BY i.name, t.id",
                               (self.model_id,)).fetchall()
        negatives = db.execute("SELECT i.name, n.embedding FROM negatives n JOIN identities i"
                               " ON i.id = n.identity_id WHERE n.model_id = ? ORDER BY n.id", (self.model_id,)).fetchall()
        other = db.execute("SELECT COUNT(*) FROM templates WHERE model_id != ?", (self.model_id,)).fetchone()[0]
        if other:
            log.warning("gallery %s: %d templates from another model than %s are ignored; re-enroll those people",
                        self.path, other, self.model_id)
        rows = _stack([t[2] for t in templates], "a template", max(int(len(templates) * LOAD_SPARE_ROWS), 64))
        snapshot = GallerySnapshot._from_sorted(
            [t[0] for t in templates], np.array([t[1] for t in templates], dtype=np.int64), rows,
            [n[0] for n in negatives], _stack([n[1] for n in negatives], "a negative"),
            np.array([t[3] for t in templates], dtype=np.int64),
            _RowBuffer(rows.base, len(rows)) if isinstance(rows.base, np.ndarray) else None)
        return snapshot, _log_top(db) or 0

    # -- another process's changes, from the change log ------------------------------------------

    def _catch_up(self, version: int) -> bool:
        """Apply the change-log rows after the snapshot's last one to it in place, each changed identity
        re-read by its id (call under self._lock). False when the log cannot cover the change: rows
        pruned before this process read them, a schema change, an unknown kind, too many rows. A change
        that copies whole arrays (a removal, new templates of someone searched already) in a large
        gallery with `background_reload` is applied on a thread instead, the old snapshot answering."""
        start = self._snapshot
        assert start is not None
        cached = self._second_means
        second_model = None if cached is None or cached.snapshot is not start else cached.base.model_id \
            if isinstance(cached, _PendingSecondMeans) else cached.model_id
        try:
            with self._transaction(write=False) as db:
                read = self._read_changes(db, second_model)
        except GalleryError as error:
            log.warning("gallery %s: cannot read its change log (%s); reading the whole file", self.path, error)
            return False
        if read is None:
            return False
        top, people = read
        if self.background_reload and len(start.templates) >= BACKGROUND_COPY_MIN_ROWS and \
                not all(_applies_without_copy(start, person) for person in people):
            self._start_apply(start, people, top, version, second_model)
            return True
        snapshot, edits = _applied(start, people)
        self._caught_up(start, snapshot, edits, top, version, second_model)
        return True

    def _caught_up(self, start: GallerySnapshot, snapshot: GallerySnapshot, edits: Sequence[_SecondEdit], top: int,
                   version: int, second_model: str | None) -> None:
        """Make `snapshot` (start with the log rows through `top` applied) the current one (under self._lock)."""
        cached = self._second_means
        if second_model is not None and cached is not None and cached.snapshot is start:
            self._second_means = _PendingSecondMeans(
                cached.base if isinstance(cached, _PendingSecondMeans) else cached, snapshot,
                (cached.edits if isinstance(cached, _PendingSecondMeans) else ()) + tuple(edits))
        if snapshot is not start:
            self._generation += 1
            self._build_scan(snapshot)
        self._snapshot, self._seq, self._data_version, self._behind = snapshot, top, version, False
        log.debug("gallery %s: change log applied through row %d", self.path, top)

    def _start_apply(self, start: GallerySnapshot, people: list[_ChangedPerson], top: int, version: int,
                     second_model: str | None) -> None:
        """_applied on a thread (call under self._lock); dropped like a reload when the station wrote meanwhile."""
        generation = self._generation

        def apply() -> None:
            result = None
            try:
                # appends then copy into buffers of their own, never into spare rows the current snapshot shares
                result = _applied(dataclasses.replace(start, _buffer=None, _scan=[s.detached() for s in start._scan]),
                                  people)
                self._build_scan(result[0])
            except GalleryError as error:
                log.warning("gallery %s: cannot apply its change log (%s); reading the whole file", self.path, error)
            with self._lock:
                self._reloader = None
                if result is None:
                    self._start_reload(version)
                elif generation == self._generation and not self._closed:
                    self._caught_up(start, *result, top, version, second_model)

        self._reloader = threading.Thread(target=apply, name="gallery-apply", daemon=True)
        self._reloader.start()

    def _read_changes(self, db: sqlite3.Connection, second_model: str | None) -> tuple[int, list[_ChangedPerson]] | None:
        """(the last log row, every identity named by the rows after self._seq as stored now), or None
        when the log does not hold every row after self._seq (call inside a read transaction)."""
        if _stored_version(db, self.path) != SCHEMA_VERSION:
            return None
        top = _log_top(db)
        if top is None or top < self._seq or top - self._seq > CATCH_UP_MAX_CHANGES:
            return None
        rows = db.execute("SELECT seq, identity_id, kind FROM changes WHERE seq > ? ORDER BY seq", (self._seq,)).fetchall()
        # AUTOINCREMENT numbers committed rows without gaps: a missing number is a pruned row
        if [int(r[0]) for r in rows] != list(range(self._seq + 1, top + 1)) or any(r[2] not in CHANGE_KINDS for r in rows):
            return None
        return top, [self._read_person(db, identity_id, second_model)
                     for identity_id in dict.fromkeys(int(r[1]) for r in rows)]

    def _read_person(self, db: sqlite3.Connection, identity_id: int, second_model: str | None) -> _ChangedPerson:
        row = db.execute("SELECT name FROM identities WHERE id = ?", (identity_id,)).fetchone()
        templates = db.execute("SELECT id, embedding FROM templates WHERE identity_id = ? AND model_id = ? ORDER BY id",
                               (identity_id, self.model_id)).fetchall()
        negatives = db.execute("SELECT embedding FROM negatives WHERE identity_id = ? AND model_id = ? ORDER BY id",
                               (identity_id, self.model_id)).fetchall()
        second_mean = None
        if second_model is not None:
            seconds = db.execute("SELECT s.embedding FROM second_embeddings s JOIN templates t ON t.id = s.template_id"
                                 " WHERE t.identity_id = ? AND s.model_id = ? AND t.model_id = ? ORDER BY s.template_id",
                                 (identity_id, second_model, self.model_id)).fetchall()
            second_mean = _second_means_of(_stack([r[0] for r in seconds], "a second-model embedding"),
                                           np.zeros(len(seconds), np.int64), 1)[0]
        return _ChangedPerson(identity_id, None if row is None else row[0],
                              np.array([t[0] for t in templates], np.int64), _stack([t[1] for t in templates], "a template"),
                              _stack([n[0] for n in negatives], "a negative"), second_mean)

    def _build_scan(self, snapshot: GallerySnapshot) -> None:
        """The int8 scan of a snapshot this gallery's search will scan, built now rather than on the
        camera loop's first search."""
        if len(snapshot) >= SCAN_MIN_ROWS and self.strategy == "mean":
            snapshot.mean_scan()

    def _start_reload(self, version: int) -> None:
        """Read the file again on a thread with its own connection (call under self._lock); at most one."""
        if self._reloader is not None or self._closed or time.monotonic() < self._reload_retry_at:
            return
        generation = self._generation

        def reload() -> None:
            fresh = None
            seq = 0
            try:
                db = self._connect_read_only(immutable=False)
                try:
                    db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                    with transaction(db, write=False):
                        fresh, seq = self._read_snapshot(db)
                finally:
                    db.close()
                self._build_scan(fresh)
            except (sqlite3.Error, GalleryError) as error:
                log.warning("gallery %s: background reload failed (%s); retrying in %g s", self.path, error,
                            RELOAD_RETRY_S)
            with self._lock:
                self._reloader = None
                if fresh is None:
                    self._reload_retry_at = time.monotonic() + RELOAD_RETRY_S
                if fresh is not None and generation == self._generation and not self._closed:
                    self._snapshot, self._data_version, self._seq, self._behind = fresh, version, seq, False
                    self._generation += 1
                    log.debug("gallery %s reloaded in the background: %d identities", self.path, len(fresh))

        self._reloader = threading.Thread(target=reload, name="gallery-reload", daemon=True)
        self._reloader.start()

    def match(self, embeddings: np.ndarray, max_distance: float | None = None) -> list[Match]:
        """One Match per row of embeddings (n, 128): a name, or None (unknown), and the distance."""
        snapshot = self.snapshot()
        limit = self.threshold.at(len(snapshot)) if max_distance is None else max_distance
        return snapshot.match(embeddings, limit, self.strategy)

    # -- the second opinion ------------------------------------------------------------------

    def second_means(self, model_id: str) -> SecondMeans:
        """Per identity of the current snapshot, the mean of its second-model (model_id) embeddings;
        recomputed only when the snapshot changed."""
        with self._lock:
            snapshot = self.snapshot()
            cached = self._second_means
            if isinstance(cached, _PendingSecondMeans) and cached.snapshot is snapshot and cached.base.model_id == model_id:
                self._second_means = cached = cached.replayed()  # the change log's edits, not a re-read
            if isinstance(cached, SecondMeans) and cached.snapshot is snapshot and cached.model_id == model_id:
                return cached
            with self._transaction(write=False) as db:
                rows = db.execute("SELECT i.name, s.embedding FROM second_embeddings s JOIN templates t"
                                  " ON t.id = s.template_id JOIN identities i ON i.id = t.identity_id"
                                  " WHERE s.model_id = ? AND t.model_id = ? ORDER BY s.template_id",
                                  (model_id, self.model_id)).fetchall()
            index = {name: k for k, name in enumerate(snapshot.names)}
            owners = np.array([index.get(name, -1) for name, _ in rows], np.int64)
            known = owners >= 0
            vectors = _stack([blob for (_, blob), ok in zip(rows, known) if ok], "a second-model embedding")
            means = _second_means_of(vectors, owners[known], len(snapshot.names))
            self._second_means = SecondMeans(snapshot, model_id, means, int((~np.isnan(means[:, 0])).sum()))
            return self._second_means

    def templates_without_second(self, model_id: str) -> list[MissingSecond]:
        """Every template of this gallery's model without a `model_id` embedding, with its stored chip."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT i.name, t.id, c.kind, c.chip, t.source_sha256 FROM templates t"
                " JOIN identities i ON i.id = t.identity_id"
                " LEFT JOIN template_chips c ON c.template_id = t.id"
                " WHERE t.model_id = ? AND NOT EXISTS (SELECT 1 FROM second_embeddings s"
                " WHERE s.template_id = t.id AND s.model_id = ?) ORDER BY i.name, t.id",
                (self.model_id, model_id)).fetchall()
        out = []
        for name, template_id, kind, blob, source in rows:
            chip = None
            if kind == SECOND_CHIP_KIND and blob is not None and len(blob) == int(np.prod(SECOND_CHIP_SHAPE)):
                chip = np.frombuffer(blob, np.uint8).reshape(SECOND_CHIP_SHAPE).copy()
            out.append(MissingSecond(name, int(template_id), chip, source))
        return out

    def add_second_embeddings(self, templates: Sequence[tuple[int, SecondTemplate]]) -> int:
        """Store second-model embeddings of existing templates (by id) in ONE transaction; returns how many."""
        checked = [(int(i), _checked_second(t)) for i, t in templates]
        with self._lock:
            with self._transaction(write=True) as db:
                for template_id, template in checked:
                    if db.execute("SELECT 1 FROM templates WHERE id = ?", (template_id,)).fetchone() is None:
                        raise GalleryError(f"no template {template_id} in gallery {self.path}; nothing was written")
                    assert template is not None
                    _insert_second(db, template_id, template)
                identities = db.execute(f"SELECT DISTINCT identity_id FROM templates WHERE id IN ({', '.join('?' * len(checked))})",
                                        [i for i, _ in checked]).fetchall() if checked else []
                for (identity_id,) in identities:
                    self._log(db, int(identity_id), "templates")
            self._after_write(lambda snapshot: dataclasses.replace(snapshot, _limit_cache={}))
        return len(checked)

    # -- export / import ---------------------------------------------------------------------

    def export_to(self, path: str | Path) -> tuple[int, int]:
        """Write every identity with its templates and negatives of this gallery's model (embeddings
        and metadata only, never photos) as versioned JSON, replacing `path` atomically.
        Returns (identities, templates)."""
        path = Path(path)
        records: dict[int, _IdentityRecord] = {}
        with self._transaction(write=False) as db:
            for iid, name, created, metadata in db.execute("SELECT id, name, created, metadata FROM identities ORDER BY name"):
                records[iid] = _IdentityRecord(name=name, created=created, metadata=json.loads(metadata))
            for iid, blob, quality, source, created, second_model, second_version, second_blob in db.execute(
                    "SELECT t.identity_id, t.embedding, t.quality, t.source_sha256, t.created, s.model_id,"
                    " s.model_version, s.embedding FROM templates t LEFT JOIN second_embeddings s ON s.template_id = t.id"
                    " WHERE t.model_id = ? ORDER BY t.id", (self.model_id,)):
                second = None if second_blob is None else _SecondRecord(
                    model_id=second_model, model_version=second_version,
                    embedding_f32le_b64=_encode(_from_blob(second_blob, "a second-model embedding")))
                records[iid].templates.append(_TemplateRecord(embedding_f32le_b64=_encode(_from_blob(blob, "a template")),
                                                              quality=quality, source_sha256=source, created=created,
                                                              second=second))
            for iid, blob, created in db.execute("SELECT identity_id, embedding, created FROM negatives"
                                                 " WHERE model_id = ? ORDER BY id", (self.model_id,)):
                records[iid].negatives.append(_NegativeRecord(embedding_f32le_b64=_encode(_from_blob(blob, "a negative")),
                                                              created=created))
        document = _ExportFile(format=EXPORT_FORMAT, format_version=EXPORT_FORMAT_VERSION, model_id=self.model_id,
                               dim=EMBEDDING_DIM, exported=_now(), identities=list(records.values()))
        from edgeface.storage.fileperm import write_private_file

        try:
            write_private_file(path, document.model_dump_json(indent=1).encode("utf-8"))  # templates: 0600
        except OSError as error:
            raise GalleryError(f"cannot write {path}: {error.strerror or error}") from None
        return len(records), sum(len(r.templates) for r in records.values())

    def import_from(self, path: str | Path) -> ImportReport:
        """Add an export file's identities in ONE transaction; an existing name is merged (templates it
        already has are skipped). Refused, with nothing written, when the file was made by another
        model or a newer edgeface, or holds a bad name or embedding."""
        path = Path(path)
        document = _read_export(path)
        if document.model_id != self.model_id or document.dim != EMBEDDING_DIM:
            raise ModelMismatchError(
                f"{path} holds embeddings from model {document.model_id!r} ({document.dim}-d) but this gallery uses "
                f"{self.model_id!r} ({EMBEDDING_DIM}-d); embeddings of different models cannot be compared: "
                "re-enroll from the photos instead")
        incoming = []
        for record in document.identities:
            name = validate_name(record.name)
            where = f"{path}: {name!r}"
            for t in record.templates:
                _check_sha256(t.source_sha256)
                if t.second is not None:
                    _decode(t.second.embedding_f32le_b64, f"{where} second-model embedding")
            incoming.append((name, record,
                             [(_decode(t.embedding_f32le_b64, f"{where} template {j}"), t) for j, t in enumerate(record.templates)],
                             [(_decode(n.embedding_f32le_b64, f"{where} negative {j}"), n) for j, n in enumerate(record.negatives)]))
        if len({name for name, *_ in incoming}) != len(incoming):
            raise GalleryError(f"{path} lists the same name twice; nothing was imported")
        created = merged = added = skipped = negatives_added = 0
        with self._lock:
            with self._transaction(write=True) as db:
                for name, record, templates, negatives in incoming:
                    identity_id = self._find_id(db, name)
                    if identity_id is None:
                        identity_id = _row_id(db.execute("INSERT INTO identities (name, created, metadata) VALUES (?, ?, ?)",
                                                     (name, record.created, _metadata_json(record.metadata))))
                        created += 1
                    else:
                        merged += 1
                    _, have, have_sources = self._templates_of(db, identity_id)
                    have_negatives = _stack([r[0] for r in db.execute(
                        "SELECT embedding FROM negatives WHERE identity_id = ? AND model_id = ?",
                        (identity_id, self.model_id))], "a negative")
                    for vector, t in templates:
                        if (t.source_sha256 and t.source_sha256 in have_sources) or \
                                (len(have) and pairwise_distances(vector[None], have).min() <= SAME_TEMPLATE_MAX_DISTANCE):
                            skipped += 1
                            continue
                        template_id = self._insert_template(db, identity_id, vector, t.quality, t.source_sha256, t.created)
                        if t.second is not None:
                            _insert_second(db, template_id, SecondTemplate(
                                t.second.model_id, t.second.model_version,
                                _decode(t.second.embedding_f32le_b64, f"{path}: {name!r} second-model embedding")))
                        have = np.vstack([have, vector[None]])
                        have_sources.add(t.source_sha256 or "")
                        added += 1
                    for vector, n in negatives:
                        if len(have_negatives) and pairwise_distances(vector[None], have_negatives).min() <= SAME_TEMPLATE_MAX_DISTANCE:
                            continue
                        self._insert_negative(db, identity_id, vector, n.created)
                        have_negatives = np.vstack([have_negatives, vector[None]])
                        negatives_added += 1
                    self._log(db, identity_id, "templates")
            self._after_write(None)
        return ImportReport(created, merged, added, skipped, negatives_added)
