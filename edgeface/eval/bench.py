"""`edgeface bench models`: median per-call latency of each model, at 1 and 2 threads.

Every figure is the median wall time of `repeats` timed calls after a few untimed warm-up calls, in
milliseconds, measured on one 640x480 frame:

- detector, short range (128x128 input) and full range (192x192), whole frame per call (letterbox,
  model, decoding and NMS included);
- alignment, both methods, per face (BlazeFace keypoints, and dlib's shape predictor started from
  the BlazeFace box); alignment has no model threads, the thread count is OpenCV's (cv2.setNumThreads);
- embedder FP32 and INT8, one chip per call and a batch of 8 chips per call (reported per face),
  and the INT8/FP32 latency ratio.

The frame is a real photo cropped to 4:3 when the evaluation data (`--data`, else `../shared/data`
from the working directory or next to a source checkout) is present, otherwise a synthetic noise
frame with a made-up face placement (model time hardly depends on content; `frame_source` says which
one was used).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from edgeface.vision.detections import FaceDetections

FRAME_WIDTH = 640
FRAME_HEIGHT = 480
THREAD_COUNTS = (1, 2)
BATCH = 8

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"
"""The evaluation data next to a source checkout (absent on a user's machine)."""


def find_data_dir(explicit: Path | None = None) -> Path | None:
    """The evaluation data: `explicit` (--data; it must be a folder), else ../shared/data from the
    working directory (the repository root, wherever the package is installed), else next to a
    source checkout; None when there is none."""
    from edgeface.errors import EdgefaceError

    if explicit is not None:
        if not explicit.is_dir():
            raise EdgefaceError(f"--data {explicit}: no such folder")
        return explicit
    for candidate in (Path.cwd().parent / "shared" / "data", DATA_DIR):
        if candidate.is_dir():
            return candidate
    return None

FRAME_CANDIDATES = (
    "people/_group/obama_and_biden.jpg",
    "people/barack_obama/1.jpg",
    "lfw/images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
)

ROWS: tuple[tuple[str, str], ...] = (
    ("detect_short", "detector short range (128x128), per frame"),
    ("detect_full", "detector full range (192x192), per frame"),
    ("align_blazeface", "align blazeface keypoints, per face"),
    ("align_shape_predictor", "align shape_predictor, per face"),
    ("embed_fp32", "embed FP32, 1 chip per call"),
    ("embed_int8", "embed INT8, 1 chip per call"),
    ("embed_fp32_batch8", f"embed FP32, batch {BATCH}, per face"),
    ("embed_int8_batch8", f"embed INT8, batch {BATCH}, per face"),
)
RATIO_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("int8_fp32_ratio", "INT8/FP32 latency, 1 chip", "embed_int8", "embed_fp32"),
    ("int8_fp32_ratio_batch8", f"INT8/FP32 latency, batch {BATCH}", "embed_int8_batch8", "embed_fp32_batch8"),
)


def median_ms(call: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of `repeats` calls after `warmup` untimed ones, in milliseconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e6


def fit_frame(image: np.ndarray, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> np.ndarray:
    """Centre-crop to width:height, then resize to exactly (height, width)."""
    import cv2

    h, w = image.shape[:2]
    if w * height > h * width:  # too wide
        crop_w = h * width // height
        image = image[:, (w - crop_w) // 2 : (w - crop_w) // 2 + crop_w]
    else:
        crop_h = w * height // width
        image = image[(h - crop_h) // 2 : (h - crop_h) // 2 + crop_h]
    interpolation = cv2.INTER_AREA if image.shape[1] > width else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=interpolation))


def load_frame(data_dir: Path | None = DATA_DIR) -> tuple[np.ndarray, str]:
    """A 640x480 BGR frame and where it came from ("<relative path>" or "synthetic")."""
    from edgeface.errors import ImageError
    from edgeface.io.images import read_image

    for relative in FRAME_CANDIDATES:
        path = None if data_dir is None else data_dir / relative
        if path is not None and path.is_file():
            try:
                return fit_frame(read_image(path)), relative
            except ImageError:
                continue
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8), "synthetic"


def synthetic_face(width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> FaceDetections:
    """One plausible 160-pixel face in the middle of the frame (for timing alignment without a real face)."""
    cx, cy, side = width / 2, height / 2, 160.0
    box = np.array([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]], np.float32)
    unit = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.5, 0.75], [0.05, 0.4], [0.95, 0.4]])
    kps = (np.array([cx - side / 2, cy - side / 2]) + unit * side).astype(np.float32)[None]
    return FaceDetections(box, np.array([0.9], np.float32), kps)


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _package_version(*names: str) -> str:
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


