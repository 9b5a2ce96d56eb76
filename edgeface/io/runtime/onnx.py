"""onnxruntime runner. CUDA/TensorRT providers are used when the installed build offers them."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.errors import ModelFileError
from edgeface.text import first_line

_PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


_ARENA_LOCK = threading.Lock()
_arena_registered = False


def register_process_arena(ort: Any) -> None:
    """Once per process: onnxruntime's environment CPU arena, extended by what a run asks for
    (kSameAsRequested) instead of doubling; sessions opt in with `session.use_env_allocators`."""
    global _arena_registered
    with _ARENA_LOCK:
        if not _arena_registered:
            memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            _arena_registered = True


class OnnxRunner:
    def __init__(self, path: Path, threads: int = 1, use_accelerators: bool = True, memory_arena: bool = False,
                 memory_pattern: bool = True, process_arena: bool = False) -> None:
        import onnxruntime as ort

        if threads < 1:  # onnxruntime takes 0 as "all cores"; refused, as LiteRTRunner does
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = min(threads, usable_cores())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Spinning workers burn the core the camera loop needs: with 2 threads on one usable core the
        # loop ran 1.6-1.9x slower (issue 14).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        # The arena keeps its high-water mark for good; without it every run's activations are malloc'd
        # and freed, which for the embedder fragmented glibc's heap more than the arena holds
        # (`process_arena`, edgeface.vision.embed.embedder_runner). For SFace (`memory_arena`): without
        # the arena its ~11 MB of activations per call are malloc'd and freed each time and the camera loop's private memory drifted to 94-172 MB (peak RSS
        # 202-259 MB on hamilton_clip); with it, 89-90 MB and 200 MB, run after run.
        options.enable_cpu_mem_arena = memory_arena or process_arena
        if process_arena:  # `register_process_arena`; see edgeface.vision.embed.embedder_runner
            register_process_arena(ort)
            options.add_session_config_entry("session.use_env_allocators", "1")
        # The memory pattern plans every activation of a run into one block allocated from the second run
        # on, next to what the first run left in the arena: for SFace 11 MB more resident for good, and no
        # faster (300 single-chip runs: 5.3-6.0 ms with it, 4.7-5.8 ms without, measured here).
        options.enable_mem_pattern = memory_pattern
        available = ort.get_available_providers()
        providers = [
            p for p in _PREFERRED_PROVIDERS if p in available and (use_accelerators or p == "CPUExecutionProvider")
        ]
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own untyped exceptions
                        raise ModelFileError(f"cannot load ONNX model {path}: {first_line(error)}") from error
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in model_input.shape)
        self.providers: list[str] = self._session.get_providers()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self._input_name: batch})
