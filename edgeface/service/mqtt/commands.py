"""Commands to a station, independent of the transport: validate, dispatch, answer.

A command is a verb (the last level of ``<prefix>cmd/<verb>``) and a JSON object payload. The
router validates the payload with the verb's pydantic model, calls the registered handler and
always returns a :class:`CommandReply` — ``{"ok": bool, "message": str, "request_id": ...,
"verb": ..., "result": ...}`` — whatever arrives: malformed, oversized, unsigned, or a handler that
crashes. ``request_id`` is echoed whenever it can be read from the payload.

Verbs and payloads (``request_id`` is optional everywhere; an empty payload means ``{}``)::

    enroll        {"name": str, "image": base64 JPEG/PNG}  or  {"name": str, "cluster_id": "unknown-17"}
    name_cluster  {"cluster_id": "unknown-17", "name": str, "force": false}
    ignore_cluster {"cluster_id": "unknown-17", "undo": false}   "not a face / ignore", or take it off
    forget        {"name": str}
    reject        {"track_id": int, "name": str}    negative feedback: "track 42 was not NAME"
    reload        {}
    status        {}

Who may do what (see docs/mqtt.md, "Security"): ``status`` is read-only and always answered.
Every other verb changes the station (its gallery above all) and is refused until the station has a
command secret; with one, it must come signed. ``allow_unsigned=True`` brings back unsigned commands
for a broker no one else can publish to.

Signed commands: the payload is an envelope ::

    {"signed": "<the command's JSON text>", "sig": "<hex HMAC-SHA256>"}

where ``sig = HMAC_SHA256(secret, verb + "\\n" + signed)`` over the UTF-8 bytes, and the command
inside ``signed`` must carry ``"ts"`` (Unix seconds) within ``max_clock_skew_s`` of the station's
clock. Binding the verb stops a signed ``reload`` from being replayed as ``forget``; ``ts`` and a
memory of the signatures seen within the clock window (:class:`SeenSignatures`, a small SQLite file
that survives restarts) stop replays. The envelope (rather than an MQTT 5 user
property) works over MQTT 3.1.1 too and signs exact bytes, so no JSON canonicalisation is needed.
:func:`sign_command` builds an envelope.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from edgeface.errors import EdgefaceError, ImageError
from edgeface.events import ClusterId, PersonName, is_valid_verb

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 8 * 1024 * 1024
"""Largest accepted payload (a base64 photo of a few megapixels fits)."""

READ_ONLY_VERBS = frozenset({"status"})
"""Verbs that change nothing: answered without a secret or a signature."""

NO_SECRET = ("this station has no command secret, so it refuses {verb} (only status is open): create one with "
             "`edgeface command-secret`, give it to the station (command_secret_file, $EDGEFACE_COMMAND_SECRET or "
             "the systemd credential command_secret) and sign commands with it; see docs/mqtt.md, Security")

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x20-\x7e]+$")]

_RESERVED_NAME = re.compile(r"^unknown(-[0-9]+)?$", re.IGNORECASE)
_DATA_URL = re.compile(r"^data:image/[a-z+.-]+;base64,", re.IGNORECASE)


class CommandFailed(EdgefaceError):
    """Raised by a handler to answer ``ok: false`` with this one-line message."""


@dataclass(frozen=True)
class CommandResult:
    """What a handler returns on success: a one-line message and optional JSON data."""

    message: str = "done"
    result: JsonValue = None


class CommandReply(BaseModel):
    """The answer to every command, published on ``cmd/<verb>/reply`` (or the response topic)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    message: str
    request_id: str | None = None
    verb: str
    result: JsonValue = None

    def to_json(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


# --------------------------------------------------------------------------------------- payloads


class CommandBase(BaseModel):
    """Fields every command may carry."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    request_id: RequestId | None = Field(None, description="Echoed in the reply")
    ts: float | None = Field(None, description="Unix seconds; required inside signed envelopes")


def _check_person_name(name: str) -> str:
    if _RESERVED_NAME.match(name):
        raise ValueError(f"the name {name!r} is reserved for unknown visitors; choose another")
    return name


class EnrollCommand(CommandBase):
    """Enroll a person from a photo, or from a cluster of unknowns already seen."""

    name: PersonName
    image: str | None = Field(None, description="Base64 JPEG or PNG (a data: URL prefix is allowed)")
    cluster_id: ClusterId | None = None
    _image_bgr: np.ndarray | None = PrivateAttr(None)

    _name = field_validator("name")(_check_person_name)

    @model_validator(mode="after")
    def _decode(self) -> EnrollCommand:
        if (self.image is None) == (self.cluster_id is None):
            raise ValueError("give exactly one of image (base64 JPEG/PNG) or cluster_id")
        if self.image is not None:
            self._image_bgr = decode_image_base64(self.image)
        return self

    @property
    def image_bgr(self) -> np.ndarray | None:
        """The decoded photo, uint8 BGR (h, w, 3), or None for a cluster enrollment."""
        return self._image_bgr


class NameClusterCommand(CommandBase):
    """Give a cluster of unknowns a name (moves it into the gallery)."""

    cluster_id: ClusterId
    name: PersonName
    force: bool = Field(False, description="Name it even when it was seen with NAME or does not resemble NAME")

    _name = field_validator("name")(_check_person_name)


class IgnoreClusterCommand(CommandBase):
    """Put a cluster on the ignore list ("not a face / ignore"), or take it off with undo."""

    cluster_id: ClusterId
    undo: bool = Field(False, description="Take the cluster off the ignore list")


class ForgetCommand(CommandBase):
    """Remove a person from the gallery."""

    name: PersonName


class RejectCommand(CommandBase):
    """Negative feedback: a recent track was wrongly recognised as NAME."""

    track_id: int = Field(ge=0, description="Track id from the recognized event")
    name: PersonName = Field(description="The name the track was wrongly given")


class ReloadCommand(CommandBase):
    """Reload the gallery (and whatever else the station can reload without restarting)."""


class StatusCommand(CommandBase):
    """Report the station's status."""


COMMAND_MODELS: dict[str, type[CommandBase]] = {
    "enroll": EnrollCommand,
    "name_cluster": NameClusterCommand,
    "ignore_cluster": IgnoreClusterCommand,
    "forget": ForgetCommand,
    "reject": RejectCommand,
    "reload": ReloadCommand,
    "status": StatusCommand,
}


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signed: str
    sig: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]


