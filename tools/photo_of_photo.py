"""What recognition is not: a photo of a photo. Renders an enrolled person's photo small inside a
larger synthetic camera frame, the way a camera sees a phone held up to it or a print on a wall, and
runs `edgeface identify` on the result.

edgeface has no liveness check. Re-photographing a screen cannot be done on this machine, so the
"screen" and the "print" are simulated: the photo is resized, framed (a black bezel or a white paper
border), overlaid with a moire pattern (screen) or paper grain (print), brightness-shifted, warped in
perspective (held at an angle), blurred, put on a noisy background and JPEG-recompressed twice.

    python tools/photo_of_photo.py [--data ../shared/data] [--out /tmp/photo_of_photo] [--json]

The gallery is built from the first photo of each person in people/ (1.jpg or 1.png); the photos
shown are that enrolled photo and another one (2.jpg) of barack_obama, joe_biden and alex_lacamoire,
each as a screen and as a print, 600, 360 and 220 px wide. Prints one line per rendering: who
identify names, and the distance; then the same photos identified as they are (the baseline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgeface.config import Config
from edgeface.storage.enroll import Enroller
from edgeface.storage.gallery import Gallery
from edgeface.vision.analyzer import FaceAnalyzer

SHOWN = ["barack_obama/1.jpg", "joe_biden/1.jpg", "alex_lacamoire/1.png",  # the enrolled photo, printed or on a phone
         "barack_obama/2.jpg", "joe_biden/2.jpg", "alex_lacamoire/2.jpg"]  # another photo of them
WIDTHS_PX = (600, 360, 220)
"""Width of the shown photo in the 1280x720 frame: a tablet close up, a phone at arm's length, farther."""


def background(rng: np.random.Generator, width: int = 1280, height: int = 720) -> np.ndarray:
    """A dim room: a vertical gradient, a 'door frame', sensor noise."""
    y = np.linspace(0, 1, height)[:, None, None]
    frame = (60 + 70 * y + np.zeros((height, width, 3))).astype(np.float32)
    frame[:, 180:220] = (90, 80, 70)
    frame[:, 1060:1100] = (90, 80, 70)
    frame += rng.normal(0, 6, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def screen(photo: np.ndarray, width_px: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The photo as a phone screen (black bezel, moire, backlight) or a print (white border, grain)."""
    h, w = photo.shape[:2]
    inner = cv2.resize(photo, (width_px, int(round(width_px * h / w))), interpolation=cv2.INTER_AREA).astype(np.float32)
    ih, iw = inner.shape[:2]
    yy, xx = np.mgrid[0:ih, 0:iw].astype(np.float32)
    if kind == "screen":
        moire = 1.0 + 0.10 * np.sin(xx * 0.9 + yy * 0.25) * np.sin(yy * 0.8 - xx * 0.2)
        inner = inner * moire[..., None] * 1.15 + 12  # backlit, bluish
        inner[..., 0] += 10
        border, colour = max(6, width_px // 16), (10, 10, 10)
    else:
        inner = inner * 0.9 + 10 + rng.normal(0, 5, inner.shape)
        border, colour = max(6, width_px // 12), (225, 228, 230)
    inner = np.clip(inner, 0, 255).astype(np.uint8)
    return cv2.copyMakeBorder(inner, border, border, border, border, cv2.BORDER_CONSTANT, value=colour)


def render(photo: np.ndarray, kind: str, width_px: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame = background(rng)
    card = screen(photo, width_px, kind, rng)
    ch, cw = card.shape[:2]
    x0, y0 = 640 - cw // 2, 360 - ch // 2
    # Held at an angle: the right edge farther away (shorter), the top tipped back.
    src = np.float32([[0, 0], [cw, 0], [cw, ch], [0, ch]])
    dst = np.float32([[x0 + 0.04 * cw, y0 + 0.05 * ch], [x0 + 0.93 * cw, y0 + 0.10 * ch],
                      [x0 + 0.95 * cw, y0 + 0.92 * ch], [x0, y0 + ch]])
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(card, matrix, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full((ch, cw), 255, np.uint8), matrix, (frame.shape[1], frame.shape[0]))
    frame[mask > 0] = warped[mask > 0]
    frame = cv2.GaussianBlur(frame, (3, 3), 0.8)
    frame = np.clip(frame.astype(np.float32) + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
    for quality in (60, 75):  # the camera's encoder, then a second recompression
        frame = cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)
    return frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "photo_of_photo")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    people = args.data / "people"
    args.out.mkdir(parents=True, exist_ok=True)
    gallery_path = args.out / "gallery.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{gallery_path}{suffix}").unlink(missing_ok=True)
    with Gallery(gallery_path) as gallery:
        enroller = Enroller(FaceAnalyzer.from_config(Config().recognition), gallery)
        for folder in sorted(p for p in people.iterdir() if p.is_dir() and not p.name.startswith("_")):
            first = sorted(folder.iterdir())[0]
            enroller.enroll(folder.name, [first])
    renders = []
    for shown in SHOWN:
        photo = cv2.imread(str(people / shown))
        for kind in ("screen", "print"):
            for width_px in WIDTHS_PX:
                path = args.out / f"{shown.replace('/', '_').rsplit('.', 1)[0]}-{kind}-{width_px}px.jpg"
                cv2.imwrite(str(path), render(photo, kind, width_px, seed=len(renders)))
                renders.append((shown, kind, width_px, path))
    baseline = subprocess.run([sys.executable, "-m", "edgeface.cli", "identify", "--gallery", str(gallery_path),
                               *[str(people / shown) for shown in SHOWN]], capture_output=True, text=True, check=False)
    for line in baseline.stdout.splitlines():
        print("as is: " + line.replace(str(people) + "/", ""))
    done = subprocess.run([sys.executable, "-m", "edgeface.cli", "identify", "--jsonl", "--gallery",
                           str(gallery_path), *[str(r[3]) for r in renders]], capture_output=True, text=True, check=False)
    results = []
    for (person, kind, width_px, path), line in zip(renders, done.stdout.splitlines()):
        record = json.loads(line)
        faces = record["faces"]
        named = faces[0]["name"] if faces else "no face"
        distance = faces[0]["distance"] if faces else None
        results.append({"shown": person, "kind": kind, "width_px": width_px, "named": named, "distance": distance,
                        "faces": len(faces), "file": str(path)})
        print(f"{person:<22} {kind:<6} {width_px:>4} px wide in a 1280x720 frame -> {named}"
              + (f" (distance {distance:.3f})" if distance is not None else ""))
    recognised = sum(r["named"] == r["shown"].split("/")[0] for r in results)
    wrong = sum(r["named"] not in ("unknown", "no face", r["shown"].split("/")[0]) for r in results)
    print(f"{recognised} of {len(results)} photos of photos recognised as the person shown, {wrong} as someone "
          f"else; threshold {Gallery(gallery_path, read_only=True).match_max_distance}")
    if args.json:
        print(json.dumps({"recognised": recognised, "wrong": wrong, "total": len(results), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
