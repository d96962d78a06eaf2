"""A checkpoint's metadata checked against itself and against its weights before anything is allocated.

Why one module: ``meta.json`` is the one part of a checkpoint a person edits by hand, and every command
(predict, eval, export, explain, info, serve) rebuilds a model from it. Without a check first, a width of
12,000 allocates gigabytes before the weights are compared, an input size of 6,000 runs evaluation at 6,000 px,
and a list where a record belongs ends in an ``AttributeError`` deep inside. Here every field is read once and
every problem is one :class:`CheckpointError` naming the file and the field.

Order: :func:`check_metadata` / :func:`parse_metadata` (the record's JSON shape, read into a
:class:`~poster_fer.card.ModelCard` by :meth:`~poster_fer.card.ModelCard.parse_meta`; then on the card: counts,
preprocessing, calibration; no torch needed), then the
config is built (its dataclass refuses values outside sane ranges), then :func:`check_weights_fit` builds the
model on PyTorch's ``meta`` device (shapes only, no memory) and compares every tensor shape with the
safetensors header, so a checkpoint whose config and weights disagree is refused before a real model exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..card import ModelCard
from ..errors import CheckpointError

__all__ = ["check_metadata", "check_weights_fit", "header_shapes", "parse_metadata"]


def _fail(source: Any, field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{source}: metadata field {field!r}: {problem}")


def check_metadata(meta: Any, source: str | Path, expected_format: str | None = None,
                   rebuild: bool = True) -> dict[str, Any]:
    """Return ``meta`` if it describes a usable checkpoint; else raise :class:`CheckpointError` naming ``source``
    and the first bad field. ``expected_format`` (e.g. ``"poster-fer/1"``) is checked when given; ``rebuild=False``
    (an ONNX file: the graph is the model) skips the fields that rebuild a model (format, model, family, config).
    :func:`parse_metadata` is the same check returning the card."""
    parse_metadata(meta, source, expected_format, rebuild)
    return dict(meta)


def parse_metadata(meta: Any, source: str | Path, expected_format: str | None = None,
                   rebuild: bool = True) -> ModelCard:
    """A stored record (meta.json, a safetensors header, an ONNX file's metadata) as its card, checked: the JSON
    shape by :meth:`ModelCard.parse_meta`, then what the card says (the head's size, the preprocessing, the
    calibration and its operating points), each problem one :class:`CheckpointError` naming ``source`` and the
    field. The one place a record from disk becomes a card."""
    card = ModelCard.parse_meta(meta, source, expected_format, rebuild)
    _check_head(card, source)
    _check_preprocessing(card, source)
    _check_calibration(card, source)
    return card


def _check_head(card: ModelCard, source: Any) -> None:
    """As many class names as the config's head has outputs (when both are recorded)."""
    n = card.config.get("num_classes")
    if card.classes and isinstance(n, int) and not isinstance(n, bool) and n != len(card.classes):
        raise _fail(source, "classes", f"{len(card.classes)} names but config.num_classes is {n} (the head's size)")


def _check_preprocessing(card: ModelCard, source: Any) -> None:
    """A preprocessing record that parses, at the model's input size, with a crop of a sane size."""
    from ..faces.align import MAX_CROP_SIDE
    from .preprocessing import Preprocessing

    size = card.config.get("input_size")
    try:
        prep = Preprocessing.from_dict(card.preprocessing, size if isinstance(size, int) else None)
    except (TypeError, ValueError, OverflowError, KeyError) as err:  # OverflowError: int(inf) (found by fuzzing)
        raise _fail(source, "preprocessing", str(err)) from None
    if isinstance(size, int) and prep.input_size != size:
        raise _fail(source, "preprocessing.input_size", f"{prep.input_size} px, but the model (config.input_size) "
                    f"takes {size} px inputs")
    if prep.geometry.width > MAX_CROP_SIDE or prep.geometry.height > MAX_CROP_SIDE:  # also checked by CropGeometry
        raise _fail(source, "preprocessing.crop_geometry", "too large")


def _check_calibration(card: ModelCard, source: Any) -> None:
    """A temperature that can scale logits, one finite logit offset per class, usable operating points."""
    from ..probabilities import POINTS_KEY, get_logit_bias, operating_points, validate_temperature

    if card.temperature is not None:
        try:
            validate_temperature(card.temperature)
        except ValueError as err:
            raise _fail(source, "temperature", str(err)) from None
    try:
        get_logit_bias(card)
    except ValueError as err:
        raise _fail(source, "logit_bias", str(err)) from None
    try:
        operating_points(card)
    except ValueError as err:
        raise _fail(source, POINTS_KEY, str(err).removeprefix(f"{POINTS_KEY}: ")) from None


def header_shapes(weights: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a safetensors header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as err:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({err})") from None


def check_weights_fit(model_cls: Any, cfg: Any, shapes: Mapping[str, tuple[int, ...]], source: str | Path,
                      strict: bool = True) -> None:
    """Build ``model_cls(cfg)`` on the ``meta`` device and compare its state with the file's tensor shapes;
    raise :class:`CheckpointError` listing mismatched (and, when ``strict``, missing and unexpected) tensors."""
    import torch

    try:
        with torch.device("meta"):
            skeleton = model_cls(cfg)
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{source}: metadata field 'config': does not build a model ({err})") from None
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = sorted(set(want) - set(shapes))
    unexpected = sorted(set(shapes) - set(want))
    wrong = [k for k in want if k in shapes and want[k] != tuple(shapes[k])]
    if not strict:
        missing = unexpected = []
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} tensor(s) of another shape, e.g. {k} is {list(shapes[k])} in the file but "
                     f"{list(want[k])} for the recorded config")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}")
    numel = sum(math.prod(s) for s in want.values())
    raise CheckpointError(f"{source}: the weights do not fit the metadata's config ({'; '.join(parts)}; the config "
                          f"describes {numel:,} values): was meta.json edited or taken from another model?")
