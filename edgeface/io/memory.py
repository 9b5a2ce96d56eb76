"""The free heap back to the system now and then (glibc).

glibc keeps freed memory for reuse: a burst of work (many faces embedded on one frame, a track's
chips released) leaves its high-water mark resident, in holes below live blocks that no `free` can
return, and its mmap threshold rises with the largest block freed, so later big blocks come from that
heap too. At 20 faces a frame with new people coming, 26 of a 65 MB heap were free at the end of a
run (issue 14). `malloc_trim(0)` returns those pages in about 1 ms; done at most once a second, it and
the pages the loop faults back in cost no measurable time (README, issue-14 private memory). It lowers
the resident level between bursts, not a burst's peak.
A fixed mmap threshold (`edgeface.service.cameras.return_frames_to_the_system`) returns them too,
but faults every frame's big blocks in afresh: 1.19x the CPU per frame here (range 1.02-1.38).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable

TRIM_INTERVAL_S = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    return trim


_TRIM = _malloc_trim()
_LOCK = threading.Lock()
_last_trim = time.monotonic()


def trim_free_heap(interval_s: float = TRIM_INTERVAL_S) -> bool:
    """Give the free heap back to the system when the process last did so at least `interval_s` ago
    (once per process, however many camera loops call it). True when it trimmed."""
    global _last_trim
    if _TRIM is None or time.monotonic() - _last_trim < interval_s or not _LOCK.acquire(blocking=False):
        return False
    try:
        now = time.monotonic()
        if now - _last_trim < interval_s:
            return False
        _TRIM(0)
        _last_trim = time.monotonic()
        return True
    finally:
        _LOCK.release()
