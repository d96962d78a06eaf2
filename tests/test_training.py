"""Training engine: losses, SAM, schedules, samplers, checkpoints, the CLI end to end, resume, NaN stop, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from conftest import need_shared
from poster_fer.distributed import DistEnv, DistributedWeightedSampler, ShardSampler
from poster_fer_apps.cli import main
from poster_fer_train import (
    SAM,
    BatchAugment,
    BatchAugmentConfig,
    LabelSmoothingCrossEntropy,
    LandmarkCache,
    OfficialV1Loss,
    ScheduleShape,
    SoftTargetCrossEntropy,
    StepSchedule,
    build_optimizer,
    list_recipes,
    load_checkpoint,
    load_recipe,
    save_checkpoint,
)

REQUIRED_RESULT_KEYS = {"recipe", "model", "command", "git_revision", "machine", "wall_time_s", "data", "metrics",
                        "history"}

# ------------------------------------------------------------------------------------------------ losses ----


def test_label_smoothing_ce_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    target = torch.tensor([0, 2])
    logp = [[v - math.log(sum(math.exp(u) for u in row)) for v in row] for row in logits.tolist()]
    s = 0.2
    expect = sum((1 - s) * -lp[t] + s * -sum(lp) / 3 for lp, t in zip(logp, target.tolist(), strict=True)) / 2
    assert LabelSmoothingCrossEntropy(s)(logits, target).item() == pytest.approx(expect, rel=1e-6)
    assert LabelSmoothingCrossEntropy(s)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, label_smoothing=s).item(), rel=1e-6)
    ce = sum(-lp[t] for lp, t in zip(logp, target.tolist(), strict=True)) / 2
    assert OfficialV1Loss()(logits, target).item() == pytest.approx(2 * expect + ce, rel=1e-6)


def test_soft_target_ce_and_one_hot_equivalence():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    soft = torch.tensor([[0.25, 0.75, 0.0]])
    logp = F.log_softmax(logits, -1)[0].tolist()
    assert SoftTargetCrossEntropy()(logits, soft).item() == pytest.approx(-(0.25 * logp[0] + 0.75 * logp[1]), rel=1e-6)
    one_hot = torch.tensor([[0.0, 1.0, 0.0]])
    assert SoftTargetCrossEntropy()(logits, one_hot).item() == pytest.approx(
        SoftTargetCrossEntropy()(logits, torch.tensor([1])).item(), rel=1e-6)


def test_smoothed_ce_soft_targets_and_class_last_dimension():
    """Smoothing spreads s/C over every class for soft targets too; classes are on the last dimension."""
    from poster_fer_train import smoothed_cross_entropy

    torch.manual_seed(0)
    logits, soft, s = torch.randn(6, 5), torch.softmax(torch.randn(6, 5), -1), 0.1
    logp = F.log_softmax(logits, -1)
    expect = ((1 - s) * -(soft * logp).sum(-1) + s * -logp.mean(-1)).mean()
    assert smoothed_cross_entropy(logits, soft, s).item() == pytest.approx(expect.item(), rel=1e-6)
    seq, target = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    assert smoothed_cross_entropy(seq, target, s).item() == pytest.approx(
        F.cross_entropy(seq.reshape(-1, 5), target.reshape(-1), label_smoothing=s).item(), rel=1e-6)
    with pytest.raises(ValueError):
        smoothed_cross_entropy(logits, soft[:, :4])


# ---------------------------------------------------------------------------------------------- optimiser ----


def _toy() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return model, torch.randn(16, 4), torch.randint(0, 3, (16,))


def test_sam_step_is_adam_with_the_gradient_at_the_perturbed_point():
    model, x, y = _toy()
    w0 = [p.detach().clone() for p in model.parameters()]
    sam = build_optimizer(model, {"name": "adam", "lr": 0.01, "sam": {"rho": 0.05}})
    assert isinstance(sam, SAM)
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    sam.first_step(zero_grad=True)
    norm = torch.stack([g.norm() for g in grads]).norm()
    for p, w, g in zip(model.parameters(), w0, grads, strict=True):  # moved by rho * g / ||g||
        torch.testing.assert_close(p.detach(), w + 0.05 * g / norm)
    F.cross_entropy(model(x), y).backward()
    g_perturbed = [p.grad.clone() for p in model.parameters()]
    sam.second_step(zero_grad=True)

    # The same update by hand: Adam from w0 with the perturbed-point gradient.
    ref, _, _ = _toy()
    adam = torch.optim.Adam(ref.parameters(), lr=0.01)
    for p, g in zip(ref.parameters(), g_perturbed, strict=True):
        p.grad = g
    adam.step()
    for p, r, w in zip(model.parameters(), ref.parameters(), w0, strict=True):
        torch.testing.assert_close(p, r)
        assert not torch.equal(p, w)  # SAM changed the weights

    # A few more steps: SAM(Adam) and plain Adam end in different places (Adam's first step is sign-like, so
    # one step alone can coincide).
    plain, _, _ = _toy()
    plain_adam = build_optimizer(plain, {"name": "adam", "lr": 0.01})
    for _ in range(3):
        plain_adam.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        plain_adam.step()
        sam.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sam.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        sam.second_step(zero_grad=True)
    diff = max((p - q).abs().max().item() for p, q in zip(model.parameters(), plain.parameters(), strict=True))
    assert diff > 1e-4


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_takes_the_same_steps(name):
    runs = []
    for fused in (None, True):
        model, x, y = _toy()
        cfg = {"name": name, "lr": 0.05, "weight_decay": 0.01}
        opt = build_optimizer(model, {**cfg, "fused": fused} if fused else cfg)
        assert opt.defaults.get("fused") == fused
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown option"):
        build_optimizer(_toy()[0], {"name": name, "lr": 0.1, "fuse": True})


def test_epoch_plan_uses_the_steady_second_half_rate():
    from poster_fer_train.budget import TimeBudget

    # epoch 1: 100 steps in 300 s, of which the first took 100 s (compile) and the second half only 50 s;
    # the run is 310 s old (10 s of validation) with a 1000 s budget
    budget = TimeBudget(1000.0, elapsed_before=310.0)
    slow_start = {"steps": 100, "seconds": 300.0, "first_step_s": 100.0, "tail_steps": 50, "tail_s": 50.0}
    # steady epoch = 100 s train + 10 s val; (1000 - 310) s left / (110 s x 1.03 margin) = 6 more epochs
    assert budget.plan_epochs(slow_start, 310.0, 40) == 7
    # without the second-half record: the first step discounted only -> 202 s + 10 s per epoch -> 3 more
    no_tail = {k: v for k, v in slow_start.items() if not k.startswith("tail")}
    assert budget.plan_epochs(no_tail, 310.0, 40) == 4
    assert budget.plan_epochs(slow_start, 310.0, 5) == 5  # capped by train.epochs
    assert TimeBudget(None).plan_epochs(slow_start, 310.0, 40) == 40  # no budget: the recipe's epochs
    # planned after epoch 3 (the first unfrozen one with train.freeze_epochs=2): 3 done + 6 more
    assert budget.plan_epochs(slow_start, 310.0, 40, done=3) == 9


def test_budget_stops_before_an_epoch_that_cannot_finish():
    from poster_fer_train.budget import TimeBudget

    budget = TimeBudget(1000.0, elapsed_before=700.0)
    assert budget.stop_before(2) is None  # no epoch timed yet: nothing to go on
    budget.end_epoch(200.0, val_seconds=20.0, n_val=100, n_test=100)  # reserve = 20 x 1.3 + 10 = 36 s
    assert budget.reserve == pytest.approx(36.0)
    assert budget.stop_before(2) is None  # 700 + 200 <= 1000 - 36
    budget.end_epoch(400.0, val_seconds=20.0, n_val=100, n_test=100)  # recent epochs: 300 s; 1000 > 964
    assert "would end past" in budget.stop_before(3)
    assert 0 < budget.deadline() - time.monotonic() <= 1000.0 - 36.0 - 700.0
    unlimited = TimeBudget(None)
    unlimited.end_epoch(1e6, val_seconds=1.0, n_val=1, n_test=1)
    assert unlimited.stop_before(2) is None and unlimited.deadline() is None and unlimited.reserve == 0.0


def test_train_one_epoch_records_its_second_half():
    from poster_fer_train.engine import EpochOptions, StepState, TrainParts, train_one_epoch

    model, x, y = _toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [{"x": x[i:i + 4], "y": y[i:i + 4]} for i in range(0, 16, 4)]
    schedule = StepSchedule(optimizer, "constant", total_steps=4, steps_per_epoch=4)
    parts = TrainParts(model, lambda b: (b["x"], b["y"], {}, None), torch.nn.CrossEntropyLoss(), optimizer, schedule)
    stats = train_one_epoch(parts, batches, StepState(), epoch=1,
                            opts=EpochOptions(device=torch.device("cpu"), progress=False))
    assert stats["steps"] == 4 and stats["tail_steps"] == 2
    assert 0 < stats["tail_s"] <= stats["seconds"]
    # a typed result (issue 36) that still reads as the dict earlier releases returned
    from poster_fer_train import EpochResult

    assert isinstance(stats, EpochResult) and stats.steps == 4 and dict(stats)["samples"] == 16 == stats.samples
    assert stats.stopped is None and set(stats) >= {"loss", "accuracy", "lr", "img_s", "first_step_s"}


def test_schedules_lr_values():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    exp = StepSchedule(opt, "exponential", total_steps=30, steps_per_epoch=10, shape=ScheduleShape(gamma=0.5))
    lrs = []
    for _ in range(25):
        lrs.append(opt.param_groups[0]["lr"])
        exp.step()
    assert lrs[0] == lrs[9] == 1.0 and lrs[10] == lrs[19] == 0.5 and lrs[20] == 0.25

    opt = torch.optim.SGD([p], lr=2.0)
    cosine = ScheduleShape(warmup_epochs=0.5, warmup_start=0.0, min_lr_ratio=0.1)
    cos = StepSchedule(opt, "cosine", total_steps=21, steps_per_epoch=10, shape=cosine)
    assert cos.factor(0) == 0.0 and cos.factor(4) == pytest.approx(0.8)
    assert cos.factor(5) == pytest.approx(1.0) and cos.factor(20) == pytest.approx(0.1)
    assert cos.factor(5 + 15 // 2) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 15)))
    for _ in range(5):
        cos.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0)
    with pytest.warns(DeprecationWarning, match="shape=ScheduleShape"):  # the earlier keyword form still works
        again = StepSchedule(opt, "cosine", total_steps=21, steps_per_epoch=10, warmup_epochs=0.5,
                             warmup_start=0.0, min_lr_ratio=0.1)
    again.load_state_dict(cos.state_dict())
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0)

    one = StepSchedule(opt, "onecycle", total_steps=101, steps_per_epoch=10,
                       shape=ScheduleShape(pct_start=0.2, div_factor=10, final_div_factor=100))
    assert one.factor(0) == pytest.approx(0.1) and one.factor(20) == pytest.approx(1.0)
    assert one.factor(100) == pytest.approx(1e-3)


def test_samplers_partition_across_ranks():
    shards = [list(ShardSampler(10, DistEnv(rank=r, world_size=3))) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    labels = np.array([0] * 90 + [1] * 10)
    weights = 1.0 / np.bincount(labels)[labels]
    parts = []
    for r in range(2):
        s = DistributedWeightedSampler(weights, DistEnv(rank=r, world_size=2), seed=3)
        s.set_epoch(1)
        parts.append(list(s))
    assert len(parts[0]) == len(parts[1]) == 50
    drawn = labels[np.array(parts[0] + parts[1])]
    assert 0.3 < drawn.mean() < 0.7  # the minority class is drawn about half the time


def test_batch_augment_reports_flips_exactly():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2 * 1, 3, 4, 5).repeat(4, 1, 1, 1)
    torch.manual_seed(1)
    out, flipped = BatchAugment(BatchAugmentConfig(flip=0.5))(x)
    assert flipped.any() and not flipped.all()
    for i in range(x.shape[0]):
        torch.testing.assert_close(out[i], x[i].flip(-1) if flipped[i] else x[i])


def test_batch_augment_photometric_is_affine_per_sample_within_bounds():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 6, 6)
    out, _ = BatchAugment(BatchAugmentConfig(flip=0.0, brightness=0.2, contrast=0.3))(x)
    for i in range(x.shape[0]):
        xc = x[i] - x[i].mean()
        factor = float((out[i] - out[i].mean()).flatten() @ xc.flatten() / (xc.flatten() @ xc.flatten()))
        shift = float(out[i].mean() - x[i].mean())
        assert 0.7 - 1e-5 <= factor <= 1.3 + 1e-5 and abs(shift) <= 0.2 + 1e-5
        torch.testing.assert_close(out[i], xc * factor + x[i].mean() + shift)
    assert not torch.allclose(out, x)
    off, _ = BatchAugment(BatchAugmentConfig(flip=0.0, brightness=0.2, contrast=0.3, photometric_p=0.0))(x)
    torch.testing.assert_close(off, x)


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(2), "hist": [{"a": np.float32(0.5)}], "t": (1, 2)})
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and state["hist"][0]["a"] == 0.5 and state["t"] == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
    assert load_checkpoint(tmp_path)["epoch"] == 1


# ------------------------------------------------------------------------------------------- recipes ----


def test_recipes_load_and_overrides_apply():
    r = load_recipe("rafdb", {"epochs": 3, "optimizer.lr": 1e-4})
    assert r["train"]["epochs"] == 3 and r["optimizer"]["lr"] == 1e-4
    assert r["model"]["config"]["depth"] == 8 and r["loss"]["name"] == "lsce"
    off = load_recipe("rafdb_official")
    assert off["optimizer"]["sam"]["rho"] == 0.05 and off["schedule"] == {"name": "exponential", "gamma": 0.98}
    assert off["data"]["channel_order"] == "BGR" and off["loss"]["name"] == "official_v1"
    aff = load_recipe("affectnet8_official")
    assert aff["train"]["class_balanced"] and aff["model"]["name"] == "poster_v1_affectnet"
    assert aff["optimizer"]["lr"] == 2e-6
    from poster_fer_train import RecipeError

    with pytest.raises(RecipeError, match=r"unknown train key\(s\) \['epoch'\]"):
        load_recipe("tiny", {"train.epoch": 2})


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_loads(name):
    """A typo in a packaged recipe (an unknown key, a bad distillation value, an unregistered model or teacher)
    fails here rather than minutes into someone's run."""
    from poster_fer.hub import list_pretrained
    from poster_fer.models import list_models
    from poster_fer_train.distill import DistillConfig

    r = load_recipe(name)
    assert r["model"]["name"] in list_models()
    distill = DistillConfig.from_dict(r["train"].get("distill"))
    if distill is not None:
        assert set(distill.teachers) <= set(list_pretrained()), distill.teachers


