"""`edgeface doctor`: checks a station's setup and says what to fix.

Each check returns one :class:`Check` (ok / warn / fail, what was found, and for warn and fail what
to do). The checks are real: model files are hashed against the manifest, the detector and the INT8
embedder are loaded and run on this CPU, the camera is opened and a frame read, the broker is
connected to (with the configured credentials), the gallery file is opened read-only and run
through SQLite's ``PRAGMA integrity_check``, and the free space of the gallery's file system is
measured. A check that crashes reports ``fail`` with the error instead of stopping the others.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from edgeface.errors import EdgefaceError
from edgeface.text import first_line

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail"]

DISK_WARN_FREE_MB = 500
DISK_FAIL_FREE_MB = 50
"""Free space under which the gallery/outbox file system is a warning / a failure. The outbox holds
up to 100,000 events (~50 MB); SQLite needs room for its journal on every write."""

CAMERA_TIMEOUT_S = 10.0
BROKER_TIMEOUT_S = 5.0
REINSTALL_HINT = "reinstall edgeface (pip install --force-reinstall edgeface) or run `edgeface models build`"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<9} {self.detail}"
        return f"{text} -> {self.fix}" if self.fix else text


def _guarded(name: str, function: Callable[[], Check | list[Check]]) -> list[Check]:
    try:
        result = function()
    except EdgefaceError as error:
        return [Check(name, "fail", str(error))]
    except Exception as error:  # a check must never take the others down
        log.debug("check %s crashed", name, exc_info=True)
        return [Check(name, "fail", f"check crashed: {first_line(error, with_type=True)}", "run with -v and report it")]
    return result if isinstance(result, list) else [result]


# -- models and runtimes ----------------------------------------------------------------------------


def check_models(directory: Path | None = None) -> list[Check]:
    """Every file in the model manifest: present, right size, right sha256."""
    from edgeface.errors import ModelFileError
    from edgeface.io.models import models_dir, read_manifest, verified_model_path

    try:
        directory = directory or models_dir()
        manifest = read_manifest(directory)
    except ModelFileError as error:
        return [Check("models", "fail", str(error), REINSTALL_HINT)]
    checks = []
    for name in manifest:
        try:
            verified_model_path(name, directory)
            checks.append(Check("models", "ok", f"{name} sha256 matches the manifest"))
        except ModelFileError as error:
            checks.append(Check("models", "fail", str(error).split(";")[0], REINSTALL_HINT))
    return checks


def check_runtimes() -> list[Check]:
    """The inference runtimes import, and which accelerators onnxruntime offers."""
    from importlib import metadata

    checks = [Check("python", "ok", f"{sys.version.split()[0]} on {os.uname().machine}")]
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        accelerated = [p for p in providers if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
        checks.append(Check("runtime", "ok", f"onnxruntime {onnxruntime.__version__}, providers: {', '.join(providers)}"
                            + ("" if accelerated else " (CPU only)")))
    except Exception as error:
        checks.append(Check("runtime", "fail", f"onnxruntime does not load: {first_line(error, with_type=True)}",
                            "pip install --force-reinstall onnxruntime (onnxruntime-gpu on Jetson)"))
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: F401

        checks.append(Check("runtime", "ok", f"ai-edge-litert {metadata.version('ai-edge-litert')}"))
    except Exception as error:
        checks.append(Check("runtime", "fail", f"ai-edge-litert does not load: {first_line(error, with_type=True)}",
                            "pip install --force-reinstall ai-edge-litert"))
    try:
        import cv2

        build = cv2.getBuildInformation()
        gstreamer = any("GStreamer:" in line and "YES" in line for line in build.splitlines())
        v4l2 = any(("V4L/V4L2:" in line or "v4l/v4l2:" in line.lower()) and "YES" in line for line in build.splitlines())
        checks.append(Check("runtime", "ok", f"opencv {cv2.__version__}, V4L2 {'yes' if v4l2 else 'no'}, "
                            f"GStreamer {'yes' if gstreamer else 'no (libcamerasrc pipelines need an OpenCV built with it)'}"))
    except Exception as error:
        checks.append(Check("runtime", "fail", f"opencv does not load: {first_line(error, with_type=True)}",
                            "pip install --force-reinstall opencv-python-headless"))
    return checks


def check_detector(model: str = "auto") -> Check:
    """Load the configured BlazeFace model(s) through LiteRT and run them once on this CPU."""
    import numpy as np

    from edgeface.vision.blazeface import make_detector

    started = time.perf_counter()
    detector = make_detector(model)  # type: ignore[arg-type]
    detector.detect(np.zeros((240, 320, 3), np.uint8))
    what = "full- and short-range" if model == "auto" else f"{model}-range"
    return Check("detector", "ok", f"BlazeFace {what} runs ({(time.perf_counter() - started) * 1000:.0f} ms incl. loading)")


def check_embedder() -> Check:
    """Load the INT8 embedder, which runs its self-check against FP32 on this CPU."""
    from edgeface.vision.embed import SELFCHECK_MAX_DISTANCE, Embedder

    embedder = Embedder(precision="int8")
    if embedder.precision != "int8":
        return Check("embedder", "warn", "the INT8 self-check failed on this CPU; edgeface runs the FP32 embedder instead "
                     "(same accuracy, about 2-3x slower)",
                     "report the CPU (cat /proc/cpuinfo) and onnxruntime version; nothing to do to keep running")
    return Check("embedder", "ok", f"INT8 self-check passed on this CPU (distance {embedder.selfcheck_distance:.3f}, "
                 f"limit {SELFCHECK_MAX_DISTANCE})")


def check_second_opinion(mode: str) -> Check:
    """Load SFace (the second opinion) as the station would: its INT8 self-check on this CPU."""
    if mode == "off":
        return Check("sface", "ok", "second opinion off (recognition.second_opinion): dlib alone decides")
    from edgeface.vision.sface import SFACE_SELFCHECK_MIN_COSINE, SFaceEmbedder

    embedder = SFaceEmbedder("int8")
    if embedder.precision != "int8":
        return Check("sface", "warn", "the INT8 SFace self-check failed on this CPU; the FP32 SFace runs instead "
                     "(same accuracy, ~2x slower, peak memory ~290 MB)",
                     "report the CPU and onnxruntime version; or set recognition.second_opinion: off to save the memory")
    return Check("sface", "ok", f"second opinion ({mode}): INT8 SFace self-check passed on this CPU (cosine "
                 f"{embedder.selfcheck_cosine:.3f}, limit {SFACE_SELFCHECK_MIN_COSINE})")


# -- camera ---------------------------------------------------------------------------------------


def check_camera(source: str | None, timeout_s: float = CAMERA_TIMEOUT_S) -> Check:
    """With a source: open it and read one frame. Without: look for usable /dev/video* devices."""
    if source is None:
        devices = sorted(glob.glob("/dev/video*"))
        if not devices:
            return Check("camera", "warn", "no /dev/video* device",
                         "plug in a camera (Pi camera module: through libcamerasrc, see deploy/README.md), "
                         "or pass --source to check a stream URL or video file")
        usable = [d for d in devices if os.access(d, os.R_OK | os.W_OK)]
        if not usable:
            return Check("camera", "fail", f"{', '.join(devices)} exist but this user may not open them",
                         "add the user to the video group (sudo usermod -aG video $USER) and log in again")
        return Check("camera", "ok", f"{', '.join(usable)} can be opened (pass --source to read a frame)")
    return _read_one_frame(source, timeout_s)


def _read_one_frame(source: str, timeout_s: float) -> Check:
    from edgeface.io.sources import open_source

    outcome: dict[str, Any] = {}

    def read() -> None:
        try:
            with open_source(source, max_retries=0, open_timeout_s=timeout_s, read_timeout_s=timeout_s) as opened:
                frame = next(iter(opened), None)
                outcome["frame"] = frame
                outcome["description"] = opened.description
        except BaseException as error:
            outcome["error"] = error

    worker = threading.Thread(target=read, name="doctor-camera", daemon=True)
    worker.start()
    worker.join(timeout_s + 5)
    if worker.is_alive():
        return Check("camera", "fail", f"{source}: no frame within {timeout_s + 5:.0f} s",
                     "check the cable or URL; `v4l2-ctl --list-devices` lists cameras")
    if "error" in outcome:
        error = outcome["error"]
        detail = str(error) if isinstance(error, EdgefaceError) else first_line(error, with_type=True)
        return Check("camera", "fail", detail, _camera_hint(source))
    frame = outcome.get("frame")
    if frame is None:
        return Check("camera", "fail", f"{outcome.get('description', source)} gave no frame", _camera_hint(source))
    height, width = frame.image.shape[:2]
    return Check("camera", "ok", f"{outcome['description']}: read a {width}x{height} frame")


def _camera_hint(source: str) -> str:
    if source.strip().isdigit() or source.startswith("/dev/video"):
        return "check `v4l2-ctl --list-devices`, that no other program holds the camera, and that the user is in the video group"
    if "!" in source:
        return "test the pipeline with gst-launch-1.0 first; OpenCV must be built with GStreamer"
    return "check the path or URL (and its credentials) and that the stream plays elsewhere (ffplay URL)"


# -- broker ---------------------------------------------------------------------------------------


def check_broker(url: str | None, mqtt_config: Any = None, timeout_s: float = BROKER_TIMEOUT_S,
                 environ: dict[str, str] | None = None) -> Check:
    """Connect to the broker with the configured credentials and wait for its CONNACK."""
    if url is None and mqtt_config is None:
        return Check("broker", "ok", "no broker configured: events go to stdout (pass --mqtt-url to check one)")
    from edgeface.config import MqttConfig
    from edgeface.service.mqtt.client import parse_mqtt_url, resolve_password

    config = mqtt_config if mqtt_config is not None else MqttConfig.model_validate({"url": url})
    if url is not None and mqtt_config is not None:
        config = config.model_copy(update={"url": url})
    address = parse_mqtt_url(config.url)
    username = config.username or address.username
    password = resolve_password(config, environ)
    return _connect(address, username, password, config, timeout_s)


def _connect(address: Any, username: str | None, password: str | None, config: Any, timeout_s: float) -> Check:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    reasons: list[Any] = []
    for protocol in (paho.MQTTv5, paho.MQTTv311):
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"edgeface-doctor-{os.getpid()}", protocol=protocol)
        if username is not None:
            client.username_pw_set(username, password)
        if address.tls:
            import ssl

            client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None,
                           certfile=str(config.cert_file) if config.cert_file else None,
                           keyfile=str(config.key_file) if config.key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(config.tls_insecure)
        answer: dict[str, Any] = {}

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any, answer: dict[str, Any] = answer) -> None:
            answer.setdefault("reason", reason)

        client.on_connect = on_connect
        try:
            client.connect(address.host, address.port, keepalive=10)
        except OSError as error:
            reason = error.strerror or first_line(error, with_type=True)
            return Check("broker", "fail", f"{address}: cannot connect ({reason})",
                         "is the broker running and listening there? check the URL, port and firewall")
        deadline = time.monotonic() + timeout_s
        try:
            while "reason" not in answer and time.monotonic() < deadline:
                client.loop(timeout=0.1)
        finally:
            client.disconnect()
            client.loop(timeout=0.05)  # lets paho close the socket
        if "reason" not in answer:
            return Check("broker", "fail", f"{address}: no CONNACK within {timeout_s:.0f} s",
                         "is it an MQTT broker (mqtts:// for TLS ports)?")
        reason = answer["reason"]
        if not reason.is_failure:
            auth = f"as {username}" if username else "without credentials"
            version = "5" if protocol == paho.MQTTv5 else "3.1.1"
            return Check("broker", "ok", f"{address}: connected {auth} (MQTT {version})")
        reasons.append(reason)
        if reason.value not in (1, 0x84):  # anything but "unsupported protocol version": no point retrying
            break
    reason = reasons[-1]
    if reason.value in (4, 5, 0x86, 0x87):
        return Check("broker", "fail", f"{address}: refused: {reason} (user {username or 'none'})",
                     "check the username and the password (EDGEFACE_MQTT_PASSWORD, password_file or "
                     "/etc/edgeface/mqtt_password via LoadCredential=)")
    return Check("broker", "fail", f"{address}: refused: {reason}", "see the broker's log")


# -- gallery and disk -----------------------------------------------------------------------------


def check_gallery(path: Path) -> Check:
    """Open the gallery read-only: SQLite's integrity check, then the edgeface schema."""
    from edgeface.storage.gallery import SCHEMA_VERSION

    fix_corrupt = (f"stop the service, move {path} aside, then restore a backup (`edgeface gallery import FILE`) "
                   "or enroll again")
    if not path.exists():
        return Check("gallery", "warn", f"no gallery at {path} (nobody enrolled yet?)",
                     "enroll someone (`edgeface enroll`) or pass --gallery FILE")
    if not path.is_file():
        return Check("gallery", "fail", f"{path} is not a file", "pass the gallery file with --gallery FILE")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as error:
        return Check("gallery", "fail", f"{path}: cannot open ({error})", "check the file's owner and permissions")
    try:
        problems = [row[0] for row in db.execute("PRAGMA integrity_check(5)")]
        if problems != ["ok"]:
            return Check("gallery", "fail", f"{path} is corrupted: {problems[0]}", fix_corrupt)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            return Check("gallery", "fail", f"{path} is an SQLite file but not an edgeface gallery",
                         "pass the right file with --gallery FILE")
        version = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        identities = db.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
        templates = db.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
        dlib_only = _dlib_only_people(db, tables)
    except sqlite3.DatabaseError as error:
        return Check("gallery", "fail", f"{path} is corrupted or not a gallery ({error})", fix_corrupt)
    finally:
        db.close()
    if version is None or version > SCHEMA_VERSION:
        return Check("gallery", "fail", f"{path} has schema version {version}; this edgeface reads up to {SCHEMA_VERSION}",
                     "upgrade edgeface (the gallery was written by a newer one)")
    upgrade = f" (schema {version}, upgraded to {SCHEMA_VERSION} when the station opens it)" if version < SCHEMA_VERSION else ""
    if dlib_only:
        shown = ", ".join(dlib_only[:5]) + (f" and {len(dlib_only) - 5} more" if len(dlib_only) > 5 else "")
        return Check("gallery", "warn",
                     f"{path}: integrity ok, {identities} {'person' if identities == 1 else 'people'}; "
                     f"{len(dlib_only)} without a second-opinion (SFace) template, decided by dlib alone: {shown}{upgrade}",
                     "run `edgeface gallery upgrade` (it embeds stored chips; it names the people who need a new photo)")
    return Check("gallery", "ok", f"{path}: integrity ok, {identities} {'person' if identities == 1 else 'people'}, "
                 f"{templates} template{'' if templates == 1 else 's'}{upgrade}")


