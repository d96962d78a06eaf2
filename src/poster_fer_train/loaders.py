"""Training data from a recipe's ``data`` section: splits, subsets, loaders and batch preparation.

Two pipelines:

- ``transforms``: per-sample torchvision transforms (:func:`poster_fer.data.build_transform`) in DataLoader
  workers -- the official recipes on RAF-DB/AffectNet-sized image folders.
- ``preload``: every image of a split decoded once into a uint8 tensor at the model's input size, batches cut
  from it by index and augmented as whole batches (:mod:`.augment`) on the training device. This is what
  makes FER2013/FER+ at 48 px fast on a few CPU cores, and it is the pipeline that supports landmark caching.

Splits: ``val`` is the dataset's own validation split (FER+ valid = PublicTest) or, with ``val_fraction``, a
stratified hold-out of train; ``test`` is evaluated once at the end. Loaders yield dicts
``{"image", "target", "index"}`` so evaluation can put sharded predictions back in dataset order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from poster_fer.constants import IMAGENET_MEAN, IMAGENET_STD
from poster_fer.data import DatasetError, DatasetSubset, FERDataset, MissingSplitError, build_dataset, build_transform
from poster_fer.data.factory import dataset_options
from poster_fer.distributed import DistEnv, DistributedWeightedSampler, ShardSampler, balanced_weights
from poster_fer.naming import warn_deprecated
from poster_fer.weights.preprocessing import Preprocessing

from .augment import BatchAugment, BatchAugmentConfig, Degrade, DegradeConfig
from .recipe import DataSettings

PIPELINES = ("transforms", "preload")


def _split_limit(max_samples: Any, split: str) -> int | None:
    if max_samples is None:
        return None
    if isinstance(max_samples, dict):
        value = max_samples.get(split)
        return None if value is None else int(value)
    return int(max_samples)


def subsample(ds: FERDataset, n: int | None, seed: int, split: str) -> FERDataset:
    """A seeded random subset of ``n`` samples in dataset order (smoke runs and tests); all when ``n`` is None."""
    if n is None or n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    return DatasetSubset(ds, idx, split=f"{ds.report.split} ({n} sampled with seed {seed})")


#: The share of a training set held out for validation when the dataset has no validation split and the recipe
#: sets no ``data.val_fraction``. 0.2 rather than 0.1: fine-tuning sets are small (a few hundred images), and a
#: validation split of 3-5 images per class would make the epoch choice noise. Seeded by ``data.val_seed`` (0).
DEFAULT_VAL_FRACTION = 0.2
# Datasets people bring (a folder per class, a CSV of path,label): an unreadable image is skipped and counted by
# default (``data.options.on_error=raise`` stops at the first instead), and the classes are checked before any
# training: none empty, at least two, and a warning under MIN_IMAGES_PER_CLASS training images (a class with a
# handful of faces is learned as noise, and its validation share is one or two faces).
USER_DATA_KINDS = ("folder", "csv")
MIN_IMAGES_PER_CLASS = 10


def applicable_options(kind: str, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The dataset options a kind's reader accepts, and the names of those it does not (a recipe written for
    FER+ sets ``label_mode``, which means nothing to a folder of images)."""
    accepted = dataset_options(kind)
    kept = {k: v for k, v in options.items() if k in accepted}
    return kept, sorted(set(options) - set(kept))


