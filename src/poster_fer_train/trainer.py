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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from poster_fer.devices import resolve_device
from poster_fer.distributed import DistEnv, barrier, broadcast_object, cleanup_distributed, init_distributed
from poster_fer.evaluation.loop import PredictOptions, predict_split
from poster_fer.naming import warn_deprecated
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
    run_preprocessing,
)
from .checkpoint import LAST, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .engine import EpochOptions, EpochResult, ModelEma, NonFiniteLossError, TrainParts, train_one_epoch
from .finish import RunContext, finish_run, save_best
from .loaders import Batching, TrainingData, build_training_data, load_splits
from .losses import build_loss
from .optim import Freezer, build_optimizer, build_schedule
from .recipe import Recipe, TrainSettings, read_recipe
from .runlog import RESULTS_FILE, RunLog, RunOutput, finite, split_metrics
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


def default_run_dir(recipe: Recipe | dict[str, Any]) -> Path:
    name = recipe.name if isinstance(recipe, Recipe) else recipe["name"]
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


#: fit's keywords before :class:`RunOutput` grouped them.
_LEGACY_OUTPUT = ("command", "echo", "results_out")


def fit(
    recipe: dict[str, Any] | str,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    resume: str | os.PathLike[str] | bool | None = None,
    overrides: dict[str, Any] | None = None,
    data_root: str | None = None,
    output: RunOutput | None = None,
    **legacy: Any,
) -> FitResult:
    """Train from a recipe (name, file or dict) into ``out_dir``; returns the results record.

    ``resume``: True (use ``out_dir/last.pt``) or a checkpoint / run-directory path. A resumed run uses the
    recipe stored in the checkpoint (``overrides`` still apply on top, e.g. more epochs). ``output``: the
    command line to record, where lines are printed and where results.json is copied (the earlier keywords
    ``command``, ``echo`` and ``results_out`` still work, with a DeprecationWarning).
    """
    output = _run_output(output, legacy)
    wall0 = time.monotonic()
    typed, ckpt, out_dir = open_recipe(recipe, out_dir, resume, overrides, data_root)
    tr = typed.train
    threads_before = torch.get_num_threads()
    if tr.threads:
        torch.set_num_threads(int(tr.threads))
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(typed.device)
    env = init_distributed(device)
    run_dir = Path(broadcast_object(str(Path(out_dir) if out_dir is not None else default_run_dir(typed)), env))
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir if env.is_main else None, bool(tr.tensorboard))
    say = output.echo if env.is_main else (lambda *a, **k: None)
    try:
        return _fit(Session(recipe=typed, run_dir=run_dir, ckpt=ckpt, env=env, device=device, log=log, say=say,
                            wall0=wall0, output=output))
    finally:
        log.close()
        cleanup_distributed()
        torch.set_num_threads(threads_before)  # in-process callers (tests, notebooks) get their setting back


def _run_output(output: RunOutput | None, legacy: dict[str, Any]) -> RunOutput:
    if not legacy:
        return output or RunOutput()
    unknown = sorted(set(legacy) - set(_LEGACY_OUTPUT))
    if unknown:
        raise TypeError(f"fit() got unexpected keyword argument(s) {unknown}")
    warn_deprecated(f"fit(..., {', '.join(f'{k}=' for k in legacy)}) is deprecated: pass "
                    "output=RunOutput(command=..., echo=..., results_out=...)")
    return replace(output or RunOutput(), **legacy)


