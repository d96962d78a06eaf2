"""poster-fer's training app: a second top-level package beside the library ``poster_fer``, installed from the same
project (``pip install 'poster-fer[train]'`` brings what it needs).

The engine (``train_one_epoch``), ``fit(recipe)``, losses, optimisers, schedules, distributed helpers,
checkpoints, landmark-feature caching, distillation, the Table-4 ablation runner (:mod:`poster_fer_train.ablation`)
and release tooling (:mod:`poster_fer_train.release`). ``poster-fer train`` and ``poster-fer ablate`` are its
command-line faces, registered into the library's CLI by name; the library never imports this package
(tests/test_architecture.py). Start from :func:`fit` with a recipe name (``configs/NAME.yaml``), a YAML file or a
dict; see ``docs/training.md``.
"""

from typing import TYPE_CHECKING

from poster_fer._lazy import lazy_exports

# Lazy (PEP 562): `poster-fer train --help` registers this app's commands without importing PyTorch, and a
# torch-free install can still say what to install.
_EXPORTS: dict[str, str] = {
    "BatchAugment": "augment",
    "Batching": "loaders",
    "DataSettings": "recipe", "ModelSettings": "recipe", "LossSettings": "recipe", "OptimizerSettings": "recipe",
    "ScheduleSettings": "recipe", "ScheduleShape": "recipe", "TrainSettings": "recipe",
    "Recipe": "recipe", "RecipeRequest": "recipe", "read_recipe": "recipe",
    "RunOutput": "runlog",
    "InferencePass": "passes",
    "BatchAugmentConfig": "augment",
    "DEFAULTS": "recipe",
    "FitResult": "trainer",
    "LabelSmoothingCrossEntropy": "losses",
    "LandmarkCache": "landmark_cache",
    "ModelEma": "engine",
    "NonFiniteLossError": "engine",
    "OfficialV1Loss": "losses",
    "RecipeError": "recipe",
    "SAM": "optim",
    "SoftTargetCrossEntropy": "losses",
    "StepSchedule": "optim",
    "EpochOptions": "engine", "EpochResult": "engine",
    "StepState": "engine",
    "TrainParts": "engine",
    "TrainingData": "loaders",
    "build_loss": "losses",
    "build_optimizer": "optim",
    "build_schedule": "optim",
    "build_training_data": "loaders",
    "capture_rng_state": "checkpoint",
    "configs_dir": "recipe",
    "find_checkpoint": "checkpoint",
    "fit": "trainer",
    "list_recipes": "recipe",
    "load_checkpoint": "checkpoint",
    "load_recipe": "recipe",
    "load_splits": "loaders",
    "restore_rng_state": "checkpoint",
    "save_checkpoint": "checkpoint",
    "smoothed_cross_entropy": "losses",
    "train_one_epoch": "engine",
}

if TYPE_CHECKING:
    from .augment import BatchAugment, BatchAugmentConfig
    from .checkpoint import capture_rng_state, find_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint
    from .engine import EpochOptions, EpochResult, ModelEma, NonFiniteLossError, StepState, TrainParts, train_one_epoch
    from .landmark_cache import LandmarkCache
    from .loaders import Batching, TrainingData, build_training_data, load_splits
    from .losses import (
        LabelSmoothingCrossEntropy,
        OfficialV1Loss,
        SoftTargetCrossEntropy,
        build_loss,
        smoothed_cross_entropy,
    )
    from .optim import SAM, StepSchedule, build_optimizer, build_schedule
    from .passes import InferencePass
    from .recipe import (
        DEFAULTS,
        DataSettings,
        LossSettings,
        ModelSettings,
        OptimizerSettings,
        Recipe,
        RecipeError,
        RecipeRequest,
        ScheduleSettings,
        ScheduleShape,
        TrainSettings,
        configs_dir,
        list_recipes,
        load_recipe,
        read_recipe,
    )
    from .runlog import RunOutput
    from .trainer import FitResult, fit

__all__ = [
    "DEFAULTS", "Batching", "DataSettings", "InferencePass", "LossSettings", "ModelSettings", "OptimizerSettings",
    "Recipe", "RecipeRequest", "RunOutput", "ScheduleSettings", "ScheduleShape", "TrainSettings", "read_recipe",
    "SAM", "BatchAugment", "BatchAugmentConfig", "EpochOptions", "EpochResult", "TrainParts",
    "FitResult", "LabelSmoothingCrossEntropy", "LandmarkCache", "ModelEma", "NonFiniteLossError", "OfficialV1Loss",
    "RecipeError", "SoftTargetCrossEntropy", "StepSchedule", "StepState", "TrainingData",
    "build_loss", "build_optimizer", "build_schedule", "build_training_data", "capture_rng_state", "configs_dir",
    "find_checkpoint", "fit", "list_recipes", "load_checkpoint", "load_recipe",
    "load_splits", "restore_rng_state", "save_checkpoint", "smoothed_cross_entropy", "train_one_epoch",
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, __all__)
