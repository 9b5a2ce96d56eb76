"""Write docs/config.md, the configuration reference, from the pydantic models in edgeface.config.

    python tools/config_reference.py [--check]

--check exits 1 when docs/config.md is out of date (the test suite runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args, get_origin

from pydantic import BaseModel

from edgeface.config import Config

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "config.md"


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = [t for t in (field.annotation, *get_args(field.annotation))
                  if isinstance(t, type) and issubclass(t, BaseModel)]
        items = [t for arg in get_args(field.annotation) for t in get_args(arg) or (arg,)
                 if get_origin(field.annotation) is list and isinstance(t, type) and issubclass(t, BaseModel)]
        if items:  # a list of sections (cameras:), each item's keys under key[]
            description = (field.description or "").replace("|", "\\|")
            rows.append(f"| `{key}` | `[]` | | list; each item: the `{key}[].` keys below. {description} |")
            rows += _rows(items[0], key + "[].")
            continue
        if nested:
            optional = " (optional section; absent by default)" if field.get_default() is None else ""
            rows.append(f"| `{key}` | | | section{optional} |")
            rows += _rows(nested[0], key + ".")
            continue
        default = field.get_default(call_default_factory=True)
        shown = "required" if field.is_required() else f"`{default!r}`"
        bounds = [f"{op} {getattr(m, op)}" for m in field.metadata for op in ("ge", "gt", "le", "lt") if hasattr(m, op)]
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {shown} | {', '.join(bounds)} | {description} |")
    return rows


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `edgeface/config.py` by `python tools/config_reference.py`; do not edit by hand.",
        "Every key is optional; unknown keys are errors. Give the file to any command with `--config FILE`",
        "(YAML or JSON); nested keys are written as YAML mappings (`recognition: {detector: {model: full}}`).",
        "",
        "| key | default | bounds | meaning |",
        "|---|---|---|---|",
        *_rows(Config),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python tools/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
