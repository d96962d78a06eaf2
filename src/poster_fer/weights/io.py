"""poster-fer's own weight format: ``model.safetensors`` plus a JSON metadata record.

A saved model is a directory holding ``model.safetensors`` (every tensor, the frozen landmark network
included) and ``meta.json``; the same record is also embedded in the safetensors header so a lone
``.safetensors`` file is self-describing. The record names the registered variant, its family and full config,
the class names and the preprocessing (input size, mean/std, channel order), plus provenance and metrics,
and optionally the softmax ``temperature`` fitted for calibrated confidences (1.0 when absent).
Loading rebuilds the model from the record alone.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..models import build_from_config, config_to_dict
from .official import default_classes
from .preprocessing import Preprocessing
from .safe_load import CheckpointError

FORMAT = "poster-fer/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
_HEADER_KEY = "poster_fer_meta"


def get_temperature(meta: Any) -> float:
    """The calibration temperature a metadata record (or a model with ``.meta``) stores; 1.0 when it has none.

    Every inference path divides logits by this before the softmax, so one stored number calibrates them all.
    """
    record = meta if isinstance(meta, dict) else (getattr(meta, "meta", None) or {})
    value = record.get("temperature")
    return 1.0 if value is None else validate_temperature(value)


def set_temperature(target: Any, temperature: float) -> dict[str, Any]:
    """Store ``temperature`` in a metadata dict, or in a model's ``meta`` (created if missing); returns the dict.

    The value is saved by :func:`save_model` and carried into ONNX exports.
    """
    value = validate_temperature(temperature)
    if isinstance(target, dict):
        meta = target
    else:
        meta = getattr(target, "meta", None)
        if meta is None:
            meta = {}
            target.meta = meta
    meta["temperature"] = value
    return meta


def get_logit_bias(meta: Any) -> list[float] | None:
    """The per-class logit offsets a record stores (``meta["logit_bias"]``), or None.

    Why: a model trained on FER+ inherits its class frequencies (neutral and happiness are 60% of the faces) and
    leans towards them on balanced or posed data. Adding ``-tau * log(prior)`` to the logits (logit adjustment)
    removes that lean; ``tau`` is chosen on validation data. Every inference path computes
    ``softmax((logits + logit_bias) / temperature)``.
    """
    record = meta if isinstance(meta, dict) else (getattr(meta, "meta", None) or {})
    value = record.get("logit_bias")
    if value is None:
        return None
    try:
        bias = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"logit_bias must be a list of numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in bias):
        raise ValueError(f"logit_bias must be finite, got {value!r}")
    classes = record.get("classes")
    if classes is not None and len(classes) != len(bias):
        raise ValueError(f"logit_bias has {len(bias)} values for {len(classes)} classes")
    return bias


def calibrate_logits(logits: np.ndarray, temperature: float = 1.0,
                     logit_bias: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
    """``(logits + logit_bias) / temperature`` in float32: the deployed calibration, computed in one place for
    the torch and ONNX backends and for evaluation, so their probabilities cannot drift apart."""
    out = np.asarray(logits, dtype=np.float32)
    if logit_bias is not None:
        out = out + np.asarray(logit_bias, dtype=np.float32)
    return out if temperature == 1.0 else out / np.float32(temperature)


def validate_temperature(value: Any) -> float:
    """``value`` as a float, refusing what cannot scale logits (zero, negative, NaN, inf, not a number)."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number, got {value!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive finite number, got {value!r}")
    return t


def build_metadata(model: nn.Module, **metadata: Any) -> dict[str, Any]:
    """The record stored beside the weights: the model's ``meta`` (if any) updated with ``metadata``."""
    meta: dict[str, Any] = {}
    meta.update(getattr(model, "meta", {}) or {})
    meta.update({k: v for k, v in metadata.items() if v is not None})
    num_classes = int(model.cfg.num_classes)
    classes = list(meta.get("classes") or default_classes(num_classes))
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for a {num_classes}-class model")
    # one typed record, written in its stored form; missing fields take the defaults (ImageNet stats, RGB)
    prep = Preprocessing.from_dict(meta.get("preprocessing") or {}, int(model.cfg.input_size)).to_meta()
    if meta.get("temperature") is not None:
        meta["temperature"] = validate_temperature(meta["temperature"])
    meta.update({
        "format": FORMAT,
        "model": getattr(model, "model_name", None),
        "family": getattr(model, "family", None),
        "config": config_to_dict(model.cfg),
        "classes": classes,
        "preprocessing": prep,
    })
    if not meta["model"] or not meta["family"]:
        raise ValueError("model has no registered name/family: build it with poster_fer.create_model")
    return json.loads(json.dumps(meta))  # fail early on anything not JSON-serialisable


def save_model(model: nn.Module, path: str | Path, **metadata: Any) -> Path:
    """Save ``model`` to directory ``path`` (``model.safetensors`` + ``meta.json``); returns the directory.

    Keyword arguments become metadata (``classes=[...]``, ``preprocessing={...}``, ``provenance={...}``,
    ``metrics={...}``, ``temperature=1.7``), merged over ``model.meta``.
    """
    path = Path(path)
    meta = build_metadata(model, **metadata)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    text = json.dumps(meta, indent=2, sort_keys=True)
    atomic_write(path / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={_HEADER_KEY: text}))
    atomic_write(path / META_FILE, lambda p: Path(p).write_text(text + "\n"))
    return path


def atomic_write(dest: str | os.PathLike[str], write: Callable[[str], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``dest``, then move it into place: an interrupted or failed
    write never leaves a truncated ``dest`` (nor a stray temporary file)."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _weights_path(path: Path) -> Path:
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected a poster-fer model directory or "
                              f"{WEIGHTS_FILE})")
    return path


def weights_file(path: str | Path) -> Path:
    """The ``.safetensors`` file of a saved model (directory or file), e.g. to hash what a run depended on."""
    return _weights_path(Path(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata record of a saved model (directory or ``.safetensors`` file)."""
    weights = _weights_path(Path(path))
    side = weights.parent / META_FILE
    try:
        if side.is_file():
            return json.loads(side.read_text())
        with safe_open(str(weights), framework="pt") as f:
            header = (f.metadata() or {}).get(_HEADER_KEY)
    except (SafetensorError, json.JSONDecodeError, OSError) as e:
        raise CheckpointError(f"{weights}: unreadable poster-fer metadata ({e})") from None
    if header is None:
        raise CheckpointError(f"{weights}: no poster-fer metadata (neither {META_FILE} nor an embedded record); "
                              "official .pth checkpoints load with poster_fer.load_official")
    return json.loads(header)


def load_model(path: str | Path, device: str | torch.device = "cpu", strict: bool = True) -> nn.Module:
    """Rebuild and load a model saved by :func:`save_model` (eval mode, ``model.meta`` set)."""
    weights = _weights_path(Path(path))
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{weights}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    try:
        model = build_from_config(meta["model"], meta["family"], meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{weights}: metadata does not describe a buildable model ({e})") from None
    try:
        with safe_open(str(weights), framework="pt", device=str(device)) as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({e})") from None
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise CheckpointError(f"{weights}: weights do not match the recorded config: missing "
                              f"{result.missing_keys[:6]}, unexpected {result.unexpected_keys[:6]}")
    model.to(device).eval()
    model.meta = meta
    return model
