"""The library's batch labelling (``poster_fer.inference.job``) without a model: a stub recognizer yields the
three kinds of outcome (error, no face, faces), and the job must write one record each, count them and report
every failure by name. ``poster-fer predict`` runs the same code end to end (tests/test_predict_cli.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from poster_fer.inference import FaceResult, JobOptions, JobStats, RecordWriter, Source, run_job

CLASSES = ["neutral", "happiness"]


class StubRecognizer:
    """Answers ``iter_predict`` from a table keyed by the source name (an exception = an error outcome)."""

    classes = CLASSES
    max_pixels = None

    def __init__(self, outcomes: dict[str, object]) -> None:
        self.outcomes = outcomes

    def iter_predict(self, items, detect=True, return_crops=False):
        for src, _path in items:
            out = self.outcomes[src.name]
            image = np.zeros((8, 8, 3), np.uint8)
            if isinstance(out, Exception):
                yield SimpleNamespace(key=src, error=out, dropped=0, faces=[], image=image)
            else:
                yield SimpleNamespace(key=src, error=None, dropped=1, faces=out, image=image)


def _face() -> FaceResult:
    return FaceResult(box=(1.0, 1.0, 5.0, 5.0), landmarks=None, score=0.9, label="happiness",
                      probabilities={"neutral": 0.2, "happiness": 0.8})


def _sources(*names: str) -> list[Source]:
    return [Source("image", n, Path(n), Path(n)) for n in names]


def test_every_outcome_is_written_and_counted():
    stream = io.StringIO()
    rec = StubRecognizer({"bad.jpg": OSError("cannot decode"), "empty.jpg": [], "two.jpg": [_face(), _face()]})
    stats = run_job(rec, _sources("bad.jpg", "empty.jpg", "two.jpg"), RecordWriter(stream, "jsonl", CLASSES),
                    JobOptions(progress=False))
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["source"], r["status"]) for r in records] == [
        ("bad.jpg", "error"), ("empty.jpg", "no_face"), ("two.jpg", "ok"), ("two.jpg", "ok")]
    assert "bad.jpg: cannot decode" in records[0]["error"]
    assert (stats.images, stats.faces, stats.dropped, stats.no_face) == (3, 2, 2, ["empty.jpg"])
    assert stats.failures == [("bad.jpg", "bad.jpg: cannot decode")]


def test_annotated_copies_never_overwrite_the_input(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"")  # only its path matters: the stub does not read it
    src = Source("image", "a.png", img, Path("a.png"))
    run_job(StubRecognizer({"a.png": [_face()]}), [src], RecordWriter(io.StringIO(), "jsonl", CLASSES),
            JobOptions(out=tmp_path, progress=False))
    assert img.read_bytes() == b"" and (tmp_path / "a_annotated.png").stat().st_size > 0


def test_report_names_failures_and_counts_the_rest():
    stats = JobStats(images=25, faces=3, no_face=["x.jpg"])
    for i in range(23):
        stats.fail(f"f{i}.jpg", f"f{i}.jpg: broken")
    lines = stats.report([Path("notes.txt")], list_no_face=True)
    assert lines[0] == "processed 25 images; 3 faces; 1 input without a face; 23 failed"
    assert sum(line.startswith("  failed: ") for line in lines) == 20
    assert "  ... and 3 more (see the records with status 'error')" in lines
    assert "  no face: x.jpg" in lines and any("skipped 1 file " in line for line in lines)
    assert not any("no face:" in line for line in stats.report())


@pytest.mark.parametrize("kwargs, match", [({"every": 0}, "every"), ({"ema": 0.0}, "ema"),
                                           ({"save_crops": True}, "output folder")])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JobOptions(**kwargs)
