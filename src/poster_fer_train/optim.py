"""Optimisers (Adam, AdamW, SGD, optionally wrapped in SAM) and per-step learning-rate schedules.

SAM (Foret et al., "Sharpness-Aware Minimization", ICLR 2021; adaptive variant: Kwon et al., ASAM, 2021) is
what the official POSTER code trains with, around Adam with rho 0.05. It needs two forward/backward passes per
batch: :meth:`SAM.first_step` climbs to the worst nearby weights, the second gradient is taken there, and
:meth:`SAM.second_step` returns to the original weights and lets the base optimiser step with it.

Schedules are pure functions of the global step (:class:`StepSchedule`), so a resumed run recomputes the
exact learning rate from the step count stored in its checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from poster_fer.naming import warn_deprecated

from .recipe import OptimizerSettings, ScheduleSettings, ScheduleShape

OPTIMIZER_NAMES = ("adam", "adamw", "sgd")
SCHEDULE_NAMES = ("constant", "exponential", "cosine", "onecycle")


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation around any base optimiser.

    ``first_step`` moves each parameter by ``e = rho * g / ||g||`` (adaptive: ``rho * p^2 * g / ||p * g||``),
    remembering the original value; ``second_step`` restores it and steps the base optimiser with the gradient
    taken at the perturbed point. ``step(closure)`` runs both for code that expects a plain optimiser.
    The base optimiser owns the state; SAM's ``state_dict`` is the base optimiser's.
    """

    def __init__(self, params: Iterable[Any], base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, **kwargs: Any) -> None:
        if rho < 0:
            raise ValueError(f"SAM rho must be non-negative, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one set of groups: schedules see both
        self.defaults.update(self.base_optimizer.defaults)
        self._backup: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad * p.abs() if group["adaptive"] else p.grad
                norms.append(g.norm(p=2))
        if not norms:
            return torch.tensor(0.0)
        return torch.stack([n.to(norms[0].device) for n in norms]).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Perturb the weights towards higher loss (uses the current gradients)."""
        norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._backup[p] = p.detach().clone()
                e = (p * p if group["adaptive"] else 1.0) * p.grad * scale.to(p.device)
                p.add_(e)
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore the original weights, then step the base optimiser with the perturbed-point gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p in self._backup:
                    p.copy_(self._backup[p])
        self._backup.clear()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """Both SAM steps; ``closure`` must zero the gradients, compute the loss and call ``backward``."""
        if closure is None:
            raise RuntimeError("SAM.step needs a closure (or call first_step / second_step yourself)")
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        loss = closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


def _param_groups(model: nn.Module, weight_decay: float, no_decay_1d: bool, lr: float,
                  lr_mult: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Trainable parameters; with ``no_decay_1d`` biases, norms and embeddings-as-vectors get no decay.

    ``lr_mult`` maps a parameter-name prefix to a learning-rate factor (e.g. ``{face_back: 0.2}``): a
    pretrained backbone fine-tuned more gently than the freshly initialised fusion layers.
    """
    lr_mult = {str(k): float(v) for k, v in (lr_mult or {}).items()}
    matched = dict.fromkeys(lr_mult, False)
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = 1.0
        for prefix, m in lr_mult.items():
            if name == prefix or name.startswith(prefix + "."):
                mult, matched[prefix] = m, True
                break
        buckets.setdefault((mult, no_decay_1d and p.ndim <= 1), []).append(p)
    unmatched = [k for k, hit in matched.items() if not hit]
    if unmatched:
        raise ValueError(f"optimizer.lr_mult: no trainable parameter under {unmatched}")
    groups = []
    for (mult, no_decay), params in sorted(buckets.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if mult != 1.0:
            group["lr"] = lr * mult
        groups.append(group)
    return groups


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any] | OptimizerSettings) -> torch.optim.Optimizer:
    """From a recipe's ``optimizer`` section: ``{name, lr, weight_decay, betas|momentum, nesterov,
    no_decay_1d, lr_mult: {prefix: factor}, fused, sam: {rho, adaptive} | null}``. Frozen parameters (the
    landmark network) are left out."""
    cfg = dict(cfg.to_dict() if isinstance(cfg, OptimizerSettings) else cfg)
    name = str(cfg.pop("name", "adam")).lower()
    lr = float(cfg.pop("lr"))
    wd = float(cfg.pop("weight_decay", 0.0))
    sam = cfg.pop("sam", None)
    groups = _param_groups(model, wd, bool(cfg.pop("no_decay_1d", False)), lr, cfg.pop("lr_mult", None))
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name in ("adam", "adamw"):
        cls: type[torch.optim.Optimizer] = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        kwargs = {"lr": lr, "betas": tuple(cfg.pop("betas", (0.9, 0.999))), "eps": float(cfg.pop("eps", 1e-8))}
    elif name == "sgd":
        cls = torch.optim.SGD
        kwargs = {"lr": lr, "momentum": float(cfg.pop("momentum", 0.9)), "nesterov": bool(cfg.pop("nesterov", False))}
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZER_NAMES}")
    fused = cfg.pop("fused", None)
    if fused is not None:
        # One kernel over all parameters instead of a Python loop of small ops: ~5% of a step for the small CPU
        # models, whose ~100 parameter tensors each cost a dozen tiny kernels per step. Same algorithm.
        kwargs["fused"] = bool(fused)
    if cfg:
        raise ValueError(f"optimizer {name!r}: unknown option(s) {sorted(cfg)}")
    if sam:
        sam = dict(sam) if isinstance(sam, dict) else {}
        unknown = sorted(set(sam) - {"rho", "adaptive"})
        if unknown:
            raise ValueError(f"optimizer.sam: unknown option(s) {unknown} (rho, adaptive)")
        given = {k: float(v) if k == "rho" else bool(v) for k, v in sam.items()}  # SAM's defaults fill the rest
        return SAM(groups, cls, **given, **kwargs)
    return cls(groups, **kwargs)


