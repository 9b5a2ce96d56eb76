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

from dataclasses import dataclass, field
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
    buffer: np.ndarray
    """(128, capacity) int8: row k of the matrix is about scales[k] * buffer[:, k] for k < count; the
    columns after count are spare (zero, or a newer scan's rows appended in place). The integer product
    runs over the whole buffer (contiguous, as onnxruntime takes it) and its spare columns are dropped."""
    count: int
    scales: np.ndarray
    errors: np.ndarray
    """(count,) |row - its int8 approximation|."""
    _claimed: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)
    """Columns of `buffer` claimed by its newest scan (shared by the scans that only append to it)."""

    @property
    def codes_t(self) -> np.ndarray:
        """(128, count) int8 codes of the rows."""
        return self.buffer[:, :self.count]

    @staticmethod
    def build(rows: np.ndarray, spare: int | None = None) -> Int8Scan:
        """In blocks of BUILD_BLOCK rows: numpy keeps the GIL through some of these steps, and a background
        reload builds the scan while the camera loop matches (one 100,000-row step held it ~0.47 s).
        spare: columns left for appends in place (default: 1/64 of the rows, 64 at least)."""
        n = len(rows)
        spare = max(n // 64, 64) if spare is None else spare
        buffer = np.zeros((rows.shape[1], n + spare), np.int8)
        scales = np.empty(n, np.float32)
        errors = np.empty(n, np.float32)
        for start in range(0, n, BUILD_BLOCK):
            block = rows[start:start + BUILD_BLOCK]
            peak = np.maximum(np.abs(block).max(axis=1), 1e-12).astype(np.float32)
            codes = np.rint(block * (127.0 / peak)[:, None]).astype(np.int8)
            scales[start:start + BUILD_BLOCK] = peak / 127.0
            errors[start:start + BUILD_BLOCK] = np.linalg.norm(
                block - codes.astype(np.float32) * scales[start:start + BUILD_BLOCK, None], axis=1)
            buffer[:, start:start + len(block)] = codes.T
        return Int8Scan(buffer, n, scales, errors, [n])

    def _with_codes(self, codes_t: np.ndarray, scales: np.ndarray, errors: np.ndarray) -> Int8Scan:
        """A scan on a new buffer holding these codes, with spare columns."""
        n = codes_t.shape[1]
        buffer = np.zeros((codes_t.shape[0], n + max(n // 64, 64)), np.int8)
        buffer[:, :n] = codes_t
        return Int8Scan(buffer, n, scales, errors, [n])

    def without(self, k: int) -> Int8Scan:
        codes = self.codes_t
        return self._with_codes(np.concatenate([codes[:, :k], codes[:, k + 1:]], axis=1),
                                np.delete(self.scales, k), np.delete(self.errors, k))

    def with_row(self, j: int, row: np.ndarray) -> Int8Scan:
        """This scan with `row` inserted at position j (the gallery's own writes: no full rebuild). At the
        end of the newest scan of its buffer, written into a spare column in place; older scans keep
        seeing only their own columns."""
        one = Int8Scan.build(row[None], spare=0)
        scales, errors = np.insert(self.scales, j, one.scales), np.insert(self.errors, j, one.errors)
        n = self.count
        if j == n and self._claimed[0] == n and n < self.buffer.shape[1]:
            self.buffer[:, n] = one.buffer[:, 0]
            self._claimed[0] = n + 1
            return Int8Scan(self.buffer, n + 1, scales, errors, self._claimed)
        return self._with_codes(np.insert(self.codes_t, j, one.buffer[:, 0], axis=1), scales, errors)

    def with_column(self, k: int, row: np.ndarray) -> Int8Scan:
        """This scan with row k replaced by `row` (an identity whose mean template changed)."""
        one = Int8Scan.build(row[None], spare=0)
        codes = self.codes_t.copy()
        codes[:, k] = one.buffer[:, 0]
        scales, errors = self.scales.copy(), self.errors.copy()
        scales[k], errors[k] = one.scales[0], one.errors[0]
        return self._with_codes(codes, scales, errors)

    def detached(self) -> Int8Scan:
        """The same scan, which never appends into the shared buffer (for a thread working without the lock)."""
        return Int8Scan(self.buffer, self.count, self.scales, self.errors, [-1])

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes + self.scales.nbytes + self.errors.nbytes

    def similarity_bounds(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) bounds on probes @ rows.T for unit probes (m, 128)."""
        peak = np.maximum(np.abs(probes).max(axis=1), 1e-12).astype(np.float32)
        codes = np.rint(probes * (127.0 / peak)[:, None])
        probe_errors = np.linalg.norm(probes - codes * (peak / 127.0)[:, None], axis=1).astype(np.float32)
        products = _session().run(None, {"probes": (codes + 128).astype(np.uint8), "gallery_t": self.buffer})[0]
        approx = products[:, :self.count].astype(np.float32) * (peak / 127.0)[:, None] * self.scales[None, :]
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
