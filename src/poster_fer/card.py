"""The model card: one typed, frozen description of a model, stored once.

Why one type: a model used to be described by an untyped ``meta`` dict in memory (read by dozens of ``.get``
calls with inline defaults) beside a typed weights record, and on disk by records.json, meta.json and the
safetensors header, kept equal by tests rather than by construction. Two bugs came from the gap: a re-headed
model kept the old head's operating points (its save then failed to load) and reported the shipped model's name
and metrics. Here a model has one :class:`ModelCard` (``model.card``; ``model.pretrained_cfg`` is the same
object under timm's name), and every change of head goes through :meth:`ModelCard.with_new_head`, the one rule:
a new head has no calibration, operating points, metrics or published name, and says whom it descends from.

Stored forms (both read and written here, nowhere else):

- ``meta.json`` of a saved model (:meth:`to_meta` / :meth:`from_meta`), format ``poster-fer/1``, unchanged keys,
  so every folder saved before loads as it did; the safetensors header holds the same text, written from one
  serialisation (:mod:`poster_fer.weights.io`);
- an entry of ``poster_fer/pretrained/records.json`` (:meth:`from_dict` / :meth:`to_dict`): for a shipped model
  only what the index needs (its folder's file and sha256, the ONNX twin, default flag, aliases) and the card
  itself is its folder's meta.json; for the authors' downloadable checkpoints, which have no folder, the whole
  description (docs/architecture.md, "Model cards").

Torch-free: the light runtime reads cards to list and run models.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError

__all__ = ["CALIBRATION_KEYS", "FORMAT", "OPERATING_POINT_KEY", "ModelCard", "card_of", "file_sha256", "freeze",
           "pretrained_root", "thaw"]

FORMAT = "poster-fer/1"
#: meta.json keys that make up the calibration (the default operating point and the others).
CALIBRATION_KEYS = ("temperature", "logit_bias", "operating_points")
# provenance entries the card types (the rest of a training record stays in ``provenance`` as it was)
_PROVENANCE_FIELDS = ("recipe", "command", "origin", "parent")
# meta.json keys the card reads into typed fields; anything else is kept in ``extra`` and written back
_META_FIELDS = ("format", "model", "family", "config", "classes", "preprocessing", "metrics", "licence", "weights",
                "provenance", "description", "num_params", "gflops", *CALIBRATION_KEYS)
# index-only fields of records.json (what a published file needs, not what the model is)
_INDEX_FIELDS = ("file", "sha256", "onnx", "aliases", "default")
# meta.json keys a model cannot be rebuilt without
_REQUIRED_STR = ("format", "model", "family")
# meta.json keys whose value, when present, must be a JSON object
_OBJECT_FIELDS = ("preprocessing", "metrics", "provenance")
#: The meta.json key (kept in a card's ``extra``) naming the operating point its calibration was switched to
#: (:func:`poster_fer.probabilities.with_operating_point`); absent: the default.
OPERATING_POINT_KEY = "operating_point"
# sha256 of the shipped files :meth:`ModelCard.verify` checked, by (path, size, mtime, inode): loading the file it
# just verified takes the digest from here instead of reading the file a second time
_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def pretrained_root() -> Path:
    """The package-data folder holding shipped weights and their index (``poster_fer/pretrained``)."""
    return Path(__file__).resolve().parent / "pretrained"


def freeze(value: Any) -> Any:
    """A read-only copy: mappings become mapping proxies, lists tuples (recursively)."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain JSON-ready form of a frozen value."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def _empty() -> Mapping[str, Any]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class ModelCard:
    """What a model is. Nested values are read-only (mapping proxies and tuples); build changed copies with
    :func:`dataclasses.replace` or :meth:`with_new_head`.

    ``name`` is the published weights name (``architecture.tag``) or None for a model of your own; ``calibration``
    holds ``temperature``, ``logit_bias`` and ``operating_points``; ``metrics`` maps a split to its numbers (with
    ``split`` saying what the split was); ``provenance`` the rest of the training record (git revision, machine).
    """

    architecture: str | None = None
    family: str | None = None
    config: Mapping[str, Any] = field(default_factory=_empty)
    classes: tuple[str, ...] = ()
    preprocessing: Mapping[str, Any] = field(default_factory=_empty)
    calibration: Mapping[str, Any] = field(default_factory=_empty)
    metrics: Mapping[str, Any] = field(default_factory=_empty)
    name: str | None = None
    description: str = ""
    licence: str = ""
    recipe: str | None = None
    command: str | None = None
    origin: str = ""
    parent: str | None = None
    provenance: Mapping[str, Any] = field(default_factory=_empty)
    num_params: int | None = None
    gflops: float | None = None
    # what a published file needs (records.json): relative to poster_fer/pretrained; None for downloads
    file: str | None = None
    sha256: str | None = None
    onnx: Mapping[str, Any] = field(default_factory=_empty)
    aliases: tuple[str, ...] = ()
    default: bool = False  # the weights ``create_model(architecture, pretrained=True)`` loads
    extra: Mapping[str, Any] = field(default_factory=_empty)  # meta.json keys of later versions, kept as read

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # whatever was passed, the card holds read-only values
            object.__setattr__(self, f.name, freeze(getattr(self, f.name)))
        if self.name is not None:
            arch, sep, tag = self.name.partition(".")
            if not sep or not arch or not tag:
                raise ValueError(f"weights name {self.name!r} is not 'architecture.tag'")
            if self.architecture is not None and arch != self.architecture:
                raise ValueError(f"{self.name}: architecture {self.architecture!r} disagrees with the name")
            if self.architecture is None:
                object.__setattr__(self, "architecture", arch)

    # -- what people ask of it --------------------------------------------------------------------------

    @property
    def tag(self) -> str | None:
        return None if self.name is None else self.name.partition(".")[2]

    @property
    def display_name(self) -> str | None:
        """What a report calls the model: its published name, else a name its file recorded in another form (a
        retired name, kept as read), else its architecture (meta.json's ``weights``, else its ``model``)."""
        return self.name or self.extra.get("weights") or self.architecture

    @property
    def num_classes(self) -> int:
        """Outputs of the head: the class names, else the config's count (a head without names)."""
        return len(self.classes) or int(self.config.get("num_classes") or 0)

    @property
    def shipped(self) -> bool:
        """Whether the weights are package data (else a record of a file users download, or your own model)."""
        return self.file is not None

    @property
    def temperature(self) -> float | None:
        """The softmax temperature fitted for calibrated confidences (None: 1)."""
        return self.calibration.get("temperature")

    @property
    def logit_bias(self) -> list[float] | None:
        """The class-prior correction added to the logits before the temperature (None: none)."""
        bias = self.calibration.get("logit_bias")
        return None if bias is None else [float(b) for b in bias]

    @property
    def operating_points(self) -> dict[str, Any]:
        """The other calibrations the weights offer, by name (``--operating-point NAME``)."""
        return thaw(self.calibration.get("operating_points") or {})

    @property
    def operating_point(self) -> str:
        """The operating point the calibration is: ``"default"`` unless
        :func:`poster_fer.probabilities.with_operating_point` chose another."""
        return str(self.extra.get(OPERATING_POINT_KEY) or "default")

    def provenance_record(self) -> dict[str, Any]:
        """Where the model came from, as stored: the training record with recipe, command, origin and parent."""
        return self.to_meta().get("provenance") or {}

    def path(self) -> Path:
        """The shipped weights' saved-model folder; a clear error when the card has no file or it is absent."""
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
        """:meth:`path`, after checking the files' sha256 against the index (a damaged install fails here): the
        weights, which hold the card in their header, and, when there is one, the ONNX file beside them."""
        from .checksums import sha256_of

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
            _VERIFIED[_file_key(path)] = digest
        return folder

    # -- the one rule for a new head ------------------------------------------------------------------------

    def with_new_head(self, classes: Sequence[str] | None, num_classes: int | None = None) -> ModelCard:
        """The card of the same network with another head: class names ``classes`` (or none, ``num_classes``
        outputs); no calibration, operating points or metrics (they described the old head), no published name
        or file; it descends from this model (``parent``, ``origin``). Licence and preprocessing carry over: the
        weights kept are still the parent's, and the input is made the same way."""
        names = tuple(str(c) for c in classes) if classes is not None else ()
        n = len(names) if classes is not None else int(num_classes or 0)
        parent = self.name or self.parent or self.architecture
        config = dict(self.config)
        if config:
            config["num_classes"] = n
        return dataclasses.replace(
            self, classes=names, config=config, calibration={}, metrics={}, name=None, description="",
            recipe=None, command=None, origin=f"fine-tuned from {parent}" if parent else "", parent=parent,
            provenance={}, num_params=None, gflops=None, file=None, sha256=None, onnx={}, aliases=(), default=False,
            extra={k: v for k, v in self.extra.items() if k not in (OPERATING_POINT_KEY, "weights")})

    # -- meta.json ------------------------------------------------------------------------------------------

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ModelCard:
        """The card of a meta.json record (as :func:`~poster_fer.weights.checks.check_metadata` accepted it)."""
        prov = dict(meta.get("provenance") or {})
        typed = {k: prov.pop(k) for k in _PROVENANCE_FIELDS if k in prov}
        name = meta.get("weights")
        arch, dot, tag = str(name).partition(".") if name else ("", "", "")
        if name and (not dot or not tag or (meta.get("model") and arch != meta.get("model"))):
            # a name from before weights were named architecture.tag (poster_v1_ferplus_s), or another
            # architecture's: kept as where the model came from, never as its own published name
            typed.setdefault("parent", name)
            extra = {"weights": name}
            name = None
        else:
            extra = {}
        return cls(
            architecture=meta.get("model"), family=meta.get("family"), config=meta.get("config") or {},
            classes=tuple(str(c) for c in meta.get("classes") or ()),
            preprocessing=meta.get("preprocessing") or {},
            calibration={k: meta[k] for k in CALIBRATION_KEYS if meta.get(k) is not None},
            metrics=meta.get("metrics") or {}, name=name, description=meta.get("description") or "",
            licence=meta.get("licence") or "", recipe=typed.get("recipe"), command=typed.get("command"),
            origin=typed.get("origin") or "", parent=typed.get("parent"), provenance=prov,
            num_params=meta.get("num_params"), gflops=meta.get("gflops"),
            extra={**{k: v for k, v in meta.items() if k not in _META_FIELDS}, **extra})

    def to_meta(self) -> dict[str, Any]:
        """The meta.json record (plain JSON values; empty fields left out, as saved folders always had them)."""
        prov = {k: getattr(self, k) for k in _PROVENANCE_FIELDS if getattr(self, k)}
        typed = {
            "format": FORMAT if self.architecture else None, "model": self.architecture, "family": self.family,
            "config": self.config or None, "classes": list(self.classes) or None,
            "preprocessing": self.preprocessing or None, **{k: self.calibration.get(k) for k in CALIBRATION_KEYS},
            "metrics": self.metrics or None, "weights": self.name, "description": self.description or None,
            "licence": self.licence or None, "provenance": {**self.provenance, **prov} or None,
            "num_params": self.num_params, "gflops": self.gflops,
        }
        # kept keys of later versions (and a retired name, in ``extra``) never override what the card types
        return thaw({**self.extra, **{k: v for k, v in typed.items() if v is not None}})

    @classmethod
    def parse_meta(cls, meta: Any, source: str | Path, expected_format: str | None = None,
                   rebuild: bool = True) -> ModelCard:
        """The card of a record read from a file (meta.json, a safetensors header, an ONNX file's metadata), its
        JSON shape checked first: one :class:`CheckpointError` naming ``source`` and the field, never a
        ``TypeError`` from deep inside. ``rebuild=False`` (an ONNX file: the graph is the model) does not ask for
        the fields that rebuild a model (format, model, family, config). What the values mean (preprocessing,
        calibration, counts) is checked on the card by :func:`poster_fer.weights.checks.check_metadata`."""
        _check_shape(meta, source, expected_format, rebuild)
        if not isinstance(meta.get("config"), Mapping):  # only when not rebuilding: the graph is the model
            meta = {k: v for k, v in meta.items() if k != "config"}
        try:
            return cls.from_meta(meta)
        except (TypeError, ValueError) as err:
            raise _bad(source, "weights", str(err)) from None

    # -- records.json -----------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, name: str, values: Mapping[str, Any]) -> ModelCard:
        """A card from a records.json entry (``calibration`` nested, provenance fields at the top level)."""
        arch = name.partition(".")[0]
        if values.get("architecture", arch) != arch:
            raise ValueError(f"{name}: architecture {values['architecture']!r} disagrees with the name")
        known = {f.name for f in dataclasses.fields(cls)} - {"name", "architecture", "extra"}
        unknown = sorted(set(values) - known - {"architecture"})
        if unknown:
            raise ValueError(f"{name}: unknown record field(s) {unknown}")
        return cls(name=name, architecture=arch, **{k: v for k, v in values.items() if k != "architecture"})

    def to_dict(self) -> dict[str, Any]:
        """The records.json form: every field but the name (its key) and empty ones."""
        skip = ("name", "extra")
        out = {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}
        return {k: v for k, v in out.items() if v not in (None, "", {}, [], ()) and not (k == "default" and not v)}

    def index_entry(self) -> dict[str, Any]:
        """What records.json keeps for a shipped model: the file and what only the index needs."""
        return {k: v for k, v in self.to_dict().items() if k in (*_INDEX_FIELDS, "architecture")}

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelCard:
        return self  # immutable: a copied model shares its card

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, ({f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self)},))


