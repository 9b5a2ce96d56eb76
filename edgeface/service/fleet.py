"""A station in a fleet: it publishes its gallery's changes as signed person records and applies the
other stations' records to its gallery (docs/fleet.md; records and the merge rule:
`edgeface.storage.changes`).

    gallery file ── changes table (any process: edgeface enroll/gallery, commands, the page)
        └─ Fleet._sync_local: one record per changed person ──> edgeface/fleet/<group>/person/<pid> (retained)
    edgeface/fleet/<group>/person/+ ──> Fleet._receive: verify, merge, apply to the gallery
        └─ a forgotten person: erased here (templates, negatives, clusters' names, crops, Home Assistant
           topics), then edgeface/fleet/<group>/erased/<pid>/<station> (retained), the audit trail

One worker thread does all of it in order, so the gallery and the fleet's state never race inside the
station. Catch-up: on (re)connect the broker hands over the retained records; a record older than
what this station holds is answered with the merged one, and a few seconds after connecting the
station publishes each person whose retained record it did not see or saw differ (anti-entropy: a
restarted broker, a bridge that was down). Nothing is sent again when the broker is up to date.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeface.errors import ConfigError, EdgefaceError
from edgeface.service.mqtt.secrets import read_secret
from edgeface.storage.changes import (
    RECORD_VERSION,
    Clock,
    Face,
    FleetState,
    PersonState,
    RecordError,
    content_id,
    decode_vector,
    display_names,
    encode_vector,
    merge,
    open_envelope,
    person_id,
    seal,
    tombstone,
)

if TYPE_CHECKING:
    import paho.mqtt.client as paho

    from edgeface.config import Config
    from edgeface.events import Event
    from edgeface.storage.cluster_store import ClusterStore
    from edgeface.storage.gallery import Gallery

log = logging.getLogger(__name__)

KEY_CREDENTIAL = "fleet_key"
MIN_KEY_CHARS = 16
SETTLE_S = 3.0
"""After connecting, how long the retained records may take to arrive before the station publishes
the people the broker lacks."""
STATUS_INTERVAL_S = 10.0
PRUNE_INTERVAL_S = 5.0
"""How often the change-log rows already read are deleted from the gallery file."""
BLOCK_SIZE = 1_000_000
"""Cluster numbers per station: station block b numbers its strangers b x BLOCK_SIZE + 1, + 2, ..."""
CENTROID_REPUBLISH_DISTANCE = 0.05
"""A shared stranger's record is sent again when its centroid moved this far (most observations move it less)."""


def cluster_block(group: str, station: str) -> int:
    import hashlib

    return int(hashlib.sha256(f"{group}:{station}".encode()).hexdigest()[:8], 16) % 999 + 1


def resolve_fleet_key(config: Config, environ: Mapping[str, str] | None = None) -> bytes:
    """The fleet's shared key, or ConfigError: a station does not join without it."""
    fleet = config.fleet
    key = read_secret("fleet key", env=fleet.key_env, file=fleet.key_file, credential=KEY_CREDENTIAL,
                      strip=True, environ=environ)
    if key is None:
        raise ConfigError(f"fleet {fleet.group!r}: no shared key (set ${fleet.key_env}, fleet.key_file or the systemd "
                          f"credential {KEY_CREDENTIAL}); this station does not join without it")
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"fleet {fleet.group!r}: the shared key has {len(key)} characters, at least {MIN_KEY_CHARS} "
                          "are needed (e.g. `openssl rand -hex 32`)")
    return key.encode("utf-8")


@dataclass
class FleetStats:
    received: int = 0
    applied: int = 0
    published: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    erased: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"received": self.received, "applied": self.applied, "published": self.published,
                "refused": dict(self.refused), "erased": self.erased}


