"""Issue 15: a full disk must not take the station down. The outbox lives on a real 2 MB tmpfs that
is filled to the last byte while events keep coming and the broker is away: `publish` never raises,
the failures are counted, the events wait in memory, and once space is back every event (those
already in the outbox and those that waited) reaches the broker, in order. Needs root for the mount;
skipped with the reason otherwise."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from _mqtt_helpers import Collector, PrivateBroker, make_events, unique_station

from edgeface.config import MqttConfig
from edgeface.service.mqtt.client import MqttPublisher
from edgeface.storage.outbox import WAL_MAX_BYTES, Outbox, OutboxWriteError

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root (run the suite as root to test a full disk)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        block = b"\0" * 4096
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return filler


def test_full_disk_loses_nothing_and_never_raises(tiny_disk: Path, tmp_path: Path) -> None:
    station = unique_station()
    broker = PrivateBroker(tmp_path)  # not started yet: the broker is away while the disk fills
    config = MqttConfig(url=f"mqtt://127.0.0.1:{broker.port}", outbox_path=tiny_disk / "state" / "outbox.sqlite",
                        reconnect_min_s=0.05, reconnect_max_s=0.2)
    events = make_events(400, station)
    publisher = MqttPublisher(config, station).start()
    collector = None
    try:
        for event in events[:100]:
            publisher.publish(event)
        assert len(publisher.outbox) == 100
        filler = _fill(tiny_disk)
        for event in events[100:]:
            publisher.publish(event)  # the camera thread: must never raise
        status = publisher.status()
        assert status.write_failures > 0, "the disk never filled up"
        assert publisher.spilled > 0 and len(publisher.outbox) >= 100  # nothing stored was lost
        assert status.outbox_length == 400 and status.dropped == 0
        assert "disk is full" in (status.last_error or ""), status.last_error
        print(f"\nfull tmpfs: {status.write_failures} writes failed, {publisher.spilled} events waited in memory, "
              f"{len(publisher.outbox)} in the outbox")

        filler.unlink()  # space again: the spilled events go to the outbox, then everything to the broker
        broker.start()
        collector = Collector(broker.port, f"edgeface/{station}/events/#")
        assert publisher.wait_until_delivered(30), publisher.status()
        assert collector.wait_for(400, 10)
        ids = [event["id"] for event in collector.unique_events()]
        assert ids == [event.id for event in events]
        wal = Path(f"{config.outbox_path}-wal")
        assert not wal.exists() or wal.stat().st_size <= WAL_MAX_BYTES + 64 * 1024
    finally:
        publisher.close(flush_timeout_s=0)
        if collector is not None:
            collector.close()
        broker.close()


def test_outbox_put_on_a_full_disk_raises_a_typed_error_and_keeps_its_rows(tiny_disk: Path) -> None:
    outbox = Outbox(tiny_disk / "outbox.sqlite")
    try:
        for i in range(50):
            outbox.put("t", f"event {i}".encode())
        _fill(tiny_disk)
        with pytest.raises(OutboxWriteError, match="full"):
            for _ in range(10_000):
                outbox.put("t", b"x" * 2000)
        assert len(outbox) >= 50
        assert [row.payload for row in outbox.peek_batch(50)] == [f"event {i}".encode() for i in range(50)]
    finally:
        outbox.close()


def test_outbox_file_stays_under_its_size_cap(tmp_path: Path) -> None:
    """The size cap (mqtt.outbox_max_mb) drops the oldest events, counted, like a full outbox."""
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_bytes=2 * 1024 * 1024, synchronous="NORMAL") as outbox:
        for i in range(300):
            outbox.put("t", bytes([i % 256]) * 20_000)
        assert outbox.dropped > 0 and len(outbox) + outbox.dropped == 300
        newest = outbox.peek_batch(len(outbox))[-1]
        assert newest.payload == bytes([299 % 256]) * 20_000
        sizes = path.stat().st_size + Path(f"{path}-wal").stat().st_size
        assert sizes <= 2 * 1024 * 1024 + 64 * 1024, sizes
    assert path.stat().st_mode & 0o777 == 0o600
