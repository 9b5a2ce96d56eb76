"""The default detector ("auto": full range for the scene, short range for faces too close for it) on
real photos and video: tight crops, group photos, whole scenes, 1080p frames. Reads ../shared/data
and skips when it is absent."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.config import Config
from edgeface.io.images import read_image
from edgeface.vision.blazeface import AutoRangeDetector, BlazeFaceDetector, make_detector
from edgeface.vision.boxes import contained_frac

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "bbt").is_dir(), reason="../shared/data is absent")


@pytest.fixture(scope="module")
def auto() -> AutoRangeDetector:
    detector = make_detector("auto")
    assert isinstance(detector, AutoRangeDetector)
    return detector


def test_auto_is_the_default() -> None:
    assert Config().recognition.detector.model == "auto"
    assert Config().pipeline.refine_face_max_frac == 1.0


def test_contained_frac_sees_a_box_inside_another_whatever_the_iou() -> None:
    boxes = np.array([[0, 0, 100, 100], [200, 200, 210, 210]], np.float32)
    inner = np.array([40, 40, 60, 60], np.float32)  # IoU with the first box is 0.04
    assert contained_frac(inner, boxes).tolist() == pytest.approx([1.0, 0.0])


def test_auto_needs_one_detector_of_each_range() -> None:
    short = BlazeFaceDetector(model="short")
    with pytest.raises(ValueError, match="full-range and a short-range"):
        AutoRangeDetector(short, short)


@needs_data
def test_no_tight_crop_is_missed(auto: AutoRangeDetector) -> None:
    """bbt/ and orl/: 440 face crops, the face filling the frame. Full range alone misses 184 of them."""
    crops = sorted((DATA / "bbt").glob("[!_]*/*.png")) + sorted((DATA / "orl").glob("s*/*.pgm"))
    assert len(crops) == 440
    found = {str(p.relative_to(DATA)): len(auto.detect(read_image(p))) for p in crops}
    missed = [name for name, count in found.items() if count == 0]
    several = [name for name, count in found.items() if count > 1]
    assert not missed
    assert len(several) <= 2, several


@needs_data
@pytest.mark.parametrize(("photo", "least", "most"), [
    ("people/_group/obama_and_biden.jpg", 2, 2),  # short range alone found Obama only
    ("people/_group/two_people.jpg", 2, 2),
    ("bbt/_group/bbt1.jpg", 4, 8),  # short range alone: no face at all
    ("bbt/_group/bbt3.jpg", 4, 8),
])
def test_group_photos(auto: AutoRangeDetector, photo: str, least: int, most: int) -> None:
    assert least <= len(auto.detect(read_image(DATA / photo))) <= most


@needs_data
def test_a_1080p_hall_frame_has_faces(auto: AutoRangeDetector) -> None:
    capture = cv2.VideoCapture(str(DATA / "video" / "crowd_walk.mp4"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 60)
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape[:2] == (1080, 1920)
    assert len(BlazeFaceDetector(model="short").detect(frame)) == 0  # what the old default saw
    faces = auto.detect(frame)
    assert len(faces) >= 2
    assert faces.xyxy[:, 3].max() > 540  # boxes in full-frame pixels


@needs_data
def test_loose_short_range_boxes_around_a_found_face_are_not_extra_faces(auto: AutoRangeDetector) -> None:
    """CelebA photos where the short-range model fires on a loose box around the face the full-range
    model found (the two boxes' IoU is small, one lies inside the other): one face, not two."""
    photos = [DATA / "celeba" / "images" / name for name in ("7325/7325_0008.jpg", "7398/7398_0013.jpg",
                                                              "7429/7429_0011.jpg", "7439/7439_0015.jpg")]
    if not all(p.is_file() for p in photos):
        pytest.skip("../shared/data/celeba is absent")
    for photo in photos:
        faces = auto.detect(read_image(photo))
        boxes = faces.xyxy
        for i in range(len(boxes)):
            others = np.delete(boxes, i, axis=0)
            assert not len(others) or contained_frac(boxes[i], others).max() <= 0.5, photo.name
