"""One entry point for every layout, held-out validation splits, and class-balanced sampling."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import WeightedRandomSampler

from .affectnet import AffectNetCsvDataset, AffectNetListDataset
from .base import FERDataset, Transform, normalize_split
from .errors import DatasetError, LoadReport, MissingSplitError
from .fer2013 import Fer2013Dataset
from .ferplus import FerPlusDataset
from .generic import CsvManifestDataset, ImageFolderDataset, find_split_dir
from .rafdb import RafDbDataset

DATASET_KINDS = ("rafdb", "fer2013", "ferplus", "affectnet7", "affectnet8", "affectnet", "folder", "csv")

_KEEP: Any = object()


class DatasetSubset(FERDataset):
    """Some samples of a dataset with their own transform (held-out data must not get train augmentation)."""

    def __init__(
        self,
        base: FERDataset,
        indices: Sequence[int],
        transform: Transform | None = _KEEP,
        split: str | None = None,
    ) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.base.soft:
            targets: list[int] | np.ndarray = np.asarray(base.targets)[self.indices]
        else:
            targets = [int(base.targets[i]) for i in self.indices.tolist()]
        labels = np.asarray(base.labels)[self.indices]
        counts = (
            np.bincount(labels, minlength=len(base.classes)) if len(labels) else np.zeros(len(base.classes))
        )
        parent = base.report
        report = LoadReport(
            dataset=parent.dataset,
            split=split or parent.split,
            source=parent.source,
            classes=list(base.classes),
            class_counts={name: int(c) for name, c in zip(base.classes, counts, strict=True)},
            rows_read=parent.rows_read,
            skipped=dict(parent.skipped),
            dropped=dict(parent.dropped),
            messages=list(parent.messages),
        )
        super().__init__(base.classes, targets, report, base.transform if transform is _KEEP else transform)

    def get_image(self, index: int) -> Image.Image:
        return self.base.get_image(int(self.indices[index]))


def holdout_split(
    dataset: FERDataset,
    val_fraction: float = 0.1,
    seed: int = 0,
    stratify: bool = True,
    train_transform: Transform | None = _KEEP,
    val_transform: Transform | None = _KEEP,
) -> tuple[DatasetSubset, DatasetSubset]:
    """Split a train set into (train, val) deterministically, for model selection without touching test.

    The same ``seed`` always gives the same split; with ``stratify`` each class contributes
    ``round(val_fraction * class size)`` samples, so rare classes appear in both parts. The transforms
    default to the dataset's own; pass an eval transform for the validation part.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    labels = dataset.labels
    if stratify:
        groups = [np.flatnonzero(labels == c) for c in range(len(dataset.classes))]
    else:
        groups = [np.arange(len(labels))]
    val_parts = []
    for group in groups:
        take = int(round(val_fraction * len(group)))
        val_parts.append(rng.permutation(group)[:take])
    val_idx = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[val_idx] = False
    train_idx = np.flatnonzero(mask)
    return (
        DatasetSubset(dataset, train_idx, train_transform, split="train (held-out remainder)"),
        DatasetSubset(
            dataset, val_idx, val_transform, split=f"val (held-out {val_fraction:g} of train, seed {seed})"
        ),
    )


def class_balanced_sampler(
    data: FERDataset | Sequence[int] | np.ndarray | torch.Tensor,
    num_samples: int | None = None,
    replacement: bool = True,
    generator: torch.Generator | None = None,
) -> WeightedRandomSampler:
    """A sampler drawing each class equally often (weights 1/class count), as POSTER trains on AffectNet.

    Pass it to ``DataLoader(sampler=...)`` instead of ``shuffle=True``; an epoch is ``len(data)`` draws
    unless ``num_samples`` says otherwise. Soft targets are balanced by their argmax.
    """
    if isinstance(data, FERDataset):
        labels = data.labels
    else:
        labels = np.asarray(data.cpu() if isinstance(data, torch.Tensor) else data)
        if labels.ndim == 2:
            labels = labels.argmax(axis=1)
        labels = labels.astype(np.int64)
    if labels.size == 0:
        raise ValueError("cannot balance an empty dataset")
    if labels.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=len(labels) if num_samples is None else num_samples,
        replacement=replacement,
        generator=generator,
    )


