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

LFW-style crops (one face near the centre of a tight crop): `detect_central` returns the single most
central face, accepting a lower score (`fallback_score_threshold`) for a face that covers the image
centre. See tools/lfw_detection_misses.py for the numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np

from edgeface.errors import ImageError
from edgeface.runtime import Runner
from edgeface.types import NUM_KEYPOINTS, FaceDetections

logger = logging.getLogger(__name__)

ModelName = Literal["short", "full"]

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

    def to_source(self, xy_norm: np.ndarray) -> np.ndarray:
        """Points (..., 2) in [0, 1] model-input coordinates -> source-image pixels (continuous, 0..w)."""
        out = np.empty_like(xy_norm, dtype=np.float32)
        out[..., 0] = (xy_norm[..., 0] * self.size_px - self.pad_x) * (self.source_w / self.resized_w)
        out[..., 1] = (xy_norm[..., 1] * self.size_px - self.pad_y) * (self.source_h / self.resized_h)
        return out


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
        raise ImageError(f"image pixels must be uint8 (0..255), got {image.dtype}; convert with edgeface.imageio.to_bgr8")
    return image


def letterbox_tensor(image: np.ndarray, size_px: int) -> tuple[np.ndarray, Letterbox]:
    """uint8 grey/BGR/BGRA (h, w[, c]) -> float32 (1, size, size, 3) RGB in [-1, 1], plus the placement."""
    import cv2

    image = _check_image(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    h, w = image.shape[:2]
    box = Letterbox.fit(w, h, size_px)
    interpolation = cv2.INTER_AREA if box.resized_w < w else cv2.INTER_LINEAR
    resized = cv2.resize(image, (box.resized_w, box.resized_h), interpolation=interpolation)
    if resized.ndim == 2:
        rgb = np.repeat(resized[:, :, None], 3, axis=2)
    else:
        rgb = resized[:, :, 2::-1]  # BGR(A) -> RGB, alpha dropped
    canvas = np.zeros((1, size_px, size_px, 3), np.float32)
    region = canvas[0, box.pad_y : box.pad_y + box.resized_h, box.pad_x : box.pad_x + box.resized_w]
    np.multiply(rgb, 1.0 / 127.5, out=region, casting="unsafe")
    canvas -= 1.0  # black padding becomes -1, like a black border in MediaPipe's letterbox
    return canvas, box


def decode(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, input_size_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs -> (xyxy (n, 4), keypoints (n, 6, 2), scores (n,)), coordinates in [0, 1] of the model input.

    raw_boxes: (n, 16) x, y, w, h then six keypoint x, y, in input pixels, offsets from the anchor centre.
    raw_scores: (n,) logits.
    """
    raw_boxes = raw_boxes.reshape(-1, _NUM_COORDS).astype(np.float32, copy=False)
    raw_scores = raw_scores.reshape(-1).astype(np.float32, copy=False)
    if len(raw_boxes) != len(anchors) or len(raw_scores) != len(anchors):
        raise ValueError(
            f"model produced {len(raw_boxes)} boxes and {len(raw_scores)} scores for {len(anchors)} anchors"
        )
    values = raw_boxes / np.float32(input_size_px)
    centre = values[:, 0:2] + anchors
    half = values[:, 2:4] * 0.5
    xyxy = np.concatenate([centre - half, centre + half], axis=1)
    kps = values[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + anchors[:, None, :]
    logits = np.clip(raw_scores.astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))
    return xyxy, kps, scores.astype(np.float32)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box (4,) with many (n, 4)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(
    xyxy: np.ndarray, kps: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe-style blending NMS. Returns merged (xyxy, kps, scores), best score first.

    Repeatedly takes the best remaining box; every remaining box with IoU > iou_threshold against it
    (itself included) is removed and contributes to a score-weighted mean of boxes and keypoints.
    The merged detection keeps the best box's score.
    """
    order = np.argsort(-scores, kind="stable")
    xyxy, kps, scores = xyxy[order], kps[order], scores[order]
    remaining = np.arange(len(scores))
    out_boxes: list[np.ndarray] = []
    out_kps: list[np.ndarray] = []
    out_scores: list[float] = []
    while len(remaining):
        best = remaining[0]
        overlaps = box_iou(xyxy[best], xyxy[remaining]) > iou_threshold
        overlaps[0] = True
        members = remaining[overlaps]
        weights = scores[members]
        total = float(weights.sum())
        if total > 0:
            out_boxes.append((xyxy[members] * weights[:, None]).sum(axis=0) / total)
            out_kps.append((kps[members] * weights[:, None, None]).sum(axis=0) / total)
        else:
            out_boxes.append(xyxy[best])
            out_kps.append(kps[best])
        out_scores.append(float(scores[best]))
        remaining = remaining[~overlaps]
    if not out_scores:
        return np.zeros((0, 4), np.float32), np.zeros((0, NUM_KEYPOINTS, 2), np.float32), np.zeros((0,), np.float32)
    return (
        np.stack(out_boxes).astype(np.float32),
        np.stack(out_kps).astype(np.float32),
        np.asarray(out_scores, np.float32),
    )


@dataclass(frozen=True)
class _Candidates:
    """All anchors' decoded boxes for one image, before thresholding (kept so a fallback needs no second run)."""

    xyxy: np.ndarray
    kps: np.ndarray
    scores: np.ndarray
    letterbox: Letterbox


class BlazeFaceDetector:
    """Finds faces with MediaPipe's BlazeFace. `detect` works on any image size; it sees the whole image at
    the model's input size, so faces much smaller than ~1/10 (short) or ~1/20 (full) of the long side
    are missed: downscaling or tiling big frames is the caller's job."""

    def __init__(
        self,
        model: ModelName = "short",
        score_threshold: float | None = None,
        nms_iou_threshold: float = 0.3,
        threads: int = 1,
        runner: Runner | None = None,
        fallback_score_threshold: float = 0.3,
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
            from edgeface.modelfiles import verified_model_path
            from edgeface.runtime.litert import LiteRTRunner

            runner = LiteRTRunner(verified_model_path(self.spec.model_file), threads=threads)
        size = self.spec.input_size_px
        if tuple(runner.input_shape) != (1, size, size, 3):
            raise ValueError(f"{model}-range BlazeFace expects input (1, {size}, {size}, 3), runner has {runner.input_shape}")
        self._runner = runner
        self.anchors = anchors_for(model)

    def _candidates(self, image: np.ndarray) -> _Candidates:
        tensor, box = letterbox_tensor(image, self.spec.input_size_px)
        outputs = self._runner.run(tensor)
        raw_boxes = next((o for o in outputs if o.shape[-1] == _NUM_COORDS), None)
        raw_scores = next((o for o in outputs if o.shape[-1] == 1), None)
        if raw_boxes is None or raw_scores is None:
            raise ValueError(f"unexpected BlazeFace outputs {[o.shape for o in outputs]}")
        xyxy, kps, scores = decode(raw_boxes, raw_scores, self.anchors, self.spec.input_size_px)
        return _Candidates(xyxy, kps, scores, box)

    def _finish(self, candidates: _Candidates, score_threshold: float) -> FaceDetections:
        keep = (candidates.scores >= score_threshold) & np.all(candidates.xyxy[:, 2:] >= candidates.xyxy[:, :2], axis=1)
        xyxy, kps, scores = weighted_nms(
            candidates.xyxy[keep], candidates.kps[keep], candidates.scores[keep], self.nms_iou_threshold
        )
        box = candidates.letterbox
        xyxy = box.to_source(xyxy.reshape(-1, 2, 2)).reshape(-1, 4)
        kps = box.to_source(kps)
        np.clip(xyxy[:, 0::2], 0, box.source_w, out=xyxy[:, 0::2])
        np.clip(xyxy[:, 1::2], 0, box.source_h, out=xyxy[:, 1::2])
        visible = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        return FaceDetections(xyxy[visible], scores[visible], kps[visible])

    def detect(self, image: np.ndarray, score_threshold: float | None = None) -> FaceDetections:
        """Faces in a uint8 BGR, BGRA or greyscale image, best score first, in source-image pixels."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {threshold}")
        return self._finish(self._candidates(image), threshold)

    def detect_central(self, image: np.ndarray) -> FaceDetections:
        """The single face nearest the image centre (0 or 1 detections), for crops that hold one face.

        Faces whose box covers the image centre are preferred, and for those a score of
        `fallback_score_threshold` is enough: in a face crop a weak central face is the subject, while
        a strong off-centre one is a bystander. Without such a face, the most central face at the normal
        threshold, else at the fallback threshold. One model run either way.
        """
        candidates = self._candidates(image)
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