class Freezer:
    """Trains only some of the optimiser's parameters for the first epochs (``train.freeze_epochs``).

    Why: fine-tuning a pretrained network on a few hundred images is commonly done in two phases, a new head
    trained on frozen features first (a gradient into the backbone from a random head is noise), then everything.
    The alternative is layer-wise learning rates from the start (the ``finetune`` recipe's ``lr_mult``);
    docs/experiments/finetune.md records which one won here. Frozen parameters get ``requires_grad = False``, so their
    backward pass is not computed at all (faster epochs on a CPU) and the optimiser, which skips parameters
    without gradients, neither moves them nor decays them. The optimiser's own parameter list is the source of
    truth for what is trainable, so a network frozen for good (the landmark stream) is never switched on. Batch
    norm statistics of frozen layers still follow the new data (the layers stay in training mode).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int,
                 train: list[str] | tuple[str, ...] = ("head",)) -> None:
        self.epochs = int(epochs)
        if self.epochs < 0:
            raise ValueError(f"train.freeze_epochs must be >= 0, got {epochs}")
        self.keep = keep = [str(k) for k in train]
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        named = [(n, p) for n, p in model.named_parameters() if id(p) in owned]
        self.params = [p for _, p in named]
        self.frozen = [p for n, p in named if not any(n == k or n.startswith(k + ".") for k in keep)]
        if self.epochs:
            unmatched = [k for k in keep if not any(n == k or n.startswith(k + ".") for n, _ in named)]
            if unmatched:
                raise ValueError(f"train.freeze_except: no trainable parameter under {unmatched}")
            if len(self.frozen) == len(self.params):
                raise ValueError("train.freeze_except names nothing trainable: every parameter would be frozen")

    def frozen_in(self, epoch: int) -> bool:
        return epoch <= self.epochs

    def set_epoch(self, epoch: int) -> int:
        """Freeze or unfreeze for ``epoch`` (1-based); returns how many parameter values are frozen now."""
        frozen = self.frozen_in(epoch)
        for p in self.params:
            p.requires_grad_(True)
        if frozen:
            for p in self.frozen:
                p.requires_grad_(False)
                p.grad = None
        return sum(p.numel() for p in self.frozen) if frozen else 0


class StepSchedule:
    """Sets every group's ``lr`` to ``base_lr * factor(step)``, stepped once per optimiser step.

    Kinds (``epoch`` below is ``step / steps_per_epoch``, fractional):

    - ``constant``: factor 1 (after warmup).
    - ``exponential``: ``gamma ** floor(epoch)`` -- the official ExponentialLR stepped once per epoch.
    - ``cosine``: linear warmup over ``warmup_epochs`` (from ``warmup_start`` x base), then half a cosine down
      to ``min_lr_ratio`` x base at the last step.
    - ``onecycle``: like ``cosine`` with ``pct_start`` of the run as warmup from base/``div_factor`` and a cosine
      down to base/``final_div_factor`` (PyTorch OneCycleLR's cosine annealing, without momentum cycling).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, steps_per_epoch: int,
                 shape: ScheduleShape | None = None, **legacy: float) -> None:
        if legacy:  # the shape's fields as keywords: the form before ScheduleShape
            warn_deprecated(f"StepSchedule(..., {', '.join(f'{k}=' for k in legacy)}) is deprecated: pass "
                            "shape=ScheduleShape(...) (poster_fer_train.recipe)")
            shape = replace(shape or ScheduleShape(), **legacy)
        shape = shape or ScheduleShape()
        if kind not in SCHEDULE_NAMES:
            raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULE_NAMES}")
        self.optimizer = optimizer
        self.kind = kind
        self.total_steps = max(1, int(total_steps))
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.gamma = float(shape.gamma)
        self.warmup_steps = int(round(float(shape.warmup_epochs) * self.steps_per_epoch))
        self.warmup_start = float(shape.warmup_start)
        self.min_lr_ratio = float(shape.min_lr_ratio)
        self.pct_start = float(shape.pct_start)
        self.div_factor = float(shape.div_factor)
        self.final_div_factor = float(shape.final_div_factor)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        """The learning-rate multiplier at optimiser step ``step`` (0-based)."""
        if self.kind == "onecycle":
            warm = max(1, int(self.pct_start * self.total_steps))
            start, end = 1.0 / self.div_factor, 1.0 / (self.div_factor * self.final_div_factor)
            if step < warm:
                return start + (1.0 - start) * 0.5 * (1 - math.cos(math.pi * step / warm))
            t = min(1.0, (step - warm) / max(1, self.total_steps - 1 - warm))
            return end + (1.0 - end) * 0.5 * (1 + math.cos(math.pi * t))
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "exponential":
            return self.gamma ** (step // self.steps_per_epoch)
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - 1 - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step_count": self.step_count, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("steps_per_epoch", self.steps_per_epoch) != self.steps_per_epoch:
            raise ValueError(f"checkpoint schedule has {state['steps_per_epoch']} steps per epoch, this run "
                             f"{self.steps_per_epoch}: batch size, data or world size changed")
        self.step_count = int(state["step_count"])
        self._apply()


def build_schedule(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any] | ScheduleSettings | None, epochs: int,
                   steps_per_epoch: int) -> StepSchedule:
    """From a recipe's ``schedule`` section: ``{name: exponential, gamma: 0.98}``, ``{name: cosine,
    warmup_epochs: 1, min_lr_ratio: 0.01}``, ``{name: onecycle, pct_start: 0.25}``..."""
    cfg = dict(cfg.to_dict() if isinstance(cfg, ScheduleSettings) else cfg or {"name": "constant"})
    kind = str(cfg.pop("name", "constant")).lower()
    try:
        shape = ScheduleShape(**cfg)
    except TypeError as e:
        raise ValueError(f"schedule {kind!r}: {e}") from None
    return StepSchedule(optimizer, kind, total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
                        shape=shape)
