"""Boxes, track ids and labels drawn on a frame: `edgeface annotate` and the station page's live view."""

from __future__ import annotations

from typing import Any

COLOURS = {"known": (60, 200, 60), "unknown": (0, 140, 255), "undecided": (180, 180, 180)}


def draw(image: Any, result: Any, offset: tuple[int, int] = (0, 0)) -> Any:
    """Boxes, track ids and labels of one FrameResult drawn on a copy of the frame."""
    import cv2

    out = image.copy()
    for face in result.faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        x1, x2 = x1 + offset[0], x2 + offset[0]
        y1, y2 = y1 + offset[1], y2 + offset[1]
        if face.label is None:
            colour, text = COLOURS["undecided"], f"#{face.track_id}"
        elif face.label == "unknown" or face.label.startswith("unknown-"):
            colour, text = COLOURS["unknown"], f"#{face.track_id} {face.label}"
        else:
            colour, text = COLOURS["known"], f"#{face.track_id} {face.label}"
        thickness = max(2, out.shape[1] // 480)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        scale = max(0.5, out.shape[1] / 1280)
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1 + thickness // 2)
        ty = y1 - 4 if y1 - h - 6 > 0 else y2 + h + 4
        cv2.rectangle(out, (x1, ty - h - 3), (x1 + w + 4, ty + base), colour, -1)
        cv2.putText(out, text, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1 + thickness // 2,
                    cv2.LINE_AA)
    return out
