from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.cli import clusters as clusters_cli
from edgeface.cli.main import main as edgeface_main
from edgeface.config import ClusterSettings
from edgeface.events import ClusterMergedEvent, ClusterNamedEvent, parse_event
from edgeface.storage.cluster_store import ClusterStore
from edgeface.storage.gallery import Gallery

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cluster_faces import LFW, of

needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason="../shared/data/lfw is absent")
# Recent: crops older than clusters.crop_retention_days are erased when the gallery is opened.
T0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = edgeface_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _seed(path: Path, crops: bool) -> None:
    """unknown-1: Colin Powell x4 (confirmed); unknown-2: Hugo Chavez x3 (confirmed); unknown-3: a stranger once."""
    with ClusterStore(path, ClusterSettings(store_face_crops=crops)) as store:
        for k, face in enumerate(of("Colin_Powell")[:4] + of("Hugo_Chavez")[:3] + of("AJ_Lamas")):
            store.observe(face.embedding, quality=0.8, ts=T0 + timedelta(hours=k), track_key=f"t{k}", crop=face.chip)
        assert [c.id for c in store.list_clusters()] == ["unknown-1", "unknown-2", "unknown-3"]


def test_register_and_eval_wiring() -> None:
    parser = argparse.ArgumentParser(prog="edgeface")
    commands = parser.add_subparsers(dest="command", required=True)
    clusters_cli.register(commands)
    clusters_cli.add_eval_cluster(commands.add_parser("eval").add_subparsers(dest="kind", required=True))
    args = parser.parse_args(["clusters", "name", "unknown-3", "Zoë", "--gallery", "g.db"])
    assert (args.id, args.name, args.gallery, args.handler) == ("unknown-3", "Zoë", Path("g.db"), clusters_cli._cmd_name)
    args = parser.parse_args(["clusters", "sheet", "-o", "s.png"])
    assert args.output == Path("s.png")
    args = parser.parse_args(["eval", "cluster", "--data", "d", "--json"])
    assert args.data == Path("d") and args.json and callable(args.handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["clusters", "merge", "unknown-1"])


def test_missing_gallery_is_one_line_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "clusters", "list", "--gallery", str(tmp_path / "none.db"))
    assert code == 1 and err.count("\n") == 1 and "no gallery at" in err
    assert not (tmp_path / "none.db").exists()


@needs_lfw
def test_list_show_merge_forget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gallery.db"
    _seed(path, crops=False)
    g = ("--gallery", str(path))
    code, out, _ = _cli(capsys, "clusters", "list", "--json", *g)
    listed = json.loads(out)
    assert code == 0 and [(c["id"], c["status"], c["observations"]) for c in listed] == [
        ("unknown-1", "confirmed", 4), ("unknown-2", "confirmed", 3), ("unknown-3", "tentative", 1)]
    code, out, _ = _cli(capsys, "clusters", "list", "--status", "tentative", *g)
    assert code == 0 and out.splitlines()[0].startswith("unknown-3\ttentative")
    code, out, err = _cli(capsys, "clusters", "show", "unknown-2", *g)
    assert code == 0 and "seen 3 times on 3 visits" in out and out.count("exemplar") == 3 and "no crop" in out
    code, out, _ = _cli(capsys, "clusters", "merge", "unknown-3", "unknown-2", "--json", *g)
    event = parse_event(out)
    assert code == 0 and isinstance(event, ClusterMergedEvent) and (event.kept_id, event.merged_id) == ("unknown-2", "unknown-3")
    code, out, _ = _cli(capsys, "clusters", "forget", "unknown-1", *g)
    assert code == 0 and "unknown-1 forgotten" in out
    code, out, _ = _cli(capsys, "clusters", "ignore", "unknown-2", *g)
    assert code == 0 and "ignoring unknown-2" in out
    code, out, _ = _cli(capsys, "clusters", "list", *g)
    assert out.splitlines()[0].startswith("unknown-2\t") and out.splitlines()[0].endswith("\tignored")
    code, out, _ = _cli(capsys, "clusters", "ignore", "unknown-2", "--undo", *g)
    assert code == 0 and "no longer ignoring unknown-2" in out
    assert not json.loads(_cli(capsys, "clusters", "list", "--json", *g)[1])[0]["ignored"]
    for args, message in ((("show", "unknown-1"), "unknown-1 was forgotten"),
                          (("show", "unknown-3"), "unknown-3 was merged into unknown-2"),
                          (("show", "unknown-99"), "no cluster unknown-99"),
                          (("forget", "Bob"), "cluster ids look like unknown-17"),
                          (("merge", "unknown-2", "unknown-2"), "same cluster")):
        code, _, err = _cli(capsys, "clusters", *args, *g)
        assert code == 1 and err.count("\n") == 1 and message in err, err
    with ClusterStore(path) as store:
        assert [c.id for c in store.list_clusters()] == ["unknown-2"]
        assert [type(e) for e in store.take_events()] == [ClusterMergedEvent]  # queued for the station to publish


