"""The numpy shape predictor against real dlib's 5 landmarks (tests/fixtures/dlib_landmark_reference.json,
made by tools/make_landmark_reference.py), plus input checking."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from edgeface.io.images import read_image
from edgeface.vision.landmarks import ShapePredictor

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dlib_landmark_reference.json"
SHARED_LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"
needs_lfw = pytest.mark.skipif(not (SHARED_LFW / "images").is_dir(), reason="../shared/data/lfw is absent")

MAX_OFF_BY_ONE = 0.01
"""Largest allowed fraction of landmark coordinates 1 px away from dlib's (none may be further).
dlib and numpy can round a float32 sum differently only in the last bit; measured: 0 on LFW."""


@lru_cache(maxsize=1)
def reference() -> dict:
    return json.loads(FIXTURE.read_text())


@lru_cache(maxsize=1)
def predictor() -> ShapePredictor:
    return ShapePredictor()


def compare(cases: list[dict], image_of) -> np.ndarray:
    """|ours - dlib| per coordinate, (n, 5, 2) integers."""
    ours, theirs = [], []
    for case in cases:
        image = image_of(case)
        points = predictor().predict(image, np.array([case["box"]], dtype=np.float64))[0]
        ours.append(np.floor(points.astype(np.float64) + 0.5))
        theirs.append(case["landmarks"])
    return np.abs(np.array(ours) - np.array(theirs, dtype=np.float64))


def lfw_bgr(case: dict) -> np.ndarray:
    return read_image(SHARED_LFW / "images" / case["image"])


def assert_matches(diff: np.ndarray) -> None:
    assert diff.max() <= 1, f"a landmark is {diff.max():.0f} px from dlib's"
    assert (diff > 0).mean() <= MAX_OFF_BY_ONE, f"{(diff > 0).mean():.2%} of coordinates off by 1 px"


def test_fixture_covers_enough_real_faces() -> None:
    data = reference()
    assert data["model_file"] == "shape_predictor_5_face_landmarks.dat"
    assert len(data["faces"]) >= 100
    assert len({case["image"] for case in data["faces"]}) == len(data["faces"])
    for case in data["faces"] + data["grey"] + data["cut"]:
        assert np.array(case["landmarks"]).shape == (5, 2)
        left, top, right, bottom = case["box"]
        assert right > left and bottom > top


@needs_lfw
def test_colour_faces_match_dlib() -> None:
    assert_matches(compare(reference()["faces"], lfw_bgr))


@needs_lfw
def test_single_channel_faces_match_dlib() -> None:
    assert_matches(compare(reference()["grey"], lambda case: np.ascontiguousarray(lfw_bgr(case)[:, :, 1])))


@needs_lfw
def test_faces_half_outside_the_image_match_dlib() -> None:
    assert_matches(compare(reference()["cut"], lambda case: np.ascontiguousarray(lfw_bgr(case)[:, case["crop_x"] :])))


@needs_lfw
def test_many_faces_in_one_call_equal_one_at_a_time() -> None:
    cases = reference()["faces"][:8]
    image = lfw_bgr(cases[0])
    boxes = np.array([case["box"] for case in cases], dtype=np.float64) + np.arange(8)[:, None]
    together = predictor().predict(image, boxes)
    apart = np.concatenate([predictor().predict(image, box[None]) for box in boxes])
    np.testing.assert_array_equal(together, apart)


def test_no_boxes_give_no_landmarks() -> None:
    image = np.zeros((40, 30, 3), np.uint8)
    assert predictor().predict(image, np.zeros((0, 4))).shape == (0, 5, 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_boxes_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        predictor().predict(np.zeros((40, 30, 3), np.uint8), np.array([[0.0, 0.0, 20.0, bad]]))


@pytest.mark.parametrize("boxes", [np.zeros(4), np.zeros((1, 3)), np.zeros((2, 2, 4))])
def test_badly_shaped_boxes_are_refused(boxes: np.ndarray) -> None:
    with pytest.raises(ValueError, match="boxes"):
        predictor().predict(np.zeros((40, 30, 3), np.uint8), boxes)


@pytest.mark.parametrize(
    "image", [np.zeros((40, 30, 3), np.float32), np.zeros((40, 30, 4), np.uint8), np.zeros((40,), np.uint8)]
)
def test_bad_images_are_refused(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="image"):
        predictor().predict(image, np.array([[0.0, 0.0, 20.0, 20.0]]))


def test_greyscale_image_equals_its_three_channel_copy() -> None:
    # A face-like pattern, so that the landmarks depend on the pixels: (g + g + g) // 3 == g.
    rows, cols = np.mgrid[0:120, 0:100]
    grey = (128 + 60 * np.sin(rows / 7.0) * np.cos(cols / 5.0) + (rows * cols) % 37).clip(0, 255).astype(np.uint8)
    boxes = np.array([[10.0, 15.0, 90.0, 95.0], [-20.0, 40.0, 60.0, 120.0]])
    expected = predictor().predict(np.repeat(grey[:, :, None], 3, axis=2), boxes)
    np.testing.assert_array_equal(predictor().predict(grey, boxes), expected)
    np.testing.assert_array_equal(predictor().predict(grey[:, :, None], boxes), expected)
    # ...and the pixels matter: another image moves the landmarks.
    assert not np.array_equal(predictor().predict(255 - grey, boxes), expected)
