"""`edgeface embed PATH...` end to end: real models, real LFW faces, every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

LFW_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw" / "images"
FACE = LFW_IMAGES / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
OTHER_FACE = LFW_IMAGES / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"

needs_lfw = pytest.mark.skipif(not FACE.is_file() or not OTHER_FACE.is_file(), reason="../shared/data/lfw is absent")

CLI_TIMEOUT_S = 120


@dataclass(frozen=True)
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run_embed(*args: str, cwd: Path | None = None) -> Run:
    command = [sys.executable, "-m", "edgeface.cli", "embed", *args]
    start = time.monotonic()
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, cwd=cwd)
    return Run(list(args), result.returncode, result.stdout, result.stderr, time.monotonic() - start)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good and bad inputs, all made in a temporary folder from one real LFW image."""
    folder = tmp_path_factory.mktemp("embed_inputs")
    data = FACE.read_bytes()
    image = cv2.imread(str(FACE), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (250, 250, 3)
    out = {"face": FACE, "other_face": OTHER_FACE}

    def write_bytes(name: str, content: bytes) -> Path:
        path = folder / name
        path.write_bytes(content)
        return path

    def write_image(name: str, pixels: np.ndarray) -> Path:
        path = folder / name
        assert cv2.imwrite(str(path), pixels), name
        return path

    out["corrupt"] = write_bytes("corrupt.jpg", np.random.default_rng(1).integers(0, 256, 4000, np.uint8).tobytes())
    out["truncated"] = write_bytes("truncated.jpg", data[: len(data) // 2])
    out["empty"] = write_bytes("empty.jpg", b"")
    out["text"] = write_bytes("notes.txt", b"this is a text file, not a picture\n" * 20)
    out["text_as_jpg"] = write_bytes("text.jpg", b"this is a text file, not a picture\n" * 20)
    out["folder"] = folder / "a_folder.jpg"
    out["folder"].mkdir()
    out["missing"] = folder / "missing.jpg"
    out["grey"] = write_image("grey.png", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    out["bgra"] = write_image("bgra.png", cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
    out["deep"] = write_image("deep16.png", image.astype(np.uint16) * 257)
    out["huge"] = write_image("huge.jpg", cv2.resize(image, (8000, 8000), interpolation=cv2.INTER_LINEAR))
    # over imageio.MAX_IMAGE_PIXELS (80 MP); flat grey compresses to a few hundred kB
    out["too_large"] = write_image("too_large.png", np.full((9000, 9000), 128, np.uint8))
    return out


BAD = ["corrupt", "truncated", "empty", "text", "text_as_jpg", "folder", "missing", "too_large"]
BAD_MESSAGES = {
    "corrupt": "not a readable image",
    "truncated": "not a readable image",
    "empty": "empty file",
    "text": "not a readable image",
    "text_as_jpg": "not a readable image",
    "folder": "is a folder",
    "missing": "no such file",
    "too_large": "image too large",
}
GOOD = ["face", "grey", "bgra", "deep", "huge"]
MIXED = ["face", "corrupt", "grey", "truncated", "empty", "bgra", "text", "folder", "deep", "missing",
         "text_as_jpg", "huge", "too_large", "other_face", "face"]


@pytest.fixture(scope="module")
def mixed(files: dict[str, Path]) -> tuple[Run, dict[str, dict]]:
    """One --jsonl run over good and bad inputs interleaved; the same image twice at the end."""
    run = run_embed("--jsonl", *(str(files[name]) for name in MIXED))
    records = run.records()
    assert len(records) == len(MIXED), run.stderr
    return run, dict(zip(MIXED, records))


def _embedding(record: dict) -> np.ndarray:
    assert record["error"] is None, record["error"]
    assert len(record["faces"]) == 1, record["path"]
    return np.asarray(record["faces"][0]["embedding"], np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
@needs_lfw
def test_real_face_gives_one_face_with_a_unit_embedding(files: dict[str, Path]) -> None:
    run = run_embed("--jsonl", str(files["face"]))
    assert run.returncode == 0, run.stderr
    (record,) = run.records()
    assert record["path"] == str(files["face"])
    assert record["error"] is None
    (face,) = record["faces"]
    assert set(face) == {"box", "score", "keypoints", "embedding"}
    x1, y1, x2, y2 = face["box"]
    assert 0 <= x1 < x2 <= 250 and 0 <= y1 < y2 <= 250
    assert 0.5 <= face["score"] <= 1.0
    assert len(face["keypoints"]) == 6 and all(len(point) == 2 for point in face["keypoints"])
    right_eye, left_eye = face["keypoints"][0], face["keypoints"][1]
    assert x1 < right_eye[0] < left_eye[0] < x2  # the subject's right eye is on the image's left
    assert y1 < right_eye[1] < (y1 + y2) / 2
    embedding = np.asarray(face["embedding"])
    assert embedding.shape == (128,)
    assert np.all(np.isfinite(embedding))
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
@needs_lfw
def test_order_and_paths_are_kept_across_good_and_bad_inputs(
    files: dict[str, Path], mixed: tuple[Run, dict[str, dict]]
) -> None:
    run, _ = mixed
    assert [record["path"] for record in run.records()] == [str(files[name]) for name in MIXED]
    for name, record in zip(MIXED, run.records()):
        assert set(record) == {"path", "faces", "error"}
        assert (record["error"] is None) == (name in GOOD or name == "other_face"), (name, record["error"])
    # the image given twice gives the same answer twice
    assert run.records()[0] == run.records()[-1]


@pytest.mark.slow
@needs_lfw
def test_a_batch_with_bad_inputs_exits_1_and_says_so(mixed: tuple[Run, dict[str, dict]]) -> None:
    run, _ = mixed
    assert run.returncode == 1  # cli.py: 1 = a problem the message explains (bad file ...)
    assert f"{len(BAD)} of {len(MIXED)} images could not be read" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow
@needs_lfw
def test_an_all_good_batch_exits_0(files: dict[str, Path]) -> None:
    run = run_embed("--jsonl", str(files["face"]), str(files["other_face"]))
    assert run.returncode == 0, run.stderr
    assert [len(record["faces"]) for record in run.records()] == [1, 1]


@pytest.mark.slow
@needs_lfw
@pytest.mark.parametrize("name", BAD)
def test_each_bad_input_gets_a_one_line_error(files: dict[str, Path], mixed: tuple[Run, dict[str, dict]], name: str) -> None:
    record = mixed[1][name]
    assert record["faces"] == []
    assert isinstance(record["error"], str) and record["error"]
    assert "\n" not in record["error"]
    assert BAD_MESSAGES[name] in record["error"]
    assert str(files[name]) in record["error"]


@pytest.mark.slow
@needs_lfw
@pytest.mark.parametrize("name", BAD)
def test_a_bad_input_alone_exits_1_without_traceback(files: dict[str, Path], name: str) -> None:
    run = run_embed("--jsonl", str(files[name]))
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    (record,) = run.records()
    assert record["path"] == str(files[name]) and record["error"]


@pytest.mark.slow
@needs_lfw
@pytest.mark.parametrize(("name", "min_cosine"), [("grey", 0.9), ("bgra", 0.9999), ("deep", 0.9999), ("huge", 0.9)])
def test_other_layouts_and_sizes_find_the_same_face(mixed: tuple[Run, dict[str, dict]], name: str, min_cosine: float) -> None:
    records = mixed[1]
    embedding = _embedding(records[name])
    assert len(records[name]["faces"][0]["keypoints"]) == 6
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)
    assert _cosine(embedding, _embedding(records["face"])) > min_cosine
    if name == "huge":  # box scales with the image (250 -> 8000 px)
        box = np.asarray(records[name]["faces"][0]["box"]) / 32.0
        np.testing.assert_allclose(box, records["face"]["faces"][0]["box"], atol=4.0)


@pytest.mark.slow
@needs_lfw
def test_huge_images_do_not_take_minutes(files: dict[str, Path]) -> None:
    run = run_embed("--jsonl", str(files["huge"]), str(files["too_large"]))
    assert run.seconds < 60, run.seconds
    huge, too_large = run.records()
    assert len(huge["faces"]) == 1
    assert "image too large (9000x9000 pixels, 81 MP; at most 80 MP)" in too_large["error"]


@pytest.mark.slow
@needs_lfw
def test_different_people_are_far_apart(mixed: tuple[Run, dict[str, dict]]) -> None:
    records = mixed[1]
    assert _cosine(_embedding(records["face"]), _embedding(records["other_face"])) < 0.9


@pytest.mark.slow
@needs_lfw
def test_fp32_and_int8_agree(files: dict[str, Path]) -> None:
    paths = [str(files["face"]), str(files["other_face"])]
    int8 = run_embed("--jsonl", "--precision", "int8", *paths)
    fp32 = run_embed("--jsonl", "--precision", "fp32", *paths)
    assert int8.returncode == fp32.returncode == 0, int8.stderr + fp32.stderr
    for a, b in zip(int8.records(), fp32.records()):
        assert a["faces"][0]["box"] == b["faces"][0]["box"]  # same detector, same landmarks
        assert _cosine(_embedding(a), _embedding(b)) > 0.99
        assert _embedding(a).tolist() != _embedding(b).tolist()  # two different models really ran


@pytest.mark.slow
@needs_lfw
def test_without_jsonl_prints_one_indented_json_array(files: dict[str, Path]) -> None:
    names = ["face", "missing", "grey"]
    paths = [str(files[name]) for name in names]
    plain = run_embed(*paths)
    streamed = run_embed("--jsonl", *paths)
    assert plain.returncode == streamed.returncode == 1
    records = json.loads(plain.stdout)  # the whole stdout is one JSON document
    assert isinstance(records, list)
    assert plain.stdout.startswith("[\n")  # indented, not one line per record
    assert records == streamed.records()
    assert [record["path"] for record in records] == paths


@pytest.mark.slow
@needs_lfw
def test_path_is_reported_exactly_as_given(files: dict[str, Path]) -> None:
    folder = files["grey"].parent
    run = run_embed("--jsonl", "grey.png", "./bgra.png", "nope.png", cwd=folder)
    assert [record["path"] for record in run.records()] == ["grey.png", "./bgra.png", "nope.png"]
    assert [len(record["faces"]) for record in run.records()] == [1, 1, 0]


@pytest.mark.slow
@needs_lfw
def test_cli_matches_face_analyzer_in_process(files: dict[str, Path]) -> None:
    from edgeface.config import RecognitionConfig
    from edgeface.io.images import read_image
    from edgeface.vision.analyzer import FaceAnalyzer

    run = run_embed("--jsonl", str(files["face"]), str(files["grey"]))
    analyzer = FaceAnalyzer.from_config(RecognitionConfig())
    for record in run.records():
        faces = analyzer.analyze(read_image(record["path"]))
        assert len(faces) == len(record["faces"]) == 1
        cli_face = record["faces"][0]
        np.testing.assert_allclose(cli_face["embedding"], faces.embeddings[0], atol=2e-6)
        np.testing.assert_allclose(cli_face["box"], faces.detections.xyxy[0], atol=0.01)
        np.testing.assert_allclose(cli_face["keypoints"], faces.detections.kps[0], atol=0.01)
        assert cli_face["score"] == pytest.approx(float(faces.detections.score[0]), abs=1e-4)


# --- truncated JPEGs (imageio.jpeg_is_truncated): OpenCV 4.x decodes them as partly grey images ---

def _jpeg(flags: list[int]) -> bytes:
    rng = np.random.default_rng(3)
    pixels = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), (7, 7), 0)
    ok, encoded = cv2.imencode(".jpg", pixels, flags)
    assert ok
    return encoded.tobytes()


JPEG_KINDS = {
    "baseline": [],
    "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
    "restart_markers": [cv2.IMWRITE_JPEG_RST_INTERVAL, 2],
}


@pytest.mark.parametrize("kind", sorted(JPEG_KINDS))
def test_complete_jpegs_are_not_truncated(kind: str) -> None:
    from edgeface.io.images import jpeg_is_truncated

    data = _jpeg(JPEG_KINDS[kind])
    assert not jpeg_is_truncated(data)
    assert not jpeg_is_truncated(data + b"trailer after EOI \xff\xda\x00\x08 junk")  # e.g. motion-photo data


@pytest.mark.parametrize("kind", sorted(JPEG_KINDS))
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.5, 0.9, 0.999])
def test_cut_jpegs_are_truncated_and_refused(tmp_path: Path, kind: str, fraction: float) -> None:
    from edgeface.errors import ImageError
    from edgeface.io.images import jpeg_is_truncated, read_image

    data = _jpeg(JPEG_KINDS[kind])
    cut = data[: int(len(data) * fraction)]
    assert jpeg_is_truncated(cut)
    path = tmp_path / "cut.jpg"
    path.write_bytes(cut)
    with pytest.raises(ImageError, match="not a readable image") as caught:
        read_image(path)
    assert "\n" not in str(caught.value)


def test_a_complete_thumbnail_does_not_hide_a_truncated_main_image() -> None:
    from edgeface.io.images import jpeg_is_truncated

    main, thumbnail = _jpeg([]), _jpeg([cv2.IMWRITE_JPEG_QUALITY, 20])
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    with_thumbnail = main[:2] + app1 + main[2:]
    assert not jpeg_is_truncated(with_thumbnail)
    assert jpeg_is_truncated(with_thumbnail[: len(with_thumbnail) - len(main) // 2])


def test_non_jpeg_data_is_left_to_the_decoder() -> None:
    from edgeface.io.images import jpeg_is_truncated

    ok, png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    assert ok
    assert not jpeg_is_truncated(png.tobytes())
    assert not jpeg_is_truncated(b"")
    assert not jpeg_is_truncated(b"\xff\xd8garbage without markers")