def load_splits(cfg: DataSettings | Mapping[str, Any], seed: int = 0, say: Any = None) -> dict[str, FERDataset]:
    """Datasets for train, val and (when the layout has one) test, without transforms.

    A dataset without a validation split gets one held out from train: ``data.val_fraction``, else
    :data:`DEFAULT_VAL_FRACTION` (stratified, seeded by ``data.val_seed``; a line says so). Options the
    dataset kind does not take are dropped with a line naming them.
    """
    say = say or (lambda _msg: None)
    cfg = data_settings(cfg)
    kind, root = cfg.kind, cfg.root
    if root is None:
        raise DatasetError(f"recipe names no data root for {kind!r}: pass --data PATH")
    options, ignored = applicable_options(kind, dict(cfg.options or {}))
    train_options, ignored_train = applicable_options(kind, dict(cfg.train_options or {}))
    for key in sorted(set(ignored) | set(ignored_train)):
        where = "data.options" if key in ignored else "data.train_options"
        say(f"[data] {where}.{key} does not apply to data.kind={kind!r}: ignored")
    if kind in USER_DATA_KINDS:
        options.setdefault("on_error", "skip")
    train_options = {**options, **train_options}
    holdout = {"val_fraction": float(cfg.val_fraction), "val_seed": int(cfg.val_seed)} if cfg.val_fraction else {}
    out: dict[str, FERDataset] = {}
    out["train"] = _build_quietly(kind, root, "train", **holdout, **train_options)
    try:
        out["val"] = _build_quietly(kind, root, "val", **holdout, **options)
    except MissingSplitError:
        holdout = {"val_fraction": DEFAULT_VAL_FRACTION, "val_seed": int(cfg.val_seed)}
        say(f"[data] no validation split in {root}: holding out {DEFAULT_VAL_FRACTION:g} of train per class "
            f"(seed {holdout['val_seed']}; set data.val_fraction to change it)")
        out["train"] = _build_quietly(kind, root, "train", **holdout, **train_options)
        out["val"] = _build_quietly(kind, root, "val", **holdout, **options)
    try:
        out["test"] = _build_quietly(kind, root, "test", **options)
    except MissingSplitError:
        say(f"[data] no test split in {root}: the run reports validation metrics only")
    limits = cfg.max_samples
    for split in list(out):
        out[split] = subsample(out[split], _split_limit(limits, split), seed, split)
    if not out["train"].classes == out["val"].classes:
        raise DatasetError(f"train and val class names differ: {out['train'].classes} vs {out['val'].classes}")
    report_skipped(out, say)
    for split, ds in out.items():
        if len(ds) == 0:
            raise DatasetError(f"{kind} {split} split is empty ({ds.report.summary()})", root)
    check_classes(out["train"], root, say, user_data=kind in USER_DATA_KINDS)
    return out


