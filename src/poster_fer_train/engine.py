"""The training loop as a plain function (DETR / open_clip style); evaluation is
:func:`poster_fer.evaluation.loop.predict_split`.

:func:`train_one_epoch` runs one pass over the training loader: mixed precision, SAM's two passes when the
optimiser is :class:`~poster_fer_train.optim.SAM`, gradient clipping, a per-step schedule, JSON-line step
logs, a stop on a non-finite loss (before the weights are touched) and an optional wall-clock deadline that
every rank agrees on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from poster_fer.distributed import DistEnv, all_reduce_sum
from poster_fer.evaluation.loop import SINGLE, hard_labels, unwrap
from poster_fer.precision import autocast as precision_autocast

from .optim import SAM


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops before the weights are updated with it."""


@dataclass
class StepState:
    """Counters shared across epochs: the global optimiser step."""

    global_step: int = 0


@dataclass
class TrainParts:
    """What an epoch trains and with what: the model, the batch preparer (batch dict -> inputs, targets, model
    keyword arguments, soft targets), the loss, the optimiser and the per-step schedule."""

    model: nn.Module
    prepare: Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor, dict[str, Any], Any]]
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any


@dataclass
class EpochOptions:
    """How every epoch of a run is run (fixed for the run): where, in which precision, clipping, the EMA copy,
    logging and limits. DETR's ``train_one_epoch`` takes seven arguments; these are what ours adds."""

    device: torch.device
    env: DistEnv = SINGLE
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    grad_clip: float | None = None
    ema: Any = None
    log: Callable[[dict[str, Any]], None] | None = None
    log_every: int = 50
    progress: bool = True
    max_steps: int | None = None


@dataclass(frozen=True)
class EpochResult(Mapping):
    """What one epoch of training did. Typed fields; also a read-only mapping (``result["loss"]``), the form
    earlier releases returned, so code written for the dict keeps working.

    ``tail_steps`` / ``tail_s``: the steps after the epoch's midpoint and their time (the steady rate the time
    budget plans with); ``first_step_s`` includes compilation and warm-up; ``stopped`` says why the epoch ended
    early (None: it ran to the end)."""

    loss: float
    accuracy: float
    samples: int
    steps: int
    seconds: float
    img_s: float
    lr: float
    stopped: str | None
    first_step_s: float
    tail_steps: int
    tail_s: float

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


def train_one_epoch(parts: TrainParts, loader: Any, state: StepState, *, epoch: int, opts: EpochOptions,
                    deadline: float | None = None) -> EpochResult:
    """One epoch of training; returns an :class:`EpochResult` (loss, accuracy, samples, steps, seconds, img_s, lr,
    stopped, first_step_s, tail_steps, tail_s).

    ``deadline`` is a ``time.monotonic()`` value: past it the epoch ends early (``stopped: "time budget"``).
    Loss sums, sample counts and the stop decision are all-reduced every step, so all ranks stop together and
    a NaN on any rank stops every rank.
    """
    model, prepare, criterion, optimizer, schedule = (parts.model, parts.prepare, parts.criterion, parts.optimizer,
                                                      parts.schedule)
    device, env, amp_dtype, scaler, grad_clip, ema, log = (opts.device, opts.env, opts.amp_dtype, opts.scaler,
                                                           opts.grad_clip, opts.ema, opts.log)
    log_every, progress, max_steps = opts.log_every, opts.progress, opts.max_steps
    model.train()
    autocast = precision_autocast(device, amp_dtype)
    sam = isinstance(optimizer, SAM)
    if sam and scaler is not None and scaler.is_enabled():
        raise ValueError("SAM with fp16 loss scaling is not supported; use amp: bf16 or no amp")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total = max_steps if max_steps is not None else len(loader)
    bar = tqdm(total=total, desc=f"epoch {epoch}", unit="it", disable=not (progress and env.is_main),
               leave=False, dynamic_ncols=True)
    loss_sum = correct = seen = 0.0
    window_loss = window_n = 0.0
    window_t = t0 = time.perf_counter()
    steps = 0
    stopped = None
    first_step_s = 0.0
    mid_step, mid_t = 0, t0

    def forward(x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast():
            logits = model(x, **kwargs)
            loss = criterion(logits, y)
        return loss, logits

    for batch in loader:
        if max_steps is not None and steps >= max_steps:
            break
        x, y, kwargs, _ = prepare(batch)
        b = x.shape[0]
        loss, logits = forward(x, y, kwargs)
        hits = float((logits.detach().argmax(-1) == hard_labels(y)).sum())
        late = deadline is not None and time.monotonic() > deadline
        # One reduction per step: the loss sum (NaN anywhere -> NaN everywhere), counts and the stop flag.
        red_loss, red_hits, red_n, red_late = all_reduce_sum(
            [float(loss.detach()) * b, hits, b, float(late)], env, device)
        if not math.isfinite(red_loss):
            bar.close()
            raise NonFiniteLossError(f"non-finite training loss ({red_loss}) at epoch {epoch}, step "
                                     f"{state.global_step + 1}; the weights were not updated with it")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(optimizer)
            scaler.update()
        elif sam:
            loss.backward()
            optimizer.first_step(zero_grad=True)
            loss2, _ = forward(x, y, kwargs)  # gradient at the perturbed weights
            loss2.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.second_step(zero_grad=True)
        else:
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
        schedule.step()
        if ema is not None:
            ema.update(unwrap(model))
        state.global_step += 1
        steps += 1
        loss_sum += red_loss
        correct += red_hits
        seen += red_n
        window_loss += red_loss
        window_n += red_n
        bar.update(1)
        now = time.perf_counter()
        if steps == 1:
            first_step_s = now - t0  # includes torch.compile and allocator warm-up; planning discounts it
        if steps == max(1, total // 2):
            mid_step, mid_t = steps, now  # the second half's rate is the steady one (compile can outlast step 1)
        if steps % max(1, log_every) == 0:
            rate = window_n / max(now - window_t, 1e-9)
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{window_loss / window_n:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
            if log is not None:
                log({"type": "step", "epoch": epoch, "step": state.global_step, "loss": window_loss / window_n,
                     "lr": lr, "img_s": rate, "time_s": now - t0})
            window_loss = window_n = 0.0
            window_t = now
        if red_late:
            stopped = "time budget"
            break
    bar.close()
    seconds = time.perf_counter() - t0
    return EpochResult(
        loss=loss_sum / seen if seen else float("nan"), accuracy=correct / seen if seen else float("nan"),
        samples=int(seen), steps=steps, seconds=seconds, img_s=seen / seconds if seconds > 0 else 0.0,
        lr=optimizer.param_groups[0]["lr"], stopped=stopped, first_step_s=first_step_s,
        tail_steps=steps - mid_step if mid_step else 0, tail_s=(t0 + seconds - mid_t) if mid_step else 0.0)


class ModelEma:
    """Exponential moving average of a model's float weights (buffers copied), evaluated instead of the model.

    ``decay`` is per optimiser step; ``warmup`` ramps it as ``min(decay, (1 + n) / (10 + n))`` so early
    averages are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        import copy

        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            s = src[k].detach()
            if v.dtype.is_floating_point:
                v.mul_(d).add_(s, alpha=1 - d)
            else:
                v.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
