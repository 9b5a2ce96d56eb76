"""MQTT publisher: an EventSink that delivers events at least once, in order, through an outbox.

paho-mqtt v2 (``CallbackAPIVersion.VERSION2``) adapter. It knows topics, the outbox and the command
router, and nothing about the pipeline.

Delivery (see :mod:`edgeface.storage.outbox`)::

    publish(event) ──▶ outbox.put (committed to SQLite) ──▶ sender thread ──▶ paho publish, QoS 1
                                                                   ▲                 │
                                        outbox.ack (row deleted) ──┴──── PUBACK ◀────┘

- ``publish`` only writes to the outbox and wakes the sender: it never waits for the network, and it
  never raises for a full disk: a message the outbox cannot store is kept in memory (at most
  ``SPILL_MAX_MESSAGES``), logged once, counted (``write_failures``) and written to the outbox as soon
  as the disk takes it again, in order. Nothing already in the outbox is lost.
- The sender thread hands at most ``max_inflight`` rows to paho, oldest first. Rows are deleted
  only when their PUBACK arrives. While the connection is down paho keeps the handed rows and
  resends them (DUP) after reconnecting, before anything newer; rows not yet handed stay in the
  outbox. A restart (or ``kill -9``) replays every row still in the outbox, oldest first.
  Delivery is therefore at least once and in order: consumers deduplicate on the event ``id``.
- A PUBACK with an MQTT 5 failure reason (e.g. "not authorized") drops that row (logged and
  counted in ``dropped``): retrying a message the broker refuses would block every later event.
- Availability: ``<prefix>status`` is ``online`` (retained, QoS 1) after each connect and ``offline``
  on a clean close; the last will (retained) says ``offline`` when the station dies.
- Commands: subscribes to ``<prefix>cmd/+`` in ``on_connect`` (so subscriptions survive
  reconnects); each command runs on a worker thread through :class:`CommandRouter` and the reply
  goes to ``<prefix>cmd/<verb>/reply``, or to the MQTT 5 response topic (with the correlation data)
  when the request named one under the station's own reply topics or ``response_topic_prefix``:
  a command never makes the station publish anywhere else (a Home Assistant config topic, say).
- Oversized messages: over MQTT 5 the CONNECT carries a Maximum Packet Size (the command limit plus
  room for the topic), so the broker drops larger messages instead of sending them: they never reach
  this process's memory. MQTT 3.1.1 has no such field: limit the size on the broker
  (Mosquitto ``max_packet_size``) or with ACLs on ``<prefix>cmd/#`` (docs/mqtt.md, Security).
- Protocol: MQTT 5 first; ``protocol="auto"`` falls back to 3.1.1 when the broker refuses the
  protocol version. Reconnects use paho's exponential backoff (``reconnect_min_s`` doubling up to
  ``reconnect_max_s``).
- Secrets: the password comes from the environment variable ``password_env`` (default
  ``EDGEFACE_MQTT_PASSWORD``), else ``password_file``, else ``$CREDENTIALS_DIRECTORY/mqtt_password``
  (systemd ``LoadCredential=``). It is never logged; a password inside the URL is refused.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeface.config import MqttConfig
from edgeface.errors import ConfigError, EdgefaceError
from edgeface.events import Event, Stats, Topics, check_prefix
from edgeface.service.mqtt.commands import MAX_COMMAND_BYTES, CommandReply, CommandRouter
from edgeface.service.mqtt.secrets import read_secret
from edgeface.storage.outbox import Outbox, OutboxWriteError
from edgeface.text import first_line

log = logging.getLogger(__name__)

PASSWORD_CREDENTIAL = "mqtt_password"
"""File name of the password under ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``)."""

PACKET_OVERHEAD_BYTES = 64 * 1024
"""Room for the topic and properties on top of the largest command payload (Maximum Packet Size)."""

SPILL_MAX_MESSAGES = 10_000
"""Messages kept in memory while the outbox cannot be written (full disk); beyond, the oldest go."""

SPILL_RETRY_S = 1.0
"""How often the spilled messages are offered to the outbox again."""

_UNSUPPORTED_PROTOCOL = (1, 0x84)
"""CONNACK codes meaning "I don't speak this protocol version" (3.1.1 code 1, MQTT 5 code 0x84)."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None

    def __str__(self) -> str:  # what logs show: never a credential
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    """``mqtt://[user@]host[:port]`` or ``mqtts://...``; ConfigError with a one-line reason otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"MQTT URL is invalid ({error}); use mqtt://host:port") from None
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"MQTT URL must start with mqtt:// or mqtts://, got {scheme + '://' if scheme else 'no scheme'}")
    if parts.password is not None:
        raise ConfigError(
            "MQTT URL must not contain a password (it would end up in logs and process lists); "
            "set EDGEFACE_MQTT_PASSWORD or password_file instead"
        )
    if not parts.hostname:
        raise ConfigError("MQTT URL has no host; use mqtt://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("MQTT URL takes only mqtt://[user@]host[:port] (no path or query)")
    tls = scheme == "mqtts"
    return BrokerAddress(parts.hostname, port if port is not None else (8883 if tls else 1883), tls, parts.username)


def resolve_password(config: MqttConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The broker password from the environment, ``password_file`` or ``$CREDENTIALS_DIRECTORY``."""
    return read_secret("MQTT password", env=config.password_env, file=config.password_file,
                       credential=PASSWORD_CREDENTIAL, environ=environ)


