"""LiteRT (TensorFlow Lite) runner: `ai_edge_litert`, or `tflite_runtime` where only that is installed."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.errors import ModelFileError
from edgeface.text import first_line

logger = logging.getLogger(__name__)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
        except ImportError:
            raise ModelFileError(
                "no LiteRT runtime installed; `pip install ai-edge-litert` (or tflite-runtime on older boards)"
            ) from None
    return Interpreter


_RUNTIME_CHATTER = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)

_STDERR_SWAP = threading.Lock()
"""One swap of fd 2 at a time: two interleaved swaps (cameras' threads making interpreters at once) would
leave fd 2 on a temporary file, and every later log line would vanish."""


@contextlib.contextmanager
def _without_runtime_chatter() -> Iterator[None]:
    """LiteRT's C++ side prints `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` straight to file
    descriptor 2 on every interpreter it creates, which no log level turns off. While the interpreter
    is built, fd 2 goes to a temporary file; afterwards everything in it but that line is written back."""
    with _STDERR_SWAP:
        yield from _swapped_stderr()


def _swapped_stderr() -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if line.rstrip(b"\r\n") not in _RUNTIME_CHATTER]
            if kept:
                os.write(2, b"".join(kept))


class LiteRTRunner:
    """Runs a single-input .tflite model on the CPU (XNNPACK where the runtime applies it).

    Outputs come back sorted by output tensor name, each copied out of the interpreter, so they stay
    valid after the next `run`.
    """

    def __init__(self, path: Path | str, threads: int = 1) -> None:
        path = Path(path)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if not path.is_file():
            raise ModelFileError(f"model file {path} is missing or not a file; reinstall edgeface")
        interpreter_class = _interpreter_class()
        try:
            with _without_runtime_chatter():
                self._interpreter = interpreter_class(model_path=str(path), num_threads=threads)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
                        raise ModelFileError(f"cannot load LiteRT model {path}: {first_line(error)}") from error
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            raise ModelFileError(f"LiteRT model {path} has {len(inputs)} inputs; edgeface expects exactly one")
        self._input_index: int = inputs[0]["index"]
        self._input_dtype = np.dtype(inputs[0]["dtype"])
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in inputs[0]["shape"])
        outputs = sorted(self._interpreter.get_output_details(), key=lambda detail: detail["name"])
        self.output_names: tuple[str, ...] = tuple(detail["name"] for detail in outputs)
        self._output_indices: tuple[int, ...] = tuple(detail["index"] for detail in outputs)
        logger.debug("loaded %s: input %s, outputs %s", path.name, self.input_shape, self.output_names)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if tuple(batch.shape) != self.input_shape:
            raise ValueError(f"input must have shape {self.input_shape}, got {tuple(batch.shape)}")
        self._interpreter.set_tensor(self._input_index, np.ascontiguousarray(batch, dtype=self._input_dtype))
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(index) for index in self._output_indices]  # get_tensor copies
