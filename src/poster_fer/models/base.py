"""What every poster-fer model carries besides its layers: its names, its weight record, and head surgery.

Declared once here (timm keeps ``pretrained_cfg`` and ``reset_classifier`` on every model the same way) so no
code sets ad-hoc attributes on a model:

- ``model_name`` / ``family``: the registered architecture that rebuilds it (set by the registry);
- ``card``: its :class:`poster_fer.card.ModelCard`, the one description (classes, preprocessing,
  calibration, metrics, provenance, licence); ``pretrained_cfg`` is the same card (timm's name) when the weights
  came from a file, None when randomly initialised;
- ``meta``: the card as the old metadata dict, a read-only view kept for one release (writing to it warns and
  goes through the card).

Methods: :meth:`FERModel.reset_classifier` (new head, rows of classes that keep their name carried over) and
:meth:`FERModel.predict_proba` (calibrated probabilities, equal to the Recognizer's).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..card import ModelCard, freeze
from ..classes import match_by_name
from ..naming import warn_deprecated
from ..probabilities import calibrated_probabilities

__all__ = ["FERModel"]

log = logging.getLogger("poster_fer")


class MetaView(dict):
    """``model.meta`` for code written before the card: reads as the old dict; a write warns and is applied to the
    model's current card (so the card stays the one description). Copies and pickles are plain dicts. Nested
    values are copies: change a nested field through ``dataclasses.replace(model.card, ...)``."""

    def __init__(self, model: FERModel) -> None:
        super().__init__(model.card.to_meta())
        self._model = model

    def _write(self, name: str, *args: Any) -> Any:
        warn_deprecated(f"changing model.meta ({name}) is deprecated: build a card with dataclasses.replace("
                        "model.card, ...) and assign model.card")
        card = self._model.card
        current = card.to_meta()
        result = getattr(current, name)(*args)  # the change, on the card as it is now (not a stale view)
        index = {k: getattr(card, k) for k in ("file", "sha256", "onnx", "aliases", "default")}
        self._model.card = dataclasses.replace(ModelCard.from_meta(current), **index)
        super().clear()
        super().update(current)
        return result

    def __setitem__(self, key: str, value: Any) -> None:
        self._write("__setitem__", key, value)

    def __delitem__(self, key: str) -> None:
        self._write("__delitem__", key)

    def pop(self, *args: Any) -> Any:
        return self._write("pop", *args)

    def popitem(self) -> tuple[str, Any]:
        return self._write("popitem")

    def clear(self) -> None:
        self._write("clear")

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._write("update", dict(*args, **kwargs))

    def setdefault(self, *args: Any) -> Any:
        return self._write("setdefault", *args)

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class FERModel(nn.Module):
    """Base of the model families: ``head.linear`` is the classifier, ``cfg.num_classes`` its width."""

    cfg: Any
    head: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.model_name: str | None = None
        self.family: str | None = None
        self._card = ModelCard()
        self._from_weights = False  # whether the weights came from a file (pretrained_cfg is then the card)

    @property
    def card(self) -> ModelCard:
        """The model's card, its architecture and config always those of the network as it is now."""
        from .registry import config_to_dict

        cfg = getattr(self, "cfg", None)
        if cfg is None:
            return self._card
        live = {"architecture": self.model_name or self._card.architecture,
                "family": self.family or self._card.family, "config": freeze(config_to_dict(cfg))}
        if all(getattr(self._card, k) == v for k, v in live.items()):
            return self._card  # the stored card, itself (a shipped model's pretrained_cfg is its record)
        return dataclasses.replace(self._card, **live)

    @card.setter
    def card(self, card: ModelCard) -> None:
        if not isinstance(card, ModelCard):
            raise TypeError(f"model.card takes a ModelCard, not {type(card).__name__}")
        n = int(self.cfg.num_classes) if getattr(self, "cfg", None) is not None else None
        if card.classes and n is not None and len(card.classes) != n:
            raise ValueError(f"{len(card.classes)} class names for a {n}-class head")
        self._card = card

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A whole model pickled before the card (``meta`` and ``pretrained_cfg`` attributes) gets its card."""
        old_meta = state.pop("meta", None)
        old_record = state.pop("pretrained_cfg", None)
        super().__setstate__(state)
        if "_card" not in self.__dict__:
            self._card = ModelCard.from_meta(old_meta or {})
            self._from_weights = old_record is not None

    @property
    def pretrained_cfg(self) -> ModelCard | None:
        """The card of the weights this model was loaded from (timm's name for it); None when randomly
        initialised."""
        return self.card if self._from_weights else None

    @pretrained_cfg.setter
    def pretrained_cfg(self, card: ModelCard | None) -> None:
        self._from_weights = card is not None
        if card is not None:
            self.card = card

    @property
    def meta(self) -> dict[str, Any]:
        """The card as the metadata dict of earlier releases (see :class:`MetaView`); prefer ``model.card``."""
        return MetaView(self)

    @meta.setter
    def meta(self, meta: dict[str, Any]) -> None:
        warn_deprecated("assigning model.meta is deprecated: assign model.card (poster_fer.weights.ModelCard)")
        self.card = ModelCard.from_meta(meta)

    @property
    def classes(self) -> list[str] | None:
        """The class names of the outputs, when the model records them."""
        return list(self._card.classes) or None

    def get_classifier(self) -> nn.Linear:
        return self.head.linear

    def reset_classifier(self, num_classes: int | None = None, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Replace the head with one of ``num_classes`` outputs (or ``len(classes)``), keeping everything else.

        With ``classes`` (names) and a model that knows its own, each new class whose expression the old head
        had (compared by :func:`poster_fer.classes.canonical_class_name`: ``happy`` = ``happiness``) keeps its
        trained row; the others start fresh. The card follows :meth:`ModelCard.with_new_head`: the calibration,
        operating points, metrics and published name described the old head and are dropped. Returns
        ``{"kept": [...], "new": [...]}`` (class names) and logs one line saying so.
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
        self._card = self.card.with_new_head(classes, n)  # the one rule: no stale calibration, metrics or name
        fresh = [c for c in (classes or []) if c not in kept] if classes is not None else [f"{n} new outputs"]
        log.info("%s: new %d-class head (kept the trained rows of %s; new rows for %s); backbone and fusion "
                 "weights unchanged", self.model_name, n, ", ".join(kept) or "no class", ", ".join(fresh) or "none")
        return {"kept": kept, "new": fresh}

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> np.ndarray:
        """Calibrated class probabilities (float32 numpy, ``(B, num_classes)``) of a preprocessed batch, as the
        Recognizer reports them: ``softmax((logits + logit_bias) / temperature)`` from the card.

        Runs in eval mode and restores the previous mode. Use it (not ``softmax(model(x))``) wherever the
        probabilities are shown or thresholded: the shipped models' raw softmax is over-confident.
        """
        was_training = self.training
        self.eval()
        try:
            logits = self(x).float().cpu().numpy()
        finally:
            self.train(was_training)
        return calibrated_probabilities(logits, self.card)