@dataclass(frozen=True)
class ModelBench:
    """Latency figures (ms, median per call) keyed `<row>_<threads>t_ms`, ratios `<ratio>_<threads>t`."""

    repeats: int
    warmup: int
    frame_source: str
    frame_faces: int
    """Faces the short-range detector found in the frame (0: alignment was timed on a made-up face)."""
    cpu_model: str
    cpu_count: int
    onnxruntime_version: str
    onnxruntime_providers: tuple[str, ...]
    litert_version: str
    int8_effective_precision: str
    """"int8", or "fp32" when the INT8 self-check failed on this CPU (the INT8 figures are then FP32's)."""
    load_average: float | None
    """1-minute load average when the run started (other work on the board skews every figure)."""
    ms: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        ms = {key: round(value, 4) for key, value in self.ms.items()}
        out: dict[str, object] = {
            "detect_ms": ms["detect_short_1t_ms"],
            "embed_fp32_ms": ms["embed_fp32_1t_ms"],
            "embed_int8_ms": ms["embed_int8_1t_ms"],
        }
        out.update(ms)
        out.update({key: round(value, 4) for key, value in self.ratios.items()})
        out.update(
            {
                "repeats": self.repeats,
                "warmup": self.warmup,
                "frame_width": FRAME_WIDTH,
                "frame_height": FRAME_HEIGHT,
                "frame_source": self.frame_source,
                "frame_faces": self.frame_faces,
                "cpu_model": self.cpu_model,
                "cpu_count": self.cpu_count,
                "load_average": self.load_average,
                "onnxruntime_version": self.onnxruntime_version,
                "onnxruntime_providers": list(self.onnxruntime_providers),
                "litert_version": self.litert_version,
                "int8_effective_precision": self.int8_effective_precision,
            }
        )
        return out

    def table_lines(self) -> list[str]:
        faces = f"{self.frame_faces} face(s) found" if self.frame_faces else "no face found, made-up face for alignment"
        lines = [
            f"edgeface bench models: median ms per call over {self.repeats} calls ({self.warmup} warm-up)",
            f"frame {FRAME_WIDTH}x{FRAME_HEIGHT}: {self.frame_source} ({faces})",
            f"CPU {self.cpu_model} ({self.cpu_count} logical), load average {self.load_average}",
            f"onnxruntime {self.onnxruntime_version} [{', '.join(self.onnxruntime_providers)}], LiteRT {self.litert_version}",
        ]
        if self.int8_effective_precision != "int8":
            lines.append("warning: INT8 self-check failed on this CPU, the INT8 rows ran the FP32 model")
        width = max(len(label) for _, label in ROWS + tuple((r[0], r[1]) for r in RATIO_ROWS))
        header = f"{'stage':<{width}}" + "".join(f"{f'{t} thread' + ('s' if t > 1 else ''):>12}" for t in THREAD_COUNTS)
        lines += [header, "-" * len(header)]
        for key, label in ROWS:
            lines.append(f"{label:<{width}}" + "".join(f"{self.ms[f'{key}_{t}t_ms']:>9.3f} ms" for t in THREAD_COUNTS))
        for key, label, _, _ in RATIO_ROWS:
            lines.append(f"{label:<{width}}" + "".join(f"{self.ratios[f'{key}_{t}t']:>11.2f}x" for t in THREAD_COUNTS))
        return lines


def bench_models(repeats: int = 50, data_dir: Path | None = None) -> ModelBench:
    """Time every model at 1 and 2 threads on one 640x480 frame (see the module docstring); the frame
    comes from data_dir, by default from `find_data_dir()`."""
    import cv2
    import onnxruntime  # type: ignore[import-untyped]

    from edgeface.vision.align import Aligner
    from edgeface.vision.blazeface import BlazeFaceDetector
    from edgeface.vision.embed import Embedder

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    warmup = max(2, min(10, repeats // 5))
    load_average = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    frame, source = load_frame(find_data_dir() if data_dir is None else data_dir)
    ms: dict[str, float] = {}

    faces = FaceDetections()
    for threads in THREAD_COUNTS:
        for model in ("short", "full"):
            detector = BlazeFaceDetector(model=model, threads=threads)
            ms[f"detect_{model}_{threads}t_ms"] = median_ms(partial(detector.detect, frame), repeats, warmup)
            if model == "short" and threads == 1:
                faces = detector.detect(frame)
    frame_faces = len(faces)
    if not frame_faces:
        faces = synthetic_face()

    aligners = {method: Aligner(method=method) for method in ("blazeface", "shape_predictor")}
    opencv_threads = cv2.getNumThreads()
    try:
        for threads in THREAD_COUNTS:
            cv2.setNumThreads(threads)
            for method, aligner in aligners.items():
                per_call = median_ms(partial(aligner.align, frame, faces), repeats, warmup)
                ms[f"align_{method}_{threads}t_ms"] = per_call / len(faces)
    finally:
        cv2.setNumThreads(opencv_threads)

    chip = aligners["shape_predictor"].align(frame, faces[0])
    batch = np.repeat(chip, BATCH, axis=0)
    int8_effective = "int8"
    providers: tuple[str, ...] = ()
    for threads in THREAD_COUNTS:
        for precision in ("fp32", "int8"):
            embedder = Embedder(precision=precision, threads=threads)
            if precision == "int8":
                int8_effective = embedder.precision
            providers = tuple(getattr(embedder._runner, "providers", ()))
            ms[f"embed_{precision}_{threads}t_ms"] = median_ms(partial(embedder.embed, chip), repeats, warmup)
            ms[f"embed_{precision}_batch8_{threads}t_ms"] = (
                median_ms(partial(embedder.embed, batch), repeats, warmup) / BATCH
            )

    ratios = {
        f"{key}_{threads}t": ms[f"{int8}_{threads}t_ms"] / ms[f"{fp32}_{threads}t_ms"]
        for key, _, int8, fp32 in RATIO_ROWS
        for threads in THREAD_COUNTS
    }
    ordered = {f"{key}_{t}t_ms": ms[f"{key}_{t}t_ms"] for key, _ in ROWS for t in THREAD_COUNTS}
    return ModelBench(
        repeats=repeats,
        warmup=warmup,
        frame_source=source,
        frame_faces=frame_faces,
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count() or 0,
        onnxruntime_version=onnxruntime.__version__,
        onnxruntime_providers=providers,
        litert_version=_package_version("ai-edge-litert", "tflite-runtime"),
        int8_effective_precision=int8_effective,
        load_average=load_average,
        ms=ordered,
        ratios=ratios,
    )
