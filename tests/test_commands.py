from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeface.service.mqtt.commands import (
    CommandFailed,
    CommandReply,
    CommandResult,
    CommandRouter,
    EnrollCommand,
    ForgetCommand,
    NameClusterCommand,
    sign_command,
    status_handler,
)

SECRET = b"0123456789abcdef0123456789abcdef"


def encoded(ext: str, shape: tuple[int, ...] = (40, 30, 3)) -> str:
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    ok, data = cv2.imencode(ext, image)
    assert ok
    return base64.b64encode(data.tobytes()).decode()


class Gallery:
    """Stands in for nothing: it records what the router hands to the handlers."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    def enroll(self, command: EnrollCommand) -> CommandResult:
        self.calls.append(command)
        if command.name == "Duplicate":
            raise CommandFailed("Duplicate is already enrolled; forget them first")
        return CommandResult(message=f"enrolled {command.name}", result={"templates": 1})

    def name_cluster(self, command: NameClusterCommand) -> None:
        self.calls.append(command)

    def forget(self, command: ForgetCommand) -> CommandResult:
        self.calls.append(command)
        raise RuntimeError("disk on fire")


def make_router(secret: bytes | None = None, **kwargs: object) -> tuple[CommandRouter, Gallery]:
    """A router for the payload tests: unsigned commands allowed unless a secret is given (the station's
    default, refusing them, is tested on its own below)."""
    gallery = Gallery()
    kwargs.setdefault("allow_unsigned", secret is None)
    router = CommandRouter(secret=secret, **kwargs)  # type: ignore[arg-type]
    router.register("enroll", gallery.enroll)
    router.register("name_cluster", gallery.name_cluster)
    router.register("forget", gallery.forget)
    router.register("reload", lambda _: None)
    router.register("status", status_handler(lambda: {"fps": 9.5}))
    return router, gallery


def handle(router: CommandRouter, verb: str, payload: object) -> CommandReply:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return router.handle(verb, data)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_enroll_from_image(ext: str) -> None:
    router, gallery = make_router()
    reply = handle(router, "enroll", {"name": "Ada Lovelace", "image": encoded(ext), "request_id": "r7"})
    assert (reply.ok, reply.message, reply.request_id, reply.result) == (True, "enrolled Ada Lovelace", "r7",
                                                                          {"templates": 1})
    command = gallery.calls[-1]
    assert isinstance(command, EnrollCommand) and command.image_bgr is not None
    assert command.image_bgr.shape == (40, 30, 3) and command.image_bgr.dtype == np.uint8


def test_enroll_accepts_data_urls_and_wrapped_base64() -> None:
    router, _ = make_router()
    text = encoded(".png")
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    assert handle(router, "enroll", {"name": "A", "image": "data:image/png;base64," + wrapped}).ok


def test_the_other_verbs() -> None:
    router, gallery = make_router()
    assert handle(router, "enroll", {"name": "Grace", "cluster_id": "unknown-4"}).ok
    reply = handle(router, "name_cluster", {"name": "Grace", "cluster_id": "unknown-4"})
    assert reply.ok and reply.message == "done"
    assert handle(router, "status", b"").result == {"fps": 9.5}
    assert handle(router, "reload", {}).ok
    assert [type(c).__name__ for c in gallery.calls] == ["EnrollCommand", "NameClusterCommand"]


@pytest.mark.parametrize(
    ("verb", "payload", "fragment"),
    [
        ("wave", {}, "unknown command 'wave'; known commands: enroll, forget, name_cluster, reload, status"),
        ("enroll", b"{not json", "not valid JSON"),
        ("enroll", b"\xff\xfe\x00", "not"),
        ("enroll", [1, 2], "must be a JSON object, not list"),
        ("enroll", {"name": "A"}, "exactly one of image"),
        ("enroll", {"name": "A", "image": encoded(".png"), "cluster_id": "unknown-1"}, "exactly one of image"),
        ("enroll", {"name": "A", "image": "!!!notbase64"}, "not valid base64"),
        ("enroll", {"name": "A", "image": base64.b64encode(b"GIF89a....").decode()}, "must be a JPEG or PNG"),
        ("enroll", {"name": "A", "image": encoded(".jpg")[:60]}, "not a readable image (the JPEG header is truncated"),
        ("enroll", {"name": "A", "image": ""}, "empty"),
        ("enroll", {"name": "unknown-3", "cluster_id": "unknown-3"}, "reserved"),
        ("enroll", {"name": 5, "cluster_id": "unknown-3"}, "name"),
        ("enroll", {"name": "Duplicate", "cluster_id": "unknown-3"}, "already enrolled"),
        ("name_cluster", {"name": "A", "cluster_id": "cluster-9"}, "cluster_id"),
        ("forget", {"name": "A"}, "internal error while handling forget (RuntimeError)"),
        ("forget", {"name": "A", "extra": True}, "extra"),
        ("status", b"[" * 100_000, "nested too deeply"),
        ("status", {"ts": float("inf")}, "ts: Input should be a finite number"),
    ],
)
def test_bad_commands_get_a_one_line_error(verb: str, payload: object, fragment: str) -> None:
    router, _ = make_router()
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    reply = router.handle(verb, data)
    assert reply.ok is False
    assert fragment in reply.message, reply.message
    assert "\n" not in reply.message and len(reply.message) <= 500


def test_size_limit() -> None:
    router, gallery = make_router(max_payload_bytes=1000)
    reply = handle(router, "enroll", {"name": "A", "image": encoded(".png", (100, 100, 3))})
    assert not reply.ok and "payload too large" in reply.message and not gallery.calls


def test_huge_declared_image_is_refused_before_decoding() -> None:
    png = base64.b64decode(encoded(".png"))
    # rewrite the IHDR size to 100000 x 100000 (the CRC no longer matches: never decoded anyway)
    forged = png[:16] + (100_000).to_bytes(4, "big") * 2 + png[24:]
    reply = handle(make_router()[0], "enroll", {"name": "A", "image": base64.b64encode(forged).decode()})
    assert not reply.ok and "image too large (100000x100000 pixels" in reply.message


def test_signed_commands() -> None:
    now = 1_700_000_000.0
    router, _ = make_router(secret=SECRET, clock=lambda: now)
    good = sign_command(SECRET, "status", {"request_id": "s1"}, ts=now)
    assert router.handle("status", good).ok
    replay = router.handle("status", good)
    assert not replay.ok and "replayed" in replay.message
    assert "bad signature" in router.handle("status", sign_command(b"x" * 32, "status", {}, ts=now)).message
    as_other_verb = router.handle("reload", sign_command(SECRET, "status", {}, ts=now + 1))
    assert "bad signature" in as_other_verb.message
    stale = router.handle("status", sign_command(SECRET, "status", {}, ts=now - 3600))
    assert "away from the station clock" in stale.message
    unsigned = router.handle("reload", b"{}")
    assert not unsigned.ok and "requires signed commands" in unsigned.message
    assert router.handle("status", b"{}").ok  # read-only: open without a signature
    with pytest.raises(Exception, match="too short"):
        CommandRouter(secret=b"short")


# ------------------------------------------------------------------------------------------- fuzz

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=5)
_fields = st.sampled_from(["name", "image", "cluster_id", "request_id", "ts", "extra"])
_bad_images = st.one_of(
    st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
    st.binary(min_size=1, max_size=200).map(lambda b: base64.b64encode(b"\x89PNG\r\n\x1a\n" + b).decode()),
    st.binary(min_size=1, max_size=200).map(lambda b: base64.b64encode(b"\xff\xd8\xff" + b).decode()),
    st.text(max_size=40),
)
_payloads = st.one_of(
    st.binary(max_size=300),  # raw garbage
    st.one_of(_json_leaf, st.lists(_json_leaf, max_size=3)).map(lambda v: json.dumps(v).encode()),  # not an object
    st.dictionaries(_fields, _json, min_size=1, max_size=4).map(lambda d: json.dumps(d).encode()),  # wrong types
    st.builds(lambda name, image: json.dumps({"name": name, "image": image}).encode(), st.text(max_size=10), _bad_images),
)
_verbs = st.sampled_from(["enroll", "name_cluster", "forget", "reload", "status"]) | st.text(max_size=12)


@pytest.mark.slow
def test_fuzz_more_than_a_thousand_malformed_commands_all_answered() -> None:
    router, gallery = make_router()
    answered: list[bool] = []

    @settings(max_examples=1500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(verb=_verbs, payload=_payloads)
    def run(verb: str, payload: bytes) -> None:
        calls_before = len(gallery.calls)
        raw = router.handle_bytes(verb, payload)
        reply = json.loads(raw)  # every answer is JSON
        assert set(reply) == {"ok", "message", "request_id", "verb", "result"}
        assert isinstance(reply["ok"], bool) and reply["message"] and "\n" not in reply["message"]
        if not reply["ok"]:
            assert len(gallery.calls) == calls_before or "internal error while handling" in reply["message"] \
                or "already enrolled" in reply["message"]
        answered.append(reply["ok"])

    run()
    refused = answered.count(False)
    print(f"\nfuzz: {len(answered)} commands, {refused} refused with an error reply, {answered.count(True)} accepted")
    assert refused >= 1000


# -- secure by default (issue 15) ------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["enroll", "name_cluster", "forget", "reload"])
def test_without_a_secret_only_status_is_answered(verb: str) -> None:
    gallery = Gallery()
    router = CommandRouter()  # what `edgeface run` builds when no secret exists
    router.register("enroll", gallery.enroll)
    router.register("name_cluster", gallery.name_cluster)
    router.register("forget", gallery.forget)
    router.register("reload", lambda _: None)
    router.register("status", status_handler(lambda: {"fps": 1.0}))
    reply = handle(router, verb, {"name": "alex_lacamoire", "cluster_id": "unknown-1", "request_id": "x"})
    assert not reply.ok and reply.request_id == "x"
    assert f"this station has no command secret, so it refuses {verb}" in reply.message
    assert "edgeface command-secret" in reply.message and "\n" not in reply.message
    assert gallery.calls == []  # the handler never ran
    assert handle(router, "status", {}).ok


def test_a_replayed_signature_is_refused_after_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgeface.service.mqtt.commands import SeenSignatures

    now = 1_700_000_000.0
    path = tmp_path / "state" / "outbox-hall.signatures.sqlite"
    forget = sign_command(SECRET, "reload", {"request_id": "f1"}, ts=now)
    first = CommandRouter(secret=SECRET, seen=SeenSignatures(path), clock=lambda: now)
    first.register("reload", lambda _: None)
    assert first.handle("reload", forget).ok
    # The station restarts: a new router, a new process memory, the same state file.
    second = CommandRouter(secret=SECRET, seen=SeenSignatures(path), clock=lambda: now + 60)
    second.register("reload", lambda _: None)
    replay = second.handle("reload", forget)
    assert not replay.ok and "replayed command" in replay.message
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    # Once out of the clock window the signature is forgotten (the ts check refuses it anyway).
    later = CommandRouter(secret=SECRET, seen=SeenSignatures(path), clock=lambda: now + 3600)
    later.register("reload", lambda _: None)
    assert "away from the station clock" in later.handle("reload", forget).message
    assert later.handle("reload", sign_command(SECRET, "reload", {}, ts=now + 3600)).ok
    import sqlite3

    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 1  # the expired one was pruned
