"""Degradations (poster_fer.data.degrade) and the training app's Degrade augmentation: each does what its name
says on a known image, keeps the shape, and the recipe that trains with them resolves."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from poster_fer.data import degrade
from poster_fer_train.augment import Degrade, DegradeConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def checkerboard(size: int = 48, period: int = 1) -> np.ndarray:
    """Alternating 40 / 215 squares ``period`` px wide: all of its energy at one high frequency."""
    idx = (np.arange(size) // period) % 2
    return np.where((idx[:, None] + idx[None, :]) % 2 == 0, 40, 215).astype(np.uint8)


def face_like(size: int = 48) -> np.ndarray:
    """A smooth blob with an edge: low-frequency content that survives a downscale."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = 128 + 80 * np.exp(-((x - size / 2) ** 2 + (y - size / 2.5) ** 2) / (2 * (size / 5) ** 2))
    img[int(size * 0.7):, :] -= 60
    return np.clip(img, 0, 255).astype(np.uint8)


def high_freq_energy(img: np.ndarray) -> float:
    """Mean squared difference between horizontal neighbours."""
    a = img.astype(np.float64)
    return float(np.mean(np.diff(a, axis=1) ** 2))


def test_blur_removes_high_frequencies_and_sigma_zero_is_identity():
    img = checkerboard(period=2)
    blurred = degrade.gaussian_blur(img, 1.0)
    assert blurred.shape == img.shape and blurred.dtype == np.uint8
    assert high_freq_energy(blurred) < 0.2 * high_freq_energy(img)
    assert abs(float(blurred.mean()) - float(img.mean())) < 2  # blurring moves energy, not the mean level
    np.testing.assert_array_equal(degrade.gaussian_blur(img, 0), img)


def test_low_resolution_really_reaches_the_stated_size(monkeypatch):
    sizes = []
    real = degrade.cv2.resize
    monkeypatch.setattr(degrade.cv2, "resize", lambda im, dsize, **kw: (sizes.append(dsize), real(im, dsize, **kw))[1])
    img = checkerboard(period=1)
    out = degrade.low_resolution(img, 16)
    assert sizes == [(16, 16), (48, 48)]
    assert out.shape == img.shape
    # A 1-px checkerboard cannot be represented at 16 px: it averages out to (nearly) its mean grey.
    assert float(out.std()) < 0.1 * float(img.std()) and abs(float(out.mean()) - 127.5) < 2
    # A smooth face-like image keeps its shape (correlation with the original stays high).
    smooth = face_like()
    assert np.corrcoef(degrade.low_resolution(smooth, 16).ravel(), smooth.ravel())[0, 1] > 0.95
    # At or above the image's own size nothing happens.
    np.testing.assert_array_equal(degrade.low_resolution(smooth, 48), smooth)


