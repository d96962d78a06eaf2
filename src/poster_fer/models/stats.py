"""Size and cost of a model: parameter counts and forward FLOPs per image.

Library code (``poster-fer info``, the benchmarks and the model card all report these numbers), so every record
counts the same way: ``torch.utils.flop_counter`` on one image at the model's own input size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["model_stats"]


def model_stats(model: nn.Module) -> dict[str, Any]:
    """Parameter counts and FLOPs per image (1 image at ``cfg.input_size``; a FLOP is a multiply or an add)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = int(model.cfg.input_size)
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size))
    return {
        "model": getattr(model, "model_name", None),
        "input_size": size,
        "num_classes": int(model.cfg.num_classes),
        "params_total": total,
        "params_trainable": trainable,
        "params_frozen": total - trainable,
        "gflops": round(counter.get_total_flops() / 1e9, 4),
    }
