"""Detection on big frames: the whole frame plus a grid of overlapping tiles, merged by NMS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeface.config import PipelineConfig
from edgeface.vision.boxes import inside_frac, iou_matrix
from edgeface.vision.detections import FaceDetections

_CONFIG = PipelineConfig()  # the defaults are the config's (but for the grid: a TiledDetector has tiles)


def nms_merge(detections: Sequence[FaceDetections], iou_threshold: float = 0.3) -> FaceDetections:
    """Merge detections from overlapping views: best score first, a face overlapping a kept one by
    IoU > iou_threshold (or lying mostly inside it) is the same face and dropped."""
    parts = [d for d in detections if len(d)]
    if not parts:
        return FaceDetections()
    xyxy = np.concatenate([d.xyxy for d in parts])
    score = np.concatenate([d.score for d in parts])
    kps = np.concatenate([d.kps for d in parts])
    order = np.argsort(-score, kind="stable")
    keep: list[int] = []
    for i in order:
        if keep:
            kept = xyxy[keep]
            iou = iou_matrix(xyxy[i][None], kept)[0]
            if np.any(iou > iou_threshold) or np.any(inside_frac(xyxy[i], kept) > 0.7):
                continue
        keep.append(int(i))
    index = np.array(keep, dtype=np.int64)
    return FaceDetections(xyxy[index], score[index], kps[index])


def tile_grid(width: int, height: int, tiles_x: int, tiles_y: int, overlap_frac: float) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of tiles_x * tiles_y tiles covering the frame, neighbours overlapping by
    overlap_frac of a tile's size (so a face cut by one tile's edge is whole in the next)."""
    boxes = []
    tile_w = width / (tiles_x - (tiles_x - 1) * overlap_frac)
    tile_h = height / (tiles_y - (tiles_y - 1) * overlap_frac)
    for j in range(tiles_y):
        for i in range(tiles_x):
            x0 = round(i * tile_w * (1 - overlap_frac))
            y0 = round(j * tile_h * (1 - overlap_frac))
            boxes.append((x0, y0, min(round(x0 + tile_w), width), min(round(y0 + tile_h), height)))
    return boxes


class TiledDetector:
    """Detect on the whole frame plus a grid of overlapping tiles, merged by NMS.

    BlazeFace sees a whole image at 128 (short) or 192 (full) pixels, so a face smaller than about a
    tenth (short) or a twentieth (full) of the frame's long side is lost; a tile is a closer look at
    part of the frame. The frame is first downscaled ONCE so that its long side is at most
    `work_long_side_px` (resizing each full-resolution tile separately costs more than the model);
    boxes come back in source pixels. Frames whose long side is at most `min_side_px_for_tiles` are
    detected whole, as by the plain detector."""

    def __init__(self, detector: Any, tiles_x: int = 2, tiles_y: int = 2,
                 overlap_frac: float = _CONFIG.detect_tile_overlap_frac, whole_frame: bool = True,
                 min_side_px_for_tiles: int = _CONFIG.detect_tiles_min_side_px,
                 work_long_side_px: int = _CONFIG.detect_work_long_side_px) -> None:
        if tiles_x < 1 or tiles_y < 1:
            raise ValueError("tiles_x and tiles_y must be >= 1")
        if not 0.0 <= overlap_frac < 0.5:
            raise ValueError(f"overlap_frac must be in [0, 0.5), got {overlap_frac}")
        if work_long_side_px < 64:
            raise ValueError(f"work_long_side_px must be >= 64, got {work_long_side_px}")
        self.detector = detector
        self.tiles_x, self.tiles_y, self.overlap_frac = tiles_x, tiles_y, overlap_frac
        self.whole_frame = whole_frame
        self.min_side_px_for_tiles = min_side_px_for_tiles
        self.work_long_side_px = work_long_side_px

    def detect(self, image: np.ndarray) -> FaceDetections:
        import cv2

        height, width = image.shape[:2]
        if max(width, height) <= self.min_side_px_for_tiles or self.tiles_x * self.tiles_y == 1:
            return self.detector.detect(image)
        scale = min(1.0, self.work_long_side_px / max(width, height))
        work = image
        if scale < 1.0:
            work = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                              interpolation=cv2.INTER_AREA)
        h, w = work.shape[:2]
        views: list[FaceDetections] = []
        if self.whole_frame:
            views.append(self.detector.detect(work))
        for x0, y0, x1, y1 in tile_grid(w, h, self.tiles_x, self.tiles_y, self.overlap_frac):
            found = self.detector.detect(work[y0:y1, x0:x1])
            if len(found):
                shift = np.array([x0, y0], np.float32)
                views.append(FaceDetections((found.xyxy.reshape(-1, 2, 2) + shift).reshape(-1, 4), found.score,
                                            found.kps + shift))
        merged = nms_merge(views)
        if scale < 1.0 and len(merged):
            merged = FaceDetections(merged.xyxy / np.float32(scale), merged.score, merged.kps / np.float32(scale))
        return merged
