"""`hybridembed mine`: mine hard negatives from a rank window with faiss and write our retrieval format with scores."""

from __future__ import annotations

import argparse
from pathlib import Path

from hybridembed.commands import add_trust_remote_code
from hybridembed.errors import HybridembedError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mine",
        help="mine hard negatives for retrieval data",
        description=(
            "Embed the queries and a corpus (default: every positive and negative of the data), rank the corpus for each "
            "query with faiss, and sample negatives from ranks FIRST..LAST (1-based, positives counted, never written). "
            "Writes {query, positives, negatives, negative_scores, negative_ranks, positive_scores} per line; see docs/mining.md."
        ),
    )
    parser.add_argument("--model", required=True, help="model folder, hub id, or bundled:all-MiniLM-L6-v2")
    add_trust_remote_code(parser)
    parser.add_argument("--data", required=True, help="retrieval rows in any supported format (ours, FlagEmbedding, Piccolo, ...)")
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", "hybridembed", "piccolo", "flagembedding", "sentence_transformers"],
        help="force the data format (default: detect)",
    )
    parser.add_argument("--corpus", help="candidate texts: .txt (one per line) or records with a text field")
    parser.add_argument("--corpus-field", default="text", help="field holding the text in --corpus records (default: text)")
    parser.add_argument("--range", nargs=2, type=int, default=[50, 100], metavar=("FIRST", "LAST"), help="rank window (default: 50 100)")
    parser.add_argument("--num-negatives", type=int, default=7, help="negatives per query (default: 7)")
    parser.add_argument("--sampling", choices=["random", "top"], default="random", help="random from the window, or its best (default: random)")
    parser.add_argument(
        "--index",
        choices=["flat", "ivf", "hnsw", "ivfpq"],
        default="flat",
        help="flat = exact inner product, streamed from disk (default); ivf/hnsw hold every vector in RAM; "
        "ivfpq holds PQ_M + 8 bytes per vector and re-scores its candidates exactly",
    )
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per query, ivf and ivfpq (default: 16)")
    parser.add_argument("--pq-m", type=int, help="ivfpq: one-byte codes per vector, a divisor of the dimension (default: the largest not above dim/8)")
    parser.add_argument("--margin", type=float, help="drop candidates scoring >= (weakest positive's score - MARGIN)")
    parser.add_argument("--max-ratio", type=float, help="drop candidates scoring >= MAX_RATIO x the weakest positive's score (e.g. 0.95)")
    parser.add_argument("--query-prefix", help="prepended to queries (default: the model's 'query' prompt, if any)")
    parser.add_argument("--passage-prefix", help="prepended to corpus texts (default: the model's 'document' prompt, if any)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    parser.add_argument("--max-seq-length", type=int, help="truncate inputs to this many tokens")
    parser.add_argument(
        "--cache-dir",
        help="embedding cache and corpus text stores (default: $HYBRIDEMBED_CACHE/embeddings or ~/.cache/hybridembed/embeddings)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output .jsonl")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its AVX2 probe is noise here

    from hybridembed.mining.corpus import open_corpus
    from hybridembed.mining.offline import MiningOptions, load_queries, mine_hard_negatives
    from hybridembed.modeling.model import load_model

    options = MiningOptions(
        rank_range=(args.range[0], args.range[1]),
        num_negatives=args.num_negatives,
        index=args.index,
        margin=args.margin,
        max_ratio=args.max_ratio,
        sampling=args.sampling,
        seed=args.seed,
        batch_size=args.batch_size,
        query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix,
        nprobe=args.nprobe,
        pq_m=args.pq_m,
    )
    options.check()
    if Path(args.out).resolve() == Path(args.data).resolve():
        raise HybridembedError(f"--out {args.out}: would overwrite --data; choose another file")
    dataset = load_queries(args.data, args.format)
    # Read (or find) the corpus's text store before the slow model load, so a bad corpus fails fast.
    corpus = open_corpus(args.corpus, args.corpus_field, args.cache_dir, progress=not args.no_progress) if args.corpus else None
    try:
        model = load_model(args.model, trust_remote_code=args.trust_remote_code)
    except OSError as err:
        raise HybridembedError(f"--model {args.model}: cannot load: {err}") from None
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    from hybridembed.mining.cache import model_fingerprint

    fingerprint = model_fingerprint(model, args.model)  # from the folder's files, not its weights
    report = mine_hard_negatives(model, dataset, args.out, corpus, options, args.cache_dir, progress=not args.no_progress, fingerprint=fingerprint)
    cache = "reused" if report.cache_hit else "built"
    print(f"wrote {report.rows} rows with {report.negatives_written} negatives (ranks {args.range[0]}-{args.range[1]}, {args.index} index) to {report.out}")
    texts = "from an earlier run" if report.text_store_reused else "new"
    print(
        f"corpus {report.corpus_size} texts (text store {texts}: {report.text_store}), embeddings cache {cache}: {report.cache_path}; "
        f"skipped {report.positives_in_window} positive(s)/query text(s) inside the window, {report.dropped_by_guard} by the guard; "
        f"{report.queries_per_second:.1f} queries/s"
    )
    for note in report.notes:
        print(f"note: {note}")
    return 0