# ---------------------------------------------------------------------------------- end-to-end training ----


def _synthetic_folder(root: Path, per_class: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """Three easy classes (a bar left, right or across) as grey PNGs in a train/val/test folder tree."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(("left", "right", "across")):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size)).astype(np.uint8)
                if c == 0:
                    img[:, 4:12] += 150
                elif c == 1:
                    img[:, -12:-4] += 150
                else:
                    img[12:20, :] += 150
                Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return _synthetic_folder(tmp_path_factory.mktemp("synthetic"), {"train": 16, "val": 8, "test": 8})


def _synthetic_recipe(path: Path, data_root: Path, model: str = "poster_v1_tiny_image_only", **train: object) -> Path:
    """A recipe for the synthetic folder; the image-only tiny model keeps engine tests fast (no landmark net)."""
    recipe = {
        "seed": 1, "device": "cpu",
        "data": {"kind": "folder", "root": str(data_root), "pipeline": "preload", "grayscale": True,
                 "augment": {"flip": 0.5}},
        "model": {"name": model, "config": {"input_size": 32, "backbone_size": 32, "image_tokens": "pool",
                                            **({"landmark_size": 32} if model == "poster_v1_tiny" else {})}},
        "loss": {"name": "lsce", "smoothing": 0.1},
        "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 24, "amp": "none", "log_every": 2,
                  "progress": False, "deterministic": True, "threads": 1, **train},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(*argv: str) -> int:
    return main(["train", *argv])


def test_cli_train_names_the_setting_for_a_missing_file_before_loading_data(tmp_path, capsys, monkeypatch):
    import poster_fer_train.trainer as trainer

    def no_data(*a, **k):  # the check must come first: loading FER+ takes seconds to minutes
        raise AssertionError("data loaded before the inputs were checked")

    monkeypatch.setattr(trainer, "load_splits", no_data)
    weights = tmp_path / "mobilefacenet_model_best.pth.tar"
    data = tmp_path / "fer2013"
    data.mkdir()
    assert _run("--recipe", "tiny", "--out", str(tmp_path / "a"), "--data", str(data),
                f"model.pretrained.mobilefacenet={weights}") == 2
    err = capsys.readouterr().err
    assert "model.pretrained.mobilefacenet" in err and str(weights) in err and "no such file" in err
    assert _run("--recipe", "tiny", "--out", str(tmp_path / "b"), "--data", str(tmp_path / "nowhere")) == 2
    assert "pass --data PATH" in capsys.readouterr().err


def test_cli_train_ferplus_subset_end_to_end(tmp_path):
    from poster_fer import load_model
    from poster_fer.data import FERPLUS_CLASSES

    need_shared("data", "fer2013", "fer2013.csv.gz")
    out = tmp_path / "run"
    copy = tmp_path / "bench" / "tiny.json"
    rc = _run("--recipe", "tiny", "--out", str(out), "--results-out", str(copy), "train.epochs=2",
              "train.progress=false")
    assert rc == 0
    model = load_model(out / "best")
    assert model.meta["classes"] == FERPLUS_CLASSES
    prep = model.meta["preprocessing"]
    assert prep["grayscale"] is True and prep["crop_geometry"]["name"] == "fer2013" and prep["input_size"] == 48
    assert prep["resize_interpolation"] == "bilinear"
    results = json.loads((out / "results.json").read_text())
    assert REQUIRED_RESULT_KEYS <= set(results)
    assert json.loads(copy.read_text()) == results
    assert results["data"]["train"] == 256 and results["data"]["test"] == 128
    test = results["metrics"]["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and 0.0 <= test["mean_class_accuracy"] <= 1.0
    assert set(test["per_class"]) == set(FERPLUS_CLASSES) and test["num_samples"] == 128
    assert results["machine"]["cpu_cores"] >= 1 and results["machine"]["torch"] == torch.__version__
    hist = results["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[1]["train_loss"] < hist[0]["train_loss"]  # it learns
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(r["type"] == "step" for r in records) and sum(r["type"] == "epoch" for r in records) == 2
    assert (out / "curves.png").is_file() and (out / "last.pt").is_file()
    assert model.meta["metrics"]["test"]["accuracy"] == pytest.approx(test["accuracy"])


def test_resume_continues_exactly(tmp_path, synthetic):
    recipe = _synthetic_recipe(tmp_path / "r.yaml", synthetic)
    assert _run("--recipe", str(recipe), "--out", str(tmp_path / "straight")) == 0
    assert _run("--recipe", str(recipe), "--out", str(tmp_path / "split"), "train.stop_after_epoch=1") == 0
    paused = load_checkpoint(tmp_path / "split")
    assert paused["epoch"] == 1 and not (tmp_path / "split" / "results.json").exists()
    assert _run("--resume", str(tmp_path / "split")) == 0
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ra = json.loads((tmp_path / "straight" / "results.json").read_text())
    rb = json.loads((tmp_path / "split" / "results.json").read_text())
    assert ra["metrics"]["test"] == rb["metrics"]["test"]
    assert [h["train_loss"] for h in ra["history"]] == [h["train_loss"] for h in rb["history"]]
    # the record names the command that started the run (its recipe, its overrides), then each resume
    assert "--recipe" in rb["command"] and "stop_after_epoch=1" in rb["command"]
    assert [(x["from_epoch"], "--resume" in x["command"]) for x in rb["sessions"]] == [(0, False), (1, True)]
    assert [x["from_epoch"] for x in ra["sessions"]] == [0] and ra["command"] == ra["sessions"][0]["command"]


def test_resume_of_a_checkpoint_without_sessions_lists_its_start_as_unknown():
    """A checkpoint from before sessions were kept: the record must not name the --resume as the run's start."""
    from poster_fer_train.trainer import _earlier_sessions

    assert _earlier_sessions(None) == []
    kept = [{"command": "poster-fer train --recipe r", "git_revision": "abc", "started": "t", "from_epoch": 0}]
    assert _earlier_sessions({"epoch": 2, "sessions": kept}) == kept
    (unknown,) = _earlier_sessions({"epoch": 3})
    assert unknown["command"] is None and unknown["from_epoch"] == 0 and "epochs 1-3 are unknown" in unknown["note"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, synthetic, monkeypatch, capsys):
    import poster_fer_train.trainer as trainer

    real = trainer.build_loss

    class NanAfter(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, good_calls: int) -> None:
            super().__init__()
            self.inner, self.calls, self.good = inner, 0, good_calls

        def forward(self, logits, target):
            loss = self.inner(logits, target)
            self.calls += 1
            return loss * float("nan") if self.calls > self.good and torch.is_grad_enabled() else loss

    # 6 training steps per epoch (48 samples, batch 8): the loss turns NaN in epoch 2.
    monkeypatch.setattr(trainer, "build_loss", lambda cfg: NanAfter(real(cfg), good_calls=8))
    recipe = _synthetic_recipe(tmp_path / "r.yaml", synthetic)
    out = tmp_path / "run"
    assert _run("--recipe", str(recipe), "--out", str(out)) == 3
    err = capsys.readouterr().err
    assert "non-finite training loss" in err and "last good checkpoint" in err
    state = load_checkpoint(out)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "results.json").exists()


