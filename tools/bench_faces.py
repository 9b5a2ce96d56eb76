"""Per-face cost and memory of the camera loop with K faces in every frame (issue 14's targets: <= 0.25 ms
per extra face at 10 faces, private memory <= 100 MB at 20 faces).

Each run is its own process (so memory is that of one station): a 1280x720 frame holding K LFW faces
(the central 150 px of the first image of the first K people with 2+ images, 176 px, 7 a row, on a
grey background, a little jitter per frame so tracks move), `--frames` frames through the default pipeline (`build_pipeline`, one
thread, OpenCV on one thread as `edgeface bench pipeline` sets it (--opencv-threads), every frame, an empty gallery so every track stays unknown and is re-embedded on schedule;
no clustering). Reported: mean ms per frame over the last 2/3 of the frames (re-check frames included), and the process's
private memory (RssAnon) at the end and its peak after each of those frames, faces found and embedded per
frame, and the time of the per-face stages (gate, keypoint refiner and alignment, embedder, match, decide)
per track started: with --lifetime nearly all of it goes to new people, so it is the cost of a new person.

    python tools/bench_faces.py [--data ../shared/data] [--faces 1 10 20] [--frames 150] [--repeats 3] [--lifetime 30]
                                [--set KEY=VALUE] [--ab KEY=VALUE] [--opencv-threads N]

With --lifetime FRAMES the crowd is not static: every face leaves after FRAMES frames (staggered over the
K faces) and a new LFW person enters a cell left empty for a while (36 cells of 128 px), so K faces
bring K new people to embed every FRAMES frames.

The last line is JSON: per K the [median, min, max] over the repeats of wall and CPU (process) ms per
frame, and per extra face against K=1 measured in the same alternation. With --ab KEY=VALUE each run also
sends the same frames through a second pipeline with that setting, alternated frame by frame in the same
process (its figures under "b"): an A/B under the same load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TILE = 176
"""Each face: the central 150 px of an LFW image (the face fills it), scaled to TILE px; 7 a row."""
NEW_TILE, NEW_COLUMNS, NEW_ROWS = 128, 9, 4
"""With --lifetime: 36 cells of 128 px, so a face enters a cell left empty for a while (no old track there)."""


FACE_STAGES = ("quality", "align", "embed", "match", "second_opinion", "decide")
"""The stages that work per embedded face (gate, keypoint refiner and alignment, embedder, gallery, votes)."""


def private_mb() -> float:
    """RssAnon (what `edgeface run` and `bench pipeline` call private memory), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def config_with(settings: list[str]) -> Any:
    """The default Config with KEY=VALUE settings (dotted keys, JSON values: pipeline.refine_once_per_track=false)."""
    from edgeface.config import Config

    tree: dict[str, Any] = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        if not key or not _:
            raise SystemExit(f"--set needs KEY=VALUE, got {setting!r}")
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:
            node[leaf] = value
    return Config.model_validate(tree)


