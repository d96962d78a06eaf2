"""Constants shared by every layer of the package (one definition each)."""

from __future__ import annotations

#: ImageNet channel statistics (RGB, 0-1 scale): the normalisation of every official POSTER recipe.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Class lists: each dataset's label order, defined once here and imported by the dataset readers
# (``poster_fer.data``) and the official-checkpoint loader (``poster_fer.weights``), which must agree on it.
# They are lists, as before, so comparisons with metadata loaded from JSON keep working.

#: RAF-DB basic order: file labels 1..7 become indices 0..6 (also the official 7-class POSTER heads' order).
RAFDB_CLASSES: list[str] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
#: AffectNet expression order (0..7; the official 8-class POSTER heads' order); 7-class versions drop Contempt.
AFFECTNET8_CLASSES: list[str] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
AFFECTNET7_CLASSES: list[str] = AFFECTNET8_CLASSES[:7]
#: Kaggle FER2013 emotion order (column ``emotion`` 0..6).
FER2013_CLASSES: list[str] = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
#: FER+ emotion order (the vote columns of ``fer2013new.csv``, without unknown and NF).
FERPLUS_CLASSES: list[str] = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]

#: File suffixes read as the authors' checkpoints (pickles, opened without code execution) rather than our format.
OFFICIAL_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".tar", ".ckpt", ".pkl", ".bin")
