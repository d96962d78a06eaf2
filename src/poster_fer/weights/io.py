"""poster-fer's own weight format: ``model.safetensors`` plus a JSON metadata record.

A saved model is a directory holding ``model.safetensors`` (every tensor, the frozen landmark network
included) and ``meta.json``; the same record is also embedded in the safetensors header so a lone
``.safetensors`` file is self-describing. The record names the registered variant, its family and full config,
the class names and the preprocessing (input size, mean/std, channel order), plus provenance and metrics,
and optionally the softmax ``temperature`` fitted for calibrated confidences (1.0 when absent).
Loading rebuilds the model from the record alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..card import ModelCard, card_of, file_sha256, thaw
from ..models import build_from_config, config_to_dict
from ..models.registry import build_config, family_class
from ..probabilities import validate_temperature
from .checks import check_metadata, check_weights_fit, header_shapes, parse_metadata
from .preprocessing import Preprocessing
from .safe_load import CheckpointError

FORMAT = "poster-fer/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
_HEADER_KEY = "poster_fer_meta"


def build_metadata(model: nn.Module, **metadata: Any) -> dict[str, Any]:
    """The record stored beside the weights: the model's card as meta.json, updated with ``metadata``."""
    record = card_of(model).to_meta()
    record.update({k: v for k, v in metadata.items() if v is not None})
    card = ModelCard.from_meta(record)  # what the record says, read once; the checks below read the card
    num_classes = int(model.cfg.num_classes)
    if not card.classes:
        # Never guessed from the head's size: an 8-class model may be FER+ or AffectNet, in different orders.
        raise ValueError(f"the {num_classes}-class model records no class names: pass classes=[...] (in output "
                         "order) or save a model trained on a dataset")
    if len(card.classes) != num_classes:
        raise ValueError(f"{len(card.classes)} class names for a {num_classes}-class model")
    # one typed record, written in its stored form; missing fields take the defaults (ImageNet stats, RGB)
    prep = Preprocessing.from_dict(card.preprocessing, int(model.cfg.input_size)).to_meta()
    if card.temperature is not None:
        record["temperature"] = validate_temperature(card.temperature)
    name, family = getattr(model, "model_name", None), getattr(model, "family", None)
    record.update({"format": FORMAT, "model": name, "family": family, "config": config_to_dict(model.cfg),
                   "classes": list(card.classes), "preprocessing": prep})
    if not name or not family:
        raise ValueError("model has no registered name/family: build it with poster_fer.create_model")
    return json.loads(json.dumps(record))  # fail early on anything not JSON-serialisable


def save_model(model: nn.Module, path: str | Path, **metadata: Any) -> Path:
    """Save ``model`` to directory ``path`` (``model.safetensors`` + ``meta.json``); returns the directory.

    Keyword arguments become metadata (``classes=[...]``, ``preprocessing={...}``, ``provenance={...}``,
    ``metrics={...}``, ``temperature=1.7``), merged over the model's card.
    """
    path = Path(path)
    meta = build_metadata(model, **metadata)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _write_folder(path, meta, lambda p, header: save_file(tensors, str(p), metadata=header))
    return path


def rewrite_metadata(path: str | Path, meta: dict[str, Any]) -> Path:
    """Replace the metadata of a saved model folder (meta.json and the copy in the safetensors header) and keep
    its tensors byte for byte: calibration added after training changes no weight. ``meta`` is checked first."""
    from safetensors.numpy import save_file as save_numpy

    path = Path(path)
    check_metadata(meta, path / META_FILE, FORMAT)
    with safe_open(str(path / WEIGHTS_FILE), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    _write_folder(path, meta, lambda p, header: save_numpy(tensors, str(p), metadata=header))
    return path


def _write_folder(path: Path, meta: dict[str, Any], write_weights: Callable[[str, dict[str, str]], Any]) -> None:
    """The weights file (with the metadata in its header, so a lone .safetensors still loads) and meta.json, each
    written atomically, from one serialisation of ``meta``."""
    text = json.dumps(meta, indent=2, sort_keys=True)
    atomic_write(path / WEIGHTS_FILE, lambda p: write_weights(p, {_HEADER_KEY: text}))
    atomic_write(path / META_FILE, lambda p: Path(p).write_text(text + "\n"))


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
    kind = _foreign_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path}: {kind}, not a poster-fer model (a directory or .safetensors file "
                              "written by poster-fer)")
    return path


def _foreign_kind(path: Path) -> str | None:
    """What a file given as a poster-fer model is instead, when its name or first bytes say so."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "an ONNX export (predict and serve run it: --weights FILE.onnx)"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if head.startswith(b"PK\x03\x04") or head[:2] == b"\x80\x02" or suffix in (".pth", ".pt", ".tar", ".ckpt"):
        return ("a PyTorch checkpoint (official POSTER weights load with --model NAME in predict/eval, or "
                "`poster-fer convert` turns them into a poster-fer model)")
    if len(head) < 9 or head[8:9] != b"{":  # safetensors: 8-byte header length, then the JSON header
        return "not a safetensors file"
    return None


def weights_file(path: str | Path) -> Path:
    """The ``.safetensors`` file of a saved model (directory or file), e.g. to hash what a run depended on."""
    return _weights_path(Path(path))


def read_metadata(path: str | Path, check: bool = True) -> dict[str, Any]:
    """The metadata record of a saved model (directory or ``.safetensors`` file), checked by
    :func:`poster_fer.weights.checks.check_metadata` unless ``check`` is false (the raw record, for repair).
    :func:`read_card` gives it as the model's card."""
    record, where = _read_record(_weights_path(Path(path)))
    return check_metadata(record, where, FORMAT) if check else record


