"""Clustering unknowns by the fused dlib+SFace distance (issue 19): the second running sum, its
persistence (schema 5), the fallback to dlib's distance, and `eval cluster --embedder`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeface.config import ClusterSettings
from edgeface.recognition import fusion
from edgeface.recognition.clusters import OnlineClusters, SecondExemplar
from edgeface.storage.cluster_store import CLUSTER_SCHEMA_VERSION, ClusterStore

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "bbt").is_dir(), reason="../shared/data is absent")


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _at_cosine(base: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector whose cosine with the unit vector `base` is `cosine`."""
    other = np.random.default_rng(seed).standard_normal(base.shape)
    other -= (other @ base) * base
    other /= np.linalg.norm(other)
    return _unit(cosine * base + np.sqrt(1 - cosine * cosine) * other)


def _second(vector: np.ndarray) -> SecondExemplar:
    return SecondExemplar("sface_2021dec", "int8", vector)


def _pair(dlib_distance: float, sface_cosine: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    a, s = _unit(rng.standard_normal(128)), _unit(rng.standard_normal(128))
    return a, _at_cosine(a, 1 - dlib_distance ** 2 / 2, 1), s, _at_cosine(s, sface_cosine, 2)


def test_sface_agreement_joins_what_dlib_alone_splits_and_disagreement_splits_what_it_joins() -> None:
    threshold = ClusterSettings().assign_max_distance
    # just above dlib's threshold, but SFace is sure: one person by the fused distance
    a, b, s, t = _pair(threshold + 0.03, 0.75)
    assert fusion.fused_distance(threshold + 0.03, 0.75) < threshold
    for fused, expected in ((False, 2), (True, 1)):
        clusters = OnlineClusters(ClusterSettings(fused=fused))
        clusters.observe(a, ts=0.0, track_key="t1", second=_second(s))
        clusters.observe(b, ts=60.0, track_key="t2", second=_second(t))
        assert len(clusters) == expected, fused
    # just below dlib's threshold, SFace says strangers: two people by the fused distance
    a, b, s, t = _pair(threshold - 0.03, 0.05)
    assert fusion.fused_distance(threshold - 0.03, 0.05) > threshold
    for fused, expected in ((False, 1), (True, 2)):
        clusters = OnlineClusters(ClusterSettings(fused=fused))
        clusters.observe(a, ts=0.0, track_key="t1", second=_second(s))
        clusters.observe(b, ts=60.0, track_key="t2", second=_second(t))
        assert len(clusters) == expected, fused


def test_a_track_or_cluster_without_sface_is_clustered_by_dlib_alone() -> None:
    threshold = ClusterSettings().assign_max_distance
    a, b, s, t = _pair(threshold + 0.03, 0.75)
    for first, second in ((_second(s), None), (None, _second(t))):
        clusters = OnlineClusters(ClusterSettings(fused=True))
        clusters.observe(a, ts=0.0, track_key="t1", second=first)
        clusters.observe(b, ts=60.0, track_key="t2", second=second)
        assert len(clusters) == 2  # dlib's distance is above the threshold


def test_the_sface_sum_is_persisted_and_a_reload_decides_the_same(tmp_path: Path) -> None:
    threshold = ClusterSettings().assign_max_distance
    a, b, s, t = _pair(threshold + 0.03, 0.75)
    path = tmp_path / "gallery.db"
    with ClusterStore(path) as store:
        first = store.observe(a, ts=0.0, track_key="t1", second=_second(s)).cluster.id
        before = store.clusters.get(1)
        assert before is not None and before.second_count == 1
        saved_sum = before.second_sum.copy()
    with ClusterStore(path) as store:
        state = store.clusters.get(1)
        assert state is not None and state.second_count == 1
        np.testing.assert_allclose(state.second_sum, saved_sum)
        assert store.observe(b, ts=60.0, track_key="t2", second=_second(t)).cluster.id == first  # fused: joins
        assert store.clusters.get(1).second_count == 2  # type: ignore[union-attr]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT MAX(version) FROM cluster_schema_version").fetchone()[0] == CLUSTER_SCHEMA_VERSION == 5
        assert db.execute("SELECT second_count FROM cluster_clusters").fetchall() == [(2,)]


def test_a_schema_4_store_keeps_its_clusters_which_are_scored_by_dlib(tmp_path: Path) -> None:
    threshold = ClusterSettings().assign_max_distance
    a, b, s, t = _pair(threshold + 0.03, 0.75)
    path = tmp_path / "gallery.db"
    with ClusterStore(path) as store:
        store.observe(a, ts=0.0, track_key="t1", second=_second(s))
    with sqlite3.connect(path) as db:  # back to schema 4, as the previous edgeface left it
        for column in ("second_sum", "second_count"):
            db.execute(f"ALTER TABLE cluster_clusters DROP COLUMN {column}")
        db.execute("UPDATE cluster_schema_version SET version = 4")
    with ClusterStore(path) as store:
        state = store.clusters.get(1)
        assert state is not None and state.second_count == 0 and state.observations == 1
        assert store.observe(b, ts=60.0, track_key="t2", second=_second(t)).created  # dlib's distance: apart
        assert store.clusters.get(2).second_count == 1  # type: ignore[union-attr]


def test_a_damaged_sface_sum_is_one_clear_error(tmp_path: Path) -> None:
    from edgeface.recognition.clusters import ClusterError

    path = tmp_path / "gallery.db"
    a, _, s, _ = _pair(0.2, 0.5)
    with ClusterStore(path) as store:
        store.observe(a, ts=0.0, track_key="t1", second=_second(s))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE cluster_clusters SET second_sum = ?", (b"\x00" * 12,))
    with pytest.raises(ClusterError, match="unknown-1 is damaged"):
        ClusterStore(path)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeface.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=900)


@needs_data
def test_eval_cluster_scores_dlib_and_fused_from_one_cache_on_real_faces(tmp_path: Path) -> None:
    """bbt/ (8 people x 5 photos): one analysis gives both embeddings; the fused run feeds SFace to the
    clusterer and bounds it offline by the fused vectors; with the second opinion off, fused is refused."""
    cache = tmp_path / "faces.npz"
    figures = {}
    for embedder in ("dlib", "fused"):
        result = _cli("eval", "cluster", "--data", str(DATA / "bbt"), "--cache", str(cache), "--json", "--no-speed",
                      "--seeds", "2", "--embedder", embedder)
        assert result.returncode == 0, result.stderr
        figures[embedder] = json.loads(result.stdout.strip().splitlines()[-1])
    for embedder, result in figures.items():
        assert result["embedder"] == embedder
        assert 0.5 < result["online_f"] <= 1.0 and 0.5 < result["offline_f"] <= 1.0
    assert figures["dlib"]["items"] == figures["fused"]["items"]
    assert figures["dlib"]["offline_threshold"] != figures["fused"]["offline_threshold"]  # another vector space
    off = tmp_path / "off.yaml"
    off.write_text("recognition:\n  second_opinion: off\n")
    refused = _cli("eval", "cluster", "--data", str(DATA / "bbt"), "--cache", str(tmp_path / "off.npz"), "--no-speed",
                   "--embedder", "fused", "--config", str(off))
    assert refused.returncode == 1 and "second_opinion" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
