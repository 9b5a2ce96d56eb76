"""Alignment geometry: the closed-form similarity against Umeyama's SVD solution, dlib's chip matrix."""

from __future__ import annotations

import numpy as np
import pytest

from edgeface.vision.align import CHIP_SIZE, DLIB_TEMPLATE, dlib_chip_matrix, similarity_transform


def umeyama(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The reference: Umeyama's least-squares similarity without reflection, through the SVD."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    s, t = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(t.T @ s / len(source))
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    rotation = u @ d @ vt
    scale = np.trace(np.diag(singular) @ d) / ((s**2).sum() / len(source))
    return np.hstack([scale * rotation, (target_mean - scale * rotation @ source_mean)[:, None]])


def _point_sets(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    sets = []
    for k in range(count):
        source = rng.uniform(0, 150, (int(rng.integers(2, 6)), 2))
        angle, scale = rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 5.0)
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        target = source @ rotation.T + rng.uniform(-100, 100, 2) + rng.normal(0, rng.uniform(0, 20), source.shape)
        if k % 7 == 0:
            target[:, 1] *= -1  # a mirrored face: the best proper similarity, never a reflection
        sets.append((source, target))
    return sets


def test_closed_form_similarity_is_umeyamas() -> None:
    for source, target in _point_sets(300):
        np.testing.assert_allclose(similarity_transform(source, target), umeyama(source, target), rtol=1e-9, atol=1e-9)


def test_similarity_of_coincident_points_is_a_translation() -> None:
    matrix = similarity_transform(np.ones((4, 2)), np.full((4, 2), 3.0))
    np.testing.assert_allclose(matrix, [[1, 0, 2], [0, 1, 2]])


def test_chip_matrix_puts_the_template_on_the_landmarks() -> None:
    """Landmarks that are the template moved by a similarity: the chip's template points land on them,
    with dlib's corner convention (first and last chip pixel on the extraction rectangle's corners)."""
    angle, scale, shift = 0.3, 1.7, np.array([40.0, -12.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = DLIB_TEMPLATE @ rotation.T + shift
    chip_to_image = dlib_chip_matrix(DLIB_TEMPLATE, landmarks)
    step = (scale * CHIP_SIZE - 1) / (CHIP_SIZE - 1)
    assert np.hypot(*chip_to_image[:, 0]) == pytest.approx(step)
    centre = np.array([CHIP_SIZE / 2, CHIP_SIZE / 2]) @ rotation.T + shift
    middle = chip_to_image @ np.array([(CHIP_SIZE - 1) / 2, (CHIP_SIZE - 1) / 2, 1.0])
    np.testing.assert_allclose(middle, centre, atol=1e-9)
    np.testing.assert_allclose(dlib_chip_matrix(DLIB_TEMPLATE.tolist(), landmarks.tolist()), chip_to_image)