def _dlib_only_people(db: sqlite3.Connection, tables: set[str]) -> list[str]:
    """People none of whose templates has a second-model (SFace) embedding (a gallery enrolled before
    the second opinion, or with it off)."""
    if "second_embeddings" not in tables:
        return [row[0] for row in db.execute("SELECT name FROM identities ORDER BY name")]
    return [row[0] for row in db.execute(
        "SELECT i.name FROM identities i WHERE NOT EXISTS (SELECT 1 FROM templates t JOIN second_embeddings s"
        " ON s.template_id = t.id WHERE t.identity_id = i.id) ORDER BY i.name")]


def check_disk(paths: Iterable[Path], warn_mb: float = DISK_WARN_FREE_MB, fail_mb: float = DISK_FAIL_FREE_MB) -> list[Check]:
    """Free space of the file systems holding the given paths (gallery, outbox)."""
    checks = []
    seen: set[int] = set()
    for path in paths:
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        device = existing.stat().st_dev
        if device in seen:
            continue
        seen.add(device)
        usage = shutil.disk_usage(existing)
        free_mb = usage.free / 1e6
        detail = f"{existing}: {free_mb:,.0f} MB free of {usage.total / 1e6:,.0f} MB"
        if free_mb < fail_mb:
            checks.append(Check("disk", "fail", detail, f"free space there (under {fail_mb:.0f} MB the gallery and outbox cannot write)"))
        elif free_mb < warn_mb:
            checks.append(Check("disk", "warn", detail, f"free space there (keep {warn_mb:.0f} MB for the outbox during broker outages)"))
        else:
            checks.append(Check("disk", "ok", detail))
    return checks


