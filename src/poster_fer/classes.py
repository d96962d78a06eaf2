"""Expression class names: one spelling per expression across datasets, and matching two label sets by name.

Why here, below models, weights and evaluation: the same matching decides which head rows a fine-tuned model
keeps (:meth:`poster_fer.models.base.FERModel.reset_classifier`) and how a model is scored on another dataset's
labels (:func:`poster_fer.evaluation.match_classes`), so the two can never disagree on what "happy" is.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["canonical_class_name", "match_by_name"]

# Spellings of the same expression across RAF-DB, FER2013, FER+ and AffectNet, so a model trained on one
# can be scored on (or fine-tuned to) another's labels without a hand-written class map.
_SYNONYMS = {
    "happiness": "happy", "happy": "happy",
    "sadness": "sad", "sad": "sad",
    "anger": "angry", "angry": "angry",
    "surprise": "surprise", "surprised": "surprise",
    "fear": "fear", "fearful": "fear",
    "disgust": "disgust", "disgusted": "disgust",
    "neutral": "neutral",
    "contempt": "contempt",
}


def canonical_class_name(name: str) -> str:
    """Lower-case name with dataset-specific spellings merged (``Happiness`` and ``happy`` -> ``happy``)."""
    key = str(name).strip().lower()
    return _SYNONYMS.get(key, key)


def match_by_name(old: Sequence[str], new: Sequence[str]) -> list[int | None]:
    """For each class of ``new``, the index of the same expression in ``old`` (or None when ``old`` lacks it)."""
    canon_old = [canonical_class_name(c) for c in old]
    return [canon_old.index(c) if c in canon_old else None for c in (canonical_class_name(n) for n in new)]
