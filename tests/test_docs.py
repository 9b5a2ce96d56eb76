"""The documentation's examples against the code: every JSON payload in docs/mqtt.md and the README
validates against `edgeface schema` and carries the values the station really uses; every Home
Assistant config shown is the one the station publishes; the deploy example config is a valid config
that keeps the measured defaults."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def json_examples(path: Path) -> list[dict[str, Any]]:
    """Every JSON object in the file's ```json blocks (a block holds one object, or one per line)."""
    objects = []
    for block in re.findall(r"```json\n(.*?)```", path.read_text(), flags=re.S):
        try:
            objects.append(json.loads(block))
        except json.JSONDecodeError:
            objects.extend(json.loads(line) for line in block.splitlines() if line.strip())
    return objects


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    """`edgeface schema events|stats|reply`, as a user gets them."""
    out = {}
    for what in ("events", "stats", "reply"):
        done = subprocess.run([sys.executable, "-m", "edgeface.cli", "schema", what], capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        assert done.returncode == 0, done.stderr
        out[what] = json.loads(done.stdout)
    return out


def _kind(example: dict[str, Any]) -> str:
    if "unique_id" in example:
        return "homeassistant"
    if "ok" in example and "verb" in example:
        return "reply"
    if "fps" in example and "queue_depth" in example:
        return "stats"
    if "type" in example and "schema" in example:
        return "events"
    return "attributes"


@pytest.mark.parametrize("doc", ["docs/mqtt.md", "README.md"])
def test_every_payload_example_validates_against_the_schema(doc: str, schemas: dict[str, Any]) -> None:
    import jsonschema

    examples = [e for e in json_examples(REPO / doc) if _kind(e) in schemas]
    assert examples
    for example in examples:
        jsonschema.validate(example, schemas[_kind(example)])


def test_the_stats_example_uses_the_real_model_and_rejection_names(schemas: dict[str, Any]) -> None:
    from edgeface.storage.gallery import DEFAULT_MODEL_ID
    from edgeface.vision.quality import QualityReason

    [stats] = [e for e in json_examples(REPO / "docs" / "mqtt.md") if _kind(e) == "stats"]
    assert stats["model"] in {f"{DEFAULT_MODEL_ID}-int8", f"{DEFAULT_MODEL_ID}-fp32"}
    assert set(stats["quality_rejections"]) <= {reason.value for reason in QualityReason}
    text = (REPO / "docs" / "mqtt.md").read_text()
    assert f"`{DEFAULT_MODEL_ID}-int8`" in text
    assert all(f"`{reason.value}`" in text for reason in QualityReason)  # every reason is named in the text


def test_every_event_type_has_an_example(schemas: dict[str, Any]) -> None:
    types = {e["type"] for e in json_examples(REPO / "docs" / "mqtt.md") if _kind(e) == "events"}
    assert types == set(schemas["events"]["discriminator"]["mapping"])


def _versionless(value: Any) -> Any:
    """sw_version is the package's version: the examples need not follow each release."""
    if isinstance(value, dict):
        return {k: _versionless(v) for k, v in value.items() if k != "sw_version"}
    return value


def test_home_assistant_examples_are_the_published_configs() -> None:
    from edgeface.service import homeassistant as ha

    topics = ha.HaTopics("hall", "edgeface/hall/")
    real = {c["unique_id"]: c for c in [*ha.station_configs(topics).values(), ha.person_config(topics, "Ada Lovelace")]}
    examples = [e for e in json_examples(REPO / "docs" / "mqtt.md") if _kind(e) == "homeassistant"]
    assert len(examples) >= 4
    for example in examples:
        published = real[example["unique_id"]]
        assert set(example) == set(published), example["unique_id"]  # every field shown, none invented
        for key, value in example.items():
            if isinstance(value, dict) and "..." in value:  # "as above"
                continue
            assert _versionless(published[key]) == _versionless(value), (example["unique_id"], key)


def test_the_deploy_example_config_is_valid_and_keeps_the_measured_defaults() -> None:
    from edgeface.config import Config, load_config

    path = REPO / "deploy" / "edgeface.example.yaml"
    config = load_config(path)
    defaults = Config()
    # what recognises people is the measured default (the README's accuracy tables); the example may set
    # only what is about the board (threads) or the site (names, camera, gate)
    assert config.recognition.model_copy(update={"embedder": config.recognition.embedder.model_copy(
        update={"threads": defaults.recognition.embedder.threads})}) == defaults.recognition
    assert config.gallery == defaults.gallery and config.clusters == defaults.clusters
    raw = yaml.safe_load(path.read_text())

    def differing(section: dict[str, Any], model: Any, where: str) -> list[str]:
        out = []
        for key, value in section.items():
            default = getattr(model, key)
            if isinstance(value, dict):
                out += differing(value, default, f"{where}{key}.")
            elif value != default:
                out.append(f"{where}{key}")
        return out

    assert set(differing(raw, defaults, "")) == {"station_id", "recognition.embedder.threads", "pipeline.camera"}
