from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.errors import ImageError
from edgeface.io.images import read_image, to_bgr8


def _write(path: Path, image: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), image):
        raise RuntimeError(f"could not write {path}")
    return path


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("grey.png", np.full((20, 30), 128, np.uint8)),
        ("bgra.png", np.full((20, 30, 4), 200, np.uint8)),
        ("deep.png", np.full((20, 30, 3), 40000, np.uint16)),
        ("grey16.png", np.full((20, 30), 65535, np.uint16)),
        ("colour.jpg", np.full((20, 30, 3), 90, np.uint8)),
    ],
)
def test_every_layout_becomes_bgr8(tmp_path: Path, name: str, image: np.ndarray) -> None:
    result = read_image(_write(tmp_path / name, image))
    assert result.dtype == np.uint8
    assert result.shape == (20, 30, 3)
    assert result.flags["C_CONTIGUOUS"]


def test_sixteen_bit_scales_down_to_eight(tmp_path: Path) -> None:
    result = read_image(_write(tmp_path / "a.png", np.full((4, 4), 65535, np.uint16)))
    assert int(result.max()) == 255


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"this is not an image at all" * 10, "not a readable image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 50, "not a readable image"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as caught:
        read_image(path)
    assert "\n" not in str(caught.value)


def test_truncated_jpeg_is_an_error_or_a_partial_image(tmp_path: Path) -> None:
    full = tmp_path / "full.jpg"
    _write(full, np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[:300])
    try:
        image = read_image(truncated)
    except ImageError as error:
        assert "not a readable image" in str(error)
    else:
        assert image.shape == (200, 200, 3)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        read_image(tmp_path)


def test_huge_image_is_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "huge.png", np.zeros((8000, 8000), np.uint8))
    assert read_image(path).shape == (8000, 8000, 3)


def test_unsupported_layout_is_refused() -> None:
    with pytest.raises(ImageError, match="unsupported image shape"):
        to_bgr8(np.zeros((4, 4, 2), np.uint8))
