"""Archive-scale labelling (docs/bulk.md): the single process against the Ray engine on the same cores, memory
over a long video, a local three-node Ray cluster, and the cost of resuming a large output.

Why these: a user with an archive needs to know what Ray costs on a small machine (its overhead), that memory
stays flat however long a video is, how the work would spread over nodes, and that resuming a large output is
cheap. Inputs are made here (the shipped sample face pasted into 640 x 480 photos and videos), so the benchmark
runs anywhere; each part writes one record under benchmarks/results/speed/bulk/.

    python benchmarks/bench_bulk.py --parts engines --photos 2000 --video-minutes 10 --every 5
    python benchmarks/bench_bulk.py --parts video_memory --every 25
    python benchmarks/bench_bulk.py --parts cluster resume
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
from _harness import command_line, log, machine_info, now, write_json

from poster_fer.provenance import git_state, load_average
from poster_fer.samples import sample_path

OUT = Path("benchmarks/results/speed/bulk")
PARTS = ("engines", "video_memory", "cluster", "resume")


def scene(i: int, rng: np.random.Generator) -> np.ndarray:
    """A 640 x 480 BGR photo holding one or two copies of the sample face at a random size and place."""
    face = cv2.imread(str(sample_path()))
    canvas = np.full((480, 640, 3), rng.integers(40, 200), np.uint8)
    for _ in range(1 + i % 2):
        s = float(rng.uniform(0.25, 0.45))
        small = cv2.resize(face, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        h, w = small.shape[:2]
        x, y = int(rng.integers(0, 640 - w)), int(rng.integers(0, 480 - h))
        canvas[y:y + h, x:x + w] = small
    return canvas


def make_photos(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(root / f"p{i:06d}.jpg"), scene(i, rng), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return root


def make_video(path: Path, minutes: float, fps: int = 25) -> Path:
    """A 640 x 480 video: a face drifting across the frame, a new scene every 10 s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    rng = np.random.default_rng(1)
    frames = int(minutes * 60 * fps)
    base = scene(0, rng)
    for k in range(frames):
        if k % (10 * fps) == 0:
            base = scene(k, rng)
        out.write(np.roll(base, (k % (10 * fps)) // 2, axis=1))
    out.release()
    return path


class PeakRSS:
    """Peak of the summed resident memory of a process and all its descendants (Ray's workers and daemons
    included), sampled every 0.2 s. Shared pages count once per process, so this overstates a little."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak / 2**20, 1)


def run_cli(args: list[str]) -> dict[str, Any]:
    """Run ``poster-fer predict ARGS`` in a fresh process: wall seconds, peak RSS of its tree, its summary."""
    cmd = [sys.executable, "-m", "poster_fer_apps.cli", "predict", "--no-progress", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = PeakRSS(proc.pid)
    _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    peak = rss.stop()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return {"command": " ".join(["poster-fer", "predict", *args]), "seconds": round(seconds, 2),
            "peak_rss_mb": peak, "summary": err.strip().splitlines()[-4:]}


def count_rows(path: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    statuses = pq.read_table(path, columns=["status"]).column("status").to_pylist()
    return {s: statuses.count(s) for s in sorted(set(statuses))}


def rates(run: dict[str, Any], inputs: int, rows: dict[str, int], frames: int | None = None) -> dict[str, Any]:
    out = {**run, "inputs": inputs, "rows": rows, "inputs_per_s": round(inputs / run["seconds"], 2),
           "faces_per_s": round(rows.get("ok", 0) / run["seconds"], 2)}
    if frames is not None:
        out["frames_per_s"] = round(frames / run["seconds"], 2)
    return out


def part_engines(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Photos, then a video: the single process (ONNX Runtime, as the Ray engine by default) against Ray
    started on this machine with the same cores; alternating, ``--passes`` times."""
    photos = make_photos(tmp / "photos", args.photos)
    video = make_video(tmp / "video" / "talk.mp4", args.video_minutes)
    frames = int(args.video_minutes * 60 * 25) // args.every
    jobs = {"photos": ([str(photos)], args.photos, None), "video": ([str(video)], 1, frames)}
    result: dict[str, Any] = {}
    for name, (inputs, n, nframes) in jobs.items():
        rows: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
        for k in range(args.passes):
            for engine in ("local", "ray"):
                out = tmp / f"{name}_{engine}_{k}{'.parquet' if engine == 'local' else ''}"
                extra = ["--engine", "ray"] if engine == "ray" else ["--backend", "onnxruntime"]
                log(f"{name}: {engine} pass {k + 1}")
                run = run_cli([*inputs, "--output", str(out), "--every", str(args.every), *extra])
                rows[engine].append(rates(run, n, count_rows(out), nframes))
        best = {e: min(r, key=lambda x: x["seconds"]) for e, r in rows.items()}  # the same work: time decides
        result[name] = {"runs": rows, "ray_share_of_local_throughput": round(
            best["local"]["seconds"] / best["ray"]["seconds"], 3)}
    return result


def part_video_memory(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of the single process over a 10- and a 60-minute video (memory must not grow with length)."""
    out: dict[str, Any] = {}
    for minutes in (10, 60):
        video = make_video(tmp / f"v{minutes}" / f"talk_{minutes}min.mp4", minutes)
        log(f"video memory: {minutes} min")
        run = run_cli([str(video), "--output", str(tmp / f"v{minutes}.parquet"), "--every", str(args.every),
                       "--backend", "onnxruntime"])
        out[f"{minutes}_min"] = rates(run, 1, count_rows(tmp / f"v{minutes}.parquet"),
                                      minutes * 60 * 25 // args.every)
        video.unlink()
    out["peak_rss_difference_mb"] = round(out["60_min"]["peak_rss_mb"] - out["10_min"]["peak_rss_mb"], 1)
    return out


def part_cluster(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A local Ray cluster of 3 nodes with 1 CPU each (ray.cluster_utils.Cluster): total rate, per-node rate
    and a projection to N nodes. On this machine the 3 nodes share its cores, so the per-node rate is what one
    node gets here, not what a real machine of its own would give."""
    import ray
    from ray.cluster_utils import Cluster

    from poster_fer.bulk import label

    photos = make_photos(tmp / "cluster_photos", args.cluster_photos)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        t0 = time.perf_counter()
        res = label([photos], tmp / "cluster_out", engine="ray", progress=False)
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()
    total = args.cluster_photos / seconds
    per_node = total / 3
    return {"nodes": 3, "cpus_per_node": 1, "physical_cores": psutil.cpu_count(logical=False),
            "inputs": args.cluster_photos, "seconds": round(seconds, 2), "rows": res.rows,
            "total_inputs_per_s": round(total, 2), "per_node_inputs_per_s": round(per_node, 2),
            "projection_inputs_per_s": {f"{n}_nodes": round(n * per_node, 1) for n in (10, 100)},
            "projection_note": "a projection: N x the per-node rate measured here, where 3 one-CPU nodes share "
                               "the machine's cores; it ignores the driver, the shared filesystem and the network"}


def part_resume(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Resuming an output that already holds ``--resume-inputs`` inputs: the whole command (model load
    included) and, beside it, the same command on one new input with nothing to skip."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from poster_fer.bulk import run_metadata
    from poster_fer.bulk.table import schema
    from poster_fer.inference import Recognizer

    n = args.resume_inputs
    tmp.mkdir(parents=True, exist_ok=True)
    rec = Recognizer.from_checkpoint(None, backend="onnxruntime", detector=None)
    meta = run_metadata(rec, None, None, "local")
    sch = schema(rec.classes, meta)
    paths = [str(tmp / "archive" / f"{i // 1000:03d}" / f"p{i:07d}.jpg") for i in range(n)]
    cols = {name: pa.nulls(n, sch.field(name).type) for name in sch.names}
    cols.update(source=pa.array(paths), status=pa.array(["no_face"] * n), error=pa.array(["no face found"] * n))
    out = tmp / "big.parquet"
    pq.write_table(pa.table(cols, schema=sch), out)
    (tmp / "list.txt").write_text("\n".join(paths) + "\n")
    sample = tmp / "one.txt"
    sample.write_text(f"{sample_path()}\n")
    skip = run_cli(["--from-list", str(tmp / "list.txt"), "--output", str(out), "--resume", "--backend", "onnxruntime",
                    "--no-detect"])
    base = run_cli(["--from-list", str(sample), "--output", str(tmp / "one.parquet"), "--backend", "onnxruntime",
                    "--no-detect"])
    return {"done_inputs": n, "resume_seconds": skip["seconds"], "one_new_input_seconds": base["seconds"],
            "skip_cost_seconds": round(skip["seconds"] - base["seconds"], 2), "target_seconds": 10,
            "resume_run": skip, "baseline_run": base}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--photos", type=int, default=2000)
    p.add_argument("--video-minutes", type=float, default=10.0)
    p.add_argument("--every", type=int, default=5, help="process every Nth video frame (all are decoded)")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--cluster-photos", type=int, default=600)
    p.add_argument("--resume-inputs", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    records = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as scratch:
        for part in args.parts:
            t0 = time.time()
            numbers = globals()[f"part_{part}"](Path(scratch) / part, args)
            record = {"benchmark": f"bulk labelling: {part}", "command": command_line(__file__, argv),
                      "git": git_state(), "machine": {**machine_info("cpu"), "load_average": load_average()},
                      "date": now(), "part": part, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                                for k, v in vars(args).items()},
                      "results": numbers, "wall_s": round(time.time() - t0, 1)}
            write_json(record, args.out / f"cpu-{part}.json")
            log(f"{part}: {json.dumps(numbers)[:400]}")
            records[part] = record
    return records


if __name__ == "__main__":
    main()
