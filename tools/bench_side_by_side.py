"""The camera-loop figures of the README, as the median and range of several runs: edgeface's
`bench pipeline` and, when a Python with face_recognition is given, face_recognition 1.3 on the same
video, alternated run by run so that both see the same load. The speed ratio is taken per pair of
runs (edgeface fps / face_recognition fps, measured one right after the other).

    python tools/bench_side_by_side.py --source ../shared/data/video/hamilton_clip.mp4 --gallery G \
        --runs 5 --reference-python /tmp/refenv/bin/python

(`--reference-python`: a venv with dlib-bin and face_recognition, see tools/bench_face_recognition.py;
without it only edgeface is measured.) With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _last_json(output: str) -> dict[str, object]:
    lines = [line for line in output.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"no JSON figures in the output:\n{output[-2000:]}")
    return json.loads(lines[-1])


def edgeface_run(source: str, gallery: str | None, config: str | None, threads: int) -> dict[str, object]:
    command = [sys.executable, "-m", "edgeface.cli", "bench", "pipeline", "--source", source, "--repeats", "1",
               "--threads", str(threads), "--json"]
    command += ["--gallery", gallery] if gallery else []
    command += ["--config", config] if config else []
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"edgeface bench pipeline failed: {done.stderr.strip()[-2000:]}")
    return _last_json(done.stdout)


def reference_run(python: str, source: str) -> dict[str, object]:
    done = subprocess.run([python, str(REPO / "tools" / "bench_face_recognition.py"), "--source", source,
                           "--repeats", "1", "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"face_recognition baseline failed: {done.stderr.strip()[-2000:]}")
    return _last_json(done.stdout)


def spread(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} (range {min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, metavar="VIDEO")
    parser.add_argument("--gallery", help="gallery to match against")
    parser.add_argument("--config", help="edgeface config file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reference-python", help="a python with face_recognition installed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    ours: list[dict[str, object]] = []
    theirs: list[dict[str, object]] = []
    out = sys.stderr if args.json else sys.stdout
    for i in range(args.runs):
        ours.append(edgeface_run(args.source, args.gallery, args.config, args.threads))
        line = (f"run {i + 1}/{args.runs}: edgeface {ours[-1]['fps']} fps, ratio {ours[-1]['model_floor_ratio']}, "
                f"peak RSS {ours[-1]['peak_rss_mb']} MB, load {ours[-1]['load_average']}")
        if args.reference_python:
            theirs.append(reference_run(args.reference_python, args.source))
            line += f"; face_recognition {theirs[-1]['fps']} fps"
        print(line, file=out, flush=True)
    load_after = os.getloadavg()
    fps = [float(r["fps"]) for r in ours]  # type: ignore[arg-type]
    ratio = [float(r["model_floor_ratio"]) for r in ours]  # type: ignore[arg-type]
    rss = [float(r["peak_rss_mb"]) for r in ours]  # type: ignore[arg-type]
    summary: dict[str, object] = {
        "source": args.source, "runs": args.runs, "threads": args.threads,
        "fps_median": statistics.median(fps), "fps_min": min(fps), "fps_max": max(fps),
        "model_floor_ratio_median": statistics.median(ratio), "model_floor_ratio_min": min(ratio),
        "model_floor_ratio_max": max(ratio),
        "peak_rss_mb_median": statistics.median(rss), "peak_rss_mb_max": max(rss),
        "faces": ours[-1]["best_run"]["faces"] if isinstance(ours[-1].get("best_run"), dict) else None,  # type: ignore[index]
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
    }
    print(f"edgeface: {spread(fps)} fps, pipeline/model ratio {spread(ratio, 3)}, peak RSS {spread(rss)} MB "
          f"over {args.runs} runs; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after", file=out)
    if theirs:
        reference = [float(r["fps"]) for r in theirs]  # type: ignore[arg-type]
        speedup = [a / b for a, b in zip(fps, reference)]
        summary.update({"reference_fps_median": statistics.median(reference), "reference_fps_min": min(reference),
                        "reference_fps_max": max(reference), "speedup_median": statistics.median(speedup),
                        "speedup_min": min(speedup), "speedup_max": max(speedup)})
        print(f"face_recognition: {spread(reference, 2)} fps; edgeface / face_recognition per pair of runs: "
              f"{spread(speedup)}x", file=out)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
