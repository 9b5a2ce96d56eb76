"""The station page: `edgeface run --web HOST:PORT` serves it from the running station (a thread of
the same process). Live view, unknown people (name, merge, forget), people (enroll by upload,
remove), the latest events and the status; every change goes through the same `Station` handlers as
the MQTT commands, so the page and MQTT cannot disagree.

Why the standard library's `http.server` and not a framework: the page is a handful of server-rendered
forms, one user at a time, on a board where every dependency must have aarch64 wheels and every
thread competes with the camera loop. A `ThreadingHTTPServer` needs no event loop next to the camera
thread and no new dependency; what a framework would add is done here in a few lines and tested:
a password from the MQTT secret sources, a random session cookie (HttpOnly, SameSite=Strict, Secure
over HTTPS), a per-session CSRF token on every form plus an Origin check, a Content-Security-Policy
that allows no inline script, escaped output, size-limited bodies, HTTPS when given a certificate.

The live view costs the camera loop one reference assignment per frame (`LiveView.offer`); the frame
is drawn and JPEG-encoded in the request's thread, only while someone is watching, at most
`web.live_max_fps` times a second.
"""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import html
import logging
import re
import secrets
import ssl
import threading
import time
from base64 import b64encode
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from pydantic import ValidationError

from edgeface.errors import ConfigError, EdgefaceError
from edgeface.service.mqtt.secrets import read_secret

if TYPE_CHECKING:
    from edgeface.config import WebConfig
    from edgeface.service.app import RunningStation

log = logging.getLogger(__name__)

PASSWORD_CREDENTIAL = "web_password"
"""File name of the page's password under ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``)."""

COOKIE = "edgeface_session"
MAX_SESSIONS = 64
EVENTS_KEPT = 200
CROPS_SHOWN = 4
FAILED_LOGIN_DELAY_S = 1.0

_CLUSTER_ID = re.compile(r"^unknown-\d{1,12}$")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT, :PORT or PORT (the last two bind 127.0.0.1)."""
    spec = text.strip()
    host, _, port_text = spec.rpartition(":") if ":" in spec else ("", "", spec)
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"web listen address {text!r} is not HOST:PORT (e.g. 127.0.0.1:8080)") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"web listen port {port} is not between 0 and 65535")
    return host, port


def resolve_password(web: WebConfig, environ: Mapping[str, str] | None = None) -> str:
    """The page's password: ``$<password_env>``, else ``password_file``, else the systemd credential
    ``web_password``; a one-line error when there is none (the page never runs open)."""
    password = read_secret("station page password", env=web.password_env, file=web.password_file,
                           credential=PASSWORD_CREDENTIAL, strip=True, environ=environ)
    if password is None:
        raise ConfigError(f"the station page needs a password: set ${web.password_env}, web.password_file, or the "
                          f"systemd credential {PASSWORD_CREDENTIAL}")
    return password


class LiveView:
    """The latest frame and its result, drawn and encoded on demand (never on the camera thread)."""

    def __init__(self) -> None:
        self.pending: Any = None
        """The image of the frame being processed (set by the loop's frame iterator)."""
        self._latest: tuple[Any, Any] | None = None
        self._lock = threading.Lock()
        self._encoded: tuple[int, bytes] | None = None

    def offer(self, image: Any, result: Any) -> None:
        self._latest = (image, result)  # one assignment: atomic, no copy, no lock on the camera thread

    def jpeg(self) -> bytes | None:
        latest = self._latest
        if latest is None:
            return None
        image, result = latest
        with self._lock:
            if self._encoded is not None and self._encoded[0] == result.index:
                return self._encoded[1]
            import cv2

            from edgeface.service.overlay import draw

            ok, buffer = cv2.imencode(".jpg", draw(image, result), [cv2.IMWRITE_JPEG_QUALITY, 80])
            if not ok:
                return None
            self._encoded = (result.index, buffer.tobytes())
            return self._encoded[1]


@dataclass
class _Session:
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)


