"""The models several cameras of one process share: detector runners and one embedder.

- `RunnerPool`: a model runner shared by camera threads. A LiteRT interpreter serves one thread at a
  time, so the pool holds up to `size` of them (one per usable core by default: more could not run at
  once anyway), made when first needed; memory grows with the cores, not the cameras.
- `CombiningEmbedder`: one embedder for every camera. onnxruntime runs one session from several
  threads, up to `max_parallel` calls at once (one per usable core); faces of cameras that come while
  every slot is busy wait and go in ONE call together (no timer, no added wait: the next free slot
  takes whatever queued meanwhile).
- `SharedModels`: the cache `camera_models(config, shared=...)` takes its runners and embedder from.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgeface.config import EmbedderConfig, RecognitionConfig
    from edgeface.vision.embed import Embedder
    from edgeface.vision.sface import SecondEmbedder, SFaceEmbedder


class RunnerPool:
    """A model runner for several threads: `run` takes a free runner (making one while fewer than `size`
    exist), or waits for one."""

    def __init__(self, make: Callable[[], Any], size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        first = make()
        self.input_shape = first.input_shape
        self.size = size
        self._make = make
        self._free = [first]
        self._made = 1
        self._cond = threading.Condition()

    @property
    def runners(self) -> int:
        """Runners made so far."""
        return self._made

    def _take(self) -> Any:
        with self._cond:
            while not self._free and self._made >= self.size:
                self._cond.wait()
            if self._free:
                return self._free.pop()
            self._made += 1
        try:
            return self._make()
        except BaseException:
            with self._cond:
                self._made -= 1
                self._cond.notify()
            raise

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        runner = self._take()
        try:
            return runner.run(batch)  # type: ignore[no-any-return]
        finally:
            with self._cond:
                self._free.append(runner)
                self._cond.notify()


@dataclass
class _Request:
    chips: np.ndarray
    result: np.ndarray | None = None
    error: BaseException | None = None
    taken: bool = False
    """In a running call's batch."""
    done: bool = False


class CombiningEmbedder:
    """An `Embedder` for several camera threads. A caller that finds a free slot (fewer than
    `max_parallel` calls running) runs the model with its own chips and every request that queued
    meanwhile; callers arriving while every slot is busy queue up and are served together by the next
    call. Results are the embedder's own (each row is independent of the others in the batch)."""

    def __init__(self, embedder: Embedder, combine: bool = True, max_parallel: int | None = None) -> None:
        from edgeface.io.runtime.onnx import usable_cores

        self.inner = embedder
        self.combine = combine
        """False: each call runs on its own, concurrently (the comparison in tools/bench_cameras.py)."""
        self.max_parallel = max_parallel or usable_cores()
        self.precision = embedder.precision
        self.flip = embedder.flip
        self.selfcheck_distance = embedder.selfcheck_distance
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._running = 0
        self.calls = 0
        """Embedder runs made (one per combined batch)."""
        self.requests = 0
        """embed() calls served; requests / calls is how many cameras shared a run on average."""

    def embed(self, chips_bgr: np.ndarray) -> np.ndarray:
        if not self.combine:
            with self._cond:
                self.calls += 1
                self.requests += 1
            return self.inner.embed(chips_bgr)
        request = _Request(np.asarray(chips_bgr))
        with self._cond:
            self._queue.append(request)
            while self._running >= self.max_parallel and not request.taken:
                self._cond.wait()
            if request.taken:  # in another caller's batch: wait for its answer
                while not request.done:
                    self._cond.wait()
                return self._answer(request)
            self._running += 1
            batch, self._queue = self._queue, []
            for r in batch:
                r.taken = True
        try:
            vectors = self.inner.embed(np.concatenate([r.chips for r in batch]) if len(batch) > 1 else batch[0].chips)
            start = 0
            for r in batch:
                r.result, start = vectors[start : start + len(r.chips)], start + len(r.chips)
        except BaseException as error:
            for r in batch:
                r.error = error
        with self._cond:
            for r in batch:
                r.done = True
            self.calls += 1
            self.requests += len(batch)
            self._running -= 1
            self._cond.notify_all()
        return self._answer(request)

    @staticmethod
    def _answer(request: _Request) -> np.ndarray:
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def raw_descriptors(self, chips_bgr: np.ndarray) -> np.ndarray:
        return self.inner.raw_descriptors(chips_bgr)


@dataclass
class SharedModels:
    """Model runners and the embedder shared by the cameras of one process, made on first use.
    `pool_size`: runners per detector model (default: the usable cores); `combine_embeddings`: False runs
    each camera's embedder call on its own (for comparison)."""

    pool_size: int | None = None
    combine_embeddings: bool = True
    _runners: dict[tuple[str, int], RunnerPool] = field(default_factory=dict)
    _embedders: dict[tuple[str, int, bool], CombiningEmbedder] = field(default_factory=dict)
    _sface: dict[tuple[str, int], _LazySFace] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def runner(self, model: Any, threads: int) -> RunnerPool:
        """The shared runner of a BlazeFace model (a `make_detector`/`make_refiner` runner_for)."""
        from edgeface.io.runtime.onnx import usable_cores
        from edgeface.vision.blazeface import litert_runner

        with self._lock:
            key = (str(model), threads)
            if key not in self._runners:
                size = self.pool_size or max(1, usable_cores() // max(threads, 1))
                self._runners[key] = RunnerPool(lambda: litert_runner(model, threads), size)
            return self._runners[key]

    def embedder(self, config: EmbedderConfig, threads: int) -> CombiningEmbedder:
        from edgeface.vision.embed import Embedder

        with self._lock:
            key = (config.precision, threads, config.flip)
            if key not in self._embedders:
                self._embedders[key] = CombiningEmbedder(
                    Embedder(precision=config.precision, threads=threads, flip=config.flip), self.combine_embeddings)
            return self._embedders[key]

    def second_embedder(self, config: RecognitionConfig, refiner: Any, detector_model: str,
                        threads: int) -> SecondEmbedder | None:
        """The second opinion for one camera: its own SFace aligner (on its refiner), the one SFace model of
        the process (loaded when a camera first needs it); None when recognition.second_opinion is off."""
        if config.second_opinion == "off":
            return None
        from edgeface.vision.sface import SecondEmbedder

        with self._lock:
            model = self._sface.setdefault((config.embedder.precision, threads),
                                           _LazySFace(config.embedder.precision, threads))

        class _Shared(SecondEmbedder):
            @property
            def embedder(self) -> SFaceEmbedder:
                return model.get()

        return _Shared(config.embedder.precision, threads, refiner=refiner, detector_model=detector_model)


class _LazySFace:
    """One SFace model for every camera, loaded on first use (as `SecondEmbedder` loads its own), run by
    one camera at a time: its onnxruntime memory arena keeps the high-water mark of the runs that were
    in flight together (measured with 4 cameras: 321 -> 298 MB peak), and a second opinion is rare enough
    that cameras seldom wait for it."""

    def __init__(self, precision: Any, threads: int) -> None:
        self.precision, self.threads = precision, threads
        self._model: Any = None
        self._lock = threading.Lock()

    def get(self) -> SFaceEmbedder:
        with self._lock:
            if self._model is None:
                from edgeface.vision.sface import SFaceEmbedder

                self._model = _OneAtATime(SFaceEmbedder(self.precision, self.threads))
            return self._model  # type: ignore[no-any-return]


class _OneAtATime:
    """A model whose `embed` runs for one caller at a time; everything else is the model's."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._lock = threading.Lock()

    def embed(self, chips_bgr: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._model.embed(chips_bgr)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)
