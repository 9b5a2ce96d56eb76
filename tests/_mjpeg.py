"""A tiny real MJPEG-over-HTTP server (multipart/x-mixed-replace, the way many IP cameras serve video).

Each frame carries its own number: `FRAME_BITS` black/white blocks along the top edge (MSB first),
big enough to survive JPEG compression, so a test can read back which frame it got (`frame_number`).
Or it plays given frames (a real video's) in a loop, like an IP camera looking at a scene.
The server runs in a background thread on loopback; `stop()` closes the listening socket and every
open stream (the client sees the connection drop), and a new server can be started on the same port.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

FRAME_BITS = 16
BLOCK_PX = 10
BOUNDARY = "edgefaceframe"


def make_frame(number: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A BGR frame whose top edge encodes `number` in FRAME_BITS blocks of BLOCK_PX x BLOCK_PX."""
    import cv2

    image = np.full((height, width, 3), 96, np.uint8)
    for bit in range(FRAME_BITS):
        on = (number >> (FRAME_BITS - 1 - bit)) & 1
        x = bit * BLOCK_PX
        image[0:BLOCK_PX, x : x + BLOCK_PX] = 255 if on else 0
    cv2.putText(image, str(number), (10, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 255), 3)
    return image


def frame_number(image: np.ndarray) -> int:
    """The number that make_frame encoded in the top edge of `image` (full frame, not ROI-cropped)."""
    number = 0
    for bit in range(FRAME_BITS):
        x = bit * BLOCK_PX
        block = image[2 : BLOCK_PX - 2, x + 2 : x + BLOCK_PX - 2]
        number = (number << 1) | int(block.mean() > 128)
    return number


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MjpegServer:
    """Serves numbered JPEG frames at `fps` on http://127.0.0.1:<port>/stream.mjpg.

    The frame counter is shared by all clients and keeps counting across stop()/start(), so the
    numbers a client sees tell how far the stream has advanced. `mode="hang"` accepts connections
    and reads the request but never answers (a camera that has locked up). With `frames` (BGR images),
    those are served in a loop instead of numbered frames (frame k is frames[k % len(frames)]).
    """

    def __init__(self, port: int | None = None, fps: float = 30.0, size: tuple[int, int] = (320, 240),
                 mode: str = "stream", frames: Sequence[np.ndarray] | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.fps = fps
        self.size = size
        self.mode = mode
        self.counter = 0
        self.connections = 0
        self.paused = threading.Event()
        """Set: no new frame is sent, the streams stay open (a camera whose picture froze)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: set[socket.socket] = set()
        self._ticker: threading.Thread | None = None
        self._jpeg = b""
        self._loop: list[bytes] = []
        if frames is not None:
            import cv2

            self._loop = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def _tick(self) -> None:
        import cv2

        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self.paused.is_set():
                self._stop.wait(period)
                next_t = time.monotonic()
                continue
            with self._lock:
                number = self.counter
                self.counter += 1
            if self._loop:
                jpeg = self._loop[number % len(self._loop)]
            else:
                ok, buf = cv2.imencode(".jpg", make_frame(number, *self.size), [cv2.IMWRITE_JPEG_QUALITY, 90])
                assert ok
                jpeg = buf.tobytes()
            with self._lock:
                self._jpeg = jpeg
                self._fresh.notify_all()
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def start(self) -> MjpegServer:
        server = self
        self._stop.clear()
        self._fresh = threading.Condition(self._lock)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.connections += 1
                    server._clients.add(self.connection)
                try:
                    if server.mode == "hang":
                        server._stop.wait()
                        return
                    if self.path != "/stream.mjpg":
                        self.send_error(404, "no such stream")
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    last = b""
                    while not server._stop.is_set():
                        with server._lock:
                            server._fresh.wait_for(lambda last=last: server._jpeg is not last or server._stop.is_set(), 1.0)
                            jpeg = server._jpeg
                        if server._stop.is_set():
                            break
                        if jpeg is last or not jpeg:
                            continue
                        last = jpeg
                        part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                f"Content-Length: {len(jpeg)}\r\n\r\n").encode() + jpeg + b"\r\n"
                        self.wfile.write(part)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass
                finally:
                    with server._lock:
                        server._clients.discard(self.connection)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="mjpeg-server", daemon=True)
        self._thread.start()
        self._ticker = threading.Thread(target=self._tick, name="mjpeg-ticker", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every open stream (like a camera losing power or network)."""
        if self._httpd is None:
            return
        self._stop.set()
        with self._lock:
            self._fresh.notify_all()
            clients = list(self._clients)
        for conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None and self._ticker is not None
        self._thread.join(5)
        self._ticker.join(5)
        self._httpd = None

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
