"""The SQLite plumbing the gallery, the clusters and the outbox share: one transaction helper and one
schema-migration step, so that commit/rollback and version bookkeeping are written once."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager


@contextmanager
def transaction(db: sqlite3.Connection, write: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN (IMMEDIATE for a write, so two writers never deadlock), then COMMIT, or ROLLBACK on any
    exception, KeyboardInterrupt included: all or nothing."""
    db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def apply_migrations(db: sqlite3.Connection, version_table: str, stored_version: int,
                     migrations: Sequence[Callable[[sqlite3.Connection], None]]) -> None:
    """Run migrations[stored_version:] and record len(migrations) as the version, inside the caller's
    transaction. `version_table` is one of our own table names, never user input."""
    for step in migrations[stored_version:]:
        step(db)
    if stored_version < len(migrations):
        db.execute(f"DELETE FROM {version_table}")
        db.execute(f"INSERT INTO {version_table} (version) VALUES (?)", (len(migrations),))
