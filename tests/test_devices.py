"""One device reading and one code-revision reading for every command and record."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from poster_fer.assets import ENV_VAR, expand_shared, shared_dir
from poster_fer.devices import DeviceError, resolve_device
from poster_fer.provenance import git_revision, git_state

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_auto_and_explicit_devices():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("AUTO") == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["banana", "cpu:x"])
def test_unknown_device_is_refused(name):
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused(name):
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bare_cuda_follows_local_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("cuda") == torch.device("cuda", 0)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_git_revision_names_the_checkout():
    try:
        head = _git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    state = git_state()
    assert state["commit"] == head
    assert isinstance(state["dirty"], bool)
    assert git_revision() == head + ("+dirty" if state["dirty"] else "")
    state["commit"] = "edited by a caller"  # a record's copy: the pinned revision stays as read
    assert git_state()["commit"] == head


def test_shared_folder_comes_from_the_setting_else_beside_the_working_directory(tmp_path, monkeypatch):
    """No repository-root lookup: an installed package finds the assets from the setting or the directory the
    command runs in (the checkout root in the README's commands)."""
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "assets"))
    assert shared_dir() == (tmp_path / "assets").resolve()
    assert expand_shared("${shared}/weights/x.pth") == str((tmp_path / "assets").resolve()) + "/weights/x.pth"
    assert expand_shared("/abs/x.pth") == "/abs/x.pth"
    monkeypatch.delenv(ENV_VAR)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    assert shared_dir() == (tmp_path / "shared").resolve()
