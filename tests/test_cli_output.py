"""What a user reads: `edgeface enroll` in a real terminal (a pty: the progress bar is drawn) keeps the
bar and the result lines apart, says in a last line what was and was not enrolled, and uses the
singular where there is one."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PEOPLE = DATA / "people"
needs_people = pytest.mark.skipif(not PEOPLE.is_dir(), reason="../shared/data is absent")


def screen_of(output: bytes) -> list[str]:
    """The lines a terminal shows after `output`: carriage returns overwrite, cursor-up moves back."""
    rows: list[list[str]] = [[]]
    row = col = 0
    text = output.decode("utf-8", "replace")
    i = 0
    while i < len(text):
        char = text[i]
        escape = re.match(r"\x1b\[(\d*)([A-Za-z])", text[i:])
        if escape:
            count = int(escape.group(1) or 1)
            if escape.group(2) == "A":
                row = max(0, row - count)
            elif escape.group(2) == "B":
                row += count
            elif escape.group(2) == "K" and row < len(rows):  # erase to the end of the line
                del rows[row][col:]
            i += len(escape.group(0))
            continue
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            col = 0
        else:
            while len(rows) <= row:
                rows.append([])
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = char
            col += 1
        while len(rows) <= row:
            rows.append([])
        i += 1
    return ["".join(line).rstrip() for line in rows if "".join(line).strip()]


def run_in_terminal(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, bytes]:
    """The command with stdout and stderr on one pseudo-terminal, as a user in a shell sees it."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    process = subprocess.Popen(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    return process.wait(timeout=30), bytes(output)


def test_screen_emulation_overwrites_on_carriage_return() -> None:
    assert screen_of(b"  0%|    | 0/8\r\x1b[Kab: 1 of 1 photo\n 50%|##  | 4/8\r              \r") == ["ab: 1 of 1 photo"]
    assert screen_of(b"  0%|    | 0/8ab: 1\n") == ["  0%|    | 0/8ab: 1"]  # a line printed over the bar


@needs_people
def test_enroll_in_a_terminal_prints_no_line_over_the_bar_and_ends_with_a_summary(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for person in ("joe_biden", "lin_manuel_miranda"):
        shutil.copytree(PEOPLE / person, photos / person)
    (photos / "nobody").mkdir()
    shutil.copy(DATA / "detection" / "dogs.jpg", photos / "nobody" / "dogs.jpg")
    code, output = run_in_terminal([sys.executable, "-m", "edgeface.cli", "enroll", "--from-folders", str(photos),
                                    "--gallery", str(tmp_path / "gallery.db")], cwd=tmp_path)
    assert b"it/s]" in output or b"photo/s]" in output or b"%|" in output  # the bar was drawn
    screen = screen_of(output)
    assert code == 1, screen
    bar = re.compile(r"\d+%\||\d+/\d+ \[")
    assert not [line for line in screen if bar.search(line)], screen  # the bar is gone, never mixed into a line
    assert "joe_biden: 2 of 2 photos enrolled" in screen
    assert "lin_manuel_miranda: 1 of 1 photo enrolled" in screen
    assert "nobody: no usable photo, not enrolled" in screen
    assert any(line.startswith("rejected  nobody") and "no_face: no " in line for line in screen)
    assert screen[-1] == "2 of 3 people enrolled (3 of 4 photos); not enrolled, no usable photo: nobody"
    assert not [line for line in screen if "XNNPACK" in line or "INFO" in line], screen
