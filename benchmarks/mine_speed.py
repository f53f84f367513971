"""Speed and memory of `hybridembed mine`: queries/s and peak RSS, exact vs approximate faiss indexes, over a corpus of real text kept on disk.

The corpus is every text found in ../shared/data (jsonl/json string fields, csv/tsv/txt fields
that read as text; deduplicated), sampled down to --max-corpus with a fixed seed, always keeping
the positives of the mined rows; the rows are the queries of
zh/retrieval/bge_finetune_data.jsonl (FlagEmbedding format). Each step runs in a fresh
subprocess so its peak RSS (`ru_maxrss`) is its own: first the text store of *all* the distinct
texts (against reading them into a list), then the sampled corpus's text store and embedding
cache, then one mining run per index kind reusing both. One run, printed as Markdown:

    nice python benchmarks/mine_speed.py --max-corpus 3000 --queries 300   # the run quoted in docs/mining.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
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


def rss_mb() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def store_worker(args: argparse.Namespace) -> dict:
    """All the distinct texts to a text store (or, with --worker list, into a list as `read_corpus` does); time and peak RSS."""
    from hybridembed.mining.corpus import open_corpus
    from hybridembed.mining.offline import read_corpus

    work = Path(args.work)
    before = rss_mb()
    started = time.perf_counter()
    if args.worker == "list":
        count = len(read_corpus(work / "all.txt"))
    else:
        store = open_corpus(work / "all.txt", cache_dir=work / "store-cache")
        count, disk = len(store), sum(f.stat().st_size for f in store.path.iterdir())
    result = {
        "step": args.worker,
        "texts": count,
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "over_start_mb": peak_rss_mb() - before,
    }
    return {**result, "disk_mb": disk / 2**20} if args.worker == "store" else result


def worker(args: argparse.Namespace) -> dict:
    """One index kind in this process: end-to-end mining, then a search-only timing and the overlap with the exact ranking."""
    import numpy as np

    from hybridembed.mining.cache import embed_corpus
    from hybridembed.mining.corpus import open_corpus
    from hybridembed.mining.index import Searcher
    from hybridembed.mining.offline import MiningOptions, load_queries, mine_hard_negatives
    from hybridembed.modeling.model import load_model

    work = Path(args.work)
    model = load_model(args.model)
    model.max_seq_length = args.max_seq_length
    after_model = rss_mb()
    corpus = work / "corpus.txt"
    if args.worker == "embed":  # fill the text store and the cache once, so the index runs below measure mining alone
        started = time.perf_counter()
        store = open_corpus(corpus, cache_dir=work / "cache")
        embed_corpus(model, store, cache_dir=work / "cache", progress=False)
        seconds = time.perf_counter() - started
        return {"index": "(corpus embedding)", "embed_texts_per_s": len(store) / seconds, "total_s": seconds,
                "peak_rss_mb": peak_rss_mb(), "over_model_mb": peak_rss_mb() - after_model}  # fmt: skip
    dataset = load_queries(work / "rows.jsonl")
    options = MiningOptions(rank_range=(args.lo, args.hi), num_negatives=7, index=args.worker, batch_size=64)
    started = time.perf_counter()
    report = mine_hard_negatives(model, dataset, work / f"mined-{args.worker}.jsonl", corpus, options, cache_dir=work / "cache", progress=False)
    total = time.perf_counter() - started
    peak = peak_rss_mb()  # of the mining run itself, before the search-only timing builds a second index
    # Search alone (queries already encoded; index built anew and timed separately).
    cached = embed_corpus(model, open_corpus(corpus, cache_dir=work / "cache"), cache_dir=work / "cache", progress=False)
    queries = model.encode([r["query"] for r in dataset.rows], normalize_embeddings=True, batch_size=64)
    t0 = time.perf_counter()
    searcher = Searcher(cached.vectors, args.worker)
    t1 = time.perf_counter()
    _, ids = searcher.search(queries, args.hi)
    t2 = time.perf_counter()
    import faiss

    # What the index holds in RAM (faiss's serialized form: vectors or codes, ids, centroids, graph); flat holds none.
    index_kb = len(faiss.serialize_index(searcher.index)) / 1024 if searcher.index is not None else 0.0
    exact_path = work / "exact_ids.npy"
    if args.worker == "flat":
        np.save(exact_path, ids)
    exact = np.load(exact_path)
    recall = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact)]))
    return {
        "index": args.worker,
        "corpus": report.corpus_size,
        "queries": report.rows,
        "reused": report.cache_hit and report.text_store_reused,
        "build_s": t1 - t0,
        "search_qps": len(queries) / (t2 - t1),
        "mine_qps": report.queries_per_second,
        "total_s": total,
        "recall": recall,
        "index_kb": index_kb,
        "peak_rss_mb": peak,
        "over_model_mb": peak - after_model,
    }


def prepare(args: argparse.Namespace) -> dict:
    """Write all.txt (every one-line distinct text), corpus.txt (the sample) and rows.jsonl into the work folder."""
    import numpy as np

    work = Path(args.work)
    rows = [json.loads(line) for line in ROWS.open(encoding="utf-8")][: args.queries]
    one_line = [t for t in collect_texts(SHARED) if "\n" not in t and "\r" not in t]  # a text per line of a .txt corpus
    positives = list(dict.fromkeys(p for r in rows for p in r["pos"]))
    keep = set(positives)
    rest = [t for t in one_line if t not in keep]
    picked = np.random.default_rng(0).choice(len(rest), size=max(0, min(len(rest), args.max_corpus - len(positives))), replace=False)
    corpus = positives + [rest[i] for i in sorted(picked)]
    (work / "all.txt").write_text("\n".join(one_line) + "\n", encoding="utf-8")
    (work / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    with open(work / "rows.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"query": r["query"], "positives": r["pos"]}, ensure_ascii=False) + "\n")
    return {"all": len(one_line), "all_mb": (work / "all.txt").stat().st_size / 2**20, "corpus": len(corpus), "rows": len(rows)}


def run_worker(kind: str, work: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--work", str(work), "--model", args.model,
               "--lo", str(args.rank_range[0]), "--hi", str(args.rank_range[1]), "--max-seq-length", str(args.max_seq_length),
               "--max-corpus", str(args.max_corpus), "--queries", str(args.queries)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--max-corpus", type=int, default=3000, help="corpus size after sampling (default 3000)")
    parser.add_argument("--queries", type=int, default=300, help="rows mined (default 300)")
    parser.add_argument("--range", nargs=2, type=int, default=[50, 100], dest="rank_range")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--indexes", nargs="+", default=["flat", "ivf", "hnsw", "ivfpq"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--lo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hi", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = {"store": store_worker, "list": store_worker, "prepare": prepare}.get(args.worker, worker)(args)
        print("RESULT " + json.dumps(result))
        return
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the benchmark reads the shared data beside the checkout")
    # The corpus is gathered in a subprocess too: ru_maxrss carries across fork and exec, so every
    # worker would otherwise report at least the peak of a parent that held all the texts.
    with tempfile.TemporaryDirectory(prefix="mine-speed-") as tmp:
        work = Path(tmp)
        facts = run_worker("prepare", work, args)
        stores = [run_worker(kind, work, args) for kind in ("list", "store")]
        results = [run_worker(kind, work, args) for kind in ["embed", *args.indexes]]
    print(f"\nAll {facts['all']} one-line distinct texts of ../shared/data ({facts['all_mb']:.0f} MB of UTF-8), read once:\n")
    print("| corpus read into | texts | time (s) | peak RSS (MB) | peak RSS over the process start (MB) |")
    print("|---|---|---|---|---|")
    for r, name in zip(stores, ("a list (`read_corpus`)", f"the text store ({stores[1]['disk_mb']:.0f} MB on disk)")):
        print(f"| {name} | {r['texts']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['over_start_mb']:.0f} |")
    print(f"\nMining corpus: {facts['corpus']} texts sampled from them (the rows' positives kept); "
          f"{facts['rows']} queries (zh bge_finetune_data); ranks {args.rank_range[0]}-{args.rank_range[1]}; "
          f"model {args.model}, max_seq_length {args.max_seq_length}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch threads default.\n")  # fmt: skip
    embed = results.pop(0)
    print(f"Corpus to its text store and embedding cache (once): {embed['embed_texts_per_s']:.0f} texts/s ({embed['total_s']:.0f} s), "
          f"peak RSS {embed['peak_rss_mb']:.0f} MB ({embed['over_model_mb']:.0f} MB over the loaded model).\n")  # fmt: skip
    print(
        f"| index | index build (s) | search only (queries/s) | mine end-to-end (queries/s) | top-{args.rank_range[1]} overlap with exact | index in RAM (KB) | peak RSS (MB) | peak RSS over model load (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        assert r["reused"], "the index runs must reuse the text store and the embedding cache"
        print(
            f"| {r['index']} | {r['build_s']:.2f} | {r['search_qps']:.0f} | {r['mine_qps']:.1f} | {r['recall']:.3f} | {r['index_kb']:.0f} | {r['peak_rss_mb']:.0f} | {r['over_model_mb']:.0f} |"
        )
    print("\nmine end-to-end = encode the queries + search + sample + write; search only = faiss on pre-encoded queries;")
    print("index in RAM = faiss's serialized index; peak RSS (ru_maxrss) is the mining run's, before the search-only timing builds its own index.")


if __name__ == "__main__":
    main()
