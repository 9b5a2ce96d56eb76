"""`edgeface bench gallery`: search and load cost of a gallery of N identities.

The gallery is N identities of one random unit vector each (search cost does not depend on what the
vectors are), written to a temporary file that is deleted afterwards. Figures:

- match_ms: median wall time of one `Gallery.match` call with one probe (what the camera loop does
  per face), over `probes` probes, half of them noisy copies of enrolled vectors and half strangers;
- snapshot_load_ms: median time for a freshly opened gallery to read the file into its search arrays;
- change_ms: median time of enrolling one more person in the running gallery (its own write, applied
  to the arrays in place, and the next match);
- other_change_ms, other_change_stall_ms (median over CHANGES; _max the largest): another connection
  (another process, as `edgeface enroll --gallery` would be) enrolls one person while the station's
  gallery (background_reload, as `edgeface run` opens it) keeps matching: the time until its match
  names the new person, and the longest single match call meanwhile (what the camera loop waits; the
  change is applied from the change log inside one match call);
- other_catch_up_ms: median time of `Gallery.snapshot()` alone applying another process's enrollment
  from the change log (CHANGES more enrollments; the stall above less the match);
- other_remove_stall_ms: the same for another process's removal of one person;
- reload_ms, reload_stall_ms: the fallback when the change log cannot cover a change (here: its rows
  were pruned): the whole file is read on a background thread; the time until the new person is
  named, and the longest match call meanwhile;
- bytes_per_identity: memory the loaded search arrays and names hold after a first search (the
  per-threshold limits and, from 20,000 identities, the int8 scan copy included), per identity (tracemalloc).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeface.recognition.vectors import EMBEDDING_DIM
from edgeface.storage.gallery import Gallery

BULK_ROWS = 10_000
"""Identities written per transaction while building the file."""
CHANGES = 5
"""Changes timed of each kind (the station's own, another process's)."""
WAIT_S = 60.0


@dataclass(frozen=True)
class GalleryBench:
    size: int
    probes: int
    strategy: str
    match_ms: float
    match_ms_p90: float
    snapshot_load_ms: float
    change_ms: float
    other_change_ms: float
    other_change_stall_ms: float
    other_change_stall_ms_max: float
    other_catch_up_ms: float
    other_remove_stall_ms: float
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
            f"  another process's change    {self.other_change_ms:8.3f} ms until matched (change log), longest match "
            f"meanwhile {self.other_change_stall_ms:.3f} ms median, {self.other_change_stall_ms_max:.3f} ms max "
            f"(applying it {self.other_catch_up_ms:.3f} ms); a removal {self.other_remove_stall_ms:.3f} ms",
            f"  the same, log pruned        {self.reload_ms:8.1f} ms to reload in the background, "
            f"longest match meanwhile {self.reload_stall_ms:.3f} ms",
            f"  memory per identity         {self.bytes_per_identity:8.0f} bytes",
        ]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, EMBEDDING_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _median_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def _until(station: Gallery, probe: np.ndarray, done: Callable[[str | None], bool]) -> tuple[float, float]:
    """(seconds until the station's match answers `done`, the longest match call meanwhile)."""
    began = time.perf_counter()
    longest = 0.0
    while time.perf_counter() - began < WAIT_S:
        call = time.perf_counter()
        name = station.match(probe)[0].name
        longest = max(longest, time.perf_counter() - call)
        if done(name):
            break
    return time.perf_counter() - began, longest


def _others_changes(path: Path, enrolled: np.ndarray, rng: np.random.Generator
                    ) -> tuple[list[tuple[float, float]], list[float], float, tuple[float, float]]:
    """Another connection writes while the station (background_reload) matches: per enrollment (seconds
    until named, longest match), per enrollment the seconds `snapshot()` takes to apply it, the longest
    match while one person is removed, and (seconds, longest match) for an enrollment whose log rows
    were pruned (the whole file read in the background)."""
    newcomers = _unit(rng, 2 * CHANGES + 1)
    with Gallery(path, create=False, background_reload=True) as station, Gallery(path, create=False) as other:
        station.match(enrolled[:1])
        enrollments = []
        for k, vector in enumerate(newcomers[:CHANGES]):
            other.add_templates(f"zz other {k}", vector[None])
            enrollments.append(_until(station, vector[None], f"zz other {k}".__eq__))
        catch_ups = []
        for k, vector in enumerate(newcomers[CHANGES:2 * CHANGES]):
            other.add_templates(f"zz applied {k}", vector[None])
            began = time.perf_counter()
            station.snapshot()
            catch_ups.append(time.perf_counter() - began)
        other.remove("zz other 0")
        _, removal = _until(station, newcomers[0][None], lambda name: name != "zz other 0")
        other.add_templates("zz pruned", newcomers[-1][None])
        other.prune_changes(other.last_change())  # the log no longer holds the row: the fallback
        reload = _until(station, newcomers[-1][None], lambda name: name == "zz pruned")
    return enrollments, catch_ups, removal, reload


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
            for extra in _unit(rng, CHANGES):
                began = time.perf_counter()
                gallery.add_templates(f"new {len(change_seconds)}", extra[None])
                gallery.match(extra[None])
                change_seconds.append(time.perf_counter() - began)
        enrollments, catch_ups, removal, (reload_s, reload_stall_s) = _others_changes(path, enrolled, rng)
    return GalleryBench(
        size=size, probes=probes, strategy=strategy, match_ms=round(_median_ms(match_seconds), 4),
        match_ms_p90=round(1000 * float(np.percentile(match_seconds, 90)), 4),
        snapshot_load_ms=round(_median_ms(load_seconds), 2), change_ms=round(_median_ms(change_seconds), 3),
        other_change_ms=round(_median_ms([seen for seen, _ in enrollments]), 3),
        other_change_stall_ms=round(_median_ms([stall for _, stall in enrollments]), 3),
        other_change_stall_ms_max=round(1000 * max(stall for _, stall in enrollments), 3),
        other_catch_up_ms=round(_median_ms(catch_ups), 3),
        other_remove_stall_ms=round(1000 * removal, 3),
        reload_ms=round(1000 * reload_s, 1), reload_stall_ms=round(1000 * reload_stall_s, 3),
        bytes_per_identity=round(held / size, 1),
    )
