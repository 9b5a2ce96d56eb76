"""systemd integration: the unit file (checked by systemd-analyze) and sd_notify / watchdog messages,
read from a real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeface.service.mqtt.client import PASSWORD_CREDENTIAL
from edgeface.service.station import SECRET_CREDENTIAL
from edgeface.service.systemd import (
    Notifier,
    WatchdogFeeder,
    socket_address,
    watchdog_interval_s,
)

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "edgeface.service"
DROP_INS = [REPO / "systemd" / name for name in ("no-mqtt-password.conf", "jetson.conf", "libcamera.conf")]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str | bytes, env_value: str) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address)
        self.socket.settimeout(2.0)
        self.env_value = env_value

    def receive(self, timeout_s: float = 2.0) -> dict[str, str]:
        self.socket.settimeout(timeout_s)
        try:
            data = self.socket.recv(4096).decode()
        finally:
            self.socket.settimeout(2.0)
        return dict(line.split("=", 1) for line in data.split("\n"))

    def pending_count(self) -> int:
        """Datagrams queued and not yet read (0 or more)."""
        try:
            self.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):
            return 0
        return 1

    def pending(self) -> list[dict[str, str]]:
        """Every datagram already queued, without waiting."""
        received = []
        self.socket.setblocking(False)
        try:
            while True:
                received.append(dict(line.split("=", 1) for line in self.socket.recv(4096).decode().split("\n")))
        except BlockingIOError:
            pass
        finally:
            self.socket.settimeout(2.0)
        return received

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    directory = tmp_path if len(str(tmp_path)) < 80 else Path(tempfile.mkdtemp(prefix="sdn"))  # sun_path is 108 bytes
    path = directory / "notify"
    receiver = FakeSystemd(str(path), str(path))
    yield receiver
    receiver.close()


# -- sd_notify ---------------------------------------------------------------------------------------


def test_ready_status_watchdog_stopping_reach_the_socket(fake_systemd: FakeSystemd) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": fake_systemd.env_value})
    assert notifier.enabled
    assert notifier.ready("camera 0 open,\nmodels loaded")
    assert fake_systemd.receive() == {"READY": "1", "STATUS": "camera 0 open, models loaded"}  # one line
    assert notifier.status("12.5 fps, 2 faces")
    assert fake_systemd.receive() == {"STATUS": "12.5 fps, 2 faces"}
    assert notifier.watchdog()
    assert fake_systemd.receive() == {"WATCHDOG": "1"}
    assert notifier.extend_timeout(90)
    assert fake_systemd.receive() == {"EXTEND_TIMEOUT_USEC": "90000000"}
    assert notifier.stopping("shutting down")
    assert fake_systemd.receive() == {"STOPPING": "1", "STATUS": "shutting down"}
    notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"edgeface-test-{uuid.uuid4().hex}"
    receiver = FakeSystemd(b"\0" + name.encode(), f"@{name}")
    try:
        notifier = Notifier({"NOTIFY_SOCKET": receiver.env_value})
        assert notifier.address == b"\0" + name.encode()
        assert notifier.ready()
        assert receiver.receive() == {"READY": "1"}
    finally:
        receiver.close()


def test_a_child_process_notifies_from_its_environment(fake_systemd: FakeSystemd) -> None:
    code = "from edgeface.service.systemd import Notifier; Notifier().ready('child up')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "NOTIFY_SOCKET": fake_systemd.env_value})
    assert fake_systemd.receive() == {"READY": "1", "STATUS": "child up"}


def test_outside_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("x") is False and notifier.watchdog() is False and notifier.stopping() is False
    feeder = WatchdogFeeder(environ={})
    assert not feeder.enabled
    assert all(feeder.frame_processed() is False for _ in range(100))


def test_unusable_socket_values_turn_notifications_off(caplog: pytest.LogCaptureFixture) -> None:
    assert socket_address("relative/notify") is None
    assert socket_address("vsock:2:1234") is None
    assert "neither an absolute path" in caplog.text
    assert socket_address("@") is None
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_a_vanished_socket_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert notifier.watchdog() is False
    assert notifier.watchdog() is False
    assert caplog.text.count("cannot notify systemd") == 1  # warned once, not once per frame


def test_malformed_assignments_are_refused(fake_systemd: FakeSystemd) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": fake_systemd.env_value})
    with pytest.raises(ValueError, match="KEY=value"):
        notifier.send("READY")
    with pytest.raises(ValueError, match="KEY=value"):
        notifier.send("STATUS=a\nREADY=1")


# -- watchdog ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_from_the_environment(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(environ) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pings_at_most_every_half_timeout_and_only_after_frames(fake_systemd: FakeSystemd) -> None:
    clock = Clock()
    feeder = WatchdogFeeder(environ={"NOTIFY_SOCKET": fake_systemd.env_value, "WATCHDOG_USEC": "2000000"}, clock=clock)
    assert feeder.enabled and feeder.interval_s == 1.0
    feeder.start()  # READY=1 sent: systemd's timer runs from here
    sent = []
    for _ in range(30):  # 3 s of frames at 10 fps
        clock.now += 0.1
        sent.append(feeder.frame_processed())
    assert 2 <= sum(sent) <= 3  # about one ping per second, never one per frame
    assert [message for message in fake_systemd.pending()] == [{"WATCHDOG": "1"}] * sum(sent)
    clock.now += 60  # the camera hangs: no frame for a minute, so nothing is sent
    assert fake_systemd.pending() == []
    assert feeder.frame_processed() is True  # the first frame after it pings at once
    assert fake_systemd.pending() == [{"WATCHDOG": "1"}]


def test_a_hung_frame_loop_stops_the_pings_in_real_time(fake_systemd: FakeSystemd) -> None:
    feeder = WatchdogFeeder(environ={"NOTIFY_SOCKET": fake_systemd.env_value, "WATCHDOG_USEC": "100000"})  # 0.1 s
    assert feeder.interval_s == pytest.approx(0.05)
    started = time.monotonic()
    while time.monotonic() - started < 0.5:  # frames flowing
        feeder.frame_processed()
        time.sleep(0.005)
    flowing = fake_systemd.pending()
    assert 3 <= len(flowing) <= 11  # ~0.5 s / 0.05 s (fewer when the machine is loaded)
    time.sleep(0.5)  # frames stop
    assert fake_systemd.pending() == []


def test_explicit_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        WatchdogFeeder(Notifier({}), interval_s=0)


# -- the unit file -----------------------------------------------------------------------------------


def unit_settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment, in order (systemd keys may repeat)."""
    section, settings = "", []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key.strip(), value.strip()))
    return settings


