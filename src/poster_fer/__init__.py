"""poster-fer: POSTER / POSTER++ facial expression recognition.

The public API: build models by registered name (``pretrained=True`` loads the shipped default model), load
official checkpoints, save and load our format, and label faces in photos::

    import poster_fer
    faces = poster_fer.predict("photo.jpg")            # the default model + bundled YuNet, offline
    rec = poster_fer.Recognizer()                      # the same, reusable; Recognizer("ckpt/") for others
    model = poster_fer.create_model("poster_v1_mfn64_image.ferplus", pretrained=True)   # weights: arch.tag
    tuned = poster_fer.create_model("poster_v1_mfn64_image.ferplus", pretrained=True, num_classes=3)  # new head
    poster_fer.list_models("*mfn*", pretrained=True)   # weight sets; without pretrained: architectures
    table = poster_fer.to_frame(faces)                 # pandas DataFrame, one row per face (needs pandas)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

# Lazy exports (PEP 562, poster_fer._lazy): each public name -> the module (relative to this package) that defines
# it, imported on first access. Why: importing torch and OpenCV took ~1.4 s, and every ``import poster_fer`` (so every
# ``poster-fer --help``) paid it whatever was used. The TYPE_CHECKING imports below name the same objects for type
# checkers and for the import-direction test; tests/test_lazy_imports.py keeps the two lists equal.
_EXPORTS: dict[str, str] = {
    "DEFAULT_MODEL": "constants",
    "ModelCard": "card",
    "create_model": "hub",
    "list_models": "hub",
    "list_pretrained": "hub",
    "pretrained_path": "hub",
    "Recognizer": "inference",
    "predict": "inference",
    "to_frame": "inference.frames",
    "CheckpointError": "weights",
    "WeightsRecord": "weights",
    "create_transform": "weights",
    "get_weights": "weights",
    "load_model": "weights",
    "load_official": "weights",
    "read_metadata": "weights",
    "save_model": "weights",
}

if TYPE_CHECKING:
    from .card import ModelCard
    from .constants import DEFAULT_MODEL
    from .hub import create_model, list_models, list_pretrained, pretrained_path
    from .inference import Recognizer, predict
    from .inference.frames import to_frame
    from .weights import (
        CheckpointError,
        WeightsRecord,
        create_transform,
        get_weights,
        load_model,
        load_official,
        read_metadata,
        save_model,
    )

__all__ = ["DEFAULT_MODEL", "CheckpointError", "ModelCard", "Recognizer", "WeightsRecord", "create_model",
           "create_transform", "get_weights", "list_models", "list_pretrained", "load_model", "load_official",
           "predict", "pretrained_path", "read_metadata", "save_model", "to_frame", "__version__"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, __all__)
