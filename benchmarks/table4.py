"""Issue 23's table: the paper's Table 4 rows at the default model's scale, from the recorded runs.

Why a script: the table, the seed spreads and the shipping rule's outcome are computed from the records, so
they cannot disagree with them. Inputs per row (absent files make the row "not run"):

* the training run's record, ``train/<run>.json``: best validation accuracy (the selection metric), the
  trainer's test evaluation of that checkpoint (bf16 on an AVX512-BF16 CPU, no calibration), its confusion
  matrix, parameters, wall time;
* where the model still exists, its release-procedure evaluation (``benchmarks/default_model.py --out-model``:
  prior correction and temperature chosen on validation, float16 storage, test once), ``eval/<run>.json`` or,
  for the shipped default, ``release/<name>.json``: calibrated test accuracy, mean class accuracy, ECE;
* the robustness benchmark, where run;
* the photo-pipeline speed (``benchmarks/bench_photo_pipeline.py``, 2 threads), where run: the rule's second half.

Outputs: ``benchmarks/results/ablation/table4_mfn64.json`` (rows, spreads, the rule's outcome; GFLOPs computed
here from each record's model config), ``table4_mfn64.md`` (rendered from that JSON) and one confusion PNG per
row (the trainer's test confusion, so every row, even one whose model is gone, is drawn from the same
evaluation).

    python benchmarks/table4.py            # rebuild everything
    python benchmarks/table4.py --check    # exit 1 when table4_mfn64.md is not what the JSON renders
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from results_index import envelope  # a sibling script, as python benchmarks/table4.py runs it

from poster_fer.evaluation.operating import called_as
from poster_fer.provenance import git_revision

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
OUT_JSON = RESULTS / "ablation" / "table4_mfn64.json"
OUT_MD = RESULTS / "ablation" / "table4_mfn64.md"
FIG_DIR = RESULTS / "ablation" / "table4_mfn64"

ROW_NAMES = {"b": "image only", "c": "baseline (concat + self-attention)", "d": "baseline + pyramid",
             "e": "cross-fusion, no pyramid", "f": "POSTER (cross-fusion + pyramid)"}


@dataclass(frozen=True)
class Row:
    row: str
    seed: int
    train: str  # record path under benchmarks/results/
    calibrated: str | None = None
    robustness: str | None = None
    note: str = ""
    speed: tuple[str, ...] = ()  # photo-pipeline records of this row's model, one per timing pass


_SPEED = "speed/photo_pipeline/table4_mfn64/cpu"
# The runs of each row. (b) seed 0 is the shipped default's own run (recipe ferplus_mfn64_long, which
# table4_mfn64_image is); (f) seed 0's model was lost with its machine before it was calibrated.
ROWS = (
    Row("b", 0, "train/ferplus_mfn64_long.json", "release/poster_v1_mfn64_image.ferplus.json",
        "robustness/poster_v1_mfn64_image.ferplus.json", "the shipped default's run"),
    Row("b", 1, "train/table4_mfn64_image_s1.json", "eval/table4_mfn64_image_s1.json"),
    Row("c", 0, "train/table4_mfn64_baseline_s0.json", "eval/table4_mfn64_baseline_s0.json",
        speed=(f"{_SPEED}_c_s0_pass1.json", f"{_SPEED}_c_s0_pass2.json")),
    Row("c", 1, "train/table4_mfn64_baseline_s1.json", "eval/table4_mfn64_baseline_s1.json",
        note="needed by (c)'s rule, configs/table4_mfn64_baseline.yaml"),
    Row("d", 0, "train/table4_mfn64_baseline_pyramid_s0.json", "eval/table4_mfn64_baseline_pyramid_s0.json"),
    Row("e", 0, "train/table4_mfn64_crossfusion_s0.json", "eval/table4_mfn64_crossfusion_s0.json"),
    Row("f", 0, "train/table4_mfn64_s0.json", None, None, "model lost with its machine before calibration"),
    Row("f", 1, "train/table4_mfn64_s1.json", "eval/table4_mfn64_s1.json", "robustness/table4_mfn64_s1.json",
        speed=(f"{_SPEED}_f_s1_pass1.json", f"{_SPEED}_f_s1_pass2.json")),
)
# (b) seed 0's model is the shipped default: timed in the same passes as (c) and (f), alternating.
SPEED_B = (f"{_SPEED}_b_s0_pass1.json", f"{_SPEED}_b_s0_pass2.json")
#: the rule's speed bar (configs/table4_mfn64.yaml): faces/s at 2 threads
SPEED_TARGETS = {"portrait_batch1": 30.0, "group16_batch16": 150.0}
#: the two-stream rows with a shipping rule, and the recipe each rule is written in
RULES = {"f": "configs/table4_mfn64.yaml", "c": "configs/table4_mfn64_baseline.yaml"}


def seed_summary(values: list[float]) -> dict[str, Any]:
    """Mean and spread (|max - min|, which for two seeds is |seed 0 - seed 1|) of a row's best validation."""
    if not values:
        return {"n": 0, "mean": None, "spread": None}
    return {"n": len(values), "mean": float(np.mean(values)), "spread": float(max(values) - min(values))}


