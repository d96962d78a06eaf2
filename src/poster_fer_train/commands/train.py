"""``poster-fer train --recipe NAME|FILE [--data PATH] [--out RUN_DIR] [--resume [PATH]] [key=value ...]``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from poster_fer.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model from a recipe (configs/NAME.yaml or a YAML file)",
        description="Train from a recipe: data, model, loss, optimiser, schedule. Writes RUN_DIR/last.pt every epoch "
        "(resumable), RUN_DIR/best/ (the best model on the validation split, poster-fer format), log.jsonl, "
        "results.json (test split evaluated once, with the best model) and curves.png. Multi-GPU: "
        "torchrun --nproc_per_node N -m poster_fer_apps.cli train ... (batch_size is the global batch).")
    p.add_argument("--recipe", help="recipe name in configs/ or a YAML file (not needed with --resume)")
    p.add_argument("--list", action="store_true", help="list the named recipes")
    p.add_argument("--data", help="dataset root (overrides data.root)")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="start from trained weights: a shipped name (poster_v1_mfn64_image.ferplus; see "
                        "poster-fer info --list) or a saved model; the head is re-made for the dataset's classes "
                        "(classes with the same name keep their rows). Sets model.init")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="train exactly N epochs, whatever the machine's speed: sets train.epochs=N and turns off the "
                   "time budget and the epoch plan made from it (train.time_budget_min, train.epochs_from_budget), "
                   "so the same command repeats the same run (the finetune recipe otherwise fits its epochs to a "
                   "10-minute budget on this machine)")
    p.add_argument("--out", help="run directory (default runs/<recipe>-<time>)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                   help="continue from RUN_DIR/last.pt (the --out directory, or PATH: a run dir or checkpoint)")
    p.add_argument("--results-out", metavar="FILE", help="also copy results.json here (e.g. benchmarks/results/X.json)")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides with YAML values: train.epochs=2 optimizer.lr=1e-4 (a bare key works when "
                   "one section has it: epochs=2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from poster_fer_apps.commands.common import parse_overrides
    from poster_fer_train.commands import require_training_extra

    require_training_extra("train")
    from poster_fer_train import NonFiniteLossError, RecipeError, RunOutput, fit, list_recipes, load_recipe

    if args.list:
        for name in list_recipes():
            print(name)
        return 0
    import yaml

    overrides = parse_overrides(args.overrides)  # a bad pair is a UserError naming it
    if args.init:
        overrides["model.init"] = args.init
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {args.epochs}")
        overrides.update({"train.epochs": args.epochs, "train.epochs_from_budget": False,
                          "train.time_budget_min": None})
    if not args.recipe and not args.resume:
        raise UserError("give --recipe NAME|FILE (or --resume RUN_DIR); --list shows the recipes")
    try:
        if args.print_recipe:
            recipe = load_recipe(args.recipe, overrides, args.data)
            print(yaml.safe_dump(recipe, sort_keys=False))
            return 0
        resume = args.resume
        if resume is True and not args.out:
            raise UserError("--resume without a path needs --out RUN_DIR")
        command = "poster-fer " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if _is_cli() else
                                                                  ["train", *_argv(args)]))
        fit(args.recipe, args.out, resume=resume, overrides=overrides, data_root=args.data,
            output=RunOutput(command=command, results_out=args.results_out))
    except RecipeError as e:
        raise UserError(str(e)) from None
    except NonFiniteLossError as e:
        print(f"poster-fer train: stopped: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    return 0


def _is_cli() -> bool:
    """True when this process is `poster-fer ...` or `python -m poster_fer_apps.cli ...` (or the deprecated
    `poster_fer.cli`; not, say, `python -m pytest`, whose argv would otherwise be recorded as the training
    command)."""
    if not sys.argv:
        return False
    prog = Path(sys.argv[0])
    return prog.name == "poster-fer" or (prog.name in ("cli.py", "__main__.py")
                                         and prog.parent.name in ("poster_fer_apps", "poster_fer"))


def _argv(args: argparse.Namespace) -> list[str]:
    """Reconstruct the command line from parsed arguments (for in-process calls such as tests)."""
    out: list[str] = []
    for flag, value in (("--recipe", args.recipe), ("--init", args.init), ("--data", args.data), ("--out", args.out),
                        ("--epochs", args.epochs), ("--results-out", args.results_out)):
        if value:
            out += [flag, str(value)]
    if args.resume:
        out += ["--resume"] + ([] if args.resume is True else [str(args.resume)])
    return out + list(args.overrides)
