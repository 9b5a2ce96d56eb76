"""BlazeFace face detection: letterbox -> LiteRT model -> anchor decoding -> weighted NMS -> source pixels.

The models are MediaPipe's short-range (128x128 input, 896 anchors; faces that fill a good part of
the frame, within ~2 m of a webcam) and full-range (192x192, 2304 anchors; smaller faces, up to ~5 m)
BlazeFace detectors. Everything around the model is ours and follows MediaPipe's published graph
options:

- input: the whole image letterboxed (aspect kept, centred, black padding) to the model size, RGB,
  float32 in [-1, 1];
- anchors: SSD anchors with fixed unit size, centred in their feature-map cell (short range: strides
  8, 16, 16, 16 with two anchors per layer; full range: one stride-4 layer, one anchor per cell);
- decoding: 16 values per anchor, x/y/w/h of the box then six x/y keypoints, all offsets in model
  input pixels relative to the anchor centre; scores clipped to +-100 then passed through a sigmoid;
- weighted NMS: among boxes overlapping the best remaining one by IoU > threshold, boxes and
  keypoints are averaged weighted by score (the score stays the best one's).

Boxes come back clipped to the image; keypoints are not clipped (for a face cut by the frame edge an
ear or eye may lie just outside, and alignment needs its true position).

`AutoRangeDetector` ("auto", the default) runs both: the full-range model for the scene, the short-range
one for faces too close (too big) for it. Measured in the README: on whole-scene photos (CelebA) and
1080p video the full-range model finds faces the short-range one cannot see, while on tight crops
(faces filling the frame: bbt/, orl/) it misses 42% that the short-range model finds.

LFW-style crops (one face near the centre of a tight crop): `detect_central` returns the single most
central face, accepting a lower score (`fallback_score_threshold`) for a face that covers the image
centre. See tools/lfw_detection_misses.py for the numbers.
"""

from __future__ import annotations

import logging
import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np

from edgeface.errors import ImageError
from edgeface.io.runtime import Runner
from edgeface.vision.boxes import box_iou, contained_frac, weighted_nms_rows
from edgeface.vision.detections import NUM_KEYPOINTS, FaceDetections

logger = logging.getLogger(__name__)

ModelName = Literal["short", "full"]
DetectorChoice = Literal["auto", "short", "full"]

SCORE_CLIP = 100.0
"""Raw logits are clipped to +-SCORE_CLIP before the sigmoid (as MediaPipe does)."""

_NUM_COORDS = 4 + 2 * NUM_KEYPOINTS


@dataclass(frozen=True)
class BlazeFaceSpec:
    """What a BlazeFace variant needs around the model: its file, input size, anchor layout, default score."""

    model_file: str
    input_size_px: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    """> 0 adds a second anchor per layer (MediaPipe's interpolated-scale anchor); the sizes are unused
    (fixed_anchor_size), so this only changes how many anchors sit in each cell."""
    num_anchors: int
    default_score_threshold: float


SPECS: dict[str, BlazeFaceSpec] = {
    "short": BlazeFaceSpec("blazeface_short_range.tflite", 128, (8, 16, 16, 16), 1.0, 896, 0.5),
    "full": BlazeFaceSpec("blazeface_full_range.tflite", 192, (4,), 0.0, 2304, 0.6),
}


def build_anchors(input_size_px: int, strides: tuple[int, ...], interpolated_scale_aspect_ratio: float) -> np.ndarray:
    """Anchor centres (n, 2) as x, y in [0, 1] of the model input, in the order the model emits them.

    Consecutive layers with the same stride share one feature map: each of its cells gets the anchors
    of all those layers (one, plus one more when interpolated_scale_aspect_ratio > 0, per layer).
    """
    if input_size_px <= 0 or not strides or any(s <= 0 for s in strides):
        raise ValueError(f"bad anchor layout: input {input_size_px}, strides {strides}")
    per_layer = 2 if interpolated_scale_aspect_ratio > 0 else 1
    centres: list[np.ndarray] = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        same = layer
        while same < len(strides) and strides[same] == stride:
            same += 1
        per_cell = (same - layer) * per_layer
        cells = -(-input_size_px // stride)  # ceil
        grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        xy = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(xy, per_cell, axis=0))
        layer = same
    return np.concatenate(centres, axis=0).astype(np.float32)


