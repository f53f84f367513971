"""`hybridembed eval MODEL --suite SUITE.yaml`: run a suite, write results.json/.md/.png; `eval compare A B` (its own parser): deltas."""

from __future__ import annotations

import argparse
import sys

from hybridembed.commands import add_trust_remote_code
from hybridembed.errors import HybridembedError
from hybridembed.evaluation.config import EVAL_BATCH_SIZE


def _parse_dims(text: str) -> list[int]:
    try:
        dims = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dims expects comma-separated integers, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"--dims expects positive integers, got {text!r}")
    return dims


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on a suite of local / MTEB tasks (or: eval compare A.json B.json)",
        description=(
            "Evaluate MODEL (a model folder, a hub id or bundled:all-MiniLM-L6-v2) on every task of a suite with "
            "mteb's metrics; write results.json, results.md and a dims plot into --out. "
            "`hybridembed eval compare A.json B.json` prints per-task deltas of two runs "
            "(see `hybridembed eval compare --help`)."
        ),
        usage="%(prog)s MODEL --suite SUITE --out OUT [options]\n       %(prog)s compare A.json B.json",
    )
    parser.add_argument("model", help="model folder, hub id, or bundled:all-MiniLM-L6-v2")
    parser.add_argument("--suite", required=True, help="suite YAML (see suites/ and docs/evaluation.md)")
    parser.add_argument("--dims", type=_parse_dims, help="Matryoshka dims to score, e.g. 384,256,64 (encodes once)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=EVAL_BATCH_SIZE,
        help=f"encoding batch size (default {EVAL_BATCH_SIZE}: less padding than 64 on CPU, benchmarks/encode_speed.py)",
    )
    parser.add_argument("--out", required=True, help="output folder for results.json, results.md, results_dims.png")
    parser.add_argument("--device", help="torch device (default: sentence-transformers' choice)")
    add_trust_remote_code(parser)
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)

    compare = parser.add_word_command(
        "compare",
        description=("Print A, B and B - A (main score x100) per task and dim of two `hybridembed eval` runs, and for the overall average."),
    )
    compare.add_argument("a", metavar="A", help="the baseline: a results.json, or the --out folder holding it")
    compare.add_argument("b", metavar="B", help="the run compared with it: a results.json, or its folder")
    compare.set_defaults(func=run_compare)


def run(args: argparse.Namespace) -> int:
    if args.batch_size <= 0:
        raise HybridembedError("--batch-size must be positive")

    from hybridembed.evaluation import load_suite
    from hybridembed.evaluation.report import render_markdown, write_report
    from hybridembed.evaluation.runner import run_suite
    from hybridembed.modeling.model import load_model

    suite = load_suite(args.suite)  # validate before loading the model
    try:
        model = load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise HybridembedError(f"cannot load model {args.model!r}: {str(err).splitlines()[0]}") from None
    results = run_suite(
        model,
        suite,
        dims=args.dims,
        batch_size=args.batch_size,
        model_name=args.model,
        show_progress=not args.no_progress,
    )
    paths = write_report(results, args.out, plot=not args.no_plot)
    print(render_markdown(results))
    for note in results["skipped"]:
        print(f"not evaluated: {note}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from hybridembed.evaluation.report import compare, load_results, render_compare

    a, b = load_results(args.a), load_results(args.b)
    rows = compare(a, b)
    if not rows:
        raise HybridembedError("the two results files share no task")
    sys.stdout.write(render_compare(rows, f"{args.a} ({a.get('model')})", f"{args.b} ({b.get('model')})"))
    return 0
