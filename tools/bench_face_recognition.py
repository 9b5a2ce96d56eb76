"""Baseline for `edgeface bench pipeline`: face_recognition 1.3 (dlib HOG detector + dlib ResNet
embeddings) on every frame of a video, the way its README's webcam example works, one thread.

A developer tool, run by hand in a throwaway venv that has real dlib and face_recognition (never
dependencies of edgeface):

    python -m venv /tmp/refenv && /tmp/refenv/bin/pip install dlib-bin \
        && /tmp/refenv/bin/pip install --no-deps face_recognition face-recognition-models \
        && /tmp/refenv/bin/pip install "opencv-python-headless<5" numpy Pillow click
    /tmp/refenv/bin/python tools/bench_face_recognition.py --source ../shared/data/video/hamilton_clip.mp4

`dlib-bin` is dlib 20.0.1 prebuilt (with its SIMD paths: 11.5 frames/s on hamilton_clip here); `pip install
dlib` compiles it from source in ~15 minutes, without them unless asked (4.65 frames/s here in November).
face_recognition is installed without dependencies because it asks for `dlib`, which `dlib-bin` provides.

Per frame: BGR -> RGB, `face_locations(rgb, number_of_times_to_upsample=1, model="hog")` (the
defaults), then `face_encodings(rgb, locations)` (5-point landmarks, 1 jitter: the defaults) for every
face found. Frames/s are reported end to end (video decoding included, as `edgeface bench pipeline`'s
`fps`) and for the face work alone; with --repeats, best and median. BLAS/OpenMP are held to one
thread (dlib's HOG is single-threaded anyway) so the comparison with edgeface's 1-thread default is
like for like. With --json the last line is one JSON object.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path


def bench_once(source: Path, max_frames: int | None) -> dict[str, float]:
    import cv2
    import face_recognition

    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {source}")
    frames = faces = 0
    work_s = 0.0
    started = time.perf_counter()
    try:
        while max_frames is None or frames < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            t = time.perf_counter()
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            locations = face_recognition.face_locations(rgb, number_of_times_to_upsample=1, model="hog")
            encodings = face_recognition.face_encodings(rgb, locations)
            work_s += time.perf_counter() - t
            frames += 1
            faces += len(encodings)
    finally:
        cap.release()
    wall_s = time.perf_counter() - started
    return {
        "frames": frames,
        "faces": faces,
        "fps": frames / wall_s if wall_s > 0 else 0.0,
        "work_fps": frames / work_s if work_s > 0 else 0.0,
        "ms_per_frame": 1000 * work_s / max(frames, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, metavar="VIDEO")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the video; best and median reported")
    parser.add_argument("--max-frames", type=int, help="stop each pass after this many frames")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        parser.error(f"{args.source}: no such video file")
    import face_recognition

    out = sys.stderr if args.json else sys.stdout
    runs = []
    for i in range(max(1, args.repeats)):
        run = bench_once(args.source, args.max_frames)
        runs.append(run)
        print(f"run {i + 1}/{args.repeats}: {run['fps']:.2f} fps end to end, {run['work_fps']:.2f} fps face work, "
              f"{run['faces']} faces in {run['frames']} frames", file=out)
    best = max(runs, key=lambda r: r["fps"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {
        "tool": "face_recognition (dlib HOG + ResNet, every frame)",
        "face_recognition_module_version": getattr(face_recognition, "__version__", "?"),
        "source": str(args.source),
        "repeats": len(runs),
        "frames": best["frames"],
        "faces": best["faces"],
        "fps": round(best["fps"], 3),
        "fps_median": round(statistics.median(r["fps"] for r in runs), 3),
        "work_fps": round(best["work_fps"], 3),
        "work_fps_median": round(statistics.median(r["work_fps"] for r in runs), 3),
        "peak_rss_mb": round(peak, 1),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(f"face_recognition baseline on {args.source}: fps best {summary['fps']}, median {summary['fps_median']} "
          f"(face work alone: best {summary['work_fps']}, median {summary['work_fps_median']}); "
          f"peak RSS {summary['peak_rss_mb']} MB", file=out)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
