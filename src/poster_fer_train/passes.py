"""How a no-gradient pass over every training image runs before training (landmark tokens, teacher logits)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class InferencePass:
    """Where a pass runs (``device``: None where the input function already places the batch), in what batches,
    in which precision (``autocast`` returns a context manager), and what its progress bar says."""

    device: torch.device | None = None
    batch_size: int = 128
    autocast: Callable[[], Any] | None = None
    desc: str = "pass"
    progress: bool = True


def legacy_pass(base: InferencePass | None, legacy: dict[str, Any], call: str) -> InferencePass:
    """An :class:`InferencePass` from the keywords the passes took before it (``device``, ``batch_size``,
    ``autocast``, ``desc``, ``progress``), with a DeprecationWarning naming ``call``."""
    from dataclasses import fields, replace

    from poster_fer.naming import warn_deprecated

    known = {f.name for f in fields(InferencePass)}
    unknown = sorted(set(legacy) - known)
    if unknown:
        raise TypeError(f"{call}() got unexpected keyword(s) {unknown}")
    warn_deprecated(f"{call}(..., {', '.join(f'{k}=' for k in legacy)}) is deprecated: pass "
                    "run=InferencePass(...) (poster_fer_train.passes)")
    return replace(base or InferencePass(), **legacy)
