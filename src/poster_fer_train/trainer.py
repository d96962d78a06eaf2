"""``fit(recipe)``: build data, model, loss, optimiser and schedule from a recipe, train, select, test, report.

Flow (see ``docs/training.md``):

1. device and (under torchrun) the process group; seeds (same on every rank for the model's initialisation);
2. datasets for train / val / test, loaders (the recipe's ``batch_size`` is the global batch);
3. the model (``create_model``), pretrained backbone files (their load reports are printed and recorded);
   optional landmark-feature caches; DDP; ``torch.compile``;
4. per epoch: train, evaluate on val, keep the best model (poster-fer format, ``best/``) by the validation
   metric, write ``last.pt`` atomically, log a JSON line;
5. the test split is evaluated once, with the best model, and reported apart from validation in
   ``results.json`` (plus ``curves.png``).

Only rank 0 writes files. A non-finite loss raises :class:`NonFiniteLossError` and leaves the last good
``last.pt`` in place; a wall-clock budget (``train.time_budget_min``) ends training early but cleanly.

This module is the loop; what it builds from the recipe is :mod:`.build`, how it finishes (best model, test,
results.json) :mod:`.finish`, and what it records :mod:`.runlog`.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from poster_fer.devices import resolve_device
from poster_fer.distributed import DistEnv, barrier, broadcast_object, cleanup_distributed, init_distributed
from poster_fer.evaluation.loop import predict_split
from poster_fer.precision import autocast as precision_autocast
from poster_fer.precision import resolve_precision
from poster_fer.provenance import git_revision

from .budget import TimeBudget
from .build import (
    build_caches,
    build_model,
    build_teacher,
    check_inputs_exist,
    compile_blocker,
    compile_not_worth,
    ema_args,
    init_preprocessing,
    preprocessing_meta,
)
from .checkpoint import LAST, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .engine import EpochOptions, ModelEma, NonFiniteLossError, TrainParts, train_one_epoch
from .finish import RunContext, finish_run, save_best
from .loaders import TrainingData, build_training_data, load_splits
from .losses import build_loss
from .optim import Freezer, build_optimizer, build_schedule
from .recipe import TrainSettings, load_recipe
from .runlog import RESULTS_FILE, RunLog, finite, split_metrics
from .state import TrainState

# ------------------------------------------------------------------------------------------ environment ----


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one rank's epoch: each epoch's randomness depends only on (seed, rank, epoch), so a resumed
    run draws exactly what an uninterrupted one would, DataLoader workers included."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)[0])


@dataclass
class FitResult:
    run_dir: Path | None
    results: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _earlier_sessions(ckpt: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The sessions a resumed checkpoint records. One written before sessions were kept records none: its
    earlier sessions are then listed as unknown rather than left out, so the record never names a later
    ``--resume`` as the command that started the run."""
    if not ckpt:
        return []
    if ckpt.get("sessions"):
        return list(ckpt["sessions"])
    return [{"command": None, "git_revision": None, "started": None, "from_epoch": 0,
             "note": "checkpoint written before sessions were recorded: the command and code that trained "
                     f"epochs 1-{int(ckpt.get('epoch', 0))} are unknown"}]


def default_run_dir(recipe: dict[str, Any]) -> Path:
    return Path("runs") / f"{recipe['name']}-{time.strftime('%Y%m%d-%H%M%S')}"


