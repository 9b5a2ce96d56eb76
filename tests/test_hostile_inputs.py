"""Issue 15, item 5 and the small defects of item 9, each reproduced with real files and real
processes: images refused from their header before decoding (true message, low memory), EXIF
orientation, FIFOs, symbolic link loops, unreadable and badly named person folders, a read-only
gallery, new lines in file names, `enroll --jsonl` reporting only committed people, NFC/NFD names,
and a camera password kept out of the process list."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.errors import ImageError
from edgeface.io.images import decode_image, read_image
from edgeface.storage.gallery import Gallery

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PEOPLE = DATA / "people"
needs_data = pytest.mark.skipif(not PEOPLE.is_dir(), reason="../shared/data is absent")
ROOT = os.geteuid() == 0


UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if ROOT else []
"""Root reads and writes anything: a permission test runs its process without the capabilities that
override file modes (needs util-linux's setpriv)."""


def run(*args: object, cwd: Path, module: str = "edgeface.cli", unprivileged: bool = False,
        env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("EDGEFACE_GALLERY", "EDGEFACE_SOURCE")}
    environment.update(env or {})
    if unprivileged and ROOT and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot be tested")
    prefix = UNPRIVILEGED if unprivileged else []
    return subprocess.run([*prefix, sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=environment, check=False)


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgeface:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def _huge_png(path: Path, side: int = 20000) -> Path:
    """A valid grey PNG of side x side pixels written row by row (a 400 MP image in a small file)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


# -- item 5: the size comes from the header ---------------------------------------------------------


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _huge_png(tmp_path_factory.mktemp("huge") / "huge.png")


def test_huge_png_is_refused_from_its_header_with_a_true_message(huge_png: Path) -> None:
    assert huge_png.stat().st_size < 3_000_000
    with pytest.raises(ImageError, match=r"image too large \(20000x20000 pixels, 400 MP; at most 80 MP\)"):
        read_image(huge_png)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["identify", "embed", "enroll"])
def test_huge_png_costs_no_memory_in_any_command(huge_png: Path, tmp_path: Path, command: str) -> None:
    """Before: 2.4 GB peak in enroll, identify and embed before "image too large"."""
    with Gallery(tmp_path / "gallery.db") as gallery:
        gallery.add_templates("Ada", np.eye(128, dtype=np.float32)[0])
    args = {"identify": ["identify", huge_png, "--gallery", "gallery.db"], "embed": ["embed", huge_png],
            "enroll": ["enroll", "Bob", huge_png, "--jsonl", "--gallery", "gallery.db"]}[command]
    # VmHWM, this process's own peak: ru_maxrss also counts the parent's peak when the child was started
    # with vfork (Python's subprocess does), so a big pytest process made this test fail.
    code = ("import resource, sys\nfrom edgeface.cli.main import main\nrc = main(sys.argv[1:])\n"
            "from pathlib import Path\nstatus = Path('/proc/self/status')\n"
            "peak = next((int(l.split()[1]) for l in status.read_text().splitlines() if l.startswith('VmHWM:')), None)"
            " if status.exists() else None\n"
            "print('maxrss_kb', peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "image too large (20000x20000 pixels" in done.stderr + done.stdout
    peak_mb = int(done.stderr.split("maxrss_kb")[-1].split()[0]) / 1024
    print(f"\n{command} on a 20000x20000 PNG: peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 600


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tiff", ".ppm", ".pgm", ".pbm"])
def test_the_header_size_of_every_format_read(tmp_path: Path, ext: str) -> None:
    from edgeface.io.images import image_header

    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    path = tmp_path / f"a{ext}"
    assert cv2.imwrite(str(path), image[..., 0] if ext in (".pgm", ".pbm") else image)
    kind, size, orientation = image_header(path.read_bytes())
    assert kind and size == (53, 37) and orientation == 1
    assert read_image(path).shape == (37, 53, 3)


def test_a_file_of_unknown_format_says_so() -> None:
    with pytest.raises(ImageError, match="unknown format; edgeface reads JPEG, PNG"):
        decode_image(b"#?RADIANCE\n" + b"\0" * 100, "x.hdr")


# -- EXIF orientation ---------------------------------------------------------------------------


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment (big-endian TIFF, IFD0 with one Orientation entry) after SOI."""
    tiff = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) \
        + struct.pack(">I", 0)
    body = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_what_opencv_shows(orientation: int) -> None:
    image = np.zeros((60, 90, 3), np.uint8)
    image[:20, :30] = (255, 0, 0)
    image[40:, 70:] = (0, 0, 255)
    data = _with_orientation(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes(), orientation)
    shown = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # OpenCV's own reading of the tag
    ours = decode_image(data)
    assert ours.shape == shown.shape
    assert np.abs(ours.astype(int) - shown.astype(int)).max() <= 2


@needs_data
def test_a_phone_portrait_with_orientation_6_is_enrolled_upright(tmp_path: Path) -> None:
    """Issue 12: a portrait stored lying on its side with EXIF orientation 6 was refused as
    `extreme_pose: head tilted 84 deg`. Now it is read upright everywhere a photo is read."""
    from edgeface.config import Config
    from edgeface.storage.enroll import Enroller
    from edgeface.vision.analyzer import FaceAnalyzer

    upright = cv2.imread(str(PEOPLE / "barack_obama" / "1.jpg"))
    stored = cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE)  # how the phone's sensor wrote it
    photo = tmp_path / "portrait.jpg"
    photo.write_bytes(_with_orientation(cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(), 6))
    read = read_image(photo)
    assert read.shape == upright.shape
    analyzer = FaceAnalyzer.from_config(Config().recognition)
    sideways = analyzer.analyze(stored)
    faces = analyzer.analyze(read)
    assert len(faces) == 1
    with Gallery(tmp_path / "g.db") as gallery:
        enroller = Enroller(analyzer, gallery)
        roll_sideways = None
        if len(sideways):
            roll_sideways = enroller.gate.assess(sideways.detections[0:1], sideways.chips[0:1])[0].measures.roll_deg
        outcome = enroller.examine("barack_obama", [photo]).outcomes[0]
        assert outcome.accepted, outcome
        roll = enroller.gate.assess(faces.detections[0:1], faces.chips[0:1])[0].measures.roll_deg
    print(f"\nEXIF 6 portrait: roll {roll:.1f} deg read upright"
          + (f", {roll_sideways:.1f} deg as stored" if roll_sideways is not None else ", no face as stored"))
    assert abs(roll) < 15
    # The MQTT enroll path decodes the same way.
    import base64

    from edgeface.service.mqtt.commands import decode_image_base64

    assert decode_image_base64(base64.b64encode(photo.read_bytes()).decode()).shape == upright.shape