def card_of(source: Any) -> ModelCard:
    """The card ``source`` means: a card itself; the card of a model, backend or Recognizer (its ``card``); a
    metadata dict, or the ``meta`` dict of an object written before cards, parsed once; else an empty card (a
    plain ``nn.Module``). The one reader of "whatever describes this model" (calibration, backends, evaluation)."""
    if isinstance(source, ModelCard):
        return source
    card = getattr(source, "card", None)
    if isinstance(card, ModelCard):
        return card
    record = source if isinstance(source, Mapping) else getattr(source, "meta", None)
    return ModelCard.from_meta(record) if isinstance(record, Mapping) else ModelCard()


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file. A shipped file that :meth:`ModelCard.verify` checked in this process and that is
    unchanged since (same size, modification time and inode) is not read again: loading the weights just
    verified hashes them once, not twice."""
    from .checksums import sha256_of

    digest = _VERIFIED.get(_file_key(path))
    return digest if digest is not None else sha256_of(path)


def _file_key(path: str | Path) -> tuple[str, int, int, int]:
    st = Path(path).stat()
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino


def _bad(source: Any, field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{source}: metadata field {field!r}: {problem}")


def _check_shape(meta: Any, source: Any, expected_format: str | None, rebuild: bool) -> None:
    """The JSON types of a stored record (see :meth:`ModelCard.parse_meta`)."""
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{source}: the metadata is a JSON {type(meta).__name__}, not an object "
                              "(a poster-fer meta.json holds one record: model, family, config, classes, ...)")
    if rebuild:
        for key in _REQUIRED_STR:
            if not isinstance(meta.get(key), str) or not meta[key]:
                raise _bad(source, key, f"missing or not a string ({meta.get(key)!r})")
        if expected_format is not None and meta["format"] != expected_format:
            raise _bad(source, "format", f"{meta['format']!r} is not {expected_format!r}")
        if not isinstance(meta.get("config"), Mapping):
            raise _bad(source, "config", f"must be an object of the model's settings, got "
                       f"{type(meta.get('config')).__name__}")
    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
            raise _bad(source, "classes", "must be a non-empty list of class names (strings)")
        if len(set(classes)) != len(classes):
            raise _bad(source, "classes", f"names repeat: {classes}")
    for key in _OBJECT_FIELDS:
        if meta.get(key) is not None and not isinstance(meta[key], Mapping):
            raise _bad(source, key, f"must be an object, got {type(meta[key]).__name__}")
    if meta.get("weights") is not None and not isinstance(meta["weights"], str):
        raise _bad(source, "weights", f"must be a weights name (a string), got {type(meta['weights']).__name__}")


def _rebuild(values: dict[str, Any]) -> ModelCard:
    return ModelCard(**values)
