"""Which samples an evaluation runs on and what each is called: reproducible subsets, printable ids across the
dataset kinds (files, FER+ names, CSV rows, subsets), and the batch view the evaluation loop reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import DatasetSubset

__all__ = ["EvalImages", "sample_ids", "subsample_indices"]


def sample_ids(dataset: Any) -> list[str]:
    """A printable id per sample (file path, FER+ image name, or ``file#row``) for ``predictions.csv``."""

    if isinstance(dataset, DatasetSubset):
        base = sample_ids(dataset.base)
        return [base[i] for i in dataset.indices.tolist()]
    if isinstance(dataset, torch.utils.data.Subset):
        base = sample_ids(dataset.dataset)
        return [base[i] for i in dataset.indices]
    paths = getattr(dataset, "paths", None)
    if paths is not None:
        return [str(p) for p in paths]
    names = getattr(dataset, "image_names", None)
    if names:
        return [str(n) for n in names]
    table = getattr(dataset, "table", None)
    rows = getattr(dataset, "rows", None)
    if table is not None and rows is not None:
        src = Path(str(table.path)).name
        return [f"{src}#line{int(table.lines[r])}" for r in np.asarray(rows).tolist()]
    return [str(i) for i in range(len(dataset))]


def subsample_indices(num_samples: int, max_samples: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a reproducible random subset; a random one since many layouts are sorted by class."""
    if max_samples is None or max_samples >= num_samples:
        return np.arange(num_samples)
    if max_samples < 1:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_samples, size=max_samples, replace=False))


class EvalImages(torch.utils.data.Dataset):
    """Transformed images of some samples as loop batches (``image``, ``index`` within the run, hard ``target``)."""

    def __init__(self, dataset: Any, indices: np.ndarray, labels: np.ndarray, transform: Callable | None) -> None:
        self.dataset, self.indices, self.labels, self.transform = dataset, indices, labels, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = int(self.indices[i])
        image = self.dataset[index][0] if self.transform is None else self.transform(self.dataset.get_image(index))
        return {"image": image, "index": i, "target": int(self.labels[i])}