# -- FIFOs, symbolic link loops -----------------------------------------------------------------


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(pytest.raises(ImageError, read_image, fifo)), daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "read_image hangs on a FIFO"
    assert "a FIFO (named pipe), not an image file" in str(outcome[0].value)  # type: ignore[attr-defined]


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("command", [["identify"], ["embed"]])
def test_identify_and_embed_do_not_hang_on_a_fifo(tmp_path: Path, command: list[str]) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    shutil.copy(PEOPLE / "joe_biden" / "1.jpg", tmp_path / "joe.jpg")
    with Gallery(tmp_path / "gallery.db") as gallery:
        gallery.add_templates("Ada", np.eye(128, dtype=np.float32)[0])
    done = run(*command, fifo, "joe.jpg", *(["--gallery", "gallery.db"] if command == ["identify"] else []),
               cwd=tmp_path, module="edgeface.cli", timeout=120)
    assert done.returncode == 1
    assert "a FIFO (named pipe), not an image file" in done.stderr + done.stdout
    assert "joe.jpg" in done.stdout  # the other photo is still done


def test_a_symlink_loop_is_not_called_missing(tmp_path: Path) -> None:
    from edgeface.storage.enroll import EnrollmentError, image_files

    loop = tmp_path / "a.jpg"
    os.symlink(tmp_path / "b.jpg", loop)
    os.symlink(loop, tmp_path / "b.jpg")
    with pytest.raises(ImageError, match="a loop of symbolic links"):
        read_image(loop)
    with pytest.raises(EnrollmentError, match="a loop of symbolic links"):
        image_files(loop)
    dangling = tmp_path / "c.jpg"
    os.symlink(tmp_path / "gone.jpg", dangling)
    with pytest.raises(ImageError, match="a symbolic link to a file that does not exist"):
        read_image(dangling)


# -- person folders ------------------------------------------------------------------------------


def _people(root: Path, names: list[str | bytes]) -> Path:
    photos = {"joe_biden": "joe_biden/1.jpg", "alex": "alex_lacamoire/2.jpg", "obama": "barack_obama/1.jpg"}
    sources = list(photos.values())
    for i, name in enumerate(names):
        folder = os.path.join(os.fsencode(root), os.fsencode(name) if isinstance(name, str) else name)
        os.makedirs(folder)
        shutil.copy(PEOPLE / sources[i % len(sources)], os.path.join(folder, b"1.jpg"))
    return root


@needs_data
def test_one_unreadable_or_badly_named_folder_does_not_stop_the_batch(tmp_path: Path) -> None:
    root = _people(tmp_path / "people", ["joe_biden", b"caf\xe9_latin1", "locked"])
    os.chmod(root / "locked", 0)
    try:
        done = run("enroll", "--from-folders", "people", cwd=tmp_path, unprivileged=True)
    finally:
        os.chmod(root / "locked", 0o755)
    assert done.returncode == 1, done.stderr
    assert "locked: cannot read the folder (Permission denied)" in done.stderr
    assert "caf\\xe9_latin1: its name is not valid UTF-8" in done.stderr
    assert "enrolled  joe_biden" in done.stdout
    with Gallery(tmp_path / "gallery.db", read_only=True) as gallery:
        assert [i.name for i in gallery.list_identities()] == ["joe_biden"]