class Fleet:
    """Joins `gallery` to the fleet of `config.fleet` over the broker of `config.mqtt`.
    `on_forgotten(name)`: erase what else the station keeps of a forgotten person (clusters, the
    decider's memory, Home Assistant); returns how many cluster records mentioned them."""

    def __init__(self, config: Config, gallery: Gallery, *, key: bytes, mqtt_url: str | None = None,
                 on_forgotten: Callable[[str], int] | None = None, clusters: ClusterStore | None = None,
                 emit: Callable[[Event], None] | None = None, environ: Mapping[str, str] | None = None) -> None:
        from edgeface.config import MqttConfig
        from edgeface.service.mqtt.client import parse_mqtt_url, resolve_password

        self.config = config.fleet
        self.station = config.station_id
        self.gallery = gallery
        self.key = key
        self.on_forgotten = on_forgotten
        self.mqtt = config.mqtt or MqttConfig()
        if mqtt_url:
            self.mqtt = self.mqtt.model_copy(update={"url": mqtt_url})
        self.address = parse_mqtt_url(self.mqtt.url)
        self._username = self.mqtt.username or self.address.username
        self._password = resolve_password(self.mqtt, environ)
        self.prefix = f"edgeface/fleet/{self.config.group}/"
        self.state = FleetState(gallery.path)
        self.clock = Clock(self.station, self.state.meta("clock"))
        self.stats = FleetStats()
        self._inbox: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._stop = threading.Event()
        self._connected_at: float | None = None
        self._settled = True
        self._seen: dict[str, bytes] = {}
        self._client: paho.Client | None = None
        self._worker = threading.Thread(target=self._run, name="edgeface-fleet", daemon=True)
        self._last_status = 0.0
        self._pruned_at = 0.0
        self._read_through = int(self.state.meta("processed", "0"))
        """The last change-log row read: a local change after it makes the fleet's gallery writes wait."""
        self.clusters = clusters
        self.emit = emit
        self.block = self.config.cluster_block or cluster_block(self.config.group, self.station)
        self.strangers: dict[int, dict[str, Any]] = {}
        """Every stranger record received, by cluster number (the fleet's shared unknown-N)."""
        self._shared: dict[int, np.ndarray] = {}
        """This station's strangers as last published (centroids), or as gone (fates)."""
        self._fates_sent: set[int] = set()
        self._held: set[int] = set()
        """Other stations' strangers held here at the last poll."""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Fleet:
        if self.clusters is not None:
            self.clusters.use_number_block(self.block * BLOCK_SIZE + 1, (self.block + 1) * BLOCK_SIZE)
        self._sync_local(initial=True)
        self._client = self._make_client()
        self._client.connect_async(self.address.host, self.address.port, keepalive=self.mqtt.keepalive_s)
        self._client.loop_start()
        self._worker.start()
        log.info("fleet %r: station %s joined via %s", self.config.group, self.station, self.address)
        return self

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(timeout=10)
        if self._client is not None:
            try:
                self._publish_status(online=False).wait_for_publish(2)
            except (RuntimeError, ValueError):
                pass
            self._client.disconnect()
            self._client.loop_stop()
        self.state.close()

    def _make_client(self) -> paho.Client:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        from edgeface.service.mqtt.client import secure_client

        protocol = MQTTProtocolVersion.MQTTv311 if self.mqtt.protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"edgeface-{self.station}-fleet-{uuid.uuid4().hex[:6]}",
                             protocol=protocol, reconnect_on_failure=True)
        secure_client(client, self.mqtt, self._username, self._password, self.address.tls or self.mqtt.ca_file is not None)
        client.will_set(self._status_topic, seal(self.key, self._status_body(False)), qos=1, retain=True)
        client.reconnect_delay_set(min(self.mqtt.reconnect_min_s, 1.0), min(self.mqtt.reconnect_max_s, 5.0))  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_message = lambda c, u, m: self._inbox.put((m.topic, bytes(m.payload), bool(m.retain)))
        return client

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: Any, props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("fleet: %s refused the connection: %s", self.address, reason)
            return
        client.subscribe([(self.prefix + "person/+", 1), (self.prefix + "stranger/+", 1), (self.prefix + "station/+", 1)])
        self._inbox.put(("", b"", False))  # tells the worker: connected, start the settle period

    @property
    def _status_topic(self) -> str:
        return f"{self.prefix}station/{self.station}"

    def _status_body(self, online: bool) -> dict[str, Any]:
        return {"v": RECORD_VERSION, "group": self.config.group, "type": "station", "origin": self.station,
                "online": online, "people": sum(1 for s in self.state.people.values() if s.deleted is None),
                "forgotten": sum(1 for s in self.state.people.values() if s.deleted is not None),
                "cluster_block": self.block,
                "stats": self.stats.to_json()}

    def _publish_status(self, online: bool = True) -> Any:
        assert self._client is not None
        self._last_status = time.monotonic()
        return self._client.publish(self._status_topic, seal(self.key, self._status_body(online)), qos=1, retain=True)

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                try:
                    topic, payload, retained = self._inbox.get(timeout=min(self.config.poll_s, 0.2))
                except queue.Empty:
                    topic = None
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + self.config.poll_s
                    self._sync_local()
                    self._share_strangers()
                elif topic:
                    self._sync_local()  # a record is merged with everything this gallery holds, its latest changes included
                if topic == "":
                    self._connected_at, self._settled, self._seen = now, False, {}
                    self._publish_status()
                elif topic:
                    self._receive(topic, payload)
                if not self._settled and self._connected_at is not None and now - self._connected_at >= SETTLE_S:
                    self._settled = True
                    self._anti_entropy()
                if self._connected_at is not None and now - self._last_status >= STATUS_INTERVAL_S:
                    self._publish_status()
            except Exception:  # the fleet must survive a busy gallery or a bad record
                log.exception("fleet: an update failed; retrying")
                self._stop.wait(0.5)

    def _publish(self, state: PersonState) -> None:
        if self._client is None:
            return
        body = {"v": RECORD_VERSION, "group": self.config.group, "type": "person", "origin": self.station,
                "state": state.to_json()}
        self._client.publish(f"{self.prefix}person/{state.pid}", seal(self.key, body), qos=1, retain=True)
        self._seen[state.pid] = state.canonical()
        self.stats.published += 1

    def _anti_entropy(self) -> None:
        """Publish every person whose record the broker did not hand over, or handed over differing."""
        sent = 0
        for pid, state in list(self.state.people.items()):
            if self._seen.get(pid) != state.canonical():
                self._publish(state)
                sent += 1
        if sent:
            log.info("fleet: %d person record%s the broker lacked published", sent, "" if sent == 1 else "s")

    # -- local changes -> records ------------------------------------------------------------------

    def _sync_local(self, initial: bool = False) -> None:
        """Turn the gallery's change-log rows since the last run into records (all identities on the
        first run of a fleet on this file)."""
        processed = int(self.state.meta("processed", "-1"))
        if processed < 0:
            last = self.gallery.last_change()
            self._read_through = last
            for identity_id in sorted(self.gallery.identity_ids().values()):
                self._sync_identity(identity_id)
            self._mark_processed(last)
            return
        changes = self.gallery.changes_after(processed)
        if changes:  # each identity is read as it is now: with every row up to the batch's last
            self._read_through = changes[-1].seq
        for change in changes:
            if change.remote:
                continue
            if change.kind == "removed":
                self._forget_locally(change.identity_id, change.at_ms)
            else:
                self._sync_identity(change.identity_id, change.at_ms)
        if changes:
            self._mark_processed(changes[-1].seq)

    def _mark_processed(self, seq: int) -> None:
        self._read_through = seq
        self.state.set_meta("processed", str(seq))
        self.state.set_meta("clock", self.clock.last)
        now = time.monotonic()
        if now - self._pruned_at >= PRUNE_INTERVAL_S:  # a gallery write (fsync'd): not once per record
            self._pruned_at = now
            self.gallery.prune_changes(seq)

    def _forget_locally(self, identity_id: int, at_ms: int) -> None:
        pid = self.state.pid_of(identity_id)
        if pid is None:
            return
        before = self.state.people[pid]
        gone = tombstone(pid, self.clock.now(at_ms))
        self.state.save(gone, None)
        self._publish(gone)
        self._after_erasure(pid, gone, before.name, before)

    def _new_pid(self, name: str) -> str:
        for incarnation in range(10_000):
            pid = person_id(self.key, name, incarnation)
            known = self.state.people.get(pid)
            if known is None or (known.deleted is None and pid not in self.state.identity_of and known.name == name):
                return pid
        raise EdgefaceError(f"fleet: no free person id for {name!r}")

    def _sync_identity(self, identity_id: int, at_ms: int | None = None) -> None:
        """Record what this process's gallery holds of one identity that changed here (at `at_ms`)."""
        person = self.gallery.stored_person(identity_id)
        if person is None:
            return  # removed since; its "removed" row follows
        pid = self.state.pid_of(identity_id)
        adopted = pid is None
        if pid is None:
            pid = self._new_pid(person.name)
            known = self.state.people.get(pid)
            current = known or PersonState(pid, person.name, self.clock.now(at_ms))
        else:
            current = self.state.people[pid]
        model = self.gallery.model_id
        name, name_hlc = current.name, current.name_hlc
        shown = current.name if person.name == current.name else self._shown({current.name}).get(pid, current.name)
        if person.name != shown:
            name, name_hlc = person.name, self.clock.now(at_ms)
        templates = dict(current.templates)
        removed = set(current.removed)
        stored = set()
        for template_id, vector, quality, source, created in person.templates:
            cid = content_id(vector)
            stored.add(cid)
            vectors = {model: encode_vector(vector)}
            second = person.seconds.get(template_id)
            if second is not None:  # the second opinion's embedding travels with the template (never its chip)
                vectors[f"{second.model_id}@{second.model_version}"] = encode_vector(second.embedding)
            if cid in removed:
                continue
            if cid not in templates:
                templates[cid] = Face(self.clock.now(at_ms), vectors, quality, source, created)
            elif not set(vectors) <= set(templates[cid].vectors):  # e.g. `edgeface gallery upgrade` added one
                templates[cid] = Face(templates[cid].hlc, {**vectors, **templates[cid].vectors}, templates[cid].quality,
                                      templates[cid].source_sha256, templates[cid].created)
        for cid, face in list(templates.items()):
            if not adopted and model in face.vectors and cid not in stored:  # deleted here: a "not X" report
                removed.add(cid)
                del templates[cid]
        negatives = dict(current.negatives)
        for _, vector, created in person.negatives:
            cid = content_id(vector)
            if cid not in negatives:
                negatives[cid] = Face(self.clock.now(at_ms), {model: encode_vector(vector)}, created=created)
        updated = PersonState(pid, name, name_hlc, None, templates, frozenset(removed), negatives)
        if updated.canonical() != current.canonical() or pid not in self.state.people \
                or self.state.identity_of.get(pid) != identity_id:
            self.state.save(updated, identity_id)
            self._publish(updated)
            if adopted and len(updated.templates) > len(person.templates):
                self._apply(updated, updated)  # the fleet knew this name already: its templates join ours

    # -- records -> the gallery ----------------------------------------------------------------------

    def _refuse(self, reason: str) -> None:
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1

    def _receive(self, topic: str, payload: bytes) -> None:
        self.stats.received += 1
        if not payload:
            return  # a cleared retained topic
        if topic.startswith(self.prefix + "stranger/") or topic.startswith(self.prefix + "station/"):
            try:
                body = open_envelope(self.key, payload, self.config.group)
            except RecordError as error:
                self._refuse(str(error) if str(error) in ("unsigned", "wrongly signed") else "malformed")
                log.warning("fleet: record on %s ignored: %s", topic, error)
                return
            if body.get("type") == "station":
                if body.get("cluster_block") == self.block and body.get("origin") != self.station:
                    log.error("fleet: stations %s and %s number their strangers in the same block %d; set "
                              "fleet.cluster_block on one of them", self.station, body.get("origin"), self.block)
            elif body.get("type") == "stranger" and body.get("origin") != self.station:
                self._receive_stranger(body)
            return
        try:
            body = open_envelope(self.key, payload, self.config.group)
            if body.get("type") != "person":
                raise RecordError("not a person record")
            incoming = PersonState.from_json(body.get("state"))
            if topic != f"{self.prefix}person/{incoming.pid}":
                raise RecordError("a record on another person's topic")
        except RecordError as error:
            reason = str(error)
            self._refuse("unsigned" if reason == "unsigned" else "wrongly signed" if reason == "wrongly signed"
                         else "malformed")
            log.warning("fleet: record on %s ignored: %s", topic, reason)
            return
        try:
            self._check_vectors(incoming)
        except RecordError as error:
            self._refuse("malformed")
            log.warning("fleet: record on %s ignored: %s", topic, error)
            return
        self.clock.observe(incoming.version)
        current = self.state.people.get(incoming.pid)
        merged = incoming if current is None else merge(current, incoming)
        self._seen[incoming.pid] = incoming.canonical()
        if current is None or merged.canonical() != current.canonical():
            from edgeface.storage.gallery import ChangesPendingError, DuplicateNameError

            for attempt in range(5):
                try:
                    self._apply(merged, current)
                    break
                except (ChangesPendingError, DuplicateNameError):
                    # changed here a moment ago, not yet recorded: record that first, merge again
                    if attempt == 4:
                        raise
                    self._sync_local()
                    current = self.state.people.get(incoming.pid)
                    merged = incoming if current is None else merge(current, incoming)
            self.stats.applied += 1
        if merged.canonical() != incoming.canonical():
            self._publish(merged)  # the sender, or the broker's retained copy, holds less than we do

    def _check_vectors(self, state: PersonState) -> None:
        """The vectors of this station's model must be unit embeddings of its size."""
        from edgeface.recognition.vectors import EMBEDDING_DIM

        for face in [*state.templates.values(), *state.negatives.values()]:
            text = face.vectors.get(self.gallery.model_id)
            if text is not None:
                vector = decode_vector(text)
                if vector.shape != (EMBEDDING_DIM,) or abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
                    raise RecordError(f"a {self.gallery.model_id} vector is not a unit vector of {EMBEDDING_DIM} numbers")
            for key in (k for k in face.vectors if "@" in k):  # a second opinion's embedding, stored as it comes
                vector = decode_vector(face.vectors[key])
                if vector.shape != (EMBEDDING_DIM,) or abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
                    raise RecordError(f"a {key} vector is not a unit vector of {EMBEDDING_DIM} numbers")

    def _apply(self, state: PersonState, before: PersonState | None) -> None:
        """Make the gallery hold `state` (and every name `display_names` gives)."""
        if state.deleted is not None:
            identity_id = self.state.identity_of.get(state.pid)
            stored = self.gallery.stored_person(identity_id) if identity_id is not None else None
            if stored is not None:
                with self.gallery.remote_changes():
                    self.gallery.remove(stored.name)
            self.state.save(state, None)
            if before is None or before.deleted is None:
                self._after_erasure(state.pid, state, stored.name if stored else None, before)
                if stored is not None and self.emit is not None:  # forgotten elsewhere: said here too
                    from edgeface.events import PersonForgottenEvent

                    self.emit(PersonForgottenEvent(station=self.station, name=stored.name))
            return
        claims = {state.name, before.name if before is not None else None}
        shown = self._shown(claims)
        names = self._shown(claims, state)
        others = any(names.get(pid) != shown.get(pid) for pid in {*names, *shown} - {state.pid})
        if others:  # a collision appeared or went away: the other claimants' names change too
            self._settle_names(shown, names, skip=state.pid)
        identity_id = self.state.identity_of.get(state.pid)
        model = self.gallery.model_id
        stored = self.gallery.stored_person(identity_id) if identity_id is not None else None
        have = {content_id(vector): template_id for template_id, vector, *_ in (stored.templates if stored else ())}
        new_faces = [face for cid, face in sorted(state.templates.items()) if model in face.vectors and cid not in have]
        add = [(decode_vector(face.vectors[model]), face.quality, face.source_sha256, face.created or _now())
               for face in new_faces]
        add_seconds = [_second(face) for face in new_faces]
        seconds_of = [(have[cid], second) for cid, face in sorted(state.templates.items())
                      if cid in have and stored is not None and have[cid] not in stored.seconds
                      and (second := _second(face)) is not None]
        drop = [template_id for cid, template_id in have.items() if cid in state.removed]
        have_negatives = {content_id(vector) for _, vector, _ in (stored.negatives if stored else ())}
        negatives = [(decode_vector(face.vectors[model]), face.created or _now())
                     for cid, face in sorted(state.negatives.items()) if model in face.vectors and cid not in have_negatives]
        if (stored is None and not add) or \
                (stored is not None and not add and not drop and not negatives and not seconds_of
                 and stored.name == names[state.pid]):
            self.state.save(state, stored.identity_id if stored else None)  # nothing this station's model can use
            return
        with self.gallery.remote_changes():
            identity_id = self.gallery.apply_person(stored.identity_id if stored else None, names[state.pid], add, drop,
                                                    negatives, read_through=self._read_through, add_seconds=add_seconds,
                                                    seconds_of=seconds_of)
        self.state.save(state, identity_id)  # after the gallery: a failure leaves both as they were
        if others:
            self._settle_names(shown, names)

    def _shown(self, claims: set[str | None], replacing: PersonState | None = None) -> dict[str, str]:
        """`display_names` of the people claiming one of these names (only they can change each other's),
        with `replacing` in place of its earlier version."""
        people = dict(self.state.people)
        if replacing is not None:
            people[replacing.pid] = replacing
        return display_names(s for s in people.values() if s.name in claims)

    def _settle_names(self, shown: dict[str, str], names: dict[str, str], skip: str | None = None) -> None:
        """Rename the identities whose shown name changes from `shown` to `names` (a collision appeared
        or went away); names another identity still holds are freed first, through a temporary name
        when two swap. An identity renamed here meanwhile (not yet recorded) is left alone."""
        from edgeface.storage.gallery import DuplicateNameError

        current = {identity_id: name for name, identity_id in self.gallery.identity_ids().items()}
        todo = {pid: (current[identity_id], names[pid]) for pid, identity_id in self.state.identity_of.items()
                if pid != skip and identity_id in current and pid in names and current[identity_id] != names[pid]
                and (current[identity_id] == shown.get(pid) or current[identity_id].startswith("~"))}
        for _ in range(2 * len(todo) + 2):
            if not todo:
                return
            progressed = False
            for pid, (old, new) in list(todo.items()):
                try:
                    with self.gallery.remote_changes():
                        self.gallery.rename(old, new)
                except DuplicateNameError:
                    continue
                del todo[pid]
                progressed = True
            if not progressed:
                blocked = next((pid for pid, (old, _) in todo.items() if not old.startswith("~")), None)
                if blocked is None:
                    return  # held by an identity not renamed here (the record being applied): after it
                old, new = todo[blocked]
                temporary = f"~{blocked[:12]}"
                with self.gallery.remote_changes():
                    self.gallery.rename(old, temporary)
                todo[blocked] = (temporary, new)

    def _after_erasure(self, pid: str, state: PersonState, name: str | None, before: PersonState | None) -> None:
        """Everything else the station keeps of the person goes too; then the acknowledgement."""
        clusters = 0
        if name is not None and self.on_forgotten is not None:
            try:
                clusters = int(self.on_forgotten(name) or 0)
            except Exception:
                log.exception("fleet: erasing %s from the clusters failed", pid)
        self.stats.erased += 1
        templates = len(before.templates) if before is not None else 0
        negatives = len(before.negatives) if before is not None else 0
        body = {"v": RECORD_VERSION, "group": self.config.group, "type": "erased", "origin": self.station,
                "pid": pid, "deleted": state.deleted, "erased_at": _now(), "templates": templates,
                "negatives": negatives, "cluster_records": clusters}
        if self._client is not None:
            self._client.publish(f"{self.prefix}erased/{pid}/{self.station}", seal(self.key, body), qos=1, retain=True)
        log.info("fleet: person %s erased here (%d templates, %d negatives, %d cluster records)",
                 pid, templates, negatives, clusters)

    # -- strangers: unknown people shared between stations ------------------------------------------------

    def _publish_stranger(self, number: int, body: dict[str, Any]) -> None:
        if self._client is None:
            return
        envelope = {"v": RECORD_VERSION, "group": self.config.group, "type": "stranger", "origin": self.station,
                    "number": number, **body}
        self._client.publish(f"{self.prefix}stranger/{number}", seal(self.key, envelope), qos=1, retain=True)
        self.stats.published += 1

    def _own(self, number: int) -> bool:
        return self.block * BLOCK_SIZE <= number < (self.block + 1) * BLOCK_SIZE

    def _share_strangers(self) -> None:
        """Publish this station's confirmed strangers (centroid only) and the fate of those that are
        gone (merged into an older one, named, forgotten); merge ours into older matching ones."""
        if self.clusters is None or self._client is None:
            return
        live = {state.number: state for state in self.clusters.confirmed()}
        for number, state in live.items():
            if not self._own(number):
                continue
            centroid = _unit(state.sum)
            before = self._shared.get(number)
            if before is None or float(np.linalg.norm(before - centroid)) > CENTROID_REPUBLISH_DISTANCE:
                self._shared[number] = centroid
                self._publish_stranger(number, {"first_seen": state.first_seen, "fate": None,
                                                "centroid": [{"model": self.gallery.model_id, "f32": encode_vector(centroid)}],
                                                "apart": sorted(state.apart)})
                self._match_remote(number, centroid, state.first_seen, state.apart)
        for number in [n for n in self._shared if n not in live and n not in self._fates_sent]:
            self._send_fate(number)
        retry = set()
        for number in self._held - set(live):  # another station's stranger, named here: named everywhere
            fate = self.clusters.fate(number)
            if fate is not None and fate[0] == "named" and number not in self._fates_sent:
                self._send_fate(number)
                if number not in self._fates_sent:
                    retry.add(number)  # the person's record is not made yet
        self._held = {n for n in live if not self._own(n)} | retry
        if self.strangers:
            self._settle_strangers()

    def _send_fate(self, number: int) -> None:
        assert self.clusters is not None
        fate = self.clusters.fate(number)
        if fate is None:
            return
        kind, into, name = fate
        if kind == "merged" and into is not None:
            body: dict[str, Any] = {"fate": f"merged:{into}"}
        elif kind == "named" and name is not None:
            identity_id = self.gallery.identity_ids().get(name)
            pid = self.state.pid_of(identity_id) if identity_id is not None else None
            if pid is None:
                return  # the person is not recorded yet: next poll
            body = {"fate": f"named:{pid}"}
        else:
            body = {"fate": "gone"}
        self._fates_sent.add(number)
        self._publish_stranger(number, body)

    def _match_remote(self, number: int, centroid: np.ndarray, first_seen: float, apart: set[int]) -> None:
        """Our confirmed stranger `number` against the others' live strangers: an older one that is
        near and not cannot-linked takes ours in."""
        for other, record in sorted(self.strangers.items()):
            if record.get("fate") is not None or other == number or other in apart or number in record.get("apart", []):
                continue
            vector = self._centroid(record)
            if vector is None or float(np.linalg.norm(vector - centroid)) >= self._assign_distance:
                continue
            if (float(record["first_seen"]), other) < (first_seen, number):
                self._adopt(other, record)
                self._absorb(other, number)
                return

    @property
    def _assign_distance(self) -> float:
        assert self.clusters is not None
        return self.clusters.settings.assign_max_distance

    def _centroid(self, record: dict[str, Any]) -> np.ndarray | None:
        for item in record.get("centroid") or []:
            if isinstance(item, dict) and item.get("model") == self.gallery.model_id:
                try:
                    return _unit(decode_vector(str(item.get("f32"))))
                except RecordError:
                    return None
        return None

    def _adopt(self, number: int, record: dict[str, Any]) -> bool:
        assert self.clusters is not None
        vector = self._centroid(record)
        if vector is None:
            return False
        apart = [int(a) for a in record.get("apart", []) if isinstance(a, int)]
        return self.clusters.adopt(number, float(record["first_seen"]), vector, apart, [])

    def _absorb(self, kept: int, gone: int) -> None:
        assert self.clusters is not None
        event = self.clusters.absorb(kept, gone)
        if event is not None:
            log.info("fleet: %s is %s seen at another station; merged", event.merged_id, event.kept_id)
            if self.emit is not None:
                self.emit(event)

    def _receive_stranger(self, body: dict[str, Any]) -> None:
        if self.clusters is None:
            return
        number = body.get("number")
        if not isinstance(number, int) or not 0 < number < 10**9:
            self._refuse("malformed")
            return
        fate = body.get("fate")
        if fate is None:
            if not isinstance(body.get("first_seen"), (int, float)) or self._centroid(body) is None:
                self._refuse("malformed")
                return
        self.strangers[number] = body
        self.stats.applied += 1
        self._settle_strangers()

    def _settle_strangers(self) -> None:
        """Apply every stranger record received: fates to the clusters held here, live ones adopted or
        merged with a matching cluster of ours (the older id kept)."""
        assert self.clusters is not None
        from edgeface.recognition.clusters import ClusterError, format_cluster_id

        local = {state.number: state for state in self.clusters.confirmed()}
        for number, record in sorted(self.strangers.items()):
            fate = record.get("fate")
            if isinstance(fate, str) and fate.startswith("merged:"):
                into = int(fate.split(":", 1)[1])
                if number in local:
                    if into not in local and into in self.strangers and self.strangers[into].get("fate") is None:
                        self._adopt(into, self.strangers[into])
                    self._absorb(into, number)
            elif isinstance(fate, str) and fate.startswith("named:"):
                pid = fate.split(":", 1)[1]
                person = self.state.people.get(pid)
                name = self._shown({person.name}).get(pid) if person is not None else None
                if number in local and name is not None and pid in self.state.identity_of:
                    try:
                        event = self.clusters.name(format_cluster_id(number), name, force=True)
                    except ClusterError as error:
                        log.warning("fleet: %s not named %r: %s", format_cluster_id(number), name, error)
                        continue
                    log.info("fleet: %s was named %r at another station", event.cluster_id, name)
                    if self.emit is not None:
                        self.emit(event)
            elif fate == "gone":
                if number in local and not self._own(number):
                    self.clusters.forget(format_cluster_id(number))
            elif number not in local and self.clusters.fate(number) is None:
                vector = self._centroid(record)
                assert vector is not None
                near = [s for s in local.values() if number not in s.apart and s.number not in record.get("apart", [])
                        and float(np.linalg.norm(_unit(s.sum) - vector)) < self._assign_distance]
                if not near:
                    self._adopt(number, record)
                    continue
                mine = min(near, key=lambda s: float(np.linalg.norm(_unit(s.sum) - vector)))
                if (float(record["first_seen"]), number) < (mine.first_seen, mine.number) and self._adopt(number, record):
                    self._absorb(number, mine.number)
            local = {state.number: state for state in self.clusters.confirmed()}

    def status(self) -> dict[str, Any]:
        return {"group": self.config.group, **self._status_body(True), "stats": self.stats.to_json()}


def _second(face: Face) -> Any:
    """The second-model embedding a template carries ("<model id>@<version>": vector), or None."""
    from edgeface.storage.gallery import SecondTemplate

    for key in sorted(face.vectors):
        if "@" in key:
            model_id, version = key.split("@", 1)
            return SecondTemplate(model_id, version, decode_vector(face.vectors[key]))
    return None


def _unit(vector: Any) -> np.ndarray:
    array = np.asarray(vector, np.float64)
    return (array / max(float(np.linalg.norm(array)), 1e-12)).astype(np.float32)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

