"""Weights as data: one frozen record per weight set, named ``architecture.tag``.

Why records, as timm's ``pretrained_cfg`` and torchvision's ``Weights``: what a weight set is (its file and
sha256, class names, preprocessing, calibration, the metrics it reached and on which split, size, licence, the
recipe and exact command that trained it, where it came from) is data about a file, not code. Adding a trained
model is adding a record, never registering a new architecture; ``poster-fer info --list`` and
``poster_fer.list_models(pretrained=True)`` read these, and tests check every record against its file.

The records live in ``poster_fer/pretrained/records.json``, and a record is a
:class:`~poster_fer.card.ModelCard` (``WeightsRecord`` is its older name). Two kinds:

- weights that ship in the package: the index entry is ``file`` (relative to ``poster_fer/pretrained``), its
  ``sha256``, the ONNX twin, ``default`` and ``aliases``; the description is the folder's ``meta.json`` (stored
  once: the safetensors header, covered by the sha256, holds the same text);
- the authors' official checkpoints (``file`` None: users download them; the record gives their class order
  and channel order, so :func:`poster_fer.load_official` never guesses class names from a head's size).

Names from before the split (``poster_v1_ferplus_mfn64_image``) resolve with a DeprecationWarning.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..architectures import RETIRED
from ..card import ModelCard, pretrained_root
from ..naming import name_matches, warn_deprecated

__all__ = ["RECORDS_FILE", "ModelCard", "WeightsRecord", "find_official", "get_weights", "list_weights", "load_records",
           "pretrained_root"]

RECORDS_FILE = "records.json"




#: The weights record is the model card (one type describes a model, published or not).
WeightsRecord = ModelCard


def _index_card(name: str, entry: Mapping[str, Any]) -> ModelCard:
    """A records.json entry as a card. A shipped model's entry holds only what the index needs (file, sha256,
    ONNX twin, default, aliases): its card is the folder's meta.json, stored once. A download record (no folder)
    holds its whole description."""
    if entry.get("file") is None:
        return ModelCard.from_dict(name, entry)
    side = pretrained_root() / Path(str(entry["file"])).parent / "meta.json"
    index = {k: v for k, v in entry.items() if k != "architecture"}
    try:
        card = ModelCard.from_meta(json.loads(side.read_text(encoding="utf-8")))
        problem = None if card.name == name else f"it names the weights {card.name!r}"
    except (OSError, json.JSONDecodeError, ValueError) as e:
        problem = str(e)
    if problem is not None:  # the others still list and load; this one says what is wrong when used
        return ModelCard.from_dict(name, {**index, "description": f"(unusable: {side}: {problem}; reinstall "
                                                                  "poster-fer)"})
    return dataclasses.replace(card, **index)


@functools.lru_cache(maxsize=1)
def load_records() -> types.MappingProxyType:
    """Every record, by name, read once from ``poster_fer/pretrained/records.json``."""
    path = pretrained_root() / RECORDS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"{path}: unreadable weight records ({e}); reinstall poster-fer") from None
    records = {name: _index_card(name, values) for name, values in data.items() if not name.startswith("_")}
    return types.MappingProxyType(records)


def _aliases() -> dict[str, str]:
    return {alias: rec.name for rec in load_records().values() for alias in rec.aliases}


def list_weights(pattern: str | None = None, shipped_only: bool = False) -> list[str]:
    """Weight-set names (``architecture.tag``), sorted; ``pattern`` as in :func:`poster_fer.list_models`."""
    return sorted(n for n, r in load_records().items()
                  if name_matches(n, pattern) and (r.shipped or not shipped_only))


def get_weights(name: str) -> WeightsRecord:
    """The record of ``architecture.tag``, of an architecture's default weights (a bare architecture name), or
    of a retired name (with a DeprecationWarning)."""
    records = load_records()
    if name in records:
        return records[name]
    old = _aliases()
    if name in old:
        warn_deprecated(f"weights name {name!r} is deprecated; use {old[name]!r}")
        return records[old[name]]
    if "." not in name:
        # Resolved from the torch-free table of architectures, so no PyTorch is needed.
        arch = RETIRED.get(name, name)
        if arch != name:
            warn_deprecated(f"model name {name!r} is deprecated; use {arch!r}")
        defaults = [r for r in records.values() if r.architecture == arch and r.default]
        if defaults:
            return defaults[0]
        tags = [r.name for r in records.values() if r.architecture == arch]
        if tags:
            return records[tags[0]]
    raise KeyError(f"no weights named {name!r}; known: {', '.join(list_weights())}")


def find_official(architecture: str, num_classes: int) -> list[WeightsRecord]:
    """Records of downloadable (official) weight sets for an architecture and head size."""
    return [r for r in load_records().values()
            if not r.shipped and r.architecture == architecture and r.num_classes == num_classes]