@needs_lfw
def test_name_makes_the_person_known(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gallery.db"
    _seed(path, crops=False)
    with Gallery(path) as gallery:
        gallery.add_templates("Hugo Chávez", of("Hugo_Chavez")[7].embedding)  # already enrolled from one photo
    code, out, _ = _cli(capsys, "clusters", "name", "unknown-1", "Colin Powell", "--gallery", str(path))
    assert code == 0 and "unknown-1 is now 'Colin Powell'" in out
    code, out, _ = _cli(capsys, "clusters", "name", "unknown-2", "Hugo Chávez", "--json", "--gallery", str(path))
    event = parse_event(out)
    assert code == 0 and isinstance(event, ClusterNamedEvent) and event.name == "Hugo Chávez"
    code, _, err = _cli(capsys, "clusters", "name", "unknown-3", "bad\x07name", "--gallery", str(path))
    assert code == 1 and "control character" in err and err.count("\n") == 1
    with Gallery(path) as gallery:
        assert {i.name: i.template_count for i in gallery.list_identities()} == {"Colin Powell": 4, "Hugo Chávez": 4}
        probes = np.stack([f.embedding for f in of("Colin_Powell")[4:] + of("Hugo_Chavez")[3:7]])
        assert [m.name for m in gallery.match(probes)] == ["Colin Powell"] * 4 + ["Hugo Chávez"] * 4
    with ClusterStore(path) as store:
        assert [c.id for c in store.list_clusters()] == ["unknown-3"]
        assert [e.type for e in store.take_events()] == ["cluster_named", "cluster_named"]


@needs_lfw
def test_sheet_with_and_without_crops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_crops, without = tmp_path / "on.db", tmp_path / "off.db"
    _seed(with_crops, crops=True)
    _seed(without, crops=False)
    code, out, err = _cli(capsys, "clusters", "sheet", "-o", str(tmp_path / "on.png"), "--gallery", str(with_crops))
    assert code == 0 and "3 clusters, 3 with face crops" in out and not err
    sheet = cv2.imread(str(tmp_path / "on.png"))
    assert sheet.shape[0] == 60 + 3 * (clusters_cli.SHEET_FACE_PX + 2 * clusters_cli.SHEET_PAD_PX)
    # the face area holds real face pixels
    tiles = sheet[60:, clusters_cli.SHEET_LABEL_PX:]
    assert tiles.std() > 30
    code, out, err = _cli(capsys, "clusters", "sheet", "-o", str(tmp_path / "off.png"), "--gallery", str(without))
    assert code == 0 and "0 with face crops" in out  # stored by default; this gallery was filled without
    blank = cv2.imread(str(tmp_path / "off.png"))[60:, clusters_cli.SHEET_LABEL_PX + 380:]
    assert (blank >= 200).all()  # white with grey row separators: no face anywhere, only the note
    code, _, err = _cli(capsys, "clusters", "sheet", "-o", str(tmp_path / "sheet.gif"), "--gallery", str(with_crops))
    assert code == 1 and ".png" in err and err.count("\n") == 1
    code, _, err = _cli(capsys, "clusters", "sheet", "-o", str(tmp_path / "no" / "s.png"), "--gallery", str(with_crops))
    assert code == 1 and "does not exist" in err


def test_module_entry_exit_codes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edgeface.cli", "clusters", "show", "unknown-1",
                           "--gallery", str(tmp_path / "none.db")], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("edgeface: error: no gallery at") and "Traceback" not in done.stderr


