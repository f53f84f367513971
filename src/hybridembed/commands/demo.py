"""`hybridembed demo`: train the quickstart recipe, then print the evaluation before and after training."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_SUITE = "suites/quickstart.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train the quickstart recipe and print before/after scores",
        description="Fine-tune the recipe's backbone, evaluate base and trained model on a suite (STS-B dev by default), print the report.",
    )
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--suite", default=DEFAULT_SUITE)
    parser.add_argument("--max-steps", type=int, help="override training.max_steps")
    parser.add_argument("--output-dir", help="override training.output_dir")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybridembed.evaluation import load_suite, run_suite
    from hybridembed.modeling.model import load_model
    from hybridembed.recipe import load_recipe
    from hybridembed.training.stages import run_recipe

    named = {"training.max_steps": args.max_steps, "training.output_dir": args.output_dir}
    recipe = load_recipe(args.recipe, {key: value for key, value in named.items() if value is not None})
    suite = load_suite(args.suite)
    dims = recipe.model.matryoshka_dims
    base = run_suite(load_model(recipe.model.backbone, trust_remote_code=recipe.model.trust_remote_code), suite)
    out = run_recipe(recipe, recipe_text=Path(args.recipe).read_text(encoding="utf-8"))  # as `hybridembed train` does
    trained = run_suite(load_model(str(out), trust_remote_code=recipe.model.trust_remote_code), suite, dims=sorted(dims, reverse=True) if dims else None)
    print()
    print(f"Before/after on {args.suite} (main score: {', '.join(sorted({t['type'] for t in trained['tasks'].values()}))})")
    print("| task | base model | trained (full dim) | " + " | ".join(f"trained @{d}" for d in trained.dims[1:]) + " |")
    print("|---|---|---|" + "---|" * (len(trained.dims) - 1))
    for name in trained.tasks:
        scores = [trained.score(name, d) for d in trained.dims]
        print(f"| {name} | {base.score(name):.4f} | " + " | ".join(f"{s:.4f}" for s in scores) + " |")
    for note in suite.skipped:
        print(f"not evaluated: {note}")
    print(f"\ntrained model: {out}")
    return 0