def open_recipe(recipe: dict[str, Any] | str, out_dir: str | os.PathLike[str] | None,
                resume: str | os.PathLike[str] | bool | None, overrides: dict[str, Any] | None,
                data_root: str | None) -> tuple[Recipe, dict[str, Any] | None, str | os.PathLike[str] | None]:
    """The run's typed recipe, the checkpoint it resumes (or None) and its folder. A resumed run takes the
    recipe its checkpoint stored (``overrides`` on top) and, unless an override asks again, no pause."""
    if not resume:
        return read_recipe(recipe, overrides, data_root), None, out_dir
    if resume is True and out_dir is None:
        raise ValueError("resume=True needs the run directory (out_dir)")
    src = Path(out_dir) if resume is True else Path(resume)  # type: ignore[arg-type]
    ckpt = load_checkpoint(src)
    typed = read_recipe(ckpt["recipe"], overrides)
    if not {"stop_after_epoch", "train.stop_after_epoch"} & set(overrides or {}):
        typed = typed.with_train(stop_after_epoch=None)  # a pause applies to the session that asked for it
    return typed, ckpt, out_dir if out_dir is not None else (src if src.is_dir() else src.parent)


@dataclass(kw_only=True)
class Session:
    """What :func:`fit` opened for the run: the typed recipe, the folder, the checkpoint it resumes, the
    process group and device, the log and where lines go."""

    recipe: Recipe
    run_dir: Path
    ckpt: dict[str, Any] | None
    env: DistEnv
    device: torch.device
    log: RunLog
    say: Any
    wall0: float
    output: RunOutput


@dataclass(kw_only=True)
class Plan:
    """The run's sizes and clock: precision, global and per-rank batches, the time budget, its sessions."""

    amp_dtype: torch.dtype | None
    global_batch: int
    batch: int
    eval_batch: int
    budget: TimeBudget
    sessions: list[dict[str, Any]]


@dataclass(kw_only=True)
class Loop:
    """What the epochs run with: the state that is checkpointed, the step's parts and options, the freezing
    schedule, the budget and the epoch plan."""

    run: RunContext
    ts: TrainState
    parts: TrainParts
    opts: EpochOptions
    freezer: Freezer
    budget: TimeBudget
    steps_per_epoch: int
    start_epoch: int
    plan_at: int  # the first epoch that trains everything (frozen epochs are faster than the rest)
    planning: bool  # the epoch count is set from the budget after epoch plan_at
    eval_model: nn.Module


def _fit(s: Session) -> FitResult:
    plan = plan_run(s)
    run, model = build_run(s, plan)
    loop = build_loop(s, plan, run, model)
    stopped, paused = run_epochs(loop)
    if paused:
        return FitResult(s.run_dir, {}, loop.ts.history)
    loop.freezer.set_epoch(loop.freezer.epochs + 1)  # the returned model is whole again, whatever the schedule did
    if stopped:
        s.say(f"[train] {stopped}")
        s.log({"type": "stopped", "reason": stopped})
    barrier(s.env)
    results = finish_run(run, loop.ts, model, s.recipe.train.select_metric, stopped, plan.budget.elapsed())
    if s.env.is_main and s.output.results_out:
        out = Path(s.output.results_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s.run_dir / RESULTS_FILE, out)
        s.say(f"[train] results copied to {out}")
    return FitResult(s.run_dir, results, loop.ts.history)


