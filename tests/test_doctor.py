"""`edgeface doctor`: every check against the real thing (model files, runtimes, a Mosquitto broker,
SQLite gallery files, a video file, the file system)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from _mqtt_helpers import PrivateBroker, free_port

from edgeface.cli import doctor as doctor_cli
from edgeface.io.models import MODELS_DIR_ENV, models_dir
from edgeface.service.doctor import (
    Check,
    DoctorOptions,
    check_broker,
    check_camera,
    check_disk,
    check_gallery,
    check_models,
    run_checks,
)
from edgeface.storage.gallery import Gallery, SecondTemplate


def run_doctor(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser(prog="edgeface")
    doctor_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", *argv])
    status = args.handler(args)
    return status, capsys.readouterr().out.splitlines()


def statuses(checks: list[Check]) -> set[str]:
    return {check.status for check in checks}


@pytest.fixture
def corrupted_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped models with one byte of the INT8 embedder flipped, selected by EDGEFACE_MODELS_DIR."""
    copy = tmp_path / "models"
    shutil.copytree(models_dir(), copy)
    target = copy / "dlib_resnet_v1_int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    monkeypatch.setenv(MODELS_DIR_ENV, str(copy))
    return copy


# -- models ---------------------------------------------------------------------------------------


def test_intact_models_are_ok() -> None:
    checks = check_models()
    assert len(checks) >= 5 and statuses(checks) == {"ok"}
    assert any("dlib_resnet_v1_int8.onnx" in check.detail for check in checks)


def test_a_corrupted_model_fails_with_a_fix(corrupted_models: Path) -> None:
    checks = check_models()
    bad = [check for check in checks if check.status == "fail"]
    assert len(bad) == 1
    assert str(corrupted_models / "dlib_resnet_v1_int8.onnx") in bad[0].detail and "corrupted" in bad[0].detail
    assert bad[0].fix is not None and "reinstall" in bad[0].fix
    assert [check.status for check in checks].count("ok") == len(checks) - 1


def test_doctor_command_exits_1_and_says_what_to_fix(corrupted_models: Path, capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    status, lines = run_doctor(["--gallery", str(tmp_path / "none.db")], capsys)
    assert status == 1
    failed = [line for line in lines if line.startswith("fail")]
    assert any("models" in line and "dlib_resnet_v1_int8.onnx" in line and "-> reinstall" in line for line in failed)
    # The embedder cannot load the corrupted file either: that is reported, not a crash.
    assert any(line.split()[1] == "embedder" for line in failed)
    assert not any("crashed" in line for line in lines)


@pytest.mark.slow
def test_doctor_command_on_a_sound_setup(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    gallery = tmp_path / "gallery.db"
    with Gallery(gallery) as g:
        g.add_templates("Ada", np.eye(128, dtype=np.float32)[:2],
                        second=[SecondTemplate("sface_2021dec", "int8", v) for v in np.eye(128, dtype=np.float32)[2:4]])
    status, lines = run_doctor(["--gallery", str(gallery)], capsys)
    assert status == 0, "\n".join(lines)
    by_name = {line.split()[1]: line for line in lines}
    assert by_name["embedder"].startswith("ok") and "INT8 self-check passed" in by_name["embedder"]
    assert by_name["detector"].startswith("ok")
    assert by_name["gallery"].startswith("ok") and "1 person, 2 templates" in by_name["gallery"]
    assert any(line.startswith("ok    runtime   onnxruntime") for line in lines)


def test_a_bad_config_fails_but_the_other_checks_still_run(tmp_path: Path) -> None:
    config = tmp_path / "edgeface.yaml"
    config.write_text("recognition:\n  detector:\n    modle: full\n")
    checks = list(run_checks(DoctorOptions(config_path=config, gallery=tmp_path / "none.db")))
    assert checks[0].name == "config" and checks[0].status == "fail" and "modle" in checks[0].detail
    assert {"models", "embedder", "gallery", "disk"} <= {check.name for check in checks}


# -- broker ---------------------------------------------------------------------------------------


def test_shared_broker_is_reachable() -> None:
    try:
        socket.create_connection(("127.0.0.1", 1883), timeout=1).close()
    except OSError:
        pytest.skip("no broker on 127.0.0.1:1883 on this machine")
    check = check_broker("mqtt://127.0.0.1:1883", environ={})
    assert check.status == "ok", check.line()
    assert "connected without credentials" in check.detail


def test_a_closed_port_fails() -> None:
    port = free_port()  # bound and released: nothing listens there
    check = check_broker(f"mqtt://127.0.0.1:{port}", timeout_s=2, environ={})
    assert check.status == "fail" and "cannot connect" in check.detail
    assert check.fix is not None and "broker running" in check.fix


def test_no_broker_configured_is_ok() -> None:
    check = check_broker(None, None)
    assert check.status == "ok" and "stdout" in check.detail


def test_bad_broker_urls_fail_with_the_reason(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, lines = run_doctor(["--mqtt-url", "http://127.0.0.1:1883", "--gallery", str(tmp_path / "g.db")], capsys)
    broker = next(line for line in lines if line.split()[1] == "broker")
    assert status == 1 and broker.startswith("fail") and "mqtt://" in broker


@pytest.fixture
def auth_broker(tmp_path: Path):
    secret = f"s3cret-{uuid.uuid4().hex}"
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "station", secret], check=True, capture_output=True)
    broker = PrivateBroker(tmp_path, port=free_port())
    broker.config.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
                             "persistence false\nuser root\n")
    broker.start()
    yield broker, secret
    broker.close()


