"""Weights that ship inside the package, and ``create_model(name, pretrained=True, num_classes=N)``.

Why in the package: a FER tool must label a photo right after ``pip install``, offline. The project's own
trained weight sets (docs/model-card.md) are package data in ``poster_fer/pretrained/<architecture>.<tag>/``
(our safetensors format, float16 storage loaded as float32), each described by a record in
``poster_fer/pretrained/records.json`` (:mod:`poster_fer.weights.records`). Nothing here downloads anything.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .architectures import list_architectures
from .constants import DEFAULT_MODEL, OFFICIAL_DEFAULT_MODEL, OFFICIAL_SUFFIXES
from .naming import warn_deprecated
from .weights.records import get_weights, list_weights, pretrained_root

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DEFAULT_MODEL", "OfficialOptions", "create_model", "is_official_checkpoint", "list_models",
           "list_pretrained", "open_checkpoint", "pretrained_path", "pretrained_root", "resolve_weights"]

log = logging.getLogger("poster_fer")

# DEFAULT_MODEL (the weights used when none are given) is defined in :mod:`poster_fer.constants`, which imports
# nothing heavy, so ``poster-fer --help`` can show it without loading torch; it stays importable from here.

def list_models(pattern: str | None = None, pretrained: bool = False, available: bool | None = None) -> list[str]:
    """Registered architectures; with ``pretrained=True`` the weight sets instead (``architecture.tag``).
    ``pattern``: shell wildcards (``"*mfn*"``) or a substring.

    Weight sets are of two kinds: those whose files ship in the package (``create_model(name, pretrained=True)``
    loads them offline) and records of the authors' official checkpoints, which you download yourself and open
    with :func:`poster_fer.load_official`. ``available=True`` lists only the first, ``available=False`` only the
    second; None (the default, as before) both. Needs no PyTorch."""
    if pretrained:
        names = list_weights(pattern)
        if available is None:
            return names
        return [n for n in names if get_weights(n).shipped is bool(available)]
    if available is not None:
        raise ValueError("available= filters weight sets: pass pretrained=True with it")
    return list_architectures(pattern)


def list_pretrained() -> list[str]:
    """Weight sets whose files ship with the package."""
    return list_weights(shipped_only=True)


def pretrained_path(name: str = DEFAULT_MODEL) -> Path:
    """The saved-model folder of shipped weights (checked against the record's sha256); a clear error when the
    name is unknown, the weights do not ship, or the install lacks them."""
    return get_weights(name).verify()


def resolve_weights(weights: str | Path | None) -> Path:
    """A checkpoint argument as a path: None is the default model, a weights name (one that is not also an
    existing path) its folder in the package, anything else the path as given. So every ``--weights`` takes
    ``poster_v1_mfn64_image.ferplus`` (or a retired name) as well as a directory."""
    if weights is None:
        return pretrained_path(DEFAULT_MODEL)
    if isinstance(weights, str) and not Path(weights).exists():
        try:
            record = get_weights(weights)
        except KeyError:
            return Path(weights).expanduser()
        return record.verify()
    return Path(weights).expanduser()


def is_official_checkpoint(path: str | Path, model: str | None = None) -> bool:
    """The one rule every ``--weights`` follows: a file with an official suffix (``.pth``, ``.pt``, ``.tar``, ...)
    is the authors' format, read as architecture ``model`` (default ``poster_v1``); anything else is ours (a
    folder, ``.safetensors``, ``.onnx``), which records its own architecture, so naming one is refused."""
    p = Path(path)
    official = p.is_file() and p.suffix.lower() in OFFICIAL_SUFFIXES
    if model is not None and not official:
        raise ValueError(f"{p}: --model names the architecture of an official checkpoint "
                         f"({', '.join(OFFICIAL_SUFFIXES)}); this is a poster-fer model, which records its own: "
                         "drop --model")
    return official


@dataclass(frozen=True)
class OfficialOptions:
    """How to read one of the authors' ``.pth`` checkpoints, which (unlike ours) do not describe themselves:
    ``model`` the architecture or an official weights name (default ``poster_v1``), ``num_classes`` / ``classes``
    the head (default: from the file and the record), ``channel_order`` the input's (default: what their code
    used). Given for one of ours, it is refused (ours record all of this)."""

    model: str | None = None
    num_classes: int | None = None
    classes: tuple[str, ...] | None = None
    channel_order: str | None = None

    @classmethod
    def from_legacy(cls, official: OfficialOptions | None, options: dict[str, Any],
                    where: str) -> OfficialOptions | None:
        """``official`` with the options passed the old way (``model=``, ``num_classes=``, ``classes=``,
        ``channel_order=`` as separate keywords, popped from ``options``) merged in; warns that they are
        deprecated."""
        given = {k: options.pop(k) for k in ("model", "num_classes", "classes", "channel_order") if k in options}
        given = {k: v for k, v in given.items() if v is not None}
        if not given:
            return official
        warn_deprecated(f"{where}({', '.join(f'{k}=' for k in given)}) is deprecated: pass "
                        f"official=poster_fer.hub.OfficialOptions({', '.join(f'{k}=...' for k in given)})")
        if given.get("classes") is not None:
            given["classes"] = tuple(given["classes"])
        return dataclasses.replace(official or cls(), **given)


def open_checkpoint(path: str | Path, official: OfficialOptions | None = None, device: Any = "cpu") -> nn.Module:
    """The one way a PyTorch model is opened from a file, by :func:`is_official_checkpoint`'s rule: ours through
    :func:`poster_fer.load_model` (the card says everything), the authors' through
    :func:`poster_fer.load_official` with ``official``. Every command, the Recognizer, the server, evaluation
    and training's init open checkpoints here."""
    from .weights import load_model, load_official

    opts = official or OfficialOptions()
    if not is_official_checkpoint(path, opts.model):  # naming an architecture for one of ours is refused there
        ignored = [f.name for f in dataclasses.fields(opts) if getattr(opts, f.name) is not None]
        if ignored:  # as before: ours record their own head and input; said, not silently dropped
            log.warning("%s: a poster-fer model records its own classes and input; ignoring %s", path,
                        ", ".join(ignored))
        return load_model(path, device=device)
    return load_official(path, model=opts.model or OFFICIAL_DEFAULT_MODEL, num_classes=opts.num_classes,
                         classes=None if opts.classes is None else list(opts.classes),
                         channel_order=opts.channel_order).to(device)