def test_landmark_cache_matches_live_features_and_trains(tmp_path, synthetic):
    from poster_fer import create_model

    model = create_model("poster_v1_tiny", input_size=32, backbone_size=32, landmark_size=32, image_tokens="pool")
    model.eval()
    images = torch.randint(0, 255, (5, 1, 32, 32), dtype=torch.uint8)

    def to_input(u8):
        return ((u8.float() / 255).expand(-1, 3, -1, -1) - 0.5) / 0.25

    from poster_fer_train import InferencePass

    cache = LandmarkCache.build(model, images, to_input, mirror=True, run=InferencePass(batch_size=2, progress=False))
    with torch.no_grad():
        live = model.landmark_features(to_input(images))
        mirrored = model.landmark_features(to_input(images).flip(-1))
    torch.testing.assert_close(cache.lookup(torch.arange(5)), live)
    torch.testing.assert_close(cache.lookup(torch.tensor([1, 3]), torch.tensor([True, False])),
                               torch.stack([mirrored[1], live[3]]))
    recipe = _synthetic_recipe(tmp_path / "r.yaml", synthetic, model="poster_v1_tiny", landmark_cache=True, epochs=1)
    assert _run("--recipe", str(recipe), "--out", str(tmp_path / "run")) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["landmark_cache"]["mirror"] is True and results["landmark_cache"]["bytes"] > 0
    # stored as float16 (half the memory), the tokens still feed the float32 model
    recipe = _synthetic_recipe(tmp_path / "r16.yaml", synthetic, model="poster_v1_tiny", landmark_cache=True,
                               landmark_cache_dtype="float16", epochs=1)
    assert _run("--recipe", str(recipe), "--out", str(tmp_path / "run16")) == 0
    half = json.loads((tmp_path / "run16" / "results.json").read_text())["landmark_cache"]
    assert half["dtype"] == "float16" and half["bytes"] * 2 == results["landmark_cache"]["bytes"]