def fit(
    recipe: dict[str, Any] | str,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    resume: str | os.PathLike[str] | bool | None = None,
    overrides: dict[str, Any] | None = None,
    data_root: str | None = None,
    command: str | None = None,
    results_out: str | os.PathLike[str] | None = None,
    echo: Any = print,
) -> FitResult:
    """Train from a recipe (name, file or dict) into ``out_dir``; returns the results record.

    ``resume``: True (use ``out_dir/last.pt``) or a checkpoint / run-directory path. A resumed run uses the
    recipe stored in the checkpoint (``overrides`` still apply on top, e.g. more epochs).
    """
    wall0 = time.monotonic()
    ckpt: dict[str, Any] | None = None
    if resume:
        src = Path(out_dir) if resume is True else Path(resume)
        if resume is True and out_dir is None:
            raise ValueError("resume=True needs the run directory (out_dir)")
        ckpt = load_checkpoint(src)
        recipe = load_recipe(ckpt["recipe"], overrides)
        if not {"stop_after_epoch", "train.stop_after_epoch"} & set(overrides or {}):
            recipe["train"]["stop_after_epoch"] = None  # a pause applies to the session that asked for it
        if out_dir is None:
            out_dir = src if src.is_dir() else src.parent
    else:
        recipe = load_recipe(recipe, overrides, data_root)
    tr = TrainSettings.from_recipe(recipe)
    threads_before = torch.get_num_threads()
    if tr.threads:
        torch.set_num_threads(int(tr.threads))
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(recipe.get("device"))
    env = init_distributed(device)
    main = env.is_main
    say = echo if main else (lambda *a, **k: None)
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(recipe)
    run_dir = Path(broadcast_object(str(run_dir), env))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir if main else None, bool(tr.tensorboard))
    try:
        return _fit(recipe, run_dir, ckpt, env, device, log, say, wall0, command, results_out)
    finally:
        log.close()
        cleanup_distributed()
        torch.set_num_threads(threads_before)  # in-process callers (tests, notebooks) get their setting back


