"""dlib's 5-point face landmark model (`shape_predictor_5_face_landmarks.dat`) -> `shape_predictor_5.npz`.

The .dat file is dlib's serialization of `dlib::shape_predictor` (dlib/image_processing/shape_predictor.h):
version 1, the initial (mean) shape as a matrix<float,0,1> of x0, y0, x1, y1, ... in the unit square
of the face rectangle, then per cascade level a forest of regression trees (each: a complete binary
tree of split features idx1, idx2, thresh and its leaf vectors), then per level the feature pixels as
an anchor landmark index plus an offset from that landmark in the initial shape.

Every number in the file is a float32 or a small integer, so the npz holds exactly the same values
(float32 is lossless here; `read_shape_predictor_dat` checks it) in fixed-shape arrays:

  initial_shape  (P, 2)           float32   P landmarks (5)
  split_feature  (L, T, S, 2)     uint16    L levels, T trees per level, S = 2**depth - 1 splits
  split_thresh   (L, T, S)        float32
  leaf_values    (L, T, S + 1, P, 2) float32
  anchor_idx     (L, F)           uint8     F feature pixels per level
  deltas         (L, F, 2)        float32
  format_version ()               int32

The npz is written by hand with fixed zip metadata and no compression, so the same .dat gives the
same bytes on every machine (numpy's savez stamps the current time into the zip).
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np

from edgeface.convert.dlib_format import DlibReader
from edgeface.convert.manifest import record_model_file
from edgeface.errors import ModelFileError
from edgeface.vision.landmarks import (
    SHAPE_PREDICTOR_NAME,
    ShapePredictorArrays,
)

log = logging.getLogger(__name__)

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_MAX_COUNT = 1 << 20  # no sane model has a vector longer than this

SOURCE = (
    "PyPI face_recognition_models 0.3.0 sdist, face_recognition_models/models/shape_predictor_5_face_landmarks.dat "
    "(dlib 5-point face landmark model, Davis King, trained on dlib's 5-point face landmark dataset)"
)
LICENSE = "public domain"
MADE_BY = (
    "edgeface.convert.dlib_shape_predictor.build_shape_predictor: the .dat parsed with DlibReader, the same "
    "float32/integer values stored as fixed-shape numpy arrays in an uncompressed, timestamp-free npz"
)


def _as_float32(values: np.ndarray, what: str, name: str) -> np.ndarray:
    single = values.astype(np.float32)
    if not np.array_equal(single.astype(np.float64), values, equal_nan=True):
        raise ModelFileError(f"{name}: {what} holds values that are not float32; this is not a dlib shape_predictor file")
    return single


def read_shape_predictor_dat(data: bytes, name: str = "shape predictor file") -> ShapePredictorArrays:
    """Parse dlib's serialized shape_predictor. Raises ModelFileError on anything unexpected."""
    reader = DlibReader(data, name)
    version = reader.read_int()
    if version != 1:
        raise ModelFileError(f"{name} is not a dlib shape_predictor (version {version}, expected 1)")
    initial = reader.read_float_column()
    if initial.size == 0 or initial.size % 2:
        raise ModelFileError(f"{name} is corrupted: initial shape has {initial.size} values")
    num_parts = initial.size // 2

    num_levels = reader.read_length(_MAX_COUNT)
    features: list[np.ndarray] = []
    thresholds: list[np.ndarray] = []
    leaves: list[np.ndarray] = []
    num_trees = num_splits = -1
    for level in range(num_levels):
        trees = reader.read_length(_MAX_COUNT)
        if num_trees not in (-1, trees):
            raise ModelFileError(f"{name}: cascade level {level} has {trees} trees, earlier levels {num_trees}")
        num_trees = trees
        level_features = []
        level_thresh = []
        level_leaves = []
        for _ in range(trees):
            splits = reader.read_length(_MAX_COUNT)
            if num_splits not in (-1, splits) or (splits + 1) & splits:
                raise ModelFileError(f"{name}: trees of unequal or incomplete depth ({splits} splits)")
            num_splits = splits
            for _ in range(splits):
                level_features.append((reader.read_int(), reader.read_int()))
                level_thresh.append(reader.read_float())
            leaf_count = reader.read_length(_MAX_COUNT)
            if leaf_count != splits + 1:
                raise ModelFileError(f"{name} is corrupted: {leaf_count} leaves for {splits} splits")
            for _ in range(leaf_count):
                leaf = reader.read_float_column()
                if leaf.size != initial.size:
                    raise ModelFileError(f"{name} is corrupted: leaf of {leaf.size} values, shape has {initial.size}")
                level_leaves.append(leaf)
        features.append(np.asarray(level_features, dtype=np.int64))
        thresholds.append(np.asarray(level_thresh, dtype=np.float64))
        leaves.append(np.asarray(level_leaves, dtype=np.float64))

    anchor_levels = reader.read_length(_MAX_COUNT)
    anchors = [np.asarray([reader.read_int() for _ in range(reader.read_length(_MAX_COUNT))], dtype=np.int64) for _ in range(anchor_levels)]
    delta_levels = reader.read_length(_MAX_COUNT)
    deltas = []
    for _ in range(delta_levels):
        count = reader.read_length(_MAX_COUNT)
        deltas.append(np.asarray([reader.read_point2() for _ in range(count)], dtype=np.float64).reshape(count, 2))
    if not reader.at_end():
        raise ModelFileError(f"{name} has {len(data) - reader.pos} unexpected trailing bytes")

    if num_levels == 0 or anchor_levels != num_levels or delta_levels != num_levels:
        raise ModelFileError(f"{name} is corrupted: {num_levels} forests, {anchor_levels} anchor lists, {delta_levels} delta lists")
    num_feats = {len(a) for a in anchors} | {len(d) for d in deltas}
    if len(num_feats) != 1:
        raise ModelFileError(f"{name}: feature pixel counts differ between levels ({sorted(num_feats)})")
    feature_count = num_feats.pop()
    if feature_count > np.iinfo(np.uint16).max or num_parts > np.iinfo(np.uint8).max:
        raise ModelFileError(f"{name}: model too large for this format ({feature_count} features, {num_parts} parts)")

    split_feature = np.stack(features).reshape(num_levels, num_trees, num_splits, 2)
    anchor_idx = np.stack(anchors)
    if split_feature.size and (split_feature.min() < 0 or split_feature.max() >= feature_count):
        raise ModelFileError(f"{name} is corrupted: split feature index out of range")
    if anchor_idx.min() < 0 or anchor_idx.max() >= num_parts:
        raise ModelFileError(f"{name} is corrupted: anchor landmark index out of range")
    return ShapePredictorArrays(
        initial_shape=_as_float32(initial.reshape(num_parts, 2), "initial shape", name),
        split_feature=split_feature.astype(np.uint16),
        split_thresh=_as_float32(np.stack(thresholds).reshape(num_levels, num_trees, num_splits), "thresholds", name),
        leaf_values=_as_float32(
            np.stack(leaves).reshape(num_levels, num_trees, num_splits + 1, num_parts, 2), "leaf values", name
        ),
        anchor_idx=anchor_idx.astype(np.uint8),
        deltas=_as_float32(np.stack(deltas), "pixel offsets", name),
    )


