"""The `edgeface` command: `main` (edgeface/cli/main.py) and one module per command group."""

from __future__ import annotations

from edgeface.cli.main import main

__all__ = ["main"]
