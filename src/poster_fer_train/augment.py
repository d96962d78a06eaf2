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

import numpy as np
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


@dataclass
class DegradeConfig:
    """What :class:`Degrade` does to the uint8 faces of a training batch, before normalisation and before
    :class:`BatchAugment` (which adds flip, framing, rotation and erasing).

    A sample is degraded with probability ``p``; a degraded sample then gets each step with its own probability,
    in the order a photo acquires them: lighting (brightness, contrast, gamma), low resolution, blur, then one
    compression (video if drawn, else JPEG if drawn). Strengths are drawn per sample: log-uniform for the
    factors (so x0.5 and x2 are equally likely), uniform for the rest. Sizes are in pixels of the face as stored
    (48 px for FER+), the same units as the robustness benchmark's rows (:mod:`poster_fer.data.degrade`).
    A grey model needs no colour step: a colour face reaches it through its preprocessing's luma conversion, and
    a camera's colour cast then only scales the grey levels, which the brightness step draws.
    """

    p: float = 0.0
    lighting_p: float = 0.4
    brightness: tuple[float, float] = (0.55, 1.6)
    contrast: tuple[float, float] = (0.5, 1.4)
    gamma: tuple[float, float] = (0.5, 2.2)
    lowres_p: float = 0.35
    lowres_side: tuple[float, float] = (12.0, 32.0)
    blur_p: float = 0.35
    blur_sigma: tuple[float, float] = (0.3, 2.0)
    jpeg_p: float = 0.3
    jpeg_quality: tuple[float, float] = (12.0, 70.0)
    video_p: float = 0.12
    video_crf: tuple[float, float] = (26.0, 44.0)

    @classmethod
    def from_dict(cls, values: dict | None) -> DegradeConfig:
        values = dict(values or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"data.degrade: unknown key(s) {unknown}; known: {sorted(known)}")
        for key, default in cls().__dict__.items():
            if isinstance(default, tuple) and key in values:
                lo, hi = (float(v) for v in values[key])
                if lo > hi:
                    raise ValueError(f"data.degrade.{key}: low {lo} > high {hi}")
                values[key] = (lo, hi)
        return cls(**values)


class Degrade:
    """Apply :class:`DegradeConfig` to a uint8 batch ``(B, C, H, W)`` (C = 1 grey or 3); returns a new batch.

    Random draws come from torch's generator (the trainer seeds it), so a run is reproducible; the pixel work is
    :mod:`poster_fer.data.degrade` on each chosen face, a few hundred microseconds per face on one core.
    """

    def __init__(self, cfg: DegradeConfig) -> None:
        self.cfg = cfg

    @property
    def active(self) -> bool:
        return self.cfg.p > 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from poster_fer.data import degrade as ops

        c = self.cfg
        b = images.shape[0]
        r = torch.rand(b, 12, generator=generator).numpy()
        chosen = np.flatnonzero(r[:, 0] < c.p)
        if chosen.size == 0:
            return images
        arr = images.permute(0, 2, 3, 1).numpy().copy()  # (B, H, W, C)
        grey = arr.shape[-1] == 1
        faces = {int(i): arr[i, :, :, 0] if grey else arr[i] for i in chosen}
        video: list[int] = []
        for i, face in faces.items():
            u = r[i]
            if u[1] < c.lighting_p:
                face = ops.adjust_brightness(face, _log_uniform(c.brightness, u[2]))
                face = ops.adjust_contrast(face, _log_uniform(c.contrast, u[3]))
                face = ops.adjust_gamma(face, _log_uniform(c.gamma, u[4]))
            if u[5] < c.lowres_p:
                face = ops.low_resolution(face, round(_uniform(c.lowres_side, u[6])))
            if u[7] < c.blur_p:
                face = ops.gaussian_blur(face, _uniform(c.blur_sigma, u[8]))
            if u[9] < c.video_p:
                video.append(i)
            elif u[10] < c.jpeg_p:
                face = ops.jpeg(face, round(_uniform(c.jpeg_quality, u[11])))
            faces[i] = face
        if video:  # one stream per batch: its rate factor is drawn once
            crf = round(_uniform(c.video_crf, float(torch.rand(1, generator=generator))))
            for i, face in zip(video, ops.h264([faces[i] for i in video], crf), strict=True):
                faces[i] = face
        for i, face in faces.items():
            arr[i] = face[:, :, None] if grey else face
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _uniform(bounds: tuple[float, float], u: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * float(u)


def _log_uniform(bounds: tuple[float, float], u: float) -> float:
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    return math.exp(lo + (hi - lo) * float(u))