def read_card(path: str | Path) -> ModelCard:
    """The card of a saved model (directory or ``.safetensors`` file) without loading its tensors: the stored
    record read once and checked (:func:`poster_fer.weights.checks.parse_metadata`). What commands that
    describe a checkpoint (info, eval, serve) read instead of the metadata dict."""
    record, where = _read_record(_weights_path(Path(path)))
    return parse_metadata(record, where, FORMAT)


def _read_record(weights: Path) -> tuple[Any, Path]:
    """The JSON record of a weights file (meta.json beside it, else its header) and the file it came from."""
    side = weights.parent / META_FILE
    where = side if side.is_file() else weights
    try:
        if side.is_file():
            text = side.read_text(encoding="utf-8")
        else:
            with safe_open(str(weights), framework="pt") as f:
                text = (f.metadata() or {}).get(_HEADER_KEY)
            if text is None:
                raise CheckpointError(f"{weights}: no poster-fer metadata (neither {META_FILE} nor an embedded "
                                      "record); official .pth checkpoints load with poster_fer.load_official")
        return json.loads(text), where
    except (SafetensorError, OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where}: unreadable poster-fer metadata ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: the metadata is not valid JSON ({e})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu", strict: bool = True,
               classes: Sequence[str] | None = None) -> nn.Module:
    """Rebuild and load a model saved by :func:`save_model` (eval mode; ``model.card``, which is also
    ``model.pretrained_cfg``, from :func:`published_card`). ``classes`` names the outputs of a checkpoint that records
    none (it is refused otherwise: class names are never guessed) and must agree with one that does.

    The metadata is checked first, then the config against the file's tensor shapes on PyTorch's meta device
    (:mod:`poster_fer.weights.checks`), so a bad checkpoint is one :class:`CheckpointError` naming the file and the
    field, before a model is allocated. ``strict=False`` tolerates missing and unexpected tensors, never a shape
    that differs."""
    weights = _weights_path(Path(path))
    card = _named_classes(read_card(weights), classes, weights)
    try:
        model_cls = family_class(card.family)
        cfg = build_config(card.family, thaw(card.config))
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{weights}: metadata field 'config': does not describe a buildable model "
                              f"({e.args[0] if e.args else e})") from None
    if len(card.classes) != int(cfg.num_classes):
        raise CheckpointError(f"{weights}: {len(card.classes)} class names for a {cfg.num_classes}-class model")
    check_weights_fit(model_cls, cfg, header_shapes(weights), weights, strict=strict)
    model = build_from_config(card.architecture, card.family, thaw(card.config))
    try:
        with safe_open(str(weights), framework="pt", device=str(device)) as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({e})") from None
    model.load_state_dict(state, strict=False)  # shapes and names were checked above
    model.to(device).eval()
    model.pretrained_cfg = published_card(card, weights)
    return model


def _named_classes(card: ModelCard, classes: Sequence[str] | None, weights: Path) -> ModelCard:
    """``card`` with the class names a caller gave (they must agree with recorded ones); refused with none."""
    if classes is not None:
        given = tuple(str(c) for c in classes)
        if card.classes and card.classes != given:
            raise CheckpointError(f"{weights}: classes={list(classes)} disagree with the recorded "
                                  f"{list(card.classes)}")
        card = dataclasses.replace(card, classes=given)
    if not card.classes:
        raise CheckpointError(f"{weights}: the checkpoint records no class names; pass classes=[...] in output order")
    return card


def published_card(meta: ModelCard | Mapping[str, Any], weights: Path) -> ModelCard:
    """The card of a loaded checkpoint: the shipped card its metadata names when the file is that model (the same
    description and sha256), else the card its own metadata describes. A copy whose tensors or description
    differ names no published weights (a retrained, re-headed or hand-edited copy does not inherit the
    original's name: it becomes the parent); a download record's name (an official checkpoint converted
    here) stays with the file's own card. ``meta`` is the file's card (or its metadata dict, read into one).
    The file is hashed only when its description is the shipped one, and not again when
    :meth:`ModelCard.verify` has just hashed it (:func:`poster_fer.card.file_sha256`)."""
    from .records import load_records

    card = meta if isinstance(meta, ModelCard) else ModelCard.from_meta(meta)
    named = load_records().get(card.name) if card.name else None
    if named is None or not named.shipped:
        return card  # a file of its own (an official checkpoint converted here keeps its own card and name)
    if named.to_meta() == card.to_meta() and named.sha256 == file_sha256(weights):
        return named  # the shipped file itself, its description untouched
    return dataclasses.replace(card, name=None, parent=card.parent or card.name)
