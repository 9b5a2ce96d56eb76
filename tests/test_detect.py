"""BlazeFace detector: anchors, decoding, weighted NMS, input layouts, bad input, model files, runtimes.

Real-image tests read ../shared/data (see its README) and skip when it is absent.
"""

from __future__ import annotations

import shutil
import sys
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.errors import ImageError, ModelFileError
from edgeface.io.images import read_image
from edgeface.io.models import models_dir
from edgeface.io.runtime.litert import LiteRTRunner
from edgeface.vision.blazeface import BlazeFaceDetector, ModelName, anchors_for, build_anchors, decode
from edgeface.vision.boxes import box_iou, weighted_nms

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LFW_IMAGE = DATA / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
DETECTION = DATA / "detection"
MODELS: tuple[ModelName, ...] = ("short", "full")


def _data_file(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"evaluation data not present ({path})")
    return path


@pytest.fixture(scope="module", params=MODELS)
def detector(request: pytest.FixtureRequest) -> BlazeFaceDetector:
    return BlazeFaceDetector(request.param)


@pytest.fixture(scope="module")
def short() -> BlazeFaceDetector:
    return BlazeFaceDetector("short")


@pytest.fixture(scope="module")
def full() -> BlazeFaceDetector:
    return BlazeFaceDetector("full")


@pytest.fixture(scope="module")
def lfw_face() -> np.ndarray:
    return read_image(_data_file(LFW_IMAGE))


def _centre(xyxy: np.ndarray) -> np.ndarray:
    return (xyxy[..., :2] + xyxy[..., 2:]) / 2


# --- anchors -------------------------------------------------------------------------------------


