"""Reading images from disk into the one layout every stage expects: uint8 BGR, (h, w, 3)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgeface.errors import ImageError

MAX_IMAGE_PIXELS = 80_000_000
"""Larger images are refused instead of exhausting a small board's memory (8000x8000 = 64 MP passes)."""


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (grey, BGR, BGRA; 8- or 16-bit; float in [0, 1]) as contiguous uint8 BGR."""
    import cv2

    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise ImageError(f"unsupported image shape {image.shape}")


_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""In entropy-coded JPEG data a 0xFF byte is followed by 0x00 (stuffing), RSTn or more 0xFF fill; any
other byte after it is the next marker."""


def jpeg_is_truncated(data: bytes) -> bool:
    """True when a JPEG stream ends before its EOI marker (a partly copied or downloaded file).

    OpenCV 4.x decodes such a file without error and fills the missing part with grey; the faces
    found in it would be silently wrong. Walks the marker segments by their lengths (so thumbnails
    inside APP segments and data appended after EOI do not matter). A stream that is not JPEG, or
    whose structure it does not understand, is left for the decoder to judge (False).
    """
    if not data.startswith(b"\xff\xd8"):
        return False
    size, i = len(data), 2
    while True:
        if i >= size:
            return True
        if data[i] != 0xFF:
            return False
        while i < size and data[i] == 0xFF:  # fill bytes before a marker
            i += 1
        if i >= size:
            return True
        marker = data[i]
        i += 1
        if marker == 0xD9:  # EOI
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        if i + 2 > size:
            return True
        length = (data[i] << 8) | data[i + 1]
        if length < 2:
            return False
        i += length
        if i > size:
            return True
        if marker == 0xDA:  # SOS: skip the entropy-coded scan up to the next marker
            found = _JPEG_SCAN_END.search(data, i)
            if found is None:
                return True
            i = found.start()


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 BGR. Raises ImageError with a one-line reason on any failure."""
    import cv2

    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot read ({error.strerror or error})") from None
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    if jpeg_is_truncated(data.tobytes()):
        raise ImageError(f"{path}: not a readable image (truncated JPEG: the file ends before the image does)")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"{path}: image too large ({image.shape[1]}x{image.shape[0]} pixels)")
    return to_bgr8(image)
