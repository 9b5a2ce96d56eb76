"""Fleet change records: what one station tells the others about a person, how two versions merge, and
where a station keeps the fleet's view of its gallery (docs/fleet.md).

A person's record is their whole state, not an operation: the name (a register with the hybrid
logical clock of its last change), the templates and negatives as embeddings (never images; each
template a list of (model id, vector) pairs, so a second embedder's vector travels with the first),
the ids of templates removed by a "not X" report, and, once forgotten, only a tombstone.
`merge` is a join: commutative, associative and idempotent, so stations that saw the same records in
any order, any number of times, hold the same state.

The merge rule, per person id:
- forgotten wins: a tombstone on either side makes the result a tombstone (no name, no embeddings),
  whatever the other side changed, before or after; a forgotten person never comes back from a
  stale station. Enrolling the name again makes a new person id.
- the name with the later clock wins (equal clocks: the greater name);
- templates and negatives are unions; a template removed anywhere stays removed.
Two live people claiming one name: the one that claimed it first (earlier name clock, then smaller
id) keeps it; the other is shown as "name (id[:6])" until someone renames or forgets one of them
(`display_names`).

Records are signed with the fleet's shared key (HMAC-SHA256 over the canonical JSON); anything
unsigned or wrongly signed is refused by `open_envelope`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.errors import EdgefaceError, GalleryError
from edgeface.storage.gallery import validate_name
from edgeface.storage.sqlite import apply_migrations, transaction

RECORD_VERSION = 1
MAX_NAME_CHARS = 64


class RecordError(EdgefaceError):
    """A record that is not ours to apply: unsigned, wrongly signed, malformed, another group's."""


# -- hybrid logical clock ------------------------------------------------------------------------


class Clock:
    """A hybrid logical clock: "<13-digit ms>.<5-digit counter>.<station>", ordered as text. It never
    runs backwards and moves past every clock it receives, so a change made after seeing another
    one is later than it, whatever the wall clocks say."""

    def __init__(self, station: str, last: str = "", wall_ms: Any = None) -> None:
        self.station = station
        self._ms, self._counter = _parts(last) if last else (0, 0)
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._lock = threading.Lock()

    def now(self, at_ms: int | None = None) -> str:
        """A new stamp, later than every one before; `at_ms`: when the change was made, if not now."""
        with self._lock:
            wall = int(self._wall_ms()) if at_ms is None else int(at_ms)
            if wall > self._ms:
                self._ms, self._counter = wall, 0
            else:
                self._counter += 1
            return f"{self._ms:013d}.{self._counter:05d}.{self.station}"

    def observe(self, stamp: str) -> None:
        with self._lock:
            ms, counter = _parts(stamp)
            if (ms, counter) > (self._ms, self._counter):
                self._ms, self._counter = ms, counter

    @property
    def last(self) -> str:
        return f"{self._ms:013d}.{self._counter:05d}.{self.station}"


def _parts(stamp: str) -> tuple[int, int]:
    try:
        ms, counter, _ = stamp.split(".", 2)
        if len(ms) != 13 or len(counter) != 5:
            raise ValueError
        return int(ms), int(counter)
    except ValueError:
        raise RecordError(f"bad clock {stamp[:40]!r}") from None


# -- embeddings on the wire ----------------------------------------------------------------------


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise RecordError("an embedding is not base64") from None
    if not raw or len(raw) % 4:
        raise RecordError("an embedding has a length that is not whole float32s")
    vector = np.frombuffer(raw, "<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        raise RecordError("an embedding holds a non-finite number")
    return vector


def content_id(vector: np.ndarray) -> str:
    """The id of a template or negative: a digest of its (unit, float32) vector, the same on every station."""
    return hashlib.sha256(np.asarray(vector, "<f4").tobytes()).hexdigest()[:32]


def person_id(key: bytes, name: str, incarnation: int) -> str:
    """The id a newly enrolled name gets: the same at two stations that enroll it independently (so
    their templates join), a new one after it was forgotten (incarnation + 1). Keyed, so a tombstone
    does not reveal the name to someone without the fleet's key."""
    return hmac.new(key, f"person:{name}:{incarnation}".encode(), hashlib.sha256).hexdigest()[:24]


# -- a person's state --------------------------------------------------------------------------


@dataclass(frozen=True)
class Face:
    """A template or a negative: its clock, vectors by model id, and (templates) quality, source, created."""

    hlc: str
    vectors: dict[str, str]
    quality: float = 1.0
    source_sha256: str | None = None
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"hlc": self.hlc, "vectors": [{"model": m, "f32": v} for m, v in sorted(self.vectors.items())],
                "quality": self.quality, "source_sha256": self.source_sha256, "created": self.created}

    @staticmethod
    def from_json(data: Any) -> Face:
        if not isinstance(data, dict) or not isinstance(data.get("vectors"), list) or not data["vectors"]:
            raise RecordError("a template or negative has no vectors")
        vectors = {}
        for item in data["vectors"]:
            if not isinstance(item, dict) or not isinstance(item.get("model"), str) or not isinstance(item.get("f32"), str):
                raise RecordError("a vector needs a model id and f32 text")
            decode_vector(item["f32"])
            vectors[item["model"]] = item["f32"]
        quality = data.get("quality", 1.0)
        if not isinstance(quality, (int, float)) or not 0.0 <= quality <= 1.0:
            raise RecordError("a template quality is not in [0, 1]")
        source = data.get("source_sha256")
        if source is not None and not (isinstance(source, str) and len(source) == 64):
            raise RecordError("a template source hash is not a sha256")
        _parts(str(data.get("hlc", "")))
        return Face(str(data["hlc"]), vectors, float(quality), source, str(data.get("created", "")))


