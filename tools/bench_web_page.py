"""The camera loop's fps on a video with and without the station page open in a real browser
(headless chromium on the live view, which refreshes at web.live_max_fps).

    python tools/bench_web_page.py ../shared/data/video/hamilton_clip.mp4 --repeats 5

Each run is a real `edgeface run --every-frame --web 127.0.0.1:0`; fps = frames processed from frame 100 to
the source's end (the browser already shows the live view at frame 100), read from the page's status
(polled every 20 ms in both cases) and the run's log. Runs alternate (without, with) to share the
machine's load; the median of each is reported."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_web import PASSWORD, _browser  # the test's browser settings

FROM_FRAME = 100

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def one_run(video: Path, with_page: bool) -> float:
    from selenium.webdriver.common.by import By

    folder = Path(tempfile.mkdtemp(prefix="edgeface-bench-web-"))
    env = {**os.environ, "EDGEFACE_WEB_PASSWORD": PASSWORD}
    process = subprocess.Popen([sys.executable, "-m", "edgeface.cli", "run", "--source", str(video.resolve()), "--every-frame",
                                "--web", "127.0.0.1:0"], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines: list[str] = []
    url = threading.Event()
    ended = threading.Event()

    def read() -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if "station page on" in line:
                url.set()
            if "the source ended" in line:
                ended.set()

    threading.Thread(target=read, daemon=True).start()
    browser = None
    if with_page:
        # Log in before the video starts: start a browser first, then the run's page must be up.
        browser = _browser(412, 915)
    url.wait(120)
    base = re.search(r"station page on (\S+)/", "".join(lines)).group(1)  # type: ignore[union-attr]
    if browser is not None:
        browser.get(f"{base}/login")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "form button").click()  # lands on the live view
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    opener.open(f"{base}/login", data=urllib.parse.urlencode({"password": PASSWORD}).encode(), timeout=30)
    if browser is not None:
        live = browser.find_element(By.ID, "live")
        while not browser.execute_script("return arguments[0].naturalWidth", live):
            time.sleep(0.02)
    while True:  # the same window in both cases: from frame FROM_FRAME (polled every 20 ms) to the end
        t1 = time.time()
        status = opener.open(f"{base}/status", timeout=30).read().decode()
        n1 = int(re.search(r"<th>frames</th><td>(\d+)</td>", status).group(1))  # type: ignore[union-attr]
        if n1 >= FROM_FRAME:
            break
        time.sleep(0.02)
    if n1 > FROM_FRAME + 30:
        print(f"warning: the window started late, at frame {n1}", file=sys.stderr)
    ended.wait(600)
    if browser is not None:
        browser.quit()
    process.terminate()
    process.wait(60)
    text = "".join(lines)
    end = next(line for line in lines if "the source ended" in line)
    frames = int(re.search(r"edgeface.run: (\d+) frames", text).group(1))  # type: ignore[union-attr]

    def when(line: str) -> float:
        return datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # type: ignore[union-attr]

    return (frames - n1) / (when(end) - t1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    without, with_page = [], []
    for i in range(args.repeats):
        without.append(one_run(args.video, False))
        with_page.append(one_run(args.video, True))
        print(f"run {i + 1}: without {without[-1]:.1f} fps, with the page open {with_page[-1]:.1f} fps", flush=True)
    a, b = statistics.median(without), statistics.median(with_page)
    print(f"median: without {a:.1f} fps, with the page open {b:.1f} fps ({100 * (a - b) / a:+.1f}% drop); "
          f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