# -- identify ------------------------------------------------------------------------------------


@needs_data
def test_identify_needs_only_read_access_and_keeps_one_line_per_face(tmp_path: Path) -> None:
    from edgeface.config import Config
    from edgeface.storage.enroll import Enroller
    from edgeface.vision.analyzer import FaceAnalyzer

    folder = tmp_path / "station"
    folder.mkdir()
    with Gallery(folder / "gallery.db") as gallery:
        Enroller(FaceAnalyzer.from_config(Config().recognition), gallery).enroll("joe_biden", [PEOPLE / "joe_biden" / "1.jpg"])
    strange = tmp_path / "joe\nbiden\t2.jpg"
    shutil.copy(PEOPLE / "joe_biden" / "2.jpg", strange)
    for path in (folder / "gallery.db", folder):
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    try:
        done = run("identify", strange, "--gallery", folder / "gallery.db", cwd=tmp_path, unprivileged=True)
    finally:
        os.chmod(folder, 0o755)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[:2] == [str(tmp_path) + "/joe\\nbiden\\t2.jpg", "joe_biden"], lines
    assert sorted(p.name for p in folder.iterdir()) == ["gallery.db"]  # nothing written next to it


# -- enroll --jsonl -------------------------------------------------------------------------------


@pytest.mark.slow
@needs_data
def test_enroll_jsonl_reports_enrolled_only_once_committed(tmp_path: Path) -> None:
    """Before: `"enrolled": true` was printed before the commit; in 5 of 20 kill -9s right after that
    line the person was not in the gallery. Now the line comes after the commit: kill -9 the moment it
    is read, and the person is there, every time."""
    root = _people(tmp_path / "people", ["alex", "joe_biden", "obama"])
    for attempt in range(3):
        gallery = tmp_path / f"g{attempt}.db"
        process = subprocess.Popen([sys.executable, "-m", "edgeface.cli", "enroll", "--from-folders", root,
                                    "--jsonl", "--gallery", gallery], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert process.stdout is not None
        reported = None
        for raw in process.stdout:
            record = json.loads(raw)
            if record["enrolled"]:
                process.send_signal(signal.SIGKILL)
                reported = record["name"]
                break
        process.wait()
        assert reported is not None
        db = sqlite3.connect(gallery)
        names = {row[0] for row in db.execute("SELECT name FROM identities")}
        db.close()
        assert reported in names, (attempt, reported, names)


# -- names ---------------------------------------------------------------------------------------


def test_nfc_and_nfd_spellings_are_one_person(tmp_path: Path) -> None:
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "Zoë Ångström"), unicodedata.normalize("NFD", "Zoë Ångström")
    assert nfc != nfd
    unit = np.eye(128, dtype=np.float32)
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.add_templates(nfd, unit[0])
        gallery.add_templates(nfc, unit[1])
        assert [(i.name, i.template_count) for i in gallery.list_identities()] == [(nfc, 2)]
        assert gallery.show(nfd).name == nfc
        gallery.rename(nfd, "Zoe")
        assert [i.name for i in gallery.list_identities()] == ["Zoe"]
    from edgeface.storage.enroll import prepare_requests

    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"x")
    with pytest.raises(Exception, match="requested twice"):
        prepare_requests([(nfc, [photo]), (nfd, [photo])], {})
    with pytest.raises(Exception, match="already enrolled"):
        prepare_requests([(nfd, [photo])], {nfc: 1})


# -- camera credentials ---------------------------------------------------------------------------


def test_a_camera_password_stays_out_of_the_process_list(tmp_path: Path) -> None:
    """Under the unit the source (rtsp://user:password@...) was on the command line, which every user
    can read in /proc/PID/cmdline. `edgeface run` now takes it from $EDGEFACE_SOURCE."""
    url = "http://viewer:hunter2-secret@127.0.0.1:9/stream.mjpg"
    config = tmp_path / "c.json"
    config.write_text('{"pipeline": {"source": {"max_retries": 0}}}')
    process = subprocess.Popen([sys.executable, "-m", "edgeface.cli", "run", "--config", config], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "EDGEFACE_SOURCE": url})
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    _, err = process.communicate(timeout=120)
    assert b"hunter2" not in cmdline
    assert process.returncode == 1 and "hunter2" not in err
    assert "connection refused by 127.0.0.1:9" in err, err[-1000:]
    unit = (Path(__file__).resolve().parents[1] / "systemd" / "edgeface.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "EDGEFACE_SOURCE" not in exec_start and "--source" not in exec_start