def test_landmark_cache_on_disk_is_reused_and_keyed_by_its_inputs(tmp_path):
    from poster_fer import create_model
    from poster_fer_train import InferencePass
    from poster_fer_train.landmark_cache import TokenSpec, load_or_build

    model = create_model("poster_v1_tiny", input_size=32, backbone_size=32, landmark_size=32, image_tokens="pool")
    images = torch.randint(0, 255, (6, 1, 32, 32), dtype=torch.uint8)

    def to_input(u8):
        return ((u8.float() / 255).expand(-1, 3, -1, -1) - 0.5) / 0.25

    kw = {"run": InferencePass(batch_size=4, progress=False)}
    fp32 = TokenSpec(True, torch.float32)
    first, rec = load_or_build(tmp_path, "train", model, images, to_input, fp32, **kw)
    assert rec["source"] == "computed" and Path(rec["file"]).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    again, rec2 = load_or_build(tmp_path, "train", model, images, to_input, fp32, **kw)
    assert rec2 == {"file": rec["file"], "source": "disk"}
    torch.testing.assert_close(again.tokens, first.tokens, rtol=0, atol=0)
    # any ingredient that changes the tokens changes the file: pixels, preprocessing, landmark weights, mirror
    other = images.clone()
    other[0, 0, 0, 0] ^= 1
    variants = [
        load_or_build(tmp_path, "train", model, other, to_input, fp32, **kw)[1],
        load_or_build(tmp_path, "train", model, images, lambda u: to_input(u) * 2, fp32, **kw)[1],
        load_or_build(tmp_path, "train", model, images, to_input, TokenSpec(False, torch.float32), **kw)[1],
    ]
    with torch.no_grad():
        next(model.face_landback.parameters()).add_(0.01)
    variants.append(load_or_build(tmp_path, "train", model, images, to_input, fp32, **kw)[1])
    assert all(v["source"] == "computed" for v in variants)
    assert len({rec["file"], *(v["file"] for v in variants)}) == 5
    # a damaged file is recomputed (and replaced), not trusted
    Path(variants[-1]["file"]).write_bytes(b"not a safetensors file")
    fixed, rec3 = load_or_build(tmp_path, "train", model, images, to_input, fp32, **kw)
    assert rec3["source"] == "computed" and torch.isfinite(fixed.tokens).all()
    assert rec3["rebuilt"].startswith("unreadable")
    assert load_or_build(tmp_path, "train", model, images, to_input, fp32, **kw)[1]["source"] == "disk"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is unavailable")