def test_short_range_anchor_layout() -> None:
    anchors = anchors_for("short")
    assert anchors.shape == (896, 2)
    # 16x16 cells (stride 8), two anchors per cell, x varying fastest.
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[32], [0.5 / 16, 1.5 / 16])
    np.testing.assert_allclose(anchors[511], [15.5 / 16, 15.5 / 16])
    # Then 8x8 cells (three stride-16 layers share one map), six anchors per cell.
    np.testing.assert_allclose(anchors[512:518], np.tile([[0.5 / 8, 0.5 / 8]], (6, 1)))
    np.testing.assert_allclose(anchors[518], [1.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_full_range_anchor_layout() -> None:
    anchors = anchors_for("full")
    assert anchors.shape == (2304, 2)
    np.testing.assert_allclose(anchors[0], [0.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(anchors[1], [1.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(anchors[48], [0.5 / 48, 1.5 / 48])
    np.testing.assert_allclose(anchors[-1], [47.5 / 48, 47.5 / 48])
    assert len(np.unique(anchors, axis=0)) == 2304


@pytest.mark.parametrize("model", MODELS)
def test_anchor_count_matches_the_model_outputs(model: ModelName) -> None:
    detector = BlazeFaceDetector(model)
    size = detector.spec.input_size_px
    outputs = detector._runner.run(np.zeros((1, size, size, 3), np.float32))
    assert sorted(o.shape[1] for o in outputs) == [len(anchors_for(model))] * 2


@pytest.mark.parametrize(("size", "strides"), [(0, (8,)), (128, ()), (128, (8, 0))])
def test_bad_anchor_layout_is_refused(size: int, strides: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="bad anchor layout"):
        build_anchors(size, strides, 1.0)


# --- decoding ------------------------------------------------------------------------------------


def test_decode_offsets_are_input_pixels_from_the_anchor_centre() -> None:
    anchors = np.array([[0.25, 0.5], [0.75, 0.75]], np.float32)
    raw = np.zeros((2, 16), np.float32)
    raw[0, :4] = [12.8, -6.4, 25.6, 51.2]  # centre +0.1/-0.05, size 0.2 x 0.4 of a 128 px input
    raw[0, 4:6] = [-12.8, 0.0]  # first keypoint 0.1 left of the anchor
    xyxy, kps, scores = decode(raw, np.array([0.0, 1000.0], np.float32), anchors, 128)
    np.testing.assert_allclose(xyxy[0], [0.25, 0.25, 0.45, 0.65], atol=1e-6)
    np.testing.assert_allclose(kps[0, 0], [0.15, 0.5], atol=1e-6)
    np.testing.assert_allclose(kps[0, 1:], np.tile([[0.25, 0.5]], (5, 1)), atol=1e-6)
    np.testing.assert_allclose(xyxy[1], [0.75, 0.75, 0.75, 0.75])
    np.testing.assert_allclose(scores, [0.5, 1.0])  # logits clipped to +-100 before the sigmoid


def test_decode_refuses_a_count_mismatch() -> None:
    with pytest.raises(ValueError, match="for 3 anchors"):
        decode(np.zeros((2, 16)), np.zeros(2), np.zeros((3, 2), np.float32), 128)


def test_lfw_face_is_one_centred_box_with_keypoints_in_order(
    detector: BlazeFaceDetector, lfw_face: np.ndarray
) -> None:
    faces = detector.detect(lfw_face)
    assert len(faces) == 1
    box, kps = faces.xyxy[0], faces.kps[0]
    h, w = lfw_face.shape[:2]
    assert np.hypot(*(_centre(box) - [w / 2, h / 2])) < 0.1 * w
    assert 0.3 * w < box[2] - box[0] < 0.8 * w
    right_eye, left_eye, nose, mouth, right_ear, left_ear = kps
    # The subject's right eye is on the image's left.
    assert right_ear[0] < right_eye[0] < nose[0] < left_eye[0] < left_ear[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]
    inner = kps[:4]
    assert np.all(inner >= box[:2]) and np.all(inner <= box[2:])


def test_detection_boxes_match_annotated_faces(full: BlazeFaceDetector, short: BlazeFaceDetector) -> None:
    """dlib's 9 annotated PASCAL photos (43 faces, many small): full range finds nearly all of them."""
    truth = _annotated_faces()
    found = {"short": 0, "full": 0}
    false = {"short": 0, "full": 0}
    for name, boxes in truth.items():
        image = read_image(DETECTION / name)
        for model, detector in (("short", short), ("full", full)):
            faces = detector.detect(image)
            hits = _matches(faces.xyxy, boxes)
            found[model] += hits
            false[model] += len(faces) - hits
    total = sum(len(boxes) for boxes in truth.values())
    assert total == 43
    assert found["full"] >= 0.9 * total and false["full"] <= 2
    # Short range sees these group photos at 128 px, where most faces are a few pixels wide.
    assert 5 <= found["short"] <= found["full"]


def test_no_face_among_dogs(full: BlazeFaceDetector) -> None:
    assert len(full.detect(read_image(_data_file(DETECTION / "dogs.jpg")))) == 0


def _annotated_faces() -> dict[str, np.ndarray]:
    truth: dict[str, np.ndarray] = {}
    for xml in ("training.xml", "testing.xml"):
        for image in ET.parse(_data_file(DETECTION / xml)).getroot().iter("image"):
            boxes = [
                [float(b.get(k, 0)) for k in ("left", "top", "width", "height")] for b in image.iter("box")
            ]
            xywh = np.asarray(boxes, np.float32)
            truth[image.get("file", "")] = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return truth


def _matches(found: np.ndarray, truth: np.ndarray, min_iou: float = 0.3) -> int:
    """Greedy one-to-one matching of found boxes to annotated boxes."""
    free = np.ones(len(truth), bool)
    for box in found:
        iou = np.where(free, box_iou(box, truth), 0.0)
        if iou.max(initial=0.0) >= min_iou:
            free[int(np.argmax(iou))] = False
    return int((~free).sum())


# --- input layouts -------------------------------------------------------------------------------


def test_bgr_grey_and_bgra_find_the_same_face(detector: BlazeFaceDetector, lfw_face: np.ndarray) -> None:
    reference = detector.detect(lfw_face)
    grey = cv2.cvtColor(lfw_face, cv2.COLOR_BGR2GRAY)
    variants = {
        "grey": grey,
        "grey (h, w, 1)": grey[:, :, None],
        "bgra": cv2.cvtColor(lfw_face, cv2.COLOR_BGR2BGRA),
        "rgb view (negative strides)": np.ascontiguousarray(lfw_face[:, :, ::-1])[:, :, ::-1],
    }
    for name, image in variants.items():
        faces = detector.detect(image)
        assert len(faces) == 1, name
        assert np.abs(faces.xyxy - reference.xyxy).max() < 4, name
        assert np.abs(faces.kps - reference.kps).max() < 4, name
    np.testing.assert_array_equal(detector.detect(variants["bgra"]).xyxy, reference.xyxy)


@pytest.mark.parametrize(
    ("model", "canvas_hw", "scale", "offset_xy"),
    [
        ("full", (360, 1280), 1.0, (900, 60)),
        ("full", (1280, 360), 1.0, (50, 700)),
        ("short", (360, 720), 1.44, (340, 0)),
        ("short", (720, 360), 1.44, (0, 300)),
    ],
)
def test_face_pasted_into_a_wide_or_tall_canvas_is_found_at_its_offset(
    model: ModelName, canvas_hw: tuple[int, int], scale: float, offset_xy: tuple[int, int], lfw_face: np.ndarray
) -> None:
    detector = BlazeFaceDetector(model)
    reference = detector.detect(lfw_face)
    face = cv2.resize(lfw_face, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((*canvas_hw, 3), np.uint8)
    x, y = offset_xy
    canvas[y : y + face.shape[0], x : x + face.shape[1]] = face
    faces = detector.detect(canvas)
    assert len(faces) == 1
    expected = reference.xyxy[0] * scale + [x, y, x, y]
    width = expected[2] - expected[0]
    assert np.hypot(*(_centre(faces.xyxy[0]) - _centre(expected))) < 0.1 * width
    assert abs((faces.xyxy[0, 2] - faces.xyxy[0, 0]) / width - 1) < 0.15
    expected_kps = reference.kps[0] * scale + [x, y]
    assert np.abs(faces.kps[0] - expected_kps).max() < 0.15 * width


def test_huge_image_is_handled_in_reasonable_time(short: BlazeFaceDetector, lfw_face: np.ndarray) -> None:
    canvas = np.zeros((8000, 8000, 3), np.uint8)
    canvas[2000:6000, 1000:5000] = cv2.resize(lfw_face, (4000, 4000), interpolation=cv2.INTER_LINEAR)
    started = time.perf_counter()
    faces = short.detect(canvas)
    assert time.perf_counter() - started < 10
    assert len(faces) == 1
    assert np.hypot(*(_centre(faces.xyxy[0]) - [3000, 4000])) < 400


def test_tiny_and_blank_images_give_no_faces(detector: BlazeFaceDetector) -> None:
    for image in (np.zeros((1, 1, 3), np.uint8), np.full((480, 640), 255, np.uint8), np.zeros((3, 5000), np.uint8)):
        faces = detector.detect(image)
        assert len(faces) == 0
        assert len(detector.detect_central(image)) == 0


# --- detect_central ------------------------------------------------------------------------------


def test_detect_central_picks_the_face_at_the_centre(full: BlazeFaceDetector, lfw_face: np.ndarray) -> None:
    canvas = np.zeros((500, 800, 3), np.uint8)
    canvas[0:250, 0:250] = lfw_face  # a bystander in the corner
    canvas[125:375, 275:525] = lfw_face  # the subject, centred
    assert len(full.detect(canvas)) == 2
    central = full.detect_central(canvas)
    assert len(central) == 1
    assert np.hypot(*(_centre(central.xyxy[0]) - [400, 250])) < 25


def test_detect_central_accepts_a_weaker_face_covering_the_centre(full: BlazeFaceDetector) -> None:
    """In this LFW image full range scores a bystander at the top edge above the subject (both near 0.6)."""
    image = read_image(_data_file(DATA / "lfw" / "images" / "Alfred_Ford" / "Alfred_Ford_0001.jpg"))
    strong = full.detect(image)
    assert len(strong) >= 1 and not any(_covers(box, 125, 125) for box in strong.xyxy)
    central = full.detect_central(image)
    assert len(central) == 1
    assert central.score[0] >= full.fallback_score_threshold
    assert _covers(central.xyxy[0], 125, 125)


def _covers(box: np.ndarray, x: float, y: float) -> bool:
    return bool(box[0] <= x <= box[2] and box[1] <= y <= box[3])


# --- weighted NMS --------------------------------------------------------------------------------


def _kps_at(*xy: tuple[float, float]) -> np.ndarray:
    return np.asarray([np.tile(p, (6, 1)) for p in xy], np.float32)


def test_weighted_nms_blends_overlapping_boxes_by_score() -> None:
    xyxy = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], np.float32)  # IoU 8/12
    scores = np.array([0.6, 0.9], np.float32)
    boxes, kps, out_scores = weighted_nms(xyxy, _kps_at((0, 0), (10, 20)), scores, 0.3)
    np.testing.assert_allclose(boxes, [[1.2, 0, 11.2, 10]], rtol=1e-6)
    np.testing.assert_allclose(kps[0], np.tile([6.0, 12.0], (6, 1)), rtol=1e-6)
    np.testing.assert_allclose(out_scores, [0.9])  # the best score, not a mean


def test_weighted_nms_keeps_separate_faces_best_first() -> None:
    xyxy = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 20]], np.float32)  # third: IoU 0.5 with first
    scores = np.array([0.7, 0.8, 0.6], np.float32)
    boxes, kps, out_scores = weighted_nms(xyxy, _kps_at((1, 1), (2, 2), (3, 3)), scores, 0.5)
    # IoU must exceed the threshold to merge: at exactly 0.5 the third box stays on its own.
    np.testing.assert_allclose(out_scores, [0.8, 0.7, 0.6])
    np.testing.assert_allclose(boxes, xyxy[[1, 0, 2]])
    np.testing.assert_allclose(kps[:, 0], [[2, 2], [1, 1], [3, 3]])


def test_weighted_nms_compares_with_the_best_box_not_the_blend() -> None:
    # b overlaps a (IoU 0.6) and c overlaps b (0.48) but c and a only by 0.25: c survives.
    xyxy = np.array([[0, 0, 10, 10], [2.5, 0, 12.5, 10], [6, 0, 16, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert box_iou(xyxy[0], xyxy[2:])[0] < 0.3 < box_iou(xyxy[0], xyxy[1:2])[0]
    boxes, _, out_scores = weighted_nms(xyxy, _kps_at((0, 0), (0, 0), (0, 0)), scores, 0.3)
    np.testing.assert_allclose(out_scores, [0.9, 0.7])
    np.testing.assert_allclose(boxes[1], xyxy[2])


def test_weighted_nms_of_nothing_is_empty() -> None:
    boxes, kps, scores = weighted_nms(np.zeros((0, 4), np.float32), np.zeros((0, 6, 2), np.float32), np.zeros(0, np.float32), 0.3)
    assert boxes.shape == (0, 4) and kps.shape == (0, 6, 2) and scores.shape == (0,)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), "empty image"),
        (np.zeros((0, 640), np.uint8), "empty image"),
        (np.zeros((48, 64, 3), np.float32), "must be uint8"),
        (np.zeros((48, 64, 3), np.uint16), "must be uint8"),
        (np.zeros((48, 64, 2), np.uint8), "unsupported image shape"),
        (np.zeros((48, 64, 5), np.uint8), "unsupported image shape"),
        (np.zeros((48,), np.uint8), "unsupported image shape"),
        ([[0, 1], [2, 3]], "must be a numpy array"),
    ],
)
def test_bad_images_get_a_one_line_error(short: BlazeFaceDetector, image: object, message: str) -> None:
    for call in (short.detect, short.detect_central):
        with pytest.raises(ImageError, match=message) as error:
            call(image)  # type: ignore[arg-type]
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"model": "medium"}, "model must be one of"), ({"score_threshold": 1.5}, "score_threshold"), ({"nms_iou_threshold": -0.1}, "nms_iou")],
)
def test_bad_detector_options_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BlazeFaceDetector(**kwargs)  # type: ignore[arg-type]


