"""The errors a user can act on, in one module that imports nothing heavy.

Why one module: the command line prints these as one line (file and problem) instead of a traceback, and it
must be able to name them without importing PyTorch, OpenCV or the dataset code, or the torch-free runtime
(``pip install poster-fer`` without extras) could not report a bad file. Each is still importable from where it
is raised (``poster_fer.weights.CheckpointError``, ``poster_fer.data.DatasetError``, ...): the same class.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["USER_ERRORS", "CheckpointError", "DatasetError", "DetectorError", "ImageLoadError", "InferenceError"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, unsafe, or not matching the model."""


class DatasetError(ValueError):
    """A dataset file disagrees with its documented layout; the message starts with ``file:line``."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None,
                 reason: str | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.line = line
        self.reason = reason
        self.detail = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


class ImageLoadError(ValueError):
    """An image file could not be turned into an RGB array (unreadable, truncated, too large, unsupported)."""


class DetectorError(RuntimeError):
    """A face detector cannot be set up; the message says what to do (the CLI prints it without traceback)."""


class InferenceError(RuntimeError):
    """The recognizer cannot be set up as asked (missing backend, device, unreadable model); says what to do."""


#: What the command line reports as ``poster-fer CMD: error: MESSAGE`` (exit 2) rather than a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, DatasetError, ImageLoadError, DetectorError,
                                                 FileNotFoundError)
