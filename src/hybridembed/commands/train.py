"""`hybridembed train RECIPE`: validate the data, then train as the recipe says (every stage of it); `--dry-run` checks a recipe end to end in 2 steps."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a recipe",
        description="Validate every record of every dataset, then train and save a sentence-transformers model folder.",
    )
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--max-steps", type=int, help="override training.max_steps")
    parser.add_argument("--output-dir", help="override training.output_dir")
    parser.add_argument("--seed", type=int, help="override training.seed")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe key, dotted, value read as YAML (repeatable): --set training.learning_rate=2e-5 "
        "--set model.max_seq_length=256; a training.* key applies to every stage",
    )
    parser.add_argument("--resume", nargs="?", const=True, default=None, help="resume from the last checkpoint in output_dir (or from the given checkpoint)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the recipe, build everything and train 2 steps per stage (stand-in data for files that are not here)",
    )
    parser.add_argument("--tiny", action="store_true", help="with --dry-run: a tiny random backbone of the same family stands in")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridembed.recipe import load_recipe, parse_assignments
    from hybridembed.training.stages import run_recipe

    overrides = parse_assignments(args.set)
    named = {
        "training.max_steps": args.max_steps,
        "training.output_dir": args.output_dir,
        "training.seed": args.seed,
        "training.resume": args.resume,
    }
    overrides |= {key: value for key, value in named.items() if value is not None}  # the named flags win over --set
    recipe = load_recipe(args.recipe, overrides)
    if args.dry_run or args.tiny:
        return _dry_run(recipe, args)
    # With --set the folder's recipe.yaml is the recipe as run, not the file as written.
    text = None if args.set else Path(args.recipe).read_text(encoding="utf-8")
    out = run_recipe(recipe, recipe_text=text)
    print(f"model saved to {out}")
    return 0


def _dry_run(recipe, args: argparse.Namespace) -> int:
    import tempfile

    from hybridembed.training.dryrun import dry_run_recipe
    from hybridembed.training.stages import run_recipe

    with tempfile.TemporaryDirectory(prefix="hybridembed-dry-run-") as tmp:
        workdir = Path(args.output_dir) if args.output_dir else Path(tmp)
        out = run_recipe(dry_run_recipe(recipe, workdir, tiny=args.tiny))
        stages = len(recipe.stages or []) or 1
        print(f"dry run ok: {args.recipe}: {stages} stage(s), {out} ({'kept' if args.output_dir else 'removed'})")
    return 0
