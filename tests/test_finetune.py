"""Fine-tuning shipped weights on your own folder or CSV, first time: the tiny end-to-end run from the command
line, head replacement, the options that do not apply to a dataset kind, and compile's skip rule."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import poster_fer
from poster_fer.samples import sample_path
from poster_fer_apps.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _faces(root, classes=("happy", "sad", "pain"), per_class=8, split_dirs=()):
    """A few KB of 48 px grey 'faces' in ``root/<class>/`` (or ``root/<split>/<class>/``)."""
    rng = np.random.default_rng(0)
    for part in split_dirs or ("",):
        for k, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                px = np.clip(rng.normal(60 + 60 * k, 30, (48, 48)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(folder / f"{i}.png")
    return root


def test_finetune_from_the_default_model_then_eval_and_predict(tmp_path, capsys):
    """train --recipe finetune --init <default> on a folder without val/, eval the result, predict with it."""
    data = _faces(tmp_path / "faces")
    run = tmp_path / "run"
    assert main(["train", "--recipe", "finetune", "--init", poster_fer.DEFAULT_MODEL, "--data", str(data),
                 "--out", str(run), "train.epochs=1", "train.max_steps_per_epoch=2", "train.progress=false",
                 "train.threads=1"]) == 0
    out = capsys.readouterr().out
    assert "holding out 0.2 of train per class" in out and "no test split" in out
    assert "trained rows kept for happy, sad; new rows for pain" in out
    results = json.loads((run / "results.json").read_text())
    assert set(results["metrics"]) == {"val"}
    model = poster_fer.load_model(run / "best")
    assert model.classes == ["happy", "pain", "sad"] and model.model_name == "poster_v1_mfn64_image"
    assert model.meta["preprocessing"]["grayscale"] is True and "weights" not in model.meta
    assert main(["eval", "--weights", str(run / "best"), "--data", str(data), "--dataset", "folder", "--split", "all",
                 "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_samples"] == 24
    capsys.readouterr()
    assert main(["predict", str(sample_path()), "--weights", str(run / "best"), "--no-progress"]) == 0
    faces = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(faces) == 1 and faces[0]["label"] in ("happy", "pain", "sad")


def test_finetune_on_a_csv_without_a_split_column(tmp_path, capsys):
    root = _faces(tmp_path / "img", classes=("neutral", "surprise"), per_class=6)
    manifest = tmp_path / "labels.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for p in sorted(root.rglob("*.png")):
            w.writerow([str(p.relative_to(tmp_path)), p.parent.name])
    assert main(["train", "--recipe", "finetune", "--data", str(manifest), "--out", str(tmp_path / "run"),
                 "data.kind=csv", "train.epochs=1", "train.max_steps_per_epoch=1", "train.progress=false",
                 "train.threads=1"]) == 0
    assert poster_fer.load_model(tmp_path / "run" / "best").classes == ["neutral", "surprise"]


def test_options_of_another_dataset_kind_are_named_and_ignored(tmp_path, capsys):
    """A FER+ recipe's label_mode on a folder dataset: one line naming it, then the run goes on."""
    data = _faces(tmp_path / "faces", split_dirs=("train", "val"))
    assert main(["train", "--recipe", "tiny", "--data", str(data), "--out", str(tmp_path / "run"),
                 "data.kind=folder", "data.max_samples=null", "data.train_options={label_mode: crossentropy}",
                 "train.epochs=1", "train.max_steps_per_epoch=1", "train.progress=false"]) == 0
    out = capsys.readouterr().out
    assert "data.train_options.label_mode does not apply to data.kind='folder': ignored" in out
    assert "holding out" not in out  # it has a val/ folder


