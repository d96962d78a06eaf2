"""The light runtime (issue 25): every shipped model also ships as ONNX and labels faces without PyTorch, with
the crops, labels and calibrated probabilities of the PyTorch path.

"Without PyTorch" is made two ways. Here, a subprocess masks ``torch``, ``torchvision`` and ``safetensors`` in
``sys.modules`` (importing them fails, ``find_spec`` says they are absent), so the command's whole import chain is
checked in seconds. The slow test at the end builds a real virtual environment from the package registries,
installs the project without extras (no torch in it at all) and labels the sample offline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import poster_fer
from conftest import need_shared
from poster_fer.constants import ONNX_FILE
from poster_fer.export import OnnxRuntimeModel
from poster_fer.hub import list_pretrained
from poster_fer.inference import InferenceError, Recognizer, load_backend
from poster_fer.inference.backends import OnnxBackend, TorchBackend, resolve_backend
from poster_fer.samples import sample_path
from poster_fer.weights import get_weights

REPO = Path(__file__).resolve().parents[1]
SHIPPED = list_pretrained()
MASKED = ("torch", "torchvision", "safetensors")
# Run the CLI with PyTorch masked; report which masked or heavy modules were loaded after all.
MASKED_MAIN = (
    "import sys, json\n"
    f"for m in {MASKED!r}:\n"
    "    sys.modules[m] = None\n"
    "from poster_fer_apps.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'safetensors', 'yaml')"
    " and sys.modules[m] is not None)\n"
    "print('LOADED=' + json.dumps(loaded), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def run_cli(args: list[str], masked: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    code = MASKED_MAIN if masked else "import sys; from poster_fer_apps.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)


def records_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def fer_test_crops(n: int) -> list[np.ndarray]:
    """The first ``n`` FER+ test faces as RGB arrays (real crops: what the comparison should be made on)."""
    from poster_fer.data import build_dataset

    ds = build_dataset("ferplus", need_shared("data", "fer2013"), "test")
    return [np.asarray(ds[i][0].convert("RGB")) for i in range(n)]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_ships_its_onnx_with_calibration(name):
    record = get_weights(name)
    folder = record.verify()  # also checks the ONNX file's sha256
    assert record.onnx["file"] == f"{folder.name}/{ONNX_FILE}"
    assert record.onnx["max_abs_prob_diff"] <= 1e-4 and record.onnx["checked_on"] >= 64
    runtime = OnnxRuntimeModel(folder / ONNX_FILE)
    meta = runtime.meta
    assert meta["classes"] == list(record.classes)
    assert meta["preprocessing"] == poster_fer.read_metadata(folder)["preprocessing"]
    assert meta["temperature"] == pytest.approx(record.calibration["temperature"])
    assert meta["logit_bias"] == pytest.approx(list(record.calibration.get("logit_bias") or []) or None)
    # float16 storage where exact: clearly smaller than the same graph in float32 (58-79% of it, see release.py)
    assert record.onnx["storage"] == "float16"
    assert (folder / ONNX_FILE).stat().st_size < 0.85 * 4 * record.num_params + 300_000


@pytest.mark.parametrize("name", SHIPPED)
def test_onnx_backend_gives_the_torch_path_probabilities(name):
    crops = fer_test_crops(64)
    portrait = poster_fer.faces.load_image(sample_path())
    by_torch = Recognizer.from_checkpoint(name, backend="torch")
    by_onnx = Recognizer.from_checkpoint(name, backend="onnxruntime")
    assert isinstance(by_torch.backend, TorchBackend) and isinstance(by_onnx.backend, OnnxBackend)
    assert by_onnx.classes == by_torch.classes and by_onnx.device == "cpu"
    p_torch = by_torch.classify(crops)
    p_onnx = by_onnx.classify(crops)
    assert np.abs(p_onnx - p_torch).max() <= 1e-4
    assert np.array_equal(p_onnx.argmax(1), p_torch.argmax(1))
    # the whole photo pipeline: the same face, box and label
    (a,), (b,) = by_torch.predict(portrait), by_onnx.predict(portrait)
    assert a.box == pytest.approx(b.box) and a.label == b.label
    assert list(a.probabilities.values()) == pytest.approx(list(b.probabilities.values()), abs=1e-4)


def test_predict_without_torch_matches_the_torch_path(tmp_path):
    sample = str(sample_path())
    plain = run_cli(["predict", sample, "--no-progress", "--backend", "torch"], masked=False, tmp_path=tmp_path)
    light = run_cli(["predict", sample, "--no-progress"], masked=True, tmp_path=tmp_path)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert light.returncode == 0, light.stderr[-2000:]
    assert "LOADED=[]" in light.stderr  # nor torch, nor the training app's YAML
    (a,), (b,) = records_of(plain.stdout), records_of(light.stdout)
    assert a["label"] == b["label"] and a["box"] == pytest.approx(b["box"], abs=1e-3)
    assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)


def test_commands_without_torch_say_what_to_install(tmp_path):
    sample = str(sample_path())
    asked = run_cli(["predict", sample, "--backend", "torch"], masked=True, tmp_path=tmp_path)
    assert asked.returncode == 2 and "needs PyTorch" in asked.stderr and "poster-fer[torch]" in asked.stderr
    assert "Traceback" not in asked.stderr
    gpu = run_cli(["predict", sample, "--device", "cuda"], masked=True, tmp_path=tmp_path)
    assert gpu.returncode == 2 and "onnxruntime backend runs on the CPU" in gpu.stderr, gpu.stderr[-500:]
    helped = run_cli(["--help"], masked=True, tmp_path=tmp_path)
    assert helped.returncode == 0 and "predict" in helped.stdout and "train" in helped.stdout
    train = run_cli(["train", "--recipe", "tiny"], masked=True, tmp_path=tmp_path)
    assert train.returncode == 2 and "poster-fer[train]" in train.stderr and "Traceback" not in train.stderr


# Every command's main path in the light runtime: what needs an extra says which, exit 2, no traceback (issue 39).
NEEDS_AN_EXTRA = {
    "info": (["info", "poster_v1_tiny"], "poster-fer[torch]"),
    "eval": (["eval", "--weights", poster_fer.DEFAULT_MODEL, "--data", ".", "--out", "e"], "poster-fer[torch]"),
    "explain": (["explain", "--weights", poster_fer.DEFAULT_MODEL, str(sample_path()), "--out", "x"],
                "poster-fer[torch]"),
    "export": (["export", "--weights", poster_fer.DEFAULT_MODEL, "--format", "onnx", "--out", "m.onnx"],
               "poster-fer[torch]"),
    "convert": (["convert", "a.pth", "out", "--model", "poster_v1"], "poster-fer[torch]"),
    "train": (["train", "--recipe", "tiny", "--out", "r"], "poster-fer[train]"),
    "ablate": (["ablate", "--recipe", "tiny", "--out", "r"], "poster-fer[train]"),
}


@pytest.mark.parametrize("command", sorted(NEEDS_AN_EXTRA))
def test_every_command_without_torch_names_its_extra(command, tmp_path):
    args, extra = NEEDS_AN_EXTRA[command]
    res = run_cli(args, masked=True, tmp_path=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert extra in res.stderr and f"poster-fer {command}: error:" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["predict", "eval", "explain", "export", "serve"])
def test_an_unknown_operating_point_is_refused_before_anything_heavy(command, tmp_path):
    """With PyTorch masked, the answer is about the option, not the missing extra: nothing was imported first."""
    args = {"predict": [str(sample_path())], "eval": ["--data", ".", "--out", "e"],
            "explain": [str(sample_path()), "--out", "x"], "export": ["--format", "onnx", "--out", "m.onnx"],
            "serve": ["--port", "0"]}[command]
    res = run_cli([command, *args, "--operating-point", "nope"], masked=True, tmp_path=tmp_path)
    assert res.returncode == 2 and "no operating point 'nope'" in res.stderr and "balanced" in res.stderr, \
        res.stderr[-1500:]


def test_info_list_needs_no_torch_and_marks_what_ships(tmp_path):
    res = run_cli(["info", "--list"], masked=True, tmp_path=tmp_path)
    assert res.returncode == 0 and "LOADED=[]" in res.stderr, res.stderr[-2000:]
    marks = {line[2:].split()[0]: line[0] for line in res.stdout.splitlines()
             if line[:1] in "*+ " and line[2:3].strip() and line[2:].split()[0] in poster_fer.list_models()}
    assert marks[poster_fer.DEFAULT_MODEL.split(".")[0]] == "*"
    assert marks["poster_v1"] == marks["poster_v2"] == "+"  # the authors' checkpoints: download only
    assert marks["poster_v1_tiny"] == " "
    assert set(marks) == set(poster_fer.list_models())


def test_serve_without_its_extra_names_it(tmp_path):
    code = MASKED_MAIN.replace(f"for m in {MASKED!r}:", f"for m in {(*MASKED, 'fastapi', 'uvicorn')!r}:")
    res = subprocess.run([sys.executable, "-c", code, "serve", "--port", "0"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and "poster-fer[serve]" in res.stderr and "Traceback" not in res.stderr


def test_every_extra_named_in_errors_exists_in_pyproject():
    from poster_fer.errors import EXTRAS

    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]")[1].split("\n[")[0]
    assert all(f"\n{extra} = [" in section for _, extra in EXTRAS.values())


def test_onnx_backend_on_a_folder_without_model_onnx(tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(get_weights(poster_fer.DEFAULT_MODEL).path(), folder)
    (folder / ONNX_FILE).unlink()
    with pytest.raises(InferenceError, match=r"no model\.onnx beside the weights.*poster-fer export"):
        load_backend(folder, backend="onnxruntime")
    with pytest.raises(InferenceError, match="takes a .onnx file or a saved-model folder"):
        load_backend(folder / "model.safetensors", backend="onnxruntime")
    with pytest.raises(InferenceError, match="unknown backend"):
        resolve_backend("tensorflow")
    assert resolve_backend(None) == resolve_backend("auto") == "torch"  # PyTorch is installed here
    assert resolve_backend("ort") == "onnxruntime"


def test_serve_app_without_torch(tmp_path):
    """The web service on the light runtime: the API answers with the ONNX model, PyTorch never loaded."""
    pytest.importorskip("fastapi")
    code = (
        "import sys, json\n"
        f"for m in {MASKED!r}:\n"
        "    sys.modules[m] = None\n"
        "from fastapi.testclient import TestClient\n"
        "from poster_fer.inference import Recognizer\n"
        "from poster_fer.samples import sample_path\n"
        "from poster_fer_apps.serve import create_app\n"
        "with TestClient(create_app(Recognizer())) as client:\n"
        "    r = client.post('/v1/predict', content=sample_path().read_bytes(), "
        "headers={'Content-Type': 'image/jpeg'})\n"
        "    info = client.get('/v1/info').json() if client.get('/v1/info').status_code == 200 else {}\n"
        "print(json.dumps({'status': r.status_code, 'body': r.json(), "
        "'torch': any(m.startswith('torch') and sys.modules[m] is not None for m in sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == 200 and not out["torch"]
    (face,) = out["body"]["faces"]
    reference = Recognizer().predict(poster_fer.faces.load_image(sample_path()))[0]
    assert face["label"] == reference.label
    assert face["scores"] == pytest.approx(reference.probabilities, abs=2e-4)


def _can_unshare() -> bool:
    return shutil.which("unshare") is not None and \
        subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_fresh_venv_without_torch_labels_the_sample_offline(tmp_path):
    """``pip install poster-fer`` (no extras) in a new venv pulls no torch and labels the sample offline."""
    wheelhouse = tmp_path / "wheelhouse"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(wheelhouse), str(REPO)], check=True, capture_output=True, text=True)
    (wheel,) = wheelhouse.glob("poster_fer-*.whl")
    assert any(n.endswith(f"/{ONNX_FILE}") for n in zipfile.ZipFile(wheel).namelist())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    installed = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True,
                               timeout=900)
    if installed.returncode != 0 and "No matching distribution" in installed.stderr + installed.stdout:
        need = "the package registries (numpy, pillow, opencv-python-headless, onnxruntime, tqdm)"
        pytest.fail(f"could not install the runtime's dependencies from {need}: {installed.stderr[-1500:]}")
    assert installed.returncode == 0, installed.stderr[-3000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                            check=True).stdout
    names = {d["name"].lower() for d in json.loads(listed)}
    assert {"onnxruntime", "numpy", "opencv-python-headless"} <= names
    assert not names & {"torch", "torchvision", "safetensors", "pyyaml"}, names

    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "POSTER_FER_SHARED": str(tmp_path / "none"),
           "PYTHONNOUSERSITE": "1"}
    sample = subprocess.run([str(py), "-c", "from poster_fer.samples import sample_path; print(sample_path())"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert sample.startswith(str(venv))
    command = [str(venv / "bin" / "poster-fer"), "predict", sample, "--no-progress"]
    if _can_unshare():
        command = ["unshare", "-n", *command]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (face,) = records_of(done.stdout)
    reference = Recognizer().predict(poster_fer.faces.load_image(sample_path()))[0]
    assert face["status"] == "ok" and face["label"] == reference.label
    assert face["scores"] == pytest.approx(reference.probabilities, abs=1e-4)
    asked = subprocess.run([*command[:-2], sample, "--backend", "torch"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert asked.returncode == 2 and "poster-fer[torch]" in asked.stderr