CROWD = LFW.parents[1] / "video" / "crowd_walk.mp4"


@pytest.mark.skipif(not CROWD.is_file(), reason="../shared/data/video is absent")
@pytest.mark.parametrize("crops", [False, True])
@pytest.mark.slow
def test_camera_loop_stores_face_crops_only_when_allowed(tmp_path: Path, crops: bool) -> None:
    """`edgeface run` hands each unknown track's best aligned face to the clusters; it is kept only
    when clusters.store_face_crops is on."""
    gallery = tmp_path / "gallery.db"
    Gallery(gallery).close()
    config = tmp_path / "config.yaml"
    config.write_text("recognition: {detector: {model: full}}\n"
                      f"clusters: {{store_face_crops: {'true' if crops else 'false'}}}\n")
    result = subprocess.run([sys.executable, "-m", "edgeface.cli", "run", "--source", str(CROWD), "--every-frame",
                             "--gallery", str(gallery), "--config", str(config)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    clustered = {e["cluster_id"] for e in events if e["type"] == "unknown" and e.get("cluster_id")}
    assert clustered
    with ClusterStore(gallery) as store:
        stored = [crop for cluster in store.list_clusters() for crop in store.crops(cluster.id, 10)]
    if crops:
        assert stored and cv2.imdecode(np.frombuffer(stored[0], np.uint8), cv2.IMREAD_COLOR).shape == (150, 150, 3)
    else:
        assert stored == []


@needs_lfw
def test_name_into_someone_else_is_refused_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gallery.db"
    _seed(path, crops=False)
    with Gallery(path) as gallery:
        gallery.add_templates("Hugo Chávez", of("Hugo_Chavez")[7].embedding)
    code, _, err = _cli(capsys, "clusters", "name", "unknown-1", "Hugo Chávez", "--gallery", str(path))
    assert code == 1 and err.count("\n") == 1
    assert "unknown-1 does not look like Hugo Chávez" in err and "--force" in err
    code, out, _ = _cli(capsys, "clusters", "name", "unknown-1", "Hugo Chávez", "--force", "--gallery", str(path))
    assert code == 0 and "unknown-1 is now 'Hugo Chávez'" in out
    with Gallery(path) as gallery:
        assert gallery.show("Hugo Chávez").template_count == 5


@pytest.mark.slow
@pytest.mark.skipif(not CROWD.is_file(), reason="../shared/data/video is absent")
def test_crowd_walk_tracks_on_screen_together_stay_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The camera loop on crowd_walk with the full-range model: unknown tracks that were on screen at
    the same time never end in one cluster (before cannot-links, two of them did, and naming that
    cluster enrolled both people under one name)."""
    gallery = tmp_path / "gallery.db"
    Gallery(gallery).close()
    config = tmp_path / "config.yaml"
    config.write_text("recognition: {detector: {model: full}}\n")
    result = subprocess.run([sys.executable, "-m", "edgeface.cli", "run", "--source", str(CROWD), "--every-frame",
                             "--gallery", str(gallery), "--config", str(config)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    into = {e["merged_id"]: e["kept_id"] for e in events if e["type"] == "cluster_merged"}

    def final(cluster: str) -> str:
        while cluster in into:
            cluster = into[cluster]
        return cluster

    def when(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    tracks = [(when(e["started"]), when(e["ended"]), final(e["cluster_id"])) for e in events
              if e["type"] == "track_ended" and e["decision"] == "unknown"]
    overlapping = [(a, b) for i, a in enumerate(tracks) for b in tracks[i + 1:] if a[0] <= b[1] and b[0] <= a[1]]
    assert len(tracks) >= 4 and overlapping
    assert all(a[2] != b[2] for a, b in overlapping), tracks
    a, b = overlapping[0][0][2], overlapping[0][1][2]
    code, _, err = _cli(capsys, "clusters", "merge", a, b, "--gallery", str(gallery))
    assert code == 1 and "on screen at the same time" in err and err.count("\n") == 1
    with ClusterStore(gallery) as store:
        assert store.clusters.get(int(b.split("-")[1])).apart  # type: ignore[union-attr]
