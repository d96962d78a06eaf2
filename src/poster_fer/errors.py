"""The errors a user can act on, in one module that imports nothing heavy.

Why one module: the command line prints these as one line (file and problem) instead of a traceback, and it
must be able to name them without importing PyTorch, OpenCV or the dataset code, or the torch-free runtime
(``pip install poster-fer`` without extras) could not report a bad file. Each is still importable from where it
is raised (``poster_fer.weights.CheckpointError``, ``poster_fer.data.DatasetError``, ...): the same class.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXTRAS", "USER_ERRORS", "CheckpointError", "DatasetError", "DetectorError", "ImageLoadError",
           "InferenceError", "UserError", "missing_extra"]


class UserError(Exception):
    """A problem with the user's input, reported without a traceback (also ``poster_fer_apps.cli.UserError``)."""


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


#: Optional modules -> (what a person calls it, the extra that brings it). The command line turns a missing one
#: into "needs X: pip install 'poster-fer[extra]'" (exit 2), so no command of the light runtime ends in an
#: import traceback; pyproject.toml's extras are the source, tests/test_runtime.py checks the two agree.
EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("PyTorch", "torch"), "torchvision": ("torchvision", "torch"), "safetensors": ("safetensors", "torch"),
    "yaml": ("PyYAML", "train"), "onnx": ("onnx", "onnx"), "sklearn": ("scikit-learn", "analysis"),
    "matplotlib": ("matplotlib", "analysis"), "av": ("PyAV", "video"), "fastapi": ("FastAPI", "serve"),
    "uvicorn": ("uvicorn", "serve"), "multipart": ("python-multipart", "serve"),
    "fastapi_offline": ("fastapi-offline", "serve"), "pyarrow": ("pyarrow", "parquet"), "ray": ("Ray", "ray"),
}


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """The one-line fix for an optional module that is not installed, or None when ``err`` is not about one
    (a missing module of our own is a bug and keeps its traceback)."""
    root = (err.name or "").split(".")[0]
    if root not in EXTRAS:
        return None
    label, extra = EXTRAS[root]
    return f"needs {label}, which this install lacks: pip install 'poster-fer[{extra}]'"


#: What the command line reports as ``poster-fer CMD: error: MESSAGE`` (exit 2) rather than a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, CheckpointError, DatasetError, ImageLoadError, DetectorError,
                                                 FileNotFoundError)
