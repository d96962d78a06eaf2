"""Training: the engine (``train_one_epoch``), ``fit(recipe)``, losses, optimisers, schedules,
distributed helpers, checkpoints and landmark-feature caching. ``poster-fer train`` is the command-line face.

Start from :func:`fit` with a recipe name (``configs/NAME.yaml``), a YAML file or a dict; see
``docs/training.md``.
"""

from .augment import BatchAugment, BatchAugmentConfig
from .checkpoint import capture_rng_state, find_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint
from .engine import ModelEma, NonFiniteLossError, StepState, train_one_epoch
from .landmark_cache import LandmarkCache
from .loaders import TrainingData, build_training_data, load_splits
from .losses import (
    LabelSmoothingCrossEntropy,
    OfficialV1Loss,
    SoftTargetCrossEntropy,
    build_loss,
    smoothed_cross_entropy,
)
from .optim import SAM, StepSchedule, build_optimizer, build_schedule
from .recipe import DEFAULTS, RecipeError, configs_dir, list_recipes, load_recipe
from .trainer import FitResult, fit

__all__ = [
    "DEFAULTS", "SAM", "BatchAugment", "BatchAugmentConfig",
    "FitResult", "LabelSmoothingCrossEntropy", "LandmarkCache", "ModelEma", "NonFiniteLossError", "OfficialV1Loss",
    "RecipeError", "SoftTargetCrossEntropy", "StepSchedule", "StepState", "TrainingData",
    "build_loss", "build_optimizer", "build_schedule", "build_training_data", "capture_rng_state", "configs_dir",
    "find_checkpoint", "fit", "list_recipes", "load_checkpoint", "load_recipe",
    "load_splits", "restore_rng_state", "save_checkpoint", "smoothed_cross_entropy", "train_one_epoch",
]
