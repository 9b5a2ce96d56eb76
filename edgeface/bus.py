"""The event bus: every event of a station takes this one route.

Stages publish (the pipeline's decisions and cluster updates, the commands' cluster_named and
person_forgotten, the cluster events other processes queued); subscribers receive each event in
publish order, on the publisher's thread: JSON Lines, the MQTT outbox, Home Assistant presence and
the pipeline's event counts (`PipelineStats`). `service.app` wires them (after zigbee2mqtt's controller
and event bus).

A subscriber is `required` when losing an event there loses it for good (the JSONL stream, the MQTT
outbox): its error propagates to the publisher, as a failed write always did. An optional subscriber
(presence, counts) only logs its error; the event has already been delivered to the required ones,
which are called first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edgeface.events import Event

log = logging.getLogger(__name__)

Handler = Callable[[Event], None]


class EventSink(Protocol):
    """Anything that takes events and is closed at the end (a JSONL stream, the MQTT publisher)."""

    def publish(self, event: Event) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Subscription:
    name: str
    handler: Handler
    required: bool


class EventBus:
    """Fan-out of events to subscribers; `close()` runs the close callbacks in reverse order of
    registration (the last wired is the first stopped), each once."""

    def __init__(self, *sinks: EventSink) -> None:
        self._subscriptions: tuple[_Subscription, ...] = ()
        self._closers: list[tuple[str, Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._closed = False
        for sink in sinks:
            self.add_sink(sink, type(sink).__name__)

    def subscribe(self, handler: Handler, *, name: str, required: bool = False) -> None:
        with self._lock:
            subscription = _Subscription(name, handler, required)
            required_first = [s for s in self._subscriptions if s.required]
            optional = [s for s in self._subscriptions if not s.required]
            if required:
                required_first.append(subscription)
            else:
                optional.append(subscription)
            self._subscriptions = (*required_first, *optional)

    def add_sink(self, sink: EventSink, name: str) -> None:
        """A required subscriber that is also closed with the bus."""
        self.subscribe(sink.publish, name=name, required=True)
        self.on_close(sink.close, name)

    def on_close(self, callback: Callable[[], None], name: str) -> None:
        with self._lock:
            self._closers.append((name, callback))

    @property
    def subscribers(self) -> list[str]:
        return [s.name for s in self._subscriptions]

    def publish(self, event: Event) -> None:
        for subscription in self._subscriptions:  # a tuple: subscribing meanwhile does not disturb this loop
            if subscription.required:
                subscription.handler(event)
                continue
            try:
                subscription.handler(event)
            except Exception:
                log.exception("%s failed on a %s event", subscription.name, event.type)

    def close(self) -> None:
        """Close every closer, last registered first; the first error is raised after all ran."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            closers = list(reversed(self._closers))
        failure: BaseException | None = None
        for name, callback in closers:
            try:
                callback()
            except BaseException as error:  # the others still close (a publisher must flush its outbox)
                log.debug("closing %s failed: %s", name, error)
                failure = failure or error
        if failure is not None:
            raise failure
