from __future__ import annotations

import ctypes.util
from pathlib import Path

import pytest

from edgeface.io import memory


def private_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(memory._TRIM is None or ctypes.util.find_library("c") is None, reason="needs glibc")
def test_the_free_heap_below_a_live_block_goes_back_to_the_system_at_most_once_per_interval() -> None:
    blocks = [b"\x01" * (64 * 1024) for _ in range(400)]  # 25 MB written into heap blocks (under the mmap threshold)
    pin = bytes(64 * 1024)  # a live block above them: no free() can shrink the heap past it
    del blocks
    before = private_mb()
    assert memory.trim_free_heap(interval_s=0.0)
    assert before - private_mb() > 15
    assert not memory.trim_free_heap(interval_s=3600.0)  # trimmed just now
    assert len(pin) == 64 * 1024