def secure_client(client: paho.Client, config: MqttConfig, username: str | None, password: str | None,
                  tls: bool) -> None:
    """The broker credentials and TLS settings of `config` on a paho client (the publisher's, the fleet's)."""
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        try:
            client.tls_set(
                ca_certs=str(config.ca_file) if config.ca_file else None,
                certfile=str(config.cert_file) if config.cert_file else None,
                keyfile=str(config.key_file) if config.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (ssl.SSLError, OSError, ValueError) as error:
            raise ConfigError(f"MQTT TLS setup failed: {first_line(error)}; check ca_file/cert_file/key_file") from None
        if config.tls_insecure:
            client.tls_insecure_set(True)


def default_outbox_path(station_id: str, environ: Mapping[str, str] | None = None) -> Path:
    """``$STATE_DIRECTORY`` (systemd ``StateDirectory=``) or ``$XDG_STATE_HOME``/~/.local/state, /edgeface."""
    environ = os.environ if environ is None else environ
    if environ.get("STATE_DIRECTORY"):
        base = Path(environ["STATE_DIRECTORY"].split(":")[0])
    else:
        base = Path(environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "edgeface"
    return base / f"outbox-{station_id}.sqlite"


@dataclass(frozen=True)
class PublisherStatus:
    connected: bool
    protocol: str
    outbox_length: int
    dropped: int
    last_error: str | None
    write_failures: int = 0
    """Messages the outbox could not store at once (full disk); they waited in memory."""


@dataclass(frozen=True)
class _Command:
    verb: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None


class MqttPublisher:
    """EventSink over MQTT. ``start()`` connects in the background; ``close()`` flushes and says offline.

    ``publish`` is safe from any thread and returns as soon as the event is on disk.
    """

    def __init__(
        self,
        config: MqttConfig,
        station_id: str,
        *,
        router: CommandRouter | None = None,
        outbox: Outbox | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.address = parse_mqtt_url(config.url)
        if config.reconnect_max_s < config.reconnect_min_s:
            raise ConfigError("MQTT reconnect_max_s must be at least reconnect_min_s")
        if (config.cert_file is None) != (config.key_file is None):
            raise ConfigError("MQTT TLS client authentication needs both cert_file and key_file")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(config, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"MQTT {name} {path} does not exist or is not a file")
        self.topics = Topics.for_station(station_id, check_prefix(config.topic_prefix) if config.topic_prefix else None)
        self._username = config.username or self.address.username
        self._password = resolve_password(config, environ)
        if self._password is not None and self._username is None:
            raise ConfigError("an MQTT password is set but no username; add username or mqtt://user@host")
        self._tls = self.address.tls or config.ca_file is not None
        self._client_id = config.client_id or f"edgeface-{station_id}"
        self._router = router
        if outbox is None:
            outbox = Outbox(
                config.outbox_path or default_outbox_path(station_id, environ),
                max_rows=config.outbox_max_rows,
                synchronous=config.outbox_synchronous,
                max_bytes=int(config.outbox_max_mb * 1024 * 1024),
            )
            self._owns_outbox = True
        else:
            self._owns_outbox = False
        self.outbox = outbox

        self._protocol = MQTTProtocolVersion.MQTTv311 if config.protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5
        self._generation = 0
        self._client = self._make_client()
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._acks: queue.SimpleQueue[tuple[int, int, ReasonCode]] = queue.SimpleQueue()
        self._fallback = threading.Event()
        self._stopping = threading.Event()
        self._drained = threading.Event()
        self._commands: queue.Queue[_Command | None] = queue.Queue(maxsize=config.command_queue)
        self._max_command_bytes = router.max_payload_bytes if router is not None else MAX_COMMAND_BYTES
        self._queued_bytes = 0
        self._queued_lock = threading.Lock()
        self._spill: list[tuple[str, bytes, bool]] = []
        self._spill_lock = threading.Lock()
        self._spill_dropped = 0
        self._write_failures = 0
        self._next_spill_retry = 0.0
        self._unacked: list[int] = []
        self._ack_failed = False
        self._last_error: str | None = None
        self._logged_failure: str | None = None
        self._connack_refused = False
        self._started = False
        self._closed = False
        self.before_online: Callable[[], list[tuple[str, bytes]]] | None = None
        """Retained messages (topic, payload) to send on each connect before ``online`` (the station's
        presence states: after a crash they replace the retained ON from before it)."""
        self._sender = threading.Thread(target=self._send_loop, name="edgeface-mqtt-send", daemon=True)
        self._worker = threading.Thread(target=self._command_loop, name="edgeface-mqtt-cmd", daemon=True)

    # ------------------------------------------------------------------------------ public API

    def start(self) -> MqttPublisher:
        """Connect in the background (retrying with backoff) and start delivering the outbox."""
        if self._started:
            return self
        self._started = True
        log.info("MQTT: connecting to %s as %s (outbox %s, %d waiting)", self.address, self._client_id,
                 self.outbox.path, len(self.outbox))
        self._connect(self._client)
        self._sender.start()
        self._worker.start()
        return self

    def publish(self, event: Event) -> None:
        """Store the event in the outbox (durably) and wake the sender. Never waits for the network."""
        self.publish_raw(self.topics.event(event.type), event.to_json().encode("utf-8"))

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Queue any message through the outbox (QoS 1), e.g. retained Home Assistant discovery.
        Returns its outbox sequence number, or 0 when it waits in memory (the outbox cannot be written)."""
        if self._closed:
            raise EdgefaceError("the MQTT sink is closed; no more events can be published")
        with self._spill_lock:
            if not self._spill:
                try:
                    seq = self.outbox.put(topic, payload, qos=1, retain=retain)
                except OutboxWriteError as error:
                    log.error("MQTT: %s; keeping events in memory (at most %d) and retrying every %.0f s",
                              error, SPILL_MAX_MESSAGES, SPILL_RETRY_S)
                    self._last_error = str(error)
                else:
                    self._wake.set()
                    return seq
            self._write_failures += 1  # spilled behind the others, so that order is kept
            self._spill.append((topic, payload, retain))
            if len(self._spill) > SPILL_MAX_MESSAGES:
                index = next((i for i, m in enumerate(self._spill) if not m[2]), 0)
                del self._spill[index]
                self._spill_dropped += 1
            return 0

    def _flush_spill(self) -> None:
        """Move messages kept in memory into the outbox, oldest first, while the disk takes them."""
        with self._spill_lock:
            if not self._spill or time.monotonic() < self._next_spill_retry:
                return
            moved = 0
            try:
                for topic, payload, retain in self._spill:
                    self.outbox.put(topic, payload, qos=1, retain=retain)
                    moved += 1
            except OutboxWriteError:
                self._next_spill_retry = time.monotonic() + SPILL_RETRY_S
            del self._spill[:moved]
            if not self._spill:
                log.info("MQTT: the outbox %s takes writes again; every event kept in memory is stored", self.outbox.path)
                self._last_error = None
        if moved:
            self._wake.set()

    @property
    def write_failures(self) -> int:
        """Messages that could not be written to the outbox at once (they waited in memory)."""
        with self._spill_lock:
            return self._write_failures

    @property
    def spilled(self) -> int:
        """Messages waiting in memory for the outbox to take writes again."""
        with self._spill_lock:
            return len(self._spill)

    def publish_stats(self, stats: Stats) -> None:
        """Publish stats (retained, QoS 0) when connected; stale stats are not worth queueing."""
        if self._connected.is_set():
            self._client.publish(self.topics.stats, stats.to_json(), qos=0, retain=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def status(self) -> PublisherStatus:
        return PublisherStatus(
            connected=self._connected.is_set(),
            protocol="5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1",
            outbox_length=len(self.outbox) + self.spilled,
            dropped=self._dropped(),
            last_error=self._last_error,
            write_failures=self.write_failures,
        )

    def _dropped(self) -> int:
        try:
            return self.outbox.dropped + self._spill_dropped
        except sqlite3.Error:
            return self._spill_dropped

    def wait_until_delivered(self, timeout_s: float) -> bool:
        """Block until the outbox is empty (every event PUBACKed) or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while len(self.outbox) > 0 or self.spilled:
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.01)
        return True

    def close(self, flush_timeout_s: float | None = None) -> None:
        """Wait (up to the flush timeout) for the outbox to drain, publish ``offline``, disconnect."""
        if self._closed:
            return
        self._closed = True
        timeout = self.config.flush_timeout_s if flush_timeout_s is None else flush_timeout_s
        if self._started:
            if self._connected.is_set():
                self.wait_until_delivered(timeout)
            self._stopping.set()
            self._wake.set()
            self._sender.join(timeout=5)
            self._commands.put(None)
            self._worker.join(timeout=5)
            client = self._client
            if self._connected.is_set():
                info = client.publish(self.topics.status, "offline", qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout=2)
                except (RuntimeError, ValueError):
                    pass
            client.disconnect()
            client.loop_stop()
        self._next_spill_retry = 0.0
        self._flush_spill()
        left = len(self.outbox)
        if self.spilled:
            log.error("MQTT: %d event(s) could not be written to the outbox %s (full disk?) and are lost",
                      self.spilled, self.outbox.path)
        if left:
            log.warning("MQTT: %d event(s) stay in the outbox %s; they are sent at the next start", left, self.outbox.path)
        if self._owns_outbox:
            self.outbox.close()

    def __enter__(self) -> MqttPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ paho client

    def _make_client(self) -> paho.Client:
        self._generation += 1
        generation = self._generation
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=self._protocol,
            clean_session=None if self._protocol == MQTTProtocolVersion.MQTTv5 else True,
            reconnect_on_failure=True,
        )
        secure_client(client, self.config, self._username, self._password, self._tls)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(self.config.reconnect_min_s, self.config.reconnect_max_s)  # type: ignore[arg-type]
        client.max_inflight_messages_set(self.config.max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = lambda c, u, f, rc, p: self._on_connect(generation, c, rc)
        client.on_connect_fail = lambda c, u: self._on_connect_fail(generation)
        client.on_disconnect = lambda c, u, f, rc, p: self._on_disconnect(generation, rc)
        client.on_publish = lambda c, u, mid, rc, p: self._on_publish(generation, mid, rc)
        client.on_message = lambda c, u, msg: self._on_message(msg)
        return client

    @property
    def max_packet_bytes(self) -> int:
        """The Maximum Packet Size this client announces over MQTT 5."""
        return self._max_command_bytes + PACKET_OVERHEAD_BYTES

    def _connect(self, client: paho.Client) -> None:
        kwargs: dict[str, Any] = {}
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            kwargs["clean_start"] = True
            properties = Properties(PacketTypes.CONNECT)
            properties.MaximumPacketSize = self.max_packet_bytes  # the broker drops larger messages for us
            kwargs["properties"] = properties
        client.connect_async(self.address.host, self.address.port, keepalive=self.config.keepalive_s, **kwargs)
        client.loop_start()

    def _note_failure(self, message: str) -> None:
        """Log a connection problem once per distinct message (backoff retries would flood the log)."""
        self._last_error = message
        if message != self._logged_failure:
            self._logged_failure = message
            log.warning("MQTT: %s", message)

    def _on_connect(self, generation: int, client: paho.Client, reason: ReasonCode) -> None:
        if generation != self._generation:
            return
        if reason.is_failure:
            if reason.value in _UNSUPPORTED_PROTOCOL and self.config.protocol == "auto" \
                    and self._protocol == MQTTProtocolVersion.MQTTv5:
                log.info("MQTT: %s does not speak MQTT 5; falling back to 3.1.1", self.address)
                self._fallback.set()
                self._wake.set()
                return
            hint = " (check the username and password)" if reason.value in (4, 5, 0x86, 0x87) else ""
            self._connack_refused = True
            self._note_failure(f"{self.address} refused the connection: {reason}{hint}; retrying")
            return
        self._logged_failure = None
        self._last_error = None
        version = "MQTT 5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "MQTT 3.1.1"
        log.info("MQTT: connected to %s (%s)", self.address, version)
        if self.before_online is not None:
            try:
                for topic, payload in self.before_online():
                    client.publish(topic, payload, qos=1, retain=True)
            except Exception:  # never stay offline for it
                log.exception("MQTT: the messages due before 'online' failed")
        client.publish(self.topics.status, "online", qos=1, retain=True)
        if self._router is not None:
            client.subscribe(self.topics.command_filter, qos=1)
        self._connected.set()
        self._wake.set()

    def _on_connect_fail(self, generation: int) -> None:
        if generation == self._generation:
            hint = " or the TLS handshake failed (check ca_file and the host name in the URL)" if self._tls else ""
            self._note_failure(
                f"cannot reach {self.address}{hint}; retrying with backoff (events wait in the outbox)"
            )

    def _on_disconnect(self, generation: int, reason: ReasonCode) -> None:
        if generation != self._generation:
            return
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._closed:
            return
        if was_connected:
            self._logged_failure = None
            self._note_failure(f"lost the connection to {self.address} ({reason}); reconnecting, events wait in the outbox")
        elif self._connack_refused:  # the CONNACK already said why
            self._connack_refused = False
        else:
            self._note_failure(
                f"{self.address} closed the connection before accepting it ({reason}); is it an MQTT broker "
                "(TLS or not as configured)? retrying"
            )

    def _on_publish(self, generation: int, mid: int, reason: ReasonCode) -> None:
        # Runs on paho's network thread while paho holds its message lock: only hand over.
        self._acks.put((generation, mid, reason))
        self._wake.set()

    # ------------------------------------------------------------------------------ sender

    def _send_loop(self) -> None:
        pending: dict[int, int] = {}  # paho mid -> outbox seq, for the current client
        cursor = 0  # highest seq handed to the current client
        try:
            while True:
                self._wake.wait(0.25)
                self._wake.clear()
                self._flush_spill()
                self._collect_acks(pending)
                if self._fallback.is_set():
                    self._fallback.clear()
                    pending.clear()
                    cursor = 0
                    self._switch_to_v311()
                    continue
                if self._stopping.is_set():
                    return
                if not self._connected.is_set():
                    continue
                room = self.config.max_inflight - len(pending)
                if room <= 0:
                    continue
                for row in self.outbox.peek_batch(room, after_seq=cursor):
                    info = self._client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
                    if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                        log.warning("MQTT: paho refused a publish (%s); retrying", paho.error_string(info.rc))
                        break
                    pending[info.mid] = row.seq
                    cursor = row.seq
        except Exception:  # the sender must never die silently: events would pile up unseen
            log.exception("MQTT: the sender thread failed; events stay in the outbox until restart")
            self._last_error = "sender thread failed; see the log"

    def _collect_acks(self, pending: dict[int, int]) -> None:
        delivered: list[int] = []
        while True:
            try:
                generation, mid, reason = self._acks.get_nowait()
            except queue.Empty:
                break
            if generation != self._generation:
                continue
            seq = pending.pop(mid, None)
            if seq is None:  # status, replies: not outbox rows
                continue
            if reason.is_failure:
                log.error("MQTT: the broker refused outbox message %d (%s); dropped", seq, reason)
                try:
                    self.outbox.drop(seq)
                except OutboxWriteError as error:
                    log.error("MQTT: %s", error)
            else:
                delivered.append(seq)
        delivered += self._unacked
        self._unacked = []
        if delivered:
            try:
                self.outbox.ack_many(delivered)
            except OutboxWriteError as error:  # full disk: delete them later (resent meanwhile is fine)
                if not self._ack_failed:
                    log.error("MQTT: %s; delivered events stay in the outbox until it can be written", error)
                self._ack_failed = True
                self._unacked = delivered
                return
            self._ack_failed = False

    def _switch_to_v311(self) -> None:
        old = self._client
        old.disconnect()
        old.loop_stop()
        self._protocol = MQTTProtocolVersion.MQTTv311
        self._client = self._make_client()
        self._connect(self._client)

    # ------------------------------------------------------------------------------ commands

    def _on_message(self, message: paho.MQTTMessage) -> None:
        verb = self.topics.verb_of(message.topic)
        if verb is None or self._router is None:
            return
        properties = getattr(message, "properties", None)
        response_topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
        correlation = getattr(properties, "CorrelationData", None) if properties is not None else None
        size = len(message.payload)
        if size > self._max_command_bytes:  # an MQTT 3.1.1 broker sent it anyway: do not queue a copy
            reply = CommandReply(ok=False, verb=verb[:64], message=(
                f"payload too large ({size} bytes, limit {self._max_command_bytes}); send a smaller image"))
            self._reply(_Command(verb, b"", response_topic or None, correlation), reply.to_json())
            return
        command = _Command(verb, bytes(message.payload), response_topic or None, correlation)
        with self._queued_lock:
            # At most two largest-size commands wait at any time (their handling copies them again).
            busy = self._queued_bytes + size > 2 * self._max_command_bytes
            if not busy:
                self._queued_bytes += size
        try:
            if busy:
                raise queue.Full
            self._commands.put_nowait(command)
        except queue.Full:
            if not busy:
                with self._queued_lock:
                    self._queued_bytes -= size
            reply = CommandReply(ok=False, message="station busy: too many commands waiting; retry later", verb=verb[:64])
            self._reply(command, reply.to_json())

    def _command_loop(self) -> None:
        while True:
            command = self._commands.get()
            if command is None:
                return
            with self._queued_lock:
                self._queued_bytes -= len(command.payload)
            if self._router is None:
                continue
            payload = self._router.handle_bytes(command.verb, command.payload)
            self._reply(command, payload)

    def reply_topic_allowed(self, topic: str, verb: str) -> bool:
        """True for the station's own reply topic of ``verb`` (and topics below it) and topics under
        ``response_topic_prefix``; never for topics with wildcards or starting with '$'."""
        if not topic or "+" in topic or "#" in topic or topic.startswith("$") or "\0" in topic:
            return False
        own = self.topics.reply(verb)
        if topic == own or topic.startswith(own + "/"):
            return True
        prefix = self.config.response_topic_prefix
        return prefix is not None and topic.startswith(prefix) and len(topic) > len(prefix)

    def _reply(self, command: _Command, payload: bytes) -> None:
        default = self.topics.reply(command.verb)
        topic = default
        if command.response_topic is not None:
            if self.reply_topic_allowed(command.response_topic, command.verb):
                topic = command.response_topic
            else:
                log.info("MQTT: response topic %r of a %s command is not one of this station's reply topics "
                         "(mqtt.response_topic_prefix); replying on %s", command.response_topic[:200],
                         command.verb[:64], default)
        properties = None
        if self._protocol == MQTTProtocolVersion.MQTTv5 and command.correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = command.correlation
        try:
            self._client.publish(topic, payload, qos=1, retain=False, properties=properties)
        except ValueError as error:  # a response topic too long, not UTF-8, ...
            log.info("MQTT: cannot reply on %r (%s); replying on the default topic", topic, error)
            if topic != default:
                self._client.publish(default, payload, qos=1, retain=False, properties=properties)
