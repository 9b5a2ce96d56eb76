"""Make tests/fixtures/dlib_resnet_reference.json: real dlib's descriptors of real LFW face chips.

A developer tool, run by hand in an environment that has real dlib (never a dependency of
edgeface) plus numpy and opencv-python-headless (the same version edgeface uses, so JPEG decoding
gives the same pixels):

    PYTHONPATH=. /path/to/venv-with-dlib/bin/python tools/make_resnet_reference.py \
        --models-dir /path/to/face_recognition_models/models

For every chosen LFW image (every --every-th distinct image of LFW View 1 pairsDevTest.txt, in
sorted order, until --count chips): dlib's HOG detector (upsample 1) finds the face (largest box),
dlib's 5-point shape predictor and get_face_chip_details(shape, 150, 0.25) (the face_recognition
package's settings) give the chip's square and angle, which become a 2x3 chip->image matrix; the
chip is then sampled by edgeface.convert.chips.warp_chip (pure numpy float64 bilinear, round half
up) from the RGB image, and dlib's face_recognition_model_v1.compute_face_descriptor(chip) gives
the 128 numbers. The fixture stores the image path, the matrix, the chip's sha256 and the
descriptor: numbers only, no pixels.

It also prints the mean chip square over the calibration images (box_matrix convention), the
measurement behind edgeface.convert.chips.LFW_CENTRE_BOX.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgeface.convert.chips import CHIP_SIZE, calibration_images, warp_chip
from edgeface.io.images import read_image

CHIP_PADDING = 0.25


def chip_matrix(details) -> np.ndarray:  # details: dlib.chip_details
    """2x3 chip->image matrix of a dlib chip_details: chip (0,0) and (n-1,n-1) land on the rect's
    corners, rotated by `angle` about the rect's centre (as dlib's extract_image_chip does)."""
    rect = details.rect
    scale = (rect.right() - rect.left()) / (details.cols - 1)
    centre_x, centre_y = (rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2
    a, b = math.cos(details.angle) * scale, math.sin(details.angle) * scale
    half = (details.cols - 1) / 2
    return np.array([[a, -b, centre_x - a * half + b * half], [b, a, centre_y - b * half - a * half]])


def pair_images(lfw_dir: Path) -> list[str]:
    names: set[str] = set()
    for line in (lfw_dir / "pairsDevTest.txt").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 3:
            names.update({f"{fields[0]}/{fields[0]}_{int(fields[1]):04d}.jpg", f"{fields[0]}/{fields[0]}_{int(fields[2]):04d}.jpg"})
        elif len(fields) == 4:
            names.update({f"{fields[0]}/{fields[0]}_{int(fields[1]):04d}.jpg", f"{fields[2]}/{fields[2]}_{int(fields[3]):04d}.jpg"})
    return sorted(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, required=True, help="face_recognition_models/models")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "dlib_resnet_reference.json")
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--every", type=int, default=12)
    args = parser.parse_args()

    import dlib

    lfw = args.data_dir / "lfw"
    dat = args.models_dir / "dlib_face_recognition_resnet_model_v1.dat"
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(args.models_dir / "shape_predictor_5_face_landmarks.dat"))
    model = dlib.face_recognition_model_v1(str(dat))

    def details_of(rgb: np.ndarray):
        faces = detector(rgb, 1)
        if not faces:
            return None
        face = max(faces, key=lambda r: r.area())
        return dlib.get_face_chip_details(predictor(rgb, face), CHIP_SIZE, CHIP_PADDING)

    # The calibration chip square: mean dlib chip square over the calibration images.
    boxes = []
    for path in calibration_images(lfw):
        details = details_of(np.ascontiguousarray(read_image(path)[..., ::-1]))
        if details is not None:
            matrix = chip_matrix(details)
            scale = math.hypot(matrix[0, 0], matrix[1, 0])
            side = scale * CHIP_SIZE
            boxes.append((matrix[0, 2] - 0.5 * scale + 0.5, matrix[1, 2] - 0.5 * scale + 0.5, side))
    mean_box = np.mean(boxes, axis=0)
    print(f"mean dlib chip square over {len(boxes)} calibration images (left, top, side): {np.round(mean_box, 1)}")

    chips = []
    for relative in pair_images(lfw)[:: args.every]:
        if len(chips) == args.count:
            break
        rgb = np.ascontiguousarray(read_image(lfw / "images" / relative)[..., ::-1])
        details = details_of(rgb)
        if details is None:
            continue
        matrix = chip_matrix(details)
        chip = warp_chip(rgb, matrix)
        descriptor = np.asarray(model.compute_face_descriptor(chip), dtype=np.float32)
        chips.append(
            {
                "image": relative,
                "chip_to_image": [[float(v) for v in row] for row in matrix],
                "chip_rgb_sha256": hashlib.sha256(chip.tobytes()).hexdigest(),
                "descriptor": [float(str(np.float32(v))) for v in descriptor],
            }
        )
    fixture = {
        "how": (
            f"tools/make_resnet_reference.py with dlib {dlib.__version__}: every {args.every}th distinct image of "
            "LFW pairsDevTest.txt (sorted 'Name/Name_NNNN.jpg' under lfw/images), dlib HOG detector (upsample 1, "
            "largest face), shape_predictor_5_face_landmarks, get_face_chip_details(shape, 150, 0.25) -> chip_to_image "
            "(2x3, maps chip (col, row, 1) to image (x, y)); the chip is edgeface.convert.chips.warp_chip(rgb, "
            "chip_to_image) of the image read with edgeface.io.images.read_image and flipped BGR->RGB (float64 "
            "bilinear, outside = 0, round half up, uint8 RGB); chip_rgb_sha256 is sha256 of its bytes; descriptor is "
            "dlib.face_recognition_model_v1(dat).compute_face_descriptor(chip) (raw, float32 values)"
        ),
        "dlib_version": dlib.__version__,
        "model_file": dat.name,
        "model_sha256": hashlib.sha256(dat.read_bytes()).hexdigest(),
        "chips": chips,
    }
    args.out.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {len(chips)} chips to {args.out}")


if __name__ == "__main__":
    main()
