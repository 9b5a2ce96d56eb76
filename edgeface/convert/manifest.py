"""Writing `models/manifest.json`: one entry per shipped file with origin, licence, recipe and sha256."""

from __future__ import annotations

import json
from pathlib import Path

from edgeface.io.models import MANIFEST_NAME, sha256_of


def record_model_file(directory: Path, name: str, *, source: str, license: str, made_by: str) -> None:
    """Add or refresh the manifest entry of `directory/name` (the file must already be written)."""
    manifest_path = directory / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": {}}
    path = directory / name
    manifest["files"][name] = {
        "sha256": sha256_of(path),
        "size_bytes": path.stat().st_size,
        "source": source,
        "license": license,
        "made_by": made_by,
    }
    manifest["files"] = dict(sorted(manifest["files"].items()))
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
