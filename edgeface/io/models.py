"""Where the shipped model files live, and the manifest that vouches for them.

`models/manifest.json` lists every shipped file with its sha256, origin and licence. Loading a
model goes through `verified_model_path`, which refuses a missing or altered file with a one-line
message instead of letting a runtime crash on it later.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from edgeface.errors import ModelFileError

MANIFEST_NAME = "manifest.json"
MODELS_DIR_ENV = "EDGEFACE_MODELS_DIR"


def models_dir() -> Path:
    """$EDGEFACE_MODELS_DIR, else the copy inside the installed wheel, else the source checkout's `models/`."""
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override)
    package_dir = Path(__file__).resolve().parents[1]  # edgeface/ (this file is edgeface/io/models.py)
    for candidate in (package_dir / "_models", package_dir.parent / "models"):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    raise ModelFileError(
        f"no model folder found (looked in {package_dir / '_models'} and {package_dir.parent / 'models'}); "
        f"reinstall edgeface or set {MODELS_DIR_ENV}"
    )


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    sha256: str
    size_bytes: int
    source: str
    license: str
    made_by: str


def read_manifest(directory: Path | None = None) -> dict[str, ManifestEntry]:
    directory = directory or models_dir()
    path = directory / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
        return {
            name: ManifestEntry(
                name=name,
                sha256=entry["sha256"],
                size_bytes=int(entry["size_bytes"]),
                source=entry["source"],
                license=entry["license"],
                made_by=entry["made_by"],
            )
            for name, entry in raw["files"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelFileError(f"model manifest {path} is missing or unreadable ({error}); reinstall edgeface") from error


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@cache
def _verified(path: Path, expected_sha256: str, size_bytes: int, stamp: tuple[int, int, int]) -> Path:
    """Hashes once per (file identity, manifest entry); `stamp` (inode, size, mtime) makes a file that
    was replaced or rewritten since its last check get checked again."""
    try:
        matches = stamp[1] == size_bytes and sha256_of(path) == expected_sha256
    except OSError as error:
        raise ModelFileError(f"cannot read model file {path}: {error.strerror or error}") from error
    if not matches:
        raise ModelFileError(
            f"model file {path} is corrupted (sha256 does not match the manifest); "
            "reinstall edgeface or run `edgeface models build`"
        )
    return path


def verified_model_path(name: str, directory: Path | None = None) -> Path:
    """The path of shipped model `name`, after checking its size and sha256 against the manifest."""
    directory = directory or models_dir()
    entry = read_manifest(directory).get(name)
    if entry is None:
        raise ModelFileError(f"model {name!r} is not in {directory / MANIFEST_NAME}; reinstall edgeface")
    path = directory / name
    try:
        status = path.stat()
    except OSError:
        status = None
    if status is None or not path.is_file():
        raise ModelFileError(f"model file {path} is missing; reinstall edgeface or run `edgeface models build`")
    return _verified(path, entry.sha256, entry.size_bytes, (status.st_ino, status.st_size, status.st_mtime_ns))
