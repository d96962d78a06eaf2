"""The whole recipe typed (issue 36, item 4): each section a frozen dataclass, parsed and checked once, with its
defaults stated once; the run's preprocessing built once and shared by the loaders and the saved model."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from poster_fer_train import DEFAULTS, Recipe, RecipeError, RunOutput, list_recipes, load_recipe, read_recipe
from poster_fer_train.recipe import SECTION_TYPES, SECTIONS

#: One misspelt key per section, and the name the refusal must carry.
UNKNOWN = {
    "data": ({"data": {"roots": "x"}}, "roots"),
    "model": ({"model": {"nmae": "poster_v1"}}, "nmae"),
    "loss": ({"loss": {"name": "lsce", "smothing": 0.2}}, "smothing"),
    "optimizer": ({"optimizer": {"name": "adamw", "lr": 1e-3, "wieght_decay": 0.1}}, "wieght_decay"),
    "schedule": ({"schedule": {"name": "cosine", "warmup_epoch": 1}}, "warmup_epoch"),
    "train": ({"train": {"epoch": 3}}, "epoch"),
    "top-level": ({"sed": 1}, "sed"),
}


@pytest.mark.parametrize("section", list(UNKNOWN))
def test_an_unknown_key_in_any_section_is_refused_naming_it(section):
    recipe, key = UNKNOWN[section]
    with pytest.raises(RecipeError, match=rf"recipe dict: unknown {section} key\(s\) \['{key}'\]"):
        load_recipe(recipe)
    with pytest.raises(RecipeError, match=rf"'{key}'"):
        Recipe.from_dict(recipe)


def test_an_unknown_key_given_as_an_override_names_the_recipe_file_and_the_key():
    with pytest.raises(RecipeError, match=r"tiny\.yaml: unknown optimizer key\(s\) \['momentum'\]"):
        load_recipe("tiny", {"optimizer.momentum": 0.9})  # adam has no momentum (sgd does)
    with pytest.raises(RecipeError, match="unknown loss name 'lsec'"):
        load_recipe("tiny", {"loss.name": "lsec"})


@pytest.mark.parametrize("section", SECTIONS)
def test_an_empty_section_is_the_defaults(section):
    """The defaults are stated once, on the typed sections: an empty section parses to exactly them, and the
    DEFAULTS dict is their plain form."""
    typed = read_recipe({section: {}})
    assert getattr(typed, section) == SECTION_TYPES[section]()
    assert typed.to_dict()[section] == DEFAULTS[section]
    assert Recipe.from_dict({}) == Recipe() and Recipe().to_dict() == DEFAULTS


def test_sections_are_frozen_and_read_as_attributes():
    recipe = read_recipe("tiny", {"train.epochs": 3, "optimizer.lr": 1e-4})
    assert recipe.train.epochs == 3 and recipe.optimizer.options["lr"] == 1e-4
    assert recipe.data.mean == list(DEFAULTS["data"]["mean"]) and recipe.model.name == "poster_v1_tiny"
    with pytest.raises(FrozenInstanceError):
        recipe.train.epochs = 4  # type: ignore[misc]
    assert recipe.with_train(epochs=4).train.epochs == 4 and recipe.train.epochs == 3


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_round_trips_as_the_same_plain_dict(name):
    """Saved runs record the recipe as a plain dict of the same shape: typed and back changes nothing."""
    plain = load_recipe(name)
    assert Recipe.from_dict(plain).to_dict() == plain
    yaml.safe_dump(plain)  # still plain data (lists, not tuples), as checkpoints and ablation folders store it


def test_imagenet_statistics_are_stated_only_in_the_constants():
    import poster_fer_train

    root = Path(poster_fer_train.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "0.485" not in text and "0.229" not in text, path


def test_the_old_call_forms_still_work_with_a_warning():
    from poster_fer_train.ablation import run_ablation
    from poster_fer_train.loaders import build_training_data

    with pytest.warns(DeprecationWarning, match="Batching"), pytest.raises(ValueError, match="preload"):
        build_training_data({"pipeline": "transforms", "degrade": {"p": 0.5}}, input_size=48, env=None,
                            device=torch.device("cpu"), batch_size=4, eval_batch_size=4, seed=0, datasets={})
    with pytest.warns(DeprecationWarning, match="RecipeRequest"), pytest.raises(RecipeError, match="'epoch'"):
        run_ablation("tiny", "baseline", "unused", overrides={"train.epoch": 3}, log=lambda m: None)


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        for c, name in enumerate(("left", "right", "across")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (32, 32), dtype=np.uint8)
                img[:, [slice(0, 10), slice(22, 32), slice(0, 32)][c]] = 230
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


def test_the_loaders_and_the_saved_model_share_one_preprocessing(tmp_path, monkeypatch):
    """Built once: the object the loaders normalise with is the one the run's context (and so the saved model's
    card) records, and the data settings build it exactly once."""
    from poster_fer import load_model
    from poster_fer_train import finish, fit, trainer
    from poster_fer_train.recipe import DataSettings

    seen: dict[str, list] = {"loaders": [], "runs": [], "built": []}
    real_build, real_finish, real_prep = trainer.build_training_data, trainer.finish_run, DataSettings.preprocessing
    monkeypatch.setattr(trainer, "build_training_data",
                        lambda *a, **k: seen["loaders"].append(k["preprocessing"]) or real_build(*a, **k))
    monkeypatch.setattr(trainer, "finish_run", lambda run, *a: seen["runs"].append(run) or real_finish(run, *a))
    monkeypatch.setattr(DataSettings, "preprocessing",
                        lambda self, size: seen["built"].append(size) or real_prep(self, size))
    recipe = {"seed": 1, "device": "cpu",
              "data": {"kind": "folder", "root": str(_folder(tmp_path / "faces")), "pipeline": "preload",
                       "grayscale": True, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
              "model": {"name": "poster_v1_tiny_image_only",
                        "config": {"input_size": 32, "backbone_size": 32, "image_tokens": "pool"}},
              "train": {"epochs": 1, "batch_size": 8, "amp": "none", "progress": False, "threads": 1}}
    result = fit(recipe, tmp_path / "run", output=RunOutput(echo=lambda *a: None))
    (prep,), (run,) = seen["loaders"], seen["runs"]
    assert run.preprocessing is prep and run.data.preprocessing is prep and seen["built"] == [32]
    assert isinstance(run, finish.RunContext)
    assert prep.mean == (0.5, 0.5, 0.5) and prep.grayscale and prep.input_size == 32
    saved = load_model(tmp_path / "run" / "best")
    assert dict(saved.meta["preprocessing"]) == prep.to_meta()
    assert result.results["recipe_config"] == load_recipe(recipe)  # recorded as the same plain dict


def test_the_training_path_reads_the_typed_recipe_not_the_dict():
    """No inline defaults left on the training path: the trainer, builders, loaders and finish read attributes."""
    import poster_fer_train

    root = Path(poster_fer_train.__file__).parent
    for name in ("trainer.py", "build.py", "finish.py", "loaders.py"):
        text = (root / name).read_text()
        for pattern in ('recipe["train"]', 'recipe["data"]', "recipe.get(", "cfg.get("):
            assert pattern not in text, (name, pattern)
