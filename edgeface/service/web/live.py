"""What the page shows of the camera: the latest frame (`LiveView`) and the faces of recent events.

The camera thread only hands over references (`offer`); drawing and JPEG encoding happen in the
request's thread while someone is watching. The one exception is a frame that carries events: the
faces of those tracks are copied out (a slice of the frame, ~100x100 pixels, a few per track), so
the Events page can show who each event was about after the frame is gone. They are kept in memory
only, for the last `EVENTS_KEPT` events, never when `clusters.store_face_crops` is off, and forgetting
a person or a cluster drops theirs (`forget`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

EVENTS_KEPT = 200
CROP_MARGIN = 0.25
"""The crop is the face box grown by this fraction on each side (hair, chin)."""


def face_crop(image: np.ndarray, box: Any) -> np.ndarray | None:
    """A copy of the face box (x1, y1, x2, y2 in pixels) grown by CROP_MARGIN, clipped to the frame."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    dx, dy = (x2 - x1) * CROP_MARGIN, (y2 - y1) * CROP_MARGIN
    height, width = image.shape[:2]
    left, top = max(int(x1 - dx), 0), max(int(y1 - dy), 0)
    right, bottom = min(int(x2 + dx), width), min(int(y2 + dy), height)
    if right - left < 8 or bottom - top < 8:
        return None
    return image[top:bottom, left:right].copy()  # never a view: it would keep the whole frame alive


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes | None:
    import cv2

    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buffer.tobytes() if ok else None


class EventCrops:
    """Event id -> (who, the face as a BGR array, its JPEG once asked for), the last `kept` events."""

    def __init__(self, kept: int = EVENTS_KEPT) -> None:
        self.kept = kept
        self._crops: OrderedDict[str, tuple[str, np.ndarray, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, event_id: str, who: str, crop: np.ndarray) -> None:
        with self._lock:
            self._crops[event_id] = (who, crop, None)
            while len(self._crops) > self.kept:
                self._crops.popitem(last=False)

    def has(self, event_id: str) -> bool:
        return event_id in self._crops

    def jpeg(self, event_id: str) -> bytes | None:
        with self._lock:
            entry = self._crops.get(event_id)
        if entry is None:
            return None
        who, crop, jpeg = entry
        if jpeg is None:
            jpeg = encode_jpeg(crop)
            with self._lock:
                if event_id in self._crops:
                    self._crops[event_id] = (who, crop, jpeg)
        return jpeg

    def relabel(self, old: str, new: str) -> None:
        """A cluster was named (or merged): its events' faces are now about `new`."""
        with self._lock:
            for key, (who, crop, jpeg) in list(self._crops.items()):
                if who == old:
                    self._crops[key] = (new, crop, jpeg)

    def forget(self, who: str) -> int:
        """Drop the faces of events about `who` (a name or a cluster id)."""
        with self._lock:
            gone = [key for key, entry in self._crops.items() if entry[0] == who]
            for key in gone:
                del self._crops[key]
        return len(gone)


def event_subject(event: Any) -> str | None:
    """The name or cluster id an event is about (what forgetting it erases), None for others."""
    kind = getattr(event, "type", None)
    if kind == "recognized":
        return str(event.name)
    if kind == "unknown":
        return str(event.cluster_id) if event.cluster_id else f"track-{event.track_id}"
    return None


class LiveView:
    """The latest frame and its result, drawn and encoded on demand (never on the camera thread)."""

    def __init__(self, event_crops: EventCrops | None = None) -> None:
        self.pending: Any = None
        """The image of the frame being processed (set by the loop's frame iterator)."""
        self.event_crops = event_crops
        """Where the faces of events go (None: crops are off)."""
        self._latest: tuple[Any, Any] | None = None
        self._lock = threading.Lock()
        self._encoded: tuple[int, bytes] | None = None

    def offer(self, image: Any, result: Any) -> None:
        self._latest = (image, result)  # one assignment: atomic, no copy, no lock on the camera thread
        if result.events and self.event_crops is not None and image is not None:
            self._keep_event_faces(image, result)

    def _keep_event_faces(self, image: np.ndarray, result: Any) -> None:
        boxes = {face.track_id: face.box for face in result.faces}
        for event in result.events:
            who = event_subject(event)
            box = boxes.get(getattr(event, "track_id", None))
            if who is None or box is None:
                continue
            crop = face_crop(image, box)
            if crop is not None:
                self.event_crops.add(event.id, who, crop)  # type: ignore[union-attr]

    def jpeg(self) -> bytes | None:
        latest = self._latest
        if latest is None:
            return None
        image, result = latest
        with self._lock:
            if self._encoded is not None and self._encoded[0] == result.index:
                return self._encoded[1]
            from edgeface.service.overlay import draw

            jpeg = encode_jpeg(draw(image, result), 80)
            if jpeg is None:
                return None
            self._encoded = (result.index, jpeg)
            return jpeg