def plan_run(s: Session) -> Plan:
    """Precision, batch sizes (the recipe's is the global batch), the budget and the record of this session
    (a resumed run's record names the command that started it, and each resume with the code it ran)."""
    tr, env = s.recipe.train, s.env
    amp_dtype = resolve_precision(tr.amp, s.device, "train.amp")
    global_batch = int(tr.batch_size)
    if global_batch % env.world_size:
        raise ValueError(f"train.batch_size {global_batch} (the global batch) is not divisible by the world size "
                         f"{env.world_size}")
    batch = global_batch // env.world_size
    budget = TimeBudget.from_recipe(tr, float(s.ckpt.get("elapsed_s", 0.0)) if s.ckpt else 0.0, s.wall0)
    git_revision()  # pinned now: the code this process imported
    sessions = [*_earlier_sessions(s.ckpt),
                {"command": s.output.command, "git_revision": git_revision(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "from_epoch": int(s.ckpt["epoch"]) if s.ckpt else 0}]
    s.say(f"[train] recipe {s.recipe.name} -> {s.run_dir} (device {s.device}, world {env.world_size}, "
          f"global batch {global_batch}, amp {amp_dtype or 'off'}, threads {torch.get_num_threads()})")
    return Plan(amp_dtype=amp_dtype, global_batch=global_batch, batch=batch,
                eval_batch=int(tr.eval_batch_size or batch), budget=budget, sessions=sessions)


def build_run(s: Session, plan: Plan) -> tuple[RunContext, nn.Module]:
    """Data and model from the recipe, with one preprocessing for both (the initial weights' own with
    ``model.init``), the optional landmark caches and teacher targets; returns the run's context and model."""
    recipe, say, tr = s.recipe, s.say, s.recipe.train
    t = time.monotonic()
    check_inputs_exist(recipe)
    init_prep = init_preprocessing(recipe.model, say)
    if init_prep is not None:  # the recorded recipe says what the data was fed as
        recipe = recipe.with_data(recipe.data.with_preprocessing(init_prep))
    datasets = load_splits(recipe.data, seed=int(recipe.data.subset_seed), say=say)
    seed_all(int(recipe.seed))  # identical model initialisation on every rank
    pre: list[str] = []
    model = build_model(recipe, len(datasets["train"].classes), pre, classes=list(datasets["train"].classes))
    prep = run_preprocessing(recipe, init_prep, model)
    batching = Batching(plan.batch, plan.eval_batch, int(recipe.seed), bool(tr.class_balanced),
                        bool(tr.channels_last))
    data = build_training_data(recipe.data, batching, env=s.env, device=s.device, preprocessing=prep,
                               datasets=datasets)
    counts = data.counts()
    say(f"[data] {recipe.data.kind} {counts} ({time.monotonic() - t:.1f}s)")
    for split, ds in data.datasets.items():
        say(f"[data] {split}: {ds.report.summary()}")
    for line in pre:
        say(f"[model] {line}")
    place_model(model, tr, s.device, say)
    progress = bool(tr.progress)
    run = RunContext(recipe=recipe, run_dir=s.run_dir, data=data, env=s.env, device=s.device,
                     amp_dtype=plan.amp_dtype, criterion=build_loss(recipe.loss), counts=counts,
                     sessions=plan.sessions,
                     cache_info=build_caches(tr, model, data, s.device, plan.amp_dtype, say, progress),
                     distill_info=build_teacher(tr, data, s.device, plan.amp_dtype, say, progress), pre=pre,
                     preprocessing=prep, say=say, log=s.log, progress=progress)
    return run, model


def place_model(model: nn.Module, tr: TrainSettings, device: torch.device, say: Any) -> None:
    """The model on its device, with the run's attention kernel and memory format; a line with its size."""
    if tr.fused_attention:
        from poster_fer.models import set_fused_attention

        set_fused_attention(model, True)
    model.to(device)
    if tr.channels_last:
        model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"[model] {model.model_name}: {n_params:,} parameters ({n_train:,} trainable)")


