"""The one place that builds a station: the event bus and its subscribers, the gallery and clusters,
the pipeline, and (with MQTT) the command side, Home Assistant and stats. `edgeface run`, `edgeface
annotate` and the tests use it.

    bus ── required: JSONL on stdout, or the MQTT publisher's outbox
        └─ optional: Home Assistant presence (Station.on_event), the pipeline's event counts

`build_station` wires everything with typed dependencies; `RunningStation.close()` ends it: the
station's presence goes off, the outbox is flushed, the clusters and the gallery are closed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from edgeface.bus import EventBus
from edgeface.errors import ConfigError
from edgeface.events import utc_now

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from edgeface.config import Config
    from edgeface.pipeline import Pipeline
    from edgeface.service.cameras import Cameras, CameraSpec
    from edgeface.service.fleet import Fleet
    from edgeface.service.mqtt.client import MqttPublisher
    from edgeface.service.mqtt.commands import CommandRouter
    from edgeface.service.station import Station
    from edgeface.storage.cluster_store import ClusterStage
    from edgeface.storage.gallery import Gallery

log = logging.getLogger(__name__)

SinkKind = Literal["jsonl", "mqtt"]


def open_gallery(config: Config, path: Path | None, *, required: bool = False,
                 create_default: bool = False) -> Gallery | None:
    """The gallery to match against, at the configured threshold (`MatchThreshold.from_config`):
    PATH (must exist), else $EDGEFACE_GALLERY or ./gallery.db when present (created empty when
    `create_default`: unknown faces are clustered in it), else None (every face is unknown). Another
    process's changes (and the cluster store's, on its own connection) are read on a background thread:
    the camera loop never waits for a reload."""
    from edgeface.recognition.false_alarm import MatchThreshold
    from edgeface.storage.gallery import Gallery
    from edgeface.storage.paths import default_gallery_path

    threshold = MatchThreshold.from_config(config)
    if path is not None:
        return Gallery(path, create=False, match_max_distance=threshold, background_reload=True)
    default = default_gallery_path()
    if default.is_file():
        return Gallery(default, create=False, match_max_distance=threshold, background_reload=True)
    if create_default:
        log.info("created an empty gallery at %s: unknown faces are clustered there; enroll people with "
                 "`edgeface enroll`", default)
        return Gallery(default, create=True, match_max_distance=threshold, background_reload=True)
    if required:
        raise ConfigError(f"no gallery at {default}; pass --gallery FILE")
    log.warning("no gallery (%s does not exist): every face will be unknown; enroll people or pass --gallery FILE",
                default)
    return None


def sink_kind(config: Config, requested: SinkKind | None, mqtt_url: str | None) -> SinkKind:
    """jsonl unless MQTT is asked for (--sink mqtt, an mqtt section in the config, or --mqtt-url)."""
    kind: SinkKind = requested or ("mqtt" if config.mqtt is not None or mqtt_url else "jsonl")
    if kind == "jsonl" and mqtt_url:
        raise ConfigError("--mqtt-url needs --sink mqtt (or no --sink)")
    return kind


@dataclass
class RunningStation:
    """What `build_station` made. `close()` is idempotent."""

    config: Config
    bus: EventBus
    pipeline: Pipeline
    gallery: Gallery | None
    clusters: ClusterStage | None
    station: Station | None
    publisher: MqttPublisher | None
    cameras: Cameras | None = None
    """With `build_station(cameras=...)`: every camera (`pipeline` is then the first camera's)."""
    fleet: Fleet | None = None
    _closed: bool = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.bus.close()  # the station (presence off), then the publisher (flush) or the JSONL stream
        finally:
            if self.clusters is not None:
                self.clusters.store.close()


def start_mqtt_station(config: Config, bus: EventBus, gallery: Gallery | None, *, mqtt_url: str | None = None,
                       router: CommandRouter | None = None, clock: Callable[[], float] | None = None,
                       ) -> tuple[Station, MqttPublisher]:
    """The publisher with the station's commands, Home Assistant discovery and stats, subscribed to the
    bus and started (the station before the publisher connects: its first `online` follows the presence
    states). `router`: the command router (default: signed with the station's secret, when
    mqtt.commands); `clock`: the station's monotonic clock (tests)."""
    from edgeface.config import MqttConfig
    from edgeface.service.mqtt.client import MqttPublisher
    from edgeface.service.station import Station, command_router, log_command_policy

    mqtt_config = config.mqtt or MqttConfig()
    if mqtt_url:
        mqtt_config = mqtt_config.model_copy(update={"url": mqtt_url})
    config = config.model_copy(update={"mqtt": mqtt_config})
    station = Station(config, gallery=gallery, **({} if clock is None else {"clock": clock}))
    if router is None and mqtt_config.commands:
        router = command_router(mqtt_config, config.station_id)
    if router is not None:
        station.register(router)
    publisher = MqttPublisher(mqtt_config, config.station_id, router=router)
    if router is not None:
        log_command_policy(router, mqtt_config)
    station.attach(publisher, bus)
    try:
        station.start()
        publisher.start()
    except BaseException:
        station.close()
        publisher.close(flush_timeout_s=0)
        raise
    bus.add_sink(publisher, "mqtt outbox")
    bus.subscribe(station.on_event, name="home assistant")
    bus.on_close(station.close, "station")  # closed before the publisher: presence goes off, then the flush
    return station, publisher


def build_station(
    config: Config,
    *,
    gallery: Gallery | None,
    sink: SinkKind = "jsonl",
    stdout: TextIO | None = None,
    mqtt_url: str | None = None,
    source: Any = None,
    clock: Callable[[], datetime] = utc_now,
    commands: bool = False,
    cameras: Sequence[CameraSpec] | None = None,
    sources: dict[str, Any] | None = None,
    open_source: Callable[[CameraSpec], Any] | None = None,
    fleet: bool = False,
) -> RunningStation:
    """Everything `edgeface run` runs, wired: the bus with JSONL on `stdout` or MQTT, unknown tracks
    clustered in the gallery's file (without a gallery they stay plain unknowns), the pipeline and, with
    MQTT or `commands` (the station page), the station that answers commands on that pipeline and source.
    `cameras` (with their open `sources` by name, and `open_source` to open one again after it failed):
    a pipeline per camera on one set of models (service/cameras.py) instead of the one pipeline.
    `fleet`: join the fleet when `fleet.enabled` (refused, before anything starts, without the key)."""
    from edgeface.pipeline import build_pipeline, use_opencv_threads
    from edgeface.service.sinks import JsonlSink
    from edgeface.storage.cluster_store import ClusterStage, ClusterStore

    use_opencv_threads(config.recognition.embedder.threads)  # as `bench pipeline` measures the loop
    fleet_key = None
    if fleet and config.fleet.enabled:
        from edgeface.service.fleet import resolve_fleet_key

        fleet_key = resolve_fleet_key(config)
        if gallery is None:
            raise ConfigError("the fleet shares a gallery: pass --gallery FILE")
    bus = EventBus()
    station = publisher = None
    if sink == "mqtt":
        station, publisher = start_mqtt_station(config, bus, gallery, mqtt_url=mqtt_url)
    else:
        import sys

        bus.add_sink(JsonlSink(stdout or sys.stdout), "jsonl")
        if commands:
            from edgeface.service.station import Station

            station = Station(config, gallery=gallery)
            station.bus = bus  # no publisher, no Home Assistant: the page's commands and their events only
    clusters = None
    group = None
    try:
        if gallery is not None:
            store = ClusterStore(gallery.path, config.clusters, station=config.station_id, gallery=gallery)
            clusters = ClusterStage(store)
        if cameras:
            from edgeface.service.cameras import build_cameras

            if sources is None or open_source is None:
                raise ValueError("cameras need their sources and open_source")
            group = build_cameras(cameras, sources, bus=bus, gallery=gallery, clusters=clusters,
                                  open_source=open_source, clock=clock)
            pipeline = group.pipelines[0]
        else:
            pipeline = build_pipeline(config, bus=bus, matcher=gallery, clusters=clusters, clock=clock)
    except BaseException:
        try:
            bus.close()
        finally:
            if clusters is not None:
                clusters.store.close()
        raise
    if station is not None:
        station.attach_pipeline(group or pipeline, None if group is not None else source, clusters)
    running = RunningStation(config, bus, pipeline, gallery, clusters, station, publisher, group)
    if fleet_key is not None and gallery is not None:
        running.fleet = _join_fleet(running, gallery, fleet_key, mqtt_url)
    return running


def _join_fleet(running: RunningStation, gallery: Gallery, key: bytes, mqtt_url: str | None) -> Fleet:
    """The fleet link of a built station; a forgotten person is also erased from its clusters, the
    decider's memory and Home Assistant."""
    from edgeface.service.fleet import Fleet

    def erase(name: str) -> int:
        cleared = running.clusters.store.forget_person(name) if running.clusters is not None else 0
        if running.station is not None:
            running.station.erased(name)
        else:
            (running.cameras or running.pipeline).decider.forget_name(name)
        return cleared

    fleet = Fleet(running.config, gallery, key=key, mqtt_url=mqtt_url, on_forgotten=erase,
                  clusters=running.clusters.store if running.clusters is not None else None, emit=running.bus.publish)
    try:
        fleet.start()
    except BaseException:
        running.close()
        raise
    running.bus.on_close(fleet.close, "fleet")
    if running.station is not None:
        running.station.fleet = fleet
    return fleet
