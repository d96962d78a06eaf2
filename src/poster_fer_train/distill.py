"""Knowledge distillation from saved models: teacher distributions cached once, mixed into the training targets.

Why this form: the default model's architecture (48 px, ~2.5M parameters) is what the speed targets allow, and a
bigger or face-pretrained model (``poster_v1_ferplus_mfn_image``) scores higher but runs slower. Distillation
lets the small model learn from the better one without paying for it at inference. Running the teacher on every
training step would cost more than the student itself on a CPU, so the teachers run once, before training, on
every training image and its mirror (the same trade the landmark cache makes, ``landmark_cache.py``).

Exact semantics (``docs/training.md``):

- A teacher is any saved model (a shipped model's name or a checkpoint path). It sees each training image through
  its *own* stored preprocessing (its input size, grey or colour, mean/std), un-augmented, and mirrored when
  ``mirror`` is set; the student's sample picks the mirrored view when its random flip fired. Without ``mirror``
  a flipped sample gets the un-mirrored view's distribution (the expression classes are mirror-symmetric, and
  the teacher pass costs half). Zoom, rotation, shift, erasing and lighting reach only the student (offline
  distillation).
- The teacher distribution is ``softmax(logits / temperature)`` of the raw logits: the stored calibration
  temperature and logit bias are inference-time corrections for majority labels and are not applied, because
  the teachers were trained to match the same vote distributions the student is. Several teachers are averaged
  (an ensemble teacher).
- The training target becomes ``(1 - alpha) * target + alpha * teacher`` (a hard target counts as one-hot), so
  every loss in ``losses.py`` that takes soft targets works unchanged, label smoothing included. Validation and
  test keep their own labels.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ImageOps
from torch import nn
from tqdm import tqdm

from poster_fer.checksums import sha256_of
from poster_fer.data import FERDataset
from poster_fer.evaluation.class_match import match_classes
from poster_fer.evaluation.samples import sample_ids
from poster_fer.hub import resolve_weights
from poster_fer.weights.io import atomic_write, load_model, weights_file
from poster_fer.weights.preprocessing import Preprocessing, create_transform

from .passes import InferencePass, legacy_pass


@dataclass(frozen=True)
class DistillConfig:
    """A recipe's ``train.distill`` section: which teachers, how much of their distribution, how soft."""

    teachers: tuple[str, ...] = ()
    alpha: float = 0.5
    temperature: float = 1.0
    mirror: bool = True
    batch_size: int = 128
    weights: tuple[float, ...] = field(default=())
    cache_dir: str | None = None

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | None) -> DistillConfig | None:
        """None (no distillation) for an empty section or one without teachers; a clear error for a bad value."""
        if not cfg:
            return None
        cfg = dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"train.distill: unknown keys {unknown} ({', '.join(sorted(known))})")
        teachers = cfg.pop("teachers", None) or ()
        if isinstance(teachers, str):
            teachers = (teachers,)
        if not teachers:
            return None
        given = {k: convert(cfg[k]) for k, convert in _DISTILL_TYPES.items() if cfg.get(k) is not None}
        out = cls(teachers=tuple(str(t) for t in teachers), **given)  # what is not given takes the defaults above
        if not 0.0 < out.alpha <= 1.0:
            raise ValueError(f"train.distill.alpha must be in (0, 1], got {out.alpha}")
        if not out.temperature > 0.0:
            raise ValueError(f"train.distill.temperature must be positive, got {out.temperature}")
        if out.batch_size < 1:
            raise ValueError(f"train.distill.batch_size must be at least 1, got {out.batch_size}")
        if out.weights and (len(out.weights) != len(out.teachers) or min(out.weights) < 0 or sum(out.weights) <= 0):
            raise ValueError(f"train.distill.weights {list(out.weights)}: one non-negative weight per teacher "
                             f"({len(out.teachers)}), not all zero")
        return out

    def teacher_weights(self) -> np.ndarray:
        """Per-teacher ensemble weights summing to 1 (equal unless ``weights`` is given)."""
        w = np.asarray(self.weights or [1.0] * len(self.teachers), dtype=np.float64)
        return w / w.sum()


#: How each ``train.distill`` value is read (the defaults are the dataclass's).
_DISTILL_TYPES: dict[str, Callable[[Any], Any]] = {
    "alpha": float, "temperature": float, "mirror": bool, "batch_size": int,
    "weights": lambda ws: tuple(float(w) for w in ws), "cache_dir": str}


