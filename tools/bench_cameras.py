"""Several cameras in one process against one process per camera: fps per camera and total memory,
as ratios within each run; and the embedder combining several cameras' faces in one call, on or off.

    python tools/bench_cameras.py --runs 3
    python tools/bench_cameras.py --runs 3 --videos A.mp4 B.mp4 --copies 2 --json

Processes: each run starts, in alternating order, (a) ONE `edgeface run` with every camera
(`--source cam1=A --source cam2=B --source cam3=A --source cam4=B --every-frame`) and (b) one
`edgeface run --source X --every-frame` per camera, all at once. Each process has its own empty
folder (its own gallery.db, as separate stations would). fps per camera is frames / the time from
its first frame to its last processed frame (the `camera NAME: ...` log line), so model loading is
left out. RSS: /proc/PID/status VmRSS of every process polled every 20 ms; "total" is the highest
sum at one moment, "single" the highest of one per-camera process.

Embedder combining (in this process, `--combining-runs`): the same cameras built with
`build_cameras` (no sink but the counts) with the embedder's combining on and off, alternated.

The machine is shared: each run prints the load average; medians and ranges are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "video"
SUMMARY = re.compile(r"camera (\S+): (\d+) frames in ([\d.]+) s \(([\d.]+) fps\)")


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_processes(commands: list[list[str]]) -> dict[str, Any]:
    """Start every command at once (each in its own empty folder), poll their RSS, wait; per-camera fps
    from their logs, RSS peaks in MiB."""
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEFACE_GALLERY", "EDGEFACE_SOURCE")}
    folders = [tempfile.mkdtemp(prefix="edgeface-bench-cameras-") for _ in commands]
    started = time.monotonic()
    processes = [subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for command, folder in zip(commands, folders)]
    logs: list[list[str]] = [[] for _ in processes]
    readers = [threading.Thread(target=lambda p=p, out=out: out.extend(p.stderr), daemon=True)
               for p, out in zip(processes, logs)]
    for reader in readers:
        reader.start()
    peak_total, peaks = 0, [0] * len(processes)
    while any(p.poll() is None for p in processes):
        sizes = [_rss_kb(p.pid) for p in processes]
        peaks = [max(a, b) for a, b in zip(peaks, sizes)]
        peak_total = max(peak_total, sum(sizes))
        time.sleep(0.02)
    wall = time.monotonic() - started
    for reader in readers:
        reader.join()
    fps: dict[str, float] = {}
    for index, (process, log) in enumerate(zip(processes, logs)):
        if process.returncode != 0:
            raise SystemExit(f"{commands[index]} failed ({process.returncode}):\n{''.join(log[-20:])}")
        for line in log:
            found = SUMMARY.search(line)
            if found:
                fps[found.group(1) if len(processes) == 1 else f"cam{index + 1}"] = float(found.group(4))
    return {"fps": fps, "total_rss_mb": peak_total / 1024, "single_rss_mb": max(peaks) / 1024,
            "wall_s": wall}


def combining_run(videos: list[Path], combine: bool) -> dict[str, Any]:
    """The cameras in this process, without sinks: fps per camera and embedder calls per request."""
    from edgeface.bus import EventBus
    from edgeface.config import Config
    from edgeface.io.sources import open_source
    from edgeface.service.cameras import build_cameras, camera_specs
    from edgeface.vision.shared import SharedModels

    config = Config()
    specs = camera_specs(config, [f"cam{i + 1}={video}" for i, video in enumerate(videos)])

    def opened(spec: Any) -> Any:
        return open_source(spec.source, every_frame=True)

    shared = SharedModels(combine_embeddings=combine)
    cameras = build_cameras(specs, {s.name: opened(s) for s in specs}, bus=EventBus(), gallery=None, clusters=None,
                            open_source=opened, shared=shared)
    started = time.monotonic()
    cameras.run(threading.Event())
    wall = time.monotonic() - started
    embedder = cameras.embedder
    return {"fps": {r.name: r.fps for r in cameras.runners}, "wall_s": wall,
            "embedder_calls": embedder.calls, "embedder_requests": embedder.requests}


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", nargs="+", type=Path,
                        default=[DATA / "hamilton_clip.mp4", DATA / "crowd_walk.mp4"])
    parser.add_argument("--copies", type=int, default=2, help="each video this many times (default 2: 4 cameras)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--combining-runs", type=int, default=3, help="embedder combining on/off pairs (0: skip)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    videos = [v for _ in range(args.copies) for v in args.videos]
    edgeface = [sys.executable, "-m", "edgeface.cli", "run", "--every-frame", "--sink", "jsonl"]
    one_command = [*edgeface, *[arg for i, v in enumerate(videos) for arg in ("--source", f"cam{i + 1}={v}")]]
    separate = [[*edgeface, "--source", str(v)] for v in videos]
    rows = []
    for run in range(args.runs):
        load_before = os.getloadavg()[0]
        order = ("one", "separate") if run % 2 == 0 else ("separate", "one")
        got = {kind: run_processes([one_command] if kind == "one" else separate) for kind in order}
        one, apart = got["one"], got["separate"]
        fps_ratio = statistics.mean(one["fps"][c] / apart["fps"][c] for c in apart["fps"])
        row = {
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "one_fps": {k: round(v, 1) for k, v in one["fps"].items()},
            "separate_fps": {k: round(v, 1) for k, v in apart["fps"].items()},
            "fps_ratio": round(fps_ratio, 3),
            "one_rss_mb": round(one["total_rss_mb"], 1),
            "separate_total_rss_mb": round(apart["total_rss_mb"], 1),
            "single_camera_rss_mb": round(apart["single_rss_mb"], 1),
            "rss_vs_single": round(one["total_rss_mb"] / apart["single_rss_mb"], 3),
            "rss_vs_separate_total": round(one["total_rss_mb"] / apart["total_rss_mb"], 3),
        }
        rows.append(row)
        print(f"run {run + 1}/{args.runs}: load {row['load_average']}; fps one process {row['one_fps']}, "
              f"separate {row['separate_fps']}, ratio {row['fps_ratio']}; RSS one process {row['one_rss_mb']} MB, "
              f"one camera's process {row['single_camera_rss_mb']} MB (x{row['rss_vs_single']}), "
              f"4 processes {row['separate_total_rss_mb']} MB", file=sys.stderr, flush=True)
    combining = []
    if args.combining_runs:
        combining_run(videos, True)  # warm-up: the first pass pays for cold caches
    for run in range(args.combining_runs):
        pair = {}
        for combine in ((True, False) if run % 2 == 0 else (False, True)):
            pair["on" if combine else "off"] = combining_run(videos, combine)
        on, off = pair["on"], pair["off"]
        combining.append({
            "load_average": round(os.getloadavg()[0], 2),
            "wall_ratio_on_off": round(on["wall_s"] / off["wall_s"], 3),
            "fps_on": {k: round(v, 1) for k, v in on["fps"].items()},
            "fps_off": {k: round(v, 1) for k, v in off["fps"].items()},
            "requests_per_call_on": round(on["embedder_requests"] / max(on["embedder_calls"], 1), 3),
        })
        print(f"combining {run + 1}/{args.combining_runs}: {combining[-1]}", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {
        "cameras": len(videos), "runs": args.runs,
        "fps_ratio_one_vs_separate": _median_range([r["fps_ratio"] for r in rows]) if rows else None,
        "rss_one_vs_single_camera": _median_range([r["rss_vs_single"] for r in rows]) if rows else None,
        "rss_one_vs_separate_total": _median_range([r["rss_vs_separate_total"] for r in rows]) if rows else None,
        "one_rss_mb": _median_range([r["one_rss_mb"] for r in rows]) if rows else None,
        "single_camera_rss_mb": _median_range([r["single_camera_rss_mb"] for r in rows]) if rows else None,
        "combining_wall_ratio_on_off": _median_range([c["wall_ratio_on_off"] for c in combining]) if combining else None,
        "combining_requests_per_call": _median_range([c["requests_per_call_on"] for c in combining]) if combining else None,
        "load_average_end": round(os.getloadavg()[0], 2),
        "runs_detail": rows, "combining_detail": combining,
    }
    for key in ("fps_ratio_one_vs_separate", "rss_one_vs_single_camera", "rss_one_vs_separate_total", "one_rss_mb",
                "single_camera_rss_mb", "combining_wall_ratio_on_off", "combining_requests_per_call"):
        print(f"{key}: median {summary[key]}" if summary[key] else f"{key}: -")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
