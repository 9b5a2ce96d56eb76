"""Stage defaults come from the config models: a stage built without arguments behaves as the default
config says (nothing states a default twice)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from edgeface.config import ClusterSettings, Config, GalleryConfig, PipelineConfig
from edgeface.recognition.clusters import DEFAULT_ASSIGN_MAX_DISTANCE, DEFAULT_NAME_MAX_DISTANCE
from edgeface.recognition.decider import Decider, DecisionPolicy
from edgeface.recognition.tracker import Tracker
from edgeface.storage.gallery import DEFAULT_MATCH_MAX_DISTANCE
from edgeface.vision.quality import QualityGate
from edgeface.vision.scene import SceneCutDetector
from edgeface.vision.tiling import TiledDetector

P = PipelineConfig()
T, Q, D = P.tracking, P.quality, P.decision


def _defaults(cls: Any) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize(("stage", "expected"), [
    (Tracker, {"iou_min": T.iou_min, "max_missed_frames": T.track_max_missed_frames,
               "tie_iou_margin": T.tie_iou_margin, "appearance_max_distance": T.appearance_max_distance,
               "confirm_iou_below": T.confirm_iou_below, "max_gap_s": T.track_max_gap_s,
               "max_unconfirmed_frames": T.track_max_unconfirmed_frames}),
    (QualityGate, {"min_face_px": Q.min_face_px, "blur_min_var": Q.blur_min_var, "max_yaw_deg": Q.max_yaw_deg,
                   "max_roll_deg": Q.max_roll_deg, "min_score": Q.min_score}),
    (Decider, {"embed_every_frames": P.embed_every_frames, "recheck_every_frames": P.recheck_every_frames,
               "recent_tracks": D.recent_tracks_kept}),
    (SceneCutDetector, {"min_diff": T.scene_cut_min_diff}),
    (TiledDetector, {"overlap_frac": P.detect_tile_overlap_frac, "min_side_px_for_tiles": P.detect_tiles_min_side_px,
                     "work_long_side_px": P.detect_work_long_side_px}),
])
def test_stage_defaults_are_the_config_defaults(stage: Any, expected: dict[str, Any]) -> None:
    defaults = _defaults(stage)
    assert {k: defaults[k] for k in expected} == expected


def test_decision_policy_defaults_are_the_decision_config_defaults() -> None:
    policy = DecisionPolicy()
    shared = {f.name for f in dataclasses.fields(DecisionPolicy)} & set(type(D).model_fields)
    assert len(shared) >= 8
    assert {name: getattr(policy, name) for name in shared} == {name: getattr(D, name) for name in shared}


def test_gallery_and_cluster_defaults_are_the_config_defaults() -> None:
    # the station derives its threshold from gallery.false_alarm_rate; a plain Gallery keeps the fixed
    # per-comparison 0.1% distance
    assert GalleryConfig().match_max_distance is None and Config().match_max_distance is None
    assert DEFAULT_MATCH_MAX_DISTANCE == 0.3776
    assert DEFAULT_ASSIGN_MAX_DISTANCE == ClusterSettings().assign_max_distance
    assert DEFAULT_NAME_MAX_DISTANCE == ClusterSettings().name_max_distance
