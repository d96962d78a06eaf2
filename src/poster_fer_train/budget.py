"""The run's clock and its wall-clock budget (``train.time_budget_min``), in one object that owns the planning.

Why one object: the budget decides three things that must agree: how many epochs the schedule is stretched
over (planned once, from epoch 1's steady rate, when ``train.epochs_from_budget`` is set), whether the next
epoch can still end in time (else training stops cleanly between epochs), and the deadline inside an epoch. All
three keep back a reserve for the final test pass (scaled from the last validation pass), so the whole run,
test included, ends inside the budget. A resumed run carries on the elapsed time stored in ``last.pt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TimeBudget"]


@dataclass
class TimeBudget:
    """``seconds`` None means no limit: the object is then only the run's clock."""

    seconds: float | None = None
    elapsed_before: float = 0.0  # time spent by earlier sessions of a resumed run
    started: float = field(default_factory=time.monotonic)
    reserve: float = 0.0  # kept back for the final evaluation
    epoch_times: list[float] = field(default_factory=list)

    @classmethod
    def from_recipe(cls, train: Any, elapsed_before: float = 0.0, started: float | None = None) -> TimeBudget:
        """From the train settings (:class:`~poster_fer_train.recipe.TrainSettings`: ``time_budget_min``)."""
        minutes = train.time_budget_min
        return cls(float(minutes) * 60.0 if minutes else None, float(elapsed_before),
                   time.monotonic() if started is None else started)

    @property
    def limited(self) -> bool:
        return self.seconds is not None

    def elapsed(self) -> float:
        """Seconds of the run so far, earlier sessions included."""
        return self.elapsed_before + time.monotonic() - self.started

    def stop_before(self, epoch: int) -> str | None:
        """Why epoch ``epoch`` should not start (it would end past the budget at the recent epochs' pace)."""
        if self.seconds is None or not self.epoch_times:
            return None
        need = float(np.mean(self.epoch_times[-3:]))
        if self.elapsed() + need > self.seconds - self.reserve:
            return (f"time budget: epoch {epoch} (~{need:.0f}s) would end past {self.seconds / 60:.0f} min "
                    f"(elapsed {self.elapsed() / 60:.1f} min)")
        return None

    def deadline(self) -> float | None:
        """``time.monotonic()`` value at which the running epoch must stop (None: no limit)."""
        if self.seconds is None:
            return None
        return time.monotonic() + (self.seconds - self.reserve - self.elapsed())

    def end_epoch(self, seconds: float, val_seconds: float, n_val: int, n_test: int) -> None:
        """Record an epoch's duration and re-estimate the reserve from its validation pass."""
        self.epoch_times.append(seconds)
        if self.seconds is not None:
            self.reserve = val_seconds * (n_test / max(1, n_val)) * 1.3 + 10.0

    def plan_epochs(self, stats: dict[str, Any], epoch_s: float, max_epochs: int, done: int = 1) -> int:
        """How many epochs fit the budget, from the time of epoch ``done`` (the first, or the first after the
        frozen ones: see ``train.freeze_epochs``) at its steady rate (at most ``max_epochs``).

        The rate is that of the epoch's second half when there is one (warm-up, recompilation and allocator
        growth need not end with the first step); else the epoch with its first step replaced by an average one.
        """
        if self.seconds is None:
            return max_epochs
        steps = int(stats["steps"])
        train_s = float(stats["seconds"])
        tail_steps = int(stats.get("tail_steps") or 0)
        if tail_steps >= 2:
            train_s = float(stats["tail_s"]) * steps / tail_steps
        elif steps > 1:  # replace the first step (compilation, warm-up) by an average one
            train_s = (train_s - float(stats["first_step_s"])) * steps / (steps - 1)
        epoch_s = float(epoch_s) - float(stats["seconds"]) + train_s
        left = self.seconds - self.reserve - self.elapsed()
        more = int(max(0.0, left) / (epoch_s * 1.03))
        return max(done, min(max_epochs, done + more))
