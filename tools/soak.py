"""Soak test: `edgeface run` for a long time on a looping video served as a live MJPEG camera, publishing
to an MQTT broker; prints how its memory, threads and open files evolve.

    python tools/soak.py [--minutes 30] [--video ../shared/data/video/hamilton_clip.mp4]
                         [--mqtt-url mqtt://127.0.0.1:1883] [--gallery FILE]

Pass criteria (issue 7): RSS growth <= 10 MB between the first sample after warm-up and the last,
and no growth in threads or open files. Not part of CI (it runs for half an hour).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from _mjpeg import MjpegServer, free_port

WARMUP_S = 60.0
MAX_RSS_GROWTH_MB = 10.0


def read_video(path: Path) -> list:
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    if not frames:
        sys.exit(f"soak: cannot read {path}")
    return frames


def sample(pid: int) -> tuple[float, int, int]:
    """(RSS in MB, threads, open files) of a live process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    files = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kb / 1024, threads, files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--video", type=Path, default=REPO.parent / "shared" / "data" / "video" / "hamilton_clip.mp4")
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--gallery", type=Path, help="gallery file (default: a fresh one in a temporary folder)")
    parser.add_argument("--interval-s", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()

    port = free_port()
    server = MjpegServer(port, fps=25, frames=read_video(args.video))
    server.start()
    with tempfile.TemporaryDirectory(prefix="edgeface-soak-") as scratch:
        config = Path(scratch) / "soak.yaml"
        config.write_text(f"station_id: soak\nmqtt:\n  url: {args.mqtt_url}\n  outbox_path: {scratch}/outbox.sqlite\n")
        command = [sys.executable, "-m", "edgeface.cli", "run", "--source", f"http://127.0.0.1:{port}/stream.mjpg",
                   "--config", str(config), "--sink", "mqtt"]
        command += ["--gallery", str(args.gallery)] if args.gallery else []
        env = {**os.environ, "EDGEFACE_GALLERY": str(Path(scratch) / "gallery.db")}  # without --gallery: a fresh one
        station = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        samples: list[tuple[float, float, int, int]] = []
        started = time.monotonic()
        try:
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(args.interval_s)
                if station.poll() is not None:
                    print(f"soak: edgeface run exited early with {station.returncode}: {station.stderr.read()[-500:]}")
                    return 1
                elapsed = time.monotonic() - started
                rss, threads, files = sample(station.pid)
                samples.append((elapsed, rss, threads, files))
                print(f"{elapsed:7.0f} s  RSS {rss:6.1f} MB  threads {threads:3d}  open files {files:3d}", flush=True)
        finally:
            station.send_signal(signal.SIGTERM)
            station.wait(timeout=60)
            server.stop()
    settled = [s for s in samples if s[0] >= min(WARMUP_S, samples[-1][0] / 2)]
    first, last = settled[0], settled[-1]
    growth = last[1] - first[1]
    peak = max(s[1] for s in samples)
    print(f"soak: {last[0] / 60:.1f} min; RSS {first[1]:.1f} -> {last[1]:.1f} MB (growth {growth:+.1f} MB, "
          f"peak {peak:.1f}); threads {first[2]} -> {last[2]}; open files {first[3]} -> {last[3]}")
    ok = growth <= MAX_RSS_GROWTH_MB and last[2] <= first[2] and last[3] <= first[3]
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