def create_model(name: str, pretrained: bool = False, num_classes: int | None = None,
                 classes: Sequence[str] | None = None, **overrides: Any) -> nn.Module:
    """Build architecture ``name`` (``arch`` or ``arch.tag``); ``pretrained=True`` loads weights (the tag's, or
    the architecture's default weights), timm's convention.

    With pretrained weights, ``num_classes`` or ``classes`` (names) different from the weights' replace the
    head and keep everything else (:meth:`~poster_fer.models.base.FERModel.reset_classifier`: rows of classes
    whose names match are kept; a log line says which). Other config overrides cannot be combined with weights
    (they would not fit them). The model comes back in eval mode with ``model.card`` (also
    ``model.pretrained_cfg``: the weights' card; a new head derives its own, without the old calibration,
    metrics or name); without ``pretrained`` it is randomly initialised and its ``pretrained_cfg`` is None.
    """
    from .models import create_model as create_registered
    from .weights import load_model

    if not pretrained:
        if classes is not None:
            num_classes = len(classes) if num_classes is None else num_classes
        kwargs = {**overrides, **({"num_classes": int(num_classes)} if num_classes is not None else {})}
        model = create_registered(name, **kwargs)
        if classes is not None:
            model.card = dataclasses.replace(model.card, classes=tuple(str(c) for c in classes))
        return model
    record = get_weights(name)
    model = load_model(record.verify())
    clashing = {k: v for k, v in overrides.items() if getattr(model.cfg, k, object()) != v}
    if clashing:
        raise ValueError(f"{record.name!r} weights fit their config; cannot override {clashing} (build with "
                         "pretrained=False to train that architecture from scratch)")
    if classes is not None and [str(c) for c in classes] != list(record.classes):
        model.reset_classifier(classes=classes)
    elif num_classes is not None and int(num_classes) != record.num_classes:
        model.reset_classifier(int(num_classes))
    return model