def shipping_rule(b: dict[str, Any], f: dict[str, Any], speed: dict[str, float] | None = None,
                  row: str = "f") -> dict[str, Any]:
    """The rule written in configs/table4_mfn64.yaml before the first run (and for (c) in
    configs/table4_mfn64_baseline.yaml before its last epochs): a two-stream row replaces the default only if its
    mean best validation beats (b)'s by more than the larger seed spread (two seeds of each) AND its photo pipeline
    meets :data:`SPEED_TARGETS` (``speed``: mean faces/s per input; unmeasured is not met)."""
    if b["n"] < 2 or f["n"] < 2:
        return {"decided": False, "row": row, "why": f"needs two seeds of (b) and ({row}); have {b['n']} and {f['n']}"}
    margin = f["mean"] - b["mean"]
    need = max(b["spread"], f["spread"])
    accurate = margin > need
    why = (f"({row}) mean {100 * f['mean']:.2f}% - (b) mean {100 * b['mean']:.2f}% = {100 * margin:+.2f} points, "
           f"{'more' if accurate else 'not more'} than the larger seed spread {100 * need:.2f}")
    fast = speed is not None and all(speed.get(k, 0.0) >= v for k, v in SPEED_TARGETS.items())
    if accurate:
        why += ("; photo pipeline " + ("not measured" if speed is None else
                ", ".join(f"{k} {speed.get(k, 0.0):.1f} faces/s (>= {v:g})" for k, v in SPEED_TARGETS.items())))
    return {"decided": True, "row": row, "replaces_default": accurate and fast, "accuracy_passes": accurate,
            "speed_passes": fast if speed is not None else None, "margin_points": round(100 * margin, 2),
            "needed_points": round(100 * need, 2), "why": why}