def _fit(recipe: dict[str, Any], run_dir: Path, ckpt: dict[str, Any] | None, env: DistEnv, device: torch.device,
         log: RunLog, say: Any, wall0: float, command: str | None, results_out: Any) -> FitResult:
    tr = TrainSettings.from_recipe(recipe)
    seed = int(recipe.get("seed", 0))
    main = env.is_main
    progress = bool(tr.progress)
    amp_dtype = resolve_precision(tr.amp, device, "train.amp")
    global_batch = int(tr.batch_size)
    if global_batch % env.world_size:
        raise ValueError(f"train.batch_size {global_batch} (the global batch) is not divisible by the world size "
                         f"{env.world_size}")
    batch = global_batch // env.world_size
    eval_batch = int(tr.eval_batch_size or batch)
    budget = TimeBudget.from_recipe(tr, float(ckpt.get("elapsed_s", 0.0)) if ckpt else 0.0, wall0)
    elapsed = budget.elapsed
    pre: list[str] = []
    git_revision()  # pinned now: the code this process imported
    # Every process that trained this run: a resumed run's record names the command that started it (its recipe
    # and seed), and each resume with the code it ran, not only the last `--resume`.
    sessions = [*_earlier_sessions(ckpt),
                {"command": command, "git_revision": git_revision(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_epoch": int(ckpt["epoch"]) if ckpt else 0}]
    say(f"[train] recipe {recipe['name']} -> {run_dir} (device {device}, world {env.world_size}, "
        f"global batch {global_batch}, amp {amp_dtype or 'off'}, threads {torch.get_num_threads()})")
    t = time.monotonic()
    check_inputs_exist(recipe)
    init_preprocessing(recipe, say)
    datasets = load_splits(recipe["data"], seed=int(recipe["data"].get("subset_seed", 0)), say=say)
    seed_all(seed)  # identical model initialisation on every rank
    model = build_model(recipe, len(datasets["train"].classes), pre, classes=list(datasets["train"].classes))
    data: TrainingData = build_training_data(
        recipe["data"], input_size=int(model.cfg.input_size), env=env, device=device, batch_size=batch,
        eval_batch_size=eval_batch, seed=seed, class_balanced=bool(tr.class_balanced),
        channels_last=bool(tr.channels_last), datasets=datasets)
    counts = data.counts()
    say(f"[data] {recipe['data']['kind']} {counts} ({time.monotonic() - t:.1f}s)")
    for split, ds in data.datasets.items():
        say(f"[data] {split}: {ds.report.summary()}")
    for line in pre:
        say(f"[model] {line}")
    if tr.fused_attention:
        from poster_fer.models import set_fused_attention

        set_fused_attention(model, True)
    model.to(device)
    if tr.channels_last:
        model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"[model] {model.model_name}: {n_params:,} parameters ({n_train:,} trainable)")

    cache_info = build_caches(tr, model, data, device, amp_dtype, say, progress)
    distill_info = build_teacher(tr, data, device, amp_dtype, say, progress)

    criterion = build_loss(recipe["loss"])
    optimizer = build_optimizer(model, recipe["optimizer"])
    freezer = Freezer(model, optimizer, int(tr.freeze_epochs or 0), list(tr.freeze_except or ["head"]))
    if freezer.epochs and env.distributed:
        raise ValueError("train.freeze_epochs is not supported with DDP (its gradient buckets are fixed when it "
                         "wraps the model); train on one process or use optimizer.lr_mult instead")
    steps_per_epoch = len(data.loaders["train"])
    if tr.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, int(tr.max_steps_per_epoch))
    epochs = int(tr.epochs)
    schedule = build_schedule(optimizer, recipe["schedule"], epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEma(model, **ema_args(tr.ema)) if tr.ema else None

    ts = TrainState(model, optimizer, schedule, scaler, ema, planned_epochs=epochs)
    if ckpt is not None:
        resume_state(ts, ckpt, env, tr, steps_per_epoch, say, log)
    start_epoch = ts.epoch + 1
    train_model = training_module(model, env, device, tr, steps_per_epoch * epochs, say, log)
    eval_model = ema.module if ema is not None else model
    select = str(tr.select_metric)
    run = RunContext(recipe=recipe, run_dir=run_dir, data=data, env=env, device=device, amp_dtype=amp_dtype,
                     criterion=criterion, counts=counts, sessions=sessions, cache_info=cache_info,
                     distill_info=distill_info, pre=pre, preprocessing=preprocessing_meta(recipe, model), say=say,
                     log=log, progress=progress)
    stopped: str | None = None
    log({"type": "start", "recipe": recipe["name"], "counts": counts, "world_size": env.world_size,
         "global_batch": global_batch, "steps_per_epoch": steps_per_epoch, "landmark_cache": cache_info})

    parts = TrainParts(train_model, data.preparers["train"], criterion, optimizer, schedule)
    epoch_opts = EpochOptions(device=device, env=env, amp_dtype=amp_dtype, scaler=scaler,
                              grad_clip=tr.grad_clip, ema=ema, log=log, log_every=int(tr.log_every),
                              progress=progress, max_steps=tr.max_steps_per_epoch)
    plan_at = freezer.epochs + 1  # the first epoch that trains everything: frozen epochs are faster than the rest
    planning = bool(tr.epochs_from_budget and budget.limited and start_epoch <= plan_at)
    if start_epoch == 1:
        say(plan_message(epochs, budget.seconds, bool(tr.epochs_from_budget), plan_at))
    epoch = start_epoch
    while epoch <= ts.planned_epochs:
        stopped = budget.stop_before(epoch)
        if stopped:
            break
        t_epoch = time.monotonic()
        loader = begin_epoch(data, freezer, seed, env, epoch, start_epoch, say)
        deadline = budget.deadline()
        try:
            stats = train_one_epoch(parts, loader, ts.step, epoch=epoch, opts=epoch_opts, deadline=deadline)
        except NonFiniteLossError as e:
            last = run_dir / LAST
            where = (f"; the last good checkpoint is {last} (epoch {epoch - 1})" if last.is_file()
                     else "; no checkpoint was written yet")
            log({"type": "error", "epoch": epoch, "step": ts.step.global_step, "error": str(e)})
            raise NonFiniteLossError(str(e) + where) from None
        val = predict_split(eval_model, data.loaders["val"], data.preparers["val"], device=device, env=env,
                            criterion=criterion, autocast=precision_autocast(device, amp_dtype), progress=progress,
                            desc=f"val {epoch}", tta_flip=bool(tr.tta_flip))
        vm = split_metrics(val, data.classes)
        score = float(vm.get(select) or 0.0)
        improved = score > ts.best
        if improved:
            ts.best, ts.best_epoch = score, epoch
        row = epoch_row(epoch, stats, val, vm, time.monotonic() - t_epoch, elapsed())
        ts.history.append(row)
        budget.end_epoch(time.monotonic() - t_epoch, val.seconds, counts["val"], counts.get("test", 0))
        if main:
            if improved:
                save_best(run, eval_model, epoch, vm)
            if planning and epoch == plan_at:
                ts.planned_epochs = budget.plan_epochs(stats, row["epoch_s"], epochs, done=epoch)
        ts.planned_epochs = int(broadcast_object(ts.planned_epochs, env))
        replanned = ts.planned_epochs != schedule.total_steps // steps_per_epoch
        if replanned:
            schedule.total_steps = ts.planned_epochs * steps_per_epoch
        rng_states = _gather_rng(env)
        ts.epoch = epoch
        if main:
            save_checkpoint(run_dir / LAST, {
                **ts.state_dict(), "recipe": recipe, "sampler": {"epoch": epoch, "seed": seed},
                "rng_per_rank": rng_states, "elapsed_s": elapsed(), "world_size": env.world_size,
                "sessions": sessions,
            })
        log({"type": "epoch", **row, "improved": improved, "step": ts.step.global_step})
        of = f"{ts.planned_epochs}" if not planning or epoch >= plan_at else f"<={epochs}"
        say(epoch_line(row, of, elapsed(), improved))
        if planning and epoch == plan_at:
            minutes = (budget.seconds or 0.0) / 60
            say(f"[plan] {ts.planned_epochs} epochs fit the {minutes:g}-minute budget on this machine (epoch {epoch} "
                f"took {row['epoch_s']:.0f}s); the schedule now ends at epoch {ts.planned_epochs}")
            log({"type": "plan", "epochs": ts.planned_epochs, "budget_min": minutes, "after_epoch": epoch})
        barrier(env)
        if stats.stopped:
            stopped = f"time budget: stopped inside epoch {epoch} after {stats.steps} steps"
            break
        if tr.stop_after_epoch and epoch >= int(tr.stop_after_epoch) and epoch < ts.planned_epochs:
            say(f"[train] paused after epoch {epoch} (train.stop_after_epoch); continue with --resume {run_dir}")
            log({"type": "paused", "epoch": epoch})
            return FitResult(run_dir, {}, ts.history)
        epoch += 1

    freezer.set_epoch(freezer.epochs + 1)  # the returned model is whole again, whatever the schedule did
    if stopped:
        say(f"[train] {stopped}")
        log({"type": "stopped", "reason": stopped})
    barrier(env)
    results = finish_run(run, ts, model, select, stopped, elapsed())
    if main and results_out:
        out = Path(results_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / RESULTS_FILE, out)
        say(f"[train] results copied to {out}")
    return FitResult(run_dir, results, ts.history)



def resume_state(ts: TrainState, ckpt: dict[str, Any], env: DistEnv, tr: TrainSettings, steps_per_epoch: int,
                 say: Any, log: Any) -> None:
    """Carry an interrupted run on exactly: its state, this rank's random streams, its epoch plan (unless an
    override changed the epochs and no budget plans them), and the schedule's length."""
    epochs = int(tr.epochs)
    ts.load_state_dict(ckpt)
    rng = ckpt.get("rng_per_rank", {})
    if env.rank in rng or str(env.rank) in rng:
        restore_rng_state(rng.get(env.rank, rng.get(str(env.rank))))
    if ts.planned_epochs != epochs and not tr.epochs_from_budget:
        ts.planned_epochs = epochs  # an override asked for more (or fewer) epochs
    ts.schedule.total_steps = ts.planned_epochs * steps_per_epoch
    say(f"[resume] from epoch {ts.epoch} (step {ts.step.global_step}, best "
        f"{tr.select_metric} {ts.best:.4f} at epoch {ts.best_epoch})")
    log({"type": "resume", "epoch": ts.epoch, "step": ts.step.global_step})


def training_module(model: nn.Module, env: DistEnv, device: torch.device, tr: TrainSettings, total_steps: int,
                    say: Any, log: Any) -> nn.Module:
    """The module the steps run: the model, wrapped in DDP across processes and compiled where that repays
    itself (a line says why not, otherwise)."""
    train_model: nn.Module = model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tr.compile:
        missing = compile_blocker(device) or compile_not_worth(tr, device, total_steps)
        if missing:
            say(f"[train] train.compile skipped: {missing}; training eagerly (same results, slower)")
            log({"type": "note", "compile_skipped": missing})
        else:
            train_model = torch.compile(train_model)
    return train_model


def begin_epoch(data: TrainingData, freezer: Freezer, seed: int, env: DistEnv, epoch: int, start_epoch: int,
                say: Any) -> Any:
    """Seed the epoch (every rank its own, the same after a resume), freeze or unfreeze by the schedule (saying
    so when it changes), and return the training loader."""
    data.set_epoch(epoch)
    es = epoch_seed(seed, env.rank, epoch)
    seed_all(es)
    loader = data.loaders["train"]
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(es)
    frozen = freezer.set_epoch(epoch)
    if freezer.epochs and (epoch == start_epoch or epoch in (1, freezer.epochs + 1)):
        say(f"[train] epoch {epoch}: " + (f"{frozen:,} parameters frozen, training only "
            f"{', '.join(freezer.keep)} (train.freeze_epochs={freezer.epochs})"
            if frozen else "every trainable parameter trains"))
    return loader


def epoch_row(epoch: int, stats: Any, val: Any, vm: dict[str, Any], epoch_s: float, elapsed_s: float
              ) -> dict[str, Any]:
    """One epoch's line of the run's history (log.jsonl, results.json, curves.png)."""
    row = {
        "epoch": epoch, "train_loss": finite(stats.loss), "train_acc": finite(stats.accuracy),
        "val_loss": finite(val.loss), "val_acc": vm["accuracy"], "val_mean_class_acc": vm["mean_class_accuracy"],
        "val_macro_f1": vm["macro_f1"], "lr": stats.lr, "train_img_s": round(stats.img_s, 2),
        "epoch_s": round(epoch_s, 2), "elapsed_s": round(elapsed_s, 2),
    }
    if stats.stopped:
        row["partial"] = True
    return row


def epoch_line(row: dict[str, Any], of: str, elapsed_s: float, improved: bool) -> str:
    """What the run prints after an epoch (``of``: the planned epochs, or ``<=N`` before the plan is set)."""
    return (f"[epoch {row['epoch']}/{of}] loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f} "
            f"val_acc {row['val_acc']:.4f} val_mca {row['val_mean_class_acc']:.4f} "
            f"({row['train_img_s']:.0f} img/s, {row['epoch_s']:.0f}s, elapsed {elapsed_s / 60:.1f} min)"
            + (" *" if improved else ""))


def plan_message(epochs: int, budget_s: float | None, from_budget: bool, plan_at: int) -> str:
    """What the run will do, said before its first epoch: how many epochs, and whether (and when) the count
    depends on this machine's speed, with the option that makes it repeatable."""
    if budget_s is None:
        return f"[plan] {epochs} epochs"
    minutes = f"{budget_s / 60:g}-minute"
    fixed = "for the same run on any machine, pass --epochs N (a fixed count, no budget)"
    if from_budget:
        return (f"[plan] up to {epochs} epochs in the {minutes} budget: the count is set after epoch {plan_at} (the "
                f"first that trains every layer) from its measured speed, so it differs between machines; {fixed}")
    return (f"[plan] {epochs} epochs; training stops early, between epochs, if the next would end past the "
            f"{minutes} budget; {fixed}")

def _gather_rng(env: DistEnv) -> dict[int, Any]:
    mine = capture_rng_state()
    if not env.distributed:
        return {0: mine}
    import torch.distributed as dist

    parts: list[Any] = [None] * env.world_size
    dist.all_gather_object(parts, mine)
    return dict(enumerate(parts))

