"""How measuring commands print their figures: readable lines, and with --json one JSON object as the
last line of stdout (the lines then go to stderr so a script can parse stdout)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping


def print_figures(lines: Iterable[str], figures: Mapping[str, object], as_json: bool) -> int:
    """Print a report; returns the command's exit status (0)."""
    for line in lines:
        print(line, file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(json.dumps(figures))
    return 0
