"""The light runtime against the PyTorch install (issue 25): footprint, cold start, memory, speed and agreement.

Four measurements, each a section of one record:

* ``agreement``: every shipped model's ONNX file against its PyTorch weights on all FER+ test faces and the
  sample portrait: largest absolute difference of the calibrated probabilities, and top-1 agreement;
* ``photo_speed``: faces/s of the whole photo pipeline (YuNet, align, classify) for the default model with the
  ONNX and the PyTorch backend, paired (alternating repeats in one process, 2 threads each), on the 16-face
  group photo and the one-face portrait;
* ``footprint``: a fresh virtual environment with ``pip install poster-fer`` (the wheel of this checkout, no
  extras; dependencies from the registries): install seconds and megabytes, against the PyTorch packages this
  environment holds (what ``[torch]`` adds);
* ``cold_start``: wall seconds and peak RSS of ``poster-fer predict SAMPLE`` and of ``poster-fer --help``, in the
  light venv and in this (PyTorch) environment, median of runs.

    python benchmarks/bench_runtime.py
        [--out benchmarks/results/speed/runtime/cpu-poster_v1_mfn64_image.ferplus.json] [--skip footprint ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("agreement", "photo_speed", "footprint", "cold_start")
# The distributions `[torch]` brings (with what they pull in); their installed size is today's extra weight.
TORCH_STACK = ("torch", "torchvision", "safetensors", "triton", "sympy", "mpmath", "networkx", "jinja2",
               "markupsafe", "fsspec", "filelock", "typing_extensions")


def log(msg: str) -> None:
    print(f"[runtime {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fer_test_crops(limit: int | None = None) -> list[np.ndarray]:
    """The FER+ test faces (the first ``limit``) as RGB arrays: real crops, what agreement is measured on."""
    from poster_fer.assets import shared_path
    from poster_fer.data import build_dataset

    ds = build_dataset("ferplus", shared_path("data", "fer2013"), "test")
    return [np.asarray(ds[i][0].convert("RGB")) for i in range(len(ds) if limit is None else min(limit, len(ds)))]


def agreement() -> dict[str, Any]:
    from poster_fer.faces import load_image
    from poster_fer.hub import list_pretrained
    from poster_fer.inference import Recognizer
    from poster_fer.samples import sample_path

    crops = fer_test_crops()
    portrait = load_image(sample_path())
    out: dict[str, Any] = {"faces": len(crops) + 1}
    for name in list_pretrained():
        ref = Recognizer.from_checkpoint(name, backend="torch")
        ort = Recognizer.from_checkpoint(name, backend="onnxruntime")
        p_ref, p_ort = ref.classify(crops), ort.classify(crops)
        (a,), (b,) = ref.predict(portrait), ort.predict(portrait)
        diff = max(float(np.abs(p_ref - p_ort).max()),
                   max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities))
        out[name] = {"max_abs_prob_diff": diff,
                     "top1_agreement": float((p_ref.argmax(1) == p_ort.argmax(1)).mean()),
                     "top1_disagreements": int((p_ref.argmax(1) != p_ort.argmax(1)).sum()),
                     "portrait_same_label": a.label == b.label,
                     "portrait_box_max_diff_px": float(np.abs(np.subtract(a.box, b.box)).max())}
        log(f"agreement {name}: {out[name]}")
    return out


# Run by each environment's own Python: the light venv (ONNX Runtime, no torch) and this one (PyTorch).
_SPEED_SNIPPET = """
import json, sys
sys.path.insert(0, {bench!r})
from _photo import group_image, time_pipeline
from poster_fer.faces import load_image
from poster_fer.inference import Recognizer
rec = Recognizer.from_checkpoint(None, backend={kind!r})
portrait = load_image({image!r})
group = group_image(portrait)
out = {{"group16_batch16": time_pipeline(rec, group, 16, 3), "portrait_batch1": time_pipeline(rec, portrait, 1, 3),
       "torch_loaded": "torch" in sys.modules, "model": rec.meta.get("model")}}
