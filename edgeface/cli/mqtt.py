"""``edgeface schema``: print the JSON Schema of what the station publishes.

``edgeface command-secret``: create the secret that signs commands; ``edgeface sign-command``: sign one.

Wired into the ``edgeface`` command by ``mqtt_cli.register(commands)`` in :mod:`edgeface.cli.main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _command_reply_schema() -> dict[str, Any]:
    from edgeface.service.mqtt.commands import CommandReply

    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **CommandReply.model_json_schema(mode="serialization")}


def _cmd_schema(args: argparse.Namespace) -> int:
    from edgeface.events import event_json_schema, stats_json_schema

    schemas = {"events": event_json_schema, "stats": stats_json_schema, "reply": _command_reply_schema}
    print(json.dumps(schemas[args.what](), indent=None if args.compact else 2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``schema`` to the ``edgeface`` sub-commands."""
    parser = subparsers.add_parser(
        "schema", help="print the JSON Schema of the MQTT payloads (events by default)"
    )
    parser.add_argument(
        "what", nargs="?", choices=("events", "stats", "reply"), default="events",
        help="events: every <prefix>events/<type> payload; stats: <prefix>stats; reply: cmd/<verb>/reply",
    )
    parser.add_argument("--compact", action="store_true", help="one line instead of indented JSON")
    parser.set_defaults(handler=_cmd_schema)
    register_secrets(subparsers)


def _cmd_command_secret(args: argparse.Namespace) -> int:
    import secrets

    from edgeface.errors import EdgefaceError
    from edgeface.service.station import default_secret_file
    from edgeface.storage.fileperm import create_private_file, write_private_file

    path: Path = args.file or default_secret_file()
    if path.exists() and not args.force:
        raise EdgefaceError(f"{path} already exists (the station and its clients share it); pass --force to replace it")
    create_private_file(path)
    write_private_file(path, (secrets.token_hex(32) + "\n").encode("ascii"))
    print(f"wrote a new command secret to {path} (mode 0600)", file=sys.stderr)
    if args.file is None:
        print("`edgeface run` and `edgeface sign-command` of this user find it there; a systemd service takes it as "
              "the credential command_secret (LoadCredential=command_secret:FILE)", file=sys.stderr)
    else:
        print(f"give it to the station with mqtt.command_secret_file: {path} (or LoadCredential=command_secret:{path})",
              file=sys.stderr)
    return 0


def _cmd_sign_command(args: argparse.Namespace) -> int:
    from edgeface.config import MqttConfig
    from edgeface.errors import EdgefaceError
    from edgeface.service.mqtt.commands import sign_command
    from edgeface.service.station import resolve_command_secret

    secret = resolve_command_secret(MqttConfig(command_secret_file=args.secret_file))
    if secret is None:
        raise EdgefaceError("no command secret found: create one with `edgeface command-secret`, or pass --secret-file")
    text = args.command if args.command is not None else "{}"
    try:
        command = json.loads(text)
    except ValueError:
        raise EdgefaceError(f"the command must be a JSON object, e.g. '{{\"name\": \"Ada\"}}'; got {text[:60]!r}") from None
    if not isinstance(command, dict):
        raise EdgefaceError("the command must be a JSON object, e.g. '{\"name\": \"Ada\"}'")
    sys.stdout.write(sign_command(secret, args.verb, command).decode("utf-8") + "\n")
    return 0


def register_secrets(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `command-secret` and `sign-command` to the `edgeface` sub-commands."""
    secret = subparsers.add_parser(
        "command-secret", help="create the shared secret that signs MQTT commands (0600 file)",
        description="Write 32 random bytes (hex) to FILE, mode 0600. Without a secret the station answers only "
        "status; with one, every other command must be signed with it (edgeface sign-command).")
    secret.add_argument("--file", type=Path, help="where to write it (default: ~/.config/edgeface/command_secret)")
    secret.add_argument("--force", action="store_true", help="replace an existing secret")
    secret.set_defaults(handler=_cmd_command_secret)
    sign = subparsers.add_parser(
        "sign-command", help="print a signed command envelope for mosquitto_pub",
        description="Print {\"signed\": ..., \"sig\": ...} for VERB and the JSON COMMAND, with ts = now. "
        "Example: edgeface sign-command forget '{\"name\": \"Ada\"}' | mosquitto_pub -t edgeface/hall/cmd/forget -s")
    sign.add_argument("verb", metavar="VERB")
    sign.add_argument("command", nargs="?", metavar="COMMAND", help="JSON object (default {})")
    sign.add_argument("--secret-file", type=Path, help="the secret (default: $EDGEFACE_COMMAND_SECRET, "
                      "$CREDENTIALS_DIRECTORY/command_secret, ~/.config/edgeface/command_secret)")
    sign.set_defaults(handler=_cmd_sign_command)