def test_ddp_two_processes_match_one_process(tmp_path, synthetic):
    # Same global batch (8 = 2 x 4); no augmentation, so the two runs see the same samples in the same global
    # batches (DistributedSampler's stride split of one permutation). They differ only where BatchNorm
    # normalises over 4 samples per rank instead of 8 (no SyncBatchNorm on CPU).
    recipe = _synthetic_recipe(tmp_path / "r.yaml", synthetic, epochs=1)
    spec = yaml.safe_load(recipe.read_text())
    spec["data"]["augment"] = {"flip": 0.0}
    spec["optimizer"] = {"name": "sgd", "lr": 0.05, "momentum": 0.9}  # updates proportional to the gradients
    recipe.write_text(yaml.safe_dump(spec))
    assert _run("--recipe", str(recipe), "--out", str(tmp_path / "one")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "poster_fer_apps.cli", "train", "--recipe", str(recipe), "--out", str(tmp_path / "two")]
    # A new session, so a hang is killed with its workers (torchrun's children) when the timeout hits.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("2-process torchrun training did not finish within 300 s (hang?)")
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("[test] best epoch") == 1  # only rank 0 reports
    records = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "epoch" for r in records) == 1 and sum(r["type"] == "final" for r in records) == 1
    start = next(r for r in records if r["type"] == "start")
    assert start["world_size"] == 2 and start["global_batch"] == 8
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["command"].startswith("poster-fer train --recipe")
    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert one["global_step"] == two["global_step"] == 6
    assert set(two["rng_per_rank"]) == {0, 1}
    init, names = _init_state(recipe)
    u1 = torch.cat([(one["model"][k] - init[k]).flatten() for k in names])  # what training changed
    u2 = torch.cat([(two["model"][k] - init[k]).flatten() for k in names])
    cos = F.cosine_similarity(u1, u2, dim=0).item()
    assert cos > 0.95 and (u1 - u2).norm() < 0.4 * u1.norm(), cos  # measured: cos 0.98, 18% apart
    assert two["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=0.15)
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert r2["machine"]["world_size"] == 2 and r2["data"] == r1["data"]
    assert r2["metrics"]["test"]["num_samples"] == r1["metrics"]["test"]["num_samples"] == 24


def _init_state(recipe: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model's initial state under the recipe's seed (what training moved from) and its parameter names
    (BatchNorm running statistics are per rank, so only parameters are compared)."""
    from poster_fer import create_model

    spec = yaml.safe_load(recipe.read_text())
    torch.manual_seed(spec["seed"])
    model = create_model(spec["model"]["name"], num_classes=3, **spec["model"]["config"])
    return model.state_dict(), [n for n, _ in model.named_parameters()]


def test_run_log_mirrors_scalars_to_tensorboard(tmp_path, monkeypatch):
    import types

    from poster_fer_train.runlog import RunLog

    calls = []

    class Writer:
        def __init__(self, folder):
            calls.append(("open", folder))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    log = RunLog(tmp_path, tensorboard=True)
    log({"type": "epoch", "epoch": 2, "step": 40, "val_acc": 0.5, "note": "text is not a scalar"})
    log.close()
    assert calls == [("open", str(tmp_path / "tensorboard")), ("epoch/val_acc", 0.5, 40), ("close",)]
    assert json.loads((tmp_path / "log.jsonl").read_text())["val_acc"] == 0.5


def test_run_log_without_tensorboard_says_so_and_keeps_the_json_log(tmp_path, monkeypatch, capsys):
    from poster_fer_train.runlog import RunLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    log = RunLog(tmp_path, tensorboard=True)
    log({"type": "step", "step": 1, "loss": 1.5})
    assert "tensorboard is not installed" in capsys.readouterr().err
    assert json.loads((tmp_path / "log.jsonl").read_text())["loss"] == 1.5


def test_compile_without_a_cpp_compiler_trains_eagerly_and_says_so(tmp_path, synthetic, monkeypatch, capsys):
    from poster_fer_train import trainer

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(trainer.shutil, "which", lambda name: None)
    recipe = _synthetic_recipe(tmp_path / "r.yaml", synthetic, epochs=1, compile=True)
    assert _run("--recipe", str(recipe), "--out", str(tmp_path / "run")) == 0
    assert "train.compile skipped: no C++ compiler found" in capsys.readouterr().out
    notes = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
             if '"note"' in line]
    assert notes and "no C++ compiler" in notes[0]["compile_skipped"]


def test_train_with_a_face_backbone_file_and_lr_mult(tmp_path, synthetic):
    """model.pretrained.face_backbone loads the registry file into the image stream, recorded in the model;
    optimizer.lr_mult gives that stream its own learning rate (and a prefix matching nothing is an error)."""
    json_path = need_shared("weights", "face_backbones", "mobilefacenet.json")
    need_shared("weights", "face_backbones", "mobilefacenet.bin")
    recipe_path = _synthetic_recipe(tmp_path / "r.yaml", synthetic, model="poster_v1_tiny_mfn", epochs=1)
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["model"]["config"]["landmark_size"] = 32
    recipe["model"]["pretrained"] = {"face_backbone": str(json_path)}
    recipe["optimizer"]["lr_mult"] = {"face_back": 0.25}
    recipe_path.write_text(yaml.safe_dump(recipe))
    assert _run("--recipe", str(recipe_path), "--out", str(tmp_path / "run")) == 0
    from poster_fer.weights import read_metadata

    pre = " ".join(read_metadata(tmp_path / "run" / "best")["provenance"]["pretrained"])
    assert "face_backbone" in pre and "loaded 48 tensors" in pre and "-2m" in pre

    from poster_fer import create_model
    from poster_fer_train.optim import build_optimizer

    model = create_model("poster_v1_tiny_mfn")
    opt = build_optimizer(model, {"name": "adamw", "lr": 1e-3, "lr_mult": {"face_back": 0.25}})
    back = {id(p) for p in model.face_back.parameters()}
    for g in opt.param_groups:
        in_back = {id(p) in back for p in g["params"]}
        assert len(in_back) == 1 and g["lr"] == (2.5e-4 if in_back.pop() else 1e-3)
    with pytest.raises(ValueError, match="no trainable parameter under"):
        build_optimizer(model, {"name": "adamw", "lr": 1e-3, "lr_mult": {"ir_back": 0.1}})


def test_results_json_test_metrics_equal_poster_fer_eval_on_best(tmp_path, synthetic):
    """One definition of "the test accuracy": the numbers training writes to results.json are the ones
    ``poster-fer eval`` computes on the saved best model for the same split (same loop, same preprocessing)."""
    recipe = _synthetic_recipe(tmp_path / "r.yaml", synthetic, epochs=2)
    assert _run("--recipe", str(recipe), "--out", str(tmp_path / "run")) == 0
    trained = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]["test"]
    assert main(["eval", "--weights", str(tmp_path / "run" / "best"), "--data", str(synthetic), "--dataset",
                 "folder", "--split", "test", "--out", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("accuracy", "mean_class_accuracy", "macro_f1"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-9), key
    # the NLL is continuous in every probability: a preprocessing difference would move it
    assert evaluated["nll"] == pytest.approx(trained["nll"], rel=1e-6)
    assert evaluated["confusion"] == trained["confusion"]
    assert evaluated["num_samples"] == trained["num_samples"] == 24


def test_train_state_round_trips_everything_it_saves():
    """TrainState.state_dict -> load_state_dict restores weights, optimiser moments, schedule and bookkeeping."""
    from poster_fer_train import build_schedule
    from poster_fer_train.engine import ModelEma
    from poster_fer_train.state import TrainState

    def make() -> TrainState:
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 3)
        opt = build_optimizer(net, {"name": "adamw", "lr": 1e-2})
        sched = build_schedule(opt, {"name": "cosine", "warmup_epochs": 0}, 5, 4)
        return TrainState(net, opt, sched, torch.amp.GradScaler("cpu", enabled=False), ModelEma(net, decay=0.9),
                          planned_epochs=5)

    a = make()
    a.model(torch.randn(8, 4)).sum().backward()
    a.optimizer.step()
    a.schedule.step()
    a.ema.update(a.model)
    a.step.global_step, a.epoch, a.best, a.best_epoch, a.history = 7, 2, 0.5, 1, [{"epoch": 1}, {"epoch": 2}]
    b = make()
    b.load_state_dict(a.state_dict())
    assert (b.step.global_step, b.epoch, b.best, b.best_epoch, b.history, b.planned_epochs) == (
        7, 2, 0.5, 1, [{"epoch": 1}, {"epoch": 2}], 5)
    for k, v in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v), k
    assert b.optimizer.state_dict()["state"][0]["exp_avg"].equal(a.optimizer.state_dict()["state"][0]["exp_avg"])
    assert b.schedule.state_dict() == a.schedule.state_dict()
    fresh = make()
    fresh.best_epoch = None
    assert fresh.state_dict()["best_metric"] is None  # no epoch evaluated yet


def test_train_settings_are_typed_and_the_loop_reads_no_dict():
    """The train section is one typed dataclass (issue 25): keys and defaults in one place, no inline defaults."""
    import poster_fer_train
    from poster_fer_train.recipe import RecipeError, TrainSettings, load_recipe

    tr = TrainSettings.from_recipe(load_recipe("tiny"))
    assert isinstance(tr.epochs, int) and tr.freeze_except == ["head"] and tr.select_metric == "accuracy"
    assert TrainSettings.from_recipe({}).batch_size == 100
    with pytest.raises(RecipeError, match=r"unknown train key\(s\) \['epoch'\]"):
        TrainSettings.from_recipe({"train": {"epoch": 3}})
    root = Path(poster_fer_train.__file__).parent
    for name in ("trainer.py", "build.py", "finish.py"):
        text = (root / name).read_text()
        assert "tr.get(" not in text and 'tr["' not in text and "tr['" not in text, name
