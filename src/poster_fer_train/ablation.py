"""The paper's Table 4 for your own data and budget: train and test each POSTER ablation under one recipe.

Each variant changes only what Table 4 changes (which streams, cross-fusion or vanilla self-attention,
pyramid or single width); everything else (data, model size, optimiser, epochs, seed) comes from the one
recipe, so the rows differ only in the architecture. Training goes through the training package's public
entry point (:func:`poster_fer_train.fit`), which selects the best epoch on validation and tests that
checkpoint once. Each variant lives in ``OUT/<variant>/`` (``recipe.yaml``, the run, ``variant.json``); a
finished variant is skipped on a rerun and an interrupted one resumes from its ``last.pt``, so a long CPU
ablation survives interruptions.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from poster_fer.models import model_family
from poster_fer.naming import warn_deprecated
from poster_fer.provenance import git_revision

from . import fit
from .recipe import ModelSettings, RecipeRequest, TrainSettings
from .runlog import RunOutput

__all__ = ["VARIANTS", "Variant", "parse_variants", "pct", "render_ablation_markdown", "run_ablation", "variant_recipe"]


@dataclass(frozen=True)
class Variant:
    """One row of Table 4."""

    key: str
    row: str  # the paper's row letter
    streams: str
    fusion: str
    pyramid: bool
    registered: str  # the registered poster_v1 variant with exactly these fields

    @property
    def config(self) -> dict[str, Any]:
        return {"streams": self.streams, "fusion": self.fusion, "pyramid": self.pyramid}

    @property
    def marks(self) -> dict[str, bool]:
        """The table's check marks: landmark stream, image stream, cross-fusion, pyramid."""
        return {"landmark": self.streams in ("both", "landmark"), "image": self.streams in ("both", "image"),
                "cross_fusion": self.fusion == "cross", "pyramid": self.pyramid}


VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("landmark_only", "a", "landmark", "self", False, "poster_v1_landmark_only"),
    Variant("image_only", "b", "image", "self", False, "poster_v1_image_only"),
    Variant("baseline", "c", "both", "self", False, "poster_v1_baseline"),
    Variant("baseline_pyramid", "d", "both", "self", True, "poster_v1_baseline_pyramid"),
    Variant("baseline_crossfusion", "e", "both", "cross", False, "poster_v1_baseline_crossfusion"),
    Variant("poster", "f", "both", "cross", True, "poster_v1"),
)}

RESULT_FILE = "variant.json"
RESULTS_FILE = "results.json"  # what training writes into its run directory
LAST_CHECKPOINT = "last.pt"  # training's resumable checkpoint

#: ``train_fn(recipe, run_dir, resume, command, log) -> results record`` (the contents of results.json).
TrainFn = Callable[[dict[str, Any], Path, bool, "str | None", Callable[[str], None]], dict[str, Any]]


def parse_variants(spec: str | Sequence[str]) -> list[Variant]:
    """``"a,b"`` or a list of keys -> variants in the paper's row order; unknown keys raise ValueError."""
    keys = [k.strip() for k in (spec.split(",") if isinstance(spec, str) else spec) if k.strip()]
    if not keys:
        raise ValueError("no variants given")
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return sorted({VARIANTS[k] for k in keys}, key=lambda v: v.row)


def variant_recipe(recipe: Mapping[str, Any], variant: Variant) -> dict[str, Any]:
    """The recipe for one variant: the same recipe with only streams / fusion / pyramid switched.

    A recipe on plain ``poster_v1`` trains the registered variant of that name (so its checkpoint says
    what it is); any other poster_v1 model (a CPU-sized one, a tiny one) keeps its name and config and gets
    the three fields as config overrides. A one-stream variant drops the other stream's pretrained file
    (and the image-only one the landmark-token cache, a pure speed-up).
    """
    out = copy.deepcopy(dict(recipe))
    model = out.setdefault("model", {})
    typed = ModelSettings.from_dict(model)
    try:
        family = model_family(typed.name)
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from None
    if family != "poster_v1":
        raise ValueError(f"Table 4 ablates POSTER v1; the recipe's model {typed.name!r} is not in the poster_v1 family")
    if typed.name == "poster_v1":
        model["name"] = variant.registered
    model["config"] = {**(typed.config or {}), **variant.config}
    # pretrained weights only for the backbones the variant has (one stream has no other backbone to load)
    unused = {"mobilefacenet"} if not variant.marks["landmark"] else {"ir50"} if not variant.marks["image"] else set()
    model["pretrained"] = {k: v for k, v in (typed.pretrained or {}).items() if k not in unused}
    if not variant.marks["landmark"] and TrainSettings.from_dict(out.get("train")).landmark_cache:
        out["train"] = {**out["train"], "landmark_cache": False}  # a speed-up only: nothing to cache
    out["name"] = f"{recipe.get('name') or 'recipe'}-{variant.key}"
    return out


