"""`hybridembed tokenizer extend`: add a new language's vocabulary to a backbone's tokenizer and save the grown backbone folder (docs/backbones.md)."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from hybridembed.errors import HybridembedError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="tokenizer tools (extend a backbone's vocabulary)", description="Tokenizer tools.")
    actions = parser.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    extend = actions.add_parser(
        "extend",
        help="train a vocabulary on a corpus and add the tokens the backbone lacks",
        description="Train a WordPiece or BPE (as the backbone's tokenizer) on CORPUS, append the tokens the backbone lacks "
        "(old ids and ASCII/English tokenization unchanged), grow the embedding matrix with each new row the mean of the "
        "token's pieces under the old tokenizer, and save a backbone folder every command accepts. Prints and saves "
        "(tokenizer_extension.json) the fertility before and after on a held-apart part of the corpus.",
    )
    extend.add_argument("--backbone", required=True, help="HF folder or hub id, sentence-transformers folder, or bundled:all-MiniLM-L6-v2")
    extend.add_argument(
        "--corpus",
        required=True,
        action="append",
        metavar="PATH[:FIELDS]",
        help=".txt file (one text per line), or a data file with its text fields: names, or 0-based columns of a headerless "
        ".tsv/.csv, e.g. train.tsv:0,1 (default: every text field of its detected format); repeat for several files",
    )
    extend.add_argument("--out", required=True, help="output backbone folder")
    extend.add_argument("--vocab-size", type=int, default=8000, help="size of the vocabulary trained on the corpus (default 8000)")
    extend.add_argument("--held-out", type=float, default=0.1, help="share of the corpus held apart to measure fertility (default 0.1)")
    extend.add_argument("--seed", type=int, default=0, help="seed of the held-apart split (default 0)")
    extend.add_argument("--allow-ascii", action="store_true", help="also add tokens made only of ASCII characters (changes English tokenization)")
    extend.set_defaults(func=run_extend)


def run_extend(args: argparse.Namespace) -> int:
    from hybridembed.modeling.tokenizer_extend import REPORT_FILE, extend_backbone, format_report

    if args.vocab_size < 1:
        raise HybridembedError(f"--vocab-size {args.vocab_size}: must be positive")
    if not 0 <= args.held_out < 1:
        raise HybridembedError(f"--held-out {args.held_out}: must be in [0, 1)")
    texts = read_corpus(args.corpus)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise HybridembedError(f"{out}: output folder exists and is not empty")
    report = extend_backbone(args.backbone, texts, out, args.vocab_size, args.held_out, args.seed, args.allow_ascii)
    print(format_report(report))
    print(f"wrote the extended backbone to {out} (report: {out / REPORT_FILE})")
    return 0


def parse_corpus_source(value: str) -> tuple[Path, list[str | int] | None]:
    """`PATH` or `PATH:FIELDS` (comma-separated field names, or 0-based columns of a headerless file), as an mlm stage's `texts:`."""
    head, sep, tail = value.rpartition(":")
    if sep and head and re.fullmatch(r"[\w,]+", tail) and not Path(value).exists():
        return Path(head), [int(f) if f.isdigit() else f for f in tail.split(",") if f]
    return Path(value), None


def read_corpus(sources: list[str | Path]) -> list[str]:
    """The texts of every source: a .txt file's non-blank lines (stripped), or a data file's text fields (`PATH:FIELDS`, default every text field of its format).

    Read by the shared reader (.txt) and the mlm stage's reader (data files), so a missing, empty or
    undecodable source is the same `file[:line]: problem` error as everywhere else.
    """
    from hybridembed.data.readers import iter_texts
    from hybridembed.recipe import TextsConfig
    from hybridembed.training.mlm import read_texts

    texts: list[str] = []
    for source in sources:
        path, fields = parse_corpus_source(str(source))
        if path.suffix.lower() == ".txt" and fields is None:
            stream = iter_texts(path)
            texts += [item.text.strip() for item in stream]
            if stream.blank_lines:
                logger.info("%s: %d blank line(s) skipped", path, len(stream.blank_lines))
        else:
            header = not (fields and all(isinstance(f, int) for f in fields))
            texts += read_texts(TextsConfig(path=str(path), text_fields=fields, header=header))
    return texts
