"""edgeface: offline face recognition for edge boards."""

from __future__ import annotations

__version__ = "0.1.0"
