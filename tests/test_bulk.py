"""Archive scale (poster_fer.bulk): Parquet rows equal the JSON-lines rows, every output format resumes after a
SIGKILL to exactly what an uninterrupted run writes, --from-list, and the option checks. The Ray engine's tests
are in test_bulk_ray.py."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from poster_fer.samples import sample_path

pa = pytest.importorskip("pyarrow", reason="Parquet output needs the [parquet] extra")
pq = pytest.importorskip("pyarrow.parquet")

CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
FLOAT_KEYS = ("time", "score", "confidence")


def photo(i: int) -> np.ndarray:
    """A 320 x 240 BGR photo of the sample face, shifted and scaled a little per index (so rows differ)."""
    face = cv2.imread(str(sample_path()))
    scale = 0.35 + 0.002 * (i % 20)
    small = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((240, 320, 3), 90 + i % 50, np.uint8)
    h, w = small.shape[:2]
    x, y = 20 + (i * 7) % (320 - w - 20), (240 - h) // 2
    canvas[y:y + h, x:x + w] = small
    return canvas


def make_archive(root: Path, images: int, videos: int = 0, frames: int = 8, bad: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        cv2.imwrite(str(root / f"img_{i:04d}.jpg"), photo(i))
    for v in range(videos):
        out = cv2.VideoWriter(str(root / f"clip_{v}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
        for k in range(frames):
            out.write(photo(3 * k + v))
        out.release()
    if bad:
        (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
        (root / "empty.png").write_bytes(b"")
    return root


def predict(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "poster_fer_apps.cli", "predict", "--no-progress", "--backend", "onnxruntime", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    if check:
        assert res.returncode in (0, 1), res.stderr
    return res


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def csv_rows(path: Path) -> list[dict]:
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False)
    return frame.to_dict("records")


def parquet_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def key(row: dict) -> tuple:
    frame = row.get("frame")
    face = row.get("face")
    return (row["source"], -1 if frame in (None, "") else int(frame), -1 if face in (None, "") else int(face))


def same(a: float | None, b: float | None, tol: float) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or (isinstance(a, float) and math.isnan(a))) and (b is None or b == "")
    return abs(float(a) - float(b)) <= tol


def assert_parquet_matches_jsonl(pq_rows: list[dict], js_rows: list[dict], tol: float = 1e-6) -> None:
    """Every column of every row: the JSON-lines record and its Parquet row say the same."""
    assert sorted(map(key, pq_rows)) == sorted(map(key, js_rows))
    by_key = {key(r): r for r in pq_rows}
    for js in js_rows:
        row = by_key[key(js)]
        for k in ("source", "frame", "track", "face", "status", "error", "landmarks_estimated", "label", "crop",
                  "detection"):
            assert row[k] == js[k], (k, row[k], js[k])
        for k in FLOAT_KEYS:
            assert (row[k] is None) == (js[k] is None) and (js[k] is None or abs(row[k] - js[k]) <= tol), k
        assert (row["box"] is None) == (js["box"] is None)
        if js["box"] is not None:
            assert np.allclose(row["box"], js["box"], atol=1e-9)
            assert np.allclose(row["landmarks"], js["landmarks"], atol=1e-9)
        for c in CLASSES:
            assert same(row[f"p_{c}"], (js["scores"] or {}).get(c), tol), c
            assert same(row[f"raw_p_{c}"], (js["raw_scores"] or {}).get(c), tol), c
        assert row["segment"] == (0 if js["frame"] is not None or js["source"].endswith(".mp4") else None)


def test_parquet_rows_equal_the_json_lines_rows(tmp_path):
    data = make_archive(tmp_path / "in", images=6, videos=1, frames=6, bad=True)
    predict(str(data), "--output", str(tmp_path / "r.jsonl"))
    res = predict(str(data), "--output", str(tmp_path / "r.parquet"))
    assert "rows by status: error 2, ok 12" in res.stderr
    rows = parquet_rows(tmp_path / "r.parquet")
    assert_parquet_matches_jsonl(rows, jsonl_rows(tmp_path / "r.jsonl"))
    assert not (tmp_path / "r.parquet.parts").exists()  # merged into the one file
    schema = pq.read_schema(tmp_path / "r.parquet")
    assert schema.field("box").type == pa.list_(pa.float64(), 4) and schema.field("p_neutral").type == pa.float32()
    meta = json.loads(schema.metadata[b"poster_fer"])
    from poster_fer.checksums import sha256_of
    from poster_fer.hub import pretrained_path

    assert meta["weights"] == "poster_v1_mfn64_image.ferplus"
    assert meta["weights_sha256"] == sha256_of(pretrained_path() / "model.onnx")
    assert meta["operating_point"] == "default" and meta["classes"] == CLASSES and "--output" in meta["command"]


def test_parquet_reads_back_with_pandas_and_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    data = make_archive(tmp_path / "in", images=3, videos=1, frames=4)
    predict(str(data), "--output", str(tmp_path / "r.parquet"))
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "r.parquet")
    assert len(frame) == 7 and set(frame["status"]) == {"ok"}
    con = duckdb.connect()
    got = con.execute(f"select count(*), count(distinct source), max(frame), avg(p_neutral + p_happiness + p_surprise"
                      f" + p_sadness + p_anger + p_disgust + p_fear + p_contempt) from '{tmp_path / 'r.parquet'}'"
                      ).fetchone()
    assert got[:3] == (7, 4, 3) and abs(got[3] - 1) < 1e-3


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_resume_after_sigkill_writes_each_input_exactly_once(tmp_path, ext):
    data = make_archive(tmp_path / "in", images=200, videos=2, frames=10)
    ref = tmp_path / f"ref.{ext}"
    predict(str(data), "--output", str(ref))  # the uninterrupted run, in the same format
    out = tmp_path / f"killed.{ext}"
    cmd = [sys.executable, "-m", "poster_fer_apps.cli", "predict", "--no-progress", "--backend", "onnxruntime",
           str(data), "--output", str(out)]
    env = {**os.environ, "POSTER_FER_PART_SECONDS": "0.5"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    journal, parts = Path(f"{out}.progress"), Path(f"{out}.parts")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        # inputs journalled (text) or parts renamed into place (Parquet: one part per 0.5 s of work, so two are
        # about a second in, well before the ~3 s run ends even on a fast machine)
        done = (len(journal.read_text().splitlines()) - 1 if journal.exists() else 0) if ext != "parquet" else \
            (len(list(parts.glob("part-*.parquet"))) if parts.exists() else 0)
        if done >= (40 if ext != "parquet" else 2):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = predict(str(data), "--output", str(out), "--resume")
    m = res.stderr.split("resuming")[1]
    already = int(m.split(":")[1].split("of")[0])
    assert 0 < already < 202, res.stderr  # it did skip work, and did not skip everything
    rows = {"jsonl": jsonl_rows, "csv": csv_rows, "parquet": parquet_rows}[ext](out)
    sources = [r["source"] for r in rows if key(r)[1:] in ((-1, 0), (0, 0))]  # each input's first row
    assert len(sources) == len(set(sources)) == 202  # every input, once
    assert not journal.exists() and not parts.exists()
    reference = {"jsonl": jsonl_rows, "csv": csv_rows, "parquet": parquet_rows}[ext](ref)
    assert sorted(map(key, rows)) == sorted(map(key, reference))
    assert {key(r): r for r in rows} == {key(r): r for r in reference}


def test_a_finished_output_resumes_with_nothing_to_do_and_new_inputs_are_added(tmp_path):
    data = make_archive(tmp_path / "in", images=3)
    out = tmp_path / "r.parquet"
    predict(str(data), "--output", str(out))
    cv2.imwrite(str(data / "img_new.jpg"), photo(40))
    res = predict(str(data), "--output", str(out), "--resume")
    assert "3 of 4 inputs already complete, 1 to go" in res.stderr
    rows = parquet_rows(out)
    assert sorted(r["source"] for r in rows) == sorted(str(p) for p in data.iterdir())


def test_resume_refuses_an_output_of_other_weights(tmp_path):
    data = make_archive(tmp_path / "in", images=1)
    out = tmp_path / "r.parquet"
    predict(str(data), "--output", str(out))
    res = predict(str(data), "--output", str(out), "--resume", "--operating-point", "balanced", check=False)
    assert res.returncode == 2 and "operating_point" in res.stderr and "Traceback" not in res.stderr


def test_from_list_text_csv_and_parquet_with_missing_entries_as_error_rows(tmp_path):
    data = make_archive(tmp_path / "in", images=2)
    paths = [str(p) for p in sorted(data.iterdir())] + [str(tmp_path / "gone.jpg")]
    (tmp_path / "list.txt").write_text("\n".join(paths) + "\n\n")
    (tmp_path / "list.csv").write_text("id,file\n" + "".join(f"{i},{p}\n" for i, p in enumerate(paths)))
    pq.write_table(pa.table({"path": paths}), tmp_path / "list.parquet")
    for name, extra in (("list.txt", []), ("list.csv", ["--list-column", "file"]), ("list.parquet", [])):
        out = tmp_path / f"{name}.jsonl"
        res = predict("--from-list", str(tmp_path / name), *extra, "--output", str(out))
        assert res.returncode == 1 and "gone.jpg" in res.stderr
        rows = jsonl_rows(out)
        assert [r["source"] for r in rows] == paths
        assert rows[-1]["status"] == "error" and "gone.jpg" in rows[-1]["error"]
    res = predict("--from-list", str(tmp_path / "list.csv"), check=False)
    assert res.returncode == 2 and "no column 'path'" in res.stderr and "--list-column" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--resume"], "--resume needs --output"),
    (["--resume", "--output", "x.json"], "cannot be appended to"),
    (["--engine", "ray", "--output", "x.csv"], "--engine ray writes Parquet parts"),
    (["--address", "auto"], "--address applies to --engine ray"),
    (["--from-list", "nowhere.txt"], "--from-list nowhere.txt: no such file"),
])
def test_bulk_options_are_checked_before_anything_loads(tmp_path, args, message):
    res = predict(str(sample_path()), *args, check=False)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_label_function_local_engine(tmp_path):
    from poster_fer.bulk import label

    data = make_archive(tmp_path / "in", images=2, bad=True)
    seen = []
    result = label([data], tmp_path / "r.parquet", engine="local", backend="onnxruntime", progress=False,
                   on_input=seen.append)
    assert result.rows == {"ok": 2, "error": 2} and result.inputs == 4 and result.skipped == 0
    again = label([data], tmp_path / "r.parquet", engine="local", backend="onnxruntime", resume=True,
                  progress=False)
    assert again.inputs == 0 and again.skipped == 4


def test_ray_pool_sizes_fill_the_cores_and_give_gpus_to_the_classifier():
    from poster_fer.bulk.ray_engine import RayOptions, pool_sizes

    assert pool_sizes(RayOptions(), False, cpus=2, gpus=0) == (1, 0.5, 2, 0.75, 0.0)
    assert pool_sizes(RayOptions(), False, cpus=32, gpus=0) == (8, 0.5, 28, 1.0, 0.0)
    assert pool_sizes(RayOptions(), True, cpus=16, gpus=2) == (2, 0.0, 16, 1.0, 1.0)  # PyTorch on GPUs
    assert pool_sizes(RayOptions(actors=3, detect_actors=4), False, cpus=8, gpus=0) == (3, 0.5, 4, 1.0, 0.0)


def test_plan_items_cuts_long_videos_into_segments_on_kept_frames(tmp_path):
    from poster_fer.bulk.ray_engine import plan_items
    from poster_fer.inference import collect_sources

    data = make_archive(tmp_path / "in", images=1, videos=1, frames=25)
    items = plan_items(collect_sources([data])[0], segment_frames=10, every=3)
    video = [(it["segment"], it["start"], it["stop"]) for it in items if it["kind"] == "video"]
    assert video == [(0, 0, 12), (1, 12, 24), (2, 24, None)]  # 12 = 10 rounded up to a multiple of every
    assert [it["segment"] for it in items if it["kind"] == "image"] == [None]
    whole = plan_items(collect_sources([data])[0], segment_frames=0)
    assert [(it["segment"], it["start"], it["stop"]) for it in whole if it["kind"] == "video"] == [(0, 0, None)]


def test_run_ray_takes_one_plan_and_the_older_form_warns():
    from poster_fer.bulk.ray_engine import RayOptions, RayPlan, run_ray
    from poster_fer.inference.job import JobOptions

    plan = RayPlan({"backend": "torch"}, JobOptions(every=2), CLASSES, {}, RayOptions(actors=2), resume=True)
    assert plan.on_gpu and not RayPlan({"backend": "onnxruntime"}, JobOptions(), CLASSES, {}).on_gpu
    with pytest.raises(TypeError, match="the plan holds"):  # a plan and the old arguments: refused, not mixed
        run_ray([], Path("unused"), plan, {"every": 1})
    old = ({"backend": "onnxruntime"}, {"detect": True, "every": 1, "max_frames": None, "ema": 0.5}, CLASSES, {},
           RayOptions())
    with pytest.raises(TypeError, match="unexpected"):
        run_ray([], Path("unused"), *old, bogus=1)
    with pytest.raises(TypeError, match="multiple values"):
        run_ray([], Path("unused"), *old, True, resume=True)
    with pytest.warns(DeprecationWarning, match="RayPlan"), pytest.raises(ValueError, match="every"):
        run_ray([], Path("unused"), old[0], {**old[1], "every": 0}, *old[2:])  # the old job dict checked as before
    with pytest.raises(ValueError, match="every"):  # the job's options are checked when the plan is made
        RayPlan({"backend": "onnxruntime"}, JobOptions(every=0), CLASSES, {})
