"""Results that can be found (issue 25, item 5): every record in ``benchmarks/results/`` sits under its kind,
carries the one envelope, is listed in the generated INDEX.md, and every results path the docs cite exists."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import results_index  # noqa: E402

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CITED = re.compile(r"benchmarks/results/[\w./*<>{},-]+")


def test_every_record_has_its_envelope_and_the_index_is_current():
    assert results_index.problems() == []


def test_envelope_reads_each_producers_fields(tmp_path, monkeypatch):
    monkeypatch.setattr(results_index, "RESULTS", tmp_path)
    (tmp_path / "speed" / "serve").mkdir(parents=True)
    path = tmp_path / "speed" / "serve" / "cpu-poster_v1_mfn64_image.ferplus.json"
    env = results_index.envelope(path, {"git": {"commit": "abc", "dirty": True}, "machine": {"cpu": "x"},
                                        "command": "python benchmarks/bench_serve.py", "date": "2026-12-05"})
    assert env["kind"] == "speed" and env["git_revision"] == "abc+dirty" and env["machine"] == {"cpu": "x"}
    assert env["subject"]["name"] == "poster_v1_mfn64_image.ferplus" and len(env["subject"]["sha256"]) == 64
    report = tmp_path / "release" / "mine.x" / "metrics.json"
    env = results_index.envelope(report, {"provenance": {"git_revision": "def", "date": "d"}})
    assert env["kind"] == "release" and env["subject"] == {"name": "mine.x", "sha256": None}
    assert env["git_revision"] == "def" and env["date"] == "d"
    with pytest.raises(ValueError, match="not under one of the kinds"):
        results_index.kind_of(tmp_path / "loose.json")


def test_a_record_without_envelope_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(results_index, "RESULTS", tmp_path)
    monkeypatch.setattr(results_index, "REPO", tmp_path)
    monkeypatch.setattr(results_index, "_shipped_sha256", lambda name: None)
    monkeypatch.setattr(results_index, "INDEX", tmp_path / "INDEX.md")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.json").write_text(json.dumps({"command": "c"}))
    found = results_index.problems()
    assert any("train/x.json: no complete envelope" in f for f in found) and any("stale" in f for f in found)
    assert results_index.main([]) == 0 and results_index.problems() == []


def test_every_results_path_the_docs_cite_exists():
    missing = []
    for doc in DOCS:
        for cited in CITED.findall(doc.read_text()):
            cited = cited.rstrip(".,)")
            if "<" in cited or cited.endswith("X.json"):
                continue  # a pattern, not a file
            names = [cited]
            if "{" in cited:  # NAME.{json,log}
                stem, _, alts = cited.partition("{")
                names = [stem + a for a in alts.rstrip("}").split(",")]
            if not all(list(REPO.glob(n)) for n in names):
                missing.append(f"{doc.name}: {cited}")
    assert not missing, missing
