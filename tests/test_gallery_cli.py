"""The gallery commands, run as real processes (`python -m edgeface.cli.gallery`, the same handlers
`edgeface` registers) on real photos and real gallery files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeface.storage.gallery import Gallery

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PEOPLE = DATA / "people"
LFW = DATA / "lfw" / "images"
pytestmark = pytest.mark.skipif(not PEOPLE.is_dir(), reason="../shared/data is absent")


def _command(*args: object) -> list[str]:
    return [sys.executable, "-m", "edgeface.cli", *map(str, args)]


def run(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEFACE_GALLERY"}
    return subprocess.run(_command(*args), cwd=cwd, capture_output=True, text=True, timeout=300, env=env, check=False)


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgeface:")]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A gallery of people/ enrolled by `enroll --from-folders` (./gallery.db, the default path)."""
    cwd = tmp_path_factory.mktemp("station")
    result = run("enroll", "--from-folders", PEOPLE, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd, result


def test_enroll_from_folders_reports_every_photo(enrolled) -> None:
    cwd, result = enrolled
    lines = result.stdout.splitlines()
    assert len(lines) == 8 + 4 + 1  # every photo of people/*/ once (_group is skipped), each person, the summary
    assert sum(line.startswith("enrolled  ") for line in lines) == 7
    assert "barack_obama: 2 of 3 photos enrolled" in lines and "lin_manuel_miranda: 1 of 1 photo enrolled" in lines
    assert lines[-1] == "4 of 4 people enrolled (7 of 8 photos)"
    assert any(line.startswith("rejected  barack_obama") and "3.jpg  duplicate: same file as" in line for line in lines)
    assert "skipped" in result.stderr and "_group" in result.stderr
    listing = run("gallery", "list", "--json", cwd=cwd)
    assert [(i["name"], i["templates"]) for i in json.loads(listing.stdout)] == [
        ("alex_lacamoire", 2), ("barack_obama", 2), ("joe_biden", 2), ("lin_manuel_miranda", 1)]
    shown = json.loads(run("gallery", "show", "joe_biden", "--json", cwd=cwd).stdout)
    assert [t["model_id"] for t in shown["templates"]] == ["dlib_resnet_v1"] * 2
    assert [t["second_model"] for t in shown["templates"]] == ["sface_2021dec/int8"] * 2  # tagged with its model
    assert all(len(t["source_sha256"]) == 64 for t in shown["templates"])


def test_identify_names_each_face(enrolled) -> None:
    cwd, _ = enrolled
    result = run("identify", *sorted((PEOPLE / "_group").iterdir()), DATA / "bbt" / "raj" / "raj1.png", "--jsonl", cwd=cwd)
    assert result.returncode == 0, result.stderr
    records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    names = {k: sorted(f["name"] for f in r["faces"]) for k, r in records.items()}
    assert names["obama-1080p.jpg"] == ["barack_obama"]
    assert names["obama-240p.jpg"] == ["barack_obama"]
    assert names["two_people.jpg"] == ["barack_obama", "joe_biden"]
    assert names["raj1.png"] == ["unknown"]
    assert records["raj1.png"]["faces"][0]["distance"] > 0.38
    _, name, distance, box = run("identify", PEOPLE / "_group" / "obama-1080p.jpg", cwd=cwd).stdout.strip().split("\t")
    assert (name, box) == ("barack_obama", "box 858,126,1143,411") and float(distance) < 0.2


@pytest.mark.slow
def test_management_and_export_import(enrolled, tmp_path: Path) -> None:
    source, _ = enrolled
    copy = tmp_path / "copy.db"
    exported = tmp_path / "people.json"
    assert run("gallery", "export", exported, cwd=source).returncode == 0
    result = run("gallery", "import", exported, "--gallery", copy, cwd=tmp_path)
    assert result.returncode == 0 and "4 new" in result.stderr and "7 templates added" in result.stderr
    assert run("gallery", "rename", "joe_biden", "Joseph Biden", "--gallery", copy, cwd=tmp_path).returncode == 0
    assert run("gallery", "remove", "alex_lacamoire", "--gallery", copy, cwd=tmp_path).returncode == 0
    listing = json.loads(run("gallery", "list", "--json", "--gallery", copy, cwd=tmp_path).stdout)
    assert [i["name"] for i in listing] == ["Joseph Biden", "barack_obama", "lin_manuel_miranda"]
    assert "Joseph Biden" in _error_line(run("gallery", "rename", "barack_obama", "Joseph Biden", "--gallery", copy, cwd=tmp_path))
    assert "no identity named" in _error_line(run("gallery", "show", "alex_lacamoire", "--gallery", copy, cwd=tmp_path))

    document = json.loads(exported.read_text())
    document["model_id"] = "facenet_512"
    (tmp_path / "facenet.json").write_text(json.dumps(document))
    fresh = tmp_path / "fresh.db"
    line = _error_line(run("gallery", "import", tmp_path / "facenet.json", "--gallery", fresh, cwd=tmp_path))
    assert "facenet_512" in line and "cannot be compared" in line
    assert not fresh.exists()  # nothing written, not even an empty gallery


def test_reject_keeps_a_negative(enrolled, tmp_path: Path) -> None:
    source, _ = enrolled
    gallery = tmp_path / "g.db"
    run("gallery", "export", tmp_path / "e.json", cwd=source)
    run("gallery", "import", tmp_path / "e.json", "--gallery", gallery, cwd=tmp_path)
    raj = DATA / "bbt" / "raj" / "raj1.png"
    result = run("gallery", "reject", "lin_manuel_miranda", raj, "--gallery", gallery, cwd=tmp_path)
    assert result.returncode == 0 and "is not lin_manuel_miranda" in result.stderr
    shown = json.loads(run("gallery", "show", "lin_manuel_miranda", "--json", "--gallery", gallery, cwd=tmp_path).stdout)
    assert shown["negatives"] == 1 and len(shown["templates"]) == 1


@pytest.mark.parametrize(("args", "words"), [
    (["enroll", "a/b", PEOPLE / "joe_biden"], "path separator"),
    (["enroll", "bell\x07", PEOPLE / "joe_biden"], "control character"),
    (["enroll", "Ada", "empty"], "holds no photos"),
    (["enroll", "Ada", "missing.jpg"], "no such file"),
    (["enroll", "Ada", "broken.jpg"], None),
    (["enroll", "Ada"], "at least one photo"),
    (["identify", PEOPLE / "joe_biden" / "1.jpg"], "no gallery at"),
    (["gallery", "list"], "no gallery at"),
])
def test_bad_input_writes_nothing(tmp_path: Path, args: list[object], words: str | None) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 1
    if words:
        assert words in _error_line(result)
    else:  # a photo that cannot be read is reported as rejected; nobody is enrolled
        assert "rejected  Ada" in result.stdout and "unreadable" in result.stdout
        assert "Ada: no usable photo, not enrolled" in result.stdout
    assert not (tmp_path / "gallery.db").exists()


@pytest.mark.slow
def test_existing_name_needs_add(enrolled, tmp_path: Path) -> None:
    source, _ = enrolled
    gallery = tmp_path / "g.db"
    run("gallery", "export", tmp_path / "e.json", cwd=source)
    run("gallery", "import", tmp_path / "e.json", "--gallery", gallery, cwd=tmp_path)
    assert "--add" in _error_line(run("enroll", "joe_biden", PEOPLE / "_group" / "obama-1080p.jpg", "--gallery", gallery, cwd=tmp_path))
    result = run("enroll", "joe_biden", PEOPLE / "_group", "--add", "--jsonl", "--gallery", gallery, cwd=tmp_path)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    reasons = {Path(r["path"]).name: r["reason"] for r in records}
    # obama-240p: Obama's face, as a stored photo of his (duplicate) or far from Biden's and near his
    assert reasons["obama-240p.jpg"] in ("duplicate", "closer_to_other")
    assert reasons == {"obama-240p.jpg": reasons["obama-240p.jpg"], "obama_and_biden.jpg": "several_faces",
                       "two_people.jpg": "several_faces",
                       # the same picture as barack_obama/1.jpg, larger: 0.08-0.104 away depending on alignment
                       "obama-1080p.jpg": reasons["obama-1080p.jpg"]}
    assert reasons["obama-1080p.jpg"] in ("duplicate", "closer_to_other")
    assert result.returncode == 1
    assert json.loads(run("gallery", "show", "joe_biden", "--json", "--gallery", gallery, cwd=tmp_path).stdout)["templates"].__len__() == 2


# -- crashes and concurrency ----------------------------------------------------------------


def _lfw_people(root: Path, count: int, photos: int) -> list[str]:
    """Folders of symlinks to the first `count` LFW people with at least `photos` images."""
    names = []
    for person in sorted(LFW.iterdir()):
        images = sorted(person.glob("*.jpg"))
        if len(images) >= photos:
            (root / person.name).mkdir(parents=True)
            for image in images[:photos]:
                (root / person.name / image.name).symlink_to(image)
            names.append(person.name)
            if len(names) == count:
                break
    return names


def _committed_identities(path: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return int(db.execute("SELECT COUNT(*) FROM identities").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


@pytest.mark.skipif(not LFW.is_dir(), reason="../shared/data/lfw is absent")
@pytest.mark.slow
def test_kill_9_mid_enrollment_leaves_no_half_enrolled_identity(tmp_path: Path) -> None:
    from edgeface.config import Config
    from edgeface.storage.enroll import Enroller, person_folders, prepare_requests
    from edgeface.vision.analyzer import FaceAnalyzer

    _lfw_people(tmp_path / "people", count=16, photos=6)
    with Gallery(tmp_path / "reference.db") as reference:  # what a complete run enrolls, person by person
        enroller = Enroller(FaceAnalyzer.from_config(Config().recognition), reference)
        people, _ = person_folders(tmp_path / "people")
        for name, files in prepare_requests([(n, [f]) for n, f in people], {}):
            enroller.enroll(name, files)
        expected = {i.name: i.template_count for i in reference.list_identities()}
    assert len(expected) >= 12

    gallery = tmp_path / "killed.db"
    process = subprocess.Popen(_command("enroll", "--from-folders", tmp_path / "people", "--gallery", gallery),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _committed_identities(gallery) == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the enrollment finished before it could be killed"

    db = sqlite3.connect(gallery)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    with Gallery(gallery) as killed:
        found = {i.name: i.template_count for i in killed.list_identities()}
    print(f"killed after {len(found)} of {len(expected)} identities")
    assert 0 < len(found) < len(expected), "the kill did not land mid-enrollment"
    assert list(found) == sorted(expected)[:len(found)]  # people are enrolled in folder order
    assert found == {name: expected[name] for name in found}  # each identity complete, or absent


def test_two_processes_enroll_while_a_third_matches(tmp_path: Path) -> None:
    from edgeface.config import Config
    from edgeface.io.images import read_image
    from edgeface.vision.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(Config().recognition)
    probes = np.stack([analyzer.analyze(read_image(PEOPLE / p)).embeddings[0]
                       for p in ("joe_biden/1.jpg", "barack_obama/1.jpg")])
    path = tmp_path / "shared.db"
    with Gallery(path) as station:  # the camera loop's connection, open throughout
        assert [m.name for m in station.match(probes)] == [None, None]
        writers = [subprocess.Popen(_command("enroll", name, PEOPLE / name, "--gallery", path),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for name in ("joe_biden", "barack_obama")]
        seen: set[tuple[str | None, ...]] = set()
        while any(w.poll() is None for w in writers):
            seen.add(tuple(m.name for m in station.match(probes)))
            time.sleep(0.01)
        for writer in writers:
            assert writer.wait() == 0, writer.stderr.read()
        assert [m.name for m in station.match(probes)] == ["joe_biden", "barack_obama"]
        assert seen <= {(None, None), ("joe_biden", None), (None, "barack_obama"), ("joe_biden", "barack_obama")}
