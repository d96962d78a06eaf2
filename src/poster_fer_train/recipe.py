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
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from poster_fer.assets import expand_shared
from poster_fer.constants import IMAGENET_MEAN, IMAGENET_STD
from poster_fer.weights.preprocessing import Preprocessing


class RecipeError(ValueError):
    """A recipe file or override that cannot be used (the message names the file or key)."""


def _refuse_unknown(section: str, given: Mapping[str, Any], known: Any) -> None:
    """Refuse keys a section does not have, naming them and the known ones."""
    known = tuple(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise RecipeError(f"unknown {section} key(s) {unknown}; known: {sorted(known)}")


class _Section:
    """Shared by the typed sections with fixed keys: parsed once from the recipe's dict, back to a plain dict."""

    SECTION = ""

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None) -> Any:
        """The typed section (missing keys take the defaults stated on the class; unknown keys are refused)."""
        section = dict(section or {})
        _refuse_unknown(cls.SECTION, section, (f.name for f in fields(cls)))  # type: ignore[arg-type]
        return cls(**section)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict a saved run records (the same keys as the YAML section)."""
        return copy.deepcopy({f.name: getattr(self, f.name) for f in fields(self)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class DataSettings(_Section):
    """The recipe's ``data`` section: where the data is, how it is split, loaded, augmented and normalised."""

    SECTION = "data"
    kind: str = "folder"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    val_fraction: float | None = None
    val_seed: int = 0
    max_samples: Any = None  # None, a count, or {split: count}
    subset_seed: int = 0
    pipeline: str = "transforms"
    transform: str = "official_v1"
    erasing: Any = None
    augment: dict[str, Any] = field(default_factory=dict)
    degrade: dict[str, Any] = field(default_factory=dict)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    channel_order: str = "RGB"
    grayscale: bool = False
    crop_geometry: Any = None
    resize_interpolation: str = "bilinear"
    num_workers: int = 4

    def preprocessing(self, input_size: int) -> Preprocessing:
        """The input contract these settings describe at ``input_size``: what the loaders feed the model and
        what the saved model records, built from one place."""
        return Preprocessing.from_dict({
            "input_size": int(input_size), "mean": self.mean, "std": self.std, "channel_order": self.channel_order,
            "grayscale": bool(self.grayscale), "resize_interpolation": self.resize_interpolation,
            "crop_geometry": self.crop_geometry or None})

    def with_preprocessing(self, prep: Preprocessing) -> DataSettings:
        """These settings with the input contract of ``prep`` (a ``model.init``'s own preprocessing)."""
        stored = prep.to_meta()
        return replace(self, **{k: stored[k] for k in PREPROCESSING_KEYS})


#: The data keys that describe the model's input contract (a ``model.init`` sets them from its weights).
PREPROCESSING_KEYS = ("mean", "std", "channel_order", "grayscale", "resize_interpolation", "crop_geometry")


@dataclass(frozen=True)
class ModelSettings(_Section):
    """The recipe's ``model`` section: a registered name with its config and pretrained backbone files, or
    ``init`` (shipped weights or a saved model) to fine-tune."""

    SECTION = "model"
    name: str = "poster_v1"
    init: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    pretrained: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScheduleShape:
    """The learning-rate schedule's shape parameters (``schedule`` keys besides ``name``) with their defaults;
    which kinds read which: see :class:`~poster_fer_train.optim.StepSchedule`."""

    gamma: float = 0.98
    warmup_epochs: float = 0.0
    warmup_start: float = 0.01
    min_lr_ratio: float = 0.0
    pct_start: float = 0.25
    div_factor: float = 25.0
    final_div_factor: float = 1e4


_OPTIMIZER_COMMON = ("lr", "weight_decay", "no_decay_1d", "lr_mult", "fused", "sam")
#: The option keys each named section accepts besides ``name`` (their defaults live with the code that builds
#: them: the loss classes, ``build_optimizer``, :class:`ScheduleShape`).
OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "loss": {"ce": ("smoothing",), "lsce": ("smoothing",), "official_v1": ("smoothing", "lsce_weight", "ce_weight"),
             "soft_ce": ()},
    "optimizer": {"adam": (*_OPTIMIZER_COMMON, "betas", "eps"), "adamw": (*_OPTIMIZER_COMMON, "betas", "eps"),
                  "sgd": (*_OPTIMIZER_COMMON, "momentum", "nesterov")},
    "schedule": dict.fromkeys(("constant", "exponential", "cosine", "onecycle"),
                              tuple(f.name for f in fields(ScheduleShape))),
}


class _NamedSection:
    """Shared by ``loss``, ``optimizer`` and ``schedule``: a ``name`` and the options that name takes. A recipe
    that names another kind replaces the whole section, so the options are exactly those given."""

    SECTION = ""
    DEFAULT: dict[str, Any] = {}
    name: str
    options: dict[str, Any]

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None) -> Any:
        """Typed and checked: an empty section is the default one; an unknown name or option is refused."""
        section = dict(section or cls.DEFAULT)
        name = str(section.pop("name", cls.DEFAULT["name"])).lower()
        known = OPTIONS[cls.SECTION]
        if name not in known:
            raise RecipeError(f"unknown {cls.SECTION} name {name!r}; known: {sorted(known)}")
        _refuse_unknown(cls.SECTION, section, known[name])
        return cls(name=name, options=section)  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **copy.deepcopy(self.options)}


@dataclass(frozen=True)
class LossSettings(_NamedSection):
    """The recipe's ``loss`` section (see :func:`~poster_fer_train.losses.build_loss`)."""

    SECTION = "loss"
    DEFAULT = {"name": "lsce", "smoothing": 0.1}
    name: str = "lsce"
    options: dict[str, Any] = field(default_factory=lambda: {"smoothing": 0.1})


