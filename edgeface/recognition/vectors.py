"""Embedding vectors: the embedder's dimension, unit rows and the distance every stage compares with."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeface.errors import GalleryError

EMBEDDING_DIM = 128


def unit_rows(embeddings: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """(n, 128) float32 unit rows; a single (128,) vector becomes (1, 128). Refuses NaN, inf, zero rows."""
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != EMBEDDING_DIM:
        raise GalleryError(f"embeddings must have shape (n, {EMBEDDING_DIM}), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise GalleryError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if np.any(norms < 1e-6):
        raise GalleryError("an embedding is all zeros")
    return np.ascontiguousarray(array / norms, dtype=np.float32)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) between unit rows: sqrt(2 - 2 a.b)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    return np.sqrt(np.clip(2.0 - 2.0 * (a @ b.T), 0.0, 4.0)).astype(np.float32)