def speed_summary(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean faces/s at 2 threads per pipeline input over the timing passes (bench_photo_pipeline.py records)."""
    if not records:
        return None
    per = {k: [float(r["runs"]["threads_2"]["results"]["cpu"][k]["faces_per_second"]) for r in records]
           for k in SPEED_TARGETS}
    return {"passes": len(records), "faces_per_second": {k: round(float(np.mean(v)), 1) for k, v in per.items()},
            "per_pass": per}


def training_minutes(record: dict[str, Any]) -> dict[str, Any]:
    """Recorded wall minutes, and where an epoch took over 3x the median epoch (the process was stopped with
    SIGSTOP for an evaluation that needed the machine idle, or the machine slept), the minutes with each such
    epoch counted at the median: the pause is the machine's, not the row's cost."""
    wall = record.get("wall_time_s")
    timed = [(h["epoch"], float(h["epoch_s"])) for h in record.get("history") or [] if h.get("epoch_s")]
    out: dict[str, Any] = {"minutes": round(wall / 60, 1) if wall else None, "paused_epochs": [],
                           "minutes_excluding_pauses": None}
    if not wall or not timed:
        return out
    median = float(np.median([s for _, s in timed]))
    paused = [(e, s) for e, s in timed if s > 3 * median]
    if paused:
        out["paused_epochs"] = [e for e, _ in paused]
        out["minutes_excluding_pauses"] = round((wall - sum(s - median for _, s in paused)) / 60, 1)
    return out


def _load(rel: str | None) -> dict[str, Any] | None:
    if rel is None or not (RESULTS / rel).is_file():
        return None
    return json.loads((RESULTS / rel).read_text())


def _gflops(record: dict[str, Any]) -> dict[str, Any]:
    import torch

    from poster_fer.models import create_model
    from poster_fer.models.stats import model_stats

    torch.manual_seed(0)
    with warnings.catch_warnings():  # older records name the model by a deprecated alias; same architecture
        warnings.simplefilter("ignore", DeprecationWarning)
        model = create_model(record["model"], **record["model_config"])
    return model_stats(model)


def _calibrated_test(record: dict[str, Any]) -> dict[str, Any]:
    test = record["metrics"]["test"]
    cal = record.get("calibration") or {}
    return {"accuracy": test["accuracy"], "mean_class_accuracy": test["mean_class_accuracy"],
            "macro_f1": test.get("macro_f1"), "ece": (cal.get("test") or {}).get("ece"),
            "ece_calibrated": (cal.get("test") or {}).get("ece_calibrated", test.get("ece_calibrated")),
            "temperature": cal.get("temperature"),
            "prior_tau": (record.get("prior_correction") or {}).get("tau"),
            "neutral_overprediction": called_as(test["confusion"], _classes(record), "neutral")["rate"]
            if "confusion" in test else None}


def _classes(record: dict[str, Any]) -> list[str]:
    return list(record.get("data", {}).get("classes") or record["metrics"]["test"].get("class_names"))


def build_row(spec: Row, stats_cache: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"row": spec.row, "name": ROW_NAMES[spec.row], "seed": spec.seed,
                           "train_record": spec.train, "note": spec.note}
    train = _load(spec.train)
    if train is None:
        return {**out, "status": "not run"}
    classes = _classes(train)
    val, test = train["metrics"]["val"], train["metrics"]["test"]
    key = json.dumps([train["model"], train["model_config"]], sort_keys=True)
    if key not in stats_cache:
        stats_cache[key] = _gflops(train)
    stats = stats_cache[key]
    out.update({
        "status": "done", "recipe": train.get("recipe"), "command": train.get("command"),
        "best_val": val["accuracy"], "best_epoch": val.get("epoch"),
        "test": {"accuracy": test["accuracy"], "mean_class_accuracy": test["mean_class_accuracy"],
                 "macro_f1": test["macro_f1"], "nll": test.get("nll"),
                 "per_class": {c: test["per_class"][c]["accuracy"] for c in classes},
                 "confusion": test["confusion"],
                 "neutral_overprediction": called_as(test["confusion"], classes, "neutral")},
        "params_total": stats["params_total"], "params_trainable": stats["params_trainable"],
        "gflops": stats["gflops"], "input_size": stats["input_size"],
        "training_minutes": training_minutes(train),
        "epochs_run": train.get("epochs_run"),
        "machine": {k: (train.get("machine") or {}).get(k) for k in ("cpu", "cpu_fast_bf16", "torch_threads")},
        "classes": classes,
    })
    cal = _load(spec.calibrated)
    out["calibrated"] = _calibrated_test(cal) if cal else None
    out["calibrated_record"] = spec.calibrated if cal else None
    rob = _load(spec.robustness)
    out["robustness_record"] = spec.robustness if rob else None
    out["robustness"] = {cond: {k: r[k] for k in ("accuracy", "mean_class_accuracy")}
                         for cond, r in rob["results"].items()} if rob else None
    out["speed"] = _speed(spec.speed)
    return out


def _speed(paths: tuple[str, ...]) -> dict[str, Any] | None:
    records = [r for r in (_load(p) for p in paths) if r is not None]
    return {**speed_summary(records), "records": list(paths)} if records else None


def build() -> dict[str, Any]:
    cache: dict[str, Any] = {}
    rows = [build_row(spec, cache) for spec in ROWS]
    seeds = {r: seed_summary([x["best_val"] for x in rows if x["row"] == r and x["status"] == "done"])
             for r in ROW_NAMES}
    speed = {r: next((x["speed"]["faces_per_second"] for x in rows if x["row"] == r and x.get("speed")), None)
             for r in ROW_NAMES}
    speed_b = _speed(SPEED_B)
    return {"experiment": "Table 4 of POSTER at the default model's scale (issue 23): FER+, 24 epochs, "
                          "ArcFace MobileFaceNet image stream at 64 px",
            "command": "python benchmarks/" + " ".join(shlex.quote(a) for a in [Path(__file__).name, *sys.argv[1:]]),
            "git_revision": git_revision(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rows": rows, "seeds": seeds, "speed_b": speed_b,
            "rules": {r: shipping_rule(seeds["b"], seeds[r], speed[r], r) for r in RULES}}


def _pct(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def _minutes(m: dict[str, Any]) -> str:
    if m["minutes"] is None:
        return "—"
    if not m["paused_epochs"]:
        return f"{m['minutes']}"
    where = ", ".join(str(e) for e in m["paused_epochs"])
    return f"{m['minutes']} ({m['minutes_excluding_pauses']} without the pause in epoch {where})"


def render(table: dict[str, Any]) -> str:
    """Markdown of :func:`build`'s output (the JSON is the source; this file is generated)."""
    lines = ["# Table 4 at the default model's scale (issue 23)", "",
             f"Generated by `python benchmarks/table4.py` from the records named in `table4_mfn64.json`; do not edit. "
             f"{table['experiment']}. Validation picks the epoch; test is read once per row.", "",
             "| row | seed | best val (epoch) | test | mean class | macro F1 | neutral over-pred. "
             "| shipped calibration: test / mean class / neutral over-pred. | ECE calibrated | params (trainable) "
             "| GFLOPs | train min |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table["rows"]:
        label = f"({r['row']}) {r['name']}"
        if r["status"] != "done":
            why = f" ({r['note']})" if r.get("note") else ""
            lines.append(f"| {label} | {r['seed']} | not run{why} | | | | | | | | | |")
            continue
        t, c = r["test"], r.get("calibrated")
        cal = (f"{_pct(c['accuracy'])} / {_pct(c['mean_class_accuracy'])} / {_pct(c['neutral_overprediction'])}"
               if c else "—")
        ece = _pct(c["ece_calibrated"]) if c and c.get("ece_calibrated") is not None else "—"
        lines.append(
            f"| {label} | {r['seed']} | {_pct(r['best_val'])} ({r['best_epoch']}) | {_pct(t['accuracy'])} | "
            f"{_pct(t['mean_class_accuracy'])} | {_pct(t['macro_f1'])} | {_pct(t['neutral_overprediction']['rate'])} | "
            f"{cal} | {ece} | {r['params_total'] / 1e3:,.0f}k ({r['params_trainable'] / 1e3:,.0f}k) | "
            f"{r['gflops']:.3f} | {_minutes(r['training_minutes'])} |")
    done = [r for r in table["rows"] if r["status"] == "done"]
    if done:
        classes = done[0]["classes"]
        lines += ["", "Per-class test accuracy (trainer's evaluation):", "",
                  "| row | seed | " + " | ".join(classes) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in classes) + " |"]
        for r in done:
            lines.append(f"| ({r['row']}) | {r['seed']} | "
                         + " | ".join(_pct(r["test"]["per_class"][c], 1) for c in classes) + " |")
    robust = [r for r in done if r.get("robustness")]
    if robust:
        conditions = list(robust[0]["robustness"])
        lines += ["", "Robustness, FER+ test accuracy / mean class accuracy under each change "
                  "(`benchmarks/robustness.py` on the release-procedure model of the row):", "",
                  "| change | " + " | ".join(f"({r['row']}) seed {r['seed']}" for r in robust) + " |",
                  "| --- | " + " | ".join("---" for _ in robust) + " |"]
        for cond in conditions:
            cells = [r["robustness"].get(cond) for r in robust]
            text = ["—" if c is None else f"{_pct(c['accuracy'])} / {_pct(c['mean_class_accuracy'])}" for c in cells]
            lines.append(f"| {cond} | " + " | ".join(text) + " |")
    lines += ["", "Seeds (best validation accuracy):", ""]
    for row, s in table["seeds"].items():
        if s["n"]:
            spread = f", spread {100 * s['spread']:.2f} points" if s["n"] > 1 else ""
            lines.append(f"- ({row}) {ROW_NAMES[row]}: {s['n']} seed(s), mean {_pct(s['mean'])}{spread}")
    timed = [r for r in done if r.get("speed")]
    if timed:
        b = table.get("speed_b")
        lines += ["", "Photo pipeline at 2 threads, faces/s (`benchmarks/bench_photo_pipeline.py`, mean of the timing "
                  "passes; rows timed alternately with the shipped default on the same idle machine):", "",
                  "| model | one-face portrait (target >= 30) | 16-face photo, batch 16 (target >= 150) |",
                  "| --- | --- | --- |"]
        if b:
            fps = b["faces_per_second"]
            lines.append(f"| (b) seed 0, the shipped default | {fps['portrait_batch1']} | {fps['group16_batch16']} |")
        for r in timed:
            fps = r["speed"]["faces_per_second"]
            lines.append(f"| ({r['row']}) seed {r['seed']} | {fps['portrait_batch1']} | {fps['group16_batch16']} |")
    lines += ["", "Shipping rules (decided on validation; test plays no part):", ""]
    for row, rule in table["rules"].items():
        if not rule["decided"]:
            verdict = "not decided: " + rule["why"]
        else:
            verdict = (f"({row}) replaces the default: " if rule["replaces_default"] else "the default stays: ")
            verdict += rule["why"]
        lines.append(f"- ({row}), {RULES[row]}: {verdict}.")
    lines += ["",
              "Columns: *test*, *mean class*, *macro F1*, *neutral over-pred.* (non-neutral faces predicted neutral) "
              "are the trainer's evaluation of the best-validation checkpoint (EMA weights, bf16 on an AVX512-BF16 "
              "CPU, no calibration). *shipped calibration* is the same three after the release "
              "procedure of `benchmarks/default_model.py` (class-prior correction and temperature chosen on "
              "validation, float16 storage); *ECE calibrated* is that model's test ECE (15 bins). GFLOPs per face "
              "(a multiply or an add is one FLOP) include the frozen landmark network. Training minutes are wall "
              "clock on the 2-core machine named in each record (machines differed: see the records); an epoch "
              "over 3x the median epoch is a pause (the run stopped while the machine measured something else) "
              "and is also shown counted at the median.", ""]
    return "\n".join(lines)


def write_figures(table: dict[str, Any]) -> list[Path]:
    from poster_fer.evaluation.plots import plot_confusion

    FIG_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in table["rows"]:
        if r["status"] != "done":
            continue
        path = FIG_DIR / f"confusion_{r['row']}_s{r['seed']}.png"
        title = (f"({r['row']}) {r['name']}, seed {r['seed']}: FER+ test {100 * r['test']['accuracy']:.2f}% "
                 f"(trainer's evaluation)")
        paths.append(plot_confusion(r["test"]["confusion"], r["classes"], path, title=title))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that the Markdown matches the JSON")
    args = p.parse_args(argv)
    if args.check:
        table = json.loads(OUT_JSON.read_text())
        ok = OUT_MD.is_file() and OUT_MD.read_text() == render(table)
        print("table4_mfn64.md is current" if ok else "table4_mfn64.md is stale: run python benchmarks/table4.py")
        return 0 if ok else 1
    table = build()
    table = {"envelope": envelope(OUT_JSON, table), **table}
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(table, indent=1) + "\n")
    OUT_MD.write_text(render(table))
    for path in write_figures(table):
        print(f"[table4] {path.relative_to(REPO)}")
    for row, rule in table["rules"].items():
        print(f"[table4] rule ({row}): {rule['why']}")
    print(f"[table4] {OUT_JSON.relative_to(REPO)}, {OUT_MD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
