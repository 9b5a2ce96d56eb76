"""The station page: `edgeface run --web HOST:PORT` serves it from the running station (a thread of
the same process). Live view, unknown people (name, merge, ignore, forget), people (their faces,
enroll by upload, rename, remove, "this was not X"), the latest events with faces and the status
with the doctor's checks; every change goes through the same `Station` handlers as
the MQTT commands, so the page and MQTT cannot disagree.

Why the standard library's `http.server` and not a framework: the page is a handful of server-rendered
forms, one user at a time, on a board where every dependency must have aarch64 wheels and every
thread competes with the camera loop. A `ThreadingHTTPServer` needs no event loop next to the camera
thread and no new dependency; what a framework would add is done here in a few lines and tested:
a password from the MQTT secret sources, a random session cookie (HttpOnly, SameSite=Strict, Secure
over HTTPS), a per-session CSRF token on every form plus an Origin check, a Content-Security-Policy
that allows no inline script, escaped output, size-limited bodies, HTTPS when given a certificate.

Modules: `server.py` (the server, the pages and their forms), `auth.py` (sessions that survive a
restart, the global limit on password guesses), `live.py` (the live frame and the faces of events).

The live view costs the camera loop one reference assignment per frame (`LiveView.offer`), plus, on
the frames that carry events, a copy of each event's face box (for the Events page); the frame is
drawn and JPEG-encoded in the request's thread, only while someone is watching, at most
`web.live_max_fps` times a second.
"""

from edgeface.service.web.live import LiveView
from edgeface.service.web.server import PASSWORD_CREDENTIAL, StationPage, parse_listen, resolve_password

__all__ = ["PASSWORD_CREDENTIAL", "LiveView", "StationPage", "parse_listen", "resolve_password"]
