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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm


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
              mirror: bool, batch_size: int = 256, dtype: torch.dtype = torch.float32,
              autocast: Callable[[], object] | None = None, desc: str = "landmark cache",
              progress: bool = True) -> LandmarkCache:
        """Run ``model.landmark_features`` over every image (and its mirror when ``mirror``).

        ``images`` is the preloaded uint8 tensor (N, C, H, W); ``to_input`` turns a slice into the normalised
        model input on the model's device (the same function the training loop uses). ``autocast`` returns a
        context manager for mixed precision.
        """
        if not hasattr(model, "landmark_features"):
            raise ValueError(f"{type(model).__name__} has no landmark stream to cache")
        n = images.shape[0]
        views = 2 if mirror else 1
        out = torch.empty((n, views, 49, 512), dtype=dtype)
        was_training = model.training
        model.eval()
        bar = tqdm(total=n * views, desc=desc, unit="img", disable=not progress, leave=False, dynamic_ncols=True)
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