def _join_faces(a: Face, b: Face) -> Face:
    first, second = (a, b) if (a.hlc, json.dumps(a.to_json(), sort_keys=True)) <= \
        (b.hlc, json.dumps(b.to_json(), sort_keys=True)) else (b, a)
    return replace(first, vectors={**second.vectors, **first.vectors})


@dataclass(frozen=True)
class PersonState:
    pid: str
    name: str | None
    name_hlc: str
    deleted: str | None = None
    templates: dict[str, Face] = field(default_factory=dict)
    removed: frozenset[str] = frozenset()
    negatives: dict[str, Face] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """The latest clock in the record."""
        return max([self.name_hlc, self.deleted or "", *(f.hlc for f in self.templates.values()),
                    *(f.hlc for f in self.negatives.values())])

    def to_json(self) -> dict[str, Any]:
        if self.deleted is not None:
            return {"pid": self.pid, "deleted": self.deleted}
        return {"pid": self.pid, "name": self.name, "name_hlc": self.name_hlc, "deleted": None,
                "templates": {k: v.to_json() for k, v in sorted(self.templates.items())},
                "removed": sorted(self.removed),
                "negatives": {k: v.to_json() for k, v in sorted(self.negatives.items())}}

    def canonical(self) -> bytes:
        return canonical(self.to_json())

    @staticmethod
    def from_json(data: Any) -> PersonState:
        if not isinstance(data, dict) or not isinstance(data.get("pid"), str) or not 8 <= len(data["pid"]) <= 64:
            raise RecordError("a person record has no valid pid")
        pid = data["pid"]
        if data.get("deleted") is not None:
            _parts(str(data["deleted"]))
            return tombstone(pid, str(data["deleted"]))
        try:
            name = validate_name(data.get("name"))
        except GalleryError as error:
            raise RecordError(f"a person record's name: {error}") from None
        if name != data.get("name"):
            raise RecordError("a person record's name is not in NFC form")
        _parts(str(data.get("name_hlc", "")))
        templates, negatives, removed = data.get("templates", {}), data.get("negatives", {}), data.get("removed", [])
        if not isinstance(templates, dict) or not isinstance(negatives, dict) or not isinstance(removed, list):
            raise RecordError("a person record's templates, negatives or removed are malformed")
        return PersonState(pid, name, str(data["name_hlc"]), None,
                           {str(k): Face.from_json(v) for k, v in templates.items()},
                           frozenset(str(r) for r in removed),
                           {str(k): Face.from_json(v) for k, v in negatives.items()})


def tombstone(pid: str, hlc: str) -> PersonState:
    return PersonState(pid, None, "", hlc)


def merge(a: PersonState, b: PersonState) -> PersonState:
    """The join of two versions of one person (the module docstring's rule)."""
    if a.pid != b.pid:
        raise ValueError("merge of two different people")
    if a.deleted is not None or b.deleted is not None:
        return tombstone(a.pid, max(a.deleted or "", b.deleted or ""))
    name, name_hlc = max((a.name_hlc, a.name or ""), (b.name_hlc, b.name or ""))[::-1]
    removed = a.removed | b.removed
    templates = dict(a.templates)
    for tid, face in b.templates.items():
        templates[tid] = _join_faces(templates[tid], face) if tid in templates else face
    negatives = dict(a.negatives)
    for nid, face in b.negatives.items():
        negatives[nid] = _join_faces(negatives[nid], face) if nid in negatives else face
    return PersonState(a.pid, name, name_hlc, None, {k: v for k, v in templates.items() if k not in removed},
                       frozenset(removed), negatives)


