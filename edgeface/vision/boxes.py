"""Box maths, the one place it is written: IoU, containment and weighted NMS on xyxy boxes.

Two precisions on purpose: the detector's candidates are float32 and its NMS runs in float32 (or on
Python floats for a few boxes: the same faces), the tracker and the merging of tiles compare boxes from
anywhere in float64 (`iou_matrix`, Python floats for a few pairs: the same values)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeface.vision.detections import NUM_KEYPOINTS

_NUM_COORDS = 4 + 2 * NUM_KEYPOINTS


SMALL_IOU_PAIRS = 64
"""Up to this many box pairs, IoUs are computed on Python floats (the same float64 arithmetic, in the
same order, as the numpy path; a few pairs cost less that way than a dozen numpy calls)."""


def pair_iou(p: Sequence[float], q: Sequence[float]) -> float:
    w = min(p[2], q[2]) - max(p[0], q[0])
    h = min(p[3], q[3]) - max(p[1], q[1])
    inter = max(0.0, w) * max(0.0, h)
    area_p = max(0.0, p[2] - p[0]) * max(0.0, p[3] - p[1])
    area_q = max(0.0, q[2] - q[0]) * max(0.0, q[3] - q[1])
    union = area_p + area_q - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (len(a), len(b)) between xyxy boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    if len(a) * len(b) <= SMALL_IOU_PAIRS:
        return np.array([[pair_iou(p, q) for q in b.tolist()] for p in a.tolist()], dtype=np.float64)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    # np.maximum(x, 0) rather than np.clip: the same values, a fraction of np.clip's call overhead.
    inter = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)



def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas (len(a), len(b)) of xyxy boxes, in their dtype."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)  # as np.clip(.., 0, None), without its overhead


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def iou_same_dtype(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (len(a), len(b)) of valid xyxy boxes (x2 >= x1, y2 >= y1), in their own dtype (the detector's
    float32; `iou_matrix` is the float64 version for boxes from anywhere)."""
    inter = _intersection(a, b)
    union = _areas(a)[:, None] + _areas(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box (4,) with many (n, 4)."""
    return iou_same_dtype(np.asarray(box)[None, :], boxes)[0]


def weighted_nms(
    xyxy: np.ndarray, kps: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe-style blending NMS. Returns merged (xyxy, kps, scores), best score first.

    Repeatedly takes the best remaining box; every remaining box with IoU > iou_threshold against it
    (itself included) is removed and contributes to a score-weighted mean of boxes and keypoints.
    The merged detection keeps the best box's score.
    """
    n = len(scores)
    flat = np.concatenate([np.asarray(xyxy, np.float32).reshape(n, 4),
                           np.asarray(kps, np.float32).reshape(n, _NUM_COORDS - 4)], axis=1)
    merged, merged_scores = _weighted_nms_flat(flat, np.asarray(scores, np.float32), iou_threshold)
    return merged[:, :4], merged[:, 4:].reshape(-1, NUM_KEYPOINTS, 2), merged_scores


def _weighted_nms_flat(flat: np.ndarray, scores: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """`weighted_nms` on rows x1, y1, x2, y2, keypoints...; the IoUs of all pairs are computed at once (the
    candidates are the few anchors above the score threshold), so each output costs one row lookup."""
    n = len(scores)
    if n <= 1:
        return flat.astype(np.float32, copy=False), scores.astype(np.float32, copy=False)
    order = np.argsort(-scores, kind="stable")
    flat, scores = flat[order], scores[order]
    boxes = flat[:, :4]
    overlap = iou_same_dtype(boxes, boxes) > iou_threshold
    np.fill_diagonal(overlap, True)
    remaining = np.ones(n, bool)
    out_flat: list[np.ndarray] = []
    out_scores: list[float] = []
    best = 0
    while best < n:
        members = overlap[best] & remaining
        remaining &= ~members
        weights = scores[members]
        total = float(weights.sum())
        out_flat.append(weights @ flat[members] / total if total > 0 else flat[best])
        out_scores.append(float(scores[best]))
        rest = np.flatnonzero(remaining[best:])
        best = best + int(rest[0]) if len(rest) else n
    return np.asarray(out_flat, np.float32), np.asarray(out_scores, np.float32)


_SMALL_NMS = 32
"""Up to this many candidates, weighted NMS compares boxes on Python floats (a few boxes cost fewer
microseconds that way than an IoU matrix); above it, one numpy IoU matrix. Both give the same faces."""


def _weighted_nms_small(flat: np.ndarray, boxes: list[list[float]], scores: list[float], candidates: list[int],
                        iou_threshold: float) -> tuple[list[list[float]], list[float]]:
    """`_weighted_nms_flat` of the rows `candidates` of `flat` (`boxes`: their first four columns as
    lists), for a few of them: the greedy grouping on Python floats (IoU as `box_iou`), then each
    group's score-weighted mean in one small matrix product. Returns the merged rows as lists."""
    order = sorted(candidates, key=scores.__getitem__, reverse=True)  # stable for ties, as argsort(kind="stable")
    groups: list[list[int]] = []
    while order:
        lx1, ly1, lx2, ly2 = boxes[order[0]]
        leader_area = (lx2 - lx1) * (ly2 - ly1)
        members: list[int] = [order[0]]
        rest: list[int] = []
        for i in order[1:]:
            x1, y1, x2, y2 = boxes[i]
            inter = max(0.0, min(lx2, x2) - max(lx1, x1)) * max(0.0, min(ly2, y2) - max(ly1, y1))
            union = leader_area + (x2 - x1) * (y2 - y1) - inter
            (members if union > 0 and inter / union > iou_threshold else rest).append(i)
        groups.append(members)
        order = rest
    merged = []
    for members in groups:
        weights = [scores[i] for i in members]
        total = sum(weights)
        if len(members) == 1 or total <= 0:  # a lone box, or zero scores: the leader's own row
            merged.append(flat[members[0]].tolist())
        else:
            merged.append((np.array(weights, np.float32) @ flat[members] / np.float32(total)).tolist())
    return merged, [scores[members[0]] for members in groups]



def weighted_nms_rows(flat: np.ndarray, boxes: list[list[float]], scores: list[float], candidates: list[int],
                      iou_threshold: float) -> tuple[list[list[float]], list[float]]:
    """Weighted NMS of the rows `candidates` of `flat` (x1, y1, x2, y2, keypoints...; `boxes`: the first four
    columns as lists, `scores` per row): on Python floats for a few candidates, one numpy IoU matrix above
    _SMALL_NMS. Returns the merged rows and their scores, best first."""
    if len(candidates) <= _SMALL_NMS:
        return _weighted_nms_small(flat, boxes, scores, candidates, iou_threshold)
    merged, merged_scores = _weighted_nms_flat(flat[candidates], np.array(scores, np.float32)[candidates], iou_threshold)
    return merged.tolist(), merged_scores.tolist()


def contained_frac(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection of `box` with each of `boxes`, as a fraction of the smaller of the two areas: 1 when
    one box lies inside the other (a loose and a tight box on one face), whatever their IoU."""
    box = np.asarray(box)
    inter = _intersection(box[None, :], boxes)[0]
    smaller = np.minimum(_areas(box[None, :])[0], _areas(boxes))
    return np.where(smaller > 0, inter / np.where(smaller > 0, smaller, 1), 0.0)


def inside_frac(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The part of `box`'s own area (at least 1e-6) inside each of `boxes`, float64."""
    box = np.asarray(box)
    inter_w = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    inter_h = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
    return inter_w * inter_h / area
