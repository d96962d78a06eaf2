"""Everything a run must carry across an interruption, in one object: saving and resuming share one definition.

``TrainState.state_dict()`` is what ``last.pt`` holds; ``TrainState.load_state_dict()`` restores it, so a key
added to one cannot be forgotten in the other (the exact-resume test compares an interrupted run with an
uninterrupted one weight for weight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .engine import ModelEma, StepState


@dataclass
class TrainState:
    """The model, its optimiser/schedule/scaler/EMA and the loop's bookkeeping (epoch, best, history, plan)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler
    ema: ModelEma | None = None
    step: StepState = field(default_factory=StepState)
    epoch: int = 0  # the last finished epoch
    best: float = -math.inf
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    planned_epochs: int = 0

    def state_dict(self) -> dict[str, Any]:
        """The resumable part of ``last.pt`` (the caller adds the recipe, RNG states and timing)."""
        return {
            "epoch": self.epoch, "global_step": self.step.global_step,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best_metric": self.best if self.best_epoch is not None else None, "best_epoch": self.best_epoch,
            "history": self.history, "planned_epochs": self.planned_epochs,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore from a ``last.pt`` payload written by :meth:`state_dict`."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.step.global_step = int(ckpt["global_step"])
        self.epoch = int(ckpt["epoch"])
        self.best = float(ckpt["best_metric"]) if ckpt.get("best_metric") is not None else -math.inf
        self.best_epoch = ckpt.get("best_epoch")
        self.history = list(ckpt.get("history") or [])
        self.planned_epochs = int(ckpt.get("planned_epochs", self.planned_epochs))
