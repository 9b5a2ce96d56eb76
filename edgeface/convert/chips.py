"""Face chips for building and checking the embedder: calibration chips from LFW, exact resampling.

Build-time only. Chips are made in pure numpy (float64 bilinear sampling, round half up) so that a
recipe (image path + 2x3 matrix) re-creates the same uint8 pixels on any machine with the same JPEG
decoder — the parity fixture stores recipes, never pixels.

Calibration set: LFW deep-funneled images of people who appear in none of the pair lists
(pairs.txt, pairsDevTrain.txt, pairsDevTest.txt), so that calibrating never sees an evaluated
identity. The deep-funneled images are pre-aligned with the face near the centre, so a fixed centre
box resized to 150x150 stands in for a detector + aligner (`LFW_CENTRE_BOX`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeface.errors import EdgefaceError

CHIP_SIZE = 150
PAIR_LISTS = ("pairs.txt", "pairsDevTrain.txt", "pairsDevTest.txt")

LFW_CENTRE_BOX = (67.0, 79.0, 116.0)
"""(left, top, side) in pixels of the 250x250 deep-funneled LFW frame that becomes the 150x150
calibration chip. Measured: the mean of dlib's own 150x150 face-chip boxes (5-point landmarks,
padding 0.25) over LFW images is close to this square (see tools/make_resnet_reference.py)."""


def paired_people(lfw_dir: Path) -> set[str]:
    """Everyone named in any of LFW's pair lists (the people evaluation uses)."""
    names: set[str] = set()
    for list_name in PAIR_LISTS:
        path = lfw_dir / list_name
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise EdgefaceError(f"cannot read LFW pair list {path}: {error.strerror or error}") from error
        for line in lines[1:]:
            fields = line.split()
            if len(fields) == 3:
                names.add(fields[0])
            elif len(fields) == 4:
                names.update((fields[0], fields[2]))
    return names


def calibration_images(lfw_dir: Path, count: int = 300) -> list[Path]:
    """`count` LFW images (the first image of each of `count` unpaired people, spread evenly over the
    sorted names), deterministic for a given LFW copy."""
    excluded = paired_people(lfw_dir)
    images_dir = lfw_dir / "images"
    people = sorted(p.name for p in images_dir.iterdir() if p.is_dir() and p.name not in excluded)
    if len(people) < count:
        raise EdgefaceError(f"only {len(people)} unpaired people in {images_dir}, need {count}")
    step = len(people) / count
    chosen = [people[int(i * step)] for i in range(count)]
    paths = []
    for name in chosen:
        first = sorted((images_dir / name).glob("*.jpg"))
        if not first:
            raise EdgefaceError(f"no .jpg images in {images_dir / name}")
        paths.append(first[0])
    return paths


def box_matrix(left: float, top: float, side: float, size: int = CHIP_SIZE) -> np.ndarray:
    """2x3 matrix mapping chip pixel (col, row, 1) to source pixel (x, y) for a square box."""
    scale = side / size
    # Pixel centres: chip pixel c covers source x = left + (c + 0.5) * scale - 0.5.
    return np.array([[scale, 0.0, left + 0.5 * scale - 0.5], [0.0, scale, top + 0.5 * scale - 0.5]])


def warp_chip(image: np.ndarray, chip_to_image: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """Sample a (size, size, channels) uint8 chip: chip pixel (c, r) takes the float64 bilinear value
    of `image` at chip_to_image @ (c, r, 1), pixels outside the image count as 0, then rounds half up."""
    matrix = np.asarray(chip_to_image, dtype=np.float64)
    if matrix.shape != (2, 3):
        raise ValueError(f"chip_to_image must be 2x3, got {matrix.shape}")
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    x = matrix[0, 0] * cols + matrix[0, 1] * rows + matrix[0, 2]
    y = matrix[1, 0] * cols + matrix[1, 1] * rows + matrix[1, 2]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    source = image.astype(np.float64)
    if source.ndim == 2:
        source = source[..., None]
    height, width = source.shape[:2]

    def at(yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
        inside = ((yi >= 0) & (yi < height) & (xi >= 0) & (xi < width))[..., None]
        return np.where(inside, source[np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1)], 0.0)

    value = (
        at(y0i, x0i) * (1 - fx) * (1 - fy)
        + at(y0i, x0i + 1) * fx * (1 - fy)
        + at(y0i + 1, x0i) * (1 - fx) * fy
        + at(y0i + 1, x0i + 1) * fx * fy
    )
    return np.clip(np.floor(value + 0.5), 0, 255).astype(np.uint8)


def lfw_centre_chip(bgr: np.ndarray) -> np.ndarray:
    """The fixed centre-box 150x150 chip of a 250x250 LFW deep-funneled image (channel order kept)."""
    return warp_chip(bgr, box_matrix(*LFW_CENTRE_BOX))


def calibration_chips(lfw_dir: Path, count: int = 300) -> np.ndarray:
    """(count, 150, 150, 3) uint8 BGR calibration chips (see the module docstring)."""
    from edgeface.io.images import read_image

    return np.stack([lfw_centre_chip(read_image(path)) for path in calibration_images(lfw_dir, count)])
