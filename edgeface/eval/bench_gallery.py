"""`edgeface bench gallery`: search and load cost of a gallery of N identities.

The gallery is N identities of one random unit vector each (search cost does not depend on what the
vectors are), written to a temporary file that is deleted afterwards. Figures:

- match_ms: median wall time of one `Gallery.match` call with one probe (what the camera loop does
  per face), over `probes` probes, half of them noisy copies of enrolled vectors and half strangers;
- snapshot_load_ms: median time for a freshly opened gallery to read the file into its search arrays
  (what another process's change costs the camera loop);
- change_ms: median time of enrolling one more person in the running gallery (its own write, applied
  to the arrays in place);
- reload_ms, reload_stall_ms: another process enrolls one person while the station's gallery
  (background_reload, as `edgeface run` opens it) keeps matching: the time until its snapshot holds the
  new person, and the longest single match call meanwhile (what the camera loop waits);
- bytes_per_identity: memory the loaded search arrays and names hold after a first search (the
  per-threshold limits and, from 20,000 identities, the int8 scan copy included), per identity (tracemalloc).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeface.recognition.vectors import EMBEDDING_DIM
from edgeface.storage.gallery import Gallery

BULK_ROWS = 10_000
"""Identities written per transaction while building the file."""


@dataclass(frozen=True)
class GalleryBench:
    size: int
    probes: int
    strategy: str
    match_ms: float
    match_ms_p90: float
    snapshot_load_ms: float
    change_ms: float
    reload_ms: float
    reload_stall_ms: float
    bytes_per_identity: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def table_lines(self) -> list[str]:
        return [
            f"edgeface bench gallery: {self.size:,} identities (one random template each), strategy {self.strategy}",
            f"  match, one probe per call   {self.match_ms:8.3f} ms median, {self.match_ms_p90:.3f} ms p90 ({self.probes} probes)",
            f"  snapshot load               {self.snapshot_load_ms:8.1f} ms",
            f"  own change (enroll one)     {self.change_ms:8.3f} ms",
            f"  another process's change    {self.reload_ms:8.1f} ms to reload in the background, "
            f"longest match meanwhile {self.reload_stall_ms:.3f} ms",
            f"  memory per identity         {self.bytes_per_identity:8.0f} bytes",
        ]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, EMBEDDING_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _median_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def _background_reload(path: Path, enrolled: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """(seconds until the station's gallery sees another process's enrollment, longest match call meanwhile)."""
    newcomer = _unit(rng, 1)
    with Gallery(path, create=False, background_reload=True) as station, Gallery(path, create=False) as other:
        station.match(enrolled[:1])
        other.add_templates("zz newcomer", newcomer)
        began = time.perf_counter()
        longest = 0.0
        while time.perf_counter() - began < 60:
            call = time.perf_counter()
            found = station.match(newcomer)[0].name == "zz newcomer"
            longest = max(longest, time.perf_counter() - call)
            if found:
                break
        return time.perf_counter() - began, longest


def bench_gallery(size: int, probes: int = 200, loads: int = 3, seed: int = 0) -> GalleryBench:
    rng = np.random.default_rng(seed)
    enrolled = _unit(rng, size)
    with tempfile.TemporaryDirectory(prefix="edgeface-bench-") as folder:
        path = Path(folder) / "gallery.db"
        with Gallery(path) as gallery:
            for start in range(0, size, BULK_ROWS):
                stop = min(size, start + BULK_ROWS)
                gallery.add_identities([(f"person {i:07d}", enrolled[i][None]) for i in range(start, stop)])
        load_seconds = []
        for _ in range(loads):
            with Gallery(path, create=False) as fresh:
                began = time.perf_counter()
                fresh.snapshot()
                load_seconds.append(time.perf_counter() - began)
                fresh.match(enrolled[:1])  # imports what a search needs, outside the memory measurement below
        with Gallery(path, create=False) as fresh:
            tracemalloc.start()
            try:
                fresh.match(enrolled[:1])  # the arrays a search builds and keeps (thresholds, the int8 scan copy) count
                held = tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
        with Gallery(path, create=False) as gallery:
            strategy = gallery.strategy
            known = enrolled[rng.integers(0, size, probes // 2)] + 0.1 * _unit(rng, probes // 2)
            queries = np.vstack([known, _unit(rng, probes - probes // 2)])
            gallery.match(queries[:1])  # load and warm up
            match_seconds = []
            for query in queries:
                began = time.perf_counter()
                gallery.match(query[None])
                match_seconds.append(time.perf_counter() - began)
            change_seconds: list[float] = []
            for extra in _unit(rng, 5):
                began = time.perf_counter()
                gallery.add_templates(f"new {len(change_seconds)}", extra[None])
                gallery.match(extra[None])
                change_seconds.append(time.perf_counter() - began)
        reload_ms, stall_ms = _background_reload(path, enrolled, rng)
    return GalleryBench(
        size=size, probes=probes, strategy=strategy, match_ms=round(_median_ms(match_seconds), 4),
        match_ms_p90=round(1000 * float(np.percentile(match_seconds, 90)), 4),
        snapshot_load_ms=round(_median_ms(load_seconds), 2), change_ms=round(_median_ms(change_seconds), 3),
        reload_ms=round(1000 * reload_ms, 1), reload_stall_ms=round(1000 * stall_ms, 3),
        bytes_per_identity=round(held / size, 1),
    )
