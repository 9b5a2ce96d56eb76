"""``edgeface schema``: print the JSON Schema of what the station publishes.

Wired into the ``edgeface`` command by ``mqtt_cli.register(commands)`` in :mod:`edgeface.cli`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _command_reply_schema() -> dict[str, Any]:
    from edgeface.commands import CommandReply

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
