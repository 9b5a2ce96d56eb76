"""Model runners: one small class per runtime, imported lazily so unit tests stay fast."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Runner(Protocol):
    """Runs one model on numpy inputs. Implementations know nothing about what the model means."""

    input_shape: tuple[int, ...]
    """Shape of the (single) input tensor; -1 where a dimension is dynamic."""

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the model on one input tensor and return its outputs in the model's order."""
        ...