@cache
def anchors_for(model: str) -> np.ndarray:
    spec = SPECS[model]
    anchors = build_anchors(spec.input_size_px, spec.strides, spec.interpolated_scale_aspect_ratio)
    anchors.setflags(write=False)
    return anchors


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed in the square model input: resized to (resized_w, resized_h), offset by (pad_x, pad_y)."""

    size_px: int
    source_w: int
    source_h: int
    resized_w: int
    resized_h: int
    pad_x: int
    pad_y: int

    @classmethod
    def fit(cls, source_w: int, source_h: int, size_px: int) -> Letterbox:
        scale = size_px / max(source_w, source_h)
        resized_w = min(size_px, max(1, round(source_w * scale)))
        resized_h = min(size_px, max(1, round(source_h * scale)))
        return cls(
            size_px, source_w, source_h, resized_w, resized_h, (size_px - resized_w) // 2, (size_px - resized_h) // 2
        )

    def flat_mapping(self) -> tuple[np.ndarray, np.ndarray]:
        """(pad, scale), each (16,) float32, for rows laid out x1, y1, x2, y2, then six keypoint x, y:
        source pixels = (model-input pixels - pad) * scale, model-input pixels = [0, 1] coordinates * size_px."""
        pad = np.tile(np.array([self.pad_x, self.pad_y], np.float32), _NUM_COORDS // 2)
        scale = np.tile(np.array([self.source_w / self.resized_w, self.source_h / self.resized_h], np.float32),
                        _NUM_COORDS // 2)
        return pad, scale


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ImageError(f"unsupported image shape {image.shape}: expected (h, w), (h, w, 1), (h, w, 3) or (h, w, 4)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"empty image {image.shape}")
    # Guessing the range of float or 16-bit pixels would silently give wrong colours (0..255 floats
    # read as 0..1 turn white), so only 8-bit images are accepted.
    if image.dtype != np.uint8:
        raise ImageError(f"image pixels must be uint8 (0..255), got {image.dtype}; convert with edgeface.io.images.to_bgr8")
    return image


ResizeMode = Literal["area", "fast"]

ALIAS_GUARD_MIN_FACTOR = 8.0
"""Shrink factor from which the "fast" resize pre-filters (see `_downscale`)."""


def _downscale(image: np.ndarray, width: int, height: int, mode: ResizeMode = "area") -> np.ndarray:
    """Resize to (width, height) for the model.

    "area": INTER_AREA when shrinking (INTER_LINEAR when enlarging): the reference, used for photos
    (enrollment, identify, evaluations), whose thresholds were measured with it.

    "fast", for video frames, by how much the image shrinks:
    - less than 2x: INTER_AREA, as "area" (cheap on a small image);
    - 2x to ALIAS_GUARD_MIN_FACTOR (a 640x360 or 1280x720 frame): bilinear (INTER_LINEAR), as MediaPipe's
      own CPU image-to-tensor converter does (it warps with INTER_LINEAR, no anti-aliasing); it reads
      only the rows it samples: ~0.07 ms for 640x360 -> 128x72 where INTER_AREA takes ~0.3 ms, a fifth
      of the model run;
    - ALIAS_GUARD_MIN_FACTOR or more (1080p or 4K to 192 px), where plain bilinear sampling aliases
      badly: bilinear to twice the target size, then INTER_AREA halving (a 2x2 average, OpenCV's fast
      path): ~0.7 ms for 1920x1080 -> 192x108 instead of ~3 ms.
    On the annotated photos "fast" finds the same faces as "area"; boxes move by about 1-3% of the face
    width (numbers in the report of issue 3).
    """
    import cv2

    h, w = image.shape[:2]
    if width >= w and height >= h:
        return image if (width, height) == (w, h) else cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    factor = max(w / width, h / height)
    if mode == "area" or factor < 2.0:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if factor >= ALIAS_GUARD_MIN_FACTOR:
        image = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if _odd_integer_factor(w, h, width, height):
        # Bilinear sampling at an odd whole factor lands on pixel centres: INTER_NEAREST_EXACT reads the
        # same pixels (identical output) in about two thirds of the time.
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def _odd_integer_factor(w: int, h: int, width: int, height: int) -> bool:
    factor, rest = divmod(w, width)
    return rest == 0 and factor % 2 == 1 and h == factor * height


class Letterboxer:
    """Letterboxes images into one preallocated float32 model input (1, size, size, 3), RGB in [-1, 1].

    The padding (-1, black) is written only when the placement changes, i.e. when the source size
    changes, so for a video only the image region is rewritten per frame. The returned tensor is
    overwritten by the next call: hand it to the runner (which copies it) before letterboxing again.
    `last_small` is the last image shrunk to the model's scale (uint8, before colour conversion): a
    cheap whole-frame thumbnail for the caller (the camera loop's scene-cut check uses it).
    """

    def __init__(self, size_px: int, resize: ResizeMode = "area") -> None:
        if resize not in ("area", "fast"):
            raise ValueError(f"resize must be 'area' or 'fast', got {resize!r}")
        self.size_px = size_px
        self.resize: ResizeMode = resize
        self._tensor = np.full((1, size_px, size_px, 3), -1.0, np.float32)
        self._box: Letterbox | None = None
        self._region = self._tensor[0]
        self.last_small: np.ndarray | None = None

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        import cv2

        image = _check_image(image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        h, w = image.shape[:2]
        box = self._box
        if box is None or box.source_w != w or box.source_h != h:
            box = self._box = Letterbox.fit(w, h, self.size_px)
            self._tensor.fill(-1.0)  # black padding, like a black border in MediaPipe's letterbox
            self._region = self._tensor[0, box.pad_y : box.pad_y + box.resized_h, box.pad_x : box.pad_x + box.resized_w]
        small = self.last_small = _downscale(image, box.resized_w, box.resized_h, self.resize)
        if small.ndim == 2:
            rgb = cv2.cvtColor(small, cv2.COLOR_GRAY2RGB)
        else:
            rgb = cv2.cvtColor(small, cv2.COLOR_BGRA2RGB if small.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        region = self._region
        # pixel / 127.5 - 1, written straight into the preallocated tensor in one pass
        written = cv2.addWeighted(rgb, 1.0 / 127.5, rgb, 0.0, -1.0, dst=region, dtype=cv2.CV_32F)
        if written is not region:  # an OpenCV that would not write into the view
            region[...] = written
        return self._tensor, box


def decode(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, input_size_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs -> (xyxy (n, 4), keypoints (n, 6, 2), scores (n,)), coordinates in [0, 1] of the model input.

    raw_boxes: (n, 16) x, y, w, h then six keypoint x, y, in input pixels, offsets from the anchor centre.
    raw_scores: (n,) logits.
    """
    raw_boxes = raw_boxes.reshape(-1, _NUM_COORDS).astype(np.float32, copy=False)
    raw_scores = raw_scores.reshape(-1)
    if len(raw_boxes) != len(anchors) or len(raw_scores) != len(anchors):
        raise ValueError(
            f"model produced {len(raw_boxes)} boxes and {len(raw_scores)} scores for {len(anchors)} anchors"
        )
    xyxy, kps = _decode_boxes(raw_boxes, anchors, input_size_px)
    return xyxy, kps, scores_from_logits(raw_scores)


def scores_from_logits(raw_scores: np.ndarray) -> np.ndarray:
    """Logits -> float32 scores: clipped to +-SCORE_CLIP, sigmoid computed in float64."""
    logits = np.clip(raw_scores.reshape(-1).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


@cache
def _logit_floor(score: float) -> float:
    """A logit below which the score is surely < `score` (a little below the exact inverse sigmoid, so
    float rounding never drops an anchor whose score reaches it; the exact test follows)."""
    if score <= 0.0:
        return -np.inf
    score = min(score, 1.0 - 1e-7)
    return float(np.log(score / (1.0 - score))) - 1e-3


def _decode_boxes(raw_boxes: np.ndarray, anchors: np.ndarray, input_size_px: int) -> tuple[np.ndarray, np.ndarray]:
    flat = _decode_flat(raw_boxes, anchors, input_size_px)
    return flat[:, :4], flat[:, 4:].reshape(-1, NUM_KEYPOINTS, 2)


@cache
def _decode_matrix(input_size_px: int) -> np.ndarray:
    """(16, 16) float32 M with raw @ M + anchor_offsets = x1, y1, x2, y2, keypoints in [0, 1]: the box
    corners are centre -+ half the size, everything is divided by the input size (decoding is linear)."""
    matrix = np.eye(_NUM_COORDS, dtype=np.float64)
    matrix[2:4, 2:4] = 0.0
    for corner, sign in ((0, -0.5), (2, 0.5)):
        matrix[0, corner] = matrix[1, corner + 1] = 1.0
        matrix[2, corner] = matrix[3, corner + 1] = sign
    matrix = (matrix / input_size_px).astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def anchor_offsets(anchors: np.ndarray) -> np.ndarray:
    """(n, 16): each anchor's centre x, y repeated for the two corners and the six keypoints."""
    offsets = np.tile(np.asarray(anchors, np.float32), (1, _NUM_COORDS // 2))
    offsets.setflags(write=False)
    return offsets


def _decode_flat(raw_boxes: np.ndarray, anchors: np.ndarray, input_size_px: int) -> np.ndarray:
    """(n, 16) raw -> (n, 16) x1, y1, x2, y2, then six keypoint x, y, in [0, 1] of the model input."""
    return np.asarray(raw_boxes, np.float32) @ _decode_matrix(input_size_px) + anchor_offsets(anchors)


@dataclass(frozen=True)
class _Candidates:
    """The decoded boxes of the anchors scoring at least the lowest threshold that will be asked for (kept
    so that a fallback threshold needs no second model run)."""

    flat: np.ndarray
    """(n, 16) float32: x1, y1, x2, y2, then six keypoint x, y, in source-image pixels (not clipped).
    Weighted NMS runs on these: an IoU does not change when x and y are scaled and shifted, and a weighted
    mean commutes with that mapping, so the faces are those NMS in model-input coordinates gives."""
    scores: list[float]
    """The anchors' scores, float32 values as Python floats."""
    letterbox: Letterbox


_NO_ROWS = np.zeros((0, _NUM_COORDS), np.float32)


def _sigmoid32(logits: list[float]) -> list[float]:
    """`scores_from_logits` on Python floats (a few anchors cost less that way than five numpy calls)."""
    exp = math.exp
    return array("f", [1.0 / (1.0 + exp(-min(max(v, -SCORE_CLIP), SCORE_CLIP))) for v in logits]).tolist()


def litert_runner(model: ModelName, threads: int = 1) -> Runner:
    """The LiteRT runner of a shipped BlazeFace model (its file checked against the manifest)."""
    from edgeface.io.models import verified_model_path
    from edgeface.io.runtime.litert import LiteRTRunner

    return LiteRTRunner(verified_model_path(SPECS[model].model_file), threads=threads)


class BlazeFaceDetector:
    """Finds faces with MediaPipe's BlazeFace. `detect` works on any image size; it sees the whole image at
    the model's input size, so faces much smaller than ~1/10 (short) or ~1/20 (full) of the long side
    are missed: downscaling or tiling big frames is the caller's job.

    `resize` is how the image is shrunk to the model input: "area" (INTER_AREA, the reference, for photos)
    or "fast" (bilinear as MediaPipe does, for video frames; see `_downscale`).

    It reuses one preallocated model input between calls, so one detector serves one thread at a time
    (as the model runner does anyway)."""

    def __init__(
        self,
        model: ModelName = "short",
        score_threshold: float | None = None,
        nms_iou_threshold: float = 0.3,
        threads: int = 1,
        runner: Runner | None = None,
        fallback_score_threshold: float = 0.3,
        resize: ResizeMode = "area",
    ) -> None:
        if model not in SPECS:
            raise ValueError(f"model must be one of {sorted(SPECS)}, got {model!r}")
        self.spec = SPECS[model]
        self.model: ModelName = model
        self.score_threshold = self.spec.default_score_threshold if score_threshold is None else score_threshold
        for name, value in (
            ("score_threshold", self.score_threshold),
            ("nms_iou_threshold", nms_iou_threshold),
            ("fallback_score_threshold", fallback_score_threshold),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.nms_iou_threshold = nms_iou_threshold
        self.fallback_score_threshold = fallback_score_threshold
        if runner is None:
            runner = litert_runner(model, threads)
        size = self.spec.input_size_px
        if tuple(runner.input_shape) != (1, size, size, 3):
            raise ValueError(f"{model}-range BlazeFace expects input (1, {size}, {size}, 3), runner has {runner.input_shape}")
        self._runner = runner
        self.anchors = anchors_for(model)
        self._anchor_offsets = anchor_offsets(self.anchors)
        self._letterbox = Letterboxer(size, resize)
        self._output_slots: tuple[int, int] | None = None
        self._decoder: tuple[Letterbox, tuple[np.ndarray, np.ndarray]] | None = None

    def _candidates(self, image: np.ndarray, min_score: float) -> _Candidates:
        """Run the model; decode only the anchors whose score (sigmoid of the clipped logit) is >= min_score."""
        tensor, box = self._letterbox(image)
        outputs = self._runner.run(tensor)
        if self._output_slots is None:
            boxes_at = next((i for i, o in enumerate(outputs) if o.shape[-1] == _NUM_COORDS), None)
            scores_at = next((i for i, o in enumerate(outputs) if o.shape[-1] == 1), None)
            if boxes_at is None or scores_at is None:
                raise ValueError(f"unexpected BlazeFace outputs {[o.shape for o in outputs]}")
            self._output_slots = (boxes_at, scores_at)
        raw_boxes = outputs[self._output_slots[0]].reshape(-1, _NUM_COORDS)
        raw_scores = outputs[self._output_slots[1]].reshape(-1)
        if len(raw_boxes) != len(self.anchors) or len(raw_scores) != len(self.anchors):
            raise ValueError(
                f"model produced {len(raw_boxes)} boxes and {len(raw_scores)} scores for {len(self.anchors)} anchors"
            )
        # Only anchors whose logit is near or above the threshold's get a sigmoid, a box and keypoints.
        maybe = np.flatnonzero(raw_scores >= _logit_floor(min_score))
        if not len(maybe):
            return _Candidates(_NO_ROWS, [], box)
        scores = _sigmoid32(raw_scores[maybe].tolist())
        if min(scores) < min_score:
            keep = [i for i, score in enumerate(scores) if score >= min_score]
            maybe, scores = maybe[keep], [scores[i] for i in keep]
        matrix, offsets = self._source_decoder(box)
        return _Candidates(raw_boxes[maybe] @ matrix + offsets[maybe], scores, box)

    def _source_decoder(self, box: Letterbox) -> tuple[np.ndarray, np.ndarray]:
        """(matrix, per-anchor offsets) decoding raw rows straight into source pixels: decoding and the
        letterbox mapping are both affine, so they fold into one (kept for the last placement seen)."""
        if self._decoder is None or (self._decoder[0] is not box and self._decoder[0] != box):
            pad, scale = box.flat_mapping()  # source = (model-input pixels - pad) * scale
            per_unit = scale * np.float32(box.size_px)
            matrix = (_decode_matrix(box.size_px) * per_unit[None, :]).astype(np.float32)
            offsets = (self._anchor_offsets * per_unit - pad * scale).astype(np.float32)
            self._decoder = (box, (matrix, offsets))
        return self._decoder[1]

    def _finish(self, candidates: _Candidates, score_threshold: float) -> FaceDetections:
        flat, scores = candidates.flat, candidates.scores
        if not scores:
            return FaceDetections()
        boxes = flat[:, :4].tolist()
        kept = [i for i, (score, b) in enumerate(zip(scores, boxes))
                if score >= score_threshold and b[2] >= b[0] and b[3] >= b[1]]
        if not kept:
            return FaceDetections()
        merged, merged_scores = weighted_nms_rows(flat, boxes, scores, kept, self.nms_iou_threshold)
        box = candidates.letterbox
        w, h = box.source_w, box.source_h
        rows, out_scores = [], []
        for row, score in zip(merged, merged_scores):
            x1, y1, x2, y2 = min(max(row[0], 0.0), w), min(max(row[1], 0.0), h), min(max(row[2], 0.0), w), min(max(row[3], 0.0), h)
            if x2 > x1 and y2 > y1:  # boxes clipped to the image, keypoints not
                row[:4] = x1, y1, x2, y2
                rows.append(row)
                out_scores.append(score)
        if not rows:
            return FaceDetections()
        out = np.array(rows, np.float32)
        return FaceDetections(out[:, :4], np.array(out_scores, np.float32), out[:, 4:].reshape(-1, NUM_KEYPOINTS, 2))

    @property
    def last_thumbnail(self) -> np.ndarray | None:
        """The last image seen, shrunk to the model's input scale (uint8 BGR, BGRA or grey; None before
        the first call)."""
        return self._letterbox.last_small

    def detect(self, image: np.ndarray, score_threshold: float | None = None) -> FaceDetections:
        """Faces in a uint8 BGR, BGRA or greyscale image, best score first, in source-image pixels."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {threshold}")
        return self._finish(self._candidates(image, threshold), threshold)

    def detect_central(self, image: np.ndarray) -> FaceDetections:
        """The single face nearest the image centre (0 or 1 detections), for crops that hold one face.

        Faces whose box covers the image centre are preferred, and for those a score of
        `fallback_score_threshold` is enough: in a face crop a weak central face is the subject, while
        a strong off-centre one is a bystander. Without such a face, the most central face at the normal
        threshold, else at the fallback threshold. One model run either way.
        """
        candidates = self._candidates(image, min(self.score_threshold, self.fallback_score_threshold))
        height, width = image.shape[:2]
        strong = self._finish(candidates, self.score_threshold)
        if len(central := _covering_centre(strong, width, height)):
            return _most_central(central, width, height)
        weak = strong
        if self.fallback_score_threshold < self.score_threshold:
            logger.debug("no central face at score %.2f, trying %.2f", self.score_threshold, self.fallback_score_threshold)
            weak = self._finish(candidates, self.fallback_score_threshold)
        for pool in (_covering_centre(weak, width, height), strong, weak):
            if len(pool):
                return _most_central(pool, width, height)
        return strong


def _covering_centre(faces: FaceDetections, width: int, height: int) -> FaceDetections:
    x, y = width / 2, height / 2
    box = faces.xyxy
    return faces[(box[:, 0] <= x) & (x <= box[:, 2]) & (box[:, 1] <= y) & (y <= box[:, 3])]


def _most_central(faces: FaceDetections, width: int, height: int) -> FaceDetections:
    centres = (faces.xyxy[:, :2] + faces.xyxy[:, 2:]) / 2
    distance = np.hypot(centres[:, 0] - width / 2, centres[:, 1] - height / 2)
    return faces[int(np.argmin(distance))]


class KeypointRefiner:
    """Precise keypoints for faces that are small in a big frame.

    A detector that sees a 1080p frame at 128 or 192 px places the keypoints of a 90 px face to within
    ~10-30 px (the face is ~9 model pixels wide), which ruins the alignment even though the box is
    good enough to track. For each face smaller than `max_face_frac` of the frame's long side, the
    short-range model runs again on a square crop `crop_scale` times the face around it, at full
    resolution; the keypoints of the re-detected face that overlaps the original box best replace
    the original ones (the box stays, so tracking is unaffected). One extra ~2 ms model run per
    face, and only for faces about to be embedded.
    """

    def __init__(self, detector: BlazeFaceDetector, max_face_frac: float = 0.1, crop_scale: float = 2.2,
                 min_iou: float = 0.3) -> None:
        if not 0.0 < max_face_frac <= 1.0 or crop_scale < 1.0:
            raise ValueError(f"need 0 < max_face_frac <= 1 and crop_scale >= 1, got {max_face_frac}, {crop_scale}")
        self.detector = detector
        self.max_face_frac = max_face_frac
        self.crop_scale = crop_scale
        self.min_iou = min_iou

    def refine(self, image: np.ndarray, faces: FaceDetections) -> tuple[FaceDetections, np.ndarray]:
        """(faces with refined keypoints, (n,) bool: which faces were refined)."""
        height, width = image.shape[:2]
        refined = np.zeros(len(faces), bool)
        limit = self.max_face_frac * max(height, width)
        small = [i for i, (x1, y1, x2, y2) in enumerate(faces.xyxy.tolist()) if 0 < max(x2 - x1, y2 - y1) < limit]
        if not small:
            return faces, refined  # the usual case: no face needs it
        kps = faces.kps.copy()
        for i in small:
            box = faces.xyxy[i]
            side = float(max(box[2] - box[0], box[3] - box[1]))
            half = self.crop_scale * side / 2
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            x0, y0 = max(int(cx - half), 0), max(int(cy - half), 0)
            x1, y1 = min(int(cx + half), width), min(int(cy + half), height)
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            found = self.detector.detect(image[y0:y1, x0:x1])
            if not len(found):
                continue
            offset = np.array([x0, y0], np.float32)
            overlap = box_iou(box, found.xyxy + np.tile(offset, 2))
            best = int(np.argmax(overlap))
            if overlap[best] >= self.min_iou:
                kps[i] = found.kps[best] + offset
                refined[i] = True
        return FaceDetections(faces.xyxy, faces.score, kps), refined


class AutoRangeDetector:
    """Both BlazeFace models on every image: full range finds the faces of a scene (small and mid-sized:
    a room, a street, a 1080p hall camera, a group photo), short range adds the faces too close for it.

    A short-range face is added only when no full-range face overlaps it (by more than `overlap_max`
    of the smaller box) and it is either big (its long side at least `close_face_min_frac` of the
    image's: a face filling the frame, which full range misses) or confident (score at least
    `short_only_min_score`). On whole scenes the short-range model also fires on loose boxes around a
    face the full model found, and on bodies and hands: those add wrong faces, not found ones
    (measured on CelebA: 94.7% -> 95.1% verification with the rule, tight crops still all found).

    Keypoints of either model are coarse on a face that is small in the image; the aligner's
    `KeypointRefiner` re-detects them on a crop (the camera loop and the photo commands both use one).
    """

    model: ModelName = "full"
    """The model whose keypoint template fits faces the refiner did not re-detect."""

    def __init__(self, full: BlazeFaceDetector, short: BlazeFaceDetector, close_face_min_frac: float = 0.3,
                 short_only_min_score: float = 0.75, overlap_max: float = 0.5) -> None:
        if full.model != "full" or short.model != "short":
            raise ValueError("AutoRangeDetector needs a full-range and a short-range BlazeFaceDetector")
        self.full, self.short = full, short
        self.close_face_min_frac = close_face_min_frac
        self.short_only_min_score = short_only_min_score
        self.overlap_max = overlap_max

    @property
    def last_thumbnail(self) -> np.ndarray | None:
        return self.full.last_thumbnail

    def detect(self, image: np.ndarray) -> FaceDetections:
        scene = self.full.detect(image)
        close = self.short.detect(image)
        if not len(close):
            return scene
        min_side = self.close_face_min_frac * max(image.shape[:2])
        added = []
        for i, (box, score) in enumerate(zip(close.xyxy, close.score.tolist())):
            if len(scene) and float(contained_frac(box, scene.xyxy).max()) > self.overlap_max:
                continue
            if score >= self.short_only_min_score or max(box[2] - box[0], box[3] - box[1]) >= min_side:
                added.append(i)
        if not added:
            return scene
        extra = close[np.array(added)]
        return FaceDetections(np.concatenate([scene.xyxy, extra.xyxy]), np.concatenate([scene.score, extra.score]),
                              np.concatenate([scene.kps, extra.kps]))


def make_detector(choice: DetectorChoice, *, min_score: float | None = None, threads: int = 1,
                  resize: ResizeMode = "area", wrap_runner: Callable[[Runner], Runner] | None = None,
                  runner_for: Callable[[ModelName, int], Runner] = litert_runner,
                  ) -> BlazeFaceDetector | AutoRangeDetector:
    """The detector a config names, on the shipped models. `min_score` applies to each model
    (None: each model's own default); `wrap_runner` wraps each model runner (e.g. to time it);
    `runner_for(model, threads)` makes the runners (several cameras share theirs: vision/shared.py)."""

    def blazeface(model: ModelName) -> BlazeFaceDetector:
        runner = runner_for(model, threads)
        return BlazeFaceDetector(model=model, score_threshold=min_score, resize=resize,
                                 runner=wrap_runner(runner) if wrap_runner else runner)

    if choice == "auto":
        return AutoRangeDetector(blazeface("full"), blazeface("short"))
    return blazeface(choice)


def make_refiner(max_face_frac: float, *, threads: int = 1,
                 wrap_runner: Callable[[Runner], Runner] | None = None,
                 runner_for: Callable[[ModelName, int], Runner] = litert_runner) -> KeypointRefiner | None:
    """The keypoint refiner on the shipped short-range model; None when max_face_frac is 0 (off)."""
    if max_face_frac <= 0:
        return None
    runner = runner_for("short", threads)
    return KeypointRefiner(BlazeFaceDetector(model="short", runner=wrap_runner(runner) if wrap_runner else runner),
                           max_face_frac=max_face_frac)
