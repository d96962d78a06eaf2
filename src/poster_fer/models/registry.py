"""Model registry: architectures are registered names that fill in a family's dataclass config.

``create_model(name, **overrides)`` builds an architecture with any config field overridden; every model carries
``model.cfg`` and ``model.model_name`` so checkpoints can store what rebuilds it. Names are architectures only;
trained weights are named ``architecture.tag`` in :mod:`poster_fer.weights.records` (timm's convention), and a
weight-set name given here builds its architecture. Names retired by that split stay as aliases that warn.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from ..architectures import ARCHITECTURES, RETIRED
from ..jsonable import to_jsonable
from ..naming import name_matches, warn_deprecated

# family name -> (model class, config class)
_FAMILIES: dict[str, tuple[type[nn.Module], type]] = {}
# registered variant name -> (family name, default config overrides, one-line description)
_VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {}
# retired name -> current architecture name (poster_fer.architectures, the torch-free table)
_ALIASES: dict[str, str] = dict(RETIRED)


def check_ranges(cfg: Any, limits: dict[str, tuple[float, float]]) -> None:
    """Refuse config fields outside ``limits`` (field -> (low, high), inclusive; a tuple field is checked item by
    item; None passes).

    Why: a config also arrives from a checkpoint's metadata, and a width of 12,000 or a depth of 10**6 there
    would allocate gigabytes (or loop for hours) before any weight is compared. The limits sit far above every
    real network, so they only stop nonsense.
    """
    for name, (low, high) in limits.items():
        value = getattr(cfg, name)
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
                raise ValueError(f"{name}={value!r} is outside {low:g}..{high:g}")


def register_family(name: str, model_cls: type[nn.Module], config_cls: type) -> None:
    """Declare a model family (one file, one class, one dataclass config)."""
    _FAMILIES[name] = (model_cls, config_cls)


def register_model(name: str, family: str, **defaults: Any) -> None:
    """Register a named variant of ``family`` with config defaults; its description is the one
    :mod:`poster_fer.architectures` holds (a name missing there is refused, so the torch-free list stays whole)."""
    if name in _VARIANTS:
        raise ValueError(f"model {name!r} is already registered")
    if name not in ARCHITECTURES:
        raise ValueError(f"model {name!r} is not in poster_fer.architectures.ARCHITECTURES: add it there with its "
                         "one-line description")
    _VARIANTS[name] = (family, defaults, ARCHITECTURES[name])


def register_alias(old: str, new: str) -> None:
    """Keep a retired architecture name working: it builds ``new`` with a DeprecationWarning."""
    if old in _VARIANTS or old in _ALIASES:
        raise ValueError(f"model {old!r} is already registered")
    _ALIASES[old] = new


def resolve_alias(name: str) -> str:
    """The current architecture name of ``name`` (itself unless it is a retired alias, which warns)."""
    if name in _ALIASES:
        new = _ALIASES[name]
        warn_deprecated(f"model name {name!r} is deprecated; use {new!r}")
        return new
    return name


def aliases() -> dict[str, str]:
    """Retired architecture names and what they now build."""
    return dict(_ALIASES)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered architecture names, sorted; ``pattern`` filters them (shell wildcards, or a substring)."""
    return sorted(n for n in _VARIANTS if name_matches(n, pattern))


def model_family(name: str) -> str:
    """The family a registered variant belongs to."""
    return _lookup(name)[0]


def describe_model(name: str) -> str:
    """The one-line description of an architecture (from :mod:`poster_fer.architectures`)."""
    return _lookup(name)[2]


def _lookup(name: str) -> tuple[str, dict[str, Any], str]:
    name = architecture_of(name)
    try:
        return _VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None


def architecture_of(name: str) -> str:
    """The registered architecture a name builds: ``arch.tag`` -> ``arch``; a retired alias -> its new name."""
    return resolve_alias(name.split(".", 1)[0])


def build_config(family: str, values: dict[str, Any]) -> Any:
    """Build a family's config from plain values (as stored in checkpoints), rejecting unknown fields."""
    _, config_cls = _FAMILIES[family]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no field(s) {unknown}; fields: {sorted(known)}")
    from_dict: Callable[[dict[str, Any]], Any] | None = getattr(config_cls, "from_dict", None)
    return from_dict(values) if from_dict is not None else config_cls(**values)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (tuples become lists)."""
    return to_jsonable(dataclasses.asdict(cfg))


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered architecture ``name`` (randomly initialised); keyword arguments override its config
    fields. ``arch.tag`` builds ``arch``; loading a tag's weights is :func:`poster_fer.create_model`'s job."""
    name = architecture_of(name)
    family, defaults, _ = _lookup(name)
    model_cls, _ = _FAMILIES[family]
    # A copy: registered defaults may hold mutable sub-configs (an IRConfig) that several variants share.
    cfg = build_config(family, {**copy.deepcopy(defaults), **overrides})
    model = model_cls(cfg)
    model.model_name = name
    model.family = family
    return model


def family_class(family: str) -> type[nn.Module]:
    """The model class of a registered family (KeyError naming the known ones)."""
    if family not in _FAMILIES:
        raise KeyError(f"unknown model family {family!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[family][0]


def build_from_config(name: str, family: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model exactly from a stored (name, family, full config) record."""
    if family not in _FAMILIES:
        raise KeyError(f"unknown model family {family!r}; known: {sorted(_FAMILIES)}")
    model_cls, _ = _FAMILIES[family]
    model = model_cls(build_config(family, config))
    # Checkpoints saved before the architecture/weights split name retired architectures: load them silently.
    model.model_name = _ALIASES.get(name, name)
    model.family = family
    return model