def build_loop(s: Session, plan: Plan, run: RunContext, model: nn.Module) -> Loop:
    """Optimiser, freezing schedule, learning-rate schedule, loss scaling and EMA; the state a resume restores;
    the module the steps run (DDP, compiled); the epoch plan, said before the first epoch."""
    recipe, tr, env = s.recipe, s.recipe.train, s.env
    optimizer = build_optimizer(model, recipe.optimizer)
    freezer = Freezer(model, optimizer, int(tr.freeze_epochs or 0), list(tr.freeze_except or ["head"]))
    if freezer.epochs and env.distributed:
        raise ValueError("train.freeze_epochs is not supported with DDP (its gradient buckets are fixed when it "
                         "wraps the model); train on one process or use optimizer.lr_mult instead")
    steps_per_epoch = len(run.data.loaders["train"])
    if tr.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, int(tr.max_steps_per_epoch))
    epochs = int(tr.epochs)
    schedule = build_schedule(optimizer, recipe.schedule, epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(s.device.type, enabled=plan.amp_dtype == torch.float16)
    ema = ModelEma(model, **ema_args(tr.ema)) if tr.ema else None
    ts = TrainState(model, optimizer, schedule, scaler, ema, planned_epochs=epochs)
    if s.ckpt is not None:
        resume_state(ts, s.ckpt, env, tr, steps_per_epoch, s.say, s.log)
    start_epoch = ts.epoch + 1
    train_model = training_module(model, env, s.device, tr, steps_per_epoch * epochs, s.say, s.log)
    s.log({"type": "start", "recipe": recipe.name, "counts": run.counts, "world_size": env.world_size,
           "global_batch": plan.global_batch, "steps_per_epoch": steps_per_epoch, "landmark_cache": run.cache_info})
    parts = TrainParts(train_model, run.data.preparers["train"], run.criterion, optimizer, schedule)
    opts = EpochOptions(device=s.device, env=env, amp_dtype=plan.amp_dtype, scaler=scaler, grad_clip=tr.grad_clip,
                        ema=ema, log=s.log, log_every=int(tr.log_every), progress=run.progress,
                        max_steps=tr.max_steps_per_epoch)
    plan_at = freezer.epochs + 1
    planning = bool(tr.epochs_from_budget and plan.budget.limited and start_epoch <= plan_at)
    if start_epoch == 1:
        s.say(plan_message(epochs, plan.budget.seconds, bool(tr.epochs_from_budget), plan_at))
    return Loop(run=run, ts=ts, parts=parts, opts=opts, freezer=freezer, budget=plan.budget,
                steps_per_epoch=steps_per_epoch, start_epoch=start_epoch, plan_at=plan_at, planning=planning,
                eval_model=ema.module if ema is not None else model)


def run_epochs(loop: Loop) -> tuple[str | None, bool]:
    """Train, validate and checkpoint epoch after epoch until the plan, the budget or a pause ends it; returns
    why training stopped early (None: it did not) and whether it paused (``train.stop_after_epoch``)."""
    run, ts, tr = loop.run, loop.ts, loop.run.recipe.train
    epoch = loop.start_epoch
    while epoch <= ts.planned_epochs:
        stopped = loop.budget.stop_before(epoch)
        if stopped:
            return stopped, False
        t_epoch = time.monotonic()
        stats = train_epoch(loop, epoch)
        end_epoch(loop, epoch, stats, t_epoch)
        if stats.stopped:
            return f"time budget: stopped inside epoch {epoch} after {stats.steps} steps", False
        if tr.stop_after_epoch and epoch >= int(tr.stop_after_epoch) and epoch < ts.planned_epochs:
            run.say(f"[train] paused after epoch {epoch} (train.stop_after_epoch); continue with --resume "
                    f"{run.run_dir}")
            run.log({"type": "paused", "epoch": epoch})
            return None, True
        epoch += 1
    return None, False


def train_epoch(loop: Loop, epoch: int) -> EpochResult:
    """One epoch's training steps; a non-finite loss stops the run naming the last good checkpoint."""
    run, ts = loop.run, loop.ts
    loader = begin_epoch(run.data, loop.freezer, int(run.recipe.seed), run.env, epoch, loop.start_epoch, run.say)
    try:
        return train_one_epoch(loop.parts, loader, ts.step, epoch=epoch, opts=loop.opts,
                               deadline=loop.budget.deadline())
    except NonFiniteLossError as e:
        last = run.run_dir / LAST
        where = (f"; the last good checkpoint is {last} (epoch {epoch - 1})" if last.is_file()
                 else "; no checkpoint was written yet")
        run.log({"type": "error", "epoch": epoch, "step": ts.step.global_step, "error": str(e)})
        raise NonFiniteLossError(str(e) + where) from None


def end_epoch(loop: Loop, epoch: int, stats: EpochResult, t_epoch: float) -> None:
    """Validate, keep the best model, set the epoch plan (once, from the budget), write ``last.pt``, log and say
    the epoch's line."""
    run, ts, budget = loop.run, loop.ts, loop.budget
    row, vm, improved, val_s = validate_epoch(loop, epoch, stats, t_epoch)
    budget.end_epoch(time.monotonic() - t_epoch, val_s, run.counts["val"], run.counts.get("test", 0))
    planned_now = loop.planning and epoch == loop.plan_at
    if run.env.is_main:
        if improved:
            save_best(run, loop.eval_model, epoch, vm)
        if planned_now:
            ts.planned_epochs = budget.plan_epochs(stats, row["epoch_s"], int(run.recipe.train.epochs), done=epoch)
    ts.planned_epochs = int(broadcast_object(ts.planned_epochs, run.env))
    schedule = loop.parts.schedule
    if ts.planned_epochs != schedule.total_steps // loop.steps_per_epoch:
        schedule.total_steps = ts.planned_epochs * loop.steps_per_epoch
    rng_states = gather_rng(run.env)
    ts.epoch = epoch
    if run.env.is_main:
        save_checkpoint(run.run_dir / LAST, {
            **ts.state_dict(), "recipe": run.recipe.to_dict(),
            "sampler": {"epoch": epoch, "seed": int(run.recipe.seed)}, "rng_per_rank": rng_states,
            "elapsed_s": budget.elapsed(), "world_size": run.env.world_size, "sessions": run.sessions,
        })
    run.log({"type": "epoch", **row, "improved": improved, "step": ts.step.global_step})
    of = f"{ts.planned_epochs}" if not loop.planning or epoch >= loop.plan_at else f"<={run.recipe.train.epochs}"
    run.say(epoch_line(row, of, budget.elapsed(), improved))
    if planned_now:
        minutes = (budget.seconds or 0.0) / 60
        run.say(f"[plan] {ts.planned_epochs} epochs fit the {minutes:g}-minute budget on this machine (epoch "
                f"{epoch} took {row['epoch_s']:.0f}s); the schedule now ends at epoch {ts.planned_epochs}")
        run.log({"type": "plan", "epochs": ts.planned_epochs, "budget_min": minutes, "after_epoch": epoch})
    barrier(run.env)


def validate_epoch(loop: Loop, epoch: int, stats: EpochResult, t_epoch: float
                   ) -> tuple[dict[str, Any], dict[str, Any], bool, float]:
    """The epoch's validation: its history row, metrics, whether it is the best so far (recorded in the
    state) and the validation pass's seconds."""
    run, ts = loop.run, loop.ts
    options = PredictOptions(criterion=run.criterion, autocast=precision_autocast(run.device, run.amp_dtype),
                             progress=run.progress, desc=f"val {epoch}", tta_flip=bool(run.recipe.train.tta_flip))
    val = predict_split(loop.eval_model, run.data.loaders["val"], run.data.preparers["val"], device=run.device,
                        env=run.env, options=options)
    vm = split_metrics(val, run.data.classes)
    score = float(vm.get(run.recipe.train.select_metric) or 0.0)
    improved = score > ts.best
    if improved:
        ts.best, ts.best_epoch = score, epoch
    row = epoch_row(epoch, stats, val, vm, time.monotonic() - t_epoch, loop.budget.elapsed())
    ts.history.append(row)
    return row, vm, improved, val.seconds


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


def gather_rng(env: DistEnv) -> dict[int, Any]:
    mine = capture_rng_state()
    if not env.distributed:
        return {0: mine}
    import torch.distributed as dist

    parts: list[Any] = [None] * env.world_size
    dist.all_gather_object(parts, mine)
    return dict(enumerate(parts))

