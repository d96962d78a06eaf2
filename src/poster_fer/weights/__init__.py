"""Weights: our safetensors format, official checkpoints, pretrained backbone files, safe unpickling.

Names load lazily (:mod:`poster_fer._lazy`): the records, the metadata checks and the preprocessing need no
PyTorch, and the torch-free ONNX runtime reads them through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "AFFECTNET_CLASSES": "official", "RAFDB_CLASSES": "official", "ConversionReport": "official",
    "convert_official_state_dict": "official", "load_official": "official", "load_pretrained_ir50": "official",
    "load_pretrained_mobilefacenet": "official",
    "IMAGENET_MEAN": "..constants", "IMAGENET_STD": "..constants", "Preprocessing": "preprocessing",
    "create_transform": "preprocessing",
    "WeightsRecord": "records", "ModelCard": "..card", "get_weights": "records", "list_weights": "records",
    "CheckpointError": "..errors", "safe_torch_load": "safe_load",
    "load_model": "io", "read_metadata": "io", "save_model": "io",
}

if TYPE_CHECKING:
    from ..card import ModelCard
    from ..constants import IMAGENET_MEAN, IMAGENET_STD
    from ..errors import CheckpointError
    from .io import load_model, read_metadata, save_model
    from .official import (
        AFFECTNET_CLASSES,
        RAFDB_CLASSES,
        ConversionReport,
        convert_official_state_dict,
        load_official,
        load_pretrained_ir50,
        load_pretrained_mobilefacenet,
    )
    from .preprocessing import Preprocessing, create_transform
    from .records import WeightsRecord, get_weights, list_weights
    from .safe_load import safe_torch_load

__all__ = [
    "AFFECTNET_CLASSES", "CheckpointError", "ConversionReport", "IMAGENET_MEAN", "IMAGENET_STD", "ModelCard",
    "Preprocessing", "RAFDB_CLASSES", "WeightsRecord", "convert_official_state_dict", "create_transform", "get_weights",
    "list_weights", "load_model", "load_official", "load_pretrained_ir50", "load_pretrained_mobilefacenet",
    "read_metadata", "safe_torch_load", "save_model",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, __all__)
