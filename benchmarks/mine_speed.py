"""Speed and memory of `hybridembed mine`: queries/s and peak RSS, exact vs approximate faiss indexes, over a corpus of real text.

The corpus is every text found in ../shared/data (jsonl/json string fields, csv/tsv/txt fields
that read as text; deduplicated), sampled down to --max-corpus with a fixed seed, always keeping
the positives of the mined rows; the rows are the queries of
zh/retrieval/bge_finetune_data.jsonl (FlagEmbedding format). Each index kind runs in a fresh
subprocess so its peak RSS is its own; a first subprocess fills the embedding cache and the
index runs reuse it. One run, printed as a Markdown table:

    nice python benchmarks/mine_speed.py --max-corpus 6000 --queries 500   # the run quoted in docs/mining.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ROWS = SHARED / "zh" / "retrieval" / "bge_finetune_data.jsonl"
WORDY = re.compile(r"[A-Za-z\u4e00-\u9fff]")


def _texts_in(value, out: list[str]) -> None:
    if isinstance(value, str):
        if len(value.strip()) >= 8 and len(WORDY.findall(value)) >= 4:
            out.append(value.strip())
    elif isinstance(value, list):
        for item in value:
            _texts_in(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _texts_in(item, out)


def collect_texts(root: Path) -> list[str]:
    """Every text-looking field of every data file under `root` (README/SOURCE notes and arrow folders excluded)."""
    csv.field_size_limit(10**8)
    texts: list[str] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix == ".md" or any(p.endswith(".dataset") for p in path.parts):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            if path.suffix == ".jsonl":
                for line in f:
                    try:
                        _texts_in(json.loads(line), texts)
                    except json.JSONDecodeError:
                        continue
            elif path.suffix == ".json":
                try:
                    _texts_in(json.load(f), texts)
                except json.JSONDecodeError:
                    continue
            elif path.suffix in (".csv", ".tsv", ".txt"):
                reader = csv.reader(f, delimiter="," if path.suffix == ".csv" else "\t", quoting=csv.QUOTE_MINIMAL if path.suffix == ".csv" else csv.QUOTE_NONE)
                for fields in reader:
                    _texts_in(fields, texts)
    return list(dict.fromkeys(texts))


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """One index kind in this process: end-to-end mining, then a search-only timing and the overlap with the exact ranking."""
    import numpy as np

    from hybridembed.mining.cache import embed_corpus
    from hybridembed.mining.index import Searcher
    from hybridembed.mining.offline import MiningOptions, load_queries, mine_hard_negatives
    from hybridembed.model import load_model

    work = Path(args.work)
    model = load_model(args.model)
    model.max_seq_length = args.max_seq_length
    after_model = rss_mb("VmRSS")
    corpus = (work / "corpus.txt").read_text(encoding="utf-8").split("\n")
    if args.worker == "embed":  # fill the cache once, so the index runs below measure mining alone
        started = time.perf_counter()
        embed_corpus(model, corpus, cache_dir=work / "cache", progress=False)
        seconds = time.perf_counter() - started
        result = {"index": "(corpus embedding)", "embed_texts_per_s": len(corpus) / seconds, "total_s": seconds}
        print("RESULT " + json.dumps({**result, "peak_rss_mb": rss_mb("VmHWM"), "over_model_mb": rss_mb("VmHWM") - after_model}))
        return
    dataset = load_queries(work / "rows.jsonl")
    options = MiningOptions(rank_range=(args.lo, args.hi), num_negatives=7, index=args.worker, batch_size=64)
    started = time.perf_counter()
    report = mine_hard_negatives(model, dataset, work / f"mined-{args.worker}.jsonl", corpus, options, cache_dir=work / "cache", progress=False)
    total = time.perf_counter() - started
    # Search alone (queries already encoded; index built anew and timed separately).
    cached = embed_corpus(model, corpus, cache_dir=work / "cache", progress=False)
    queries = model.encode([r["query"] for r in dataset.rows], normalize_embeddings=True, batch_size=64)
    t0 = time.perf_counter()
    searcher = Searcher(cached.vectors, args.worker)
    t1 = time.perf_counter()
    _, ids = searcher.search(queries, args.hi)
    t2 = time.perf_counter()
    exact_path = work / "exact_ids.npy"
    if args.worker == "flat":
        np.save(exact_path, ids)
    exact = np.load(exact_path)
    recall = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact)]))
    result = {
        "index": args.worker,
        "corpus": report.corpus_size,
        "queries": report.rows,
        "cache_hit": report.cache_hit,
        "build_s": t1 - t0,
        "search_qps": len(queries) / (t2 - t1),
        "mine_qps": report.queries_per_second,
        "total_s": total,
        "recall": recall,
        "peak_rss_mb": rss_mb("VmHWM"),
        "over_model_mb": rss_mb("VmHWM") - after_model,
    }
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--max-corpus", type=int, default=6000, help="corpus size after sampling (default 6000)")
    parser.add_argument("--queries", type=int, default=500, help="rows mined (default 500)")
    parser.add_argument("--range", nargs=2, type=int, default=[50, 100], dest="rank_range")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--indexes", nargs="+", default=["flat", "ivf", "hnsw"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--lo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hi", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import numpy as np

    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the benchmark reads the shared data beside the checkout")
    rows = [json.loads(line) for line in ROWS.open(encoding="utf-8")][: args.queries]
    everything = collect_texts(SHARED)
    positives = list(dict.fromkeys(p for r in rows for p in r["pos"]))
    keep = set(positives)
    rest = [t for t in everything if t not in keep and "\n" not in t]
    picked = np.random.default_rng(0).choice(len(rest), size=max(0, min(len(rest), args.max_corpus - len(positives))), replace=False)
    corpus = positives + [rest[i] for i in sorted(picked)]
    with tempfile.TemporaryDirectory(prefix="mine-speed-") as tmp:
        work = Path(tmp)
        (work / "corpus.txt").write_text("\n".join(corpus), encoding="utf-8")
        with open(work / "rows.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"query": r["query"], "positives": r["pos"]}, ensure_ascii=False) + "\n")
        results = []
        for kind in ["embed", *args.indexes]:
            command = [sys.executable, __file__, "--worker", kind, "--work", str(work), "--model", args.model,
                       "--lo", str(args.rank_range[0]), "--hi", str(args.rank_range[1]), "--max-seq-length", str(args.max_seq_length)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{kind} run failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(line[len("RESULT "):]))
    print(f"\nCorpus: {len(corpus)} texts sampled from {len(everything)} distinct texts in ../shared/data; "
          f"{len(rows)} queries (zh bge_finetune_data); ranks {args.rank_range[0]}-{args.rank_range[1]}; "
          f"model {args.model}, max_seq_length {args.max_seq_length}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch threads default.\n")  # fmt: skip
    embed = results.pop(0)
    print(f"Corpus embedding into the memmap cache (once): {embed['embed_texts_per_s']:.0f} texts/s ({embed['total_s']:.0f} s), "
          f"peak RSS {embed['peak_rss_mb']:.0f} MB ({embed['over_model_mb']:.0f} MB over the loaded model).\n")  # fmt: skip
    print(f"| index | index build (s) | search only (queries/s) | mine end-to-end (queries/s) | top-{args.rank_range[1]} overlap with exact | peak RSS (MB) | peak RSS over model load (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        assert r["cache_hit"], "the index runs must reuse the cache"
        print(f"| {r['index']} | {r['build_s']:.2f} | {r['search_qps']:.0f} | {r['mine_qps']:.1f} | {r['recall']:.3f} | {r['peak_rss_mb']:.0f} | {r['over_model_mb']:.0f} |")
    print("\nmine end-to-end = encode the queries + search + sample + write; search only = faiss on pre-encoded queries.")


if __name__ == "__main__":
    main()
