"""Measure where BlazeFace's keypoints land on dlib's 150x150 face chip: edgeface.vision.align.BLAZEFACE_TEMPLATES.

For LFW images of people outside every pair list (the INT8 calibration set, so evaluation never
sees them): BlazeFace (short or full range) finds the face, dlib's 5-point shape predictor places the chip
exactly as dlib does, and each BlazeFace keypoint is mapped into that chip. The template is the mean
position; the spread says how much alignment from BlazeFace alone can wobble.

    python tools/calibrate_blazeface_template.py --lfw ../shared/data/lfw [--model short|full] [--count 800]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgeface.convert.chips import calibration_images
from edgeface.io.images import read_image
from edgeface.vision.align import DLIB_TEMPLATE, Aligner, dlib_chip_matrix
from edgeface.vision.blazeface import BlazeFaceDetector

KEYPOINT_NAMES = ("right eye", "left eye", "nose tip", "mouth", "right ear", "left ear")


def chip_positions(lfw: Path, count: int, model: str) -> np.ndarray:
    detector = BlazeFaceDetector(model)
    aligner = Aligner("shape_predictor")
    positions = []
    for path in calibration_images(lfw, count):
        image = read_image(path)
        face = detector.detect_central(image)
        if not len(face):
            continue
        landmarks, _ = aligner.landmarks(image, face)
        chip_to_image = dlib_chip_matrix(DLIB_TEMPLATE, landmarks[0])
        linear, offset = chip_to_image[:, :2], chip_to_image[:, 2]
        positions.append((face.kps[0].astype(np.float64) - offset) @ np.linalg.inv(linear).T)
    return np.stack(positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--count", type=int, default=800)
    parser.add_argument("--model", choices=["short", "full"], default="short")
    args = parser.parse_args()
    positions = chip_positions(args.lfw, args.count, args.model)
    print(f"{args.model} range: {len(positions)} faces")
    for name, mean, std in zip(KEYPOINT_NAMES, positions.mean(axis=0), positions.std(axis=0)):
        print(f"{name:>10}: x {mean[0]:6.2f} (sd {std[0]:4.2f})  y {mean[1]:6.2f} (sd {std[1]:4.2f})")
    print(f"BLAZEFACE_TEMPLATES[{args.model!r}] =", np.round(positions.mean(axis=0)[:4], 1).tolist())


if __name__ == "__main__":
    main()
