"""Errors a user can cause. Each carries a one-line message that says what is wrong and what to do."""

from __future__ import annotations


class EdgefaceError(Exception):
    """Base class: the CLI prints str(error) on one line and exits non-zero, without a traceback."""


class ModelFileError(EdgefaceError):
    """A model file is missing, corrupted or of the wrong kind."""


class ImageError(EdgefaceError):
    """An image file cannot be read or decoded."""


class ConfigError(EdgefaceError):
    """The configuration is invalid."""


class SourceError(EdgefaceError):
    """A frame source (camera, stream URL, pipeline, video file, image folder) cannot be opened or was lost."""


class GalleryError(EdgefaceError):
    """The gallery file or a gallery operation failed; the message says what to do."""