def test_jpeg_and_h264_compress_and_keep_shape_grey_and_colour():
    img = face_like()
    noisy = np.clip(img.astype(int) + np.random.default_rng(0).integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    q30, q95 = degrade.jpeg(noisy, 30), degrade.jpeg(noisy, 95)
    assert q30.shape == noisy.shape and q30.dtype == np.uint8
    err30, err95 = (np.abs(q.astype(int) - noisy).mean() for q in (q30, q95))
    assert err30 > err95 > 0
    colour = np.stack([noisy, img, 255 - img], axis=-1)
    assert degrade.jpeg(colour, 30).shape == colour.shape
    frames = degrade.h264([noisy, img, noisy], 40)
    assert len(frames) == 3 and all(f.shape == img.shape and f.dtype == np.uint8 for f in frames)
    err40 = np.abs(frames[0].astype(int) - noisy).mean()
    err20 = np.abs(degrade.h264([noisy], 20)[0].astype(int) - noisy).mean()
    assert err40 > err20 > 0  # a higher rate factor throws more away
    assert degrade.h264([colour], 35)[0].shape == colour.shape
    assert degrade.h264([img[:15, :21]], 30)[0].shape == (15, 21)  # odd, tiny frames are padded and cropped back
    assert degrade.h264([], 30) == []


def test_lighting_steps():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    assert degrade.adjust_gamma(ramp, 2.0)[0, 128] == round(255 * (128 / 255) ** 2)  # darker mid-tones
    assert degrade.adjust_gamma(ramp, 1.0)[0, 77] == 77
    bright = degrade.adjust_brightness(ramp, 1.4)
    assert bright[0, 100] == 140 and bright[0, 250] == 255  # scaled, then clipped
    flat = degrade.adjust_contrast(ramp, 0.5)
    assert float(flat.std()) == pytest.approx(float(ramp.std()) * 0.5, rel=0.02)
    assert abs(float(flat.mean()) - float(ramp.mean())) < 1
    with pytest.raises(ValueError, match="uint8"):
        degrade.gaussian_blur(ramp.astype(np.float32), 1.0)


def test_degrade_augmentation_changes_chosen_faces_only_and_is_reproducible():
    faces = torch.from_numpy(np.stack([face_like()] * 8))[:, None]  # (8, 1, 48, 48) uint8, grey
    off = Degrade(DegradeConfig(p=0.0))
    assert not off.active and off(faces) is faces
    every_step = DegradeConfig(p=1.0, lighting_p=1.0, lowres_p=1.0, blur_p=1.0, jpeg_p=1.0, video_p=0.0)
    out = Degrade(every_step)(faces, torch.Generator().manual_seed(0))
    assert out.shape == faces.shape and out.dtype == torch.uint8
    assert all(not torch.equal(out[i], faces[i]) for i in range(8))
    again = Degrade(every_step)(faces, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    half = Degrade(DegradeConfig(p=0.5, lowres_p=1.0, lowres_side=(12, 12)))(faces, torch.Generator().manual_seed(1))
    changed = [not torch.equal(half[i], faces[i]) for i in range(8)]
    assert 0 < sum(changed) < 8
    colour = faces.expand(-1, 3, -1, -1).contiguous()
    video = Degrade(DegradeConfig(p=1.0, lighting_p=0, lowres_p=0, blur_p=0, video_p=1.0))(colour)
    assert video.shape == colour.shape and not torch.equal(video, colour)


def test_degrade_config_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="unknown key"):
        DegradeConfig.from_dict({"p": 0.5, "sharpen": 1})
    with pytest.raises(ValueError, match="low 30.0 > high 20.0"):
        DegradeConfig.from_dict({"jpeg_quality": [30, 20]})
    assert DegradeConfig.from_dict({"blur_sigma": [0.5, 1]}).blur_sigma == (0.5, 1.0)


def test_degrade_recipe_resolves_and_needs_the_preload_pipeline():
    from poster_fer_train.loaders import Batching, build_training_data, data_settings
    from poster_fer_train.recipe import load_recipe

    recipe = load_recipe("ferplus_mfn64_degrade")
    assert recipe["model"]["init"] == "poster_v1_mfn64_image.ferplus"
    assert DegradeConfig.from_dict(recipe["data"]["degrade"]).p == 0.6
    assert recipe["train"]["epochs"] == 6 and recipe["train"]["epochs_from_budget"] is False
    with pytest.raises(ValueError, match="preload"):
        cfg = data_settings({"pipeline": "transforms", "degrade": {"p": 0.5}})
        build_training_data(cfg, Batching(batch_size=4, eval_batch_size=4), env=None, device=torch.device("cpu"),
                            preprocessing=cfg.preprocessing(48), datasets={})


def test_robustness_benchmark_has_the_low_resolution_and_video_rows():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    robustness = importlib.import_module("robustness")
    from PIL import Image

    im = Image.fromarray(face_like())
    for row in ("low resolution 24 px", "low resolution 16 px", "video compression (H.264 CRF 35)"):
        out = robustness.PERTURBATIONS[row](im)
        assert out.size == im.size and out.mode == "L"
        assert np.asarray(out).tobytes() != np.asarray(im).tobytes()


def test_the_robust_rule_decides_from_the_records():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    rule = importlib.import_module("robust_rule")
    old = {"none": {"accuracy": 0.88}, "blur": {"accuracy": 0.80}, "jpeg": {"accuracy": 0.82}}
    better = {"none": {"accuracy": 0.88}, "blur": {"accuracy": 0.85}, "jpeg": {"accuracy": 0.816}}
    out = rule.decide(0.8820, old, better)
    assert out["ships"] and out["degradation_rows"]["change_points"] == {"blur": 5.0, "jpeg": -0.4}
    assert not rule.decide(0.8800, old, better)["ships"]  # clean validation below 88.72 - 0.60
    worse_row = {**better, "jpeg": {"accuracy": 0.81}}
    assert not rule.decide(0.8820, old, worse_row)["ships"]  # one row more than half a point worse
