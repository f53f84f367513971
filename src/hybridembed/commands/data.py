"""`hybridembed data …`: check datasets (the same validation `train` runs before its first step)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="inspect and validate training data", description="Data tools.")
    children = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    check = children.add_parser(
        "check",
        help="validate a recipe's datasets or one data file",
        description="Print per-dataset counts; exit non-zero listing every bad record as file:line: field: problem.",
    )
    check.add_argument("target", help="a recipe YAML, or a data file/folder")
    check.add_argument("--task", help="task type of a single data file (unless its format carries it)")
    check.add_argument("--format", default="auto", help="data format of a single file (default: auto-detect)")
    check.add_argument("--no-header", action="store_true", help="csv/tsv file without a header row")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from hybridembed.data import load_datasets
    from hybridembed.recipe import DatasetConfig, load_recipe

    target = Path(args.target)
    if target.suffix.lower() in (".yaml", ".yml"):
        configs = load_recipe(target).datasets
    else:
        configs = [DatasetConfig(path=str(target), task=args.task, format=args.format, header=not args.no_header)]
        configs[0].name = target.stem
    datasets = load_datasets(configs)
    for dataset in datasets:
        print(dataset.summary())
    print(f"ok: {len(datasets)} dataset(s), {sum(len(d) for d in datasets)} rows")
    return 0
