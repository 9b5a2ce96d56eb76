"""Reading images from disk into the one layout every stage expects: uint8 BGR, (h, w, 3).

Every photo edgeface reads (a file named on the command line, an image-folder source, an MQTT
`enroll` image) goes through :func:`decode_image`: the size is read from the file's header and checked
*before* anything is decoded (a 20000x20000 PNG is a 2.6 MB file that would need 2.4 GB), the format
must be one edgeface knows, and a JPEG's EXIF orientation is applied (a phone's portrait photo is
stored lying on its side with orientation 6; decoded as stored, its face would be tilted 90 degrees).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
from pathlib import Path

import numpy as np

from edgeface.errors import ImageError

MAX_IMAGE_PIXELS = 80_000_000
"""Larger images are refused instead of exhausting a small board's memory (8000x8000 = 64 MP passes)."""

MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024
"""Larger files are refused before they are read into memory."""

FORMATS = "JPEG, PNG, BMP, WebP, TIFF, GIF or PNM"

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm"})
"""Files with these suffixes are the images inside folders (enrollment folders, image-folder sources,
evaluation data); a file named explicitly is always tried."""


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


# -- headers ---------------------------------------------------------------------------------------


def _jpeg_header(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """((width, height) from the first SOFn marker or None, EXIF orientation 1-8 (1 when absent))."""
    orientation = 1
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None, orientation
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            return None, orientation
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\0\0":
            orientation = _exif_orientation(data[i + 10:i + 2 + length]) or orientation
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                return None, orientation
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return (int(width), int(height)), orientation
        elif marker == 0xDA:
            return None, orientation
        i += 2 + length
    return None, orientation


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag (0x0112) of IFD0 in an EXIF TIFF block, when present and valid."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\0", b"MM\0*"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    for k in range(min(count, 1000)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            return None
        tag, kind = struct.unpack(order + "HH", tiff[entry:entry + 4])
        if tag == 0x0112 and kind == 3:  # SHORT
            (value,) = struct.unpack(order + "H", tiff[entry + 8:entry + 10])
            return value if 1 <= value <= 8 else None
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    found: dict[int, int] = {}
    for k in range(min(count, 4096)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(data):
            return None
        tag, kind = struct.unpack(order + "HH", data[entry:entry + 4])
        if tag in (256, 257):
            value = struct.unpack(order + ("H" if kind == 3 else "I"), data[entry + 8:entry + (10 if kind == 3 else 12)])[0]
            found[tag] = int(value)
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n)*(\d+)")


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    if data[1:2] == b"7":  # PAM: WIDTH/HEIGHT lines
        width = re.search(rb"\nWIDTH\s+(\d+)", data[:4096])
        height = re.search(rb"\nHEIGHT\s+(\d+)", data[:4096])
        return (int(width.group(1)), int(height.group(1))) if width and height else None
    values = []
    position = 2
    for _ in range(2):
        match = _PNM_TOKEN.match(data, position)
        if match is None:
            return None
        values.append(int(match.group(1)))
        position = match.end()
    return values[0], values[1]


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def image_header(data: bytes) -> tuple[str, tuple[int, int] | None, int]:
    """(format, (width, height) or None when the header is unreadable, EXIF orientation) from the
    first bytes of an image file, without decoding it. format is "" for an unknown format."""
    if data.startswith(b"\xff\xd8\xff"):
        size, orientation = _jpeg_header(data)
        return "JPEG", size, orientation
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return "PNG", (int(width), int(height)), 1
        return "PNG", None, 1
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return "BMP", (abs(width), abs(height)), 1
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP", _webp_size(data), 1
    if data.startswith((b"II*\0", b"MM\0*")):
        return "TIFF", _tiff_size(data), 1
    if data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return "GIF", (width, height), 1
    if len(data) >= 3 and data[0:1] == b"P" and data[1:2] in b"1234567" and data[2:3].isspace():
        return "PNM", _pnm_size(data), 1
    return "", None, 1


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a decoded image as EXIF orientation 2-8 says it is to be shown (1: as stored)."""
    import cv2

    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(image), -1)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def decode_image(data: bytes | np.ndarray, what: str = "image") -> np.ndarray:
    """An image file's bytes as uint8 BGR, upright. The size comes from the header and is checked
    before decoding. Raises ImageError("<what>: <one-line reason>")."""
    import cv2

    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not raw:
        raise ImageError(f"{what}: empty file")
    kind, size, orientation = image_header(raw)
    if not kind:
        raise ImageError(f"{what}: not a readable image (unknown format; edgeface reads {FORMATS})")
    if size is None:
        raise ImageError(f"{what}: not a readable image (the {kind} header is truncated or corrupt)")
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{what}: not a readable image (its {kind} header says {width}x{height} pixels)")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{what}: image too large ({width}x{height} pixels, {width * height / 1e6:.0f} MP; "
                         f"at most {MAX_IMAGE_PIXELS / 1e6:.0f} MP): scale it down first")
    buffer = data if isinstance(data, np.ndarray) else np.frombuffer(raw, np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)  # as stored: 16-bit and alpha kept, EXIF ignored
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(f"{what}: not a readable image (corrupt, truncated or unsupported {kind})")
    if kind == "JPEG" and jpeg_is_truncated(raw):
        raise ImageError(f"{what}: not a readable image (truncated JPEG: the file ends before the image does)")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:  # a header that lied
        raise ImageError(f"{what}: image too large ({image.shape[1]}x{image.shape[0]} pixels)")
    return to_bgr8(_orient(image, orientation))


def describe_os_error(path: Path, error: OSError) -> str:
    """A one-line '<path>: reason' for a file that cannot be opened."""
    if error.errno == errno.ELOOP:
        return f"{path}: a loop of symbolic links (it points back at itself); fix the link"
    if error.errno == errno.ENOENT:
        if os.path.islink(path):
            return f"{path}: a symbolic link to a file that does not exist"
        return f"{path}: no such file"
    if error.errno == errno.EISDIR:
        return f"{path}: is a folder, not an image"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied"
    return f"{path}: cannot read ({error.strerror or error})"


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 BGR, upright. Raises ImageError with a one-line reason on any
    failure; never blocks on a FIFO or device and never reads a file larger than MAX_IMAGE_FILE_BYTES."""
    return decode_image(read_image_bytes(path), str(path))


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file (for `decode_image`), with `read_image`'s checks and one-line errors."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ImageError(describe_os_error(path, error)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{path}: is a folder, not an image")
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
            raise ImageError(f"{path}: {kind}, not an image file")
        if info.st_size > MAX_IMAGE_FILE_BYTES:
            raise ImageError(f"{path}: file too large for an image ({info.st_size / 2**20:.0f} MiB; at most "
                             f"{MAX_IMAGE_FILE_BYTES // 2**20} MiB)")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_IMAGE_FILE_BYTES + 1)
    except OSError as error:
        raise ImageError(describe_os_error(path, error)) from None
    finally:
        os.close(fd)
    return data
