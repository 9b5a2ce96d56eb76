from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeface.config import Config, load_config
from edgeface.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.recognition.embedder.precision == "int8"


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("typo.yaml", "recognition: {detectr: {model: full}}\n", "recognition.detectr"),
        ("value.yaml", "recognition: {detector: {model: huge}}\n", "recognition.detector.model"),
        ("bounds.yaml", "recognition: {embedder: {threads: 0}}\n", "recognition.embedder.threads"),
        ("broken.yaml", "recognition: [unclosed\n", "not valid YAML"),
        ("broken.json", "{\"station_id\": ", "not valid JSON"),
        ("station.yaml", "station_id: 'front door'\n", "station_id"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, name: str, text: str, words: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert words in message and str(path) in message
    assert "\n" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_json_and_yaml_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("station_id: hall\nrecognition:\n  detector: {model: full}\n")
    (tmp_path / "a.json").write_text('{"station_id": "hall", "recognition": {"detector": {"model": "full"}}}')
    assert load_config(tmp_path / "a.yaml") == load_config(tmp_path / "a.json")
    assert load_config(tmp_path / "a.yaml").recognition.detector.model == "full"


def test_config_reference_is_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(REPO / "tools" / "config_reference.py"), "--check"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_every_problem_is_listed_with_its_line_and_a_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "edgeface.yaml"
    path.write_text("station_id: front door\nrecognition:\n  detector:\n    modle: full\n  embedder:\n"
                    "    threads: 0\n    flp: true\nmqtt:\n  urll: mqtt://broker\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"config {path}: 5 problems: line 1: station_id: ")
    assert "line 4: recognition.detector.modle: unknown key (did you mean 'model'?)" in message
    assert "line 6: recognition.embedder.threads: Input should be greater than or equal to 1" in message
    assert "line 7: recognition.embedder.flp: unknown key (did you mean 'flip'?)" in message
    assert "line 9: mqtt.urll: unknown key (did you mean 'url'?)" in message


def test_a_key_nothing_resembles_gets_no_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "edgeface.yaml"
    path.write_text("pipeline:\n  zzzz: 1\n")
    with pytest.raises(ConfigError, match=r"^config .*: line 2: pipeline\.zzzz: unknown key$"):
        load_config(path)


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("broken.yaml", "recognition:\n  detector: [unclosed\n", "not valid YAML: line 3, column 1: expected ','"),
        ("indent.yaml", "station_id: a\n  model: b\n", "not valid YAML: line 2, column 8: mapping values are not allowed"),
        ("broken.json", '{"station_id": "a",\n "x": }', "not valid JSON: line 2, column 7"),
        ("list.yaml", "- station_id: a\n", "the top level must be a mapping"),
    ],
)
def test_syntax_errors_say_where(tmp_path: Path, name: str, text: str, where: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert where in str(error.value) and "\n" not in str(error.value)
