"""``poster-fer info`` and ``convert`` on small inputs, and the CLI's error handling."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from poster_fer import create_model, load_model
from poster_fer_apps.cli import main

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "info" in out and "convert" in out


def test_info_json(capsys):
    assert main(["info", "poster_v1_tiny", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    model = create_model("poster_v1_tiny", classes=_CLASS_NAMES[7])
    assert stats["params_total"] == sum(p.numel() for p in model.parameters())
    assert stats["params_trainable"] + stats["params_frozen"] == stats["params_total"]
    assert stats["params_frozen"] == sum(p.numel() for p in model.face_landback.parameters())
    assert 0.2 < stats["gflops"] < 2.0  # dominated by the frozen MobileFaceNet (0.44 GFLOPs at 112)


def test_info_flops_scale_with_depth(capsys):
    main(["info", "poster_v1_tiny", "--json", "--set", "depth=1"])
    one = json.loads(capsys.readouterr().out)["gflops"]
    main(["info", "poster_v1_tiny", "--json", "--set", "depth=3"])
    three = json.loads(capsys.readouterr().out)["gflops"]
    assert three > one


def test_info_text_and_list(capsys):
    assert main(["info", "poster_v2_tiny"]) == 0
    assert "GFLOPs" in capsys.readouterr().out
    assert main(["info", "--list"]) == 0
    assert "poster_v1_baseline_crossfusion" in capsys.readouterr().out


def test_info_shows_a_shipped_models_operating_points(capsys):
    """What --operating-point can pick, with the numbers that decide it (the default's from its own metrics)."""
    assert main(["info", "poster_v1_mfn64_image.ferplus"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("operating point")]
    assert [ln.split()[2] for ln in lines] == ["default:", "balanced:"]
    assert all("test accuracy" in ln and "neutral over-prediction" in ln for ln in lines)
    assert main(["info", "poster_v1_mfn64_image.ferplus", "--json"]) == 0
    points = json.loads(capsys.readouterr().out)["operating_points"]
    assert points["balanced"]["prior_tau"] > 0 and points["default"]["test"]["accuracy"] > 0.85


def test_info_errors(capsys):
    assert main(["info", "poster_v7"]) == 2
    assert "neither a registered model" in capsys.readouterr().err
    assert main(["info", "poster_v1_tiny", "--set", "depth"]) == 2
    assert main(["info", "poster_v1_tiny", "--set", "dims=[1,"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["info", "poster_v1_tiny", "--set", "nope=1"]) == 2
    assert "no field" in capsys.readouterr().err


def test_convert(tmp_path, capsys):
    src = create_model("poster_v1_tiny", num_classes=8, classes=_CLASS_NAMES[8]).eval()
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    sd["module.ir_back.output_layer.0.weight"] = torch.ones(3)
    path = tmp_path / "official.pth"
    torch.save({"iter": 10, "model_state_dict": sd, "optimizer_state_dict": {}}, path)
    out = tmp_path / "converted"
    classes = ["n", "h", "su", "sa", "an", "di", "fe", "co"]
    assert main(["convert", str(path), str(out), "--model", "poster_v1_tiny", "--classes", *classes]) == 0
    text = capsys.readouterr().out
    assert "dropped 1 dead-module keys" in text
    model = load_model(out)
    assert model.meta["classes"] == classes and model.meta["provenance"]["source"] == "official"
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))
    # info also takes a saved model directory
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_classes"] == 8


def test_convert_errors(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "none.pth"), str(tmp_path / "o"), "--model", "poster_v1_tiny"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "none.pth"), str(tmp_path / "o"), "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    src = create_model("poster_v1_tiny", classes=_CLASS_NAMES[7])
    path = tmp_path / "c.pth"
    torch.save({"model_state_dict": {k: v for k, v in src.state_dict().items() if "se_block" not in k}}, path)
    assert main(["convert", str(path), str(tmp_path / "o"), "--model", "poster_v1_tiny"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "o"), "--model", "poster_v1_tiny", "--non-strict"]) == 2
    assert "which dataset's class order" in capsys.readouterr().err  # no record for a tiny head: never guessed
    assert main(["convert", str(path), str(tmp_path / "o"), "--model", "poster_v1_tiny", "--non-strict",
                 "--classes", *_CLASS_NAMES[7]]) == 0


def test_every_command_with_a_device_defaults_to_auto():
    """One rule in every command: --device auto (the GPU when PyTorch sees one), never a silent CPU default."""
    from poster_fer_apps.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    with_device = {}
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if "--device" in action.option_strings:
                with_device[name] = action.default
    assert {"predict", "serve", "eval", "explain"} <= set(with_device)
    assert set(with_device.values()) == {"auto"}, with_device
