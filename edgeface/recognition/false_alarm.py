"""The match threshold that keeps a stranger's false-alarm rate at a target, whatever the gallery size.

A stranger is compared with every enrolled identity, so with one fixed threshold the share of
strangers given a name grows with the gallery. Here the threshold follows the gallery size:

- the shipped impostor table (`models/impostor_scores.json`, one entry per score kind, measured by
  `python tools/measure_impostor_scores.py`) gives, for each per-comparison impostor rate p, the
  score at which a share p of impostor comparisons would match (for a distance: P(d < score) = p);
- a stranger in a gallery of N identities gets N chances, but they are not independent (a stranger
  who resembles many people is near all of them at once), so the table also holds the measured
  exponent b of the effective number of chances N**b (b = 1 would be independence);
- the operating threshold for a target rate f per stranger is the table's score at the per-comparison
  rate p = 1 - (1 - f) ** (1 / N**b).

Below the smallest measured rate the score is extrapolated linearly in log(rate) from the table's
last two points (the table says how far it was measured). The score kind is generic: "lower" tables
(distances: a match is below the threshold) and "higher" tables (similarities: above it) are read
the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeface.config import Config
from edgeface.errors import ConfigError, ModelFileError

IMPOSTOR_SCORES_FILE = "impostor_scores.json"
IMPOSTOR_FORMAT = "edgeface-impostor-scores"
DEFAULT_KIND = "dlib_resnet_v1"
"""The score kind of dlib alone: euclidean distance between dlib ResNet unit embeddings."""
FUSED_KIND = "dlib_resnet_v1+sface_2021dec"
"""The score kind of the second opinion (recognition.second_opinion auto or always, the default): dlib's
and SFace's similarities fused and put on dlib's distance scale (edgeface.recognition.fusion). With
`auto` the fused distance decides every answer near the threshold (outside the band dlib's distance
lands on the same side), so the threshold comes from the fused score's own impostor figures."""


def score_kind(second_opinion: str) -> str:
    """The impostor table the match threshold is derived from: the fused score's unless the second
    opinion is off."""
    return DEFAULT_KIND if second_opinion == "off" else FUSED_KIND


@dataclass(frozen=True)
class ImpostorTable:
    """One score kind's impostor figures. rates ascending (per comparison), scores[i] the threshold
    at which a share rates[i] of impostor comparisons match."""

    kind: str
    match_when: Literal["lower", "higher"]
    rates: np.ndarray
    scores: np.ndarray
    chance_exponent: float
    comparisons: int = 0
    template_tightening: tuple[float, ...] = ()
    """For "lower" tables whose gallery uses mean templates: what an identity with k templates
    subtracts from the threshold (index min(k, len-1)); informative here, applied by the gallery."""
    notes: dict[str, Any] = field(default_factory=dict, compare=False)

    def score_at_rate(self, rate: float) -> float:
        """The threshold at which a share `rate` of impostor comparisons match."""
        if not 0.0 < rate < 1.0:
            raise ValueError(f"rate must be in (0, 1), got {rate}")
        logs = np.log(self.rates)
        x = math.log(rate)
        if x <= logs[0]:  # below the measured range: the last segment, continued
            slope = (self.scores[1] - self.scores[0]) / (logs[1] - logs[0])
            return float(self.scores[0] + slope * (x - logs[0]))
        return float(np.interp(x, logs, self.scores))

    def rate_per_comparison(self, target: float, gallery_size: int) -> float:
        """The per-comparison impostor rate that gives `target` false alarms per stranger in a
        gallery of `gallery_size` identities."""
        chances = max(int(gallery_size), 1) ** self.chance_exponent
        return -math.expm1(math.log1p(-target) / chances)

    def operating_threshold(self, target: float, gallery_size: int) -> float:
        return self.score_at_rate(self.rate_per_comparison(target, gallery_size))

    def stranger_rate(self, threshold: float, gallery_size: int) -> float:
        """The model's false-alarm rate per stranger at this threshold (the inverse of operating_threshold)."""
        logs = np.log(self.rates)
        scores = self.scores if self.match_when == "lower" else -self.scores
        t = threshold if self.match_when == "lower" else -threshold
        if t <= scores[0]:
            slope = (logs[1] - logs[0]) / (scores[1] - scores[0])
            log_rate = logs[0] + slope * (t - scores[0])
        else:
            log_rate = float(np.interp(t, scores, logs))
        chances = max(int(gallery_size), 1) ** self.chance_exponent
        return -math.expm1(chances * math.log1p(-min(math.exp(log_rate), 1 - 1e-12)))


