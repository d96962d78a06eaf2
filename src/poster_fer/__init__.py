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

from .hub import DEFAULT_MODEL, create_model, list_models, list_pretrained, pretrained_path
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

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "CheckpointError", "Recognizer", "WeightsRecord", "create_model", "create_transform",
           "get_weights", "list_models", "list_pretrained", "load_model", "load_official", "predict",
           "pretrained_path", "read_metadata", "save_model", "to_frame", "__version__"]
