"""systemd integration without libsystemd: sd_notify over $NOTIFY_SOCKET and a frame-fed watchdog.

Under a ``Type=notify`` unit systemd passes ``NOTIFY_SOCKET`` (a datagram socket path, or ``@name``
for the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``).
Messages are newline-separated ``KEY=value`` assignments in one datagram:

- ``READY=1`` once the models are loaded and the source is open (start-up is over);
- ``STATUS=...`` free text shown by ``systemctl status``;
- ``WATCHDOG=1`` "still alive": without one within ``WatchdogSec`` systemd kills the service
  (SIGABRT) and ``Restart=on-failure`` starts it again;
- ``EXTEND_TIMEOUT_USEC=...`` more time for a slow start-up (model loading on a Pi 4);
- ``STOPPING=1`` when a clean shutdown begins.

:class:`WatchdogFeeder` ties the watchdog to real work: the pipeline calls ``frame_processed()``
after each frame, and the feeder sends ``WATCHDOG=1`` at most every ``WATCHDOG_USEC / 2`` and only
when a frame was processed since the previous ping. A camera that hangs (no frame ever returns)
therefore stops the pings and systemd restarts the service; a busy timer thread cannot mask it.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op. Sending never blocks and never
raises: a lost notification must not take the camera loop down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def socket_address(value: str) -> str | bytes | None:
    """The address to send to for a $NOTIFY_SOCKET value: a filesystem path, or the abstract-namespace
    name (``@name`` -> ``b"\\0name"``); None (with a warning) for anything else, e.g. ``vsock:``."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning("%s=%r is neither an absolute path nor @abstract; systemd notifications are off", NOTIFY_SOCKET_ENV, value)
    return None


def watchdog_interval_s(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds, or None when there is none
    (no WatchdogSec=, a WATCHDOG_PID naming another process, or an unparsable value)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(WATCHDOG_USEC_ENV)
    if not raw:
        return None
    owner = environ.get(WATCHDOG_PID_ENV)
    if owner and owner.strip() != str(os.getpid() if pid is None else pid):
        return None  # the variables were inherited from a parent that systemd watches, not us
    try:
        usec = int(raw)
    except ValueError:
        log.warning("%s=%r is not an integer; the systemd watchdog is off", WATCHDOG_USEC_ENV, raw)
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET. ``enabled`` is False outside systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        value = environ.get(NOTIFY_SOCKET_ENV, "")
        self.socket_name = value
        self.address = socket_address(value) if value else None
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True when it was handed to the socket."""
        if self.address is None:
            return False
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"a notification is KEY=value on one line, got {item!r}")
        message = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._socket.setblocking(False)  # a stuck receiver must never stall the camera loop
                self._socket.sendto(message, self.address)
            except OSError as error:
                if not self._warned:  # once: a missing socket would otherwise log every frame
                    log.warning("cannot notify systemd at %s: %s", self.socket_name, error)
                    self._warned = True
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())


class WatchdogFeeder:
    """Feeds the systemd watchdog from the frame loop: call ``frame_processed()`` once per frame.

    ``interval_s`` (default: half of WATCHDOG_USEC) is the least time between two pings. A ping is
    sent from inside ``frame_processed`` when the interval has passed since the previous one, so no
    ping is ever sent without a frame processed since the last ping. ``enabled`` is False (and every
    call a no-op) when systemd asked for no watchdog or there is no notify socket.
    """

    def __init__(
        self,
        notifier: Notifier | None = None,
        interval_s: float | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier if notifier is not None else Notifier(environ)
        if interval_s is None:
            timeout = watchdog_interval_s(environ)
            interval_s = timeout / 2 if timeout is not None else None
        elif interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ping: float | None = None
        self.frames_since_ping = 0
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None and self.notifier.enabled

    def start(self) -> None:
        """Start the interval now (call it when READY=1 is sent: systemd arms the watchdog then)."""
        with self._lock:
            self._last_ping = self._clock()

    def frame_processed(self) -> bool:
        """Record one processed frame; True when this call sent a WATCHDOG=1."""
        if not self.enabled:
            return False
        with self._lock:
            self.frames_since_ping += 1
            now = self._clock()
            if self._last_ping is not None and now - self._last_ping < self.interval_s:  # type: ignore[operator]
                return False
            self._last_ping = now
            self.frames_since_ping = 0
            self.pings += 1
        return self.notifier.watchdog()
