"""Batched augmentation on tensors, for the in-memory (``preload``) data pipeline.

Small datasets (FER2013/FER+ at 48 px) fit in memory as one uint8 tensor. Augmenting whole batches with a
few tensor ops (one ``grid_sample`` for flip + scale + rotation + translation, masks for erasing) costs a
fraction of per-image PIL transforms in DataLoader workers, which on a 2-core machine compete with the model
for the same cores. The flip is reported per sample so frozen landmark features cached for the image and its
mirror can be looked up (see :mod:`poster_fer_train.landmark_cache`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class BatchAugmentConfig:
    """What :class:`BatchAugment` does to a training batch (all probabilities per sample).

    Args:
        flip: probability of a horizontal flip.
        scale: zoom range (``>1`` zooms in, i.e. a smaller crop of the face is enlarged).
        rotate: largest rotation in degrees (uniform in +-rotate).
        translate: largest shift as a fraction of the side (uniform in +-translate, per axis).
        affine_p: probability of applying scale/rotation/translation at all.
        erasing_p: probability of erasing one random rectangle (RandomErasing, value 0 after normalisation).
        erasing_scale: erased area as a fraction of the image.
        erasing_ratio: aspect-ratio range of the erased rectangle (sampled log-uniformly).
        noise_std: std of additive Gaussian noise in normalised units (0: off).
        brightness: largest additive shift in normalised units (uniform in +-brightness), per sample; with
            ``contrast`` it stands in for the lighting of photos the training set never had (lab-lit, dim).
        contrast: largest relative contrast change (factor uniform in [1 - contrast, 1 + contrast]) about the
            sample's own mean.
        photometric_p: probability of applying brightness/contrast at all.
    """

    flip: float = 0.5
    scale: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0
    translate: float = 0.0
    affine_p: float = 1.0
    erasing_p: float = 0.0
    erasing_scale: tuple[float, float] = (0.02, 0.2)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)
    noise_std: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    photometric_p: float = 1.0

    @classmethod
    def from_dict(cls, values: dict | None) -> BatchAugmentConfig:
        values = dict(values or {})
        for key in ("scale", "erasing_scale", "erasing_ratio"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)


class BatchAugment:
    """Apply :class:`BatchAugmentConfig` to a normalised float batch (B, C, H, W); returns (batch, flipped)."""

    def __init__(self, cfg: BatchAugmentConfig) -> None:
        self.cfg = cfg

    @property
    def geometric(self) -> bool:
        c = self.cfg
        return c.scale != (1.0, 1.0) or c.rotate > 0 or c.translate > 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        b, _, h, w = x.shape
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator).to(dev)

        flipped = rand(b) < c.flip
        if self.geometric:
            apply = (rand(b) < c.affine_p).float()
            s = c.scale[0] + (c.scale[1] - c.scale[0]) * rand(b)
            s = 1.0 + (s - 1.0) * apply
            a = (rand(b) * 2 - 1) * math.radians(c.rotate) * apply
            tx = (rand(b) * 2 - 1) * 2 * c.translate * apply  # grid units span 2 per side
            ty = (rand(b) * 2 - 1) * 2 * c.translate * apply
            sign = 1.0 - 2.0 * flipped.float()  # the flip folds into the sampling grid
            cos, sin = torch.cos(a) / s, torch.sin(a) / s
            theta = torch.stack([torch.stack([cos * sign, -sin, tx], 1), torch.stack([sin * sign, cos, ty], 1)], 1)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        elif flipped.any():
            x = torch.where(flipped.view(b, 1, 1, 1), x.flip(-1), x)
        if c.brightness > 0 or c.contrast > 0:
            x = self._photometric(x, rand)
        if c.noise_std > 0:
            x = x + torch.randn(x.shape, generator=generator).to(dev, x.dtype) * c.noise_std
        if c.erasing_p > 0:
            x = self._erase(x, generator)
        return x, flipped

    def _photometric(self, x: torch.Tensor, rand: Any) -> torch.Tensor:
        """Per-sample contrast about the sample mean, then a brightness shift (before erasing and noise)."""
        c = self.cfg
        b = x.shape[0]
        apply = (rand(b) < c.photometric_p).to(x.dtype).view(b, 1, 1, 1)
        factor = 1.0 + (rand(b) * 2 - 1).to(x.dtype).view(b, 1, 1, 1) * c.contrast * apply
        shift = (rand(b) * 2 - 1).to(x.dtype).view(b, 1, 1, 1) * c.brightness * apply
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * factor + mean + shift

    def _erase(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One rectangle per chosen sample set to 0 (the dataset mean after normalisation)."""
        c = self.cfg
        b, _, h, w = x.shape
        r = torch.rand(b, 5, generator=generator)
        area = (c.erasing_scale[0] + (c.erasing_scale[1] - c.erasing_scale[0]) * r[:, 0]) * h * w
        lo, hi = math.log(c.erasing_ratio[0]), math.log(c.erasing_ratio[1])
        ratio = torch.exp(lo + (hi - lo) * r[:, 1])
        eh = torch.sqrt(area * ratio).round().clamp(1, h)
        ew = torch.sqrt(area / ratio).round().clamp(1, w)
        y0 = ((h - eh + 1) * r[:, 2]).floor()
        x0 = ((w - ew + 1) * r[:, 3]).floor()
        use = r[:, 4] < c.erasing_p
        ys = torch.arange(h).view(1, h, 1)
        xs = torch.arange(w).view(1, 1, w)
        mask = ((ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1))
                & (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1)) & use.view(b, 1, 1))
        return x.masked_fill(mask.unsqueeze(1).to(x.device), 0.0)
