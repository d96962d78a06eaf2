"""Training checkpoints: atomic, resumable, and loadable with ``torch.load(weights_only=True)``.

A training checkpoint (``last.pt``) holds everything a run needs to continue exactly: model, optimiser,
schedule and grad-scaler state, the RNG states of torch (CPU and CUDA), numpy and Python ``random``, the epoch
and global step, the best validation metric, the recipe and the history. It contains only tensors and
primitive containers, so loading it never unpickles code (unlike the official checkpoints). It is written to a
temporary file in the same folder and moved into place with ``os.replace``: an interrupted write leaves the
previous checkpoint intact. The deployable model is saved separately in the poster-fer format (``best/``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poster_fer.weights.io import atomic_write
from poster_fer.weights.safe_load import CheckpointError

CHECKPOINT_FORMAT = "poster-fer-train/1"
LAST = "last.pt"


def plain(obj: Any) -> Any:
    """Numpy scalars/arrays and tuples -> Python numbers, tensors and lists (weights_only-safe values)."""
    if isinstance(obj, Mapping):
        return {str(k) if not isinstance(k, int) else k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def capture_rng_state() -> dict[str, Any]:
    """Every RNG the training loop may draw from, as tensors and numbers."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file + ``os.replace``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, **plain(dict(state))}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file from itself or its run directory (``RUN_DIR/last.pt``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / LAST
    if not p.is_file():
        raise CheckpointError(f"{p}: no training checkpoint to resume from")
    return p


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint safely (``weights_only=True``) and check its format."""
    p = find_checkpoint(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt or foreign files raise many types
        raise CheckpointError(f"{p}: not a loadable training checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not a poster-fer training checkpoint (expected format {CHECKPOINT_FORMAT})")
    return state