def _default_train(recipe: dict[str, Any], run_dir: Path, resume: bool, command: str | None,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """Train with the training package's public entry point; returns its results record."""
    return fit(recipe, run_dir, resume=resume or None, output=RunOutput(command=command, echo=log)).results


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _run_variant(
    variant: Variant, recipe: dict[str, Any], vdir: Path, train_fn: TrainFn, command: str | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train (or resume, or skip) one variant and return its table row, also kept in ``vdir/variant.json``."""
    vdir.mkdir(parents=True, exist_ok=True)
    recipe_file = vdir / "recipe.yaml"
    text = yaml.safe_dump(recipe, sort_keys=True)
    if recipe_file.is_file() and recipe_file.read_text(encoding="utf-8") != text:
        raise ValueError(f"{recipe_file}: this folder holds a different recipe for {variant.key} (the recipe, its "
                        "overrides or --data changed); use a new --out so that every row shares one recipe")
    recipe_file.write_text(text, encoding="utf-8")
    done = _read_json(vdir / RESULT_FILE)
    if done and done.get("status") == "done":
        log(f"{variant.key}: finished earlier, skipped")
        return done
    run_dir = vdir / "run"
    results = _read_json(run_dir / RESULTS_FILE)
    if not results:
        resume = (run_dir / LAST_CHECKPOINT).is_file()
        log(f"{variant.key}: {'resuming' if resume else 'training'} {recipe['model']['name']} "
            f"with {variant.config}")
        results = train_fn(recipe, run_dir, resume, command, log)
    metrics = results.get("metrics") or {}
    test, val = metrics.get("test") or {}, metrics.get("val") or {}
    if not test:
        log(f"{variant.key}: the dataset has no test split; the table shows validation numbers only")
    row = {
        "variant": variant.key,
        "row": variant.row,
        "model": results.get("model", recipe["model"]["name"]),
        "config": variant.config,
        "marks": variant.marks,
        "status": "done",
        "test_accuracy": test.get("accuracy"),
        "test_mean_class_accuracy": test.get("mean_class_accuracy"),
        "test_macro_f1": test.get("macro_f1"),
        "test_samples": test.get("num_samples"),
        "val_accuracy": val.get("accuracy"),
        "val_mean_class_accuracy": val.get("mean_class_accuracy"),
        "best_epoch": (results.get("selection") or {}).get("best_epoch"),
        "epochs_run": results.get("epochs_run"),
        "train_seconds": results.get("wall_time_s"),
        "landmark_cache": {k: v for k, v in (results.get("landmark_cache") or {}).items() if k != "files"} or None,
        "params": (results.get("params") or {}).get("total"),
        "checkpoint": results.get("best_model", str(run_dir / "best")),
    }
    (vdir / RESULT_FILE).write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    return row


#: run_ablation's keywords before :class:`RecipeRequest` and :class:`RunOutput` grouped them.
_LEGACY_KEYWORDS = ("data", "overrides", "log", "command")


def run_ablation(
    recipe: str | Mapping[str, Any] | RecipeRequest,
    variants: str | Sequence[str],
    out_dir: str | Path,
    *,
    train_fn: TrainFn | None = None,
    output: RunOutput | None = None,
    **legacy: Any,
) -> dict[str, Any]:
    """Train and test each variant, then write ``ablation.json`` and ``ablation.md``; returns the record.

    ``recipe`` is a recipe name, file or dict, or a :class:`RecipeRequest` with overrides and a data root
    applied as ``poster-fer train`` applies them. Test numbers are the training run's own final test evaluation
    of its best-validation checkpoint (``results.json``), so nothing is evaluated twice; ``poster-fer eval`` on
    ``OUT/<variant>/run/best`` gives the full report of any row. ``output``: the command line recorded and where
    lines go (``echo``). ``train_fn`` replaces training (tests). The earlier keywords ``data``, ``overrides``,
    ``log`` and ``command`` still work, with a DeprecationWarning.
    """
    request, output = _ablation_inputs(recipe, output, legacy)
    chosen = parse_variants(variants)
    base = request.load().to_dict()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tr = base["train"]
    if tr["landmark_cache"] and not tr["landmark_cache_dir"]:
        # the landmark variants share one frozen MobileFaceNet pass over the data: compute it once, on disk
        tr["landmark_cache_dir"] = str(out / "landmark_cache")
    rows = []
    for v in chosen:
        rows.append(_run_variant(v, variant_recipe(base, v), out / v.key, train_fn or _default_train,
                                 output.command, output.echo))
        record = _write_tables(out, base, rows, output.command)  # the table stays current after every variant
    return record


def _ablation_inputs(recipe: str | Mapping[str, Any] | RecipeRequest, output: RunOutput | None,
                     legacy: dict[str, Any]) -> tuple[RecipeRequest, RunOutput]:
    """The recipe request and output of a run_ablation call, from either call form."""
    unknown = sorted(set(legacy) - set(_LEGACY_KEYWORDS))
    if unknown:
        raise TypeError(f"run_ablation() got unexpected keyword argument(s) {unknown}")
    if legacy:
        warn_deprecated(f"run_ablation(..., {', '.join(f'{k}=' for k in legacy)}) is deprecated: pass "
                        "RecipeRequest(recipe, overrides, data_root) and output=RunOutput(command=..., echo=...)")
    request = recipe if isinstance(recipe, RecipeRequest) else RecipeRequest(
        recipe if isinstance(recipe, str) else dict(recipe), dict(legacy.get("overrides") or {}), legacy.get("data"))
    output = output or RunOutput()
    if "log" in legacy or "command" in legacy:
        output = replace(output, echo=legacy.get("log", output.echo), command=legacy.get("command", output.command))
    return request, output


def _write_tables(out: Path, recipe: Mapping[str, Any], rows: list[dict[str, Any]], command: str | None
                  ) -> dict[str, Any]:
    record = {
        "recipe": recipe["name"],
        "recipe_source": recipe["source"],
        "data": {"kind": recipe["data"]["kind"], "root": recipe["data"]["root"],
                 "options": recipe["data"]["options"]},
        "model": recipe["model"]["name"],
        "model_config": recipe["model"]["config"],
        "epochs": recipe["train"]["epochs"],
        "command": command,
        "git_revision": git_revision(),
        "rows": rows,
    }
    (out / "ablation.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / "ablation.md").write_text(render_ablation_markdown(record), encoding="utf-8")
    return record


def pct(x: Any) -> str:
    """A fraction as a percentage with two decimals; ``—`` when undefined."""
    return "—" if x is None else f"{100 * float(x):.2f}"


def render_ablation_markdown(record: Mapping[str, Any]) -> str:
    """Table 4 layout: row letter, the four check marks, accuracy and mean accuracy (plus val acc and time)."""
    lines = ["# Ablation (POSTER paper, Table 4 layout)", ""]
    lines.append(f"Recipe `{record.get('recipe')}` on {record['data']['kind']} ({record['data']['root']}), "
                 f"model `{record.get('model')}`, {record.get('epochs')} epoch(s) per variant; test split "
                 "accuracy, mean class accuracy; validation accuracy of the selected checkpoint. Train time is "
                 "the run's wall time, including computing or loading the frozen landmark tokens where cached.")
    if record.get("command"):
        lines += ["", f"Command: `{record['command']}`"]
    if record.get("git_revision"):
        lines += ["", f"Code revision: `{record['git_revision']}`"]
    lines += ["", "| | Landmark | Image | Cross-fusion | Pyramid | Acc. (%) | Mean acc. (%) | Val acc. (%) "
              "| Train time | Params |",
              "| :--- | :---: | :---: | :---: | :---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows_in_order(record["rows"]):
        marks = r["marks"]
        tick = ["✓" if marks[k] else "" for k in ("landmark", "image", "cross_fusion", "pyramid")]
        secs = r.get("train_seconds")
        when = "—" if secs is None else f"{secs / 60:.1f} min"
        lines.append(f"| ({r['row']}) {r['variant']} | " + " | ".join(tick) + f" | {pct(r['test_accuracy'])} | "
                     f"{pct(r['test_mean_class_accuracy'])} | {pct(r.get('val_accuracy'))} | {when} | "
                     f"{r.get('params', 0) / 1e6:.2f}M |")
    lines.append("")
    return "\n".join(lines)


def rows_in_order(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(rows, key=lambda r: r["row"])
