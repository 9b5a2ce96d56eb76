"""``edgeface doctor``: check this station's setup (see :mod:`edgeface.service.doctor`).

Wired into the ``edgeface`` command by ``doctor_cli.register(commands)`` in :mod:`edgeface.cli.main`.
Prints one line per check (``ok`` / ``warn`` / ``fail``, what was found, ``-> what to do``); the exit
status is 1 when any check failed, 0 otherwise (warnings included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeface.text import plural


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 600 seconds, got {text}")
    return value


def _cmd_doctor(args: argparse.Namespace) -> int:
    from edgeface.service.doctor import DoctorOptions, run_checks

    options = DoctorOptions(config_path=args.config, source=args.source, mqtt_url=args.mqtt_url,
                            gallery=args.gallery, camera_timeout_s=args.timeout, broker_timeout_s=args.timeout)
    counts = {"ok": 0, "warn": 0, "fail": 0}
    for check in run_checks(options):
        counts[check.status] += 1
        print(check.line(), flush=True)
    print(f"{counts['ok']} ok, {plural(counts['warn'], 'warning')}, {counts['fail']} failed", file=sys.stderr)
    return 1 if counts["fail"] else 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``doctor`` to the ``edgeface`` sub-commands."""
    parser = subparsers.add_parser(
        "doctor", help="check camera, models, runtimes, broker, gallery and disk; print what to fix",
        description="One line per check: ok, warn or fail, what was found, and after '->' what to do. "
        "Exit status 1 when a check failed.",
    )
    parser.add_argument("--config", type=Path, help="YAML or JSON config file (defaults apply without it)")
    parser.add_argument("--source", help="camera index, /dev/videoN, URL, GStreamer pipeline or video file to read a frame from "
                        "(default: only look for /dev/video* devices)")
    parser.add_argument("--mqtt-url", help="broker to connect to, mqtt://[user@]host[:port] (password: "
                        "EDGEFACE_MQTT_PASSWORD or $CREDENTIALS_DIRECTORY/mqtt_password)")
    parser.add_argument("--gallery", type=Path, help="gallery file (default: $EDGEFACE_GALLERY, else $STATE_DIRECTORY/gallery.db under systemd, else ./gallery.db)")
    parser.add_argument("--timeout", type=_positive_seconds, default=10.0,
                        help="seconds to wait for the camera's first frame and for the broker (default 10)")
    parser.set_defaults(handler=_cmd_doctor)
