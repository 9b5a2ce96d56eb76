"""Dump every frame's track ids, labels and boxes of the camera loop on a video to JSON.

The behaviour check of a refactor: run it on the commit before and after and compare the files
(tests/test_frame_dump.py compares against tests/fixtures/frame_dump/*.json, made from the code before
the package restructure). The gallery is built the same way on both sides: the people folders of
../shared/data/people enrolled through a photo analyzer assembled here from the model components (the
detector, the whole-face keypoint refiner, the aligner and the embedder), so that a change of the
enrollment path does not move the templates; unknown faces are clustered in that gallery as by
`edgeface run`.

    python tools/dump_frames.py ../shared/data/video/hamilton_clip.mp4 -o hamilton.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeface.bus import EventBus
from edgeface.config import Config
from edgeface.io.sources import open_source
from edgeface.pipeline import build_pipeline
from edgeface.storage.cluster_store import ClusterStage, ClusterStore
from edgeface.storage.enroll import Enroller, image_files, person_folders
from edgeface.storage.gallery import Gallery
from edgeface.vision.align import Aligner
from edgeface.vision.analyzer import FaceAnalyzer
from edgeface.vision.blazeface import make_detector, make_refiner
from edgeface.vision.embed import Embedder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class _ListSink:
    def __init__(self) -> None:
        self.types: list[str] = []

    def publish(self, event: Any) -> None:
        self.types.append(event.type)

    def close(self) -> None:
        pass


def photo_analyzer(config: Config) -> FaceAnalyzer:
    r = config.recognition
    detector = make_detector(r.detector.model, min_score=r.detector.min_score, threads=1)
    refiner = make_refiner(1.0, threads=1)
    return FaceAnalyzer(detector, Aligner(method=r.alignment.method, detector_model=detector.model, refiner=refiner),
                        Embedder(precision=r.embedder.precision, threads=1, flip=r.embedder.flip))


def enroll_people(gallery: Gallery, people: Path, config: Config) -> None:
    enroller = Enroller(photo_analyzer(config), gallery)
    found, _ = person_folders(people)
    for name, folder in found:
        enroller.enroll(name, image_files(folder))


def dump(video: Path, people: Path | None, config: Config | None = None) -> dict[str, Any]:
    config = config or Config()
    with tempfile.TemporaryDirectory(prefix="edgeface-dump-") as scratch:
        gallery = Gallery(Path(scratch) / "gallery.db", create=True)
        try:
            if people is not None:
                enroll_people(gallery, people, config)
            sink = _ListSink()
            store = ClusterStore(gallery.path, config.clusters, station=config.station_id, gallery=gallery)
            pipeline = build_pipeline(config, bus=EventBus(sink), matcher=gallery, clusters=ClusterStage(store),
                                      threads=1)
            frames: list[list[Any]] = []

            def record(result: Any) -> None:
                frames.append([result.index, [[face.track_id, face.label, [round(float(v), 2) for v in face.box]]
                                              for face in result.faces]])

            def source() -> Iterator[Any]:
                with open_source(video, every_frame=True) as opened:
                    yield from opened

            pipeline.run(source(), on_frame=record)
            store.close()
        finally:
            gallery.close()
    return {"video": video.name, "people": people is not None, "frames": frames, "event_types": sink.types}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--people", type=Path, default=DATA / "people",
                        help="folders of photos to enroll (default ../shared/data/people)")
    parser.add_argument("--no-people", action="store_true", help="an empty gallery: every face is unknown")
    args = parser.parse_args(argv)
    result = dump(args.video, None if args.no_people else args.people)
    lines = [json.dumps(frame, separators=(",", ":")) for frame in result.pop("frames")]
    head = json.dumps(result, separators=(",", ":"))
    args.output.write_text(head[:-1] + ',"frames":[\n' + ",\n".join(lines) + "\n]}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
