"""The match threshold derived from a false-alarm target per stranger (edgeface.recognition.false_alarm):
the shipped impostor figures, the threshold as the gallery grows and shrinks at run time, and the
target holding on real strangers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edgeface.config import Config
from edgeface.errors import ConfigError, ModelFileError
from edgeface.recognition.false_alarm import (
    DEFAULT_KIND,
    FUSED_KIND,
    IMPOSTOR_FORMAT,
    MAX_CHANCE_EXPONENT,
    MatchThreshold,
    impostor_table,
    operating_threshold,
    parse_tables,
    shipped_tables,
)
from edgeface.storage.gallery import Gallery

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = Path(__file__).resolve().parents[1] / "models"


def _unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, 128)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_shipped_figures_are_measured_on_lfw_view_1() -> None:
    table = impostor_table(DEFAULT_KIND)
    assert table.match_when == "lower" and table.comparisons > 5_000_000
    assert 0.9 < table.chance_exponent <= 1.0  # strangers' chances are nearly, not quite, independent
    assert "pairsDevTrain" in table.notes["fitted_on"] and "View 2" in table.notes["fitted_on"]
    # a one-person gallery at 0.1% is the per-comparison 0.1% point the fixed default was measured at
    assert operating_threshold(DEFAULT_KIND, 0.001, 1) == pytest.approx(0.3776, abs=0.01)


def test_fused_figures_are_the_envelope_of_lfw_and_wild_photos() -> None:
    """The default decision (second opinion on) is the fused distance's. Its LFW part comes from the same
    LFW View 1 images as dlib's (fusion.py put the fused score on dlib's scale at 1e-3 and 1e-4 per
    comparison, so the two agree there within a few thousandths); SFace's impostors run closer on wild
    photos (CelebA), so the shipped table is, at every rate, the stricter of the LFW and the CelebA part."""
    fused, dlib = impostor_table(FUSED_KIND), impostor_table(DEFAULT_KIND)
    assert fused.match_when == "lower" and fused.comparisons == dlib.comparisons
    parts = fused.notes["parts"]
    lfw, wild = parse_tables({"format": IMPOSTOR_FORMAT, "kinds": parts}, "parts").values()
    assert parts["lfw_view1"]["comparisons"] == dlib.comparisons and fused.notes["pipeline"]["second"]
    assert "celeba" in fused.notes["fitted_on"] and "View 2" in fused.notes["fitted_on"]
    for rate in (1e-3, 1e-4):
        assert lfw.score_at_rate(rate) == pytest.approx(dlib.score_at_rate(rate), abs=0.015)
    for rate in fused.rates:
        assert fused.score_at_rate(rate) <= lfw.score_at_rate(rate) + 1e-9
        if rate >= 1e-3:  # inside CelebA's measured range: its own score where it is the stricter
            assert fused.score_at_rate(rate) <= wild.score_at_rate(rate) + 1e-9
    assert fused.chance_exponent == max(lfw.chance_exponent, wild.chance_exponent) <= MAX_CHANCE_EXPONENT


def test_threshold_tightens_with_the_gallery_and_gives_back_the_target() -> None:
    table = impostor_table(DEFAULT_KIND)
    sizes = [1, 2, 10, 50, 500, 1680, 100_000]
    thresholds = [operating_threshold(DEFAULT_KIND, 0.01, n) for n in sizes]
    assert thresholds == sorted(thresholds, reverse=True) and len(set(thresholds)) == len(sizes)
    for n, t in zip(sizes, thresholds):
        assert table.stranger_rate(t, n) == pytest.approx(0.01, rel=1e-6)  # the model's inverse
    assert operating_threshold(DEFAULT_KIND, 0.001, 50) < operating_threshold(DEFAULT_KIND, 0.01, 50)
    # 100,000 people: below the measured range, extrapolated, still a sane distance
    assert 0.15 < thresholds[-1] < thresholds[-2]


def test_a_bad_target_or_table_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="false_alarm_rate must be in"):
        MatchThreshold(false_alarm_rate=1.5)
    with pytest.raises(ConfigError, match="either fixed or derived"):
        MatchThreshold(fixed=0.4, false_alarm_rate=0.01)
    with pytest.raises(Exception, match="false_alarm_rate"):
        Config.model_validate({"gallery": {"false_alarm_rate": 0}})
    good = json.loads((MODELS / "impostor_scores.json").read_text())
    with pytest.raises(ModelFileError, match="not an edgeface-impostor-scores file"):
        parse_tables({"kinds": {}}, "x.json")
    shuffled = json.loads(json.dumps(good))
    shuffled["kinds"][DEFAULT_KIND]["tail"].reverse()
    with pytest.raises(ModelFileError, match="no increasing tail table"):
        parse_tables(shuffled, "x.json")
    # an altered shipped file is refused by the manifest check, with nothing matched at a wrong threshold
    altered = tmp_path / "models"
    altered.mkdir()
    for name in ("manifest.json", "impostor_scores.json"):
        (altered / name).write_bytes((MODELS / name).read_bytes())
    (altered / "impostor_scores.json").write_text(json.dumps(good).replace('"chance_exponent": 0.', '"chance_exponent": 1.'))
    with pytest.raises(ModelFileError):
        shipped_tables(altered)


def test_a_similarity_kind_reads_the_same_way() -> None:
    """A score where a match is above the threshold (the fused score the lead will add)."""
    raw = {"format": "edgeface-impostor-scores", "kinds": {"fused": {
        "match_when": "higher", "chance_exponent": 1.0, "tail": [[1e-4, 4.0], [1e-3, 3.0], [1e-2, 2.0]]}}}
    table = parse_tables(raw, "fused.json")["fused"]
    assert table.operating_threshold(0.01, 1) == pytest.approx(2.0)
    assert table.operating_threshold(0.01, 10) == pytest.approx(3.0, abs=0.01)
    assert table.operating_threshold(0.01, 1000) > 4.0  # extrapolated past the table
    assert table.stranger_rate(table.operating_threshold(0.01, 10), 10) == pytest.approx(0.01, rel=1e-6)


def test_config_fixed_threshold_overrides_the_target() -> None:
    assert MatchThreshold.from_config(Config()) == MatchThreshold(false_alarm_rate=0.01, kind=FUSED_KIND)
    dlib_only = Config.model_validate({"recognition": {"second_opinion": "off"}})
    assert MatchThreshold.from_config(dlib_only) == MatchThreshold(false_alarm_rate=0.01, kind=DEFAULT_KIND)
    fixed = Config.model_validate({"gallery": {"match_max_distance": 0.3776, "false_alarm_rate": 0.5}})
    assert MatchThreshold.from_config(fixed).at(10_000) == 0.3776


def test_threshold_follows_the_gallery_as_it_grows_and_shrinks(tmp_path: Path) -> None:
    """Defined behaviour: the derived threshold is re-derived from the number of identities at each match,
    so enrolling (here or in another process) tightens it from the next match on and removing loosens it."""
    rule = MatchThreshold(false_alarm_rate=0.01)
    path = tmp_path / "g.db"
    with Gallery(path, match_max_distance=rule) as gallery, Gallery(path) as other_process:
        assert gallery.match_max_distance == operating_threshold(DEFAULT_KIND, 0.01, 1)  # empty counts as one
        alice = _unit_rows(1, 0)[0]
        gallery.add_templates("alice", alice[None])
        one = operating_threshold(DEFAULT_KIND, 0.01, 1)
        thousand = operating_threshold(DEFAULT_KIND, 0.01, 1000)
        # a probe at a distance between the two thresholds from alice
        between = (one + thousand) / 2
        noise = _unit_rows(1, 1)[0]
        noise -= noise.dot(alice) * alice
        noise /= np.linalg.norm(noise)
        cos = 1 - between ** 2 / 2
        probe = cos * alice + math.sqrt(1 - cos ** 2) * noise
        assert gallery.match(probe[None])[0].name == "alice"
        # another process enrolls 999 strangers (far from the probe in expectation: random directions)
        other_process.add_identities([(f"p{i:04d}", v[None]) for i, v in enumerate(_unit_rows(999, 2))])
        assert gallery.size() == 1000
        assert gallery.match_max_distance == thousand
        match = gallery.match(probe[None])[0]
        assert match.name is None and match.nearest_name == "alice"
        gallery.remove("p0000")
        assert gallery.match_max_distance == operating_threshold(DEFAULT_KIND, 0.01, 999)
        # the fixed threshold of a plain gallery does not move
        assert other_process.match_max_distance == 0.3776


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "celeba" / "images").is_dir(), reason="../shared/data is absent")
def test_the_target_holds_on_real_strangers(tmp_path: Path) -> None:
    """CelebA (never used to fit dlib's figures): 10 draws of 25 and of 50 enrolled people, everyone else's
    photos as strangers, decided by dlib's search at the threshold the station derives from dlib's
    figures (recognition.second_opinion off): within 1.5x of 1%. The default decision (fused, threshold
    from the fused figures, the envelope of LFW View 1 and CelebA because SFace's impostor similarities
    run higher on CelebA) is decided as the station decides and stays under 1.5x of the target here
    (0.93% measured; in-sample for the fused table's CelebA part, whose held-out check is README's).
    Through the command (its own process: the models stay out of the test runner's memory)."""
    import subprocess
    import sys

    cache = tmp_path / "faces.npz"

    def identify(size: int, embedder: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "edgeface.cli", "eval", "identify", "--data", str(DATA / "celeba"),
                               "--gallery-size", str(size), "--seeds", "10", "--cache", str(cache), "--embedder", embedder,
                               "--json"], capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        figures: dict = json.loads(done.stdout.splitlines()[-1])
        assert figures["false_alarm_target"] == 0.01 and figures["embedder"] == embedder
        return figures

    for size in (25, 50):
        figures = identify(size, "dlib")
        assert figures["threshold_at_default"] == pytest.approx(operating_threshold(DEFAULT_KIND, 0.01, size), abs=1e-4)
        assert 0.01 / 1.5 <= figures["false_alarm_rate_at_default"] <= 0.01 * 1.5, figures
        assert figures["dir_at_default"] > 0.7
    fused = identify(25, "fused")
    assert fused["second_opinion"] == "auto"
    assert fused["threshold_at_default"] == pytest.approx(operating_threshold(FUSED_KIND, 0.01, 25), abs=1e-4)
    assert fused["dir_at_default"] > 0.85  # the second opinion names more people right than dlib alone (0.80)
    assert fused["false_alarm_rate_at_default"] <= 0.01 * 1.5, fused
