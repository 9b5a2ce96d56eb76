"""The MQTT side of `edgeface run`: commands on the gallery, Home Assistant discovery and presence,
periodic stats. It joins the camera loop (`Pipeline`), the gallery, the clusters and the MQTT
publisher, which know nothing of each other.

Built by `edgeface.service.app.build_station`, the only place that wires a station. Events: every
event reaches the MQTT outbox (a required subscriber of the event bus) and then `on_event` (presence,
an optional one); the events commands cause (cluster_named, person_forgotten, events queued by other
processes) are published on the same bus. Threads: the pipeline publishes on the camera thread; commands run one at a time on the publisher's command thread; a ticker thread publishes
stats every `mqtt.stats_interval_s`, turns `present` sensors off after `mqtt.present_timeout_s`,
keeps the Home Assistant person entities in step with the gallery (another process may enroll or
remove people) and forwards events that `edgeface clusters` queued in the gallery file. The gallery
and the cluster store are thread-safe (one lock around their SQLite connection); the pipeline's
decider keeps its recent-track memory under its own lock, so a command never waits for a frame.

Commands (see docs/mqtt.md): enroll (photo, or a cluster), name_cluster, ignore_cluster, forget, reject,
reload, status. A handler raises `CommandFailed`/`EdgefaceError` for an `ok: false` reply with a one-line
message; the router turns anything else into an internal-error reply, so no command can stop the
loop.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeface import __version__
from edgeface.bus import EventBus
from edgeface.config import Config, MqttConfig
from edgeface.errors import EdgefaceError
from edgeface.events import PersonForgottenEvent, Stats
from edgeface.service.homeassistant import (
    PAYLOAD_OFF,
    PAYLOAD_ON,
    HaTopics,
    PresenceTracker,
    encode,
    person_config,
    removal,
    station_configs,
)
from edgeface.service.mqtt.commands import (
    CommandFailed,
    CommandResult,
    CommandRouter,
    EnrollCommand,
    ForgetCommand,
    IgnoreClusterCommand,
    NameClusterCommand,
    RejectCommand,
    ReloadCommand,
    StatusCommand,
)
from edgeface.service.mqtt.secrets import read_secret
from edgeface.service.unknown_face import UnknownFace

if TYPE_CHECKING:
    from edgeface.pipeline import Pipeline
    from edgeface.service.cameras import Cameras
    from edgeface.service.fleet import Fleet
    from edgeface.service.mqtt.client import MqttPublisher
    from edgeface.storage.cluster_store import ClusterStage
    from edgeface.vision.analyzer import FaceAnalyzer

log = logging.getLogger(__name__)

SECRET_CREDENTIAL = "command_secret"
"""File name of the command secret under ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``)."""

TICK_S = 0.5
"""How often the ticker wakes (presence timeouts are this precise)."""

GALLERY_SYNC_S = 10.0
"""How often the Home Assistant person entities are compared with the gallery."""

REMOVAL_DELAY_S = 3.0
"""A removed person's state and attributes topics are emptied this long after their config: Home
Assistant drops the entity when the empty config arrives, but not at once, and an empty payload on
the attributes topic of an entity still there is logged as `Erroneous JSON`."""

_DATA_URL = re.compile(r"^data:image/[a-z+.-]+;base64,", re.IGNORECASE)


def default_secret_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where `edgeface command-secret` puts a user's secret: $XDG_CONFIG_HOME or ~/.config, /edgeface/command_secret."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "edgeface" / SECRET_CREDENTIAL


def resolve_command_secret(config: Any, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The shared secret for signed commands: ``$<command_secret_env>``, else ``command_secret_file``,
    else ``$CREDENTIALS_DIRECTORY/command_secret``, else :func:`default_secret_file`; None when there
    is none. Never logged."""
    environ = os.environ if environ is None else environ
    secret = read_secret("command secret", env=config.command_secret_env, file=config.command_secret_file,
                         credential=SECRET_CREDENTIAL, fallbacks=[default_secret_file(environ)], strip=True,
                         environ=environ)
    return None if secret is None else secret.encode("utf-8")


