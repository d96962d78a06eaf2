"""Loading foreign ``.pth`` files without executing code from them.

Every file goes through ``torch.load(weights_only=True)``, PyTorch's restricted unpickler. Official POSTER++
checkpoints also pickle ``__main__.RecorderMeter``/``RecorderMeter1`` training logs holding numpy arrays; those
classes are mapped to inert stand-ins that only keep their attributes, and numpy's array reconstruction is
allow-listed. Anything else outside the allow-list (``os.system``, arbitrary classes) is refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError


class RecordedObject:
    """Inert stand-in for a pickled training-script object: holds its attributes, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<RecordedObject {sorted(self.__dict__)}>"


def _stand_in(name: str) -> type:
    return type(name, (RecordedObject,), {"__module__": "__main__"})


# Training-log classes known to appear in official checkpoints; unpickled as attribute bags.
_RECORDER_NAMES = ("RecorderMeter", "RecorderMeter1")
_STAND_INS = {name: _stand_in(name) for name in _RECORDER_NAMES}


def _numpy_globals() -> list[tuple[Any, str]]:
    """numpy objects a pickled ndarray needs, under both the numpy 1.x and 2.x module paths."""
    try:
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    out: list[tuple[Any, str]] = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        out += [(multiarray._reconstruct, f"{mod}._reconstruct"), (multiarray.scalar, f"{mod}.scalar")]
    for dt in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_, np.uint8):
        cls = type(np.dtype(dt))
        out.append((cls, f"numpy.dtypes.{cls.__name__}"))
    return out


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` with code execution disabled; official training-log objects become attribute bags."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    allowed = _numpy_globals() + [(cls, f"__main__.{name}") for name, cls in _STAND_INS.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).split("\n")
        detail = next((line.strip() for line in first if "GLOBAL" in line or "Unsupported" in line), first[0])
        raise CheckpointError(f"{path}: refused to unpickle (it would need code outside the allow-list): "
                              f"{detail}") from None
    except Exception as e:  # noqa: BLE001 - any failure of a foreign file is the file's problem
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