def test_broker_auth_through_the_systemd_credential(auth_broker: tuple[PrivateBroker, str], tmp_path: Path) -> None:
    broker, secret = auth_broker
    url = f"mqtt://station@127.0.0.1:{broker.port}"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt_password").write_text(secret + "\n")
    good = check_broker(url, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert good.status == "ok" and "as station" in good.detail, good.line()
    wrong = check_broker(url, environ={"EDGEFACE_MQTT_PASSWORD": "not-it"})
    assert wrong.status == "fail" and "refused" in wrong.detail
    assert wrong.fix is not None and "password" in wrong.fix
    assert "not-it" not in wrong.line() and secret not in good.line()
    anonymous = check_broker(f"mqtt://127.0.0.1:{broker.port}", environ={})
    assert anonymous.status == "fail" and "refused" in anonymous.detail


# -- gallery --------------------------------------------------------------------------------------


def make_gallery(path: Path, people: int = 60) -> None:
    rng = np.random.default_rng(0)
    with Gallery(path) as gallery:
        for i in range(people):  # as enrollment stores them: dlib and SFace embeddings
            gallery.add_templates(f"person {i}", rng.normal(size=(3, 128)).astype(np.float32),
                                  second=[SecondTemplate("sface_2021dec", "int8", v)
                                          for v in rng.normal(size=(3, 128)).astype(np.float32)])


def test_an_intact_gallery_is_ok(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    make_gallery(path)
    check = check_gallery(path)
    assert check.status == "ok" and "60 people, 180 templates" in check.detail


def test_a_corrupt_gallery_fails(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    make_gallery(path)
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    assert len(data) >= 4 * page_size
    data[2 * page_size + 8 : 3 * page_size] = bytes(range(256)) * ((page_size - 8) // 256) + bytes((page_size - 8) % 256)
    path.write_bytes(bytes(data))
    check = check_gallery(path)
    assert check.status == "fail" and "corrupt" in check.detail, check.line()
    assert check.fix is not None and "restore" in check.fix


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"\x00garbage" * 100, "corrupted or not a gallery"), (b"", "not an edgeface gallery")],
    ids=["random-bytes", "empty-file"],
)
def test_files_that_are_not_galleries_fail(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "gallery.db"
    path.write_bytes(content)
    check = check_gallery(path)
    assert check.status == "fail" and expected in check.detail, check.line()


def test_a_missing_gallery_is_a_warning(tmp_path: Path) -> None:
    check = check_gallery(tmp_path / "nothing.db")
    assert check.status == "warn" and check.fix is not None and "enroll" in check.fix


# -- camera and disk ------------------------------------------------------------------------------


def test_a_video_file_source_gives_a_frame(tmp_path: Path) -> None:
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    assert writer.isOpened()
    for i in range(5):
        writer.write(np.full((240, 320, 3), 40 * i, np.uint8))
    writer.release()
    check = check_camera(str(path), timeout_s=10)
    assert check.status == "ok" and "320x240" in check.detail, check.line()


def test_a_missing_source_fails_with_a_hint(tmp_path: Path) -> None:
    check = check_camera(str(tmp_path / "missing.mp4"), timeout_s=5)
    assert check.status == "fail" and check.fix is not None


def test_disk_thresholds(tmp_path: Path) -> None:
    assert statuses(check_disk([tmp_path / "gallery.db"])) <= {"ok", "warn"}
    full = check_disk([tmp_path], warn_mb=1e12, fail_mb=1e12)  # needs more room than any disk has
    assert statuses(full) == {"fail"} and full[0].fix is not None
    tight = check_disk([tmp_path / "not" / "yet" / "made"], warn_mb=1e12, fail_mb=0)
    assert statuses(tight) == {"warn"} and str(tmp_path) in tight[0].detail


# -- issue 15: private files ---------------------------------------------------------------------------


def test_files_with_templates_and_events_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Before: with umask 022, gallery.db (and -wal, -shm), the outbox, `gallery export` files and
    ~/.local/state/edgeface were 0644/0755, and doctor said nothing."""
    import numpy as np

    from edgeface.config import MqttConfig
    from edgeface.service.doctor import check_permissions, private_paths
    from edgeface.service.mqtt.client import default_outbox_path
    from edgeface.storage.gallery import Gallery
    from edgeface.storage.outbox import Outbox

    environ = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    outbox_path = default_outbox_path("hall", environ)
    previous = os.umask(0o022)
    try:
        with Gallery(tmp_path / "gallery.db") as gallery:
            gallery.add_templates("Ada", np.eye(128, dtype=np.float32)[0])
            gallery.export_to(tmp_path / "export.json")
            mode = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.is_file()}
        with Outbox(outbox_path) as outbox:
            outbox.put("t", b"event")
            outbox_modes = {p.name: p.stat().st_mode & 0o777 for p in outbox_path.parent.iterdir()}
    finally:
        os.umask(previous)
    assert mode == {"gallery.db": 0o600, "gallery.db-wal": 0o600, "gallery.db-shm": 0o600, "export.json": 0o600}
    assert outbox_modes and set(outbox_modes.values()) == {0o600}
    assert outbox_path.parent.stat().st_mode & 0o777 == 0o700  # ~/.local/state/edgeface
    from edgeface.config import Config

    config = Config(station_id="hall", mqtt=MqttConfig())
    files, folders = private_paths(config, tmp_path / "gallery.db", environ)
    assert [c.status for c in check_permissions(files, folders)] == ["ok"]

    os.chmod(tmp_path / "gallery.db", 0o644)
    os.chmod(outbox_path.parent, 0o755)
    checks = check_permissions(files, folders)
    assert [(c.status, c.fix) for c in checks] == [
        ("warn", f"chmod 600 {tmp_path / 'gallery.db'}"), ("warn", f"chmod 700 {outbox_path.parent}")]
    assert "is 0644 (open to others)" in checks[0].detail


def test_doctor_says_whether_commands_are_signed(tmp_path: Path) -> None:
    from edgeface.config import MqttConfig
    from edgeface.service.doctor import check_commands

    empty = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert check_commands(None).status == "ok"
    unsigned = check_commands(MqttConfig(), empty)
    assert unsigned.status == "warn" and "answers only status" in unsigned.detail
    assert "edgeface command-secret" in (unsigned.fix or "")
    assert check_commands(MqttConfig(allow_unsigned_commands=True), empty).status == "warn"
    signed = check_commands(MqttConfig(), {**empty, "EDGEFACE_COMMAND_SECRET": "0123456789abcdef0123"})
    assert signed.status == "ok" and "must be signed" in signed.detail


def test_doctor_reports_the_second_opinion_self_check() -> None:
    from edgeface.service.doctor import check_second_opinion

    on = check_second_opinion("auto")
    assert on.status == "ok" and "INT8 SFace self-check passed" in on.detail
    assert check_second_opinion("off").status == "ok" and "dlib alone" in check_second_opinion("off").detail
