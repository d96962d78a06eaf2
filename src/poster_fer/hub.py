"""Pretrained models shipped inside the package, and ``create_model(name, pretrained=True)``.

Why in the package: a FER tool must label a photo right after ``pip install``, offline. The project's own
models (see ``docs/model-card.md``) are stored as package data in ``poster_fer/pretrained/<name>/`` in our
safetensors format (float16 storage, loaded as float32), next
to the YuNet face detector. Nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .models import create_model as _create_registered
from .models import list_models
from .weights import CheckpointError, load_model

#: The model ``poster-fer predict``, :class:`poster_fer.Recognizer` and :func:`poster_fer.predict` use when
#: given no weights: the image-only POSTER over the face-recognition MobileFaceNet at 64 px
#: (configs/ferplus_mfn64_long.yaml), chosen on FER+ validation (88.72% against the previous default's 87.40%) by
#: the rule its recipe set before the run, and as fast on photos as the previous default (docs/model-card.md).
DEFAULT_MODEL = "poster_v1_ferplus_mfn64_image"

#: Registered variants that have weights in the package (name -> folder under ``poster_fer/pretrained``): the
#: default; the previous default, image-only from scratch at 48 px; the same face-recognition network at 112 px
#: (superseded: less accurate on validation and half as fast, kept so code naming it keeps working); and the
#: two-stream model (the paper's architecture, the first default).
PRETRAINED: dict[str, str] = {name: name for name in (DEFAULT_MODEL, "poster_v1_ferplus_s_image",
                                                      "poster_v1_ferplus_mfn_image", "poster_v1_ferplus_s")}


def pretrained_root() -> Path:
    """The package-data folder holding shipped weights (``poster_fer/pretrained``)."""
    return Path(__file__).resolve().parent / "pretrained"


def list_pretrained() -> list[str]:
    """Registered names whose weights ship with the package (whether or not this install has them)."""
    return sorted(PRETRAINED)


def pretrained_path(name: str = DEFAULT_MODEL) -> Path:
    """The saved-model directory of a shipped model; a clear error when it is unknown or absent."""
    if name not in PRETRAINED:
        raise KeyError(f"no pretrained weights for {name!r}; shipped: {list_pretrained()} "
                       f"(registered architectures: {', '.join(list_models())})")
    path = pretrained_root() / PRETRAINED[name]
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path}: the pretrained weights of {name!r} are missing from this installation "
                              "(a source checkout made before the model was trained, or a broken install); "
                              "reinstall poster-fer or pass --weights / a checkpoint path")
    return path


def resolve_weights(weights: str | Path | None) -> Path:
    """A checkpoint argument as a path: None is the default model, a shipped model's name (one that is not also
    an existing path) its folder in the package, anything else the path as given. So every ``--weights`` takes
    ``poster_v1_ferplus_mfn_image`` as well as a directory."""
    if weights is None:
        return pretrained_path(DEFAULT_MODEL)
    if isinstance(weights, str) and weights in PRETRAINED and not Path(weights).exists():
        return pretrained_path(weights)
    return Path(weights).expanduser()


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build the registered variant ``name``; with ``pretrained=True`` load its shipped weights (timm's convention).

    Config overrides cannot be combined with ``pretrained=True`` (the weights fit one config), except
    ``num_classes`` equal to the shipped one. The pretrained model comes back in eval mode with ``model.meta``
    (classes, preprocessing, temperature) set.
    """
    if not pretrained:
        return _create_registered(name, **overrides)
    model = load_model(pretrained_path(name))
    clashing = {k: v for k, v in overrides.items() if getattr(model.cfg, k, object()) != v}
    if clashing:
        raise ValueError(f"{name!r} pretrained weights fit its shipped config; cannot override {clashing} "
                         "(build with pretrained=False and fine-tune instead)")
    model.model_name = name
    return model
