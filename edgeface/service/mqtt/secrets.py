"""Secrets of a station (the broker password, the command secret): from the environment, a file the
config names, or systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``). Never logged."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgeface.errors import ConfigError


def read_secret(what: str, *, env: str, file: Path | None, credential: str, fallbacks: Sequence[Path] = (),
                strip: bool = False, environ: Mapping[str, str] | None = None) -> str | None:
    """``$<env>``, else the first line of `file` (which must exist when given), else of
    ``$CREDENTIALS_DIRECTORY/<credential>``, else of the first of `fallbacks` that exists; None when there
    is none. `what` names the secret in errors ("MQTT password"); `strip` trims the line."""
    environ = os.environ if environ is None else environ
    value = environ.get(env)
    if value:
        return value
    candidates: list[tuple[Path, bool]] = []
    if file is not None:
        candidates.append((Path(file), True))
    if environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append((Path(environ["CREDENTIALS_DIRECTORY"]) / credential, False))
    candidates += [(path, False) for path in fallbacks]
    for path, required in candidates:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if required:
                raise ConfigError(f"{what} file {path} does not exist") from None
            continue
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
            raise ConfigError(f"cannot read the {what} file {path}: {reason}") from None
        lines = text.splitlines()
        line = lines[0].strip() if lines and strip else (lines[0] if lines else "")
        if not line:
            raise ConfigError(f"{what} file {path} is empty")
        return line
    return None
