"""The parity fixtures' deterministic weight recipe: weights regenerated from official key names alone.

See ``shared/parity/README.md``. Used by the parity tests and by benchmarks that need identical, reproducible
weights in two implementations.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch


def recipe_tensor(key: str, shape: tuple[int, ...] | list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The recipe's value for one floating-point entry ``key`` of ``shape``."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    shape = tuple(shape)
    f64 = torch.float64
    if key.endswith("running_var"):
        t = 0.5 + torch.rand(shape, generator=g, dtype=f64)
    elif key.endswith("running_mean"):
        t = 0.1 * torch.randn(shape, generator=g, dtype=f64)
    elif len(shape) <= 1:
        t = 0.1 * torch.randn(shape, generator=g, dtype=f64) + (1.0 if key.endswith(".weight") else 0.0)
    else:
        t = torch.randn(shape, generator=g, dtype=f64) / math.sqrt(math.prod(shape[1:]))
    return t.to(dtype)


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "float16": torch.float16}


def recipe_state_dict(keys_json: str | Path, integer_values: dict[str, torch.Tensor] | None = None
                      ) -> dict[str, torch.Tensor]:
    """An official-layout state_dict from a ``*.keys.json`` list ``[[key, shape, dtype], ...]``.

    Integer entries keep the values the module builds: ``integer_values`` supplies them by key (for example a
    model's own ``relative_position_index``); absent ones are zeros (``num_batches_tracked``).
    """
    entries = json.loads(Path(keys_json).read_text())
    out: dict[str, torch.Tensor] = {}
    for key, shape, dtype_name in entries:
        dtype = _DTYPES[dtype_name.replace("torch.", "")]
        if dtype.is_floating_point:
            out[key] = recipe_tensor(key, shape, dtype)
        elif integer_values is not None and key in integer_values:
            out[key] = integer_values[key].clone()
        else:
            out[key] = torch.zeros(shape, dtype=dtype)
    return out
