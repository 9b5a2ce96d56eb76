"""The int8 scan with an exact re-rank (storage/gallery_scan.py) gives the exact search's answers, on
real faces among thousands of close look-alikes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeface.storage.gallery as gallery_module
from edgeface.storage.gallery import GallerySnapshot, Match
from edgeface.storage.gallery_scan import Int8Scan

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def real_faces() -> np.ndarray:
    """Unit embeddings of the largest face of every people/, bbt/ and ORL photo (about 450 faces)."""
    if not (DATA / "orl").is_dir():
        pytest.skip("../shared/data is absent")
    from edgeface.config import Config
    from edgeface.io.images import read_image
    from edgeface.vision.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(Config().recognition)
    paths = sorted((DATA / "people").glob("[!_]*/*")) + sorted((DATA / "bbt").glob("[!_]*/*.png")) + \
        sorted((DATA / "orl").glob("s*/*.pgm"))
    out = []
    for path in paths:
        found = analyzer.analyze(read_image(path))
        if len(found):
            out.append(found.embeddings[int(np.argmax(found.detections.area))])
    faces = np.stack(out).astype(np.float32)
    return faces / np.linalg.norm(faces, axis=1, keepdims=True)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _snapshot(faces: np.ndarray, negatives: dict[int, np.ndarray]) -> GallerySnapshot:
    """Every real face an identity (with 1-3 templates: the face and near copies), plus 6,000 look-alikes
    (a real face moved by about 0.06-0.34); negatives[k] is a negative of real face k's identity."""
    rng = np.random.default_rng(0)
    rows = []
    template_id = 0
    for k, face in enumerate(faces):
        for copy in range(1 + k % 3):
            vector = face if copy == 0 else _unit(face[None] + 0.03 * rng.normal(size=(1, 128)))[0]
            rows.append((f"real {k:04d}", template_id, vector))
            template_id += 1
    for j in range(6000):
        face = faces[rng.integers(len(faces))]
        vector = _unit(face[None] + rng.uniform(0.005, 0.03) * rng.normal(size=(1, 128)))[0]
        rows.append((f"alike {j:05d}", template_id, vector))
        template_id += 1
    return GallerySnapshot.build(rows, [(f"real {k:04d}", v) for k, v in negatives.items()])


def _answers(matches: list[Match]) -> list[tuple]:
    return [(m.name, m.nearest_name, m.template_id, m.vetoed_by_negative, m.runner_up) for m in matches]


def test_the_bound_holds_on_real_faces(real_faces: np.ndarray) -> None:
    snapshot = _snapshot(real_faces, {})
    exact = real_faces @ snapshot.means.T
    lower, upper = Int8Scan.build(snapshot.means).similarity_bounds(real_faces)
    assert np.all(lower <= exact) and np.all(exact <= upper)
    assert float(np.median(upper - lower)) < 0.05  # tight enough to leave few rows to re-rank


@pytest.mark.parametrize("threshold", [0.2, 0.3, 0.3776, 0.5, 2.0])
def test_scan_gives_the_exact_answers(real_faces: np.ndarray, threshold: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names, nearest, template, veto and runner-up identical; distances equal up to float32 summation
    order (the re-rank multiplies fewer rows, so BLAS may add the 128 products in another order: the
    similarities agree within a few ulps, so the squared distances within 1e-6)."""
    rng = np.random.default_rng(1)
    moved = _unit(real_faces + 0.01 * rng.normal(size=real_faces.shape))
    snapshot = _snapshot(real_faces, {k: moved[k] for k in range(0, 40, 4)})  # "this was not them": some moved faces are negatives
    probes = np.vstack([real_faces, moved])
    monkeypatch.setattr(gallery_module, "SCAN_MIN_ROWS", 10**9)
    exact = snapshot.match(probes, threshold, "mean")
    monkeypatch.setattr(gallery_module, "SCAN_MIN_ROWS", 1)
    scanned = snapshot.match(probes, threshold, "mean")
    assert _answers(scanned) == _answers(exact)
    for field in ("distance", "runner_up_distance"):
        squared = [np.square([getattr(m, field) for m in matches]) for matches in (scanned, exact)]
        assert np.allclose(*squared, rtol=0, atol=2e-6), field
    assert sum(m.name is not None for m in exact) > len(real_faces) // 2 or threshold < 0.3
    if threshold == 2.0:
        assert any(m.vetoed_by_negative for m in exact)



def test_the_shipped_scan_graph_is_the_builders(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from edgeface.convert.scan_onnx import build_int8_scan_model

    built = build_int8_scan_model(tmp_path)
    shipped = Path(__file__).resolve().parents[1] / "models" / built.name
    assert built.read_bytes() == shipped.read_bytes()


def test_own_writes_update_the_scan_in_place(real_faces: np.ndarray) -> None:
    """The gallery's own writes (snapshot.replaced) keep the int8 copy current without a rebuild: equal
    to one built afresh from the new means."""
    snapshot = _snapshot(real_faces[:100], {})
    snapshot.mean_scan()
    ids, templates, negatives = snapshot.identity_rows("real 0005")
    changed = snapshot.replaced("real 0005", None, ids, templates, negatives)  # removed
    changed = changed.replaced(None, "new person", np.array([10**6]), real_faces[200:201], negatives)  # added
    changed = changed.replaced("alike 00010", "zz renamed", *changed.identity_rows("alike 00010"))  # renamed
    kept, fresh = changed._scan[0], Int8Scan.build(changed.means)
    assert np.array_equal(kept.codes_t, fresh.codes_t)
    assert np.array_equal(kept.scales, fresh.scales) and np.array_equal(kept.errors, fresh.errors)


def test_background_reload_keeps_answering_and_swaps_in_whole(tmp_path: Path, real_faces: np.ndarray) -> None:
    """The station's gallery (background_reload) answers from the old snapshot while another process's
    change that the change log no longer covers (pruned) is read with the whole file on a thread, then
    from the new one; a reload older than one of its own writes is dropped, so that write is never lost."""
    import time

    from edgeface.storage.gallery import Gallery

    path = tmp_path / "g.db"
    with Gallery(path) as setup:
        setup.add_identities([(f"person {k:03d}", face[None]) for k, face in enumerate(real_faces[:200])])
    with Gallery(path, create=False, background_reload=True) as station, Gallery(path, create=False) as other:
        before = station.snapshot()
        other.add_templates("newcomer", real_faces[300][None])
        other.prune_changes(other.last_change())
        during = station.snapshot()  # never waits for the file
        assert during is before or "newcomer" in during.names

        def wait_for(name: str) -> None:
            deadline = time.monotonic() + 30
            while name not in station.snapshot().names:
                assert time.monotonic() < deadline, f"{name} never reached the station's snapshot"
                time.sleep(0.01)

        wait_for("newcomer")
        assert station.match(real_faces[300][None])[0].name == "newcomer"
        # another process's change and this process's own write close together: both end up searched
        other.add_templates("second", real_faces[301][None])
        other.prune_changes(other.last_change())
        station.snapshot()  # starts a background reload
        station.add_templates("own", real_faces[302][None])
        wait_for("second")
        wait_for("own")
        assert {"newcomer", "second", "own"} <= set(station.snapshot().names)
        with Gallery(path, create=False) as fresh:
            assert sorted(fresh.snapshot().names) == sorted(station.snapshot().names)