def _fer_files(root: Path, options: dict[str, Any]) -> tuple[Path, Path | None]:
    """Locate fer2013.csv(.gz) and fer2013new.csv from a folder or from the pixel file itself."""
    fer = options.pop("fer_csv", None)
    plus = options.pop("ferplus_csv", None)
    if fer is None:
        if root.is_file():
            fer = root
        else:
            fer = next((root / n for n in ("fer2013.csv", "fer2013.csv.gz") if (root / n).is_file()), None)
            if fer is None:
                raise DatasetError("neither fer2013.csv nor fer2013.csv.gz found", root)
    fer = Path(fer).expanduser()
    if plus is None:
        folder = root if root.is_dir() else root.parent
        plus = folder / "fer2013new.csv"
    return fer, Path(plus).expanduser()


def _build(
    kind: str, root: Path, split: str, transform: Transform | None, options: dict[str, Any]
) -> FERDataset:
    if kind == "rafdb":
        return RafDbDataset(root, split, transform, **options)
    if kind == "fer2013":
        fer, _ = _fer_files(root, options)
        return Fer2013Dataset(fer, split, transform, **options)
    if kind == "ferplus":
        fer, plus = _fer_files(root, options)
        return FerPlusDataset(fer, plus, split, transform, **options)
    if kind in ("affectnet7", "affectnet8"):
        return AffectNetCsvDataset(root, split, transform, num_classes=int(kind[-1]), **options)
    if kind == "affectnet":
        return AffectNetListDataset(root, split, transform, **options)
    if kind == "folder":
        return ImageFolderDataset(find_split_dir(root, split), transform, split=split, **options)
    if kind == "csv":
        if root.is_file():
            return CsvManifestDataset(root, transform, split=split, **options)
        for name in [
            split,
            *{"train": ["training"], "val": ["valid", "validation"], "test": ["testing"]}.get(split, []),
        ]:
            if (root / f"{name}.csv").is_file():
                return CsvManifestDataset(root / f"{name}.csv", transform, **options)
        raise MissingSplitError(f"no manifest {split}.csv in the folder (or pass the manifest file as root)", root)
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {DATASET_KINDS}")


def dataset_options(kind: str) -> set[str]:
    """The keyword options :func:`build_dataset` passes on to a kind's reader (its constructor's parameters),
    so a recipe's options can be checked against the kind before anything is read."""
    import inspect

    kind = kind.lower()
    readers = {"rafdb": RafDbDataset, "fer2013": Fer2013Dataset, "ferplus": FerPlusDataset,
               "affectnet7": AffectNetCsvDataset, "affectnet8": AffectNetCsvDataset,
               "affectnet": AffectNetListDataset, "folder": ImageFolderDataset, "csv": CsvManifestDataset}
    if kind not in readers:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {DATASET_KINDS}")
    params = set(inspect.signature(readers[kind].__init__).parameters)
    params -= {"self", "root", "split", "transform", "manifest", "csv_path", "fer_csv", "ferplus_csv"}
    if kind in ("affectnet7", "affectnet8"):
        params.discard("num_classes")  # the kind fixes it
    if kind in ("fer2013", "ferplus"):
        params |= {"fer_csv", "ferplus_csv"}  # file names read by _fer_files
    return params


def build_dataset(
    kind: str,
    root: str | os.PathLike[str],
    split: str | None = "train",
    transform: Transform | None = None,
    *,
    val_fraction: float | None = None,
    val_seed: int = 0,
    **options: Any,
) -> FERDataset:
    """Build any supported dataset by kind, so recipes name data the same way for every layout.

    Kinds: ``rafdb``, ``fer2013``, ``ferplus`` (root: the folder with the CSVs, or the pixel CSV),
    ``affectnet7`` and ``affectnet8`` (official CSVs), ``affectnet`` (POSTER list files), ``folder``
    (``root/<split>/<class>``, or ``split="all"`` for ``root/<class>``), ``csv`` (a manifest file, or a folder
    of ``<split>.csv``). Splits are ``train``/``val``/``test``/``all`` or aliases. With ``val_fraction``,
    ``train`` and ``val`` are the two parts of :func:`holdout_split` of the train split (seeded by
    ``val_seed``), so every dataset gets a validation split without touching test. Other keyword options go
    to the dataset class (``on_error``, ``verify``, ``label_mode``, ``crop_face``, ``classes``,
    ``num_classes``, ``image_dir``...).
    """
    kind = kind.lower()
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {DATASET_KINDS}")
    norm = normalize_split(split)
    path = Path(root).expanduser()
    if val_fraction is not None and norm in ("train", "val"):
        full = _build(kind, path, "train", None, dict(options))
        train, val = holdout_split(
            full, val_fraction, seed=val_seed, train_transform=transform, val_transform=transform
        )
        return train if norm == "train" else val
    return _build(kind, path, norm, transform, dict(options))
