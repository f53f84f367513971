"""`hybridembed train RECIPE`: validate the data, then train as the recipe says."""

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
        "--resume", nargs="?", const=True, default=None, help="resume from the last checkpoint in output_dir (or from the given checkpoint)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridembed.recipe import load_recipe
    from hybridembed.train import run_training

    overrides = {
        "training.max_steps": args.max_steps,
        "training.output_dir": args.output_dir,
        "training.seed": args.seed,
        "training.resume": args.resume,
    }
    recipe = load_recipe(args.recipe, overrides)
    out = run_training(recipe, recipe_text=Path(args.recipe).read_text(encoding="utf-8"))
    print(f"model saved to {out}")
    return 0
