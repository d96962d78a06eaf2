"""Training recipes: YAML files in ``configs/`` merged over :data:`DEFAULTS`, with ``key=value`` overrides.

A recipe is a nested dict with sections ``data``, ``model``, ``loss``, ``optimizer``, ``schedule`` and
``train`` (see ``docs/training.md`` for every key). A file may start from another recipe with
``base: NAME`` (the ``*_official`` variants do). Overrides use dotted keys (``train.epochs=2``,
``optimizer.lr=1e-4``); a bare key is accepted when exactly one section has it (``epochs=2``). Paths may start
with ``${shared}`` (the shared-asset folder).
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from poster_fer.assets import expand_shared

#: Every recipe key with its default. Sections whose values are free-form dicts are listed in FREE_FORM.
DEFAULTS: dict[str, Any] = {
    "name": None,
    "description": "",
    "source": None,
    "seed": 0,
    "device": "auto",
    "data": {
        "kind": "folder",
        "root": None,
        "options": {},
        "train_options": {},
        "val_fraction": None,
        "val_seed": 0,
        "max_samples": None,
        "subset_seed": 0,
        "pipeline": "transforms",
        "transform": "official_v1",
        "erasing": None,
        "augment": {},
        "degrade": {},
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "channel_order": "RGB",
        "grayscale": False,
        "crop_geometry": None,
        "resize_interpolation": "bilinear",
        "num_workers": 4,
    },
    "model": {"name": "poster_v1", "init": None, "config": {}, "pretrained": {}},
    "loss": {"name": "lsce", "smoothing": 0.1},
    "optimizer": {"name": "adam", "lr": 4e-5, "weight_decay": 0.0},
    "schedule": {"name": "constant"},
    "train": None,  # filled from TrainSettings below: the one definition of the train keys and their defaults
}

SECTIONS = ("data", "model", "loss", "optimizer", "schedule", "train")
#: Sections whose keys are not checked against DEFAULTS (their consumers validate them).
FREE_FORM = {"loss", "optimizer", "schedule", ("data", "options"), ("data", "train_options"), ("data", "augment"),
             ("data", "degrade"), ("data", "max_samples"), ("model", "config"), ("model", "pretrained"),
             ("train", "distill")}


class RecipeError(ValueError):
    """A recipe file or override that cannot be used (the message names the file or key)."""


@dataclass
class TrainSettings:
    """The recipe's ``train`` section, typed: every key, its type and its default in one place (DEFAULTS["train"] is
    built from it), read by the trainer as attributes (``tr.epochs``) instead of ``dict.get`` calls that each
    carried their own default."""

    epochs: int = 1
    batch_size: int = 100
    eval_batch_size: int | None = None
    amp: str | None = "auto"
    grad_clip: float | None = None
    channels_last: bool = False
    compile: bool = False
    fused_attention: bool = True
    class_balanced: bool = False
    landmark_cache: bool = False
    landmark_cache_mirror: bool = True
    landmark_cache_dtype: str = "float32"
    landmark_cache_batch: int = 16
    landmark_cache_dir: str | None = None
    ema: Any = None  # None, a decay, or {decay, warmup}
    distill: dict[str, Any] | None = None
    select_metric: str = "accuracy"
    log_every: int = 50
    time_budget_min: float | None = None
    epochs_from_budget: bool = False
    tta_flip: bool = False
    threads: int | None = None
    num_threads_interop: int | None = None
    progress: bool = True
    tensorboard: bool = False
    max_steps_per_epoch: int | None = None
    stop_after_epoch: int | None = None
    freeze_epochs: int = 0
    freeze_except: list[str] = field(default_factory=lambda: ["head"])
    deterministic: bool = False

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> TrainSettings:
        """The typed view of ``recipe["train"]`` (keys it lacks take the defaults; unknown keys are refused)."""
        section = dict(recipe.get("train") or {})
        unknown = sorted(set(section) - {f.name for f in fields(cls)})
        if unknown:
            raise RecipeError(f"unknown train key(s) {unknown}")
        return cls(**section)


DEFAULTS["train"] = asdict(TrainSettings())


def configs_dir() -> Path:
    """Where named recipes live: ``$POSTER_FER_CONFIGS``, or the training app's own ``poster_fer_train/configs/``.

    The recipes ship as package data (the repository's top-level ``configs`` is a link to them), so an installed
    wheel trains ``--recipe ferplus_cpu`` exactly as a checkout does.
    """
    env = os.environ.get("POSTER_FER_CONFIGS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent / "configs"


def list_recipes() -> list[str]:
    d = configs_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _recipe_path(name_or_file: str) -> Path:
    p = Path(name_or_file).expanduser()
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise RecipeError(f"{p}: recipe file not found")
        return p
    candidate = configs_dir() / f"{name_or_file}.yaml"
    if not candidate.is_file():
        raise RecipeError(f"unknown recipe {name_or_file!r}: no {candidate} (recipes: {', '.join(list_recipes())})")
    return candidate


def deep_merge(base: dict[str, Any], over: dict[str, Any], replace: tuple[str, ...] = ()) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in replace:
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise RecipeError(f"{path}: recipe inheritance loops ({' -> '.join(str(p) for p in seen)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base:
        parent = _read_yaml(_recipe_path(str(base)) if not Path(str(base)).is_absolute() else Path(base),
                            (*seen, path))
        parent.pop("name", None)
        parent.pop("description", None)
        # A child's optimizer/loss/schedule section replaces the parent's wholesale: their keys depend on the name.
        data = deep_merge(parent, data, replace=("loss", "optimizer", "schedule") if _names_differ(parent, data)
                          else ())
    return data


def _names_differ(parent: dict[str, Any], child: dict[str, Any]) -> bool:
    return any(isinstance(child.get(s), dict) and "name" in child[s] and isinstance(parent.get(s), dict)
               and child[s]["name"] != parent[s].get("name") for s in ("loss", "optimizer", "schedule"))


def _check_keys(recipe: dict[str, Any], where: str) -> None:
    unknown = sorted(set(recipe) - set(DEFAULTS))
    if unknown:
        raise RecipeError(f"{where}: unknown top-level key(s) {unknown}; known: {sorted(DEFAULTS)}")
    for section in SECTIONS:
        if section in FREE_FORM or not isinstance(recipe.get(section), dict):
            continue
        extra = sorted(set(recipe[section]) - set(DEFAULTS[section]))
        if extra:
            raise RecipeError(f"{where}: unknown key(s) {[f'{section}.{k}' for k in extra]}; "
                              f"known: {sorted(DEFAULTS[section])}")


def set_key(recipe: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (dotted, or a bare key found in exactly one section) to ``value`` in place."""
    parts = key.split(".")
    if len(parts) == 1 and key not in DEFAULTS:
        owners = [s for s in SECTIONS if isinstance(recipe.get(s), dict) and key in recipe[s]]
        if len(owners) != 1:
            where = f"several sections ({', '.join(owners)})" if owners else "no section"
            raise RecipeError(f"override {key!r}: {where} has that key; use a dotted key like train.{key}")
        parts = [owners[0], key]
    node = recipe
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            if p in node and node[p] is not None:
                raise RecipeError(f"override {key!r}: {p!r} is not a section")
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def load_recipe(name_or_file: str | dict[str, Any], overrides: dict[str, Any] | None = None,
                data_root: str | None = None) -> dict[str, Any]:
    """The full recipe: DEFAULTS <- file (with its bases) <- ``overrides`` <- ``data_root``; paths expanded."""
    if isinstance(name_or_file, dict):
        raw, where, source = copy.deepcopy(name_or_file), "recipe dict", None
    else:
        path = _recipe_path(name_or_file)
        raw, where, source = _read_yaml(path), str(path), str(path)
    _check_keys(raw, where)
    recipe = deep_merge(DEFAULTS, raw, replace=("loss", "optimizer", "schedule"))
    if recipe.get("name") is None:
        recipe["name"] = Path(source).stem if source else "custom"
    for key, value in (overrides or {}).items():
        set_key(recipe, key, value)
    if data_root is not None:
        recipe["data"]["root"] = data_root
        recipe["data"]["kind"] = kind_for_root(recipe["data"]["kind"], data_root)
    _check_keys({k: v for k, v in recipe.items()}, f"{where} (after overrides)")
    recipe["data"]["root"] = expand_path(recipe["data"]["root"])
    recipe["model"]["pretrained"] = {k: expand_path(v) for k, v in (recipe["model"].get("pretrained") or {}).items()
                                     if v}
    recipe["source"] = source
    return recipe


#: Data kinds that read a folder of class folders, and the one that reads a CSV of ``path,label`` rows.
FOLDER_KINDS, CSV_KIND = ("folder",), "csv"


def kind_for_root(kind: str, root: str) -> str:
    """The data kind ``--data ROOT`` asks for: a ``.csv`` file is a CSV of path,label rows, a folder a folder of
    class folders, whatever the recipe's generic kind says (a FER+, RAF-DB or AffectNet recipe keeps its own)."""
    is_csv = Path(str(root)).suffix.lower() == ".csv"
    if kind in FOLDER_KINDS and is_csv:
        return CSV_KIND
    if kind == CSV_KIND and Path(str(root)).expanduser().is_dir():
        return FOLDER_KINDS[0]
    return kind


def expand_path(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    return str(Path(expand_shared(value)).expanduser())
