"""Official POSTER / POSTER++ checkpoints and pretrained backbone files -> poster-fer models.

One pure function, :func:`convert_official_state_dict`, maps keys, asserts shapes and reports what it dropped;
the loaders around it only unwrap containers and pick defaults. Dead official modules (never run by the
official forward pass) are recognised and dropped; anything else unexpected or missing is an error naming the
keys, unless ``strict=False`` asks for a report instead.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..constants import AFFECTNET8_CLASSES as AFFECTNET_CLASSES  # noqa: F401  (re-exported)
from ..constants import RAFDB_CLASSES  # noqa: F401  (re-exported)
from ..models import create_model
from ..naming import warn_deprecated
from .preprocessing import Preprocessing
from .safe_load import CheckpointError, safe_torch_load

if TYPE_CHECKING:
    from ..card import ModelCard


@dataclass
class ConversionReport:
    """What a conversion did: tensors loaded, dead keys dropped, and (non-strict) what did not fit."""

    loaded: int = 0
    dropped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.missing or self.mismatched)

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors", f"dropped {len(self.dropped)} dead-module keys"]
        for name in ("unexpected", "missing", "mismatched"):
            items = getattr(self, name)
            if items:
                parts.append(f"{len(items)} {name} ({_preview(items)})")
        return ", ".join(parts) + "".join(f"; {n}" for n in self.notes)


def _preview(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a DataParallel-style prefix from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def _is_dead(key: str, patterns: Iterable[str]) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.match(p[3:], key):
                return True
        elif key.startswith(p) or key == p:
            return True
    return False


def convert_official_state_dict(
    state_dict: dict[str, torch.Tensor],
    model: nn.Module,
    strict: bool = True,
    key_map: dict[str, str] | None = None,
    dead: Iterable[str] | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map an official state_dict onto ``model``'s keys (pure: neither argument is modified).

    Args:
        state_dict: official tensors (``module.`` prefixes allowed).
        model: the target; its ``state_dict()`` defines the expected keys and shapes.
        strict: raise :class:`CheckpointError` naming any unexpected, missing or mis-shaped keys.
        key_map: optional renames applied after prefix stripping (``old -> new``).
        dead: key prefixes (or ``re:`` patterns) to drop; defaults to ``model.official_dead_keys()``.
    """
    expected = model.state_dict()
    dead = tuple(dead if dead is not None else getattr(model, "official_dead_keys", lambda: ())())
    report = ConversionReport()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in strip_prefix(state_dict).items():
        key = (key_map or {}).get(key, key)
        if key in expected:
            if tuple(tensor.shape) != tuple(expected[key].shape):
                report.mismatched.append(f"{key}: {tuple(tensor.shape)} vs {tuple(expected[key].shape)}")
                continue
            out[key] = tensor.to(expected[key].dtype)
        elif _is_dead(key, dead):
            report.dropped.append(key)
        else:
            report.unexpected.append(key)
    report.missing = [k for k in expected if k not in out]
    report.loaded = len(out)
    if strict and not report.ok:
        raise CheckpointError(f"checkpoint does not match {getattr(model, 'model_name', type(model).__name__)}: "
                              + report.summary() + _hint(report))
    return out, report


def _hint(report: ConversionReport) -> str:
    conv_missing = [k for k in report.missing if re.search(r"\.block_[lms]\.conv\.", k)]
    conv_extra = [k for k in report.unexpected if re.search(r"\.block_[lms]\.conv\.", k)]
    if conv_missing and len(conv_missing) == len(report.missing):
        return " (no per-block token conv: this looks like the official AffectNet variant, 'poster_v1_affectnet')"
    if conv_extra and len(conv_extra) == len(report.unexpected):
        return " (per-block token convs present: this looks like the RAF-DB variant, 'poster_v1')"
    if any("head.linear" in k for k in report.mismatched):
        return " (class count differs: pass num_classes)"
    return ""


