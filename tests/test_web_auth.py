"""The station page's logins: they survive a restart of the station, expire, end at log out, and
password guesses are limited for everyone together (parallel requests get no more)."""

from __future__ import annotations

import html
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

from edgeface.service.web.auth import LOGIN_BURST, LOGIN_REFILL_S, LoginThrottle, SessionStore, sessions_path

PASSWORD = "correct horse battery"


def test_sessions_expire_and_end(tmp_path: Path) -> None:
    now = [1000.0]
    store = SessionStore(tmp_path / "s.sqlite", max_age_s=60, clock=lambda: now[0])
    session = store.new()
    assert store.get(session.token) is not None
    assert store.get(session.token + "x") is None and store.get(None) is None
    assert stat.S_IMODE(os.stat(tmp_path / "s.sqlite").st_mode) == 0o600
    assert session.token.encode() not in (tmp_path / "s.sqlite").read_bytes()  # only its hash is stored
    again = SessionStore(tmp_path / "s.sqlite", max_age_s=60, clock=lambda: now[0])  # a restart
    restored = again.get(session.token)
    assert restored is not None and restored.csrf == session.csrf
    now[0] += 61
    assert again.get(session.token) is None  # expired
    other = again.new()
    again.end(other.token)
    assert again.get(other.token) is None


def test_throttle_is_one_bucket_for_everyone() -> None:
    now = [0.0]
    throttle = LoginThrottle(burst=3, refill_s=2.0, clock=lambda: now[0])
    assert [throttle.take() for _ in range(4)] == [0.0, 0.0, 0.0, 2.0]
    now[0] += 1.0
    assert throttle.take() == pytest.approx(1.0)
    now[0] += 1.0
    assert throttle.take() == 0.0


class _Station:
    """`edgeface run --web 127.0.0.1:0` on a one-frame folder; the page stays up after the frame."""

    def __init__(self, folder: Path) -> None:
        import cv2
        import numpy as np

        frames = folder / "frames"
        frames.mkdir(exist_ok=True)
        cv2.imwrite(str(frames / "0.png"), np.zeros((64, 64, 3), np.uint8))
        env = {**os.environ, "EDGEFACE_WEB_PASSWORD": PASSWORD}
        env.pop("EDGEFACE_GALLERY", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgeface.cli", "run", "--source", str(frames), "--web", "127.0.0.1:0"],
            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "the source ended" in line:
                break
        found = re.search(r"station page on (http://127\.0\.0\.1:\d+)/", "".join(self.lines))
        assert found, "".join(self.lines)
        self.url = found.group(1)
        threading.Thread(target=lambda: [None for _ in self.process.stderr or ()], daemon=True).start()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=60) == 0, "".join(self.lines)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def _open(opener: urllib.request.OpenerDirector, url: str, data: dict[str, str] | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with opener.open(url, data=body, timeout=60) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def test_logins_survive_a_restart_and_status_shows_the_doctor(tmp_path: Path) -> None:
    station = _Station(tmp_path)
    jar = CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect)
    try:
        assert _open(browser, f"{station.url}/login", {"password": PASSWORD})[0] == 303
        status, page = _open(browser, f"{station.url}/status")
        assert status == 200 and "Checks (edgeface doctor)" in page, page
        assert re.search(r"<td>ok</td><td>models</td>", page), page
        assert re.search(r"<td>ok</td><td>gallery</td>", page), page
    finally:
        station.stop()
    sessions = sessions_path(tmp_path / "gallery.db")
    assert stat.S_IMODE(os.stat(sessions).st_mode) == 0o600

    station = _Station(tmp_path)  # the same folder: the same gallery, the same sessions
    try:
        status, page = _open(browser, f"{station.url}/status")
        assert status == 200 and "<h1>Status</h1>" in page, page  # still logged in
        csrf = re.search(r'name=csrf value="([^"]+)"', page)
        assert csrf
        [cookie] = list(jar)
        assert _open(browser, f"{station.url}/logout", {"csrf": csrf.group(1)})[0] == 303
        assert not list(jar)  # the browser dropped the cookie; replaying it is refused too
        replay = urllib.request.build_opener(_NoRedirect)
        replay.addheaders = [("Cookie", f"{cookie.name}={cookie.value}")]
        assert _open(replay, f"{station.url}/status")[0] == 303  # to the login page
    finally:
        station.stop()


def test_bad_form_input_gets_a_one_line_message_and_changes_nothing(tmp_path: Path) -> None:
    station = _Station(tmp_path)
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), _NoRedirect)
    try:
        assert _open(browser, f"{station.url}/login", {"password": PASSWORD})[0] == 303
        csrf = re.search(r'name=csrf value="([^"]+)"', _open(browser, f"{station.url}/people")[1])
        assert csrf
        cases = [
            ("/people/rename", {"name": "Nobody", "new_name": "Somebody"}, "/people", "Nobody"),
            ("/people/rename", {"name": "Nobody", "new_name": ""}, "/people", "name"),
            ("/people/reject", {"name": "Nobody", "track_id": "x1"}, "/people", "'x1' is not a track id"),
            ("/people/reject", {"name": "Nobody", "track_id": "7"}, "/people", "track 7"),
            ("/unknown/ignore", {"cluster_id": "unknown-99"}, "/unknown", "unknown-99"),
            ("/unknown/unignore", {"cluster_id": "../etc"}, "/unknown", "is not a cluster id"),
        ]
        for action, form, back, expected in cases:
            status, _ = _open(browser, f"{station.url}{action}", {**form, "csrf": csrf.group(1)})
            assert status == 303, action
            page = _open(browser, f"{station.url}{back}")[1]
            errors = [html.unescape(e) for e in re.findall(r'<div class="flash error">([^<]*)</div>', page)]
            assert len(errors) == 1 and expected in errors[0] and "\n" not in errors[0], (action, form, errors)
        assert "Nobody is enrolled yet." in _open(browser, f"{station.url}/people")[1]
    finally:
        station.stop()


@pytest.mark.slow
def test_parallel_password_guesses_are_limited_for_everyone(tmp_path: Path) -> None:
    station = _Station(tmp_path)
    try:
        plain = urllib.request.build_opener(_NoRedirect)
        started = time.monotonic()
        def guess(i: int) -> int:
            try:
                return _open(plain, f"{station.url}/login", {"password": f"guess {i}"})[0]
            except OSError:  # the connection was reset: no guess either
                return 0

        with ThreadPoolExecutor(max_workers=40) as pool:
            codes = list(pool.map(guess, range(40)))
        elapsed = time.monotonic() - started
        checked = codes.count(401)  # the password was compared
        assert set(codes) <= {401, 429, 0} and codes.count(0) <= 5, codes
        assert codes.count(429) + codes.count(0) >= 40 - (LOGIN_BURST + elapsed / LOGIN_REFILL_S + 1), (codes, elapsed)
        assert checked <= LOGIN_BURST + elapsed / LOGIN_REFILL_S + 1, (codes, elapsed)
        status, page = _open(plain, f"{station.url}/login", {"password": PASSWORD})
        assert status in (303, 429)
        if status == 429:  # the owner may wait too, and is told how long
            assert "try again in" in page
        time.sleep(LOGIN_REFILL_S + 0.2)
        assert _open(plain, f"{station.url}/login", {"password": PASSWORD})[0] == 303
    finally:
        station.stop()
