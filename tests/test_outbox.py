from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeface.errors import ConfigError
from edgeface.storage.outbox import Outbox


def test_fifo_order_and_ack(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        seqs = [box.put(f"t/{i}", f"p{i}") for i in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        rows = box.peek_batch(10)
        assert [r.payload for r in rows] == [f"p{i}".encode() for i in range(5)]
        assert [r.topic for r in box.peek_batch(2, after_seq=seqs[1])] == ["t/2", "t/3"]
        assert box.ack_many([seqs[0], seqs[2]]) == 2
        assert box.ack(seqs[0]) is False  # already gone
        assert [r.seq for r in box.peek_batch(10)] == [seqs[1], seqs[3], seqs[4]]
        assert len(box) == 3 and box.dropped == 0


def test_rows_and_sequence_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        first = [box.put("t", b"a"), box.put("t", b"b"), box.put("t", b"c", retain=True)]
        box.ack(first[0])
    with Outbox(path) as box:
        rows = box.peek_batch(10)
        assert [(r.payload, r.retain) for r in rows] == [(b"b", False), (b"c", True)]
        # AUTOINCREMENT: a deleted seq is never reused, so order holds across restarts
        assert box.put("t", b"d") > first[-1]
        assert len(box) == 3


def test_bounded_drops_oldest_non_retained_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path, max_rows=10) as box:
        box.put("ha/config", b"retained-0", retain=True)
        for i in range(14):
            box.put("ev", f"e{i}")
        assert len(box) == 10
        assert box.dropped == 5
        payloads = [r.payload for r in box.peek_batch(100)]
        assert payloads == [b"retained-0"] + [f"e{i}".encode() for i in range(5, 14)]
    with Outbox(path, max_rows=10) as box:  # the counter is persistent
        assert box.dropped == 5


def test_all_retained_drops_oldest_retained(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_rows=3) as box:
        for i in range(5):
            box.put("cfg", f"r{i}", retain=True)
        assert [r.payload for r in box.peek_batch(10)] == [b"r2", b"r3", b"r4"]
        assert box.dropped == 2


def test_drop_counts_a_refused_message(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        seq = box.put("t", b"x")
        assert box.drop(seq) is True
        assert box.drop(seq) is False
        assert box.dropped == 1 and len(box) == 0


def test_second_owner_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path), pytest.raises(ConfigError) as error:
        Outbox(path)
    assert "in use by another process" in str(error.value) and "\n" not in str(error.value)


def test_not_a_database_is_a_clear_error_and_the_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a usable outbox"):
        Outbox(path)
    assert path.read_bytes() == b"this is not sqlite" * 100


def test_wal_mode_and_bad_settings(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        box.put("t", b"x")
        assert (tmp_path / "o.sqlite-wal").exists()
    with pytest.raises(ConfigError, match="max_rows"):
        Outbox(tmp_path / "b.sqlite", max_rows=0)
    with pytest.raises(ConfigError, match="synchronous"):
        Outbox(tmp_path / "c.sqlite", synchronous="OFF")  # type: ignore[arg-type]


def test_closed_outbox_refuses_use(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.close()
    box.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        box.put("t", b"x")


_WRITER = textwrap.dedent(
    """
    import sys
    from edgeface.storage.outbox import Outbox
    box = Outbox(sys.argv[1], synchronous=sys.argv[2])
    i = 0
    while True:
        seq = box.put("edgeface/s/events/recognized", f"event-{i}".encode())
        if i % 3 == 0:
            box.ack(seq)  # acked rows must stay gone
        print(i, seq, flush=True)  # printed only after the row is committed
        i += 1
    """
)


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_survives_kill_9_mid_stream(tmp_path: Path, synchronous: str) -> None:
    path = tmp_path / "o.sqlite"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(path), synchronous],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed: list[tuple[int, int]] = []
    deadline = time.monotonic() + 20
    while len(committed) < 300 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        i, seq = map(int, line.split())
        committed.append((i, seq))
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert len(committed) >= 300, "the writer produced too little before the kill"

    with Outbox(path) as box:
        rows = box.peek_batch(10_000)
    stored = {r.seq: r.payload for r in rows}
    for i, seq in committed:
        if i % 3 == 0:
            assert seq not in stored, f"acked row {i} came back"
        else:
            assert stored.get(seq) == f"event-{i}".encode(), f"committed row {i} was lost"
    # order: the stored rows are the unacked printed events, ascending, then only rows the writer
    # committed after the last line this test read (the pipe holds more), still ascending
    expected = [f"event-{i}".encode() for i, _ in committed if i % 3 != 0]
    assert [r.payload for r in rows][: len(expected)] == expected
    later = [int(r.payload.split(b"-")[1]) for r in rows[len(expected):]]
    assert later == sorted(later) and all(n > committed[-1][0] for n in later)
    print(f"\nkill -9 ({synchronous}): {len(committed)} puts printed, {len(expected)} unacked expected, "
          f"{len(rows)} found after restart")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
