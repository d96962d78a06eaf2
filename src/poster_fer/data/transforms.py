"""Image transforms matching the official POSTER recipes (torchvision.transforms.v2, PIL RGB input).

``official_v1`` is the POSTER (v1) RAF-DB pipeline, ``official_v2`` the POSTER++ one, ``plain`` a mild
baseline. ``channel_order="BGR"`` reproduces the v1 loader, which read images with OpenCV and never converted
them to RGB: the official v1 RAF-DB checkpoint expects BGR input normalised with the RGB ImageNet statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from ..constants import IMAGENET_MEAN, IMAGENET_STD

TRANSFORM_NAMES = ("official_v1", "official_v2", "plain")

#: RandomErasing settings (p, scale) of the official code: RAF-DB, and AffectNet/other sets in POSTER++.
ERASING_PRESETS: dict[str, tuple[float, tuple[float, float]]] = {
    "rafdb": (0.5, (0.02, 0.1)),
    "affectnet": (1.0, (0.05, 0.05)),
}


class EnsureRGB(nn.Module):
    """Convert any PIL mode (L, RGBA, P...) to RGB, so grey or alpha images normalise with 3-channel stats."""

    def forward(self, image: Image.Image) -> Image.Image:
        if isinstance(image, Image.Image) and image.mode != "RGB":
            return image.convert("RGB")
        return image


class AddGaussianNoise(nn.Module):
    """Add N(0, std) noise in 0..255 grey levels and clip, like the v1 ``add_g`` (variance 30)."""

    def __init__(self, std: float = 30.0**0.5) -> None:
        super().__init__()
        self.std = float(std)

    def forward(self, image: Image.Image) -> Image.Image:
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        noisy = (arr + torch.randn(arr.shape) * self.std).clamp_(0, 255).to(torch.uint8)
        return Image.fromarray(noisy.numpy())

    def extra_repr(self) -> str:
        return f"std={self.std:.3f}"


class ChannelFlip(nn.Module):
    """Reverse the channel axis of a (..., 3, H, W) tensor: RGB to BGR."""

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.flip(-3)


class PlainTensor(nn.Module):
    """Return a plain ``torch.Tensor`` (not a tv_tensors.Image), so outputs behave the same everywhere."""

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.as_subclass(torch.Tensor)


def _erasing(
    erasing: str | tuple[float, tuple[float, float]] | bool | None, default: str | None
) -> list[nn.Module]:
    if erasing is None:
        erasing = default
    if erasing is False or erasing is None or erasing == "none":
        return []
    if isinstance(erasing, str):
        if erasing not in ERASING_PRESETS:
            raise ValueError(
                f"erasing preset must be one of {sorted(ERASING_PRESETS)} or 'none', not {erasing!r}"
            )
        p, scale = ERASING_PRESETS[erasing]
    else:
        p, scale = erasing  # type: ignore[misc]
    return [v2.RandomErasing(p=float(p), scale=(float(scale[0]), float(scale[1])))]


def build_transform(
    name: str,
    train: bool,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channel_order: str = "RGB",
    erasing: str | tuple[float, tuple[float, float]] | bool | None = None,
) -> v2.Compose:
    """The transform for a recipe: PIL image in, float32 tensor (3, size, size) out.

    - ``official_v1`` train: with p=0.5 either a horizontal flip or Gaussian noise (std sqrt(30)), then
      RandomHorizontalFlip, Resize(size, size), to-tensor, Normalize, RandomErasing(scale=(0.02, 0.1)).
    - ``official_v2`` train (POSTER++ code): Resize(size, size), RandomHorizontalFlip, to-tensor, Normalize,
      RandomErasing as ``erasing`` says: ``"rafdb"`` (default; p=0.5, scale (0.02, 0.1)) or ``"affectnet"``
      (p=1, scale (0.05, 0.05), what POSTER++ uses for every set but RAF-DB). It has no noise step.
    - ``plain`` train: RandomResizedCrop(scale 0.85..1, near-square) and horizontal flip; no erasing.
    - eval (every name): Resize(size, size), to-tensor, Normalize; deterministic.

    ``erasing`` overrides the preset: a preset name, ``(p, (min_scale, max_scale))``, or ``False``/"none".
    ``channel_order="BGR"`` flips channels after to-tensor, before Normalize (``mean``/``std`` stay as given).
    """
    if name not in TRANSFORM_NAMES:
        raise ValueError(f"unknown transform {name!r}; choose one of {TRANSFORM_NAMES}")
    order = channel_order.upper()
    if order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', not {channel_order!r}")
    steps: list[nn.Module] = [EnsureRGB()]
    resize = v2.Resize((size, size), antialias=True)
    tail: list[nn.Module] = []
    if not train:
        steps.append(resize)
    elif name == "official_v1":
        either = v2.RandomChoice([v2.RandomHorizontalFlip(p=1.0), AddGaussianNoise()])
        steps += [v2.RandomApply([either], p=0.5), v2.RandomHorizontalFlip(), resize]
        tail = _erasing(erasing, "rafdb")
    elif name == "official_v2":
        steps += [resize, v2.RandomHorizontalFlip()]
        tail = _erasing(erasing, "rafdb")
    else:
        steps += [
            v2.RandomResizedCrop((size, size), scale=(0.85, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        tail = _erasing(erasing, None)
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if order == "BGR":
        steps.append(ChannelFlip())
    steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    steps += tail
    steps.append(PlainTensor())
    return v2.Compose(steps)
