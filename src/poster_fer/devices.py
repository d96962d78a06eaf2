"""One reading of a ``device`` setting for every command (train, eval, explain, predict, bench).

``auto`` means "the GPU if there is one"; asking for CUDA on a machine without it is an error that says so,
instead of a crash later inside the first ``.to(device)``.
"""

from __future__ import annotations

import os

import torch

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(ValueError):
    """The requested device does not exist on this machine or is not a device name."""


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto``/None -> CUDA when available (this rank's GPU under torchrun), else CPU.

    A bare ``cuda`` picks ``LOCAL_RANK``'s GPU, so one recipe serves ``python`` and ``torchrun`` alike.
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was asked for but this PyTorch build sees no CUDA GPU (use cpu)")
    if text == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    try:
        return torch.device(text)
    except RuntimeError as err:
        raise DeviceError(f"unknown device {name!r} ({err})") from None
