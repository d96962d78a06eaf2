"""Frozen-landmark feature caching for POSTER v1-family models.

The landmark stream (MobileFaceNet) never trains and runs in eval mode, so its tokens are a deterministic
function of its input. With the in-memory pipeline, training computes them once per image and once per
mirrored image, then passes them to the model (``model(x, landmark_tokens=...)``) instead of running the
landmark network every step.

Exact semantics (documented in ``docs/training.md``): for a training sample the landmark stream sees the
*un-augmented* image, mirrored when the sample's random flip fired. Every other augmentation (zoom, rotation,
translation, noise, erasing) reaches only the image stream. Without caching both streams see the fully
augmented image. At evaluation there is no augmentation, so cached tokens equal what the saved model computes
live (up to the storage dtype), and the saved model needs no cache.

With ``train.landmark_cache_dir`` the tokens are also kept on disk (safetensors, one file per split), named by a
fingerprint of everything they depend on: the images, the input preprocessing (probed on real images), the
landmark network's weights, its input size, the mirror flag and the storage dtype. Runs that share the data and
the landmark stream (the Table-4 ablation's five landmark variants, a resumed run) load them instead of paying
the MobileFaceNet pass again; a change to any ingredient gives a new name, so a stale file is never used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from poster_fer.weights.io import atomic_write

from .passes import InferencePass, legacy_pass


class LandmarkCache:
    """Landmark tokens per (sample, mirrored?): a tensor (N, V, 49, 512), V = 2 with mirrors, else 1."""

    def __init__(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 4:
            raise ValueError(f"landmark cache must be (N, views, tokens, dim), got {tuple(tokens.shape)}")
        self.tokens = tokens

    @property
    def mirrored(self) -> bool:
        return self.tokens.shape[1] == 2

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def nbytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size()

    def lookup(self, index: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, 49, 512) for dataset indices ``index``; ``flipped`` picks the mirrored view per sample."""
        index = index.cpu().long()
        view = torch.zeros_like(index)
        if flipped is not None and flipped.any():
            if not self.mirrored:
                raise RuntimeError("landmark cache has no mirrored view, but the batch was flipped")
            view = flipped.cpu().long()
        return self.tokens[index, view]

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
              mirror: bool, dtype: torch.dtype = torch.float32, run: InferencePass | None = None,
              **legacy: Any) -> LandmarkCache:
        """Run ``model.landmark_features`` over every image (and its mirror when ``mirror``).

        ``images`` is the preloaded uint8 tensor (N, C, H, W); ``to_input`` turns a slice into the normalised
        model input on the model's device (the same function the training loop uses). ``run`` sets the batch
        size, the mixed precision and the progress bar (the earlier keywords ``batch_size``, ``autocast``,
        ``desc``, ``progress`` still work, with a DeprecationWarning).
        """
        run = run or InferencePass(batch_size=256, desc="landmark cache")
        if legacy:
            run = legacy_pass(run, legacy, "LandmarkCache.build")
        batch_size, autocast = run.batch_size, run.autocast
        if not hasattr(model, "landmark_features"):
            raise ValueError(f"{type(model).__name__} has no landmark stream to cache")
        n = images.shape[0]
        views = 2 if mirror else 1
        out = torch.empty((n, views, 49, 512), dtype=dtype)
        was_training = model.training
        model.eval()
        bar = tqdm(total=n * views, desc=run.desc, unit="img", disable=not run.progress, leave=False,
                   dynamic_ncols=True)
        try:
            for start in range(0, n, batch_size):
                x = to_input(images[start:start + batch_size])
                for v in range(views):
                    xv = x.flip(-1) if v else x
                    with autocast() if autocast is not None else torch.no_grad():
                        tok = model.landmark_features(xv)  # (b, 49, 512)
                    out[start:start + x.shape[0], v] = tok.float().cpu().to(dtype)
                    bar.update(x.shape[0])
        finally:
            bar.close()
            model.train(was_training)
        if not torch.isfinite(out[:: max(1, n // 64)].float()).all():
            raise FloatingPointError("non-finite landmark features (storage dtype too narrow?)")
        return cls(out)


def cache_fingerprint(model: nn.Module, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
                      mirror: bool, dtype: torch.dtype) -> str:
    """A name for the tokens ``build`` would compute: equal fingerprints mean equal caches."""
    h = hashlib.sha256()
    cfg = getattr(model, "cfg", None)
    h.update(repr((tuple(images.shape), str(images.dtype), bool(mirror), str(dtype),
                   getattr(cfg, "landmark_size", None), getattr(cfg, "resize_mode", None))).encode())
    h.update(images.contiguous().numpy().tobytes())
    with torch.no_grad():  # the preprocessing, as it acts on real images (resize, scale, mean/std, channels)
        probe = to_input(images[: min(4, images.shape[0])]).float().cpu().contiguous()
    h.update(probe.numpy().tobytes())
    net = getattr(model, "face_landback", None)
    if net is None:
        raise ValueError(f"{type(model).__name__} has no landmark network to fingerprint")
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


@dataclass(frozen=True)
class TokenSpec:
    """What a cache holds besides the images' tokens: mirrored views or not, and the storage dtype (both are part
    of a cache file's name)."""

    mirror: bool = True
    dtype: torch.dtype = torch.float32


def load_or_build(cache_dir: str | os.PathLike[str], split: str, model: nn.Module, images: torch.Tensor,
                  to_input: Callable[[torch.Tensor], torch.Tensor], spec: TokenSpec,
                  run: InferencePass | None = None) -> tuple[LandmarkCache, dict[str, object]]:
    """The cache for one split from ``cache_dir`` when a matching file exists, else built (with ``run``) and
    stored there.

    Returns the cache and a record (``file``, ``source``: ``disk`` or ``computed``; ``rebuilt``: why an existing
    file was not used). The file is written to a temporary name and renamed, so an interrupted run never leaves
    a truncated cache behind.
    """
    from safetensors.torch import load_file, save_file

    folder = Path(cache_dir)
    mirror, dtype = spec.mirror, spec.dtype
    key = cache_fingerprint(model, images, to_input, mirror, dtype)
    path = folder / f"landmark-{split}-{key}.safetensors"
    record: dict[str, object] = {"file": str(path), "source": "computed"}
    if path.is_file():
        try:
            tokens = load_file(str(path))["tokens"]
        except Exception as e:  # a damaged file: rebuild rather than train on garbage, and say so in the record
            record["rebuilt"] = f"unreadable ({type(e).__name__}: {e})"
        else:
            if tokens.shape[0] == images.shape[0] and tokens.dtype == dtype:
                return LandmarkCache(tokens), {"file": str(path), "source": "disk"}
            record["rebuilt"] = f"holds {tuple(tokens.shape)} {tokens.dtype}, not {images.shape[0]} images in {dtype}"
    cache = LandmarkCache.build(model, images, to_input, mirror=mirror, dtype=dtype, run=run)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({"tokens": cache.tokens.contiguous()}, tmp,
                                             metadata={"split": split, "fingerprint": key}))
    return cache, record
