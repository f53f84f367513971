"""`hybridembed data …`: check datasets (the same validation `train` runs before its first step) and import LLM instruction data as pairs."""

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
    _register_from_instructions(children)


def _register_from_instructions(children: argparse._SubParsersAction) -> None:
    from hybridembed.data.pair_filters import LANGUAGE_SCRIPTS, FilterSettings

    d = FilterSettings()
    conv = children.add_parser(
        "from-instructions",
        help="turn LLM instruction data (alpaca, ShareGPT, OpenAI chat) into (query, positive) pairs",
        description="Read alpaca / ShareGPT / OpenAI-chat .jsonl or .json files, filter the pairs (rules in docs/data.md) "
        "and write {query, positive} jsonl; prints how many pairs each filter removed.",
    )
    conv.add_argument("inputs", nargs="+", metavar="IN", help="input file(s)")
    conv.add_argument("--out", required=True, help="output .jsonl (our retrieval format)")
    conv.add_argument("--format", default="auto", choices=["auto", "alpaca", "sharegpt", "openai"])
    conv.add_argument("--turns", default="first", choices=["first", "all"], help="exchanges kept per conversation (default: first)")
    conv.add_argument("--min-query-chars", type=int, default=d.min_query_chars)
    conv.add_argument("--max-query-chars", type=int, default=d.max_query_chars)
    conv.add_argument("--min-response-chars", type=int, default=d.min_response_chars)
    conv.add_argument("--max-response-chars", type=int, default=d.max_response_chars)
    conv.add_argument("--keep-refusals", action="store_true", help="do not drop refusals / AI disclaimers")
    conv.add_argument(
        "--template-min-count", type=int, default=d.template_min_count, help="a reply shared by this many queries is templated (0: off)"
    )
    conv.add_argument(
        "--language", choices=sorted(LANGUAGE_SCRIPTS), help="keep pairs written in this language's script (a Latin-script code keeps any Latin script)"
    )
    conv.add_argument("--near-threshold", type=float, default=d.near_threshold, help="MinHash Jaccard for near duplicates")
    conv.add_argument("--no-near-dedup", action="store_true", help="keep near duplicates (exact ones are still removed)")
    conv.set_defaults(func=run_from_instructions)


def run_from_instructions(args: argparse.Namespace) -> int:
    import json

    from hybridembed.data.instructions import InstructionFormat, read_instruction_pairs
    from hybridembed.data.pair_filters import FilterSettings, filter_pairs
    from hybridembed.errors import DataError, HybridembedError

    if not args.no_near_dedup and not 0 < args.near_threshold <= 1:
        raise HybridembedError(f"--near-threshold {args.near_threshold}: must be in (0, 1]")
    pairs, problems, records = [], [], 0
    for path in args.inputs:
        try:
            found, count = read_instruction_pairs(path, InstructionFormat(args.format), args.turns)
        except DataError as err:
            problems.extend(err.problems)
            continue
        pairs.extend(found)
        records += count
    if problems:
        raise DataError(problems, summary=f"{len(problems)} invalid record(s); nothing was written")
    settings = FilterSettings(
        min_query_chars=args.min_query_chars, max_query_chars=args.max_query_chars,
        min_response_chars=args.min_response_chars, max_response_chars=args.max_response_chars,
        drop_refusals=not args.keep_refusals, template_min_count=args.template_min_count, language=args.language,
        near_threshold=None if args.no_near_dedup else args.near_threshold,
    )  # fmt: skip
    kept, report = filter_pairs(pairs, settings)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for pair in kept:
            f.write(json.dumps({"query": pair.query, "positive": pair.positive}, ensure_ascii=False) + "\n")
    print(f"read {records} records ({len(pairs)} pairs) from {len(args.inputs)} file(s)")
    print("removed by filter:")
    print("\n".join(report.lines()))
    print(f"wrote {report.kept} pairs to {out}")
    return 0


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