def test_reset_classifier_keeps_rows_by_name_and_the_rest_bit_identical():
    model = poster_fer.create_model("poster_v1_tiny", num_classes=3, classes=["Happiness", "Anger", "Neutral"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = model.reset_classifier(classes=["neutral", "angry", "fear", "happy"])
    assert info == {"kept": ["neutral", "angry", "happy"], "new": ["fear"]}
    after = model.state_dict()
    for k in before:
        if not k.startswith("head."):
            assert torch.equal(before[k], after[k]), k
    w0, w1 = before["head.linear.weight"], after["head.linear.weight"]
    assert torch.equal(w1[0], w0[2]) and torch.equal(w1[1], w0[1]) and torch.equal(w1[3], w0[0])
    assert model.cfg.num_classes == 4 and model(torch.randn(1, 3, 112, 112)).shape == (1, 4)
    with pytest.raises(ValueError, match="num_classes=2 but 4 class names"):
        model.reset_classifier(2, classes=["a", "b", "c", "d"])


def test_a_model_without_class_names_is_refused_not_guessed(tmp_path):
    from poster_fer.weights.io import save_model

    model = poster_fer.create_model("poster_v1_tiny", num_classes=8)
    with pytest.raises(ValueError, match="records no class names"):
        save_model(model, tmp_path / "m")
    save_model(model, tmp_path / "m", classes=[f"c{i}" for i in range(8)])
    assert poster_fer.load_model(tmp_path / "m").classes == [f"c{i}" for i in range(8)]


def test_compile_is_skipped_where_it_cannot_repay_itself():
    from poster_fer_train.build import compile_not_worth
    from poster_fer_train.recipe import TrainSettings

    cpu = torch.device("cpu")
    assert "budget cannot repay" in compile_not_worth(TrainSettings(time_budget_min=3), cpu, 10_000)
    assert "steps cannot repay" in compile_not_worth(TrainSettings(time_budget_min=None), cpu, 500)
    assert compile_not_worth(TrainSettings(time_budget_min=110), cpu, 10_000) is None
    assert compile_not_worth(TrainSettings(time_budget_min=3), torch.device("meta"), 10) is None


def test_freeze_epochs_train_only_the_head_first_then_everything(tmp_path, capsys):
    """train.freeze_epochs=1: epoch 1 moves the head and nothing else, epoch 2 moves the backbone too."""
    data = _faces(tmp_path / "faces", split_dirs=("train", "val"))
    start = {n: p.detach().clone() for n, p in poster_fer.create_model(
        poster_fer.DEFAULT_MODEL, pretrained=True).named_parameters()}

    def changed(run):
        got = dict(poster_fer.load_model(run / "best").named_parameters())
        return {n.split(".")[0] for n, p in got.items() if n in start and p.shape == start[n].shape
                and not torch.equal(p.detach(), start[n])}

    common = ["train.max_steps_per_epoch=2", "train.progress=false", "train.threads=1", "train.freeze_epochs=1",
              "train.epochs_from_budget=false"]

    def train(run, epochs):
        return main(["train", "--recipe", "finetune", "--data", str(data), "--out", str(run), *common,
                     f"train.epochs={epochs}"])

    one = tmp_path / "one"
    assert train(one, 1) == 0
    out = capsys.readouterr().out
    assert "parameters frozen, training only head (train.freeze_epochs=1)" in out
    assert changed(one) == set()  # happy and sad rows are carried over, pain is new: compared by shape only
    head = poster_fer.load_model(one / "best").get_classifier().weight  # rows: happy, pain, sad
    assert not torch.equal(head[[0, 2]], start["head.linear.weight"][[1, 3]])  # the carried-over rows moved
    two = tmp_path / "two"
    assert train(two, 2) == 0
    assert "epoch 2: every trainable parameter trains" in capsys.readouterr().out
    assert "face_back" in changed(two)


def test_freezer_never_unfreezes_what_the_optimiser_does_not_own():
    """The landmark network (frozen for good) stays frozen through freeze and unfreeze; bad prefixes are named."""
    from poster_fer_train.optim import Freezer, build_optimizer

    model = poster_fer.create_model("poster_v1_s", num_classes=3)
    frozen_for_good = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen_for_good
    opt = build_optimizer(model, {"name": "adamw", "lr": 1e-3})
    f = Freezer(model, opt, 2, ["head"])
    assert f.set_epoch(1) > 0
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.linear.weight", "head.linear.bias"}
    assert f.set_epoch(3) == 0
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen_for_good
    with pytest.raises(ValueError, match=r"no trainable parameter under \['hed'\]"):
        Freezer(model, opt, 1, ["hed"])


def test_the_epoch_plan_is_said_before_the_first_epoch_and_epochs_fixes_it(tmp_path, capsys):
    """Issue 39 item 5: a budget-planned run says up front that (and when) its epoch count is set, its counter never
    jumps; --epochs N gives the same plan on any machine."""
    data = _faces(tmp_path / "faces", split_dirs=("train", "val"))
    common = ["--recipe", "finetune", "--data", str(data)]
    settings = ["train.max_steps_per_epoch=1", "train.progress=false", "train.threads=1", "train.freeze_epochs=1"]
    assert main(["train", *common, "--out", str(tmp_path / "budget"), *settings, "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("[plan]", "[epoch"))]
    assert lines[0].startswith("[plan] up to 3 epochs in the 10-minute budget: the count is set after epoch 2")
    assert "--epochs N" in lines[0]
    assert lines[1].startswith("[epoch 1/<=3]") and lines[2].startswith("[epoch 2/3]")
    assert lines[3].startswith("[plan] 3 epochs fit the 10-minute budget on this machine")
    assert lines[4].startswith("[epoch 3/3]") and len(lines) == 5

    assert main(["train", *common, "--out", str(tmp_path / "fixed"), "--epochs", "2", *settings]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("[plan]", "[epoch"))]
    assert lines[0] == "[plan] 2 epochs" and [x[:11] for x in lines[1:]] == ["[epoch 1/2]", "[epoch 2/2]"]
    results = json.loads((tmp_path / "fixed" / "results.json").read_text())
    train = results["recipe_config"]["train"]
    assert train["epochs"] == 2 and train["epochs_from_budget"] is False and train["time_budget_min"] is None
    assert "--epochs 2" in results["command"]
    assert main(["train", *common, "--out", str(tmp_path / "none"), "--epochs", "0", *settings]) == 2


def test_useless_training_data_is_refused_or_warned_with_counts(tmp_path, capsys):
    """Issue 39 item 6: an empty class, a single class and a tiny class are refused or warned, with counts."""
    settings = ["--epochs", "1", "train.max_steps_per_epoch=1", "train.progress=false", "train.threads=1"]
    empty = _faces(tmp_path / "empty", classes=("happy", "sad"), per_class=12)
    (empty / "pain").mkdir()
    assert main(["train", "--recipe", "finetune", "--data", str(empty), "--out", str(tmp_path / "a"), *settings]) == 2
    err = capsys.readouterr().err
    assert "no training images for class 'pain'" in err and "happy 10" in err and "pain 0" in err
    single = _faces(tmp_path / "single", classes=("happy",), per_class=12)
    assert main(["train", "--recipe", "finetune", "--data", str(single), "--out", str(tmp_path / "b"), *settings]) == 2
    assert "only one class (happy 10 images)" in capsys.readouterr().err
    small = _faces(tmp_path / "small", classes=("happy", "sad"), per_class=12)
    for extra in range(3):
        (small / "pain").mkdir(exist_ok=True)
        Image.fromarray(np.full((48, 48), 90, np.uint8)).save(small / "pain" / f"{extra}.png")
    assert main(["train", "--recipe", "finetune", "--data", str(small), "--out", str(tmp_path / "c"), *settings]) == 0
    out = capsys.readouterr().out
    assert "[data] warning: fewer than 10 training images for pain (2)" in out  # 1 of 3 held out


def test_unreadable_images_and_link_loops_are_skipped_and_counted(tmp_path, capsys):
    """One corrupt image and two looping symbolic links: skipped and counted by default; on_error=raise stops."""
    data = _faces(tmp_path / "faces", classes=("happy", "sad"), per_class=12)
    (data / "sad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (data / "happy" / "a.jpg").symlink_to(data / "happy" / "b.jpg")
    (data / "happy" / "b.jpg").symlink_to(data / "happy" / "a.jpg")
    settings = ["--epochs", "1", "train.max_steps_per_epoch=1", "train.progress=false", "train.threads=1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--recipe", "finetune", "--data", str(data), "--out", str(tmp_path / "a"),
                     *settings]) == 0
    assert not [w for w in caught if "skipped" in str(w.message)]  # said once, in the [data] line, not twice
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "skipped" in x)
    assert line.startswith("[data] train, val: skipped 3 images (")
    assert "unreadable image: 1" in line and "broken link: 2" in line and "on_error=raise" in line
    assert main(["train", "--recipe", "finetune", "--data", str(data), "--out", str(tmp_path / "b"), *settings,
                 "data.options.on_error=raise"]) == 2
    err = capsys.readouterr().err
    assert "a.jpg" in err and "symbolic link" in err