def check_permissions(files: Iterable[Path], folders: Iterable[Path] = ()) -> list[Check]:
    """Files holding face templates, events or secrets must be the owner's only (0600), and the folders
    edgeface keeps them in 0700: warn about any that group or others may read."""
    from edgeface.storage.fileperm import too_open

    checks = []
    seen: set[Path] = set()
    for path, mode in [*((f, "600") for f in files), *((d, "700") for d in folders)]:
        if path in seen or not path.exists():
            continue
        seen.add(path)
        problem = too_open(path)
        if problem is not None:
            checks.append(Check("files", "warn", f"{problem}: it holds face templates, events or a secret",
                                f"chmod {mode} {path}"))
    if not checks:
        checks.append(Check("files", "ok", f"{len(seen)} files and folders with face templates, events or secrets "
                                           "are readable by their owner only" if seen else "no private files found yet"))
    return checks


def check_commands(mqtt_config: Any, environ: dict[str, str] | None = None) -> Check:
    """Whether MQTT commands are signed: without a command secret the station answers only status."""
    from edgeface.service.station import resolve_command_secret

    if mqtt_config is None:
        return Check("commands", "ok", "no mqtt section: the station takes no commands")
    if not mqtt_config.commands:
        return Check("commands", "ok", "commands are off (mqtt.commands: false)")
    if resolve_command_secret(mqtt_config, environ) is not None:
        return Check("commands", "ok", "a command secret exists: commands other than status must be signed")
    if mqtt_config.allow_unsigned_commands:
        return Check("commands", "warn", "unsigned commands are accepted: anyone who can publish on the broker can "
                     "enroll and forget people", "create a secret with `edgeface command-secret` and remove "
                     "mqtt.allow_unsigned_commands, or restrict <prefix>cmd/# with broker ACLs (docs/mqtt.md)")
    return Check("commands", "warn", "no command secret: the station answers only status (enroll, forget, ... are "
                 "refused)", "create one with `edgeface command-secret` (docs/mqtt.md, Security)")


