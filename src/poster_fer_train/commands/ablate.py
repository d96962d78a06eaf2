"""``poster-fer ablate --recipe NAME --variants ... --out DIR``: the paper's Table 4 under one recipe."""

from __future__ import annotations

import argparse

from poster_fer.errors import UserError
from poster_fer_apps.commands.common import command_line

DEFAULT_VARIANTS = "landmark_only,image_only,baseline,baseline_pyramid,baseline_crossfusion,poster"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="train and test the Table-4 variants of POSTER under one recipe",
        description="Train each variant (streams, cross-fusion, pyramid switched as in the paper's Table 4; "
        "everything else from the recipe) with `poster-fer train`, test it on the recipe's test split and "
        "write ablation.md / ablation.json. Finished variants are skipped on a rerun; an interrupted one "
        "resumes.")
    p.add_argument("--recipe", required=True, help="recipe name (configs/NAME.yaml) or YAML file")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated subset of {DEFAULT_VARIANTS} (default: all)")
    p.add_argument("--data", metavar="PATH", help="dataset root (overrides the recipe's data.root)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (one subfolder per variant)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides applied to every variant (train.epochs=2, optimizer.lr=1e-4, ...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from poster_fer_apps.commands.common import parse_overrides
    from poster_fer_train.commands import require_training_extra

    require_training_extra("ablate")
    from poster_fer_train import RecipeRequest, RunOutput
    from poster_fer_train.ablation import parse_variants, pct, run_ablation

    try:
        parse_variants(args.variants)
    except ValueError as e:
        raise UserError(str(e)) from None
    from poster_fer_train.recipe import RecipeError

    try:
        request = RecipeRequest(args.recipe, parse_overrides(args.overrides), args.data)
        output = RunOutput(command=command_line(args, "ablate", positional=("overrides",)),
                           echo=lambda m: print(f"ablate: {m}", file=sys.stderr))
        record = run_ablation(request, args.variants, args.out, output=output)
    except (RecipeError, ValueError) as e:  # bad recipe, variant or model family: one line, exit 2
        raise UserError(str(e)) from None
    for r in record["rows"]:
        print(f"({r['row']}) {r['variant']:<21} test acc {pct(r['test_accuracy'])}%  "
              f"mean acc {pct(r['test_mean_class_accuracy'])}%")
    print(f"-> {args.out}/ablation.md")
    return 0
