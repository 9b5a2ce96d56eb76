"""The behaviour check of the package restructure: every frame's track ids, labels and boxes on the two
videos are those of the code before it (tests/fixtures/frame_dump/*.json, written by tools/dump_frames.py
on the commit the restructure started from)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).parent / "fixtures" / "frame_dump"
BOX_TOLERANCE_PX = 0.05


def _tool():
    spec = importlib.util.spec_from_file_location("dump_frames", ROOT / "tools" / "dump_frames.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("video", ["hamilton_clip", "crowd_walk"])
def test_frames_match_the_code_before_the_restructure(video: str) -> None:
    path = DATA / "video" / f"{video}.mp4"
    if not path.is_file() or not (DATA / "people").is_dir():
        pytest.skip("../shared/data is absent")
    expected = json.loads((FIXTURES / f"{video}.json").read_text())
    got = json.loads(json.dumps(_tool().dump(path, DATA / "people")))
    assert got["event_types"] == expected["event_types"]
    assert len(got["frames"]) == len(expected["frames"])
    for mine, theirs in zip(got["frames"], expected["frames"]):
        assert mine[0] == theirs[0]
        assert [face[:2] for face in mine[1]] == [face[:2] for face in theirs[1]], f"frame {theirs[0]}"
        for face, expected_face in zip(mine[1], theirs[1]):
            # Boxes to BOX_TOLERANCE_PX: another CPU's SIMD kernels (AVX-512 or not) move a coordinate by a
            # hundredth of a pixel, across the 2-decimal rounding of the dump.
            assert max(abs(a - b) for a, b in zip(face[2], expected_face[2])) <= BOX_TOLERANCE_PX, f"frame {theirs[0]}"