def test_unit_has_the_required_settings() -> None:
    settings = unit_settings(UNIT)
    service = {key: value for section, key, value in settings if section == "Service"}
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert re.fullmatch(r"\d+s", service["WatchdogSec"])
    unit = {key: value for section, key, value in settings if section == "Unit"}
    assert "StartLimitIntervalSec" in unit and int(unit["StartLimitBurst"]) >= 1
    for key, value in {"ProtectSystem": "strict", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                       "StateDirectory": "edgeface", "DevicePolicy": "closed", "User": "edgeface"}.items():
        assert service[key] == value, key
    device_allow = [value for section, key, value in settings if key == "DeviceAllow"]
    assert "char-video4linux rw" in device_allow
    assert "ProcSubset" not in service  # onnxruntime needs /proc/cpuinfo
    # The credential id is the file name edgeface.service.mqtt.client looks for under $CREDENTIALS_DIRECTORY.
    credentials = [value for section, key, value in settings if key == "LoadCredential"]
    assert [value.split(":", 1)[0] for value in credentials] == [PASSWORD_CREDENTIAL, SECRET_CREDENTIAL]
    # Issue 15: a memory limit, a network allow list, private state, no source on the command line.
    assert service["MemoryHigh"] == "512M" and service["MemoryMax"] == "768M"
    assert service["IPAddressDeny"] == "any" and "192.168.0.0/16" in service["IPAddressAllow"]
    assert service["StateDirectoryMode"] == "0700" and service["UMask"] == "0077"
    assert "--source" not in service["ExecStart"] and "EDGEFACE_SOURCE" not in service["ExecStart"]
    drop_in = unit_settings(UNIT.parent / "no-mqtt-password.conf")
    assert [value for _, key, value in drop_in if key == "LoadCredential"] == [
        "", f"{SECRET_CREDENTIAL}:/etc/edgeface/command_secret"]


