"""Matching a checkpoint's class names to a dataset's: the same classes in another order are remapped, different
ones refused, so a score is never computed against the wrong outputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..classes import canonical_class_name

__all__ = ["ClassMismatchError", "canonical_class_name", "match_classes"]


class ClassMismatchError(ValueError):
    """The checkpoint's classes and the dataset's classes cannot be matched."""


def match_classes(
    model_classes: Sequence[str], dataset_classes: Sequence[str], by_position: bool = False
) -> np.ndarray | None:
    """Map dataset label indices to model output indices; ``None`` when they already agree.

    Names are compared after :func:`canonical_class_name`, so the same classes in another order (RAF-DB's
    order vs FER2013's) are remapped instead of silently scored against the wrong outputs. ``by_position``
    trusts the order when the names differ (a renamed copy of the same label set). A different class count,
    or different names without ``by_position``, raises :class:`ClassMismatchError`.
    """
    model = [str(n) for n in model_classes]
    data = [str(n) for n in dataset_classes]
    if len(model) != len(data):
        raise ClassMismatchError(
            f"class-count mismatch: the checkpoint has {len(model)} classes ({', '.join(model)}) but the "
            f"dataset has {len(data)} ({', '.join(data)})"
        )
    if model == data or by_position:
        return None
    canon_model = [canonical_class_name(n) for n in model]
    canon_data = [canonical_class_name(n) for n in data]
    if sorted(canon_model) != sorted(canon_data) or len(set(canon_model)) != len(canon_model):
        raise ClassMismatchError(
            f"class-name mismatch: the checkpoint's classes ({', '.join(model)}) are not the dataset's "
            f"({', '.join(data)}); pass --classes-by-position if they are the same classes in the same order"
        )
    mapping = np.array([canon_model.index(c) for c in canon_data], dtype=np.int64)
    return None if np.array_equal(mapping, np.arange(len(model))) else mapping