def _build_quietly(*args: Any, **kwargs: Any) -> FERDataset:
    """``build_dataset`` without the dataset's own "skipped N broken rows" warning: :func:`report_skipped` says
    it once for all splits (a held-out validation split reads the same files), so a run reports it once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*\]: skipped \d+ broken rows", category=UserWarning)
        return build_dataset(*args, **kwargs)


def report_skipped(splits: dict[str, FERDataset], say: Any) -> None:
    """One line for the images a load skipped, with the count, the reasons and the first file: never silent. A
    held-out validation split reads the same files as train, so identical reports are said once for both."""
    lines: dict[str, list[str]] = {}
    for split, ds in splits.items():
        report = getattr(ds, "report", None)
        if report is None or not report.skipped:
            continue
        reasons = ", ".join(f"{k}: {v}" for k, v in report.skipped.items())
        first = f"; first: {report.messages[0]}" if report.messages else ""
        lines.setdefault(f"skipped {report.num_skipped} images ({reasons}){first}", []).append(split)
    for text, names in lines.items():
        say(f"[data] {', '.join(names)}: {text} (data.options.on_error=raise stops at the first instead)")


def class_counts(ds: FERDataset) -> list[int]:
    """Training images per class (soft targets counted by their majority class)."""
    targets = np.asarray(ds.targets)
    hard = targets.argmax(axis=1) if targets.ndim == 2 else targets.astype(int)
    return np.bincount(hard, minlength=len(ds.classes)).tolist()


def check_classes(train: FERDataset, root: Any, say: Any, user_data: bool) -> None:
    """Refuse training data that cannot make a classifier (fewer than two classes, a class without images) and
    warn about classes too small to learn, with the counts. Subsampled benchmark recipes (``max_samples``) may
    miss a rare class on purpose, so the empty and small checks apply to the datasets people bring."""
    counts = dict(zip(train.classes, class_counts(train), strict=True))
    listed = ", ".join(f"{c} {n}" for c, n in counts.items())
    if len(counts) < 2:
        raise DatasetError(f"only one class ({listed} images): a classifier needs at least two classes, each a "
                           "folder of face images (or a label in the CSV)", root)
    if not user_data:
        return
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DatasetError(f"no training images for class {', '.join(map(repr, empty))} (images per class: "
                           f"{listed}): add face images for it, or remove its folder (or its CSV rows)", root)
    small = {c: n for c, n in counts.items() if n < MIN_IMAGES_PER_CLASS}
    if small:
        say(f"[data] warning: fewer than {MIN_IMAGES_PER_CLASS} training images for "
            f"{', '.join(f'{c} ({n})' for c, n in small.items())}: expect those classes to be guessed, not "
            f"learned (images per class: {listed})")


def preload_images(ds: FERDataset, prep: Preprocessing | int, grayscale: bool = False,
                   channel_order: str = "RGB") -> torch.Tensor:
    """Every image as uint8 (N, C, size, size), C = 1 for grey data (expanded to 3 per batch), else 3.

    The pixels are ``prep``'s :meth:`Preprocessing.pixels` (grey, then the resize), the step every other path
    takes too, so the saved model's preprocessing reproduces the training input exactly. (An int ``prep`` is
    the earlier form: the input size, with ``grayscale`` and ``channel_order`` given apart.)
    """
    if not isinstance(prep, Preprocessing):
        prep = Preprocessing(input_size=int(prep), mean=IMAGENET_MEAN, std=IMAGENET_STD, grayscale=grayscale,
                             channel_order=str(channel_order).upper())
    size, grayscale, channel_order = prep.input_size, prep.grayscale, prep.channel_order
    n = len(ds)
    c = 1 if grayscale else 3
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        arr = prep.pixels(ds.get_image(i))
        out[i] = arr[..., :1] if grayscale else arr
    t = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    if c == 3 and channel_order.upper() == "BGR":
        t = t.flip(1).contiguous()
    return t


def targets_tensor(ds: FERDataset) -> torch.Tensor:
    """Hard targets as int64 (N,), soft ones as float32 (N, C)."""
    if ds.soft:
        return torch.as_tensor(np.asarray(ds.targets, dtype=np.float32))
    return torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))


class IndexedDataset(Dataset):
    """Wrap a dataset so samples carry their index: ``{"image", "target", "index"}``."""

    def __init__(self, ds: FERDataset, transform: Any) -> None:
        self.ds = ds
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.transform(self.ds.get_image(i))
        return {"image": image, "target": self.ds.get_target(i), "index": i}


class TensorBatches:
    """Batches cut from preloaded tensors by the sampler's indices (no workers, no collate)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, sampler: Sampler[int], batch_size: int,
                 drop_last: bool) -> None:
        self.images, self.targets = images, targets
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield {"image": self.images[idx], "target": self.targets[idx], "index": idx}


