"""Transforms: output shape and type, BGR channel order, determinism of eval, the official recipes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from poster_fer.data import IMAGENET_MEAN, IMAGENET_STD, TRANSFORM_NAMES, build_transform


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", TRANSFORM_NAMES)
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_and_dtype(image: Image.Image, name: str, train: bool) -> None:
    torch.manual_seed(0)
    out = build_transform(name, train=train, size=64)(image)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 64, 64)


def test_eval_is_deterministic_and_normalised(image: Image.Image) -> None:
    tf = build_transform("official_v1", train=False, size=100)
    a, b = tf(image), tf(image)
    assert torch.equal(a, b)
    raw = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(a, (raw - mean) / std)  # size 100 -> no resampling


def test_bgr_flips_channels_before_normalising(image: Image.Image) -> None:
    rgb = build_transform("official_v1", train=False, size=48)(image)
    bgr = build_transform("official_v1", train=False, size=48, channel_order="BGR")(image)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    # Undo the normalisation: BGR output holds the RGB pixels in reverse channel order, RGB statistics.
    torch.testing.assert_close(bgr * std + mean, (rgb * std + mean).flip(0))


def test_grey_input_becomes_three_channels() -> None:
    grey = Image.fromarray(np.full((48, 48), 128, dtype=np.uint8), mode="L")
    out = build_transform("plain", train=False, size=32)(grey)
    assert out.shape == (3, 32, 32)


def test_train_augments_and_erasing_presets(image: Image.Image) -> None:
    torch.manual_seed(0)
    tf = build_transform("official_v1", train=True, size=64)
    outs = [tf(image) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    torch.manual_seed(0)
    strong = build_transform("official_v2", train=True, size=64, erasing="affectnet")(image)
    assert (strong == 0).sum() >= 0.04 * 64 * 64 * 3  # p=1, 5% of the area erased to zero
    quiet = build_transform("official_v2", train=True, size=64, erasing=False)
    assert not any(type(t).__name__ == "RandomErasing" for t in quiet.transforms)
    with pytest.raises(ValueError):
        build_transform("nope", train=True)
    with pytest.raises(ValueError):
        build_transform("plain", train=True, channel_order="GBR")
