"""Encoding throughput of hybridembed's encode paths vs a plain `SentenceTransformer.encode` on the same real texts.

hybridembed encodes (CLI `encode`, evaluation, mining) through `SentenceTransformer.encode` with
its own batch size, and the server through length-sorted passes of a micro-batch. This prints
sentences/s for each on the STS-B dev sentences shipped in data/quickstart (3000 texts), one
timed run after a warm-up, and as its last line `ratio: X.XX` (slowest hybridembed path ÷ stock).
Run it alone.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def texts() -> list[str]:
    with open(REPO / "data" / "quickstart" / "stsb_dev.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]


def rate(encode, sentences: list[str]) -> float:
    encode(sentences[:64])  # warm-up: first shapes cost seconds on CPU
    started = time.perf_counter()
    encode(sentences)
    return len(sentences) / (time.perf_counter() - started)


def main() -> None:
    import torch

    from hybridembed.model import load_model
    from hybridembed.serve.engine import ServedModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    args = parser.parse_args()
    sentences = texts()
    model = load_model(args.model)
    served = ServedModel.from_model(model, "bench")
    results = {
        "SentenceTransformer.encode (defaults, batch 32)": rate(lambda t: model.encode(t, show_progress_bar=False), sentences),
        "hybridembed encode / eval (batch 32)": rate(lambda t: model.encode(t, batch_size=32, show_progress_bar=False), sentences),
        "hybridembed serve engine (micro-batches of 32, passes of 8)": rate(
            lambda t: [served.encode(t[i : i + 32], batch_size=8) for i in range(0, len(t), 32)], sentences
        ),
    }
    print(f"\n{len(sentences)} STS-B dev sentences, {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| path | sentences/s |")
    print("|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.0f} |")
    stock = results["SentenceTransformer.encode (defaults, batch 32)"]
    print(f"ratio: {min(v for k, v in results.items() if k.startswith('hybridembed')) / stock:.2f}")


if __name__ == "__main__":
    main()
