"""The one evaluation loop: predict a split batch by batch (DDP- and autocast-aware), in dataset order.

Training's per-epoch validation and final test, ``poster-fer eval`` (:func:`~poster_fer.evaluation.evaluate.
run_evaluation`) and the ablation all predict through :func:`predict_split`, so "the test accuracy" has one
definition. It returns the raw logits as well as the probabilities, because calibration (a temperature, a
class-prior bias) is applied to logits by the caller, never inside the loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import DistEnv, all_reduce_sum, gather_arrays
from ..probabilities import softmax
from .options import legacy_options

__all__ = ["EvalOutput", "PredictOptions", "predict_split", "unwrap"]

SINGLE = DistEnv()
#: ``prepare(batch) -> (images on device, targets on device, forward kwargs, anything)``
Prepare = Callable[[Any], tuple[torch.Tensor, torch.Tensor, dict[str, Any], Any]]


@dataclass
class EvalOutput:
    """Predictions over a split in dataset order (``y_true`` hard labels, argmax of soft targets).

    ``logits`` are the unflipped images' (what a temperature is fitted on); ``flip_logits`` the mirrors' when
    flip TTA ran; ``probs`` the softmax of the logits, averaged over both views with TTA.
    """

    indices: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    logits: np.ndarray
    loss: float
    seconds: float
    features: np.ndarray | None = None
    flip_logits: np.ndarray | None = None


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices from hard labels or from soft (vote-distribution) targets."""
    return target.argmax(dim=-1) if target.dim() == 2 else target


def _forward(net: nn.Module, x: torch.Tensor, kwargs: dict[str, Any] | None, tta_flip: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(features, logits, mirror logits or None)`` of one batch: the one prediction step of every evaluation.

    Cached landmark tokens (``kwargs``) belong to the unflipped image, so they refuse flip TTA.
    """
    kwargs = kwargs or {}
    feats = net.forward_features(x, **kwargs)
    logits = net.forward_head(feats).float()
    if not tta_flip:
        return feats, logits, None
    if kwargs:
        raise ValueError("flip TTA with cached landmark tokens is not supported")
    return feats, logits, net.forward_head(net.forward_features(x.flip(-1))).float()


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict_split` runs: the loss to average (``criterion``, or None), the autocast context, whether
    to keep the features and to add flip TTA, and the progress bar (shown on rank 0 only)."""

    criterion: nn.Module | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    return_features: bool = False
    tta_flip: bool = False
    progress: bool = True
    desc: str = "eval"


@torch.no_grad()
def predict_split(
    model: nn.Module,
    loader: Iterable[Any],
    prepare: Prepare,
    *,
    device: torch.device,
    env: DistEnv = SINGLE,
    options: PredictOptions | None = None,
    **legacy: Any,
) -> EvalOutput:
    """Predict a split (each rank its shard), gather over ranks and restore dataset order.

    Every batch must carry ``"index"`` (the samples' dataset indices), which orders the gathered result.
    The model is put in eval mode for the loop and returned to its previous mode. ``options`` (a
    :class:`PredictOptions`); its fields as keywords (the form before it) still work, with a DeprecationWarning.
    """
    opts = legacy_options(options, PredictOptions, legacy, "predict_split")
    t0 = time.perf_counter()
    parts = _Parts()
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(total=total, desc=opts.desc, unit="batch", disable=not (opts.progress and env.is_main), leave=False,
               dynamic_ncols=True)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        for batch in loader:
            x, y, kwargs, _ = prepare(batch)
            with opts.autocast():
                feats, logits, flipped = _forward(net, x, kwargs, opts.tta_flip)
            if opts.criterion is not None:
                parts.loss_sum += float(opts.criterion(logits, y)) * x.shape[0]
            parts.add(batch["index"], y, logits, flipped, feats if opts.return_features else None)
            bar.update(1)
    finally:
        bar.close()
        net.train(was_training)
    return parts.gather(env, device, opts, t0)


class _Parts:
    """The batches' predictions on this rank, gathered over ranks into an :class:`EvalOutput` at the end."""

    def __init__(self) -> None:
        self.idx: list[np.ndarray] = []
        self.true: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []
        self.flip: list[np.ndarray] = []
        self.feats: list[np.ndarray] = []
        self.loss_sum = 0.0
        self.n = 0.0

    def add(self, index: Any, y: torch.Tensor, logits: torch.Tensor, flipped: torch.Tensor | None,
            feats: torch.Tensor | None) -> None:
        """Keep one batch's indices, hard labels, logits (and mirror logits, features when there are any)."""
        self.n += logits.shape[0]
        self.idx.append(torch.as_tensor(index).cpu().numpy())
        self.true.append(hard_labels(y).cpu().numpy())
        self.logits.append(logits.cpu().numpy())
        if flipped is not None:
            self.flip.append(flipped.cpu().numpy())
        if feats is not None:
            self.feats.append(feats.float().cpu().numpy())

    def gather(self, env: DistEnv, device: torch.device, opts: PredictOptions, t0: float) -> EvalOutput:
        """Gather every rank's parts, put them back in dataset order and take the softmax (averaged under TTA)."""
        local = {"indices": _cat(self.idx, (0,), np.int64), "y_true": _cat(self.true, (0,), np.int64),
                 "logits": _cat(self.logits, (0, 0), np.float32)}
        if opts.tta_flip:
            local["flip_logits"] = _cat(self.flip, (0, 0), np.float32)
        if opts.return_features:
            local["features"] = _cat(self.feats, (0, 0), np.float32)
        loss_sum, n = all_reduce_sum([self.loss_sum, self.n], env, device)
        full = gather_arrays(local, env)
        order = np.argsort(full["indices"], kind="stable")
        logits = full["logits"][order].astype(np.float32)
        flip = full["flip_logits"][order].astype(np.float32) if opts.tta_flip else None
        probs = softmax(logits) if flip is None else (softmax(logits) + softmax(flip)) / 2
        return EvalOutput(
            indices=full["indices"][order],
            y_true=full["y_true"][order].astype(np.int64),
            y_pred=probs.argmax(axis=1).astype(np.int64),
            probs=probs.astype(np.float32),
            logits=logits,
            loss=loss_sum / n if (opts.criterion is not None and n) else float("nan"),
            seconds=time.perf_counter() - t0,
            features=full["features"][order] if opts.return_features else None,
            flip_logits=flip,
        )


def _cat(parts: list[np.ndarray], empty: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty, dtype)
