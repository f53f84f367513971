"""Peak memory and speed of loading + validation + 100 training steps as the number of pairs grows (10k → 10M), one fresh process per size.

    python benchmarks/data_scale.py --work runs/data-scale            # 10k, 100k, 1M, 10M
    python benchmarks/data_scale.py --work runs/data-scale --sizes 10000 100000

The pairs are generated from real sentences (the shipped STS-B subset in data/quickstart and,
when present, the English train files in ../shared/data), shuffled and recombined: query =
one sentence, positive = two others joined, one hard negative. For each size a child process
validates the file into the Arrow store (`first load`), trains a tiny random BERT for 100
steps on it through `hybridembed.train`, and reports its peak RSS (`ru_maxrss`); a second
child opens the same file again (`reuse`: the store, no validation). The last line reads
`rss_ratio_10M_vs_10k: X.XX rows_per_s_10M: N` (the ratio of the largest to the smallest size).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)


def sentences() -> list[str]:
    texts: list[str] = []
    files = [REPO / "data" / "quickstart" / "stsb_train.tsv", *sorted((REPO.parent / "shared" / "data" / "en").glob("*/train.tsv"))]
    for path in files:
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                texts += [cell for cell in row if len(cell.split()) >= 4]
    return sorted(set(texts))


def generate(path: Path, n: int, pool: list[str], seed: int = 0) -> None:
    """n jsonl pairs recombined from `pool`, written in blocks (the generator holds one block)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, 100_000):
            picks = rng.integers(0, len(pool), size=(min(100_000, n - start), 4))
            f.writelines(
                json.dumps({"query": pool[a], "positive": f"{pool[b]} {pool[c]}", "negatives": [pool[d]]}, ensure_ascii=False) + "\n"
                for a, b, c, d in picks.tolist()
            )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(args: argparse.Namespace) -> None:
    import hybridembed
    from hybridembed.data import load_dataset
    from hybridembed.recipe import DatasetConfig

    started = time.perf_counter()
    dataset = load_dataset(DatasetConfig(path=str(args.data), task="retrieval"))
    load_s = time.perf_counter() - started
    result = {"rows": len(dataset), "cache_hit": dataset.cache_hit, "load_s": load_s, "rss_after_load_mb": peak_rss_mb()}
    if args.train:
        recipe = {
            "model": {"backbone": str(args.backbone), "pooling": "mean", "max_seq_length": 48},
            "datasets": [{"path": str(args.data), "task": "retrieval", "num_negatives": 1}],
            "training": {"output_dir": str(args.out), "max_steps": 100, "batch_size": 32, "logging_steps": 50, "report_to": [], "warmup_steps": 0},
        }
        started = time.perf_counter()
        hybridembed.train(recipe)
        result["train_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def run_child(*extra: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *extra], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(extra)}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/data-scale"))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backbone", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from hybridembed.modeling.tiny import build_tiny_backbone

    args.work.mkdir(parents=True, exist_ok=True)
    pool = sentences()
    backbone = args.work / "tiny-bert"
    if not (backbone / "config.json").exists():
        build_tiny_backbone(backbone, pool[:5000], kind="bert")
    store = args.work / "store"
    env = {**os.environ, "HYBRIDEMBED_DATA_CACHE": str(store), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"{len(pool)} distinct sentences to recombine; Arrow store {store}", flush=True)
    rows = []
    for n in args.sizes:
        data = args.work / f"pairs-{n}.jsonl"
        if not data.exists():
            started = time.perf_counter()
            generate(data, n, pool)
            print(f"generated {n} pairs ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f}s", flush=True)
        for entry in store.glob("*"):  # each size starts without a store entry: the first load validates
            if entry.is_dir():
                import shutil

                shutil.rmtree(entry)
        first = run_child("--data", str(data), "--backbone", str(backbone), "--out", str(args.work / f"model-{n}"), "--train", env=env)
        again = run_child("--data", str(data), env=env)
        assert not first["cache_hit"] and again["cache_hit"], (first, again)
        rows.append((n, data.stat().st_size / 2**20, first, again))
        print(f"{n}: first load {first['load_s']:.1f}s, 100 steps {first['train_s']:.1f}s, peak RSS {first['peak_rss_mb']:.0f} MiB; "
              f"reuse {again['load_s']:.2f}s", flush=True)  # fmt: skip

    print("\n| pairs | file MiB | first load (validate + write) s | rows/s | reuse s | 100 steps s | peak RSS MiB | RSS after reuse MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, mib, first, again in rows:
        print(f"| {n:,} | {mib:.0f} | {first['load_s']:.1f} | {n / first['load_s']:,.0f} | {again['load_s']:.2f} | {first['train_s']:.1f} | "
              f"{first['peak_rss_mb']:.0f} | {again['peak_rss_mb']:.0f} |")  # fmt: skip
    smallest, largest = rows[0], rows[-1]
    ratio = largest[2]["peak_rss_mb"] / smallest[2]["peak_rss_mb"]
    print(f"rss_ratio_{_short(largest[0])}_vs_{_short(smallest[0])}: {ratio:.2f} rows_per_s_{_short(largest[0])}: {largest[0] / largest[2]['load_s']:.0f}")


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


if __name__ == "__main__":
    main()
