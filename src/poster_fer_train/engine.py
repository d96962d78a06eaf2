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
    parts.model.train()
    step = OptimizerStep(parts, opts)
    total = opts.max_steps if opts.max_steps is not None else len(loader)
    bar = tqdm(total=total, desc=f"epoch {epoch}", unit="it", disable=not (opts.progress and opts.env.is_main),
               leave=False, dynamic_ncols=True)
    tally = EpochTally(total)
    stopped = None
    for batch in loader:
        if opts.max_steps is not None and tally.steps >= opts.max_steps:
            break
        x, y, kwargs, _ = parts.prepare(batch)
        loss, logits = step.forward(x, y, kwargs)
        hits = float((logits.detach().argmax(-1) == hard_labels(y)).sum())
        late = deadline is not None and time.monotonic() > deadline
        # One reduction per step: the loss sum (NaN anywhere -> NaN everywhere), counts and the stop flag.
        red_loss, red_hits, red_n, red_late = all_reduce_sum(
            [float(loss.detach()) * x.shape[0], hits, x.shape[0], float(late)], opts.env, opts.device)
        if not math.isfinite(red_loss):
            bar.close()
            raise NonFiniteLossError(f"non-finite training loss ({red_loss}) at epoch {epoch}, step "
                                     f"{state.global_step + 1}; the weights were not updated with it")
        step.update(loss, x, y, kwargs)
        state.global_step += 1
        bar.update(1)
        tally.add(red_loss, red_hits, red_n)
        if tally.steps % max(1, opts.log_every) == 0:
            tally.report(bar, opts.log, epoch, state.global_step, parts.optimizer.param_groups[0]["lr"])
        if red_late:
            stopped = "time budget"
            break
    bar.close()
    return tally.result(parts.optimizer.param_groups[0]["lr"], stopped)


class OptimizerStep:
    """One optimiser step from a computed loss: backward (loss-scaled under fp16), SAM's second pass, clipping,
    the step itself, the per-step schedule and the EMA update."""

    def __init__(self, parts: TrainParts, opts: EpochOptions) -> None:
        self.parts, self.opts = parts, opts
        self.sam = isinstance(parts.optimizer, SAM)
        self.scaled = opts.scaler is not None and opts.scaler.is_enabled()
        if self.sam and self.scaled:
            raise ValueError("SAM with fp16 loss scaling is not supported; use amp: bf16 or no amp")
        self.params = [p for g in parts.optimizer.param_groups for p in g["params"]]
        self.autocast = precision_autocast(opts.device, opts.amp_dtype)

    def forward(self, x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = self.parts.model(x, **kwargs)
            loss = self.parts.criterion(logits, y)
        return loss, logits

    def _clip(self) -> None:
        if self.opts.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.opts.grad_clip)

    def update(self, loss: torch.Tensor, x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, Any]) -> None:
        optimizer, scaler = self.parts.optimizer, self.opts.scaler
        optimizer.zero_grad(set_to_none=True)
        if self.scaled:
            scaler.scale(loss).backward()  # type: ignore[union-attr]
            if self.opts.grad_clip:
                scaler.unscale_(optimizer)  # type: ignore[union-attr]
            self._clip()
            scaler.step(optimizer)  # type: ignore[union-attr]
            scaler.update()  # type: ignore[union-attr]
        elif self.sam:
            loss.backward()
            optimizer.first_step(zero_grad=True)  # type: ignore[attr-defined]
            loss2, _ = self.forward(x, y, kwargs)  # gradient at the perturbed weights
            loss2.backward()
            self._clip()
            optimizer.second_step(zero_grad=True)  # type: ignore[attr-defined]
        else:
            loss.backward()
            self._clip()
            optimizer.step()
        self.parts.schedule.step()
        if self.opts.ema is not None:
            self.opts.ema.update(unwrap(self.parts.model))


class EpochTally:
    """An epoch's running sums: totals for the result, a window for the step logs, and the timings the time
    budget plans with (the first step, which includes compilation; the steady second half)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.loss_sum = self.correct = self.seen = 0.0
        self.window_loss = self.window_n = 0.0
        self.window_t = self.t0 = time.perf_counter()
        self.steps = 0
        self.first_step_s = 0.0
        self.mid_step, self.mid_t = 0, self.t0

    def add(self, loss_sum: float, hits: float, n: float) -> None:
        self.steps += 1
        self.loss_sum += loss_sum
        self.correct += hits
        self.seen += n
        self.window_loss += loss_sum
        self.window_n += n
        now = time.perf_counter()
        if self.steps == 1:
            self.first_step_s = now - self.t0  # includes torch.compile and allocator warm-up; planning discounts it
        if self.steps == max(1, self.total // 2):
            self.mid_step, self.mid_t = self.steps, now  # the second half's rate is the steady one

    def report(self, bar: Any, log: Callable[[dict[str, Any]], None] | None, epoch: int, global_step: int,
               lr: float) -> None:
        """The window's loss and rate on the progress bar and in the step log; the window starts again."""
        now = time.perf_counter()
        rate = self.window_n / max(now - self.window_t, 1e-9)
        bar.set_postfix(loss=f"{self.window_loss / self.window_n:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
        if log is not None:
            log({"type": "step", "epoch": epoch, "step": global_step, "loss": self.window_loss / self.window_n,
                 "lr": lr, "img_s": rate, "time_s": now - self.t0})
        self.window_loss = self.window_n = 0.0
        self.window_t = now

    def result(self, lr: float, stopped: str | None) -> EpochResult:
        seconds = time.perf_counter() - self.t0
        seen, mid = self.seen, self.mid_step
        return EpochResult(
            loss=self.loss_sum / seen if seen else float("nan"), accuracy=self.correct / seen if seen else float("nan"),
            samples=int(seen), steps=self.steps, seconds=seconds, img_s=seen / seconds if seconds > 0 else 0.0,
            lr=lr, stopped=stopped, first_step_s=self.first_step_s,
            tail_steps=self.steps - mid if mid else 0, tail_s=(self.t0 + seconds - self.mid_t) if mid else 0.0)


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
