"""A quarter-size int8 copy of a large gallery's matrix, scanned first, then an exact float32 re-rank.

A one-probe search of 100,000 identities is bound by reading the float32 matrix (51 MB per probe).
The int8 copy (each row scaled to +-127, 13 MB) is multiplied by the probe in onnxruntime's integer
kernel (models/int8_scan.onnx). Each approximate similarity comes with a bound on its error: for a
unit probe p and row g with int8 approximations p^ and g^,

    |p.g - p^.g^| <= |g - g^| + |p - p^| (1 + |g - g^|),

so the rows that could still be among the two nearest, or below their own match threshold, are
known exactly; only they get the float32 distance. The answers are the exact search's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from edgeface.recognition.vectors import pairwise_distances

SCAN_MODEL_FILE = "int8_scan.onnx"
"""Built by edgeface.convert.scan_onnx (build time), shipped in models/ with a manifest entry."""
SCAN_MIN_ROWS = 20_000
"""Below this many rows the float32 product alone is as fast (measured: 5,749 rows 0.11 ms)."""
BUILD_BLOCK = 4096
ROUNDING_MARGIN = 1e-5
"""Added to every bound: float32 rounding in the scaled products."""


@cache
def _session() -> Any:
    import onnxruntime as ort

    from edgeface.io.models import verified_model_path

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(verified_model_path(SCAN_MODEL_FILE)), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Int8Scan:
    codes_t: np.ndarray
    """(128, n) int8: row k of the matrix is about scales[k] * codes_t[:, k]."""
    scales: np.ndarray
    errors: np.ndarray
    """(n,) |row - its int8 approximation|."""

    @staticmethod
    def build(rows: np.ndarray) -> Int8Scan:
        """In blocks of BUILD_BLOCK rows: numpy keeps the GIL through some of these steps, and a background
        reload builds the scan while the camera loop matches (one 100,000-row step held it ~0.47 s)."""
        n = len(rows)
        codes_t = np.empty((rows.shape[1], n), np.int8)
        scales = np.empty(n, np.float32)
        errors = np.empty(n, np.float32)
        for start in range(0, n, BUILD_BLOCK):
            block = rows[start:start + BUILD_BLOCK]
            peak = np.maximum(np.abs(block).max(axis=1), 1e-12).astype(np.float32)
            codes = np.rint(block * (127.0 / peak)[:, None]).astype(np.int8)
            scales[start:start + BUILD_BLOCK] = peak / 127.0
            errors[start:start + BUILD_BLOCK] = np.linalg.norm(
                block - codes.astype(np.float32) * scales[start:start + BUILD_BLOCK, None], axis=1)
            codes_t[:, start:start + BUILD_BLOCK] = codes.T
        return Int8Scan(codes_t, scales, errors)

    def without(self, k: int) -> Int8Scan:
        return Int8Scan(np.delete(self.codes_t, k, axis=1), np.delete(self.scales, k), np.delete(self.errors, k))

    def with_row(self, j: int, row: np.ndarray) -> Int8Scan:
        """This scan with `row` inserted at position j (the gallery's own writes: no full rebuild)."""
        one = Int8Scan.build(row[None])
        return Int8Scan(np.insert(self.codes_t, j, one.codes_t[:, 0], axis=1), np.insert(self.scales, j, one.scales),
                        np.insert(self.errors, j, one.errors))

    def with_column(self, k: int, row: np.ndarray) -> Int8Scan:
        """This scan with row k replaced by `row` (an identity whose mean template changed)."""
        one = Int8Scan.build(row[None])
        codes_t, scales, errors = self.codes_t.copy(), self.scales.copy(), self.errors.copy()
        codes_t[:, k], scales[k], errors[k] = one.codes_t[:, 0], one.scales[0], one.errors[0]
        return Int8Scan(codes_t, scales, errors)

    @property
    def nbytes(self) -> int:
        return self.codes_t.nbytes + self.scales.nbytes + self.errors.nbytes

    def similarity_bounds(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) bounds on probes @ rows.T for unit probes (m, 128)."""
        peak = np.maximum(np.abs(probes).max(axis=1), 1e-12).astype(np.float32)
        codes = np.rint(probes * (127.0 / peak)[:, None])
        probe_errors = np.linalg.norm(probes - codes * (peak / 127.0)[:, None], axis=1).astype(np.float32)
        products = _session().run(None, {"probes": (codes + 128).astype(np.uint8), "gallery_t": self.codes_t})[0]
        approx = products.astype(np.float32) * (peak / 127.0)[:, None] * self.scales[None, :]
        bound = self.errors[None, :] + probe_errors[:, None] * (1.0 + self.errors[None, :]) + ROUNDING_MARGIN
        return approx - bound, approx + bound


def scanned_distances(probes: np.ndarray, rows: np.ndarray, scan: Int8Scan, limits: np.ndarray) -> np.ndarray:
    """(m, n) distances from unit probes to rows: exact (pairwise_distances) wherever a row could be one
    of a probe's two nearest or below its limit (limits (n,), a match is distance < limit), inf elsewhere.
    What the open-set search reads from the full matrix is therefore unchanged."""
    lower, upper = scan.similarity_bounds(probes)
    n = rows.shape[0]
    # distance < limit  <=>  similarity > 1 - limit^2 / 2
    similarity_limits = 1.0 - limits.astype(np.float32) ** 2 / 2.0
    out = np.full((len(probes), n), np.inf, np.float32)
    for i in range(len(probes)):
        best = int(np.argmax(lower[i]))
        best_lower = lower[i, best]
        lower[i, best] = -np.inf
        second_best = lower[i].max() if n >= 2 else -np.inf  # two rows are surely nearer than anything below this
        lower[i, best] = best_lower
        wanted = np.flatnonzero(upper[i] >= np.minimum(second_best, similarity_limits))
        out[i, wanted] = pairwise_distances(probes[i:i + 1], rows[wanted])[0]
    return out
