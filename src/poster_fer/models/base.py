"""What every poster-fer model carries besides its layers: its names, its weight record, and head surgery.

Declared once here (timm keeps ``pretrained_cfg`` and ``reset_classifier`` on every model the same way) so no
code sets ad-hoc attributes on a model:

- ``model_name`` / ``family``: the registered architecture that rebuilds it (set by the registry);
- ``pretrained_cfg``: the frozen :class:`poster_fer.weights.records.WeightsRecord` of the weights it was
  loaded from, or None when randomly initialised;
- ``meta``: the metadata record stored beside the weights (classes, preprocessing, calibration, provenance,
  metrics); empty for a new model.

Methods: :meth:`FERModel.reset_classifier` (new head, rows of classes that keep their name carried over) and
:meth:`FERModel.predict_proba` (calibrated probabilities, equal to the Recognizer's).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..classes import match_by_name
from ..probabilities import calibrated_probabilities

__all__ = ["FERModel"]

log = logging.getLogger("poster_fer")

#: Metadata that describes the trained head; a new head invalidates it.
HEAD_META_KEYS = ("logit_bias", "temperature", "metrics")


class FERModel(nn.Module):
    """Base of the model families: ``head.linear`` is the classifier, ``cfg.num_classes`` its width."""

    cfg: Any
    head: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.model_name: str | None = None
        self.family: str | None = None
        self.pretrained_cfg: Any = None
        self.meta: dict[str, Any] = {}

    @property
    def classes(self) -> list[str] | None:
        """The class names of the outputs, when the model records them (``meta["classes"]``)."""
        names = self.meta.get("classes")
        return None if names is None else [str(n) for n in names]

    def get_classifier(self) -> nn.Linear:
        return self.head.linear

    def reset_classifier(self, num_classes: int | None = None, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Replace the head with one of ``num_classes`` outputs (or ``len(classes)``), keeping everything else.

        With ``classes`` (names) and a model that knows its own, each new class whose expression the old head
        had (compared by :func:`poster_fer.classes.canonical_class_name`: ``happy`` = ``happiness``) keeps its
        trained row; the others start fresh. The calibration and metrics in ``meta`` described the old head and
        are dropped. Returns ``{"kept": [...], "new": [...]}`` (class names) and logs one line saying so.
        """
        if classes is not None:
            classes = [str(c) for c in classes]
            if num_classes is not None and num_classes != len(classes):
                raise ValueError(f"num_classes={num_classes} but {len(classes)} class names were given")
            num_classes = len(classes)
        if num_classes is None or int(num_classes) < 1:
            raise ValueError(f"reset_classifier needs num_classes >= 1 or class names, got {num_classes!r}")
        n = int(num_classes)
        old = self.get_classifier()
        new = nn.Linear(old.in_features, n).to(device=old.weight.device, dtype=old.weight.dtype)
        kept: list[str] = []
        old_names = self.classes
        if classes is not None and old_names is not None:
            with torch.no_grad():
                for i, j in enumerate(match_by_name(old_names, classes)):
                    if j is not None:
                        new.weight[i].copy_(old.weight[j])
                        new.bias[i].copy_(old.bias[j])
                        kept.append(classes[i])
        self.head.linear = new
        self.cfg = dataclasses.replace(self.cfg, num_classes=n)
        for key in HEAD_META_KEYS:
            self.meta.pop(key, None)
        if classes is not None:
            self.meta["classes"] = list(classes)
        else:
            self.meta.pop("classes", None)
        fresh = [c for c in (classes or []) if c not in kept] if classes is not None else [f"{n} new outputs"]
        log.info("%s: new %d-class head (kept the trained rows of %s; new rows for %s); backbone and fusion "
                 "weights unchanged", self.model_name, n, ", ".join(kept) or "no class", ", ".join(fresh) or "none")
        return {"kept": kept, "new": fresh}

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> np.ndarray:
        """Calibrated class probabilities (float32 numpy, ``(B, num_classes)``) of a preprocessed batch, as the
        Recognizer reports them: ``softmax((logits + logit_bias) / temperature)`` from ``meta``.

        Runs in eval mode and restores the previous mode. Use it (not ``softmax(model(x))``) wherever the
        probabilities are shown or thresholded: the shipped models' raw softmax is over-confident.
        """
        was_training = self.training
        self.eval()
        try:
            logits = self(x).float().cpu().numpy()
        finally:
            self.train(was_training)
        return calibrated_probabilities(logits, self.meta)