def private_paths(config: Any, gallery: Path, environ: dict[str, str] | None = None) -> tuple[list[Path], list[Path]]:
    """(files, folders) that must be private: the gallery and its -wal/-shm, the outbox, its signature
    record and Home Assistant state, the station page's sessions, the command secret and MQTT password files, the state folder."""
    environ = dict(os.environ) if environ is None else environ
    from edgeface.service.web.auth import sessions_path

    files = [gallery, Path(f"{gallery}-wal"), Path(f"{gallery}-shm"), sessions_path(gallery)]
    folders: list[Path] = []
    mqtt_config = getattr(config, "mqtt", None)
    if mqtt_config is not None:
        from edgeface.service.mqtt.client import default_outbox_path
        from edgeface.service.station import default_secret_file

        outbox = mqtt_config.outbox_path or default_outbox_path(config.station_id, environ)
        files += [outbox, Path(f"{outbox}-wal"), outbox.with_name(outbox.stem + ".signatures.sqlite"),
                  outbox.with_suffix(".homeassistant.json"), default_secret_file(environ)]
        files += [p for p in (mqtt_config.command_secret_file, mqtt_config.password_file) if p is not None]
        folders.append(outbox.parent)
    fleet = getattr(config, "fleet", None)
    if fleet is not None and fleet.key_file is not None:
        files.append(fleet.key_file)
    if environ.get("STATE_DIRECTORY"):
        folders.append(Path(environ["STATE_DIRECTORY"].split(":")[0]))
    return files, folders


