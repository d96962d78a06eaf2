"""Constants shared by every layer of the package (one definition each)."""

from __future__ import annotations

#: ImageNet channel statistics (RGB, 0-1 scale): the normalisation of every official POSTER recipe.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