def test_bad_score_threshold_per_call_is_refused(short: BlazeFaceDetector) -> None:
    with pytest.raises(ValueError, match="score_threshold must be in"):
        short.detect(np.zeros((64, 64, 3), np.uint8), score_threshold=-0.5)


# --- model files and runtimes --------------------------------------------------------------------


def _model(name: str = "blazeface_short_range.tflite") -> Path:
    return models_dir() / name


@pytest.mark.parametrize("keep_bytes", [0, 100, 100_000])
def test_truncated_tflite_is_a_one_line_model_file_error(tmp_path: Path, keep_bytes: int) -> None:
    broken = tmp_path / "short.tflite"
    shutil.copyfile(_model(), broken)
    with broken.open("r+b") as handle:
        handle.truncate(keep_bytes)
    with pytest.raises(ModelFileError, match="cannot load LiteRT model") as error:
        LiteRTRunner(broken)
    assert "\n" not in str(error.value)


def test_missing_or_foreign_model_file_is_a_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="missing"):
        LiteRTRunner(tmp_path / "absent.tflite")
    foreign = tmp_path / "embedder.tflite"
    foreign.write_bytes(b"\x08\x07\x12\x0bonnx" + bytes(4000))
    with pytest.raises(ModelFileError, match="cannot load"):
        LiteRTRunner(foreign)


