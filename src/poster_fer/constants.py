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
#: The architecture an official checkpoint is read as when none is named (the authors' RAF-DB POSTER).
OFFICIAL_DEFAULT_MODEL = "poster_v1"

#: The weights ``poster-fer predict``, :class:`poster_fer.Recognizer` and :func:`poster_fer.predict` use when
#: given none: the image-only POSTER over the face-recognition MobileFaceNet at 64 px
#: (configs/ferplus_mfn64_long.yaml), chosen on FER+ validation (88.72% against the previous default's 87.40%) by
#: the rule its recipe set before the run, and as fast on photos as the previous default (docs/model-card.md).
#: Defined here rather than in :mod:`poster_fer.hub` (which re-exports it) so the command line's help can name it
#: without importing torch.
DEFAULT_MODEL = "poster_v1_mfn64_image.ferplus"

#: 50 megapixels: the default largest image (width x height) accepted, larger than any camera photo a user is
#: likely to feed in, small enough that one decoded image (150 MB as RGB) cannot exhaust memory. Pillow's own bomb
#: guard only errors at about 179 MP. Used by :mod:`poster_fer.faces.io` (which re-exports it) and as the default
#: of ``--max-pixels``, whose help must not import numpy, Pillow or OpenCV.
DEFAULT_MAX_PIXELS = 50_000_000

#: The ONNX file a saved-model folder carries for the torch-free runtime, beside its weights (every shipped model
#: has one; ``poster-fer export --storage float16 --out FOLDER/model.onnx`` writes one for your own).
ONNX_FILE = "model.onnx"

#: The inference backends ``backend=`` / ``--backend`` accept ("onnx" and "ort" are read as "onnxruntime"): "auto"
#: is PyTorch when installed, else ONNX Runtime (poster_fer.inference.backends).
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime")