@dataclass
class BatchPreparer:
    """Turns a loader batch into model input on the device: ``(x, target, model_kwargs, flipped)``.

    Preloaded uint8 batches are normalised here (grey expanded to 3 channels) and, for training, augmented;
    cached landmark tokens and teacher distributions are looked up for the batch's indices and flips.
    """

    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preload: bool
    channels_last: bool = False
    augment: BatchAugment | None = None
    degrade: Degrade | None = None  # on the uint8 faces, before normalisation (training split only)
    cache: Any = None  # LandmarkCache | None
    teacher: Any = None  # distill.TeacherTargets | None: mixed into the training targets
    _mean: torch.Tensor = field(init=False, repr=False)
    _std: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1|3, H, W) -> normalised float32 (B, 3, H, W) on the device."""
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], torch.Tensor | None]:
        target = batch["target"].to(self.device, non_blocking=True)
        flipped = None
        if self.preload:
            images = batch["image"] if self.degrade is None else self.degrade(batch["image"])
            x = self.to_input(images)
            if self.augment is not None:
                x, flipped = self.augment(x)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = batch["image"].to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        if self.teacher is not None:
            target = self.teacher.mix(target, torch.as_tensor(batch["index"]), flipped)
        kwargs: dict[str, Any] = {}
        if self.cache is not None:
            tokens = self.cache.lookup(torch.as_tensor(batch["index"]), flipped)
            # Stored narrow (float16 halves the cache), computed with in float32 like the live stream's output.
            kwargs["landmark_tokens"] = tokens.to(self.device, non_blocking=True).float()
        return x, target, kwargs, flipped


@dataclass
class TrainingData:
    """Everything the trainer needs from the data: datasets, loaders, preparers and what to record."""

    classes: list[str]
    datasets: dict[str, FERDataset]
    loaders: dict[str, Any]
    preparers: dict[str, BatchPreparer]
    train_sampler: Any
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # preload pipeline only
    preprocessing: Preprocessing | None = None  # the run's input contract (what the saved model records)

    def counts(self) -> dict[str, int]:
        return {split: len(ds) for split, ds in self.datasets.items()}

    def reports(self) -> dict[str, Any]:
        return {split: ds.report.as_dict() for split, ds in self.datasets.items()}

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.train_sampler, "set_epoch"):
            self.train_sampler.set_epoch(epoch)


@dataclass(frozen=True)
class Batching:
    """How the loaders cut batches: the per-rank training and evaluation batch, the sampler's seed, class
    balance and the memory format of the batches."""

    batch_size: int
    eval_batch_size: int
    seed: int = 0
    class_balanced: bool = False
    channels_last: bool = False


#: The keywords build_training_data took before :class:`Batching` and the preprocessing object.
_LEGACY_BATCHING = ("batch_size", "eval_batch_size", "seed", "class_balanced", "channels_last")


def data_settings(cfg: DataSettings | Mapping[str, Any]) -> DataSettings:
    """The typed ``data`` section (a plain dict, whole or partial, is parsed: missing keys take the defaults)."""
    return cfg if isinstance(cfg, DataSettings) else DataSettings.from_dict(cfg)


def build_training_data(cfg: DataSettings | Mapping[str, Any], batching: Batching | None = None, *, env: DistEnv,
                        device: torch.device, preprocessing: Preprocessing | None = None,
                        datasets: dict[str, FERDataset] | None = None, **legacy: Any) -> TrainingData:
    """Datasets, samplers and loaders per split, fed through ``preprocessing`` (the run's one input contract,
    also what the saved model records). Batch sizes in ``batching`` are per rank.

    The earlier keywords (``input_size``, ``batch_size``, ``eval_batch_size``, ``seed``, ``class_balanced``,
    ``channels_last``) still work, with a DeprecationWarning."""
    cfg = data_settings(cfg)
    if legacy:
        batching, preprocessing = _legacy_batching(cfg, batching, preprocessing, legacy)
    if batching is None or preprocessing is None:
        raise TypeError("build_training_data needs batching=Batching(...) and preprocessing=Preprocessing(...)")
    if cfg.pipeline not in PIPELINES:
        raise ValueError(f"data.pipeline must be one of {PIPELINES}, not {cfg.pipeline!r}")
    if cfg.pipeline != "preload" and DegradeConfig.from_dict(cfg.degrade).p > 0:
        raise ValueError("data.degrade needs data.pipeline: preload (it works on the preloaded uint8 faces)")
    datasets = datasets or load_splits(cfg, seed=int(cfg.subset_seed))
    sampler = _train_sampler(datasets["train"], batching, env)
    build = _preloaded if cfg.pipeline == "preload" else _transformed
    loaders, preparers, images = build(cfg, datasets, sampler, batching, _Target(env, device, preprocessing))
    return TrainingData(list(datasets["train"].classes), datasets, loaders, preparers, sampler, images,
                        preprocessing)


def _legacy_batching(cfg: DataSettings, batching: Batching | None, preprocessing: Preprocessing | None,
                     legacy: dict[str, Any]) -> tuple[Batching, Preprocessing]:
    unknown = sorted(set(legacy) - {"input_size", *_LEGACY_BATCHING})
    if unknown:
        raise TypeError(f"build_training_data() got unexpected keyword(s) {unknown}")
    warn_deprecated("build_training_data(cfg, input_size=..., batch_size=..., ...) is deprecated: pass "
                    "build_training_data(cfg, Batching(...), env=..., device=..., preprocessing=...)")
    if batching is None:
        batching = Batching(**{k: legacy[k] for k in _LEGACY_BATCHING if k in legacy})
    if preprocessing is None and "input_size" in legacy:
        preprocessing = cfg.preprocessing(int(legacy["input_size"]))
    return batching, preprocessing  # type: ignore[return-value]


@dataclass(frozen=True)
class _Target:
    """Where batches go and how they are normalised: the process group, the device and the preprocessing."""

    env: DistEnv
    device: torch.device
    prep: Preprocessing

    def preparer(self, preload: bool, batching: Batching, **extra: Any) -> BatchPreparer:
        return BatchPreparer(self.device, tuple(self.prep.mean), tuple(self.prep.std), preload,
                             batching.channels_last, **extra)


def _train_sampler(train: FERDataset, batching: Batching, env: DistEnv) -> Any:
    if batching.class_balanced:
        return DistributedWeightedSampler(balanced_weights(train.labels), env, seed=batching.seed)
    return DistributedSampler(train, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=batching.seed,
                              drop_last=False)


def _preloaded(cfg: DataSettings, datasets: dict[str, FERDataset], sampler: Any, batching: Batching,
               to: _Target) -> tuple[dict[str, Any], dict[str, BatchPreparer], dict[str, torch.Tensor]]:
    """The preload pipeline: every split decoded once to uint8 tensors, batches cut by index."""
    drop_last = len(sampler) > batching.batch_size
    augment = BatchAugment(BatchAugmentConfig.from_dict(cfg.augment))
    degrade = Degrade(DegradeConfig.from_dict(cfg.degrade))
    loaders: dict[str, Any] = {}
    preparers: dict[str, BatchPreparer] = {}
    images: dict[str, torch.Tensor] = {}
    for split, ds in datasets.items():
        images[split] = preload_images(ds, to.prep)
        tgt = targets_tensor(ds)
        if split == "train":
            loaders[split] = TensorBatches(images[split], tgt, sampler, batching.batch_size, drop_last)
            preparers[split] = to.preparer(True, batching, augment=augment,
                                           degrade=degrade if degrade.active else None)
        else:
            loaders[split] = TensorBatches(images[split], tgt, ShardSampler(len(ds), to.env),
                                           batching.eval_batch_size, False)
            preparers[split] = to.preparer(True, batching)
    return loaders, preparers, images


def _transformed(cfg: DataSettings, datasets: dict[str, FERDataset], sampler: Any, batching: Batching,
                 to: _Target) -> tuple[dict[str, Any], dict[str, BatchPreparer], dict[str, torch.Tensor]]:
    """The transforms pipeline: per-sample torchvision transforms in DataLoader workers."""
    drop_last = len(sampler) > batching.batch_size
    erasing = cfg.erasing
    if isinstance(erasing, list):
        erasing = (float(erasing[0]), tuple(erasing[1]))
    prep = to.prep
    loaders: dict[str, Any] = {}
    preparers: dict[str, BatchPreparer] = {}
    for split, ds in datasets.items():
        is_train = split == "train"
        tf = build_transform(cfg.transform, is_train, prep.input_size, tuple(prep.mean), tuple(prep.std),
                             prep.channel_order, erasing=erasing if is_train else None)
        loaders[split] = DataLoader(
            IndexedDataset(ds, tf), batch_size=batching.batch_size if is_train else batching.eval_batch_size,
            sampler=sampler if is_train else ShardSampler(len(ds), to.env), num_workers=int(cfg.num_workers),
            pin_memory=to.device.type == "cuda", drop_last=drop_last if is_train else False,
            generator=torch.Generator() if is_train else None,
        )
        preparers[split] = to.preparer(False, batching)
    return loaders, preparers, {}