def write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz (readable by np.load) whose bytes depend only on the arrays."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[key], order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            archive.writestr(info, member.getvalue())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def build_shape_predictor(dat_path: Path, out_dir: Path) -> Path:
    """Convert dlib's `shape_predictor_5_face_landmarks.dat` into `out_dir/shape_predictor_5.npz` and record it
    in the manifest. Deterministic: the same input gives the same bytes."""
    dat_path = Path(dat_path)
    out_dir = Path(out_dir)
    try:
        data = dat_path.read_bytes()
    except OSError as error:
        raise ModelFileError(f"cannot read {dat_path}: {error.strerror or error}") from error
    model = read_shape_predictor_dat(data, dat_path.name)
    if model.num_parts != 5:
        raise ModelFileError(f"{dat_path.name} predicts {model.num_parts} landmarks, expected the 5-point model")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / SHAPE_PREDICTOR_NAME
    write_npz_deterministic(out_path, model.as_dict())
    record_model_file(out_dir, SHAPE_PREDICTOR_NAME, source=SOURCE, license=LICENSE, made_by=MADE_BY)
    log.info(
        "wrote %s: %d levels x %d trees of depth %d, %d feature pixels per level, %d bytes",
        out_path, model.num_levels, model.split_thresh.shape[1], int(np.log2(model.split_thresh.shape[2] + 1)),
        model.anchor_idx.shape[1], out_path.stat().st_size,
    )
    return out_path