def command_router(mqtt: MqttConfig, station_id: str, environ: Mapping[str, str] | None = None) -> CommandRouter:
    """The router `edgeface run` answers commands with: signed with the station's secret when it has
    one; without, only status is answered (unless mqtt.allow_unsigned_commands). Used signatures are
    remembered next to the outbox (<outbox>.signatures.sqlite), across restarts."""
    from edgeface.service.mqtt.client import default_outbox_path
    from edgeface.service.mqtt.commands import SeenSignatures

    secret = resolve_command_secret(mqtt, environ)
    outbox = mqtt.outbox_path or default_outbox_path(station_id, environ)
    seen = SeenSignatures(outbox.with_name(outbox.stem + ".signatures.sqlite")) if secret is not None else None
    return CommandRouter(secret=secret, allow_unsigned=mqtt.allow_unsigned_commands, seen=seen)


def log_command_policy(router: CommandRouter, mqtt: MqttConfig) -> None:
    """Say at start who may command the station (after the broker settings were accepted)."""
    if router.signed:
        log.info("commands: signed with the command secret; status is open")
    elif mqtt.allow_unsigned_commands:
        log.warning("commands: UNSIGNED commands are accepted (mqtt.allow_unsigned_commands): anyone who can publish "
                    "on the broker can enroll and forget people")
    else:
        log.warning("commands: only status is answered; enroll, forget and the others are refused until the station "
                    "has a command secret (edgeface command-secret; docs/mqtt.md, Security)")


def _image_bytes(text: str) -> bytes:
    """The raw file behind a command's base64 image (already validated by EnrollCommand)."""
    return base64.b64decode("".join(_DATA_URL.sub("", text.strip(), count=1).split()), validate=True)


