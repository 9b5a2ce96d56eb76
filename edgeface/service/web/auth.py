"""Who may use the station page: logins that survive a restart, and a global limit on password guesses.

Sessions live in a small SQLite file next to the gallery (`<gallery stem>.web-sessions.sqlite`, 0600):
a restarted station (a reboot, a crash, `systemctl restart`) keeps everyone logged in until their
session expires (`web.session_max_age_s`). The file holds only the SHA-256 of each session token
(the cookie), so reading it does not give a usable cookie; log out deletes the row. Without a
gallery the sessions are in memory only (a restart logs everyone out).

Guessing: every login attempt, right or wrong, takes a token from one bucket shared by every client
(`LOGIN_BURST` tokens, one more every `LOGIN_REFILL_S`). When it is empty the attempt is refused at
once (429, Retry-After) without looking at the password, so an attacker sending many requests in
parallel, from many addresses, gets no more than one guess per `LOGIN_REFILL_S` on average. The cost:
while someone guesses, the owner may also have to wait a few seconds to log in (the page says how long).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeface.errors import ConfigError

LOGIN_BURST = 5
"""Login attempts allowed at once (the bucket's size)."""
LOGIN_REFILL_S = 2.0
"""One more attempt every this many seconds, for everyone together."""
MAX_SESSIONS = 64


def sessions_path(gallery: Path) -> Path:
    """Where the sessions of the page of the station serving `gallery` are kept."""
    return gallery.with_name(gallery.stem + ".web-sessions.sqlite")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class Session:
    token: str
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)


class SessionStore:
    """Session tokens (random, 256 bits) with their form token and expiry, in `path` (None: memory)."""

    def __init__(self, path: Path | None, max_age_s: float, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._flash: dict[str, list[tuple[str, str]]] = {}
        try:
            if path is not None:
                from edgeface.storage.fileperm import create_private_file

                create_private_file(path)
            self._db = sqlite3.connect(":memory:" if path is None else str(path), timeout=5.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS web_sessions (token_sha256 TEXT PRIMARY KEY, "
                             "csrf TEXT NOT NULL, expires REAL NOT NULL)")
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"cannot keep the station page's sessions in {path}: {error}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def new(self) -> Session:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = self._clock()
        expires = now + self.max_age_s
        with self._lock:
            self._db.execute("DELETE FROM web_sessions WHERE expires <= ?", (now,))
            self._db.execute("DELETE FROM web_sessions WHERE token_sha256 IN (SELECT token_sha256 FROM web_sessions "
                             "ORDER BY expires DESC LIMIT -1 OFFSET ?)", (MAX_SESSIONS - 1,))
            self._db.execute("INSERT INTO web_sessions (token_sha256, csrf, expires) VALUES (?, ?, ?)",
                             (_digest(token), csrf, expires))
            live = {row[0] for row in self._db.execute("SELECT token_sha256 FROM web_sessions")}
            self._flash = {key: messages for key, messages in self._flash.items() if key in live}
        return Session(token, csrf, expires, self._flash.setdefault(_digest(token), []))

    def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 128:
            return None
        key = _digest(token)
        with self._lock:
            row = self._db.execute("SELECT csrf, expires FROM web_sessions WHERE token_sha256 = ?", (key,)).fetchone()
            if row is None:
                return None
            if row[1] <= self._clock():
                self._db.execute("DELETE FROM web_sessions WHERE token_sha256 = ?", (key,))
                self._flash.pop(key, None)
                return None
            return Session(token, str(row[0]), float(row[1]), self._flash.setdefault(key, []))

    def end(self, token: str | None) -> None:
        if not token:
            return
        key = _digest(token)
        with self._lock:
            self._db.execute("DELETE FROM web_sessions WHERE token_sha256 = ?", (key,))
            self._flash.pop(key, None)


class LoginThrottle:
    """A token bucket shared by every login attempt: `burst` at once, one more every `refill_s`."""

    def __init__(self, burst: int = LOGIN_BURST, refill_s: float = LOGIN_REFILL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 when an attempt may go ahead (a token was taken), else the seconds until the next token."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) / self.refill_s)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return max((1.0 - self._tokens) * self.refill_s, 0.001)


def retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))
