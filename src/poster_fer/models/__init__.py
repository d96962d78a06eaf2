"""Model families and the registry. Importing this package registers every variant."""

from . import poster, poster_v2  # noqa: F401  (registration side effects)
from .layers import set_attention_recording, set_fused_attention
from .poster import Poster, PosterConfig
from .poster_v2 import PosterV2, PosterV2Config
from .registry import build_from_config, config_to_dict, create_model, describe_model, list_models, model_family
from .stats import model_stats

__all__ = [
    "Poster", "PosterConfig", "PosterV2", "PosterV2Config", "build_from_config", "config_to_dict",
    "create_model", "describe_model", "list_models", "model_family", "model_stats", "set_attention_recording",
    "set_fused_attention",
]
