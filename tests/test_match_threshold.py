"""The config's match threshold (`gallery.match_max_distance` when given, else derived from
`gallery.false_alarm_rate`) is the one match threshold of `run`, `identify` and the eval commands
(before, `edgeface run` never passed it to the gallery: with 0.05 the hamilton clip still recognised
Miranda)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeface.config import Config

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAMILTON = DATA / "video" / "hamilton_clip.mp4"
PEOPLE = DATA / "people"
needs_data = pytest.mark.skipif(not (HAMILTON.is_file() and PEOPLE.is_dir()), reason="../shared/data is absent")
LMM = "lin_manuel_miranda"
STRICT = {"gallery": {"match_max_distance": 0.05}}


def test_the_config_has_one_threshold() -> None:
    assert Config().match_max_distance is None  # derived from gallery.false_alarm_rate
    assert Config.model_validate(STRICT).match_max_distance == 0.05
    override = Config.model_validate({**STRICT, "pipeline": {"decision": {"match_max_distance": 0.5}}})
    assert override.match_max_distance == 0.5  # the older key still overrides, as documented


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not PEOPLE.is_dir():
        pytest.skip("../shared/data is absent")
    from edgeface.storage.enroll import Enroller, image_files, person_folders
    from edgeface.storage.gallery import Gallery
    from edgeface.vision.analyzer import FaceAnalyzer

    path = tmp_path_factory.mktemp("gallery") / "gallery.db"
    with Gallery(path) as gallery:
        enroller = Enroller(FaceAnalyzer.for_camera(Config()), gallery)
        for name, folder in person_folders(PEOPLE)[0]:
            enroller.enroll(name, image_files(folder))
        assert LMM in {i.name for i in gallery.list_identities()}
    return path


def _recognized(config: Config, gallery_file: Path, tmp_path: Path) -> set[str]:
    from edgeface.io.sources import open_source
    from edgeface.service.app import build_station, open_gallery

    tmp_path.mkdir()
    copy = tmp_path / "gallery.db"
    shutil.copy(gallery_file, copy)
    gallery = open_gallery(config, copy)
    out = io.StringIO()
    running = build_station(config, gallery=gallery, stdout=out)
    try:
        with open_source(HAMILTON, every_frame=True) as source:
            running.pipeline.run(source)
    finally:
        running.close()
        assert gallery is not None
        gallery.close()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert running.pipeline.stats.events["track_ended"] == sum(e["type"] == "track_ended" for e in events)
    return {e["name"] for e in events if e["type"] == "recognized"}


@needs_data
@pytest.mark.slow
def test_run_matches_at_the_configured_threshold(enrolled: Path, tmp_path: Path) -> None:
    assert LMM in _recognized(Config(), enrolled, tmp_path / "default")
    assert _recognized(Config.model_validate(STRICT), enrolled, tmp_path / "strict") == set()


@needs_data
@pytest.mark.slow
def test_identify_matches_at_the_configured_threshold(enrolled: Path, tmp_path: Path) -> None:
    import cv2

    from edgeface.io.sources import open_source

    with open_source(HAMILTON, every_frame=True) as source:
        frame = next(f for f in source if f.index == 150)  # Miranda's close shot
    photo = tmp_path / "miranda.png"
    cv2.imwrite(str(photo), frame.image)
    strict = tmp_path / "strict.yaml"
    strict.write_text("gallery: {match_max_distance: 0.05}\n")

    def identify(*extra: str) -> list[dict]:
        done = subprocess.run([sys.executable, "-m", "edgeface.cli", "identify", str(photo), "--jsonl", "--gallery",
                               str(enrolled), *extra], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[0])["faces"]

    assert [f["name"] for f in identify()] == [LMM]
    assert [f["name"] for f in identify("--config", str(strict))] == ["unknown"]
