"""File checksums (torch-free: the ONNX runtime verifies the shipped files with it too)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_of"]


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