def check_fleet(config: Any, environ: dict[str, str] | None = None) -> Check | None:
    """With `fleet.enabled`: whether the shared key is there (without it the station does not start)."""
    if not config.fleet.enabled:
        return None
    from edgeface.service.fleet import resolve_fleet_key

    try:
        resolve_fleet_key(config, environ)
    except EdgefaceError as error:
        return Check("fleet", "fail", str(error), "copy the fleet's key to this station (docs/fleet.md, The key)")
    return Check("fleet", "ok", f"fleet {config.fleet.group!r}: the shared key is there")


# -- all of them ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DoctorOptions:
    config_path: Path | None = None
    source: str | None = None
    mqtt_url: str | None = None
    gallery: Path | None = None
    camera_timeout_s: float = CAMERA_TIMEOUT_S
    broker_timeout_s: float = BROKER_TIMEOUT_S


def _camera_named(camera: Any, options: DoctorOptions) -> Check:
    """check_camera on one camera of `cameras:` (its source_env read from the environment)."""
    from edgeface.service.cameras import source_of

    check = check_camera(source_of(camera), options.camera_timeout_s)
    return replace(check, name=f"camera {camera.name}")


def doctor_gallery_path() -> Path:
    """$EDGEFACE_GALLERY, else ./gallery.db (as the gallery commands), else under $STATE_DIRECTORY."""
    from edgeface.storage.paths import DEFAULT_GALLERY, GALLERY_ENV

    if os.environ.get(GALLERY_ENV):
        return Path(os.environ[GALLERY_ENV])
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / DEFAULT_GALLERY
    return DEFAULT_GALLERY


