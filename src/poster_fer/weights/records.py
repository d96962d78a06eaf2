"""Weights as data: one frozen record per weight set, named ``architecture.tag``.

Why records, as timm's ``pretrained_cfg`` and torchvision's ``Weights``: what a weight set is (its file and
sha256, class names, preprocessing, calibration, the metrics it reached and on which split, size, licence, the
recipe and exact command that trained it, where it came from) is data about a file, not code. Adding a trained
model is adding a record, never registering a new architecture; ``poster-fer info --list`` and
``poster_fer.list_models(pretrained=True)`` read these, and tests check every record against its file.

The records live in ``poster_fer/pretrained/records.json``. Two kinds:

- weights that ship in the package (``file`` relative to ``poster_fer/pretrained``, ``sha256`` of it);
- the authors' official checkpoints (``file`` None: users download them; the record gives their class order
  and channel order, so :func:`poster_fer.load_official` never guesses class names from a head's size).

Names from before the split (``poster_v1_ferplus_mfn64_image``) resolve with a DeprecationWarning.
"""

from __future__ import annotations

import functools
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..architectures import RETIRED
from ..errors import CheckpointError
from ..naming import name_matches, warn_deprecated

__all__ = ["RECORDS_FILE", "WeightsRecord", "find_official", "get_weights", "list_weights", "load_records",
           "pretrained_root"]

RECORDS_FILE = "records.json"


def pretrained_root() -> Path:
    """The package-data folder holding shipped weights and their records (``poster_fer/pretrained``)."""
    return Path(__file__).resolve().parents[1] / "pretrained"


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class WeightsRecord:
    """What one weight set is. Nested values are read-only (mapping proxies and tuples)."""

    name: str
    architecture: str
    tag: str
    classes: tuple[str, ...]
    preprocessing: Mapping[str, Any]
    description: str = ""
    file: str | None = None  # relative to poster_fer/pretrained; None for weights users download
    sha256: str | None = None
    # The same model as ONNX for the torch-free runtime (``model.onnx`` beside ``file``; its sha256, opset and the
    # largest probability difference from PyTorch measured when it was written); empty for weights users download.
    onnx: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    calibration: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    metrics: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    num_params: int | None = None
    gflops: float | None = None
    licence: str = ""
    recipe: str | None = None
    command: str | None = None
    origin: str = ""
    aliases: tuple[str, ...] = ()
    default: bool = False  # the weights ``create_model(architecture, pretrained=True)`` loads

    @classmethod
    def from_dict(cls, name: str, values: Mapping[str, Any]) -> WeightsRecord:
        arch, sep, tag = name.partition(".")
        if not sep or not arch or not tag:
            raise ValueError(f"weights name {name!r} is not 'architecture.tag'")
        if values.get("architecture", arch) != arch:
            raise ValueError(f"{name}: architecture {values['architecture']!r} disagrees with the name")
        known = {f for f in cls.__dataclass_fields__} - {"name", "architecture", "tag"}
        unknown = sorted(set(values) - known - {"architecture"})
        if unknown:
            raise ValueError(f"{name}: unknown record field(s) {unknown}")
        frozen = {k: _freeze(v) for k, v in values.items() if k != "architecture"}
        return cls(name=name, architecture=arch, tag=tag, **frozen)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (without the name and its parts, as stored in records.json)."""
        skip = ("name", "tag", "architecture")
        return {k: _thaw(getattr(self, k)) for k in self.__dataclass_fields__ if k not in skip}

    def __deepcopy__(self, memo: dict[int, Any]) -> WeightsRecord:
        return self  # immutable: a copied model shares its record

    def __reduce__(self) -> tuple[Any, ...]:
        return (WeightsRecord.from_dict, (self.name, {"architecture": self.architecture, **self.to_dict()}))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shipped(self) -> bool:
        """Whether the weights are package data (else they are a record of a file users download)."""
        return self.file is not None

    def path(self) -> Path:
        """The shipped weights' saved-model folder; a clear error when the record has no file or it is absent."""
        if self.file is None:
            raise CheckpointError(f"{self.name}: these weights do not ship with poster-fer ({self.origin}); "
                                  f"download them and load with poster_fer.load_official(PATH, weights={self.name!r})")
        path = pretrained_root() / self.file
        if not path.is_file():
            raise CheckpointError(f"{path}: the weights of {self.name!r} are missing from this installation (a "
                                  "source checkout made before the model was trained, or a broken install); "
                                  "reinstall poster-fer or pass --weights / a checkpoint path")
        return path.parent

    def verify(self) -> Path:
        """:meth:`path`, after checking the files' sha256 against the record (a damaged install fails here):
        the weights and, when the record has one, the ONNX file beside them."""
        from ..checksums import sha256_of

        folder = self.path()
        files = [(self.file, self.sha256)]
        if self.onnx.get("file"):
            files.append((self.onnx["file"], self.onnx.get("sha256")))
        for file, expected in files:
            path = pretrained_root() / str(file)
            if not path.is_file():
                raise CheckpointError(f"{path}: listed in the record of {self.name!r} but missing from this "
                                      "installation; reinstall poster-fer")
            digest = sha256_of(path)
            if expected and digest != expected:
                raise CheckpointError(f"{path}: sha256 {digest} differs from the record of {self.name!r} "
                                      f"({expected}); the installation is damaged, reinstall poster-fer")
        return folder


@functools.lru_cache(maxsize=1)
def load_records() -> types.MappingProxyType:
    """Every record, by name, read once from ``poster_fer/pretrained/records.json``."""
    path = pretrained_root() / RECORDS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"{path}: unreadable weight records ({e}); reinstall poster-fer") from None
    records = {name: WeightsRecord.from_dict(name, values) for name, values in data.items()
               if not name.startswith("_")}
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
