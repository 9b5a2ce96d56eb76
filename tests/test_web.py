"""The station page (`edgeface run --web`): a real `edgeface run` process on the hamilton clip, driven by
a real browser (Debian's chromium through chromium-driver and selenium) and by plain HTTP requests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from edgeface.config import WebConfig
from edgeface.errors import ConfigError
from edgeface.events import parse_event
from edgeface.service.web import parse_listen, resolve_password

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAMILTON = DATA / "video" / "hamilton_clip.mp4"
PHOTO = DATA / "people" / "lin_manuel_miranda" / "1.png"
PASSWORD = "correct horse battery"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_clip = pytest.mark.skipif(not HAMILTON.is_file(), reason="../shared/data/video/hamilton_clip.mp4 is absent")
needs_browser = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                   reason="chromium and chromium-driver are not installed (.ci/run installs them where root)")


def test_listen_addresses() -> None:
    assert parse_listen("8080") == ("127.0.0.1", 8080)
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_listen("localhost:http")


def test_password_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a password"):
        resolve_password(WebConfig(), environ={})
    assert resolve_password(WebConfig(), environ={"EDGEFACE_WEB_PASSWORD": "a"}) == "a"
    (tmp_path / "web_password").write_text("from systemd\n")
    assert resolve_password(WebConfig(), environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "from systemd"
    (tmp_path / "pw").write_text("from a file\n")
    assert resolve_password(WebConfig(password_file=tmp_path / "pw"), environ={}) == "from a file"


def test_run_refuses_a_page_without_password(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((64, 64, 3), np.uint8))
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEFACE_WEB_PASSWORD", "CREDENTIALS_DIRECTORY")}
    done = subprocess.run([sys.executable, "-m", "edgeface.cli", "run", "--source", str(frames), "--web", "0"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "the station page needs a password" in done.stderr
    assert not (tmp_path / "gallery.db").exists()  # refused before anything was created


class _Station:
    """`edgeface run --source <source> --web 127.0.0.1:0` in `folder` (the hamilton clip unless told);
    stderr read on a thread."""

    def __init__(self, folder: Path, source: str = str(HAMILTON)) -> None:
        env = {**os.environ, "EDGEFACE_WEB_PASSWORD": PASSWORD}
        env.pop("EDGEFACE_GALLERY", None)
        self.stdout = (folder / "events.jsonl").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgeface.cli", "run", "--source", source, "--web", "127.0.0.1:0"],
            cwd=folder, env=env, stdout=self.stdout, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.url = ""
        self.ended = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            found = re.search(r"station page on (http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found.group(1)
            if "the source ended" in line:
                self.ended.set()

    def wait_ended(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ended.is_set():
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.2)
        assert self.url, "".join(self.lines)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        self.stdout.close()
        return code


def _request(url: str, data: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> int:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _browser(width: int, height: int):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER or ""), options=options)
    # Headless chromium makes no window narrower than 500 px: emulate the phone's screen itself.
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    return browser


def _fully_shown(browser, element) -> bool:  # type: ignore[no-untyped-def]
    """The element's text is not cut: it fits its own box, inside its card, and overlaps no button."""
    return bool(browser.execute_script("""
        var e = arguments[0], r = e.getBoundingClientRect(), card = e.closest('.card').getBoundingClientRect();
        var clear = Array.from(e.closest('form').querySelectorAll('button')).every(function (b) {
          var q = b.getBoundingClientRect();
          return q.left >= r.right || q.right <= r.left || q.top >= r.bottom || q.bottom <= r.top; });
        return e.scrollWidth <= e.clientWidth && r.left >= card.left && r.right <= card.right && clear;""", element))