def station_checks(config: Any, gallery: Path | None) -> list[Check]:
    """The checks that make sense inside a running station (its status page): model files, gallery,
    free disk, command policy, private files. Not the camera, the broker or the models' loading: the
    station is using them, and its own status shows how they do."""
    checks = _guarded("models", check_models)
    if gallery is not None:
        checks += _guarded("gallery", lambda: check_gallery(gallery))
        checks += _guarded("disk", lambda: check_disk([gallery.resolve().parent]))
    mqtt_config = getattr(config, "mqtt", None)
    if mqtt_config is not None:
        checks += _guarded("commands", lambda: check_commands(mqtt_config))
    files, folders = private_paths(config, gallery) if gallery is not None else ([], [])
    checks += _guarded("files", lambda: check_permissions(files, folders))
    return checks


def run_checks(options: DoctorOptions) -> Iterable[Check]:
    """Every check, in order, as each finishes."""
    from edgeface.config import Config, load_config

    config: Config
    try:
        config = load_config(options.config_path)
        if options.config_path is not None:
            yield Check("config", "ok", f"{options.config_path} is valid")
    except EdgefaceError as error:
        config = load_config(None)
        yield Check("config", "fail", str(error), "fix the file; the other checks use the defaults")
    mqtt_config = getattr(config, "mqtt", None)  # when the config grows an mqtt section
    gallery = options.gallery or doctor_gallery_path()
    yield from _guarded("models", check_models)
    yield from _guarded("runtime", check_runtimes)
    yield from _guarded("detector", lambda: check_detector(config.recognition.detector.model))
    yield from _guarded("embedder", check_embedder)
    yield from _guarded("sface", lambda: check_second_opinion(config.recognition.second_opinion))
    if options.source is None and config.cameras:  # each camera of `cameras:` reads a frame
        for camera in config.cameras:
            yield from _guarded(f"camera {camera.name}", functools.partial(_camera_named, camera, options))
    else:
        yield from _guarded("camera", lambda: check_camera(options.source, options.camera_timeout_s))
    yield from _guarded("broker", lambda: check_broker(options.mqtt_url, mqtt_config, options.broker_timeout_s))
    yield from _guarded("gallery", lambda: check_gallery(gallery))
    disk_paths = [gallery.resolve().parent]
    if os.environ.get("STATE_DIRECTORY"):
        disk_paths.append(Path(os.environ["STATE_DIRECTORY"].split(":")[0]))
    yield from _guarded("disk", lambda: check_disk(disk_paths))
    yield from _guarded("commands", lambda: check_commands(mqtt_config))
    fleet_check = check_fleet(config)
    if fleet_check is not None:
        yield fleet_check
    yield from _guarded("files", lambda: check_permissions(*private_paths(config, gallery)))