def parse_tables(raw: object, where: str) -> dict[str, ImpostorTable]:
    """The tables of an impostor-scores document; ModelFileError naming what is wrong."""
    if not isinstance(raw, dict) or raw.get("format") != IMPOSTOR_FORMAT or not isinstance(raw.get("kinds"), dict):
        raise ModelFileError(f"{where} is not an {IMPOSTOR_FORMAT} file; reinstall edgeface")
    tables = {}
    for kind, entry in raw["kinds"].items():
        try:
            rates = np.array([r for r, _ in entry["tail"]], np.float64)
            scores = np.array([s for _, s in entry["tail"]], np.float64)
            match_when = entry["match_when"]
            table = ImpostorTable(kind, match_when, rates, scores, float(entry["chance_exponent"]),
                                  int(entry.get("comparisons", 0)), tuple(entry.get("template_tightening", ())),
                                  {k: v for k, v in entry.items() if k not in ("tail",)})
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{where}: kind {kind!r} is malformed ({error!r}); reinstall edgeface") from None
        ordered = scores if match_when == "lower" else -scores
        if (match_when not in ("lower", "higher") or len(rates) < 2 or not np.all(np.diff(rates) > 0)
                or not np.all(np.diff(ordered) > 0) or rates[0] <= 0 or rates[-1] >= 1
                or not 0 < table.chance_exponent <= 1):
            raise ModelFileError(f"{where}: kind {kind!r} has no increasing tail table or a bad exponent; reinstall edgeface")
        tables[kind] = table
    return tables


@cache
def shipped_tables(directory: Path | None = None) -> dict[str, ImpostorTable]:
    """The impostor tables shipped with the models (checked against the manifest)."""
    from edgeface.io.models import verified_model_path

    path = verified_model_path(IMPOSTOR_SCORES_FILE, directory)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelFileError(f"cannot read {path}: {error}; reinstall edgeface") from None
    return parse_tables(raw, str(path))


def impostor_table(kind: str) -> ImpostorTable:
    tables = shipped_tables()
    if kind not in tables:
        raise ConfigError(f"no impostor figures for score kind {kind!r} (shipped: {', '.join(sorted(tables))})")
    return tables[kind]


@lru_cache(maxsize=1024)
def operating_threshold(kind: str, target: float, gallery_size: int) -> float:
    """The threshold on score `kind` that gives at most `target` false alarms per stranger in a gallery
    of `gallery_size` identities (an empty gallery counts as one)."""
    if not 0.0 < target < 1.0:
        raise ConfigError(f"a false-alarm target must be in (0, 1), got {target}")
    return impostor_table(kind).operating_threshold(target, gallery_size)


@dataclass(frozen=True)
class MatchThreshold:
    """The gallery's match threshold: a fixed distance (`gallery.match_max_distance` given), or the
    one derived from the false-alarm target for the gallery's current size. A derived threshold
    follows the gallery: enrolling people tightens it from the next match on, removing them loosens it."""

    fixed: float | None = None
    false_alarm_rate: float | None = None
    kind: str = DEFAULT_KIND

    def __post_init__(self) -> None:
        if (self.fixed is None) == (self.false_alarm_rate is None):
            raise ConfigError("a match threshold is either fixed or derived from a false-alarm target, not both")
        if self.fixed is not None and not 0 < self.fixed <= 2:
            raise ConfigError(f"match_max_distance must be in (0, 2], got {self.fixed}")
        if self.false_alarm_rate is not None and not 0 < self.false_alarm_rate < 1:
            raise ConfigError(f"false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")

    @classmethod
    def from_config(cls, config: Config) -> MatchThreshold:
        """`gallery.match_max_distance` (or `pipeline.decision.match_max_distance`) when given, else
        the threshold derived from `gallery.false_alarm_rate` on the figures of the score that decides
        (`score_kind`: fused unless recognition.second_opinion is off)."""
        if config.match_max_distance is not None:
            return cls(fixed=config.match_max_distance)
        return cls(false_alarm_rate=config.gallery.false_alarm_rate, kind=score_kind(config.recognition.second_opinion))

    def at(self, gallery_size: int) -> float:
        if self.fixed is not None:
            return self.fixed
        assert self.false_alarm_rate is not None
        return operating_threshold(self.kind, self.false_alarm_rate, max(int(gallery_size), 1))

    def describe(self) -> str:
        if self.fixed is not None:
            return f"fixed at {self.fixed:g}"
        return f"derived from a false-alarm target of {self.false_alarm_rate:g} per stranger ({self.kind} figures)"