class TeacherTargets:
    """Teacher distributions per (sample, mirrored?): a float32 tensor (N, V, C), V = 2 with mirrors, else 1."""

    def __init__(self, probs: torch.Tensor, alpha: float) -> None:
        if probs.dim() != 3:
            raise ValueError(f"teacher targets must be (N, views, classes), got {tuple(probs.shape)}")
        self.probs = probs.float()
        self.alpha = float(alpha)

    def __len__(self) -> int:
        return self.probs.shape[0]

    @property
    def mirrored(self) -> bool:
        return self.probs.shape[1] == 2

    def lookup(self, index: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        """Distributions (B, C) for dataset indices ``index``; ``flipped`` picks the mirrored view if there is one."""
        index = torch.as_tensor(index).cpu().long()
        view = torch.zeros_like(index)
        if self.mirrored and flipped is not None:
            view = flipped.cpu().long()
        return self.probs[index, view]

    def mix(self, target: torch.Tensor, index: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        """``(1 - alpha) * target + alpha * teacher``; a hard target (B,) is taken as one-hot first."""
        teacher = self.lookup(index, flipped).to(target.device)
        if target.dim() == 1:
            target = nn.functional.one_hot(target.long(), teacher.shape[-1]).to(teacher.dtype)
        return (1.0 - self.alpha) * target.to(teacher.dtype) + self.alpha * teacher


def _mirror(image: Any) -> Any:
    return ImageOps.mirror(image)


@torch.no_grad()
def teacher_logits(model: nn.Module, dataset: FERDataset, transform: Callable[[Any], torch.Tensor], *,
                   mirror: bool, run: InferencePass | None = None, **legacy: Any) -> torch.Tensor:
    """Raw logits (N, V, C) of ``model`` on every image of ``dataset`` through ``transform`` (and its mirror).

    ``run``: the device, batch size, precision and progress bar (the earlier keywords ``device``,
    ``batch_size``, ``autocast``, ``desc``, ``progress`` still work, with a DeprecationWarning)."""
    run = run or InferencePass(desc="teacher")
    if legacy:
        run = legacy_pass(run, legacy, "teacher_logits")
    device, batch_size, autocast = run.device, run.batch_size, run.autocast
    n = len(dataset)
    views = (None, _mirror) if mirror else (None,)
    out: torch.Tensor | None = None
    model.eval()
    bar = tqdm(total=n * len(views), desc=run.desc, unit="img", disable=not run.progress, leave=False,
               dynamic_ncols=True)
    for start in range(0, n, batch_size):
        images = [dataset.get_image(i) for i in range(start, min(n, start + batch_size))]
        for v, flip in enumerate(views):
            x = torch.stack([transform(flip(im) if flip else im) for im in images]).to(device)
            if autocast is not None:
                with autocast():
                    logits = model(x)
            else:
                logits = model(x)
            logits = logits.float().cpu()
            if out is None:
                out = torch.empty((n, len(views), logits.shape[-1]), dtype=torch.float32)
            out[start:start + len(images), v] = logits
            bar.update(len(images))
    bar.close()
    if out is None:
        raise ValueError(f"{dataset.report.split}: no images to run the teacher on")
    return out


def _cache_key(teacher_sha256: str, prep: Preprocessing, dataset: FERDataset, split: str, mirror: bool,
               precision: str, content: torch.Tensor | None) -> str:
    """A name for the logits :func:`teacher_logits` would compute: the teacher's weights and preprocessing, the
    samples (ids, and the preloaded pixels when given), the views and the precision."""
    h = hashlib.sha256()
    h.update(repr((teacher_sha256, sorted(prep.to_meta().items()), split, len(dataset), bool(mirror),
                   precision)).encode())
    h.update("\n".join(sample_ids(dataset)).encode())
    if content is not None:
        h.update(content.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _cached_logits(cache_dir: str | None, key: str, compute: Callable[[], torch.Tensor], n: int,
                   views: int) -> tuple[torch.Tensor, str]:
    """Logits from ``cache_dir/teacher-KEY.safetensors`` when a matching file is there, else computed (and
    stored there atomically). Returns the logits and ``disk`` or ``computed``."""
    from safetensors.torch import load_file, save_file

    if cache_dir is None:
        return compute(), "computed"
    path = Path(cache_dir) / f"teacher-{key}.safetensors"
    if path.is_file():
        try:
            logits = load_file(str(path))["logits"]
        except Exception:  # a damaged file is recomputed, never trained on
            logits = None
        if logits is not None and tuple(logits.shape[:2]) == (n, views):
            return logits, "disk"
    logits = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({"logits": logits.contiguous()}, tmp, metadata={"key": key}))
    return logits, "computed"


def _teacher_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1)


def _agreement(probs: torch.Tensor, dataset: FERDataset) -> float:
    """How often the teacher's top class (un-mirrored view) is the sample's majority label."""
    labels = torch.as_tensor(np.asarray(dataset.labels, dtype=np.int64))
    return float((probs[:, 0].argmax(-1) == labels).float().mean())


@dataclass(frozen=True)
class TeacherRun:
    """How the teachers run: the device, the mixed precision (``autocast``, and ``precision`` naming its dtype in
    the cache key), where lines are said and whether progress bars show."""

    device: torch.device
    autocast: Callable[[], Any] | None = None
    precision: str = "none"
    say: Callable[[str], None] = print
    progress: bool = True


_TEACHER_RUN_KEYS = ("device", "autocast", "precision", "say", "progress")


def build_teacher_targets(cfg: DistillConfig, train: FERDataset, classes: Sequence[str], *,
                          run: TeacherRun | None = None, val: FERDataset | None = None,
                          contents: dict[str, torch.Tensor] | None = None,
                          **legacy: Any) -> tuple[TeacherTargets, dict[str, Any]]:
    """Run every teacher over ``train`` (and ``val``, for the record), average their distributions, and say
    what each teacher and the ensemble score against the majority labels. Returns the targets and a record.

    With ``cfg.cache_dir`` each teacher's logits are kept on disk, named by everything they depend on
    (``run.precision`` names the autocast dtype; ``contents`` maps a split to its preloaded pixels), so a resumed
    run or a sweep over ``alpha``/``temperature`` skips the teacher pass. The earlier keywords (``device``,
    ``autocast``, ``precision``, ``say``, ``progress``) still work, with a DeprecationWarning."""
    run = _teacher_run(run, legacy)
    device, autocast, precision, say, progress = run.device, run.autocast, run.precision, run.say, run.progress
    t0 = time.monotonic()
    weights = cfg.teacher_weights()
    totals: dict[str, torch.Tensor] = {}
    splits = {"train": train, **({"val": val} if val is not None else {})}
    teachers: list[dict[str, Any]] = []
    for name, w in zip(cfg.teachers, weights, strict=True):
        path = resolve_weights(name)
        model = load_model(path, device=device)
        card = model.card
        mapping = match_classes(list(card.classes), list(classes))
        prep = Preprocessing.from_dict(card.preprocessing, int(model.cfg.input_size))
        transform = create_transform(prep)
        sha = sha256_of(weights_file(path))
        record: dict[str, Any] = {"teacher": name, "path": str(path), "model": card.architecture, "sha256": sha,
                                  "weight": round(float(w), 4)}
        t = time.monotonic()
        for split, ds in splits.items():
            mirror = cfg.mirror and split == "train"
            key = _cache_key(sha, prep, ds, split, mirror, precision, (contents or {}).get(split))
            compute = partial(teacher_logits, model, ds, transform, mirror=mirror,
                              run=InferencePass(device, cfg.batch_size, autocast, f"teacher {name} {split}", progress))
            logits, source = _cached_logits(cfg.cache_dir, key, compute, len(ds), 2 if mirror else 1)
            if mapping is not None:  # teacher outputs in the dataset's class order
                logits = logits[..., torch.as_tensor(mapping)]
            probs = _teacher_probs(logits, cfg.temperature)
            record["train_agreement" if split == "train" else "val_accuracy"] = round(_agreement(probs, ds), 4)
            record.setdefault("source", {})[split] = source
            totals[split] = probs * float(w) + totals.get(split, 0.0)
        record["seconds"] = round(time.monotonic() - t, 1)
        say(f"[distill] teacher {name}: train agreement {record['train_agreement']:.4f}"
            + (f", val accuracy {record['val_accuracy']:.4f}" if "val_accuracy" in record else "")
            + f" ({record['seconds']:.0f}s{', from disk' if 'computed' not in record['source'].values() else ''})")
        teachers.append(record)
        del model
    info: dict[str, Any] = {"teachers": teachers, "alpha": cfg.alpha, "temperature": cfg.temperature,
                            "mirror": cfg.mirror, "train_agreement": round(_agreement(totals["train"], train), 4)}
    if val is not None:
        info["val_accuracy"] = round(_agreement(totals["val"], val), 4)
    if cfg.cache_dir:
        info["cache_dir"] = cfg.cache_dir
    info["seconds"] = round(time.monotonic() - t0, 1)
    if len(teachers) > 1:
        say(f"[distill] ensemble of {len(teachers)}: train agreement {info['train_agreement']:.4f}"
            + (f", val accuracy {info['val_accuracy']:.4f}" if "val_accuracy" in info else ""))
    return TeacherTargets(totals["train"], cfg.alpha), info


def _teacher_run(run: TeacherRun | None, legacy: dict[str, Any]) -> TeacherRun:
    """The run's :class:`TeacherRun`, or one from the keywords build_teacher_targets took before it."""
    from dataclasses import replace

    from poster_fer.naming import warn_deprecated

    if not legacy:
        if run is None:
            raise TypeError("build_teacher_targets needs run=TeacherRun(device=...)")
        return run
    unknown = sorted(set(legacy) - set(_TEACHER_RUN_KEYS))
    if unknown:
        raise TypeError(f"build_teacher_targets() got unexpected keyword(s) {unknown}")
    warn_deprecated("build_teacher_targets(..., device=..., autocast=..., ...) is deprecated: pass "
                    "run=TeacherRun(device=..., ...) (poster_fer_train.distill)")
    return replace(run, **legacy) if run is not None else TeacherRun(**legacy)
