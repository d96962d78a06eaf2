"""Weights: our safetensors format, official checkpoints, pretrained backbone files, safe unpickling."""

from ..constants import IMAGENET_MEAN, IMAGENET_STD
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
from .safe_load import CheckpointError, safe_torch_load

__all__ = [
    "AFFECTNET_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "RAFDB_CLASSES", "CheckpointError", "ConversionReport",
    "Preprocessing", "WeightsRecord", "create_transform", "get_weights", "list_weights",
    "convert_official_state_dict", "load_model", "load_official", "load_pretrained_ir50",
    "load_pretrained_mobilefacenet", "read_metadata", "safe_torch_load", "save_model",
]