def _installable_copy(directory: Path, drop_ins: list[Path] = ()) -> Path:  # type: ignore[assignment]
    """The unit (and drop-ins) with the programs they start replaced by ones this machine has:
    verify checks that ExecStart= names an executable. libcamerify becomes env, which also runs the
    command after it."""
    edgeface = shutil.which("edgeface") or str(Path(sys.executable).parent / "edgeface")
    if not os.access(edgeface, os.X_OK):
        pytest.skip("the edgeface command is not installed (pip install -e .)")

    def installable(text: str) -> str:
        return text.replace("/opt/edgeface/venv/bin/edgeface", edgeface).replace("/usr/bin/libcamerify", shutil.which("env") or "/usr/bin/env")

    text = UNIT.read_text()
    assert "/opt/edgeface/venv/bin/edgeface" in text
    unit = directory / "edgeface.service"
    unit.write_text(installable(text))
    if drop_ins:
        (directory / "edgeface.service.d").mkdir()
        for drop_in in drop_ins:
            (directory / "edgeface.service.d" / drop_in.name).write_text(installable(drop_in.read_text()))
    return unit


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit.parent}:", "SYSTEMD_LOG_LEVEL": "info"}
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], check=False, capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)")
@pytest.mark.parametrize("with_drop_ins", [False, True], ids=["unit", "unit+drop-ins"])
def test_systemd_analyze_verify_is_clean(tmp_path: Path, with_drop_ins: bool) -> None:
    unit = _installable_copy(tmp_path, DROP_INS if with_drop_ins else [])
    result = _verify(unit)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_notices_mistakes(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing program are reported."""
    unit = _installable_copy(tmp_path)
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs=") + "\n")
    assert "WatchdogSecs" in _verify(unit).stderr
    missing = tmp_path / "other"
    missing.mkdir()
    (missing / "edgeface.service").write_text(UNIT.read_text().replace("/opt/edgeface/venv/bin/edgeface", "/nonexistent/edgeface"))
    result = _verify(missing / "edgeface.service")
    assert result.returncode != 0 and "/nonexistent/edgeface" in result.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    unit = _installable_copy(tmp_path)
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
                            check=False, capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for edgeface\.service: ([\d.]+)", result.stdout + result.stderr)
    if found is None:
        pytest.skip(f"this systemd-analyze cannot assess units offline: {(result.stderr or result.stdout).strip()[:200]}")
    assert float(found.group(1)) <= 2.5, result.stdout[-2000:]  # systemd: < 3 is "OK"; the default is 9.6 "UNSAFE"


def test_edgeface_run_notifies_ready_feeds_the_watchdog_and_says_stopping(
    fake_systemd: FakeSystemd, tmp_path: Path
) -> None:
    """The real camera loop under a stand-in systemd: READY=1 once running, WATCHDOG=1 while frames are
    processed (WATCHDOG_USEC 0.1 s -> a ping at most every 0.05 s), STOPPING=1 at the end."""
    import cv2
    import numpy as np

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    for k in range(150):
        frame = np.full((240, 320, 3), 40 + k % 100, np.uint8)
        writer.write(frame)
    writer.release()
    env = {**os.environ, "NOTIFY_SOCKET": fake_systemd.env_value, "WATCHDOG_USEC": "100000",
           "EDGEFACE_GALLERY": str(tmp_path / "absent.db")}
    # Read the datagrams while the run goes on: the kernel queues only net.unix.max_dgram_qlen (10 here) of
    # them and the notifier never blocks, so reading them only at the end loses the last ones on a slow run.
    messages: list[dict[str, str]] = []
    done = threading.Event()

    def drain() -> None:
        while not done.is_set() or fake_systemd.pending_count():
            try:
                messages.append(fake_systemd.receive(0.05))
            except TimeoutError:
                continue

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    result = subprocess.run([sys.executable, "-m", "edgeface.cli", "run", "--source", str(video), "--every-frame"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    done.set()
    reader.join(10)
    assert result.returncode == 0, result.stderr
    kinds = [next(iter(m)) for m in messages]
    assert kinds[0] == "READY" and "models loaded" in messages[0]["STATUS"]
    assert kinds[-1] == "STOPPING"
    assert kinds.count("WATCHDOG") >= 1, kinds
    assert set(kinds) == {"READY", "WATCHDOG", "STOPPING"}
