"""The Dockerfile: checked as text everywhere, built and smoke-tested where a container engine answers.

CI machines here have a Docker client but no daemon, so the build test skips there (it cannot download a
base image without network either); docs/serving.md says the image is untested where that is the case.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from poster_fer.samples import sample_path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_the_server_as_a_non_root_user_with_a_health_check():
    ins = _instructions()
    users = [arg for word, arg in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"
    (health,) = [arg for word, arg in ins if word == "HEALTHCHECK"]
    assert "/healthz" in health
    (entry,) = [json.loads(arg) for word, arg in ins if word == "ENTRYPOINT"]
    assert entry[:2] == ["poster-fer", "serve"] and entry[entry.index("--host") + 1] == "0.0.0.0"
    assert "--insecure-no-key" not in entry, "the image must not switch the API-key rule off by default"
    (expose,) = [arg for word, arg in ins if word == "EXPOSE"]
    assert entry[entry.index("--port") + 1] == expose
    # everything the build copies exists, and .dockerignore lets it through
    copied = [p for word, arg in ins if word == "COPY" for p in arg.split()[:-1]]
    assert copied and all((REPO / p).exists() for p in copied)
    allowed = (REPO / ".dockerignore").read_text()
    assert all(f"!{p.rstrip('/')}" in allowed or f"!{p}" in allowed for p in copied)


def _engine() -> str | None:
    exe = shutil.which("docker") or shutil.which("podman")
    if exe is None:
        return None
    ok = subprocess.run([exe, "info"], capture_output=True, timeout=30).returncode == 0
    return exe if ok else None


@pytest.mark.slow
def test_image_builds_and_labels_a_face_without_network():
    exe = _engine()
    if exe is None:
        pytest.skip("no container engine answers here (a Docker client without a daemon counts as none)")
    tag = f"poster-fer-test:{uuid.uuid4().hex[:8]}"
    subprocess.run([exe, "build", "-t", tag, str(REPO)], check=True, timeout=1800)
    name = f"poster-fer-test-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run([exe, "run", "-d", "--name", name, "--network", "none", "-e", "POSTER_FER_API_KEY=k",
                        "-v", f"{sample_path()}:/tmp/face.jpg:ro", tag], check=True, timeout=60)
        probe = ("import json, urllib.request as u; body = open('/tmp/face.jpg', 'rb').read(); "
                 "r = u.Request('http://127.0.0.1:8000/v1/predict', data=body, "
                 "headers={'Content-Type': 'image/jpeg', 'X-API-Key': 'k'}); "
                 "print(json.load(u.urlopen(r, timeout=30))['faces'][0]['label'])")
        for _ in range(60):
            r = subprocess.run([exe, "exec", name, "python", "-c", probe], capture_output=True, text=True)
            if r.returncode == 0:
                break
            time.sleep(2)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()
    finally:
        subprocess.run([exe, "rm", "-f", name], capture_output=True)
        subprocess.run([exe, "rmi", "-f", tag], capture_output=True)
