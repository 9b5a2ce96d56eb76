"""Five face landmarks with dlib's 5-point shape predictor (an ensemble-of-regression-trees cascade).

A numpy re-implementation of `dlib::shape_predictor::operator()` that reproduces dlib's arithmetic:
the similarity transform from the mean shape to the current shape (cast to float32 as dlib does),
float32 feature-point positions, rounding to the nearest pixel (floor(x + 0.5)), grey intensity as
dlib's integer average (r + g + b) // 3 (not OpenCV's weighted grey), 0 outside the image, and the
trees' leaf vectors added in dlib's order in float32. All trees of a cascade level are evaluated for
all faces at once: every split of a tree is compared, the 15 answers are packed into a 16-bit code,
and a lookup table turns the code into the leaf that dlib's root-to-leaf walk would reach.

Landmarks come back in dlib's part order: 0/1 = the subject's left eye outer/inner corner (image
right), 2/3 = right eye outer/inner corner (image left), 4 = the base of the nose. They are floats;
dlib returns them rounded, `np.floor(points + 0.5)` gives dlib's integers.

Boxes are dlib rectangles as corners (left, top, right, bottom): the model maps its unit square onto
exactly these corners (dlib's `rectangle(l, t, r, b)`, whose `right` is inclusive). The model was
trained on boxes from dlib's own face detectors; `edgeface.vision.align.dlib_box_from_blazeface` turns a
BlazeFace detection into such a box.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeface.errors import ModelFileError
from edgeface.io.models import verified_model_path

log = logging.getLogger(__name__)

SHAPE_PREDICTOR_NAME = "shape_predictor_5.npz"
FORMAT_VERSION = 1
ARRAY_NAMES = ("initial_shape", "split_feature", "split_thresh", "leaf_values", "anchor_idx", "deltas", "format_version")

NUM_LANDMARKS = 5
"""dlib 5-point order: left eye outer, left eye inner, right eye outer, right eye inner, nose base
(the subject's left/right; the subject's left eye is on the image's right)."""

_LUT_MAX_SPLITS = 15  # trees up to depth 4 use the packed-code lookup; deeper trees are walked


def _leaf_lookup(num_splits: int) -> np.ndarray:
    """For every 16-bit code (bit j = split j of a complete tree said "left"), the leaf reached."""
    codes = np.arange(1 << 16, dtype=np.int64)
    node = np.zeros_like(codes)
    while True:
        inner = node < num_splits
        if not inner.any():
            break
        go_left = (codes >> np.minimum(node, 15)) & 1
        node = np.where(inner, 2 * node + 2 - go_left, node)
    return (node - num_splits).astype(np.uint8)


@dataclass(frozen=True)
class ShapePredictorArrays:
    """The model as numpy arrays (see the module docstring for shapes)."""

    initial_shape: np.ndarray
    split_feature: np.ndarray
    split_thresh: np.ndarray
    leaf_values: np.ndarray
    anchor_idx: np.ndarray
    deltas: np.ndarray

    @property
    def num_levels(self) -> int:
        return int(self.split_thresh.shape[0])

    @property
    def num_parts(self) -> int:
        return int(self.initial_shape.shape[0])

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "initial_shape": self.initial_shape,
            "split_feature": self.split_feature,
            "split_thresh": self.split_thresh,
            "leaf_values": self.leaf_values,
            "anchor_idx": self.anchor_idx,
            "deltas": self.deltas,
            "format_version": np.asarray(FORMAT_VERSION, dtype=np.int32),
        }