def test_runner_refuses_a_wrong_input_shape() -> None:
    runner = LiteRTRunner(_model())
    with pytest.raises(ValueError, match=r"\(1, 128, 128, 3\)"):
        runner.run(np.zeros((1, 192, 192, 3), np.float32))


def test_tflite_runtime_is_used_when_ai_edge_litert_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    from ai_edge_litert.interpreter import Interpreter

    # A board with only tflite_runtime installed: same Interpreter API under another package name.
    package = types.ModuleType("tflite_runtime")
    module = types.ModuleType("tflite_runtime.interpreter")
    module.Interpreter = Interpreter  # type: ignore[attr-defined]
    package.interpreter = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", package)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", module)
    runner = LiteRTRunner(_model())
    outputs = runner.run(np.zeros((1, 128, 128, 3), np.float32))
    assert sorted(o.shape for o in outputs) == [(1, 896, 1), (1, 896, 16)]


def test_no_litert_runtime_is_a_one_line_model_file_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ModelFileError, match="pip install ai-edge-litert") as error:
        LiteRTRunner(_model())
    assert "\n" not in str(error.value)
    with pytest.raises(ModelFileError):
        BlazeFaceDetector("short")


# --- the two post-processing paths -----------------------------------------------------------------


def test_python_and_numpy_post_processing_give_the_same_faces(
    detector: BlazeFaceDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few candidates are decoded and merged on Python floats, many with numpy: same detections."""
    import edgeface.vision.boxes as boxes_module

    images = [read_image(_data_file(DETECTION / name)) for name in ("2008_002506.jpg", "bald_guys.jpg")]
    images.append(read_image(_data_file(LFW_IMAGE)))
    small = [(detector.detect(im), detector.detect_central(im)) for im in images]
    monkeypatch.setattr(boxes_module, "_SMALL_NMS", -1)  # every image through the numpy path
    for image, (faces, central) in zip(images, small):
        numpy_faces = detector.detect(image)
        assert len(faces) == len(numpy_faces) >= 1
        np.testing.assert_allclose(faces.xyxy, numpy_faces.xyxy, atol=1e-3)
        np.testing.assert_allclose(faces.kps, numpy_faces.kps, atol=1e-3)
        np.testing.assert_array_equal(faces.score, numpy_faces.score)
        np.testing.assert_allclose(central.xyxy, detector.detect_central(image).xyxy, atol=1e-3)


def test_letterbox_reuses_its_buffer_and_repads_when_the_size_changes() -> None:
    from edgeface.vision.blazeface import Letterboxer

    letterbox = Letterboxer(128)
    wide = np.full((72, 128, 3), 255, np.uint8)
    tensor, box = letterbox(wide)
    assert (box.pad_x, box.pad_y) == (0, 28)
    assert np.all(tensor[0, :28] == -1) and np.allclose(tensor[0, 28:100], 1, rtol=0, atol=2e-7)  # float32 pixel / 127.5 - 1
    tall = np.full((128, 64, 3), 255, np.uint8)
    tensor2, box2 = letterbox(tall)
    assert tensor2 is tensor  # one preallocated input
    assert (box2.pad_x, box2.pad_y) == (32, 0)
    assert np.all(tensor2[0, :, :32] == -1) and np.allclose(tensor2[0, :, 32:96], 1, rtol=0, atol=2e-7)
    assert np.all(tensor2[0, :, 96:] == -1)


def test_fast_resize_finds_the_same_annotated_faces_as_area() -> None:
    """The pipeline's "fast" (bilinear) shrinking: on dlib's annotated photos full range finds the same faces."""
    truth = _annotated_faces()
    found = {}
    for resize in ("area", "fast"):
        detector = BlazeFaceDetector("full", resize=resize)
        hits = false = 0
        boxes = []
        for name, annotated in truth.items():
            image = read_image(DETECTION / name)
            faces = detector.detect(image)
            matched = _matches(faces.xyxy, annotated)
            hits, false = hits + matched, false + len(faces) - matched
            boxes.append((faces.xyxy, max(image.shape[:2]) / 192))  # source pixels per model-input pixel
        found[resize] = (hits, false, boxes)
    assert found["fast"][:2] == found["area"][:2]
    for (fast, _), (area, px) in zip(found["fast"][2], found["area"][2]):
        for box in area:  # the same faces, boxes within 1.5 model-input pixels (+5% of the face's width)
            nearest = fast[np.argmin(np.abs(fast - box).max(axis=1))]
            assert np.abs(nearest - box).max() <= 1.5 * px + 0.05 * (box[2] - box[0])


def test_resize_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="resize"):
        BlazeFaceDetector("short", resize="nearest")  # type: ignore[arg-type]


CROWD = DATA / "video" / "crowd_walk.mp4"


@pytest.mark.skipif(not CROWD.is_file(), reason="../shared/data/video is absent")
def test_small_faces_in_a_big_frame_get_precise_keypoints() -> None:
    """Full range on a whole 1080p frame: the boxes are fine but the keypoints are 10-30 px off, which
    pulls different people's embeddings together. Re-detecting on a crop fixes the alignment."""
    import cv2

    from edgeface.vision.align import Aligner
    from edgeface.vision.blazeface import KeypointRefiner
    from edgeface.vision.detections import FaceDetections
    from edgeface.vision.embed import Embedder

    detector, refiner = BlazeFaceDetector("full"), KeypointRefiner(BlazeFaceDetector("short"))
    embedder = Embedder("fp32", flip=False)
    plain_aligner, precise_aligner = Aligner("blazeface", "full"), Aligner("blazeface", "full", refiner=refiner)
    capture = cv2.VideoCapture(str(CROWD))
    plain, precise = [], []
    for index in range(71):
        ok, frame = capture.read()
        assert ok
        if index not in (50, 60, 70):  # 2-3 different people in each of these frames
            continue
        faces = detector.detect(frame)
        refined, which = refiner.refine(frame, faces)
        assert len(faces) >= 2 and which.any() and np.array_equal(refined.xyxy, faces.xyxy)
        assert np.linalg.norm(refined.kps[:, :4] - faces.kps[:, :4], axis=-1).max() > 10  # they were far off
        for aligner, out in ((plain_aligner, plain), (precise_aligner, precise)):
            e = embedder.embed(aligner.align(frame, faces))
            out += [np.linalg.norm(e[a] - e[b]) for a in range(len(e)) for b in range(a + 1, len(e))]
    assert min(precise) > 0.4 and min(precise) > min(plain)
    # a face that is large in the frame is left alone
    big = FaceDetections(np.array([[0, 0, 1000, 1000]], np.float32), np.ones(1, np.float32), faces.kps[:1])
    assert not refiner.refine(frame, big)[1].any()


@pytest.mark.parametrize(("size", "target"), [((640, 360), (128, 72)), ((640, 480), (128, 96)), ((576, 576), (192, 192)),
                                              ((896, 504), (128, 72)), ((640, 360), (192, 108))])
def test_fast_resize_at_an_odd_whole_factor_is_exactly_bilinear(size: tuple[int, int], target: tuple[int, int]) -> None:
    """At an odd whole shrink factor bilinear samples land on pixel centres; the cheaper nearest-pixel
    path must give the very same model input (other factors stay bilinear)."""
    from edgeface.vision.blazeface import _downscale

    image = np.random.default_rng(2).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    np.testing.assert_array_equal(_downscale(image, *target, mode="fast"),
                                  cv2.resize(image, target, interpolation=cv2.INTER_LINEAR))


def test_detector_keeps_its_thumbnail_of_the_last_frame(detector: BlazeFaceDetector) -> None:
    assert BlazeFaceDetector("short").last_thumbnail is None
    frame = np.random.default_rng(3).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    detector.detect(frame)
    side = detector.spec.input_size_px
    assert detector.last_thumbnail is not None and detector.last_thumbnail.shape == (side * 9 // 16, side, 3)