class StationPage:
    """The page of one running station. `start()` serves it on a thread; `close()` stops it."""

    def __init__(self, running: RunningStation, listen: str, password: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if running.station is None:
            raise ConfigError("the station page needs the station's commands (build_station(commands=True))")
        self.running = running
        self.station = running.station
        self.web = running.config.web
        self.host, self.port = parse_listen(listen)
        self._password = password.encode("utf-8")
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()
        names = [r.name for r in running.cameras.runners] if running.cameras is not None else [running.config.pipeline.camera]
        self.lives = {name: LiveView() for name in names}
        """One live view per camera (`/live.jpg?camera=NAME`); `live` is the first camera's."""
        self.live = self.lives[names[0]]
        self.events: deque[Any] = deque(maxlen=EVENTS_KEPT)
        self.started_at = clock()
        self.https = self.web.cert_file is not None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        running.bus.subscribe(self.events.append, name="station page")

    # -- serving -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}/"

    def start(self) -> StationPage:
        handler = type("Handler", (_Handler,), {"page": self})
        try:
            server = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as error:
            raise ConfigError(f"cannot serve the station page on {self.host}:{self.port}: "
                              f"{error.strerror or error}") from None
        server.daemon_threads = True
        if self.https:
            if self.web.key_file is None:
                server.server_close()
                raise ConfigError("web.cert_file needs web.key_file")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(self.web.cert_file, self.web.key_file)  # type: ignore[arg-type]
            except (OSError, ssl.SSLError) as error:
                server.server_close()
                raise ConfigError(f"cannot load the page's certificate {self.web.cert_file}: {error}") from None
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="edgeface-web", daemon=True)
        self._thread.start()
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("the station page listens on %s: anyone who can reach it can try the password%s", self.host,
                        "" if self.https else "; without web.cert_file it travels in clear text")
        log.info("station page on %s", self.url)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- sessions ------------------------------------------------------------------------------

    def check_password(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8"), self._password)

    def new_session(self) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._sessions_lock:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[token] = _Session(secrets.token_urlsafe(32), now + self.web.session_max_age_s)
        return token

    def session(self, token: str | None) -> _Session | None:
        if not token:
            return None
        with self._sessions_lock:
            session = self._sessions.get(token)
            if session is None or session.expires <= self._clock():
                self._sessions.pop(token, None)
                return None
            return session

    def end_session(self, token: str | None) -> None:
        with self._sessions_lock:
            self._sessions.pop(token or "", None)


def _h(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid"))


STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f6f6;color:#222}
nav{display:flex;flex-wrap:wrap;gap:.2rem;background:#223;padding:.4rem}
nav a,nav button{color:#fff;text-decoration:none;padding:.4rem .6rem;background:none;border:0;font-size:1rem}
nav a.on{background:#445;border-radius:4px}
nav form{margin-left:auto}
main{padding:.6rem;max-width:70rem;margin:auto}
.cards{display:flex;flex-wrap:wrap;gap:.6rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem;flex:1 1 18rem;max-width:100%}
.faces img{width:72px;height:72px;object-fit:cover;border-radius:4px;margin:0 .2rem .2rem 0}
.live{max-width:100%;height:auto;background:#000}
form.inline{display:flex;flex-wrap:wrap;gap:.3rem;margin:.3rem 0}
input,select,button{font-size:1rem;padding:.3rem}
.flash{padding:.5rem;border-radius:4px;margin:.4rem 0}
.ok{background:#dfd}.error{background:#fdd}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border-bottom:1px solid #ddd;padding:.3rem;text-align:left}
.note{color:#555}
"""

SCRIPT = """
(function(){
  var img=document.getElementById('live');
  if(!img){return;}
  var period=parseFloat(img.getAttribute('data-period-ms'))||200;
  var src=img.getAttribute('data-src')||'/live.jpg';
  function next(){setTimeout(function(){img.src=src+(src.indexOf('?')<0?'?':'&')+'t='+Date.now();},period);}
  img.addEventListener('load',next);img.addEventListener('error',function(){setTimeout(next,1000);});
})();
"""

PAGES = (("live", "Live"), ("unknown", "Unknown people"), ("people", "People"), ("events", "Events"),
         ("status", "Status"))


class _Handler(BaseHTTPRequestHandler):
    page: StationPage
    server_version = "edgeface"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web %s %s", self.address_string(), format % args)

    # -- plumbing --------------------------------------------------------------------------------

    def _token(self) -> str | None:
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:
            return None
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel is not None else None

    def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
              headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "same-origin")  # no-referrer would make Chromium send `Origin: null`
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _redirect(self, where: str, headers: Mapping[str, str] | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", headers={"Location": where, **(headers or {})})

    def _cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self.page.https else ""
        return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"

    def _layout(self, current: str, title: str, body: str, session: _Session | None) -> bytes:
        nav = ""
        if session is not None:
            links = "".join(f'<a href="/{key}"{" class=on" if key == current else ""}>{label}</a>' for key, label in PAGES)
            nav = (f"<nav>{links}<form method=post action=/logout><input type=hidden name=csrf "
                   f'value="{_h(session.csrf)}"><button>Log out</button></form></nav>')
        flash = ""
        if session is not None:
            flash = "".join(f'<div class="flash {kind}">{_h(text)}</div>' for kind, text in session.flash)
            session.flash.clear()
        station = _h(self.page.running.config.station_id)
        return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
                f'<meta name=viewport content="width=device-width, initial-scale=1">'
                f"<title>{_h(title)} · {station}</title><link rel=stylesheet href=/style.css></head>"
                f"<body>{nav}<main><h1>{_h(title)}</h1>{flash}{body}</main>"
                f"<script src=/app.js></script></body></html>").encode()

    def _form(self, action: str, session: _Session, inner: str, multipart: bool = False) -> str:
        enctype = " enctype=multipart/form-data" if multipart else ""
        return (f'<form class=inline method=post action="{action}"{enctype}>'
                f'<input type=hidden name=csrf value="{_h(session.csrf)}">{inner}</form>')

    # -- GET -------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path == "/style.css":
            return self._send(HTTPStatus.OK, STYLE.encode(), "text/css; charset=utf-8")
        if path == "/app.js":
            return self._send(HTTPStatus.OK, SCRIPT.encode(), "text/javascript; charset=utf-8")
        if path == "/login":
            return self._send(HTTPStatus.OK, self._login_page())
        session = self.page.session(self._token())
        if session is None:
            if path.endswith(".jpg"):
                return self._send(HTTPStatus.UNAUTHORIZED, b"log in first", "text/plain; charset=utf-8")
            return self._redirect("/login")
        if path in ("/", ""):
            return self._redirect("/live")
        if path == "/live.jpg":
            jpeg = self._live_view().jpeg()
            if jpeg is None:
                return self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet", "text/plain; charset=utf-8")
            return self._send(HTTPStatus.OK, jpeg, "image/jpeg")
        match = re.fullmatch(r"/crop/(unknown-\d{1,12})/(\d{1,2})\.jpg", path)
        if match:
            return self._crop(match.group(1), int(match.group(2)))
        render = {"/live": self._live, "/unknown": self._unknown, "/people": self._people, "/events": self._events,
                  "/status": self._status}.get(path)
        if render is None:
            return self._send(HTTPStatus.NOT_FOUND, self._layout("", "Not found", "", session))
        title, body = render(session)
        self._send(HTTPStatus.OK, self._layout(path.strip("/"), title, body, session))

    def _login_page(self, error: str = "") -> bytes:
        message = f'<div class="flash error">{_h(error)}</div>' if error else ""
        body = (f"{message}<form method=post action=/login class=inline><label>Password "
                "<input type=password name=password autocomplete=current-password autofocus></label>"
                "<button>Log in</button></form>")
        return self._layout("", "Log in", body, None)

    def _live_view(self) -> LiveView:
        """The camera the query names (?camera=NAME), else the first."""
        name = parse_qs(urlsplit(self.path).query).get("camera", [""])[0]
        return self.page.lives.get(name, self.page.live)

    def _live(self, session: _Session) -> tuple[str, str]:
        period_ms = int(1000 / self.page.web.live_max_fps)
        view = self._live_view()
        name = next(n for n, v in self.page.lives.items() if v is view)
        src = f"/live.jpg?camera={quote(name)}"
        picker = "" if len(self.page.lives) == 1 else "<p>" + " ".join(
            f'<a href="/live?camera={quote(n)}">{"<b>" + _h(n) + "</b>" if n == name else _h(n)}</a>'
            for n in self.page.lives) + "</p>"
        body = (f'{picker}<img id=live class=live src="{_h(src)}" data-src="{_h(src)}" '
                f'alt="the camera {_h(name)}, with boxes and names" data-period-ms="{period_ms}">'
                "<p class=note>Boxes: green a known person, orange an unknown one (its cluster id), grey still "
                "undecided. When the source has ended the last frame stays.</p>")
        return "Live", body

    def _crop(self, cluster_id: str, index: int) -> None:
        try:
            crops = self.page.station._cluster_store().crops(cluster_id, CROPS_SHOWN)
        except EdgefaceError:
            crops = []
        if index >= len(crops):
            return self._send(HTTPStatus.NOT_FOUND, b"no such crop", "text/plain; charset=utf-8")
        self._send(HTTPStatus.OK, crops[index], "image/jpeg")

    def _unknown(self, session: _Session) -> tuple[str, str]:
        station = self.page.station
        if self.page.running.gallery is None:
            return "Unknown people", "<p>This station runs without a gallery, so unknown people are not clustered.</p>"
        store = station._cluster_store()
        clusters = sorted(store.list_clusters(), key=lambda c: c.last_seen, reverse=True)
        crops_on = store.settings.store_face_crops
        people = [info.name for info in station.gallery.list_identities()] if station.gallery is not None else []
        parts = []
        if not crops_on:
            parts.append("<p class=note>No faces are shown: face crops are not stored on this station "
                         "(clusters.store_face_crops: false). Turn it on to see who each cluster is.</p>")
        else:
            days = store.settings.crop_retention_days
            parts.append(f"<p class=note>Face crops are kept {days:g} days (clusters.crop_retention_days); forgetting "
                         "a cluster erases them.</p>")
        if not clusters:
            parts.append("<p>No unknown people yet.</p>")
        datalist = "<datalist id=people>" + "".join(f'<option value="{_h(p)}">' for p in people) + "</datalist>"
        parts.append(datalist)
        parts.append("<div class=cards>")
        for info in clusters:
            count = len(store.crops(info.id, CROPS_SHOWN)) if crops_on else 0
            faces = "".join(f'<img src="/crop/{_h(info.id)}/{i}.jpg" alt="face {i + 1} of {_h(info.id)}">' for i in range(count))
            others = "".join(f'<option value="{_h(o.id)}">{_h(o.id)}</option>' for o in clusters if o.id != info.id)
            name_form = self._form("/unknown/name", session,
                                   f'<input type=hidden name=cluster_id value="{_h(info.id)}">'
                                   '<input name=name list=people placeholder="name" required maxlength=64>'
                                   "<label><input type=checkbox name=force value=1> even if unlike</label>"
                                   "<button>Name</button>")
            merge_form = self._form("/unknown/merge", session,
                                    f'<input type=hidden name=a value="{_h(info.id)}"><select name=b>{others}</select>'
                                    "<button>Same person: merge</button>") if others else ""
            forget_form = self._form("/unknown/forget", session,
                                     f'<input type=hidden name=cluster_id value="{_h(info.id)}">'
                                     "<button>Not a face / forget</button>")
            parts.append(f'<div class=card id="{_h(info.id)}"><h2>{_h(info.id)}</h2><div class=faces>{faces}</div>'
                         f"<p>{_h(info.status.value if hasattr(info.status, 'value') else info.status)}, "
                         f"{info.visits} visit{'s' if info.visits != 1 else ''}, {info.observations} sighting"
                         f"{'s' if info.observations != 1 else ''}<br>first seen {_h(_when(info.first_seen))}<br>"
                         f"last seen {_h(_when(info.last_seen))}</p>{name_form}{merge_form}{forget_form}</div>")
        parts.append("</div>")
        return "Unknown people", "".join(parts)

    def _people(self, session: _Session) -> tuple[str, str]:
        gallery = self.page.station.gallery
        if gallery is None:
            return "People", "<p>This station runs without a gallery.</p>"
        rows = []
        for info in gallery.list_identities():
            remove = self._form("/people/remove", session,
                                f'<input type=hidden name=name value="{_h(info.name)}"><button>Remove</button>')
            rows.append(f"<tr><td class=person>{_h(info.name)}</td><td>{info.template_count}</td>"
                        f"<td>{info.negative_count}</td><td>{remove}</td></tr>")
        table = ("<table><tr><th>Name</th><th>Templates</th><th>Negatives</th><th></th></tr>" + "".join(rows) + "</table>"
                 if rows else "<p>Nobody is enrolled yet.</p>")
        enroll = self._form("/people/enroll", session,
                            '<input name=name placeholder="name" required maxlength=64>'
                            '<input type=file name=photo accept="image/*" required><button>Enroll</button>',
                            multipart=True)
        return "People", f"{table}<h2>Enroll from a photo</h2>{enroll}"

    def _events(self, session: _Session) -> tuple[str, str]:
        rows = []
        for event in reversed(self.page.events):
            data = event.to_dict()
            who = data.get("name") or data.get("cluster_id") or data.get("kept_id") or ""
            detail = ", ".join(f"{k} {v}" for k, v in data.items()
                               if k in ("track_id", "confidence", "merged_id", "label") and v is not None)
            rows.append(f"<tr><td>{_h(data.get('ts', ''))}</td><td class=type>{_h(data.get('type', ''))}</td>"
                        f"<td>{_h(who)}</td><td>{_h(detail)}</td></tr>")
        if not rows:
            return "Events", "<p>No events since the station started.</p>"
        return "Events", ("<table><tr><th>When</th><th>Event</th><th>Who</th><th></th></tr>" + "".join(rows)
                          + "</table>")

    def _status(self, session: _Session) -> tuple[str, str]:
        running = self.page.running
        stats = running.cameras.stats if running.cameras is not None else running.pipeline.stats
        uptime = max(self.page._clock() - self.page.started_at, 1e-9)
        items = [
            ("station", running.config.station_id),
            ("frames", stats.frames),
            ("faces", stats.faces),
            ("fps (pipeline time only)", f"{stats.frames / stats.process_s:.1f}" if stats.process_s > 0 else "-"),
            ("frames per second since start", f"{stats.frames / uptime:.1f}"),
            ("tracks", stats.tracks_started),
            ("events", ", ".join(f"{k} {v}" for k, v in sorted(stats.events.items())) or "none"),
            ("quality rejections", ", ".join(f"{k} {v}" for k, v in sorted(stats.quality_rejections.items())) or "none"),
            ("gallery", running.gallery.path if running.gallery is not None else "none"),
        ]
        if running.cameras is not None and len(running.cameras.runners) > 1:
            items += [(f"camera {r.name}", f"{r.camera_state()}, {r.frames} frames, {r.failures} failures")
                      for r in running.cameras.runners]
        if running.publisher is not None:
            status = running.publisher.status()
            items += [("broker", "connected" if status.connected else "not connected"),
                      ("outbox", f"{status.outbox_length} waiting, {status.dropped} dropped, "
                                 f"{status.write_failures} write failures")]
        else:
            items.append(("broker", "none: events go to stdout (jsonl)"))
        rows = "".join(f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in items)
        return "Status", f"<table>{rows}</table>"

    # -- POST ------------------------------------------------------------------------------------

    def do_POST(self) -> None:
        try:
            self._post()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _read_form(self) -> dict[str, Any] | None:
        """The form's fields (str, or bytes for a file); None after an error reply."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(HTTPStatus.LENGTH_REQUIRED, b"Content-Length required", "text/plain; charset=utf-8")
            return None
        if length < 0 or length > self.page.web.max_upload_bytes + 65536:
            self.close_connection = True
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"too large: at most {self.page.web.max_upload_bytes} bytes".encode(), "text/plain; charset=utf-8")
            return None
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
            fields: dict[str, Any] = {}
            for part in message.iter_parts() if message.is_multipart() else ():
                name = part.get_param("name", header="content-disposition")
                if not isinstance(name, str):
                    continue
                payload = part.get_payload(decode=True)
                if not isinstance(payload, bytes):
                    payload = b""
                fields[name] = payload if part.get_filename() is not None else payload.decode("utf-8", "replace")
            return fields
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def _same_origin(self) -> bool:
        origin = self.headers.get("Origin")
        if origin is None or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == self.headers.get("Host", "")

    def _post(self) -> None:
        path = urlsplit(self.path).path
        form = self._read_form()
        if form is None:
            return
        if not self._same_origin():
            return self._send(HTTPStatus.FORBIDDEN, b"cross-site request refused", "text/plain; charset=utf-8")
        if path == "/login":
            if self.page.check_password(str(form.get("password", ""))):
                token = self.page.new_session()
                return self._redirect("/live", {"Set-Cookie": self._cookie(token, int(self.page.web.session_max_age_s))})
            log.warning("station page: a wrong password from %s", self.client_address[0])
            time.sleep(FAILED_LOGIN_DELAY_S)
            return self._send(HTTPStatus.UNAUTHORIZED, self._login_page("Wrong password."))
        cookie = self._token()
        session = self.page.session(cookie)
        if session is None:
            return self._send(HTTPStatus.UNAUTHORIZED, self._login_page("Log in first."))
        if not hmac.compare_digest(str(form.get("csrf", "")).encode(), session.csrf.encode()):
            return self._send(HTTPStatus.FORBIDDEN, b"the form's token is missing or stale: reload the page",
                              "text/plain; charset=utf-8")
        if path == "/logout":
            self.page.end_session(cookie)
            return self._redirect("/login", {"Set-Cookie": self._cookie("", 0)})
        action = {"/unknown/name": self._name, "/unknown/merge": self._merge, "/unknown/forget": self._forget_cluster,
                  "/people/enroll": self._enroll, "/people/remove": self._remove}.get(path)
        if action is None:
            return self._send(HTTPStatus.NOT_FOUND, b"no such action", "text/plain; charset=utf-8")
        back = "/" + path.strip("/").split("/")[0]
        try:
            message = action(form)
            session.flash.append(("ok", message))
        except ValidationError as error:
            session.flash.append(("error", _validation_message(error)))
        except EdgefaceError as error:
            session.flash.append(("error", str(error).splitlines()[0] if str(error) else type(error).__name__))
        self._redirect(back)

    def _name(self, form: dict[str, Any]) -> str:
        from edgeface.service.mqtt.commands import NameClusterCommand

        command = NameClusterCommand(cluster_id=str(form.get("cluster_id", "")), name=str(form.get("name", "")).strip(),
                                     force=bool(form.get("force")))
        return self.page.station.name_cluster(command).message

    def _merge(self, form: dict[str, Any]) -> str:
        a, b = str(form.get("a", "")), str(form.get("b", ""))
        if not (_CLUSTER_ID.match(a) and _CLUSTER_ID.match(b)):
            raise EdgefaceError("choose two clusters to merge")
        return self.page.station.merge_clusters(a, b).message

    def _forget_cluster(self, form: dict[str, Any]) -> str:
        cluster_id = str(form.get("cluster_id", ""))
        if not _CLUSTER_ID.match(cluster_id):
            raise EdgefaceError(f"{cluster_id!r} is not a cluster id")
        return self.page.station.forget_cluster(cluster_id).message

    def _enroll(self, form: dict[str, Any]) -> str:
        from edgeface.service.mqtt.commands import EnrollCommand

        photo = form.get("photo")
        if not isinstance(photo, bytes) or not photo:
            raise EdgefaceError("choose a photo to enroll")
        command = EnrollCommand(name=str(form.get("name", "")).strip(), image=b64encode(photo).decode("ascii"))
        return self.page.station.enroll(command).message

    def _remove(self, form: dict[str, Any]) -> str:
        from edgeface.service.mqtt.commands import ForgetCommand

        return self.page.station.forget(ForgetCommand(name=str(form.get("name", "")))).message


