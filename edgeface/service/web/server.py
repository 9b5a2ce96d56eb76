"""The station page's HTTP server: `StationPage` (sessions, the pages, the forms); see the package's
docstring for why it is built on the standard library."""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import html
import logging
import re
import ssl
import threading
import time
from base64 import b64encode
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from pydantic import ValidationError

from edgeface.errors import ConfigError, EdgefaceError
from edgeface.service.mqtt.secrets import read_secret
from edgeface.service.web.auth import LoginThrottle, Session, SessionStore, retry_after, sessions_path
from edgeface.service.web.live import EVENTS_KEPT, EventCrops, LiveView

if TYPE_CHECKING:
    from edgeface.config import WebConfig
    from edgeface.service.app import RunningStation

log = logging.getLogger(__name__)

PASSWORD_CREDENTIAL = "web_password"
"""File name of the page's password under ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``)."""

COOKIE = "edgeface_session"
CROPS_SHOWN = 4
FAILED_LOGIN_DELAY_S = 1.0
DOCTOR_CACHE_S = 60.0

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


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the default 5 resets connections when a page and its images load at once


class StationPage:
    """The page of one running station. `start()` serves it on a thread; `close()` stops it."""

    def __init__(self, running: RunningStation, listen: str, password: str, *,
                 clock: Callable[[], float] = time.monotonic, sessions_file: Path | None = None) -> None:
        """sessions_file: where logins are kept across restarts (default: next to the gallery; memory
        only without one)."""
        if running.station is None:
            raise ConfigError("the station page needs the station's commands (build_station(commands=True))")
        self.running = running
        self.station = running.station
        self.web = running.config.web
        self.host, self.port = parse_listen(listen)
        self._password = password.encode("utf-8")
        self._clock = clock
        if sessions_file is None and running.gallery is not None:
            sessions_file = sessions_path(Path(running.gallery.path))
        self.sessions = SessionStore(sessions_file, self.web.session_max_age_s)
        self.throttle = LoginThrottle()
        crops_on = running.config.clusters.store_face_crops
        self.event_crops = EventCrops() if crops_on else None
        names = [r.name for r in running.cameras.runners] if running.cameras is not None else [running.config.pipeline.camera]
        self.lives = {name: LiveView(self.event_crops) for name in names}
        """One live view per camera (`/live.jpg?camera=NAME`); `live` is the first camera's."""
        self.live = self.lives[names[0]]
        self.events: deque[Any] = deque(maxlen=EVENTS_KEPT)
        self.started_at = clock()
        self.https = self.web.cert_file is not None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._doctor: tuple[float, list[Any]] | None = None
        self._doctor_lock = threading.Lock()
        running.bus.subscribe(self.on_event, name="station page")

    def on_event(self, event: Any) -> None:
        """Keep the event for the Events page; a forgotten person's or cluster's faces go."""
        self.events.append(event)
        if self.event_crops is None:
            return
        kind = getattr(event, "type", None)
        if kind == "person_forgotten":
            self.event_crops.forget(event.name)
        elif kind == "cluster_named":
            self.event_crops.relabel(event.cluster_id, event.name)
        elif kind == "cluster_merged":
            self.event_crops.relabel(event.merged_id, event.kept_id)

    def forget_faces(self, who: str) -> None:
        """Drop the faces of the events about `who` (a cluster forgotten or ignored from this page)."""
        if self.event_crops is not None:
            self.event_crops.forget(who)

    def doctor_checks(self) -> list[Any]:
        """The doctor's checks that make sense inside a running station (models, gallery, disk,
        commands, file permissions), at most once a minute."""
        with self._doctor_lock:
            now = self._clock()
            if self._doctor is None or now - self._doctor[0] >= DOCTOR_CACHE_S:
                from edgeface.service.doctor import station_checks

                gallery = Path(self.running.gallery.path) if self.running.gallery is not None else None
                self._doctor = (now, station_checks(self.running.config, gallery))
            return self._doctor[1]

    # -- serving -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}/"

    def start(self) -> StationPage:
        handler = type("Handler", (_Handler,), {"page": self})
        try:
            server = _Server((self.host, self.port), handler)
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
            self.sessions.close()

    # -- sessions ------------------------------------------------------------------------------

    def check_password(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8"), self._password)


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
ul.tracks{list-style:none;padding:0}ul.tracks li{display:flex;align-items:center;gap:.4rem;flex-wrap:wrap}
.faces img,img.face{width:72px;height:72px;object-fit:cover;border-radius:4px;margin:0 .2rem .2rem 0}
img.face{width:48px;height:48px}
tr.warn td:first-child{color:#a60}tr.fail td:first-child{color:#c00;font-weight:bold}
.live{max-width:100%;height:auto;background:#000}
form.inline{display:flex;flex-wrap:wrap;align-items:center;gap:.3rem;margin:.3rem 0}
form.inline input:not([type]){flex:1 1 9rem;min-width:0}
form.inline label{display:flex;align-items:center;gap:.3rem;min-width:0;overflow-wrap:anywhere}
input,select,button{font-size:1rem;padding:.3rem}
.flash{padding:.5rem;border-radius:4px;margin:.4rem 0}
.ok{background:#dfd}.error{background:#fdd}
table{border-collapse:collapse;width:100%;background:#fff;overflow-wrap:anywhere}td,th{border-bottom:1px solid #ddd;padding:.3rem;text-align:left}
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
  if(img.complete){next();}  // the first frame may have loaded before this script ran
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

    def _layout(self, current: str, title: str, body: str, session: Session | None) -> bytes:
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

    def _form(self, action: str, session: Session, inner: str, multipart: bool = False) -> str:
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
        session = self.page.sessions.get(self._token())
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
        match = re.fullmatch(r"/template/(\d{1,12})\.jpg", path)
        if match:
            try:
                jpeg = self.page.station._cluster_store().template_crop(int(match.group(1)))
            except EdgefaceError:
                jpeg = None
            if jpeg is None:
                return self._send(HTTPStatus.NOT_FOUND, b"no such face", "text/plain; charset=utf-8")
            return self._send(HTTPStatus.OK, jpeg, "image/jpeg")
        match = re.fullmatch(r"/event/([0-9a-f-]{8,64})\.jpg", path)
        if match:
            jpeg = self.page.event_crops.jpeg(match.group(1)) if self.page.event_crops is not None else None
            if jpeg is None:
                return self._send(HTTPStatus.NOT_FOUND, b"no such face", "text/plain; charset=utf-8")
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

    def _live(self, session: Session) -> tuple[str, str]:
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

    def _unknown(self, session: Session) -> tuple[str, str]:
        station = self.page.station
        if self.page.running.gallery is None:
            return "Unknown people", "<p>This station runs without a gallery, so unknown people are not clustered.</p>"
        store = station._cluster_store()
        every = sorted(store.list_clusters(), key=lambda c: c.last_seen, reverse=True)
        clusters = [c for c in every if not c.ignored]
        ignored = [c for c in every if c.ignored]
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
                                   "<label><input type=checkbox name=force value=1> even if they look unlike</label>"
                                   "<button>Name</button>")
            merge_form = self._form("/unknown/merge", session,
                                    f'<input type=hidden name=a value="{_h(info.id)}"><select name=b>{others}</select>'
                                    "<button>Same person: merge</button>") if others else ""
            forget_form = self._form("/unknown/ignore", session,
                                     f'<input type=hidden name=cluster_id value="{_h(info.id)}">'
                                     "<button>Not a face / ignore</button>") + \
                self._form("/unknown/forget", session, f'<input type=hidden name=cluster_id value="{_h(info.id)}">'
                           "<button>Forget (erase)</button>")
            parts.append(f'<div class=card id="{_h(info.id)}"><h2>{_h(info.id)}</h2><div class=faces>{faces}</div>'
                         f"<p>{_h(info.status.value if hasattr(info.status, 'value') else info.status)}, "
                         f"{info.visits} visit{'s' if info.visits != 1 else ''}, {info.observations} sighting"
                         f"{'s' if info.observations != 1 else ''}<br>first seen {_h(_when(info.first_seen))}<br>"
                         f"last seen {_h(_when(info.last_seen))}</p>{name_form}{merge_form}{forget_form}</div>")
        parts.append("</div>")
        if ignored:
            rows = "".join(
                f'<tr class=ignored id="{_h(c.id)}"><td>{_h(c.id)}</td><td>{c.observations} sighting'
                f"{'s' if c.observations != 1 else ''}, last {_h(_when(c.last_seen))}</td><td>"
                + self._form("/unknown/unignore", session, f'<input type=hidden name=cluster_id value="{_h(c.id)}">'
                             "<button>Stop ignoring</button>") + "</td></tr>" for c in ignored)
            parts.append("<h2>Ignored</h2><p class=note>Marked \u201cnot a face / ignore\u201d: the same face joins its "
                         "cluster again and is not offered here; its faces are not kept. Forget erases a cluster "
                         f"instead, and the face may come back as a new one.</p><table>{rows}</table>")
        return "Unknown people", "".join(parts)

    def _people(self, session: Session) -> tuple[str, str]:
        station = self.page.station
        gallery = station.gallery
        if gallery is None:
            return "People", "<p>This station runs without a gallery.</p>"
        store = station._cluster_store()
        crops_on = store.settings.store_face_crops
        recent = self._recent_decisions()
        cards = []
        for info in gallery.list_identities():
            name = _h(info.name)
            faces = "".join(f'<img src="/template/{i}.jpg" alt="a face of {name}">'
                            for i in store.template_crops(info.name, CROPS_SHOWN)) if crops_on else ""
            hidden = f'<input type=hidden name=name value="{name}">'
            rename = self._form("/people/rename", session, hidden + '<input name=new_name placeholder="new name" '
                                f'required maxlength=64 aria-label="new name for {name}"><button>Rename</button>')
            remove = self._form("/people/remove", session, hidden + "<button>Remove</button>")
            tracks = []
            for track_id, event_id in recent.get(info.name, []):
                face = (f'<img class=face src="/event/{_h(event_id)}.jpg" alt="track {track_id}">'
                        if event_id and self.page.event_crops is not None and self.page.event_crops.has(event_id) else "")
                tracks.append(f"<li>{face} track {track_id} "
                              + self._form("/people/reject", session,
                                           f'{hidden}<input type=hidden name=track_id value="{track_id}">'
                                           f"<button>This was not {name}</button>") + "</li>")
            recent_html = (f"<p>Recently recognised as {name}:</p><ul class=tracks>{''.join(tracks)}</ul>"
                           if tracks else "")
            cards.append(f'<div class="card person-card" data-name="{name}"><h2 class=person>{name}</h2>'
                         f"<div class=faces>{faces or '<span class=note>no face stored</span>'}</div>"
                         f"<p>{info.template_count} template{'s' if info.template_count != 1 else ''}, "
                         f"{info.negative_count} negative{'s' if info.negative_count != 1 else ''}</p>"
                         f"{recent_html}{rename}{remove}</div>")
        note = ("<p class=note>Faces are the crops a person's templates were made from (a named cluster's, an "
                f"uploaded photo's), kept {store.settings.crop_retention_days:g} days; removing a person erases "
                "them.</p>" if crops_on else
                "<p class=note>No faces are shown: face crops are not stored on this station "
                "(clusters.store_face_crops: false).</p>")
        people = f"{note}<div class=cards>{''.join(cards)}</div>" if cards else "<p>Nobody is enrolled yet.</p>"
        enroll = self._form("/people/enroll", session,
                            '<input name=name placeholder="name" required maxlength=64>'
                            '<input type=file name=photo accept="image/*" required><button>Enroll</button>',
                            multipart=True)
        return "People", f"{people}<h2>Enroll from a photo</h2>{enroll}"

    def _recent_decisions(self) -> dict[str, list[tuple[int, str | None]]]:
        """Name -> (track id, id of its latest recognized event) of the tracks the camera loop still
        remembers as decided so (what "this was not X" can be said about), newest first."""
        pipeline = self.page.station.pipeline
        if pipeline is None:
            return {}
        latest: dict[tuple[int, str], str] = {}
        for event in self.page.events:
            if getattr(event, "type", None) == "recognized":
                latest[(event.track_id, event.name)] = event.id
        out: dict[str, list[tuple[int, str | None]]] = {}
        for track_id in reversed(pipeline.decider.recent_track_ids()):
            recent = pipeline.decider.recent(track_id)
            for name in recent.embeddings if recent is not None else ():
                out.setdefault(name, []).append((track_id, latest.get((track_id, name))))
        return {name: tracks[:CROPS_SHOWN] for name, tracks in out.items()}

    def _events(self, session: Session) -> tuple[str, str]:
        crops = self.page.event_crops
        rows = []
        for event in reversed(self.page.events):
            data = event.to_dict()
            who = data.get("name") or data.get("cluster_id") or data.get("kept_id") or ""
            detail = ", ".join(f"{k} {v}" for k, v in data.items()
                               if k in ("track_id", "confidence", "merged_id", "label") and v is not None)
            face = ""
            if crops is not None and crops.has(event.id):
                face = f'<img class=face src="/event/{_h(event.id)}.jpg" alt="the face of this event">'
            ts = str(data.get("ts", ""))
            when = ts[11:19] if len(ts) >= 19 else ts  # the time of day (UTC); the full stamp on hover
            rows.append(f"<tr><td>{face}</td><td title=\"{_h(ts)}\">{_h(when)}</td><td class=type>"
                        f"{_h(data.get('type', ''))}</td><td>{_h(who)}<br><span class=note>{_h(detail)}</span></td></tr>")
        note = ("" if crops is not None else "<p class=note>No faces are shown: face crops are not stored on this "
                "station (clusters.store_face_crops: false).</p>")
        if not rows:
            return "Events", f"{note}<p>No events since the station started.</p>"
        return "Events", (f"{note}<table class=events><tr><th></th><th>UTC</th><th>Event</th><th>Who</th></tr>"
                          + "".join(rows) + "</table><p class=note>The faces of the last events are kept in memory "
                          "only; forgetting a person or a cluster drops theirs.</p>")

    def _status(self, session: Session) -> tuple[str, str]:
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
        checks = "".join(f'<tr class="check {_h(c.status)}"><td>{_h(c.status)}</td><td>{_h(c.name)}</td>'
                         f"<td>{_h(c.detail)}{f'<br><b>fix:</b> {_h(c.fix)}' if c.fix else ''}</td></tr>"
                         for c in self.page.doctor_checks())
        return "Status", (f"<table>{rows}</table><h2>Checks (edgeface doctor)</h2><table class=checks>{checks}</table>"
                          "<p class=note>The doctor's checks of a running station, at most once a minute; "
                          "`edgeface doctor` checks the camera and the broker too.</p>")

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
            return self._login(form)
        cookie = self._token()
        session = self.page.sessions.get(cookie)
        if session is None:
            return self._send(HTTPStatus.UNAUTHORIZED, self._login_page("Log in first."))
        if not hmac.compare_digest(str(form.get("csrf", "")).encode(), session.csrf.encode()):
            return self._send(HTTPStatus.FORBIDDEN, b"the form's token is missing or stale: reload the page",
                              "text/plain; charset=utf-8")
        if path == "/logout":
            self.page.sessions.end(cookie)
            return self._redirect("/login", {"Set-Cookie": self._cookie("", 0)})
        action = {"/unknown/name": self._name, "/unknown/merge": self._merge, "/unknown/forget": self._forget_cluster,
                  "/unknown/ignore": self._ignore_cluster, "/unknown/unignore": self._unignore_cluster,
                  "/people/enroll": self._enroll, "/people/remove": self._remove, "/people/rename": self._rename,
                  "/people/reject": self._reject}.get(path)
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

    def _login(self, form: dict[str, Any]) -> None:
        wait_s = self.page.throttle.take()  # before the password is even looked at
        if wait_s > 0:
            seconds = retry_after(wait_s)
            log.warning("station page: login attempts throttled (%s)", self.client_address[0])
            return self._send(HTTPStatus.TOO_MANY_REQUESTS,
                              self._login_page(f"Too many login attempts: try again in {seconds} s."),
                              headers={"Retry-After": str(seconds)})
        if self.page.check_password(str(form.get("password", ""))):
            session = self.page.sessions.new()
            return self._redirect("/live", {"Set-Cookie": self._cookie(session.token, int(self.page.web.session_max_age_s))})
        log.warning("station page: a wrong password from %s", self.client_address[0])
        time.sleep(FAILED_LOGIN_DELAY_S)
        return self._send(HTTPStatus.UNAUTHORIZED, self._login_page("Wrong password."))

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
        message = self.page.station.forget_cluster(cluster_id).message
        self.page.forget_faces(cluster_id)
        return message

    def _ignore_cluster(self, form: dict[str, Any], ignored: bool = True) -> str:
        cluster_id = str(form.get("cluster_id", ""))
        if not _CLUSTER_ID.match(cluster_id):
            raise EdgefaceError(f"{cluster_id!r} is not a cluster id")
        message = self.page.station.ignore_cluster(cluster_id, ignored).message
        if ignored:
            self.page.forget_faces(cluster_id)
        return message

    def _unignore_cluster(self, form: dict[str, Any]) -> str:
        return self._ignore_cluster(form, ignored=False)

    def _enroll(self, form: dict[str, Any]) -> str:
        from edgeface.service.mqtt.commands import EnrollCommand

        photo = form.get("photo")
        if not isinstance(photo, bytes) or not photo:
            raise EdgefaceError("choose a photo to enroll")
        command = EnrollCommand(name=str(form.get("name", "")).strip(), image=b64encode(photo).decode("ascii"))
        return self.page.station.enroll(command).message

    def _rename(self, form: dict[str, Any]) -> str:
        result = self.page.station.rename_person(str(form.get("name", "")), str(form.get("new_name", "")).strip())
        if self.page.event_crops is not None and isinstance(result.result, dict):
            self.page.event_crops.relabel(str(result.result["old"]), str(result.result["name"]))
        return result.message

    def _reject(self, form: dict[str, Any]) -> str:
        from edgeface.service.mqtt.commands import RejectCommand

        track = str(form.get("track_id", ""))
        if not track.isdigit():
            raise EdgefaceError(f"{track!r} is not a track id")
        return self.page.station.reject(RejectCommand(track_id=int(track), name=str(form.get("name", "")))).message

    def _remove(self, form: dict[str, Any]) -> str:
        from edgeface.service.mqtt.commands import ForgetCommand

        return self.page.station.forget(ForgetCommand(name=str(form.get("name", "")))).message


