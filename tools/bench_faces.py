"""Per-face cost and memory of the camera loop with K faces in every frame (issue 14's targets: <= 0.25 ms
per extra face at 10 faces, private memory <= 100 MB at 20 faces).

Each run is its own process (so memory is that of one station): a 1280x720 frame holding K LFW faces
(the central 150 px of the first image of the first K people with 2+ images, 176 px, 7 a row, on a
grey background, a little jitter per frame so tracks move), `--frames` frames through the default pipeline (`build_pipeline`, one
thread, every frame, an empty gallery so every track stays unknown and is re-embedded on schedule;
no clustering). Reported: mean ms per frame over the last 2/3 of the frames (re-check frames included), and the process's
private memory (RssAnon) at the end and its peak after each of those frames, faces found and embedded per frame.

    python tools/bench_faces.py [--data ../shared/data] [--faces 1 10 20] [--frames 150] [--repeats 3] [--lifetime 30]

With --lifetime FRAMES the crowd is not static: every face leaves after FRAMES frames (staggered over the
K faces) and a new LFW person enters a cell left empty for a while (36 cells of 128 px), so K faces
bring K new people to embed every FRAMES frames.

The last line is JSON: per K the median and range over the repeats, and ms per extra face against K=1
measured in the same alternation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TILE = 176
"""Each face: the central 150 px of an LFW image (the face fills it), scaled to TILE px; 7 a row."""
NEW_TILE, NEW_COLUMNS, NEW_ROWS = 128, 9, 4
"""With --lifetime: 36 cells of 128 px, so a face enters a cell left empty for a while (no old track there)."""


def private_mb() -> float:
    """RssAnon (what `edgeface run` and `bench pipeline` call private memory), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(data: Path, faces: int, frames: int, lifetime: int | None = None) -> dict[str, float]:
    import cv2
    import numpy as np

    from edgeface.bus import EventBus
    from edgeface.config import Config
    from edgeface.io.sources import Frame
    from edgeface.pipeline import build_pipeline

    people = sorted(p for p in (data / "lfw" / "images").iterdir() if len(list(p.iterdir())) >= 2)
    needed = faces if lifetime is None else faces + faces * frames // lifetime + 1
    chips = [cv2.resize(cv2.imread(str(sorted(p.iterdir())[0]))[50:200, 50:200], (TILE, TILE)) for p in people[:needed]]

    class Discard:
        def publish(self, event: object) -> None:
            pass

        def close(self) -> None:
            pass

    pipeline = build_pipeline(Config(), bus=EventBus(Discard()), threads=1)
    rng = np.random.default_rng(0)
    size, columns = (TILE, 7) if lifetime is None else (NEW_TILE, NEW_COLUMNS)
    if lifetime is not None:
        chips = [cv2.resize(c, (size, size)) for c in chips]
    cells = 7 * 3 if lifetime is None else NEW_COLUMNS * NEW_ROWS
    shown = {cell: cell for cell in range(faces)}  # cell -> chip index (people enter in chip order)
    free = list(range(faces, cells))  # emptied cells, longest-empty first
    arrived = faces
    seconds = []
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
        began = time.perf_counter()
        pipeline.process(Frame(image, index, index / 25.0))
        seconds.append(time.perf_counter() - began)
        if index >= frames // 3:
            peak_mb = max(peak_mb, private_mb())
    stats = pipeline.stats
    return {"ms_per_frame": 1000 * statistics.fmean(seconds[frames // 3:]), "private_mb": private_mb(), "private_peak_mb": peak_mb,
            "faces_per_frame": stats.faces / max(stats.frames, 1), "embedded_per_frame": stats.embedded / max(stats.frames, 1),
            "people_seen": arrived}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 10, 20])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lifetime", type=int, metavar="FRAMES",
                        help="new faces: each face leaves after FRAMES frames (staggered) and a new LFW person enters an "
                        "empty cell, so K faces bring K new people every FRAMES frames that must be embedded")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_run(args.data, args.one, args.frames, args.lifetime)))
        return 0
    runs: dict[int, list[dict[str, float]]] = {k: [] for k in args.faces}
    for _ in range(args.repeats):
        for k in args.faces:  # alternated, so load changes hit every K alike
            extra = [] if args.lifetime is None else ["--lifetime", str(args.lifetime)]
            done = subprocess.run([sys.executable, __file__, "--data", str(args.data), "--frames", str(args.frames),
                                   "--one", str(k), *extra], capture_output=True, text=True, check=True,
                                  env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
            runs[k].append(json.loads(done.stdout.splitlines()[-1]))
    out: dict[str, object] = {}
    base = min(args.faces)
    for k, values in runs.items():
        ms = [v["ms_per_frame"] for v in values]
        mb = [v["private_mb"] for v in values]
        out[str(k)] = {"ms_per_frame": round(statistics.median(ms), 2), "ms_range": [round(min(ms), 2), round(max(ms), 2)],
                       "private_mb": round(statistics.median(mb), 1), "private_mb_range": [round(min(mb), 1), round(max(mb), 1)],
                       "private_peak_mb": round(statistics.median(v["private_peak_mb"] for v in values), 1),
                       "faces_per_frame": round(values[0]["faces_per_frame"], 2),
                       "embedded_per_frame": round(values[0]["embedded_per_frame"], 2),
                       "people_seen": values[0]["people_seen"]}
        if k != base:
            extra = [(a["ms_per_frame"] - b["ms_per_frame"]) / (k - base) for a, b in zip(values, runs[base])]
            out[str(k)]["ms_per_extra_face"] = round(statistics.median(extra), 3)  # type: ignore[index]
        print(f"{k:3d} faces: {out[str(k)]}", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