@dataclass(frozen=True)
class OptimizerSettings(_NamedSection):
    """The recipe's ``optimizer`` section (see :func:`~poster_fer_train.optim.build_optimizer`)."""

    SECTION = "optimizer"
    DEFAULT = {"name": "adam", "lr": 4e-5, "weight_decay": 0.0}
    name: str = "adam"
    options: dict[str, Any] = field(default_factory=lambda: {"lr": 4e-5, "weight_decay": 0.0})


@dataclass(frozen=True)
class ScheduleSettings(_NamedSection):
    """The recipe's ``schedule`` section (see :func:`~poster_fer_train.optim.build_schedule`)."""

    SECTION = "schedule"
    DEFAULT = {"name": "constant"}
    name: str = "constant"
    options: dict[str, Any] = field(default_factory=dict)

    def shape(self) -> ScheduleShape:
        return ScheduleShape(**self.options)


@dataclass(frozen=True)
class TrainSettings(_Section):
    """The recipe's ``train`` section, typed: every key, its type and its default in one place (DEFAULTS["train"] is
    built from it), read by the trainer as attributes (``tr.epochs``) instead of ``dict.get`` calls that each
    carried their own default."""

    SECTION = "train"

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
    def from_recipe(cls, recipe: Mapping[str, Any] | Recipe) -> TrainSettings:
        """The typed view of ``recipe["train"]`` (a :class:`Recipe` already holds it)."""
        if isinstance(recipe, Recipe):
            return recipe.train
        return cls.from_dict(recipe.get("train"))


SECTIONS = ("data", "model", "loss", "optimizer", "schedule", "train")
#: The typed class of each section.
SECTION_TYPES: dict[str, Any] = {"data": DataSettings, "model": ModelSettings, "loss": LossSettings,
                                 "optimizer": OptimizerSettings, "schedule": ScheduleSettings,
                                 "train": TrainSettings}
#: Nested values whose keys are not checked here (their consumers validate them).
FREE_FORM = {("data", "options"), ("data", "train_options"), ("data", "augment"), ("data", "degrade"),
             ("data", "max_samples"), ("model", "config"), ("model", "pretrained"), ("train", "distill")}


@dataclass(frozen=True)
class Recipe:
    """A whole recipe, typed: each section parsed and checked once (:meth:`from_dict`), then passed on as
    attributes. :meth:`to_dict` gives back the plain dict that checkpoints, ``results.json`` and saved models
    record, in the same shape as the YAML."""

    name: str | None = None
    description: str = ""
    source: str | None = None
    seed: int = 0
    device: str = "auto"
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    @classmethod
    def from_dict(cls, recipe: Mapping[str, Any]) -> Recipe:
        """Parse a recipe dict (a loaded one, or a partial one: missing keys and sections take the defaults)."""
        _refuse_unknown("top-level", recipe, (f.name for f in fields(cls)))
        values = {k: v for k, v in recipe.items() if k not in SECTION_TYPES}
        sections = {k: SECTION_TYPES[k].from_dict(recipe.get(k)) for k in SECTIONS}
        return cls(**values, **sections)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict (the form saved runs record)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in SECTION_TYPES}
        for section in SECTIONS:
            out[section] = getattr(self, section).to_dict()
        return out

    def with_data(self, data: DataSettings) -> Recipe:
        return replace(self, data=data)

    def with_train(self, **changes: Any) -> Recipe:
        return replace(self, train=replace(self.train, **changes))


#: Every recipe key with its default, as a dict (built from the typed sections: the defaults are stated there).
DEFAULTS: dict[str, Any] = Recipe().to_dict()


@dataclass(frozen=True)
class RecipeRequest:
    """A recipe as a command asks for it: a name, file or dict, with ``key=value`` overrides and ``--data``."""

    recipe: str | Mapping[str, Any]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    data_root: str | None = None

    def load(self) -> Recipe:
        return read_recipe(self.recipe if isinstance(self.recipe, str) else dict(self.recipe), dict(self.overrides),
                           self.data_root)


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
    """The full recipe as a plain dict: DEFAULTS <- file (with its bases) <- ``overrides`` <- ``data_root``; paths
    expanded, every key checked (:func:`read_recipe` gives it typed)."""
    return read_recipe(name_or_file, overrides, data_root).to_dict()


def read_recipe(name_or_file: str | Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                data_root: str | None = None) -> Recipe:
    """The full recipe, typed and checked once: DEFAULTS <- file (with its bases) <- ``overrides`` <-
    ``data_root``; paths expanded. An unknown key is refused with the file (or ``recipe dict``) and the key."""
    if isinstance(name_or_file, Mapping):
        raw, where, source = copy.deepcopy(dict(name_or_file)), "recipe dict", None
    else:
        path = _recipe_path(name_or_file)
        raw, where, source = _read_yaml(path), str(path), str(path)
    merged = deep_merge(DEFAULTS, raw, replace=("loss", "optimizer", "schedule"))
    if merged.get("name") is None:
        merged["name"] = Path(source).stem if source else "custom"
    try:
        for key, value in (overrides or {}).items():
            set_key(merged, key, value)
        if data_root is not None:
            merged["data"]["root"] = data_root
            merged["data"]["kind"] = kind_for_root(merged["data"]["kind"], data_root)
        recipe = Recipe.from_dict(merged)
    except RecipeError as e:
        raise RecipeError(f"{where}: {e}") from None
    model = replace(recipe.model, pretrained={k: expand_path(v) for k, v in (recipe.model.pretrained or {}).items()
                                                     if v})
    return replace(recipe, data=replace(recipe.data, root=expand_path(recipe.data.root)), model=model,
                   source=source)


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
