"""On-disk outbox for MQTT messages: a message is stored before it is sent, deleted after PUBACK.

A single SQLite file in WAL mode. Rows are ordered by ``seq`` (AUTOINCREMENT: never reused, so
order survives restarts and deletions). Committed rows survive a crash or ``kill -9`` of the
process with either ``synchronous`` setting; the default ``"FULL"`` also survives a power cut (one
fsync per put and per ack batch: about 1,000 puts/s on a desktop SSD, far more than a station
produces). ``"NORMAL"`` skips the fsync (about 40x faster) at the price of the last transactions
on power loss.

Bounded: at most ``max_rows`` rows. Policy when full: the OLDEST NON-RETAINED rows are dropped to
make room for the new one (a fresh "who is here" beats a stale one; retained rows such as Home
Assistant discovery configs are kept). Only when every row is retained is the oldest retained row
dropped. Every dropped row is counted in a persistent counter (``dropped``), reported in Stats.

Small on disk: the file is capped at ``max_bytes`` (the oldest non-retained rows make room, counted
as dropped, like a full outbox), its write-ahead log is checkpointed every ``WAL_AUTOCHECKPOINT_PAGES``
pages and whenever the outbox has been delivered, and kept to at most ``WAL_MAX_BYTES`` after a
checkpoint (SQLite's default lets it grow to about 4 MB first).

A write that fails (a full disk, an I/O error) raises :class:`OutboxWriteError`: nothing already in
the outbox is lost, and the caller (``MqttPublisher``) keeps the message in memory and retries.

The file is created 0600 (its folder 0700) and opened in exclusive locking mode: one process owns an
outbox; a second opener gets a ConfigError instead of silently sharing it. Thread-safe within the
owning process.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgeface.errors import ConfigError, EdgefaceError
from edgeface.storage.sqlite import transaction

log = logging.getLogger(__name__)

WAL_AUTOCHECKPOINT_PAGES = 64
"""Checkpoint the write-ahead log every 64 pages (256 KiB with 4 KiB pages; SQLite's default is 1000)."""

WAL_MAX_BYTES = 512 * 1024
"""After a checkpoint the write-ahead log file is cut back to this size (kept, not deleted: on a full
disk, its already allocated space still takes new events)."""


class OutboxWriteError(EdgefaceError):
    """The outbox file could not be written (full disk, I/O error); nothing stored was lost."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    topic     TEXT    NOT NULL,
    payload   BLOB    NOT NULL,
    qos       INTEGER NOT NULL,
    retain    INTEGER NOT NULL,
    created_s REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_retain_seq ON outbox (retain, seq);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('dropped', 0);
"""
_USER_VERSION = 1


@dataclass(frozen=True)
class OutboxRow:
    """One stored message."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_s: float


class Outbox:
    """Persistent FIFO of MQTT messages; see the module docstring for guarantees and policy."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_rows: int = 100_000,
        synchronous: Literal["NORMAL", "FULL"] = "FULL",
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if max_rows < 1:
            raise ConfigError(f"outbox max_rows must be at least 1, got {max_rows}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"outbox synchronous must be NORMAL or FULL, got {synchronous!r}")
        if max_bytes < 2 * WAL_MAX_BYTES:
            raise ConfigError(f"outbox max_bytes must be at least {2 * WAL_MAX_BYTES}, got {max_bytes}")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._full = False
        try:
            from edgeface.storage.fileperm import create_private_file

            create_private_file(self.path)
            db = sqlite3.connect(
                str(self.path), timeout=1.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"{self.path}: cannot open the outbox ({error}); check the path and permissions") from None
        self._db: sqlite3.Connection | None = db
        try:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(f"{self.path}: the outbox needs WAL journaling, the file system gave {mode!r}")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_MAX_BYTES}")
            self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            self._max_pages = max(16, (max_bytes - WAL_MAX_BYTES) // self._page_size)
            db.execute(f"PRAGMA max_page_count={self._max_pages}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _USER_VERSION):
                raise ConfigError(f"{self.path}: outbox format {version} is newer than this edgeface; upgrade or move it away")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={_USER_VERSION}")
            self._count: int = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.OperationalError as error:
            db.close()
            if "locked" in str(error):
                raise ConfigError(f"{self.path}: the outbox is in use by another process; give each station its own outbox_path") from None
            raise ConfigError(f"{self.path}: cannot use the outbox ({error})") from None
        except sqlite3.DatabaseError as error:
            db.close()
            raise ConfigError(f"{self.path}: not a usable outbox ({error}); move the file away and restart") from None
        except ConfigError:
            db.close()
            raise

    # ------------------------------------------------------------------------------------ writing

    def put(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> int:
        """Store one message durably (committed before returning); return its sequence number."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        with self._lock:
            db = self._conn()
            dropped = 0
            try:
                cursor, dropped = self._insert(db, (topic, payload, qos, int(bool(retain)), time.time()))
            except sqlite3.Error as error:
                raise OutboxWriteError(f"cannot write to the outbox {self.path} ({error})") from None
            self._count += 1 - dropped
            seq = int(cursor.lastrowid or 0)
            if dropped and not self._full:
                log.warning(
                    "outbox %s is full (%d messages or %.0f MiB): dropping the oldest events until the broker is "
                    "reachable", self.path, self.max_rows, self.max_bytes / 2**20,
                )
            self._full = self._count >= self.max_rows
            return seq

    def _insert(self, db: sqlite3.Connection, row: tuple[object, ...]) -> tuple[sqlite3.Cursor, int]:
        """INSERT one row, dropping the oldest to stay within max_rows and, when the file reaches
        max_bytes, more of them until the row fits. Returns (cursor, rows dropped)."""
        dropped = 0
        while True:
            try:
                with transaction(db):
                    excess = self._count - dropped + 1 - self.max_rows
                    if excess > 0:
                        dropped += self._drop_oldest(db, excess)
                    cursor = db.execute(
                        "INSERT INTO outbox (topic, payload, qos, retain, created_s) VALUES (?, ?, ?, ?, ?)", row)
                return cursor, dropped
            except sqlite3.OperationalError as error:
                needed = (len(row[1]) + len(row[0])) // self._page_size + 4  # type: ignore[arg-type]
                at_cap = int(db.execute("PRAGMA page_count").fetchone()[0]) + needed > self._max_pages
                left = self._count - dropped
                if "full" not in str(error) or not at_cap or left <= 0:
                    raise
                with transaction(db):  # the size cap, not the disk: make room (freed pages are reused)
                    dropped += self._drop_oldest(db, max(1, left // 10))

    @staticmethod
    def _drop_oldest(db: sqlite3.Connection, n: int) -> int:
        seqs = [r[0] for r in db.execute(
            "SELECT seq FROM outbox WHERE retain = 0 ORDER BY seq LIMIT ?", (n,))]
        if len(seqs) < n:
            seqs += [r[0] for r in db.execute(
                "SELECT seq FROM outbox WHERE retain = 1 ORDER BY seq LIMIT ?", (n - len(seqs),))]
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (len(seqs),))
        return len(seqs)

    # ------------------------------------------------------------------------------------ reading

    def peek_batch(self, n: int, after_seq: int = 0) -> list[OutboxRow]:
        """Up to ``n`` oldest rows with ``seq > after_seq``, in order. Nothing is removed."""
        with self._lock:
            rows = self._conn().execute(
                "SELECT seq, topic, payload, qos, retain, created_s FROM outbox"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, max(0, n)),
            ).fetchall()
        return [OutboxRow(int(s), str(t), bytes(p), int(q), bool(r), float(c)) for s, t, p, q, r, c in rows]

    # ----------------------------------------------------------------------------------- removing

    def ack(self, seq: int) -> bool:
        """Delete one row after its PUBACK. False when it was already gone (dropped or acked)."""
        return self.ack_many([seq]) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """Delete rows after their PUBACKs, in one transaction; return how many existed."""
        return self._delete(list(seqs), count_as_dropped=False)

    def drop(self, seq: int) -> bool:
        """Delete a row that can never be delivered (e.g. the broker rejected it); counted as dropped."""
        return self._delete([seq], count_as_dropped=True) == 1

    def _delete(self, seqs: list[int], *, count_as_dropped: bool) -> int:
        if not seqs:
            return 0
        with self._lock:
            db = self._conn()
            try:
                with transaction(db):
                    before = db.total_changes
                    db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
                    deleted = db.total_changes - before
                    if count_as_dropped and deleted:
                        db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (deleted,))
            except sqlite3.Error as error:
                raise OutboxWriteError(f"cannot write to the outbox {self.path} ({error})") from None
            self._count -= deleted
            self._full = self._count >= self.max_rows
            if self._count == 0 and deleted:
                try:  # delivered: fold the log into the file now rather than let it grow
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass
            return deleted

    # ------------------------------------------------------------------------------------- status

    def __len__(self) -> int:
        with self._lock:
            return self._count

    @property
    def dropped(self) -> int:
        """Messages dropped since the file was created (full outbox or rejected by the broker)."""
        with self._lock:
            return int(self._conn().execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()[0])

    def close(self) -> None:
        """Checkpoint and close the file. Idempotent."""
        with self._lock:
            db, self._db = self._db, None
            if db is None:
                return
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            db.close()

    @property
    def closed(self) -> bool:
        return self._db is None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ValueError(f"outbox {self.path} is closed")
        return self._db

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
