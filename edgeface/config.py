"""Configuration: pydantic models with bounds and descriptions, and no I/O of their own beyond
reading the one file the user names. Unknown keys are errors, so a typo never passes silently."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeface.errors import ConfigError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorConfig(StrictModel):
    model: Literal["short", "full"] = Field(
        "short", description="BlazeFace model: 'short' (128x128, faces within ~2 m) or 'full' (192x192, up to ~5 m)"
    )
    min_score: float | None = Field(
        None, ge=0.05, le=0.99,
        description="Detector score below which a face is ignored (default: the model's own, 0.5 short / 0.6 full)",
    )


class AlignmentConfig(StrictModel):
    method: Literal["blazeface", "shape_predictor"] = Field(
        "blazeface",
        description="Landmarks that place the face on the embedder's chip: BlazeFace's own keypoints on a "
        "template calibrated against dlib's chips (~0.3 ms), or dlib's 5-point shape predictor started "
        "from the BlazeFace box (~3 ms per face; as accurate on LFW, see README)",
    )


class EmbedderConfig(StrictModel):
    precision: Literal["int8", "fp32"] = Field(
        "int8", description="Embedder weights; int8 falls back to fp32 when the self-check fails on this CPU"
    )
    threads: int = Field(1, ge=1, le=16, description="CPU threads for the embedder")
    flip: bool = Field(False, description="Average each face with its mirror image (test-time flip)")


class RecognitionConfig(StrictModel):
    detector: DetectorConfig = DetectorConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    embedder: EmbedderConfig = EmbedderConfig()


class Config(StrictModel):
    station_id: str = Field("edgeface", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                            description="Name of this station in events and MQTT topics")
    recognition: RecognitionConfig = RecognitionConfig()


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


def load_config(path: Path | None) -> Config:
    """Read a YAML or JSON config file (or the defaults when path is None)."""
    if path is None:
        return Config()
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as error:  # json and yaml raise different types; both mean "not parseable"
        raise ConfigError(f"config {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}".splitlines()[0]) from None
    try:
        return Config.model_validate(raw or {})
    except ValidationError as error:
        raise ConfigError(f"config {path}: {_first_error(error)} ({error.error_count()} problem(s))") from None