def unwrap_container(obj: Any, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the state_dict inside an official container; return it with the container's other scalars."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict container or state_dict, got {type(obj).__name__}")
    for key in ("model_state_dict", "state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            info = {k: v for k, v in obj.items() if isinstance(v, (int, float, str))}
            if isinstance(obj.get("best_acc"), torch.Tensor) and obj["best_acc"].numel() == 1:
                info["best_acc"] = float(obj["best_acc"])
            return obj[key], info
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise CheckpointError(f"{source}: no state_dict found (keys: {sorted(obj)[:10]})")


def default_channel_order(model_name: str) -> str:
    """The official v1 RAF-DB pipeline reads images with OpenCV and never converts BGR to RGB."""
    return "BGR" if model_name == "poster_v1" else "RGB"


def _head_classes(state_dict: dict[str, torch.Tensor]) -> int | None:
    for k, v in state_dict.items():
        if k.endswith("head.linear.weight"):
            return int(v.shape[0])
    return None


def load_official(
    path: str | Path,
    model: str = "poster_v1",
    num_classes: int | None = None,
    strict: bool = True,
    classes: list[str] | None = None,
    channel_order: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """Load an official POSTER / POSTER++ checkpoint into a poster-fer model (eval mode).

    Accepts v1 ``{'iter','model_state_dict',...}``, V2 ``{'epoch','state_dict','recorder',...}`` and raw
    state_dicts, with or without ``module.`` prefixes, without executing pickled code. ``model`` is the
    architecture, or a weights record's name (``poster_v1.rafdb_official``, see
    ``poster_fer.list_models("*official*", pretrained=True)``); ``weights=NAME``, which said the same, still works
    (deprecated). Other keywords are the architecture's (``create_model``).

    Class names are never guessed from the head's size: they come from ``classes``, else from the record
    (the named one, or the one official record of that architecture and head size; two candidates, e.g.
    POSTER++ RAF-DB and AffectNet-7, are refused with both names). The model gets ``meta`` (classes,
    preprocessing, provenance) for :func:`poster_fer.save_model` and ``pretrained_cfg`` (the record).
    """
    from ..card import ModelCard

    weights, model = _weights_and_architecture(model, overrides.pop("weights", None))
    path = Path(path)
    raw, info = unwrap_container(safe_torch_load(path), str(path))
    state_dict = strip_prefix(raw)
    record = _named_record(path, model, weights)
    num_classes = _head_size(path, state_dict, num_classes, classes, record)
    net = create_model(model, num_classes=num_classes, **overrides)
    try:
        converted, report = convert_official_state_dict(state_dict, net, strict=strict)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    net.load_state_dict(converted, strict=False)
    net.eval()
    if record is None and not classes:
        record = _only_record(path, model, num_classes)
    names = list(classes) if classes else list(record.classes) if record else []
    if len(names) != num_classes:
        raise CheckpointError(f"{len(names)} class names given for a {num_classes}-class checkpoint")
    prep = (Preprocessing.from_dict(record.preprocessing, net.cfg.input_size) if record
            else Preprocessing.default(net.cfg.input_size, default_channel_order(model)))
    if channel_order is not None:
        prep = dataclasses.replace(prep, channel_order=str(channel_order).upper())
    card = dataclasses.replace(
        record or ModelCard(), classes=tuple(names), preprocessing=prep.to_meta(),
        provenance={"source": "official", "file": path.name, "container": info,
                    "weights": record.name if record else None, "conversion": report.summary()})
    if record is not None:
        net.pretrained_cfg = card  # the published checkpoint it is
    else:
        net.card = card  # classes given for a head no record covers: no published card (pretrained_cfg None)
    net.conversion_report = report
    return net


def _weights_and_architecture(model: str, weights: str | None) -> tuple[str | None, str]:
    """(weights name or None, architecture) from ``model`` (an architecture or a weights name) and the
    deprecated ``weights`` keyword."""
    if weights is not None:
        warn_deprecated("load_official(..., weights=NAME) is deprecated: pass model=NAME (an official weights "
                        "name is a model name)")
    if "." in model:
        return model, model.split(".", 1)[0]
    return weights, model


def _named_record(path: Path, model: str, weights: str | None) -> ModelCard | None:
    """The weights record named (None when none is), refused when it is for another architecture."""
    if weights is None:
        return None
    from .records import get_weights

    record = get_weights(weights)
    if record.architecture != model:
        raise CheckpointError(f"{path}: weights {record.name!r} are for {record.architecture!r}, not {model!r}")
    return record


def _head_size(path: Path, state_dict: dict[str, torch.Tensor], num_classes: int | None,
               classes: list[str] | None, record: ModelCard | None) -> int:
    """The class count: asked, else the checkpoint head's, the class names', the record's, or 7; a checkpoint
    whose head disagrees with the asked count is refused."""
    found = _head_classes(state_dict)
    if num_classes is None:
        num_classes = found or (len(classes) if classes else record.num_classes if record else 7)
    if found is not None and found != num_classes:
        raise CheckpointError(f"{path}: head has {found} classes but num_classes={num_classes} was asked")
    return num_classes


def _only_record(path: Path, model: str, num_classes: int) -> ModelCard:
    """The one official record of this architecture and head size, which says the class order; none or two
    (e.g. POSTER++ RAF-DB and AffectNet-7) is an error naming them."""
    from .records import find_official

    candidates = find_official(model, num_classes)
    if len(candidates) != 1:
        named = ", ".join(r.name for r in candidates) or f"none for {model} with {num_classes} classes"
        raise CheckpointError(f"{path}: which dataset's class order? official records: {named}; pass "
                              "model=NAME (--model NAME) or classes=[...] in the head's order")
    return candidates[0]


# --- pretrained backbone files ------------------------------------------------------------------------


def ir50_key_map(model_ir: nn.Module) -> dict[str, str]:
    """``ir50.pth`` keys (``body.N``) -> this IR backbone's keys (``body.N`` or ``body1/2/3.M``)."""
    units = model_ir.cfg.units
    mapping: dict[str, str] = {}
    for name in model_ir.state_dict():
        if name.startswith("input_layer."):
            mapping[name] = name
    n = 0
    for stage, count in enumerate(units, start=1):
        for local in range(count):
            new_prefix = f"body{stage}.{local}." if model_ir.cfg.split_stages else f"body.{n}."
            for name in model_ir.state_dict():
                if name.startswith(new_prefix):
                    mapping[f"body.{n}." + name[len(new_prefix):]] = name
            n += 1
    return mapping


def load_pretrained_ir50(model: nn.Module, path: str | Path, strict: bool = True) -> ConversionReport:
    """Load an ArcFace ``ir50.pth`` (4 stages) into ``model.ir_back``, keeping the stages the model has.

    The fourth stage and ``output_layer`` are dropped and reported. POSTER++'s ``body1/2/3`` names are
    mapped from ``body.N`` (the official V2 code misses this and leaves the backbone random).
    """
    path = Path(path)
    state_dict, _ = unwrap_container(safe_torch_load(path), str(path))
    ir = model.ir_back
    mapping = ir50_key_map(ir)
    renamed = {mapping.get(k, "unmapped." + k): v for k, v in strip_prefix(state_dict).items()}
    converted, report = convert_official_state_dict(renamed, ir, strict=False, dead=("unmapped.",))
    report.dropped = [k[len("unmapped."):] for k in report.dropped]
    if strict and not report.ok:
        raise CheckpointError(f"{path}: IR-50 weights do not fit {getattr(model, 'model_name', '')}'s IR "
                              f"backbone: {report.summary()}")
    if report.loaded == 0:
        raise CheckpointError(f"{path}: no IR-50 tensor matched the model; the backbone would stay random")
    ir.load_state_dict(converted, strict=False)
    return report


def load_pretrained_mobilefacenet(model: nn.Module, path: str | Path, strict: bool = True) -> ConversionReport:
    """Load ``mobilefacenet_model_best.pth.tar`` (or the shared 68-point copy) into ``model.face_landback``."""
    path = Path(path)
    state_dict, _ = unwrap_container(safe_torch_load(path), str(path))
    target = model.face_landback
    dead = () if target.output_layer is not None else ("output_layer.",)
    converted, report = convert_official_state_dict(state_dict, target, strict=False, dead=dead)
    if strict and not report.ok:
        raise CheckpointError(f"{path}: MobileFaceNet weights do not fit: {report.summary()}")
    if report.loaded == 0:
        raise CheckpointError(f"{path}: no MobileFaceNet tensor matched; the landmark stream would stay random")
    target.load_state_dict(converted, strict=False)
    return report
