"""The station page watching a live camera (a real MJPEG stream looping a real clip, as an IP camera
would), in a real browser: the live view changes while watched, a visitor is named, the next visit
is recognised, and "this was not X" on the People page is the reject command."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from _mjpeg import MjpegServer
from test_run_sources import hamilton_frames
from test_web import PASSWORD, _browser, _Station, _submit_password, _wait, needs_browser, needs_clip


def test_event_faces_are_cropped_bounded_relabelled_and_forgotten() -> None:
    from edgeface.service.web.live import EventCrops, face_crop

    image = np.zeros((100, 200, 3), np.uint8)
    crop = face_crop(image, np.array([150.0, 60.0, 210.0, 120.0]))  # partly outside: clipped to the frame
    assert crop is not None and crop.shape == (55, 65, 3) and crop.base is None  # a copy, not a view
    assert face_crop(image, np.array([199.0, 99.0, 203.0, 103.0])) is None  # a sliver is no face
    crops = EventCrops(kept=3)
    for i in range(4):
        crops.add(f"e{i}", "unknown-1" if i % 2 else "Ada", np.full((20, 20, 3), i, np.uint8))
    assert not crops.has("e0") and crops.has("e3")  # the oldest went
    assert (crops.jpeg("e3") or b"")[:2] == b"\xff\xd8"
    crops.relabel("unknown-1", "Bob")  # the cluster was named
    assert crops.forget("unknown-1") == 0 and crops.forget("Bob") == 2
    assert crops.has("e2") and crops.jpeg("e1") is None


@pytest.mark.slow
@needs_clip
@needs_browser
def test_live_view_changes_and_a_wrong_recognition_is_rejected(tmp_path: Path) -> None:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.common.by import By

    visit = hamilton_frames(90, 200)  # Miranda's close shot ...
    empty = [np.zeros_like(visit[0])] * 45  # ... then an empty doorway: each loop is a new visit
    camera = MjpegServer(fps=30, frames=visit + empty).start()
    station = _Station(tmp_path, camera.url)
    browser = None
    try:
        _wait(lambda: station.url, 120, "the station page")
        browser = _browser(412, 915)
        browser.get(f"{station.url}/login")
        _submit_password(browser, PASSWORD)
        _wait(lambda: browser.title.startswith("Live"), what="the live page")

        # The live view changes while watched: what the browser shows differs from one moment to the next.
        live = browser.find_element(By.ID, "live")
        _wait(lambda: browser.execute_script("return arguments[0].naturalWidth", live) == 640, 60, "the live frame")
        shots = [live.screenshot_as_png]
        deadline = time.monotonic() + 20
        while len(set(shots)) < 3:
            assert time.monotonic() < deadline, "the live view did not change"
            time.sleep(0.4)
            shots.append(live.screenshot_as_png)
        (tmp_path / "live.png").write_bytes(shots[-1])

        # The first visit becomes a cluster with faces; name it.
        def first_card() -> bool:
            browser.get(f"{station.url}/unknown")
            return bool(browser.find_elements(By.CSS_SELECTOR, ".card .faces img"))

        _wait(first_card, 120, "an unknown visitor with a face")
        card = browser.find_element(By.CSS_SELECTOR, ".card")
        card.find_element(By.NAME, "name").send_keys("Lin")
        card.find_element(By.XPATH, ".//button[text()='Name']").click()
        _wait(lambda: "is now Lin" in browser.page_source, what="the naming's message")

        # A later visit is recognised: the People page offers "This was not Lin" for that track.
        def offered() -> bool:
            browser.get(f"{station.url}/people")
            return bool(browser.find_elements(By.XPATH, "//button[text()='This was not Lin']"))

        _wait(offered, 120, "a track recognised as Lin on the People page")
        faces = browser.find_elements(By.CSS_SELECTOR, ".person-card .faces img")
        assert faces, "Lin's templates show no face"
        _wait(lambda: all(browser.execute_script("return arguments[0].naturalWidth", f) > 0 for f in faces),
              what="Lin's faces")
        browser.save_screenshot(str(tmp_path / "people.png"))
        browser.find_element(By.XPATH, "//button[text()='This was not Lin']").click()
        _wait(lambda: re.search(r"noted: track \d+ was not Lin", browser.page_source), what="the reject's message")
        [person] = browser.find_elements(By.CSS_SELECTOR, ".person-card")
        assert re.search(r"\b1 negative\b", person.text), person.text

        # Removing Lin erases the faces of the events about them.
        browser.get(f"{station.url}/events")
        about = "//table[@class='events']//tr[td[4][starts-with(normalize-space(.), 'Lin')]]//img"
        assert browser.find_elements(By.XPATH, about), "no event about Lin shows a face"
        browser.get(f"{station.url}/people")
        browser.find_element(By.XPATH, "//button[text()='Remove']").click()
        _wait(lambda: "forgot Lin" in browser.page_source, what="the removal's message")
        browser.get(f"{station.url}/events")
        assert browser.find_elements(By.XPATH, "//td[@class='type' and text()='person_forgotten']")
        assert browser.find_elements(By.XPATH, "//table[@class='events']//tr[td[4][starts-with(normalize-space(.), "
                                               "'Lin')]]")  # the events stay, without their faces:
        assert browser.find_elements(By.XPATH, about) == []
    finally:
        if browser is not None:
            browser.quit()
        code = station.stop()
        camera.stop()
    assert code == 0, "".join(station.lines)
