"""Training losses: label-smoothing CE (the paper), the official v1 combination, soft-label CE (FER+ modes).

Every loss here accepts either hard targets (int64 class indices, shape (B,)) or soft targets (float
distributions, shape (B, C)), so a recipe can switch FER+ between ``majority`` and ``crossentropy`` labels
without changing its loss. Logits are promoted to float32 first: under bf16 autocast the log-softmax of a
low-precision tensor loses the small differences label smoothing is about.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .recipe import LossSettings

LOSS_NAMES = ("ce", "lsce", "official_v1", "soft_ce")


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean of ``(1 - s) * CE(target) + s * CE(uniform)`` over the batch, computed by ``F.cross_entropy``.

    The smoothing mass ``s`` is spread uniformly over *all* ``C`` classes, the true one included:
    ``(1 - s) * nll + s * mean_c(-log p_c)``. That is PyTorch's ``label_smoothing`` definition (and timm's / the
    POSTER code's ``LabelSmoothingCrossEntropy``), so PyTorch's kernel computes it. Soft targets (B, C) are
    smoothed the same way by PyTorch (``(1 - s) * t + s / C``), giving ``(1 - s) * (-sum_c t_c log p_c)
    + s * mean_c(-log p_c)``. Classes are on the last dimension.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    soft = target.dim() == logits.dim()
    if soft and target.shape != logits.shape:
        raise ValueError(f"soft targets of shape {tuple(target.shape)} for logits {tuple(logits.shape)}")
    num_classes = logits.shape[-1]
    # float32 even under autocast; flattened to (N, C) because F.cross_entropy wants classes on dimension 1.
    flat = logits.float().reshape(-1, num_classes)
    if soft:
        flat_target = target.to(flat.dtype).reshape(-1, num_classes)
    else:
        flat_target = target.long().reshape(-1)
    return F.cross_entropy(flat, flat_target, label_smoothing=float(smoothing))


class LabelSmoothingCrossEntropy(nn.Module):
    """Label-smoothing cross-entropy (the paper's loss; ``smoothing=0`` is plain CE)."""

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        self.smoothing = float(smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return smoothed_cross_entropy(logits, target, self.smoothing)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}"


class OfficialV1Loss(nn.Module):
    """The POSTER v1 training script's loss: ``2 * LSCE(0.2) + CE`` (a heavier smoothing, scaled by 3).

    Equivalent to ``3 * LSCE(2 * 0.2 / 3)``, i.e. smoothing 0.133 at three times the gradient scale; kept in
    the official form so the learning rate means the same as in the official code.
    """

    def __init__(self, smoothing: float = 0.2, lsce_weight: float = 2.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.smoothing = float(smoothing)
        self.lsce_weight = float(lsce_weight)
        self.ce_weight = float(ce_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.lsce_weight * smoothed_cross_entropy(logits, target, self.smoothing)
                + self.ce_weight * smoothed_cross_entropy(logits, target, 0.0))

    def extra_repr(self) -> str:
        return f"{self.lsce_weight} x LSCE({self.smoothing}) + {self.ce_weight} x CE"


class SoftTargetCrossEntropy(nn.Module):
    """``-sum_c t_c log p_c`` for distributions (FER+ ``probability``/``crossentropy``/``votes`` labels).

    Hard targets are treated as one-hot, so evaluation batches need no special case.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return smoothed_cross_entropy(logits, target, 0.0)


def build_loss(cfg: dict[str, Any] | LossSettings | str | None) -> nn.Module:
    """A loss from a recipe's ``loss`` section: ``{name: lsce, smoothing: 0.1}``, ``official_v1``, ``ce``..."""
    if isinstance(cfg, LossSettings):
        cfg = cfg.to_dict()
    if cfg is None:
        cfg = {"name": "ce"}
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    cfg = dict(cfg)
    name = str(cfg.pop("name", "ce")).lower()
    try:
        if name == "ce":
            return LabelSmoothingCrossEntropy(cfg.pop("smoothing", 0.0), **cfg)
        if name == "lsce":
            return LabelSmoothingCrossEntropy(**cfg)
        if name == "official_v1":
            return OfficialV1Loss(**cfg)
        if name == "soft_ce":
            return SoftTargetCrossEntropy(**cfg)
    except TypeError as e:
        raise ValueError(f"loss {name!r}: {e}") from None
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSS_NAMES}")
