"""Reference faces for `edgeface eval ... --faces FILE`: every face face_recognition 1.3 finds in a
folder-per-person dataset, with its box and 128-d encoding, in the same .npz format as edgeface's own
face cache (edgeface/eval/data.py), so every evaluation scores both systems with one protocol.

A developer tool, run by hand in a throwaway venv with real dlib (never a dependency of edgeface):

    python -m venv /tmp/refenv && /tmp/refenv/bin/pip install dlib-bin numpy Pillow \
        && /tmp/refenv/bin/pip install --no-deps face_recognition face-recognition-models
    /tmp/refenv/bin/python tools/face_recognition_faces.py --data ../shared/data/celeba/images --out fr-celeba.npz

Per image, face_recognition's defaults: `load_image_file` (RGB, EXIF orientation not applied, as
face_recognition does), `face_locations(image, number_of_times_to_upsample=1, model="hog")`, then
`face_encodings(image, locations)` (5-point landmarks, 1 jitter). Which face stands for the image
(largest or central) is chosen by the evaluation, as for edgeface. Resumable: an existing --out is
extended, not recomputed.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import sys
import time
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".bmp", ".webp"}
KEY = "face_recognition-1.3 hog upsample=1 jitters=1"


def dataset_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.parent.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with one sub-folder of images per person")
    parser.add_argument("--out", type=Path, required=True, help=".npz to write (extended when it exists)")
    parser.add_argument("--save-every", type=int, default=500, help="write the file after this many new images")
    args = parser.parse_args(argv)
    import face_recognition

    files = dataset_files(args.data)
    done: dict[str, tuple[tuple[int, int], list[tuple[float, float, float, float]], list[np.ndarray]]] = {}
    if args.out.is_file():
        stored = np.load(args.out)
        for i, name in enumerate(stored["files"].tolist()):
            rows = np.flatnonzero(stored["owner"] == i)
            done[name] = (tuple(stored["sizes"][i]), [tuple(b) for b in stored["boxes"][rows]],
                          [stored["vectors"][r] for r in rows])

    def save(seconds: float) -> None:
        names = sorted(done)
        owner, boxes, vectors = [], [], []
        for i, name in enumerate(names):
            for box, vector in zip(done[name][1], done[name][2]):
                owner.append(i)
                boxes.append(box)
                vectors.append(vector)
        tmp = args.out.with_suffix(".tmp.npz")
        np.savez(tmp, files=np.array(names), sizes=np.array([done[n][0] for n in names], np.int32).reshape(-1, 2),
                 owner=np.array(owner, np.int32), boxes=np.array(boxes, np.float32).reshape(-1, 4),
                 vectors=np.array(vectors, np.float32).reshape(-1, 128), key=KEY, seconds_per_image=seconds)
        tmp.replace(args.out)

    todo = [f for f in files if f not in done]
    started = time.perf_counter()
    for count, name in enumerate(todo, 1):
        image = face_recognition.load_image_file(str(args.data / name))
        locations = face_recognition.face_locations(image, number_of_times_to_upsample=1, model="hog")
        encodings = face_recognition.face_encodings(image, locations)
        # face_recognition's (top, right, bottom, left) -> x1, y1, x2, y2
        boxes = [(float(left), float(top), float(right), float(bottom)) for top, right, bottom, left in locations]
        done[name] = ((image.shape[1], image.shape[0]), boxes, [np.asarray(e, np.float32) for e in encodings])
        if count % args.save_every == 0 or count == len(todo):
            seconds = (time.perf_counter() - started) / count
            save(seconds)
            print(f"{count}/{len(todo)} images, {seconds * 1000:.0f} ms per image", file=sys.stderr)
    if not todo:
        print(f"{args.out}: all {len(files)} images already done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
