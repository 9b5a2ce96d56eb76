"""How fast a new fleet station catches up, and that it re-sends nothing (docs/fleet.md, Limits).

    python tools/measure_fleet_catchup.py --people 500 2000

Starts a private Mosquitto on a free port (persistence off), fills station A's gallery with N people
(one random unit template each), lets A join and publish, then lets an empty station B join and
times until B's gallery holds all N; prints B's re-sent record count after the settle time.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeface.config import Config
from edgeface.service.fleet import SETTLE_S, Fleet
from edgeface.storage.gallery import Gallery

KEY = b"measure-fleet-catchup-key-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(station: str, port: int, group: str) -> Config:
    return Config.model_validate({"station_id": station, "mqtt": {"url": f"mqtt://127.0.0.1:{port}"},
                                  "fleet": {"enabled": True, "group": group, "poll_s": 0.1}})


def measure(people: int, folder: Path, port: int, run: int) -> str:
    """One run in its own fleet group (the broker keeps the earlier runs' retained records)."""
    vectors = np.random.default_rng(people).normal(size=(people, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    a, b = Gallery(folder / f"a{run}.db"), Gallery(folder / f"b{run}.db")
    a.add_identities([(f"p{i:06d}", vectors[i:i + 1]) for i in range(people)])
    started = time.monotonic()
    first = Fleet(_config("a", port, f"run{run}"), a, key=KEY).start()
    while first.stats.published < people:
        time.sleep(0.05)
    published = time.monotonic()
    second = Fleet(_config("b", port, f"run{run}"), b, key=KEY).start()
    while len(b.list_identities()) < people:
        time.sleep(0.05)
    caught_up = time.monotonic()
    time.sleep(SETTLE_S + 1)
    line = (f"{people} people: A published them {published - started:.1f} s after joining; B caught up in "
            f"{caught_up - published:.2f} s and re-sent {second.stats.published} records")
    first.close()
    second.close()
    a.close()
    b.close()
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, nargs="+", default=[500, 2000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        port = _free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            for run, people in enumerate(args.people):
                print(measure(people, folder, port, run), flush=True)
        finally:
            broker.terminate()
            broker.wait(10)


if __name__ == "__main__":
    main()