def load_shape_predictor_npz(path: Path) -> ShapePredictorArrays:
    """Read and shape-check the npz (not its sha256: use modelfiles.verified_model_path for that)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ARRAY_NAMES}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise ModelFileError(f"shape predictor model {path} is unreadable ({error}); run `edgeface models build`") from error
    if int(arrays["format_version"]) != FORMAT_VERSION:
        raise ModelFileError(f"shape predictor model {path} has format {int(arrays['format_version'])}, expected {FORMAT_VERSION}; run `edgeface models build`")
    model = ShapePredictorArrays(**{key: arrays[key] for key in ARRAY_NAMES if key != "format_version"})
    levels, trees, splits = model.split_thresh.shape
    parts = model.num_parts
    feats = model.anchor_idx.shape[1] if model.anchor_idx.ndim == 2 else -1
    expected = {
        "initial_shape": ((parts, 2), np.float32),
        "split_feature": ((levels, trees, splits, 2), np.uint16),
        "split_thresh": ((levels, trees, splits), np.float32),
        "leaf_values": ((levels, trees, splits + 1, parts, 2), np.float32),
        "anchor_idx": ((levels, feats), np.uint8),
        "deltas": ((levels, feats, 2), np.float32),
    }
    for key, (shape, dtype) in expected.items():
        value = getattr(model, key)
        if value.shape != shape or value.dtype != dtype:
            raise ModelFileError(f"shape predictor model {path}: {key} is {value.dtype}{value.shape}, expected {np.dtype(dtype)}{shape}")
    if (splits + 1) & splits or model.split_feature.max(initial=0) >= feats or model.anchor_idx.max(initial=0) >= parts:
        raise ModelFileError(f"shape predictor model {path} is inconsistent; run `edgeface models build`")
    return model


class ShapePredictor:
    """dlib's 5-point landmark model. `predict(image, boxes)` -> (n, 5, 2) float32 landmarks."""

    def __init__(self, models_directory: Path | None = None) -> None:
        path = verified_model_path(SHAPE_PREDICTOR_NAME, models_directory)
        self._setup(load_shape_predictor_npz(path))
        log.debug("loaded shape predictor %s", path)

    def _setup(self, model: ShapePredictorArrays) -> None:
        levels, trees, splits = model.split_thresh.shape
        parts = model.num_parts
        self.num_parts = parts
        self._levels = levels
        self._trees = trees
        self._splits = splits
        self._initial = model.initial_shape.astype(np.float32).reshape(-1)
        # [a, b] = shape @ _sim: the least-squares similarity (a -b; b a) from the mean shape to a
        # shape given as (n, 2P) x0, y0, x1, ... For 2-D points Umeyama's SVD solution (what dlib
        # computes) reduces to this closed form: centre both shapes, then a = sum(r.c)/|r|^2,
        # b = sum(r x c)/|r|^2. Centring is linear, so it is folded into the matrix.
        ref = model.initial_shape.astype(np.float64)
        ref = ref - ref.mean(axis=0)
        norm = float((ref**2).sum())
        centring = np.eye(parts) - 1.0 / parts
        sim = np.zeros((parts, 2, 2))
        sim[:, 0, 0] = centring @ ref[:, 0]  # x -> a
        sim[:, 1, 0] = centring @ ref[:, 1]  # y -> a
        sim[:, 1, 1] = centring @ ref[:, 0]  # y -> b
        sim[:, 0, 1] = -(centring @ ref[:, 1])  # x -> b
        self._sim = sim.reshape(parts * 2, 2) / norm
        # Feature pixels: flat indices of their anchor's x and y in the shape vector, and their
        # offsets d = (dx, dy) and d_perp = (-dy, dx), so that (a -b; b a) d = a*d + b*d_perp
        # with the same float32 roundings as dlib's matrix-vector product.
        anchor = model.anchor_idx.astype(np.intp)
        self._anchor_xy = np.stack([2 * anchor, 2 * anchor + 1], axis=-1).reshape(levels, -1)
        self._delta = model.deltas.astype(np.float32)
        self._delta_perp = np.stack([-model.deltas[..., 1], model.deltas[..., 0]], axis=-1).astype(np.float32)
        leaves = splits + 1
        self._leaf_values = model.leaf_values.reshape(levels, trees * leaves, parts * 2)
        self._leaf_base = np.arange(trees, dtype=np.intp) * leaves
        self._use_lut = splits <= _LUT_MAX_SPLITS
        if self._use_lut:
            # Pad every tree to 16 splits; the padding compares feature 0 with itself against +inf,
            # always answers "right" (bit 0), and the lookup table never reads it anyway.
            pad = 16 - splits
            feature = np.concatenate([model.split_feature, np.zeros((levels, trees, pad, 2), np.uint16)], axis=2)
            thresh = np.concatenate([model.split_thresh, np.full((levels, trees, pad), np.inf, np.float32)], axis=2)
            self._idx1 = feature[..., 0].reshape(levels, trees * 16).astype(np.intp)
            self._idx2 = feature[..., 1].reshape(levels, trees * 16).astype(np.intp)
            self._thresh = thresh.reshape(levels, trees * 16)
            self._lut = _leaf_lookup(splits).astype(np.intp)
        else:
            self._idx1 = model.split_feature[..., 0].astype(np.intp)
            self._idx2 = model.split_feature[..., 1].astype(np.intp)
            self._thresh = model.split_thresh

    # ------------------------------------------------------------------------------------------

    def predict(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Landmarks (n, 5, 2) float32 in image pixels for each box (left, top, right, bottom).

        image: uint8 grey (h, w) or colour (h, w, 3) in any channel order (grey is the channel mean).
        """
        pixels = _pixel_table(image)
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (n, 4) left, top, right, bottom; got shape {boxes.shape}")
        if not np.isfinite(boxes).all():
            raise ValueError("boxes must be finite")
        n = len(boxes)
        if n == 0:
            return np.zeros((0, self.num_parts, 2), np.float32)
        height, width = image.shape[:2]
        origin = boxes[:, None, 0:2]  # (n, 1, 2)
        size = boxes[:, None, 2:4] - origin
        limits = np.array([width, height], dtype=np.uintp)
        strides = np.array([1, width], dtype=np.intp)
        shape = np.tile(self._initial, (n, 1))
        buffer = np.empty((n, self._trees + 1, self.num_parts * 2), np.float32)
        for level in range(self._levels):
            # Feature pixel positions: the mean-shape offsets carried by the similarity transform
            # of the current shape, then mapped from the unit box into the image (dlib rounds).
            ab = (shape @ self._sim).astype(np.float32)
            anchor = np.take(shape, self._anchor_xy[level], axis=1).reshape(n, -1, 2)
            unit = ab[:, None, 0:1] * self._delta[level] + ab[:, None, 1:2] * self._delta_perp[level] + anchor
            xy = np.floor(origin + size * unit + 0.5).astype(np.intp)
            inside = (xy.view(np.uintp) < limits).all(axis=-1)
            index = (xy * strides).sum(axis=-1)
            index *= inside
            feats = _grey_at(pixels, index)
            feats *= inside
            # All trees of the level: which leaf each face reaches, then the leaf vectors added to
            # the shape one tree after another in float32, as dlib does.
            buffer[:, 0] = shape
            np.take(self._leaf_values[level], self._leaves(level, feats), axis=0, out=buffer[:, 1:])
            shape = np.add.reduce(buffer, axis=1)
        points = shape.reshape(n, self.num_parts, 2)
        return (origin + size * points).astype(np.float32)

    def _leaves(self, level: int, feats: np.ndarray) -> np.ndarray:
        """Global leaf row (tree * leaves + leaf) per face and tree: (n, trees)."""
        n = len(feats)
        if self._use_lut:
            go_left = (np.take(feats, self._idx1[level], axis=1) - np.take(feats, self._idx2[level], axis=1)) > self._thresh[level]
            # Pack each tree's 16 answers (bytes 0/1) into a 16-bit code: for 8 such bytes in a
            # little-endian uint64 x, bit 56 + j of x * 0x0102040810204080 is byte j.
            halves = (go_left.view(np.uint64) * _PACK) >> _SHIFT
            halves = halves.reshape(n, self._trees, 2)
            codes = halves[..., 0] | (halves[..., 1] << _EIGHT)
            return self._lut[codes] + self._leaf_base
        node = np.zeros((n, self._trees), np.intp)
        tree = np.arange(self._trees)
        rows = np.arange(n)[:, None]
        while True:
            inner = node < self._splits
            if not inner.any():
                break
            safe = np.minimum(node, self._splits - 1)
            i1 = self._idx1[level][tree, safe]
            i2 = self._idx2[level][tree, safe]
            go_left = (feats[rows, i1] - feats[rows, i2]) > self._thresh[level][tree, safe]
            node = np.where(inner, 2 * node + 2 - go_left, node)
        return node - self._splits + self._leaf_base


_PACK = np.uint64(0x0102040810204080)
_SHIFT = np.uint64(56)
_EIGHT = np.uint64(8)


def _pixel_table(image: np.ndarray) -> np.ndarray:
    """The image as (h*w,) grey or (h*w, 3) colour rows, without copying when it is contiguous."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 numpy array, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image.reshape(-1)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.reshape(-1, 3)
    raise ValueError(f"image must be (h, w) grey or (h, w, 3) colour, got shape {image.shape}")


def _grey_at(pixels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Grey values at flat pixel indices, as dlib's get_pixel_intensity computes them (float32)."""
    if pixels.ndim == 1:
        return pixels[index].astype(np.float32)
    # dlib: get_pixel_intensity(rgb_pixel) = (r + g + b) / 3 in unsigned integer arithmetic.
    return (np.take(pixels, index, axis=0).sum(axis=-1, dtype=np.uint16) // 3).astype(np.float32)
