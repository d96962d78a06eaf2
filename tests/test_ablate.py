"""``poster-fer ablate``: Table-4 variants under one recipe, resumable per variant."""

from __future__ import annotations

import json

import pytest
import yaml

from poster_fer.models import create_model
from poster_fer_apps.cli import main
from poster_fer_train import RecipeRequest, RunOutput
from poster_fer_train.ablation import (
    VARIANTS,
    parse_variants,
    render_ablation_markdown,
    run_ablation,
    variant_recipe,
)

# The tiny recipe on a 32-row FER2013-layout csv (16 train, 8 val, 8 test), batch 8.
SMALL = ["data.kind=fer2013", "data.max_samples=null", "train.batch_size=8", "train.progress=false"]


def test_two_variant_one_epoch_tiny_run_and_rerun_skips(tmp_path, capsys):
    from test_eval_cli import write_fer2013_csv

    data = tmp_path / "fer"
    data.mkdir()
    rows = [(i % 7, "Training") for i in range(16)] + [(i % 7, u) for u in ("PublicTest", "PrivateTest")
                                                       for i in range(8)]
    write_fer2013_csv(data / "fer2013.csv", rows)
    out = tmp_path / "abl"
    argv = ["ablate", "--recipe", "tiny", "--data", str(data), "--variants", "poster,image_only", "--out", str(out),
            *SMALL]
    assert main(argv) == 0
    record = json.loads((out / "ablation.json").read_text())
    rows = {r["variant"]: r for r in record["rows"]}
    assert [r["row"] for r in record["rows"]] == ["b", "f"]  # the paper's row order, not the order asked
    assert rows["image_only"]["marks"] == {"landmark": False, "image": True, "cross_fusion": False, "pyramid": False}
    assert rows["poster"]["marks"] == {"landmark": True, "image": True, "cross_fusion": True, "pyramid": True}
    for r in rows.values():
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["test_samples"] == 8
        assert r["val_accuracy"] is not None and r["train_seconds"] > 0 and r["epochs_run"] == 1
    # each variant trained the recipe's model with only the three Table-4 fields switched
    trained = yaml.safe_load((out / "image_only" / "recipe.yaml").read_text())
    assert trained["model"]["name"] == "poster_v1_tiny"
    assert trained["model"]["config"]["input_size"] == 48
    assert trained["model"]["config"]["streams"] == "image" and trained["model"]["config"]["fusion"] == "self"
    run = json.loads((out / "image_only" / "run" / "results.json").read_text())
    assert run["model_config"]["streams"] == "image" and run["model_config"]["pyramid"] is False
    assert rows["image_only"]["params"] < rows["poster"]["params"]
    md = (out / "ablation.md").read_text()
    assert "| (b) image_only |  | ✓ |  |  |" in md and "| (f) poster | ✓ | ✓ | ✓ | ✓ |" in md
    assert "poster-fer ablate --recipe tiny" in md
    capsys.readouterr()

    # a rerun trains nothing: both variants are skipped and the table is unchanged
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("finished earlier, skipped") == 2 and "training" not in err
    assert json.loads((out / "ablation.json").read_text())["rows"] == record["rows"]


def _fake_results(recipe, accuracy):
    model = create_model(recipe["model"]["name"], **recipe["model"]["config"])
    return {"model": recipe["model"]["name"], "wall_time_s": 1.5, "epochs_run": 1,
            "params": {"total": sum(p.numel() for p in model.parameters())},
            "selection": {"best_epoch": 1},
            "metrics": {"val": {"accuracy": accuracy}, "test": {"accuracy": accuracy, "mean_class_accuracy": 0.5,
                                                                "macro_f1": 0.4, "num_samples": 10}}}