def one_run(data: Path, faces: int, frames: int, lifetime: int | None = None, settings: list[str] | None = None,
            ab: list[str] | None = None, opencv_threads: int = 1) -> dict[str, Any]:
    import cv2
    import numpy as np

    from edgeface.bus import EventBus
    from edgeface.io.sources import Frame
    from edgeface.pipeline import build_pipeline, use_opencv_threads

    people = sorted(p for p in (data / "lfw" / "images").iterdir() if len(list(p.iterdir())) >= 2)
    needed = faces if lifetime is None else faces + faces * frames // lifetime + 1
    chips = [cv2.resize(cv2.imread(str(sorted(p.iterdir())[0]))[50:200, 50:200], (TILE, TILE)) for p in people[:needed]]

    class Discard:
        def publish(self, event: object) -> None:
            pass

        def close(self) -> None:
            pass

    if opencv_threads > 0:
        use_opencv_threads(opencv_threads)
    pipelines = {"a": build_pipeline(config_with(settings or []), bus=EventBus(Discard()), threads=1)}
    if ab:  # the same frames through a second pipeline, alternated frame by frame (each goes first every other frame)
        pipelines["b"] = build_pipeline(config_with([*(settings or []), *ab]), bus=EventBus(Discard()), threads=1)
    seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    rng = np.random.default_rng(0)
    size, columns = (TILE, 7) if lifetime is None else (NEW_TILE, NEW_COLUMNS)
    if lifetime is not None:
        chips = [cv2.resize(c, (size, size)) for c in chips]
    cells = 7 * 3 if lifetime is None else NEW_COLUMNS * NEW_ROWS
    shown = {cell: cell for cell in range(faces)}  # cell -> chip index (people enter in chip order)
    free = list(range(faces, cells))  # emptied cells, longest-empty first
    arrived = faces
    peak_mb = 0.0
    for index in range(frames):
        if lifetime is not None:  # each face leaves after `lifetime` frames (staggered) and a new person enters
            for slot in range(faces):
                if index > 0 and (index + slot * lifetime // faces) % lifetime == 0:
                    leaving = min(shown, key=shown.__getitem__)  # the face that came first
                    del shown[leaving]
                    free.append(leaving)
                    shown[free.pop(0)] = arrived
                    arrived += 1
        image = np.full((720, 1280, 3), 110, np.uint8)
        for cell, chip_index in shown.items():
            x = 8 + (cell % columns) * (size + 4) + int(rng.integers(0, 4))
            y = 8 + (cell // columns) * (size + (40 if lifetime is None else 24)) + int(rng.integers(0, 4))
            image[y:y + size, x:x + size] = chips[chip_index]
        order = list(pipelines) if index % 2 == 0 else list(pipelines)[::-1]
        for name in order:
            began, began_cpu = time.perf_counter(), time.process_time()
            pipelines[name].process(Frame(image, index, index / 25.0))
            seconds[name].append(time.perf_counter() - began)
            cpu_seconds[name].append(time.process_time() - began_cpu)
        if index >= frames // 3:
            peak_mb = max(peak_mb, private_mb())
    out: dict[str, Any] = {}
    for name, pipeline in pipelines.items():
        stats = pipeline.stats
        keypoints = getattr(pipeline, "keypoints", None)
        figures = {
            "ms_per_frame": 1000 * statistics.fmean(seconds[name][frames // 3:]),
            "cpu_ms_per_frame": 1000 * statistics.fmean(cpu_seconds[name][frames // 3:]),
            "faces_per_frame": stats.faces / max(stats.frames, 1), "embedded_per_frame": stats.embedded / max(stats.frames, 1),
            "people_seen": arrived, "tracks_started": stats.tracks_started,
            "face_work_ms_per_track": 1000 * sum(stats.stage_s[k] for k in FACE_STAGES) / max(stats.tracks_started, 1),
            "refined_per_frame": (keypoints.refined / max(stats.frames, 1)) if keypoints is not None else float("nan"),
            "followed_per_frame": (keypoints.followed / max(stats.frames, 1)) if keypoints is not None else 0.0}
        if name == "a":
            out.update(figures)
        else:
            out[name] = figures
    out["private_mb"] = private_mb()  # of both pipelines with --ab
    out["private_peak_mb"] = peak_mb
    return out


def _median_range(values: list[float], digits: int) -> list[float]:
    return [round(statistics.median(values), digits), round(min(values), digits), round(max(values), digits)]


def summary(values: list[dict[str, Any]], base: list[dict[str, Any]], extra_faces: int) -> dict[str, Any]:
    """Median and range over the repeats; per extra face against the base K of the same repeat."""
    first = values[0]
    out: dict[str, Any] = {
        "ms_per_frame": _median_range([v["ms_per_frame"] for v in values], 2),
        "cpu_ms_per_frame": _median_range([v["cpu_ms_per_frame"] for v in values], 2),
        "faces_per_frame": round(first["faces_per_frame"], 2), "embedded_per_frame": round(first["embedded_per_frame"], 2),
        "people_seen": first["people_seen"], "tracks_started": first["tracks_started"],
        "face_work_ms_per_track": _median_range([v["face_work_ms_per_track"] for v in values], 2),
        "refined_per_frame": round(first["refined_per_frame"], 2), "followed_per_frame": round(first["followed_per_frame"], 2)}
    if extra_faces:
        for key in ("ms_per_frame", "cpu_ms_per_frame"):
            extra = [(a[key] - b[key]) / extra_faces for a, b in zip(values, base)]
            out[key.replace("per_frame", "per_extra_face")] = _median_range(extra, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 10, 20])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lifetime", type=int, metavar="FRAMES",
                        help="new faces: each face leaves after FRAMES frames (staggered) and a new LFW person enters an "
                        "empty cell, so K faces bring K new people every FRAMES frames that must be embedded")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config setting for the pipeline (dotted key, JSON value), e.g. pipeline.refine_once_per_track=false")
    parser.add_argument("--ab", action="append", default=[], metavar="KEY=VALUE",
                        help="also run a second pipeline with this setting on the same frames in the same process, "
                        "alternated frame by frame (an A/B under the same load; private memory is then of both)")
    parser.add_argument("--opencv-threads", type=int, default=1, metavar="N",
                        help="OpenCV's thread count (default 1, as `edgeface bench pipeline` sets it; 0: OpenCV's own "
                        "default, a worker per core, which is what the station runs with today)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_run(args.data, args.one, args.frames, args.lifetime, args.set, args.ab, args.opencv_threads)))
        return 0
    runs: dict[int, list[dict[str, float]]] = {k: [] for k in args.faces}
    for _ in range(args.repeats):
        for k in args.faces:  # alternated, so load changes hit every K alike
            extra = [] if args.lifetime is None else ["--lifetime", str(args.lifetime)]
            extra += [f"--set={setting}" for setting in args.set] + [f"--ab={setting}" for setting in args.ab]
            extra += ["--opencv-threads", str(args.opencv_threads)]
            done = subprocess.run([sys.executable, __file__, "--data", str(args.data), "--frames", str(args.frames),
                                   "--one", str(k), *extra], capture_output=True, text=True, check=True,
                                  env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
            runs[k].append(json.loads(done.stdout.splitlines()[-1]))
    out: dict[str, object] = {}
    base = min(args.faces)
    for k, values in runs.items():
        mb = [v["private_mb"] for v in values]
        row: dict[str, Any] = {"private_mb": round(statistics.median(mb), 1), "private_mb_range": [round(min(mb), 1), round(max(mb), 1)],
                               "private_peak_mb": round(statistics.median(v["private_peak_mb"] for v in values), 1)}
        for side in ("a", "b") if args.ab else ("a",):
            mine = [v if side == "a" else v["b"] for v in values]
            theirs = [v if side == "a" else v["b"] for v in runs[base]]
            figures = summary(mine, theirs, k - base)
            if side == "a":
                row.update(figures)
            else:
                row["b"] = figures
        out[str(k)] = row
        print(f"{k:3d} faces: {row}", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