class Station:
    """Commands, Home Assistant and stats for one running station. Build it, `register` its commands
    on a router, `attach` the publisher and (once built) the pipeline, `start`, and `close` at the end."""

    def __init__(
        self,
        config: Config,
        *,
        gallery: Any = None,
        clusters: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.mqtt: MqttConfig = config.mqtt or MqttConfig()  # without MQTT only the station page commands it
        self.gallery = gallery
        self._clusters = clusters
        self._owns_clusters = False
        self._analyzer: FaceAnalyzer | None = None
        self._cluster_stage: ClusterStage | None = None
        self.bus: EventBus | None = None
        self._clock = clock
        self._started_at = clock()
        self.publisher: MqttPublisher | None = None
        self.pipeline: Pipeline | Cameras | None = None
        self.source: Any = None
        self.ha: HaTopics | None = None
        self._presence = PresenceTracker(self.mqtt.present_timeout_s)
        self._people: set[str] = set()
        self._face = UnknownFace()
        """The last unknown visitor's face on Home Assistant (edgeface.service.unknown_face)."""
        self._pending_clears: list[tuple[float, list[str]]] = []
        """(when, topics) to empty once their entity is gone (REMOVAL_DELAY_S)."""
        self._lock = threading.RLock()
        self._command_lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="edgeface-station", daemon=True)
        self._stats_frames = 0
        self._stats_at = clock()
        self.stats_published = 0
        self._signed = False
        self.fleet: Fleet | None = None
        """The fleet link (`edgeface.service.fleet`), when the station joined one: its counts in `status`."""

    # -- wiring --------------------------------------------------------------------------------

    def register(self, router: CommandRouter) -> CommandRouter:
        self._signed = router.signed
        router.register("enroll", self.enroll)
        router.register("name_cluster", self.name_cluster)
        router.register("ignore_cluster", self.ignore_cluster_command)
        router.register("forget", self.forget)
        router.register("reject", self.reject)
        router.register("reload", self.reload)
        router.register("status", self.status)
        return router

    @property
    def _pub(self) -> MqttPublisher:
        if self.publisher is None:
            raise RuntimeError("attach the publisher first")
        return self.publisher

    def attach(self, publisher: MqttPublisher, bus: EventBus) -> None:
        """The publisher (presence and discovery messages go straight to it) and the bus the station's
        own events (from commands) are published on."""
        self.publisher = publisher
        self.bus = bus
        if self.mqtt.homeassistant:
            self.ha = HaTopics(self.config.station_id, publisher.topics.prefix, self.mqtt.discovery_prefix)

    def attach_pipeline(self, pipeline: Pipeline | Cameras, source: Any = None,
                        clusters: ClusterStage | None = None) -> None:
        """The running pipeline (for reject, status, stats, and its models for enrollment), or every camera
        of a station with several, its source (queue depth) and its cluster stage, whose store the cluster
        commands then use."""
        self.pipeline = pipeline
        self.source = source
        with self._command_lock:
            self._analyzer = None  # enrollment now uses the camera loop's models
            if clusters is not None:
                if self._owns_clusters and self._clusters is not None:
                    self._clusters.close()
                self._clusters, self._owns_clusters = clusters.store, False
                self._cluster_stage = clusters

    def start(self) -> Station:
        """Queue the discovery configs and presence states; start it before the publisher connects, so
        that the first `online` already follows the presence states (see `presence_states`)."""
        if self.publisher is None:
            raise RuntimeError("attach the publisher before start()")
        if self.ha is not None:
            self.publisher.before_online = self.presence_states
            for topic, payload in station_configs(self.ha).items():
                self._pub.publish_raw(topic, encode(payload), retain=True)
            self._pub.publish_raw(self.ha.unknown_presence, PAYLOAD_OFF.encode(), retain=True)
            self._people = self._load_published()
            self._face = UnknownFace.from_state(self._load_state())
            self.sync_people(force=True)
            self._check_face()
        self._ticker.start()
        return self

    def close(self) -> None:
        """Stop the ticker; every `present` sensor that is on goes off (the station stops watching)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join(timeout=10)
        if self.ha is not None and self.publisher is not None:
            with self._lock:
                for key in self._presence.on_keys():
                    self._publish_presence(key, False)
                self._clear_pending(float("inf"))
        if self._owns_clusters and self._clusters is not None:
            self._clusters.close()

    # -- events --------------------------------------------------------------------------------

    def on_event(self, event: Any) -> None:
        """Called after each event went to the outbox (camera thread)."""
        if self.ha is None:
            return
        with self._lock:
            self._face.on_event(event)
            if getattr(event, "type", None) == "recognized":
                self._pub.publish_raw(self.ha.last_person, event.to_json().encode("utf-8"), retain=True)
                if event.name in self._people:  # the attributes first: the ON must not show the last visit's
                    attributes = {"camera": event.camera, "track_id": event.track_id, "confidence": event.confidence,
                                  "last_recognized": event.to_dict()["ts"]}
                    self._pub.publish_raw(self.ha.presence_attributes(event.name), encode(attributes),
                                               retain=True)
            for key, on in self._presence.on_event(event, self._clock()):
                self._publish_presence(key, on)

    def presence_states(self) -> list[tuple[str, bytes]]:
        """(topic, ON/OFF) of every presence sensor as it is now; the publisher sends them before each
        `online` (retained), so that after a crash the `ON`s retained from before are replaced by the
        truth before Home Assistant sees the station available again."""
        if self.ha is None:
            return []
        with self._lock:
            on = set(self._presence.on_keys())
            states = [(self.ha.presence(name), PAYLOAD_ON if name in on else PAYLOAD_OFF) for name in sorted(self._people)]
            states.append((self.ha.unknown_presence, PAYLOAD_ON if None in on else PAYLOAD_OFF))
        return [(topic, payload.encode()) for topic, payload in states]

    def _publish_presence(self, key: str | None, on: bool) -> None:
        assert self.ha is not None
        if key is not None and key not in self._people:
            return  # recognised under a name that has no entity (yet); the next sync adds it
        topic = self.ha.unknown_presence if key is None else self.ha.presence(key)
        self._pub.publish_raw(topic, (PAYLOAD_ON if on else PAYLOAD_OFF).encode(), retain=True)

    # -- Home Assistant person entities ---------------------------------------------------------

    def _state_file(self) -> Path:
        return Path(self._pub.outbox.path).with_suffix(".homeassistant.json")

    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_file().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _load_published(self) -> set[str]:
        """People whose entities an earlier run published (so that ones removed meanwhile are cleared)."""
        try:
            return {str(name) for name in self._load_state().get("people", [])}
        except (TypeError, AttributeError):
            return set()

    def _save_published(self) -> None:
        from edgeface.storage.fileperm import write_private_file

        path = self._state_file()
        try:
            state = {"people": sorted(self._people), **self._face.to_state()}
            write_private_file(path, json.dumps(state, ensure_ascii=False).encode("utf-8"))
        except OSError as error:
            log.warning("cannot save %s (%s); entities of people removed while the station is down may stay in "
                        "Home Assistant", path, error.strerror or error)

    def sync_people(self, force: bool = False) -> tuple[list[str], list[str]]:
        """Publish a `present` entity for every enrolled person and clear those no longer enrolled.
        force: publish every config again. Returns (added, removed)."""
        if self.ha is None:
            return [], []
        names = {info.name for info in self.gallery.list_identities()} if self.gallery is not None else set()
        with self._lock:
            added = sorted(names - self._people) if not force else sorted(names)
            removed = sorted(self._people - names)
            for name in removed:  # first: a renamed person's new entity must not meet the old one's id
                self._clear_person(name)
            for name in added:
                if name not in self._presence.on_keys():  # the state first: the new entity starts OFF
                    self._pub.publish_raw(self.ha.presence(name), PAYLOAD_OFF.encode(), retain=True)
                self._pub.publish_raw(self.ha.person_config(name), encode(person_config(self.ha, name)), retain=True)
            changed = set(added) != set() or bool(removed) or force
            self._people = set(names)
            if changed:
                self._save_published()
        if added or removed:
            log.info("Home Assistant: %d person entities published, %d removed", len(added), len(removed))
        return added, removed

    def _clear_person(self, name: str) -> None:
        """The entity goes now (empty config); its state and attributes topics REMOVAL_DELAY_S later."""
        assert self.ha is not None
        self._presence.forget(name)
        self._pub.publish_raw(self.ha.person_config(name), removal(), retain=True)
        self._pending_clears.append((self._clock() + REMOVAL_DELAY_S,
                                     [self.ha.presence(name), self.ha.presence_attributes(name)]))

    def _clear_pending(self, now: float) -> None:
        """Empty the topics of removed entities whose delay has passed (all of them at close)."""
        due = [topics for when, topics in self._pending_clears if when <= now]
        self._pending_clears = [(when, topics) for when, topics in self._pending_clears if when > now]
        for topics in due:
            for topic in topics:
                self._pub.publish_raw(topic, removal(), retain=True)

    # -- the last unknown visitor's face ----------------------------------------------------------

    def _face_store(self) -> Any:
        if self._clusters is not None or self.gallery is None:
            return self._clusters
        try:
            with self._command_lock:  # the commands open it the same way: one store, not two
                return self._cluster_store()
        except CommandFailed:
            return None

    def _publish_face(self) -> None:
        """A new unknown visitor's face, if one is due (ticker)."""
        if self.ha is None or self._face.due is None:
            return
        store = self._face_store()
        with self._lock:
            face = self._face.take_due(store)
            if face is not None:
                self._pub.publish_raw(self.ha.unknown_face, face[1], retain=True)
                self._save_published()

    def _clear_face(self, who: str | None = None) -> None:
        """Empty the retained face when it shows `who` (a cluster id or a name); None: whatever it shows."""
        if self.ha is None:
            return
        with self._lock:
            if self._face.cluster_id is None or (who is not None and not self._face.concerns(who)):
                return
            self._face.cleared()
            self._pub.publish_raw(self.ha.unknown_face, removal(), retain=True)
            self._save_published()
        log.info("Home Assistant: the last unknown visitor's face was erased")

    def _check_face(self) -> None:
        """Clear the face if it is no longer stored (forgotten from a shell, expired, past retention)."""
        if self.ha is None or self._face.cluster_id is None:
            return
        crops_on = self.config.clusters.store_face_crops  # turned off since: no face is shown any more
        if not crops_on or not self._face.still_stored(self._face_store(), set(self._people)):
            self._clear_face()

    # -- ticker --------------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        next_stats = self._clock()
        next_sync = self._clock() + GALLERY_SYNC_S
        while not self._stop.wait(TICK_S):
            try:
                now = self._clock()
                if self.ha is not None:
                    with self._lock:
                        for key, on in self._presence.tick(now):
                            self._publish_presence(key, on)
                        self._clear_pending(now)
                    self._publish_face()
                if now >= next_stats:
                    next_stats = now + self.mqtt.stats_interval_s
                    self.publish_stats()
                if now >= next_sync:
                    next_sync = now + GALLERY_SYNC_S
                    self.sync_people()
                    self._forward_cluster_events()
                    self._check_face()
            except Exception:  # the ticker must survive a busy gallery or a closed sink
                log.exception("station ticker: an update failed; retrying on the next tick")

    def stats(self, advance: bool = True) -> Stats:
        """Stats now; fps is over the time since the previous stats (advance: start a new interval)."""
        now = self._clock()
        stats = self.pipeline.stats if self.pipeline is not None else None
        frames = stats.frames if stats is not None else 0
        with self._lock:
            elapsed = now - self._stats_at
            fps = (frames - self._stats_frames) / elapsed if elapsed > 0 else 0.0
            if advance:
                self._stats_frames, self._stats_at = frames, now
        queue_depth = 0
        status = getattr(self.source, "status", None)
        if callable(status):
            try:
                s = status()
                queue_depth = max(0, int(s.frames_read) - int(s.frames_dropped) - frames)
            except Exception:
                queue_depth = 0
        embedder = getattr(self.pipeline, "embedder", None)
        precision = getattr(embedder, "precision", None) or self.config.recognition.embedder.precision
        from edgeface.storage.gallery import DEFAULT_MODEL_ID

        return Stats(
            station=self.config.station_id,
            fps=round(max(fps, 0.0), 3),
            queue_depth=queue_depth,
            outbox_length=len(self._pub.outbox) + int(getattr(self.publisher, "spilled", 0)),
            model=f"{DEFAULT_MODEL_ID}-{precision}",
            uptime_s=round(max(now - self._started_at, 0.0), 3),
            quality_rejections=dict(stats.quality_rejections) if stats is not None else {},
            dropped_events=self._pub.status().dropped,
            outbox_write_failures=int(getattr(self.publisher, "write_failures", 0)),
            cameras=self._camera_stats(advance),
        )

    def _camera_stats(self, advance: bool) -> dict[str, Any]:
        """Each camera's numbers (a station with cameras; the single pipeline's loop has none)."""
        camera_stats = getattr(self.pipeline, "camera_stats", None)
        return camera_stats(advance) if callable(camera_stats) else {}

    def publish_stats(self) -> None:
        self._pub.publish_stats(self.stats())
        self.stats_published += 1

    def _forward_cluster_events(self) -> None:
        """Publish the cluster events `edgeface clusters ...` queued from another process."""
        if self._cluster_stage is not None:
            events = self._cluster_stage.take_pending()
        elif self._clusters is not None:
            events = self._clusters.take_events()
        else:
            return
        for event in events:
            self._emit(event)

    # -- commands --------------------------------------------------------------------------------

    def _emit(self, event: Any) -> None:
        """Publish an event a command caused (on the bus, like the pipeline's)."""
        if self.bus is not None:
            self.bus.publish(event)

    def _require_gallery(self) -> Any:
        if self.gallery is None:
            raise CommandFailed("this station runs without a gallery: create one with `edgeface enroll NAME PHOTO "
                                "--gallery FILE` and start `edgeface run` with --gallery FILE")
        return self.gallery

    def _require_pipeline(self) -> Any:
        if self.pipeline is None:
            raise CommandFailed("the station is still starting; retry in a few seconds")
        return self.pipeline

    def _cluster_store(self) -> Any:
        if self._clusters is None:
            gallery = self._require_gallery()
            try:
                from edgeface.config import ClusterSettings
                from edgeface.storage.cluster_store import ClusterStore
            except ImportError:
                raise CommandFailed("clusters of unknown visitors are not available in this edgeface") from None
            settings = getattr(self.config, "clusters", None) or ClusterSettings()
            self._clusters = ClusterStore(gallery.path, settings, station=self.config.station_id, create=False,
                                          gallery=gallery)
            self._owns_clusters = True
        return self._clusters

    def _analyze(self) -> FaceAnalyzer:
        """The camera loop's models (`Pipeline.analyzer`); before the pipeline is attached, the same models
        built from the config."""
        if self._analyzer is None:
            if self.pipeline is not None:
                self._analyzer = self.pipeline.analyzer()
            else:
                from edgeface.vision.analyzer import FaceAnalyzer

                self._analyzer = FaceAnalyzer.for_camera(self.config)
        return self._analyzer

    def enroll(self, command: EnrollCommand) -> CommandResult:
        if command.cluster_id is not None:
            result = self._name_cluster(command.cluster_id, command.name)
            return CommandResult(f"enrolled {result['name']} from {command.cluster_id}", result)
        from edgeface.storage.enroll import Enroller, Photo

        gallery = self._require_gallery()
        photo = Photo(Path("photo"), _image_bytes(command.image or ""))
        with self._command_lock:
            enroller = Enroller(self._analyze(), gallery, keep_chips=self.config.clusters.store_face_crops)
            plan = enroller.examine(command.name, [photo])
            outcome = plan.outcomes[0]
            if not outcome.accepted:
                assert outcome.reason is not None
                raise CommandFailed(f"photo not enrolled for {plan.name!r}: {outcome.reason.value}"
                                    + (f" ({outcome.detail})" if outcome.detail else ""))
            ids = enroller.commit(plan)
            self._keep_template_face(ids, outcome.chip)
        templates = gallery.show(plan.name).template_count
        self.sync_people()
        warning = f"; warning: {outcome.warning}" if outcome.warning else ""
        return CommandResult(f"enrolled {plan.name} ({templates} template{'s' if templates != 1 else ''}){warning}",
                             {"name": plan.name, "template_ids": list[Any](ids), "templates": templates,
                              "warning": outcome.warning})

    def _keep_template_face(self, ids: list[int], chip: Any) -> None:
        """The enrolled photo's face, for the station page (when face crops are stored)."""
        if not ids or chip is None:
            return
        try:
            self._cluster_store().add_template_crop(ids[0], chip)
        except (CommandFailed, EdgefaceError) as error:
            log.warning("the enrolled face's crop was not kept: %s", error)

    def _name_cluster(self, cluster_id: str, name: str, force: bool = False) -> dict[str, Any]:
        with self._command_lock:
            store = self._cluster_store()
            event = store.name(cluster_id, name, force=force)
        self._emit(event)
        self.sync_people()
        templates = self._require_gallery().show(event.name).template_count
        return {"cluster_id": event.cluster_id, "name": event.name, "templates": templates}

    def name_cluster(self, command: NameClusterCommand) -> CommandResult:
        result = self._name_cluster(command.cluster_id, command.name, command.force)
        return CommandResult(f"{result['cluster_id']} is now {result['name']}", result)

    def merge_clusters(self, a: str, b: str, force: bool = False) -> CommandResult:
        """Two clusters are one person (the station page; `edgeface clusters merge` from a shell)."""
        with self._command_lock:
            event = self._cluster_store().merge(a, b, force=force)
        self._emit(event)
        return CommandResult(f"merged {event.merged_id} into {event.kept_id}",
                             {"kept_id": event.kept_id, "merged_id": event.merged_id})

    def forget_cluster(self, cluster_id: str) -> CommandResult:
        """Not a face, or someone not to keep: the cluster goes with its face crops."""
        with self._command_lock:
            gone = self._cluster_store().forget(cluster_id)
        self._clear_face(gone)
        return CommandResult(f"forgot {gone} and its face crops", {"cluster_id": gone})

    def rename_person(self, old: str, new: str) -> CommandResult:
        """`edgeface gallery rename` from the station page: templates, negatives and face crops keep
        their rows; Home Assistant's entity follows (the old one removed, the new one announced)."""
        gallery = self._require_gallery()
        with self._command_lock:
            info = gallery.show(old)
            gallery.rename(info.name, new)
        renamed = gallery.show(new).name
        if self.pipeline is not None:
            self.pipeline.decider.forget_name(info.name)  # its recent decisions carry the old name
        self.sync_people()
        return CommandResult(f"renamed {info.name} to {renamed}", {"old": info.name, "name": renamed})

    def ignore_cluster(self, cluster_id: str, ignored: bool = True) -> CommandResult:
        """Not a face, or someone never to be offered again: the cluster goes on the ignore list (its
        crops erased; the same face joins it and gets no cluster). ignored=False takes it off."""
        with self._command_lock:
            done = self._cluster_store().ignore(cluster_id, ignored)
        if ignored:
            self._clear_face(done)
            return CommandResult(f"ignoring {done}: the same face will not be offered again",
                                 {"cluster_id": done, "ignored": True})
        return CommandResult(f"no longer ignoring {done}", {"cluster_id": done, "ignored": False})

    def ignore_cluster_command(self, command: IgnoreClusterCommand) -> CommandResult:
        """The `ignore_cluster` command (MQTT): `ignore_cluster` with undo meaning ignored=False."""
        return self.ignore_cluster(command.cluster_id, not command.undo)

    def erased(self, name: str) -> None:
        """`name` left the gallery (this station's forget, or the fleet's): the decider's memory of them,
        their Home Assistant entity and a retained face of theirs go too."""
        if self.pipeline is not None:
            self.pipeline.decider.forget_name(name)
        with self._lock:
            if self.ha is not None and name in self._people:
                self._people.discard(name)
                self._clear_person(name)
                self._save_published()
        self._clear_face(name)

    def forget(self, command: ForgetCommand) -> CommandResult:
        gallery = self._require_gallery()
        with self._command_lock:
            info = gallery.show(command.name)  # UnknownIdentityError: a one-line reply
            gallery.remove(info.name)
            clusters_cleared = 0
            store = None
            try:
                store = self._cluster_store()
            except CommandFailed:
                pass
            forget_person = getattr(store, "forget_person", None)
            if callable(forget_person):
                clusters_cleared = int(forget_person(info.name) or 0)
        self.erased(info.name)
        self._emit(PersonForgottenEvent(station=self.config.station_id, name=info.name))
        return CommandResult(f"forgot {info.name}",
                             {"name": info.name, "templates": info.template_count, "negatives": info.negative_count,
                              "cluster_records": clusters_cleared})

    def reject(self, command: RejectCommand) -> CommandResult:
        gallery = self._require_gallery()
        pipeline = self._require_pipeline()
        recent = pipeline.decider.recent(command.track_id)
        if recent is None:
            kept = pipeline.decider.recent_tracks
            raise CommandFailed(f"track {command.track_id} is not among the last {kept} decided tracks of this run")
        embedding = recent.embeddings.get(command.name)
        if embedding is None:
            decided = ", ".join(sorted(recent.embeddings))
            raise CommandFailed(f"track {command.track_id} was never recognised as {command.name!r} (it was: {decided})")
        with self._command_lock:
            removed = gallery.reject_match(command.name, embedding)
            negatives = gallery.show(command.name).negative_count
        message = f"noted: track {command.track_id} was not {command.name}"
        if removed is not None:
            message += f"; removed template {removed}, the one that matched"
        return CommandResult(message, {"track_id": command.track_id, "name": command.name,
                                       "removed_template": removed, "negatives": negatives})

    def reload(self, _: ReloadCommand) -> CommandResult:
        identities = 0
        if self.gallery is not None:
            identities = len(self.gallery.snapshot())
        self.sync_people(force=True)
        return CommandResult(f"reloaded: {identities} {'identity' if identities == 1 else 'identities'}",
                             {"identities": identities})

    def status(self, _: StatusCommand) -> CommandResult:
        stats = self.stats(advance=False) if self.publisher is not None else None
        publisher = self._pub.status() if self.publisher is not None else None
        pipeline = self.pipeline
        result: dict[str, Any] = {
            "station": self.config.station_id,
            "version": __version__,
            "uptime_s": round(self._clock() - self._started_at, 3),
            "frames": pipeline.stats.frames if pipeline is not None else 0,
            "events": dict(pipeline.stats.events) if pipeline is not None else {},
            "fps": stats.fps if stats is not None else 0.0,
            "identities": len(self.gallery.snapshot()) if self.gallery is not None else 0,
            "gallery": str(self.gallery.path) if self.gallery is not None else None,
            "recent_tracks": len(pipeline.decider.recent_track_ids()) if pipeline is not None else 0,
            "cameras": {name: camera.model_dump() for name, camera in self._camera_stats(advance=False).items()},
            "homeassistant": self.ha is not None,
            "fleet": self.fleet.status() if self.fleet is not None else None,
            "mqtt": None if publisher is None else {
                "connected": publisher.connected, "protocol": publisher.protocol,
                "outbox_length": publisher.outbox_length, "dropped": publisher.dropped,
                "write_failures": publisher.write_failures, "signed_commands": self._signed,
            },
        }
        return CommandResult("ok", result)