def test_interrupted_variant_resumes_and_changed_recipe_is_refused(tmp_path):
    calls = []

    def train(recipe, run_dir, resume, command, log):
        calls.append((recipe["model"]["config"]["streams"], resume))
        return _fake_results(recipe, 0.25)

    recipe = {"data": {"kind": "fer2013", "root": str(tmp_path)}, "model": {"name": "poster_v1"}}
    out = tmp_path / "abl"
    (out / "baseline" / "run").mkdir(parents=True)
    (out / "baseline" / "run" / "last.pt").write_bytes(b"x")  # an interrupted run left its checkpoint
    record = run_ablation(recipe, "baseline,landmark_only", out, train_fn=train, output=RunOutput(echo=lambda m: None))
    assert calls == [("landmark", False), ("both", True)]
    # landmark variants share one on-disk landmark-token cache inside OUT (when the recipe caches at all)
    stored_train = yaml.safe_load((out / "baseline" / "recipe.yaml").read_text()).get("train") or {}
    assert not stored_train.get("landmark_cache_dir")
    seen = []
    run_ablation({**recipe, "train": {"landmark_cache": True}}, "baseline,image_only", tmp_path / "abl2",
                 train_fn=lambda r, *a: seen.append(r["train"]) or _fake_results(r, 0.5),
                 output=RunOutput(echo=lambda m: None))
    assert [t["landmark_cache"] for t in seen] == [False, True]  # image_only first (row b), then baseline
    assert seen[1]["landmark_cache_dir"] == str(tmp_path / "abl2" / "landmark_cache")
    assert [r["variant"] for r in record["rows"]] == ["landmark_only", "baseline"]
    assert record["rows"][1]["model"] == "poster_v1_baseline"
    stored = yaml.safe_load((out / "landmark_only" / "recipe.yaml").read_text())
    assert stored["model"]["name"] == "poster_v1_landmark_only"  # plain poster_v1 -> the registered variant

    with pytest.raises(Exception, match="different recipe"):
        run_ablation(RecipeRequest(recipe, {"train.epochs": 3}), "baseline", out, train_fn=train,
                     output=RunOutput(echo=lambda m: None))


def test_variant_recipe_switches_only_table4_fields():
    pretrained = {"ir50": "/w/ir50.pth", "mobilefacenet": "/w/mfn.pth.tar"}
    base = {"name": "cpu", "model": {"name": "poster_v1_tiny", "config": {"dims": [64, 32, 16], "streams": "both"},
                                     "pretrained": pretrained}, "train": {"landmark_cache": True}}
    for v in VARIANTS.values():
        r = variant_recipe(base, v)
        cfg = r["model"]["config"]
        expect = {"landmark_only": ["mobilefacenet"], "image_only": ["ir50"]}.get(v.key, ["ir50", "mobilefacenet"])
        assert sorted(r["model"]["pretrained"]) == expect
        assert r["train"]["landmark_cache"] is (v.key != "image_only")
        assert r["model"]["name"] == "poster_v1_tiny" and cfg["dims"] == [64, 32, 16]
        assert {k: cfg[k] for k in ("streams", "fusion", "pyramid")} == v.config
        # the fields are exactly those of the registered Table-4 model
        reg = create_model(v.registered, depth=1).cfg
        assert (reg.streams, reg.fusion, reg.pyramid) == (v.streams, v.fusion, v.pyramid)
    assert base["model"]["config"]["streams"] == "both"  # the input recipe is not modified
    with pytest.raises(ValueError, match="poster_v1 family"):
        variant_recipe({"model": {"name": "poster_v2"}}, VARIANTS["poster"])


def test_parse_variants_and_markdown():
    assert [v.row for v in parse_variants("poster, landmark_only")] == ["a", "f"]
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variants("poster,transformer")
    row = {"variant": "baseline", "row": "c", "marks": VARIANTS["baseline"].marks, "test_accuracy": 0.5,
           "test_mean_class_accuracy": None, "val_accuracy": 0.25, "train_seconds": 120, "params": 2_000_000}
    md = render_ablation_markdown({"recipe": "r", "data": {"kind": "ferplus", "root": "/d"}, "model": "m",
                                   "epochs": 2, "rows": [row]})
    assert "| (c) baseline | ✓ | ✓ |  |  | 50.00 | — | 25.00 | 2.0 min | 2.00M |" in md


def test_ablate_cli_rejects_unknown_variants(tmp_path, capsys):
    assert main(["ablate", "--recipe", "tiny", "--variants", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown variant" in capsys.readouterr().err