print("RESULT=" + json.dumps(out))
"""


def photo_speed(light_python: Path, repeats: int) -> dict[str, Any]:
    """Each backend in its own environment and process, as users run them (ONNX Runtime in the light venv,
    PyTorch here), alternating so a machine that gets busier slows both alike; 2 threads each."""
    import json

    from poster_fer.assets import shared_path

    image = str(shared_path("samples", "astronaut.png"))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    runs: dict[str, list[dict[str, Any]]] = {"onnxruntime": [], "torch": []}
    pythons = {"onnxruntime": str(light_python), "torch": sys.executable}
    for r in range(repeats):
        for kind in (("onnxruntime", "torch") if r % 2 == 0 else ("torch", "onnxruntime")):
            code = _SPEED_SNIPPET.format(bench=str(REPO / "benchmarks"), kind=kind, image=image)
            done = subprocess.run([pythons[kind], "-c", code], capture_output=True, text=True, env=env, check=True,
                                  cwd=tempfile.gettempdir())
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT=")][-1]
            runs[kind].append(json.loads(line.removeprefix("RESULT=")))
    out: dict[str, Any] = {"model": runs["torch"][0]["model"], "threads": 2, "repeats": repeats,
                           "onnx_process_loaded_torch": any(x["torch_loaded"] for x in runs["onnxruntime"])}
    for kind, rs in runs.items():
        out[kind] = {case: {"faces_per_second": float(np.median([x[case]["faces_per_second"] for x in rs])),
                            "classify_faces_per_second": float(np.median([x[case]["classify_faces_per_second"]
                                                                          for x in rs])),
                            "faces": rs[0][case]["faces"],
                            "stage_seconds": {k: float(np.median([x[case]["seconds"][k] for x in rs]))
                                              for k in rs[0][case]["seconds"]}}
                     for case in ("group16_batch16", "portrait_batch1")}
    out["onnx_over_torch_group16"] = round(out["onnxruntime"]["group16_batch16"]["faces_per_second"]
                                           / out["torch"]["group16_batch16"]["faces_per_second"], 3)
    log(f"photo speed: {out}")
    return out


def _du_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20, 1)


def build_light_venv(where: Path) -> dict[str, Any]:
    wheelhouse = where / "wheelhouse"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(wheelhouse), str(REPO)], check=True, capture_output=True)
    (wheel,) = wheelhouse.glob("poster_fer-*.whl")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    empty = _du_mb(venv)
    t = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], check=True)
    seconds = time.perf_counter() - t
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True,
                            check=True).stdout.split()
    return {"venv": venv, "install_seconds": round(seconds, 1), "installed_mb": round(_du_mb(venv) - empty, 1),
            "wheel_mb": round(wheel.stat().st_size / 2**20, 1), "packages": listed}


def torch_stack_mb() -> dict[str, Any]:
    sizes: dict[str, float] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name in TORCH_STACK or name.startswith("nvidia-"):
            total = sum((Path(dist.locate_file(f)).stat().st_size for f in dist.files or []
                         if Path(dist.locate_file(f)).is_file()), 0)
            sizes[name] = round(total / 2**20, 1)
    return {"total_mb": round(sum(sizes.values()), 1), "by_package": dict(sorted(sizes.items()))}


# A small launcher: a child forked from this (large) process would report this process's peak RSS as its own.
_LAUNCH = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
           "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
           "w = time.perf_counter() - t; "
           "print(rc, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def timed_run(command: list[str], env: dict[str, str] | None, runs: int) -> dict[str, Any]:
    """Median wall seconds and the largest peak RSS (MB) of ``command`` over ``runs`` fresh processes, each started
    by a small launcher process (so the RSS is the command's own)."""
    walls, peaks = [], []
    for _ in range(runs):
        done = subprocess.run(["/usr/bin/env", "python3", "-c", _LAUNCH, *command], env=env, capture_output=True,
                              text=True, check=True)
        rc, wall, peak = done.stdout.split()
        if int(rc) != 0:
            raise RuntimeError(f"{command} failed ({rc}): {done.stderr[-1000:]}")
        walls.append(float(wall))
        peaks.append(int(peak) / 1024)  # kB on Linux
    return {"wall_seconds": round(float(np.median(walls)), 3), "peak_rss_mb": round(max(peaks), 1), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _harness import command_line, machine_info, now, write_json

    from poster_fer.provenance import git_state, load_average
    from poster_fer.samples import sample_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=(REPO / "benchmarks/results/speed/runtime"
                                                   / "cpu-poster_v1_mfn64_image.ferplus.json"))
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    p.add_argument("--repeats", type=int, default=6, help="photo-speed repeats per backend (alternating)")
    p.add_argument("--runs", type=int, default=5, help="processes per cold-start measurement")
    args = p.parse_args(argv)
    record: dict[str, Any] = {"benchmark": "light runtime (ONNX Runtime, no PyTorch) vs the PyTorch install",
                              "command": command_line(__file__, sys.argv[1:] if argv is None else argv),
                              "date": now(), "git": git_state(), "machine": machine_info("cpu"),
                              "load_average_before": load_average()}
    if "agreement" not in args.skip:
        record["agreement"] = agreement()
    with tempfile.TemporaryDirectory(prefix="poster-fer-light-") as tmp:
        light: dict[str, Any] | None = None
        if {"footprint", "cold_start", "photo_speed"} - set(args.skip):
            log("building the light venv (pip install poster-fer, no extras)")
            light = build_light_venv(Path(tmp))
            record["footprint"] = {
                "light": {k: v for k, v in light.items() if k != "venv"},
                "torch_stack_here": torch_stack_mb(),
                "note": "installed_mb: the venv after `pip install poster-fer` minus the empty venv; "
                        "torch_stack_here: the installed size of what the [torch] extra adds, read from this "
                        "environment's package records",
            }
            log(f"footprint: {record['footprint']['light']['installed_mb']} MB light, "
                f"{record['footprint']['torch_stack_here']['total_mb']} MB torch stack")
        if "photo_speed" not in args.skip and light is not None:
            record["photo_speed"] = photo_speed(light["venv"] / "bin" / "python", args.repeats)
        if "cold_start" not in args.skip and light is not None:
            sample = str(sample_path())
            env = {"PATH": f"{light['venv'] / 'bin'}:/usr/bin:/bin", "HOME": tmp, "PYTHONNOUSERSITE": "1",
                   "OMP_NUM_THREADS": "2"}
            here = shutil.which("poster-fer") or "poster-fer"
            record["cold_start"] = {
                "light_predict": timed_run([str(light["venv"] / "bin" / "poster-fer"), "predict", sample,
                                            "--no-progress"], env, args.runs),
                "light_help": timed_run([str(light["venv"] / "bin" / "poster-fer"), "--help"], env, args.runs),
                "torch_predict": timed_run([here, "predict", sample, "--no-progress", "--backend", "torch"], None,
                                           args.runs),
                "onnx_in_torch_env_predict": timed_run([here, "predict", sample, "--no-progress", "--backend",
                                                        "onnxruntime"], None, args.runs),
                "torch_env_help": timed_run([here, "--help"], None, args.runs),
                "note": "one `poster-fer` process per run, from start to exit (import, model and detector load, "
                        "one photo); peak RSS from wait4",
            }
            log(f"cold start: {record['cold_start']}")
    record["load_average_after"] = load_average()
    record["targets"] = {"light_installed_mb_max": 400, "help_seconds_max": 0.3, "cold_start_seconds_max": 1.0,
                         "peak_rss_mb_max": 300, "onnx_over_torch_group16_min": 1.0}
    write_json(record, args.out)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
