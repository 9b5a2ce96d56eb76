"""Where the gallery file is when no --gallery is given (imported by the CLI at start-up: keep it light)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

GALLERY_ENV = "EDGEFACE_GALLERY"
DEFAULT_GALLERY = Path("gallery.db")
"""Where the commands find the gallery without --gallery: $EDGEFACE_GALLERY, else ./gallery.db."""


def default_gallery_path(environ: Mapping[str, str] | None = None) -> Path:
    """$EDGEFACE_GALLERY, else ./gallery.db (the gallery file of every command run without --gallery)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(GALLERY_ENV) or DEFAULT_GALLERY)
