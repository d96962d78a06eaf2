"""Finishing a run: the best checkpoint, the test split read once, results.json and the curves."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from poster_fer.card import thaw
from poster_fer.distributed import DistEnv, barrier
from poster_fer.evaluation.loop import PredictOptions, predict_split, unwrap
from poster_fer.jsonable import to_jsonable
from poster_fer.precision import autocast as precision_autocast
from poster_fer.provenance import git_revision
from poster_fer.weights.preprocessing import Preprocessing

from .loaders import TrainingData
from .recipe import Recipe
from .runlog import BEST_DIR, RESULTS_FILE, RunLog, finite, machine_info, metric_summary, split_metrics
from .state import TrainState


@dataclass(kw_only=True)
class RunContext:
    """What the end-of-epoch and end-of-run steps need from the set-up (instead of long argument lists)."""

    recipe: Recipe
    run_dir: Path
    data: TrainingData
    env: DistEnv
    device: torch.device
    amp_dtype: torch.dtype | None
    criterion: nn.Module
    counts: dict[str, int]
    sessions: list[dict[str, Any]]  # every process that trained the run (command, git revision), the first first
    cache_info: Any
    distill_info: dict[str, Any] | None
    pre: list[str]  # pretrained-weights reports
    preprocessing: Preprocessing  # the run's input contract: what the loaders feed, what the saved model records
    say: Any
    log: RunLog
    progress: bool

    def provenance(self) -> dict[str, Any]:
        """Where a saved model of this run came from (stored in its metadata)."""
        return {"source": "poster-fer train", "recipe": self.recipe.to_dict(), "command": self.sessions[0]["command"],
                "git_revision": git_revision(), "data_counts": self.counts, "pretrained": self.pre,
                "landmark_cache": self.cache_info, "distill": self.distill_info}


def save_best(run: RunContext, model: nn.Module, epoch: int, vm: dict[str, Any]) -> None:
    from poster_fer import save_model

    save_model(unwrap(model), run.run_dir / BEST_DIR, classes=run.data.classes,
               preprocessing=run.preprocessing.to_meta(),
               provenance={**run.provenance(), "epoch": epoch},
               metrics={"val": metric_summary(vm), "test": None})


def finish_run(run: RunContext, ts: TrainState, model: nn.Module, select: str, stopped: str | None,
               wall_time_s: float) -> dict[str, Any]:
    """Evaluate val and test once with the best model; write results.json, curves.png and the best model's
    metrics."""
    best = load_best(run)
    metrics = evaluate_best(run, best, ts.best_epoch)
    if "test" not in run.data.loaders:
        run.say("[test] the dataset has no test split: nothing was tested; results.json holds validation metrics "
                "only")
    results: dict[str, Any] = {}
    if run.env.is_main:
        results = results_record(run, ts, model, best, metrics, RunEnd(select, stopped, wall_time_s))
        write_results(run, best, results)
        run.log({"type": "final", "metrics": {s: metric_summary(m) for s, m in metrics.items()},
                 "best_epoch": ts.best_epoch, "wall_time_s": results["wall_time_s"]})
        for split, m in metrics.items():
            run.say(f"[{split}] best epoch {ts.best_epoch}: accuracy {m['accuracy']:.4f}, mean class accuracy "
                    f"{m['mean_class_accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} ({m['num_samples']} samples)")
    barrier(run.env)
    return results


def load_best(run: RunContext) -> nn.Module:
    """The best model saved in the run, loaded as inference will load it, with the run's attention and memory
    format."""
    from poster_fer import load_model
    from poster_fer.models import set_fused_attention

    best_dir = run.run_dir / BEST_DIR
    if not (best_dir / "model.safetensors").is_file():
        raise RuntimeError(f"no best model in {best_dir}: training ended before any epoch was evaluated")
    best = load_model(best_dir, device=run.device)
    if run.recipe.train.fused_attention:
        set_fused_attention(best, True)
    if run.recipe.train.channels_last:
        best.to(memory_format=torch.channels_last)
    return best


def evaluate_best(run: RunContext, best: nn.Module, best_epoch: int | None) -> dict[str, Any]:
    """Val and (where there is one) test metrics of the best model, each split read once."""
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        if split not in run.data.loaders:
            continue
        options = PredictOptions(criterion=run.criterion, autocast=precision_autocast(run.device, run.amp_dtype),
                                 progress=run.progress, desc=split, tta_flip=bool(run.recipe.train.tta_flip))
        out = predict_split(best, run.data.loaders[split], run.data.preparers[split], device=run.device,
                            env=run.env, options=options)
        metrics[split] = split_metrics(out, run.data.classes)
        metrics[split]["epoch"] = best_epoch
    return metrics


@dataclass(frozen=True)
class RunEnd:
    """How the run ended: the metric that selected the best epoch, why it stopped early (None: it did not),
    and its wall time."""

    select: str
    stopped: str | None
    wall_time_s: float


def results_record(run: RunContext, ts: TrainState, model: nn.Module, best: nn.Module, metrics: dict[str, Any],
                   end: RunEnd) -> dict[str, Any]:
    """``results.json``: what was trained, on what, how long, and the best model's metrics."""
    history, data = ts.history, run.data
    return {
        "recipe": run.recipe.name,
        "model": unwrap(model).model_name,
        "model_config": thaw(best.card.config),
        "params": {"total": sum(p.numel() for p in model.parameters()),
                   "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)},
        "command": run.sessions[0]["command"],
        "git_revision": git_revision(),
        "sessions": run.sessions,
        "machine": machine_info(run.device, run.env),
        "wall_time_s": round(end.wall_time_s, 2),
        "data": {**run.counts, "classes": data.classes, "reports": data.reports()},
        "metrics": metrics,
        "selection": {"metric": end.select, "split": "val", "best_epoch": ts.best_epoch},
        "history": history,
        "epochs_run": len(history),
        "stopped": end.stopped,
        "throughput": {"train_img_s_mean": finite(np.mean([h["train_img_s"] for h in history]))
                       if history else None},
        "landmark_cache": run.cache_info,
        "distill": run.distill_info,
        "run_dir": str(run.run_dir),
        "best_model": str(run.run_dir / BEST_DIR),
        "recipe_config": run.recipe.to_dict(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(run: RunContext, best: nn.Module, results: dict[str, Any]) -> None:
    """The best model's metrics into its metadata, ``results.json`` and (a convenience) ``curves.png``."""
    from poster_fer import save_model

    card = best.card
    save_model(best, run.run_dir / BEST_DIR, classes=list(card.classes), preprocessing=thaw(card.preprocessing),
               provenance=card.provenance_record() or None,
               metrics={s: metric_summary(m) for s, m in results["metrics"].items()})
    (run.run_dir / RESULTS_FILE).write_text(json.dumps(to_jsonable(results), indent=2) + "\n")
    history = results["history"]
    if history:
        with contextlib.suppress(Exception):  # figures are a convenience; never lose results over them
            from poster_fer.evaluation.plots import plot_curves

            keep = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "val_mean_class_acc")
            rows = [{k: v for k, v in h.items() if k in keep or (k == "lr" and v and v > 0)} for h in history]
            plot_curves(rows, run.run_dir / "curves.png")
