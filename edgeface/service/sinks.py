"""The simplest event sink: JSON Lines on a text stream (a subscriber of the event bus, edgeface.bus)."""

from __future__ import annotations

import threading
from typing import TextIO

from edgeface.events import Event


class JsonlSink:
    """One event per line, as the same compact JSON that MQTT carries, flushed after each line.

    Thread-safe. ``close()`` closes the stream only when ``close_stream`` is true (so that
    ``JsonlSink(sys.stdout)`` does not close stdout).
    """

    def __init__(self, stream: TextIO, *, close_stream: bool = False) -> None:
        self._stream = stream
        self._close_stream = close_stream
        self._lock = threading.Lock()
        self._closed = False

    def publish(self, event: Event) -> None:
        line = event.to_json()
        with self._lock:
            if self._closed:
                raise ValueError("JsonlSink is closed")
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._close_stream:
                self._stream.close()
