"""Make tests/fixtures/dlib_landmark_reference.json: real dlib's 5 landmarks on real LFW faces.

A developer tool, run by hand in an environment that has real dlib (never a dependency of
edgeface) plus numpy and opencv-python-headless (the same version edgeface uses, so JPEG decoding
gives the same pixels):

    PYTHONPATH=. /path/to/venv-with-dlib/bin/python tools/make_landmark_reference.py \
        --models-dir /path/to/face_recognition_models/models

For every --every-th distinct image of LFW View 1 pairsDevTest.txt (sorted 'Name/Name_NNNN.jpg'),
read with edgeface.io.images.read_image (BGR) and flipped to RGB, dlib's HOG detector (upsample 1)
gives the largest face box, and dlib.shape_predictor(shape_predictor_5_face_landmarks.dat) gives
the 5 landmarks (dlib's integer points). Three sets of cases, all numbers, no pixels:

  faces      the colour image and dlib's box;
  grey       the first --grey images again, as the single-channel image bgr[:, :, 1] (green);
  cut        the first --cut images cropped to bgr[:, cx:] where cx = the box centre's column, the
             box shifted by -cx: half the face lies outside the image, where dlib reads 0.

Each face also stores dlib's chip geometry get_face_chip_details(shape, 150, 0.25) as a 2x3
chip->image matrix (see tools/make_resnet_reference.py: chip_matrix).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from make_resnet_reference import CHIP_PADDING, chip_matrix, pair_images

from edgeface.convert.chips import CHIP_SIZE
from edgeface.io.images import read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models-dir", type=Path, required=True, help="face_recognition_models/models")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "dlib_landmark_reference.json")
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--grey", type=int, default=60)
    parser.add_argument("--cut", type=int, default=60)
    args = parser.parse_args()

    import dlib

    lfw = args.data_dir / "lfw"
    dat = args.models_dir / "shape_predictor_5_face_landmarks.dat"
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dat))

    def points(image: np.ndarray, box: list[int]) -> list[list[int]]:
        shape = predictor(image, dlib.rectangle(*box))
        return [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)]

    faces, grey, cut = [], [], []
    for relative in pair_images(lfw)[:: args.every]:
        bgr = read_image(lfw / "images" / relative)
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        found = detector(rgb, 1)
        if not found:
            continue
        rect = max(found, key=lambda r: r.area())
        box = [rect.left(), rect.top(), rect.right(), rect.bottom()]
        shape = predictor(rgb, rect)
        details = dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING)
        faces.append(
            {
                "image": relative,
                "box": box,
                "landmarks": [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)],
                "chip_to_image": [[float(v) for v in row] for row in chip_matrix(details)],
            }
        )
        if len(grey) < args.grey:
            grey.append({"image": relative, "box": box, "landmarks": points(np.ascontiguousarray(bgr[:, :, 1]), box)})
        if len(cut) < args.cut:
            cx = (box[0] + box[2]) // 2
            shifted = [box[0] - cx, box[1], box[2] - cx, box[3]]
            cut.append({"image": relative, "crop_x": cx, "box": shifted, "landmarks": points(np.ascontiguousarray(rgb[:, cx:]), shifted)})

    fixture = {
        "how": (
            f"tools/make_landmark_reference.py with dlib {dlib.__version__}: every {args.every}th distinct image of LFW "
            "pairsDevTest.txt (sorted 'Name/Name_NNNN.jpg' under lfw/images), read with edgeface.io.images.read_image "
            "(BGR) and flipped to RGB; box = dlib HOG detector (upsample 1), largest face, as dlib rectangle corners "
            "[left, top, right, bottom]; landmarks = dlib.shape_predictor(model_file)(rgb, box) parts 0-4 (dlib's "
            "integers); chip_to_image = get_face_chip_details(shape, 150, 0.25) as a 2x3 chip (col, row, 1) -> image "
            "(x, y) matrix (chip (0,0) and (149,149) on the rect corners, rotated by angle about its centre). grey: "
            "the same boxes on the single-channel image bgr[:, :, 1]. cut: the RGB image cropped to [:, crop_x:] "
            "(crop_x = the box centre column), box shifted by -crop_x"
        ),
        "dlib_version": dlib.__version__,
        "model_file": dat.name,
        "model_sha256": hashlib.sha256(dat.read_bytes()).hexdigest(),
        "faces": faces,
        "grey": grey,
        "cut": cut,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, separators=(",", ":")).replace('},{"image"', '},\n{"image"') + "\n")
    print(f"wrote {len(faces)} faces, {len(grey)} grey, {len(cut)} cut to {args.out}")


if __name__ == "__main__":
    main()