# ----------------------------------------------------------------------------------------- images


def decode_image_base64(text: str) -> np.ndarray:
    """Base64 JPEG/PNG -> uint8 BGR, upright (EXIF orientation applied); the size is checked from the
    header before decoding. Raises ValueError with a one-line reason."""
    from edgeface.io.images import decode_image

    text = "".join(_DATA_URL.sub("", text.strip(), count=1).split())  # line-wrapped base64 is fine
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image is not valid base64") from None
    if not data:
        raise ValueError("image is empty")
    if not data.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")):
        raise ValueError("image must be a JPEG or PNG file")
    try:
        return decode_image(data, "image")
    except ImageError as error:
        raise ValueError(str(error).removeprefix("image: ")) from None


# ----------------------------------------------------------------------------------------- router

M = TypeVar("M", bound=CommandBase)
Handler = Callable[[M], "CommandResult | None"]


def _clean(text: str, limit: int) -> str:
    """Printable UTF-8 (lone surrogates replaced), at most ``limit`` characters."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(error: ValidationError) -> str:
    errors = error.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{where}: {message}{more}"


class SeenSignatures:
    """Signatures already accepted, each kept until its command's ``ts`` is out of the clock window.

    With a path they are in a small SQLite file (0600), written before the command runs: a captured
    signed command cannot be replayed after a restart either. Without one (tests, one-off routers)
    they live in memory. Thread-safe."""

    MAX_ENTRIES = 100_000

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory: dict[str, float] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            from edgeface.storage.fileperm import create_private_file

            try:
                create_private_file(self.path)
                self._db = sqlite3.connect(str(self.path), timeout=2.0, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("CREATE TABLE IF NOT EXISTS seen (sig TEXT PRIMARY KEY, expires_s REAL NOT NULL)")
            except (OSError, sqlite3.Error) as error:
                raise EdgefaceError(f"{self.path}: cannot keep the record of used command signatures ({error}); "
                                    "check the folder's permissions and free space") from None

    def add(self, sig: str, expires_s: float, now: float) -> bool | None:
        """Record ``sig``: True when new, False when already seen, None when it could not be recorded."""
        with self._lock:
            if self._db is None:
                self._memory = {k: t for k, t in self._memory.items() if t >= now}
                if sig in self._memory:
                    return False
                if len(self._memory) >= self.MAX_ENTRIES:
                    return None
                self._memory[sig] = expires_s
                return True
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute("DELETE FROM seen WHERE expires_s < ?", (now,))
                    if self._db.execute("SELECT 1 FROM seen WHERE sig = ?", (sig,)).fetchone() is not None:
                        return False
                    if self._db.execute("SELECT COUNT(*) FROM seen").fetchone()[0] >= self.MAX_ENTRIES:
                        return None
                    self._db.execute("INSERT INTO seen (sig, expires_s) VALUES (?, ?)", (sig, expires_s))
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                log.error("cannot record a command signature in %s: %s", self.path, error)
                return None
            return True

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class CommandRouter:
    """Maps verbs to (payload model, handler) and turns any payload into a CommandReply.

    ``handle`` never raises and never blocks on its own (handlers may take as long as they take:
    the MQTT adapter runs them off the network thread). Thread-safe.

    Without a ``secret`` only ``open_verbs`` (``status``) are answered, unless ``allow_unsigned``; with
    one, every other verb must come signed (``status`` may still come unsigned).
    """

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        allow_unsigned: bool = False,
        seen: SeenSignatures | None = None,
        open_verbs: frozenset[str] = READ_ONLY_VERBS,
        max_payload_bytes: int = MAX_COMMAND_BYTES,
        max_clock_skew_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is not None and len(secret) < 16:
            raise EdgefaceError("command secret is too short: use at least 16 bytes (e.g. 32 random hex characters)")
        self._secret = secret
        self._allow_unsigned = allow_unsigned
        self._open_verbs = open_verbs
        self._max_payload_bytes = max_payload_bytes
        self._max_skew_s = max_clock_skew_s
        self._clock = clock
        self._routes: dict[str, tuple[type[CommandBase], Callable[[Any], CommandResult | None]]] = {}
        self._seen = seen if seen is not None else SeenSignatures()

    @property
    def signed(self) -> bool:
        """True when the router has a secret (commands other than status must be signed)."""
        return self._secret is not None

    @property
    def max_payload_bytes(self) -> int:
        return self._max_payload_bytes

    @property
    def verbs(self) -> list[str]:
        return sorted(self._routes)

    def register(
        self, verb: str, handler: Callable[[M], CommandResult | None], model: type[M] | None = None
    ) -> None:
        """Route ``verb`` to ``handler``; the payload model defaults to COMMAND_MODELS[verb]."""
        if not is_valid_verb(verb):
            raise ValueError(f"invalid command verb {verb!r}: use 1-32 lower-case letters, digits or _")
        resolved = model if model is not None else COMMAND_MODELS.get(verb)
        if resolved is None:
            raise ValueError(f"no payload model for command {verb!r}; pass model=")
        self._routes[verb] = (resolved, handler)

    def handle_bytes(self, verb: str, payload: bytes) -> bytes:
        """``handle`` for transports: reply as JSON bytes."""
        return self.handle(verb, payload).to_json()

    def handle(self, verb: str, payload: bytes) -> CommandReply:
        """Validate and dispatch one command. Never raises."""
        shown_verb = _clean(str(verb), 64)
        request_id: str | None = None
        try:
            route = self._routes.get(verb)
            if route is None:
                known = ", ".join(self.verbs) or "none"
                return self._fail(shown_verb, None, f"unknown command {shown_verb!r}; known commands: {known}")
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                return self._fail(shown_verb, None, "payload must be bytes")
            payload = bytes(payload)
            if len(payload) > self._max_payload_bytes:
                return self._fail(
                    shown_verb, None,
                    f"payload too large ({len(payload)} bytes, limit {self._max_payload_bytes}); send a smaller image",
                )
            sig: str | None = None
            if self._secret is None:
                if verb not in self._open_verbs and not self._allow_unsigned:
                    return self._fail(shown_verb, _request_id_of(_parse_object(payload)), NO_SECRET.format(verb=shown_verb))
                body = _parse_object(payload)
            elif verb in self._open_verbs and not _looks_signed(payload):
                body = _parse_object(payload)
            else:
                body, problem, sig = self._unwrap(verb, payload)
                if problem is not None:
                    return self._fail(shown_verb, _request_id_of(body), problem)
            if isinstance(body, str):
                return self._fail(shown_verb, None, body)
            request_id = _request_id_of(body)
            if sig is not None:
                problem = self._check_fresh(body, sig)
                if problem is not None:
                    return self._fail(shown_verb, request_id, problem)
            model, handler = route
            try:
                command = model.model_validate(body)
            except ValidationError as error:
                return self._fail(shown_verb, request_id, f"invalid {shown_verb} command: {_one_line(error)}")
            return self._run(shown_verb, request_id, handler, command)
        except Exception:  # the router's promise: a reply, whatever happens
            log.exception("command %r: unexpected error in the router", shown_verb)
            return self._fail(shown_verb, request_id, "internal error in the command router; see the station log")

    def _run(
        self, verb: str, request_id: str | None, handler: Callable[[Any], CommandResult | None], command: CommandBase
    ) -> CommandReply:
        try:
            outcome = handler(command)
        except (CommandFailed, EdgefaceError) as error:
            return self._fail(verb, request_id, _clean(str(error), 500) or "failed")
        except Exception as error:
            log.exception("command %r: handler failed", verb)
            return self._fail(verb, request_id, f"internal error while handling {verb} ({type(error).__name__}); see the station log")
        outcome = outcome if outcome is not None else CommandResult()
        try:
            return CommandReply(ok=True, message=_clean(outcome.message, 500), request_id=request_id,
                                verb=verb, result=outcome.result)
        except ValidationError:
            log.error("command %r: handler returned a result that is not JSON", verb)
            return self._fail(verb, request_id, f"internal error: {verb} produced a result that is not JSON")

    @staticmethod
    def _fail(verb: str, request_id: str | None, message: str) -> CommandReply:
        log.info("command %r refused: %s", verb, message)
        return CommandReply(ok=False, message=_clean(message, 500), request_id=request_id, verb=verb)

    # ---------------------------------------------------------------------------------- signing

    def _unwrap(self, verb: str, payload: bytes) -> tuple[dict[str, Any] | str, str | None, str | None]:
        """(inner command object, None, signature) or (what could be read, reason for refusal, None)."""
        assert self._secret is not None
        outer = _parse_object(payload)
        if isinstance(outer, str):
            return outer, outer, None
        try:
            envelope = _Envelope.model_validate(outer)
        except ValidationError:
            return outer, ('this station requires signed commands: {"signed": "<command JSON>", '
                           '"sig": "<hex HMAC-SHA256>"} (edgeface sign-command builds one)'), None
        try:
            signed = envelope.signed.encode("utf-8")
        except UnicodeEncodeError:
            return outer, "signed is not valid UTF-8", None
        expected = hmac.new(self._secret, verb.encode("utf-8", "replace") + b"\n" + signed, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, envelope.sig.lower()):
            return outer, "bad signature (sig must be HMAC-SHA256(secret, verb + '\\n' + signed), hex)", None
        inner = _parse_object(signed)
        if isinstance(inner, str):
            return inner, f"signed command: {inner}", None
        return inner, None, envelope.sig

    def _check_fresh(self, body: dict[str, Any], sig: str) -> str | None:
        """Refuse a stale or replayed signed command; record its signature (before it runs)."""
        ts = body.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            return "signed commands must carry ts (Unix seconds) inside signed"
        now = self._clock()
        skew = abs(now - float(ts))
        if not skew <= self._max_skew_s:
            return f"command ts is {skew:.0f} s away from the station clock (limit {self._max_skew_s:.0f} s); check NTP"
        recorded = self._seen.add(sig.lower(), float(ts) + self._max_skew_s, now)
        if recorded is False:
            return "replayed command (this signature was already used)"
        if recorded is None:
            return "cannot record this command's signature (full disk?), so it is refused to stay replay-safe"
        return None


def _looks_signed(payload: bytes) -> bool:
    """An envelope (rather than a plain command): then it is checked as one, even for status."""
    body = _parse_object(payload)
    return isinstance(body, dict) and ("signed" in body or "sig" in body)


def _parse_object(payload: bytes) -> dict[str, Any] | str:
    """The payload as a JSON object, or a one-line reason why it is not one."""
    if not payload.strip():
        return {}
    try:
        value = json.loads(payload)
    except RecursionError:
        return "payload is nested too deeply"
    except (ValueError, TypeError) as error:
        if isinstance(error, UnicodeDecodeError):
            return "payload is not UTF-8 text"
        return "payload is not valid JSON"
    if not isinstance(value, dict):
        return f"payload must be a JSON object, not {type(value).__name__}"
    return value


def _request_id_of(body: object) -> str | None:
    if isinstance(body, dict):
        value = body.get("request_id")
        if isinstance(value, str) and 0 < len(value) <= 128 and value.isascii() and value.isprintable():
            return value
    return None


def sign_command(secret: bytes, verb: str, command: Mapping[str, Any], *, ts: float | None = None) -> bytes:
    """Build a signed envelope for ``verb`` (adds ``ts`` = now unless given or present)."""
    inner = dict(command)
    inner.setdefault("ts", time.time() if ts is None else ts)
    signed = json.dumps(inner, separators=(",", ":"))
    sig = hmac.new(secret, verb.encode("utf-8") + b"\n" + signed.encode("utf-8"), hashlib.sha256).hexdigest()
    return json.dumps({"signed": signed, "sig": sig}).encode("utf-8")


# ------------------------------------------------------------------------------- ready handlers


def status_handler(get_status: Callable[[], BaseModel | Mapping[str, Any]]) -> Callable[[StatusCommand], CommandResult]:
    """A ``status`` handler answering with whatever ``get_status`` returns (a model or a mapping)."""

    def handle(_: StatusCommand) -> CommandResult:
        status = get_status()
        data = status.model_dump(mode="json", by_alias=True) if isinstance(status, BaseModel) else dict(status)
        return CommandResult(message="ok", result=data)

    return handle