def _wait(condition, timeout_s: float = 30, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _submit_password(browser, password: str) -> None:  # type: ignore[no-untyped-def]
    """On the login page: type `password` and send the form."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "form button").click()


def _cookie(browser) -> str:  # type: ignore[no-untyped-def]
    return "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())


def _people(browser) -> list[str]:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    return [h.text for h in browser.find_elements(By.CSS_SELECTOR, ".person-card h2.person")]


def _faces_loaded(browser, selector: str) -> bool:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    faces = browser.find_elements(By.CSS_SELECTOR, selector)
    return bool(faces) and all(browser.execute_script("return arguments[0].naturalWidth", f) > 0 for f in faces)


@pytest.mark.slow
@needs_clip
@needs_browser
def test_name_an_unknown_person_in_a_browser(tmp_path: Path) -> None:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.common.by import By

    station = _Station(tmp_path)
    browser = None
    try:
        station.wait_ended()
        base = station.url

        # Without the password: every page sends to the login, images and actions are refused.
        assert _request(f"{base}/unknown") == 303
        assert _request(f"{base}/live.jpg") == 401
        assert _request(f"{base}/crop/unknown-1/0.jpg") == 401
        assert _request(f"{base}/template/1.jpg") == 401
        assert _request(f"{base}/event/{'0' * 32}.jpg") == 401
        assert _request(f"{base}/status") == 303
        assert _request(f"{base}/unknown/forget", {"cluster_id": "unknown-1", "csrf": "x"}) == 401

        browser = _browser(412, 915)  # a phone's screen
        browser.get(f"{base}/unknown")
        _wait(lambda: browser.title.startswith("Log in"), what="the login page")
        _submit_password(browser, "wrong")
        _wait(lambda: "Wrong password." in browser.page_source, what="the refusal of a wrong password")

        _submit_password(browser, PASSWORD)
        _wait(lambda: browser.title.startswith("Live"), what="the live page")
        live = browser.find_element(By.ID, "live")
        _wait(lambda: browser.execute_script("return arguments[0].naturalWidth", live) == 640, what="the live frame")
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        browser.save_screenshot(str(tmp_path / "live.png"))

        browser.get(f"{base}/unknown")
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        assert cards, browser.page_source
        faces = cards[0].find_elements(By.CSS_SELECTOR, ".faces img")
        assert faces, "the first cluster shows no face"
        _wait(lambda: all(browser.execute_script("return arguments[0].naturalWidth", f) > 0 for f in faces),
              what="the face crops")
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        assert browser.execute_script("return window.innerWidth") == 412
        force = cards[0].find_element(By.XPATH, ".//label[input[@name='force']]")
        assert force.text == "even if they look unlike" and _fully_shown(browser, force)
        browser.save_screenshot(str(tmp_path / "unknown.png"))
        cluster_id = cards[0].get_attribute("id")
        browser.get(f"{base}/events")
        about = f"//table[@class='events']//tr[td[4][starts-with(normalize-space(.), '{cluster_id}')]]//img"
        assert browser.find_elements(By.XPATH, about), "no event about the cluster shows its face"
        _wait(lambda: _faces_loaded(browser, "table.events img.face"), what="the events' faces")
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        browser.save_screenshot(str(tmp_path / "events.png"))
        browser.get(f"{base}/unknown")
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")

        # "Not a face / ignore": off the list of unknown people, onto the ignore list, its faces erased;
        # "Stop ignoring" brings it back (without the faces). The same face not being offered again is
        # tests/test_cluster_ignore.py.
        cards[0].find_element(By.XPATH, ".//button[text()='Not a face / ignore']").click()
        _wait(lambda: f"ignoring {cluster_id}" in browser.page_source, what="the ignore's message")
        assert browser.find_elements(By.CSS_SELECTOR, f".card[id='{cluster_id}']") == []
        assert browser.find_elements(By.CSS_SELECTOR, f"tr.ignored[id='{cluster_id}']")
        assert _request(f"{base}/crop/{cluster_id}/0.jpg", headers={"Cookie": _cookie(browser)}) == 404
        browser.get(f"{base}/events")
        assert browser.find_elements(By.XPATH, about) == []  # nor the faces of the events about it
        browser.get(f"{base}/unknown")
        ignored = browser.find_element(By.CSS_SELECTOR, f"tr.ignored[id='{cluster_id}']")
        ignored.find_element(By.XPATH, ".//button[text()='Stop ignoring']").click()
        _wait(lambda: f"no longer ignoring {cluster_id}" in browser.page_source, what="the un-ignore's message")
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        assert cards[0].get_attribute("id") == cluster_id

        cards[0].find_element(By.NAME, "name").send_keys("Visitor A")
        cards[0].find_element(By.XPATH, ".//button[text()='Name']").click()
        _wait(lambda: "is now Visitor A" in browser.page_source, what="the naming's message")
        assert browser.find_elements(By.ID, cluster_id) == []  # it left the unknown people

        browser.get(f"{base}/people")
        assert _people(browser) == ["Visitor A"]
        visitor = browser.find_element(By.CSS_SELECTOR, ".person-card[data-name='Visitor A']")
        assert "no face stored" in visitor.text  # ignoring erased the cluster's faces (named faces: test_web_live)
        browser.find_element(By.CSS_SELECTOR, "form[action='/people/enroll'] input[name=name]").send_keys("Lin")
        browser.find_element(By.NAME, "photo").send_keys(str(PHOTO))
        browser.find_element(By.XPATH, "//button[text()='Enroll']").click()
        _wait(lambda: "enrolled Lin (1 template)" in browser.page_source, what="the enrollment's message")
        assert _people(browser) == ["Lin", "Visitor A"]
        lin = browser.find_element(By.CSS_SELECTOR, ".person-card[data-name='Lin']")
        assert len(lin.find_elements(By.CSS_SELECTOR, ".faces img")) == 1  # the uploaded photo's face
        _wait(lambda: _faces_loaded(browser, ".person-card .faces img"), what="the enrolled face")
        browser.save_screenshot(str(tmp_path / "people.png"))
        lin.find_element(By.NAME, "new_name").send_keys("Lin-Manuel")
        lin.find_element(By.XPATH, ".//button[text()='Rename']").click()
        _wait(lambda: "renamed Lin to Lin-Manuel" in browser.page_source, what="the rename's message")
        assert _people(browser) == ["Lin-Manuel", "Visitor A"]
        renamed = browser.find_element(By.CSS_SELECTOR, ".person-card[data-name='Lin-Manuel']")
        assert len(renamed.find_elements(By.CSS_SELECTOR, ".faces img")) == 1  # the face followed the name

        browser.get(f"{base}/events")
        assert "cluster_named" in [td.text for td in browser.find_elements(By.CSS_SELECTOR, "td.type")]
        browser.get(f"{base}/status")
        assert "Checks (edgeface doctor)" in browser.page_source

        # A stale or missing form token is refused even with the session cookie.
        browser.get(f"{base}/people")
        browser.execute_script("document.querySelectorAll('input[name=csrf]').forEach(i => { i.value = 'forged'; })")
        browser.find_element(By.XPATH, "//button[text()='Remove']").click()
        _wait(lambda: "stale" in browser.page_source, what="the refusal")
        browser.get(f"{base}/people")
        assert _people(browser) == ["Lin-Manuel", "Visitor A"]

    finally:
        if browser is not None:
            browser.quit()
        code = station.stop()
    assert code == 0, "".join(station.lines)
    events = [parse_event(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    named = [e for e in events if e.type == "cluster_named"]
    assert [(e.cluster_id, e.name) for e in named] == [(cluster_id, "Visitor A")]  # type: ignore[attr-defined]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed (to make a test certificate)")
def test_https_page_next_to_mqtt(tmp_path: Path) -> None:
    """With a certificate the page is HTTPS (Secure cookie); with MQTT its status shows the broker."""
    import ssl
    import uuid
    from http.cookiejar import CookieJar

    import cv2
    import numpy as np

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True, timeout=60)
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "edgeface.yaml").write_text(f"web: {{cert_file: {tmp_path / 'cert.pem'}, key_file: {tmp_path / 'key.pem'}}}\n"
                                            f"mqtt: {{outbox_path: {tmp_path / 'outbox.sqlite'}}}\n")
    env = {**os.environ, "EDGEFACE_WEB_PASSWORD": PASSWORD, "XDG_CONFIG_HOME": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeface.cli", "run", "--source", str(frames), "--config", str(tmp_path / "edgeface.yaml"),
         "--web", "127.0.0.1:0", "--mqtt-url", "mqtt://127.0.0.1:1883", "--station-id", f"web{uuid.uuid4().hex[:8]}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "the source ended" in line:
                break
        base = re.search(r"station page on (https://127\.0\.0\.1:\d+)/", "".join(lines))
        assert base, "".join(lines)
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                             urllib.request.HTTPCookieProcessor(jar))
        opener.open(f"{base.group(1)}/login", data=urllib.parse.urlencode({"password": PASSWORD}).encode(), timeout=30)
        [cookie] = list(jar)
        assert cookie.secure and cookie.name == "edgeface_session"
        deadline = time.monotonic() + 30
        while "<th>broker</th><td>connected</td>" not in (page := opener.open(f"{base.group(1)}/status").read().decode()):
            assert time.monotonic() < deadline, page
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