def display_names(states: Iterable[PersonState]) -> dict[str, str]:
    """pid -> the name its identity has in every gallery: its own, unless another live person
    claimed that name first; then "name (pid[:6])"."""
    claims: dict[str, list[PersonState]] = {}
    for state in states:
        if state.deleted is None and state.name is not None:
            claims.setdefault(state.name, []).append(state)
    names = {}
    for name, people in claims.items():
        people.sort(key=lambda s: (s.name_hlc, s.pid))
        names[people[0].pid] = name
        for other in people[1:]:
            suffix = f" ({other.pid[:6]})"
            names[other.pid] = name[:MAX_NAME_CHARS - len(suffix)].rstrip() + suffix
    return names


# -- signed envelopes --------------------------------------------------------------------------


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def seal(key: bytes, body: dict[str, Any]) -> bytes:
    """body + "sig": HMAC-SHA256 of the canonical body with the fleet key."""
    signature = hmac.new(key, canonical(body), hashlib.sha256).hexdigest()
    return canonical({**body, "sig": signature})


def open_envelope(key: bytes, payload: bytes, group: str) -> dict[str, Any]:
    """The body of a sealed record of this group, or RecordError (unsigned, wrongly signed, malformed)."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise RecordError("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("sig"), str):
        raise RecordError("unsigned")
    signature = data.pop("sig")
    expected = hmac.new(key, canonical(data), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        raise RecordError("wrongly signed")
    if data.get("group") != group or data.get("v") != RECORD_VERSION:
        raise RecordError("another group's or another version's record")
    return data


# -- the fleet's view, kept in the gallery file ------------------------------------------------------


def _fleet_0_to_1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE fleet_schema_version (version INTEGER NOT NULL)")
    db.execute("CREATE TABLE fleet_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE TABLE fleet_people (pid TEXT PRIMARY KEY, identity_id INTEGER UNIQUE, state TEXT NOT NULL)")


FLEET_MIGRATIONS = (_fleet_0_to_1,)


class FleetState:
    """Every person the fleet knows (live or forgotten) with the local identity it maps to, plus
    small settings (`meta`): the clock, the last change-log row published. Own tables (prefix
    `fleet_`) in the gallery file, own connection."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        # NORMAL: a power cut may lose the last commits, which only makes this view older than the
        # gallery (never ahead of it); the broker's retained records and the next sync fill it in again
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._lock = threading.RLock()
        with self.transaction() as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = 0
            if "fleet_schema_version" in tables:
                version = int(db.execute("SELECT MAX(version) FROM fleet_schema_version").fetchone()[0] or 0)
            apply_migrations(db, "fleet_schema_version", version, FLEET_MIGRATIONS)
        self.people: dict[str, PersonState] = {}
        self.identity_of: dict[str, int] = {}
        self._pid_of: dict[int, str] = {}
        for pid, identity_id, state in self._db.execute("SELECT pid, identity_id, state FROM fleet_people"):
            self.people[pid] = PersonState.from_json(json.loads(state))
            if identity_id is not None:
                self.identity_of[pid] = int(identity_id)
                self._pid_of[int(identity_id)] = pid

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._db) as db:
            yield db

    def meta(self, key: str, default: str = "") -> str:
        with self._lock:
            row = self._db.execute("SELECT value FROM fleet_meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO fleet_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                       (key, value, value))

    def pid_of(self, identity_id: int) -> str | None:
        return self._pid_of.get(identity_id)

    def save(self, state: PersonState, identity_id: int | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE fleet_people SET identity_id = NULL WHERE identity_id = ? AND pid != ?",
                       (identity_id, state.pid))
            db.execute("INSERT INTO fleet_people (pid, identity_id, state) VALUES (?, ?, ?) ON CONFLICT(pid) DO UPDATE"
                       " SET identity_id = excluded.identity_id, state = excluded.state",
                       (state.pid, identity_id, state.canonical().decode("utf-8")))
        self.people[state.pid] = state
        previous = self.identity_of.pop(state.pid, None)
        if previous is not None:
            self._pid_of.pop(previous, None)
        if identity_id is not None:
            other = self._pid_of.get(identity_id)
            if other is not None:
                del self.identity_of[other]
            self.identity_of[state.pid] = identity_id
            self._pid_of[identity_id] = state.pid

    def close(self) -> None:
        with self._lock:
            self._db.close()
