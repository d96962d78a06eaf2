"""poster-fer: POSTER / POSTER++ facial expression recognition.

The public API: build models by registered name, load official checkpoints, save and load our format.
"""

from .models import create_model, list_models
from .weights import CheckpointError, load_model, load_official, read_metadata, save_model

__version__ = "0.1.0"

__all__ = ["CheckpointError", "create_model", "list_models", "load_model", "load_official", "read_metadata",
           "save_model", "__version__"]
