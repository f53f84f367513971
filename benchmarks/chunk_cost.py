"""What one more forward chunk costs in a training step, in tokens: the figure behind `training.forward_chunk_cost_tokens: auto`.

Embeds the same rows — R rows of L tokens — as 1, 2, 4 and 8 chunks inside one autocast region
with one backward, as the trainer does (train_throughput.py's arm with padded chunks: all-MiniLM-L6-v2
→ 768, lane dropout, packing off, the precision `auto` picks here), for a few (R, L), and fits
    time = seconds_per_chunk × chunks + seconds_per_token × tokens
by least squares. seconds_per_chunk / seconds_per_token is the chunk cost in tokens. Then, for
word-embedding tables of `--tables` sizes (MiniLM's 30522 × 384; XLM-RoBERTa-large's, as in
bge-m3, 250002 × 1024), the backward of the lookups alone — 4 chunks of 32 × 38 tokens, one
backward — with nn.Embedding's dense gradient per chunk and with `training.sparse_embedding_backward`
(hybridembed.modeling.embedding_gradient). Every
configuration runs `--repeats` times and its median counts; configurations are interleaved so a
slow spell of the machine spreads over all of them. `--set KEY=VALUE` changes a recipe setting,
e.g. `--set training.sparse_embedding_backward=false` for the cost with a vocabulary-sized
word-embedding gradient per chunk. Run it alone: two jobs on two cores slow each other.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from train_throughput import OURS, recipe, setting

SHAPES = [(32, 12), (32, 38), (16, 72)]
CHUNKS = [1, 2, 4, 8]
# train_throughput's arm with padded chunks: packed forwards (its default) are not cut by this cost
UNPACKED = {**OURS, "training.packing": False}
TABLES = "30522x384,250002x1024"


def features(rows: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 20000, (rows, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def step_seconds(model, batch: dict[str, torch.Tensor], chunks: int, dtype: torch.dtype | None) -> float:
    """One forward of `batch` in `chunks` equal chunks and one backward, in one autocast region; zero_grad as the trainer does."""
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        parts = [{k: v[i::chunks] for k, v in batch.items()} for i in range(chunks)]
        loss = sum(model(part)["sentence_embedding"].float().pow(2).mean() for part in parts)
    loss.backward()
    return time.perf_counter() - started


def embedding_backward_ms(vocabulary: int, hidden: int, repeats: int) -> dict[str, float]:
    """Median ms of one backward through 4 chunks' lookups into a (vocabulary × hidden) table: dense per chunk, and sparse rows."""
    import copy

    from torch import nn

    from hybridembed.modeling.embedding_gradient import use_sparse_embedding_backward

    generator = torch.Generator().manual_seed(0)
    chunks = [torch.randint(0, vocabulary, (32, 38), generator=generator) for _ in range(4)]
    dense = nn.Embedding(vocabulary, hidden)
    sparse = copy.deepcopy(dense)
    use_sparse_embedding_backward(sparse)
    medians = {}
    for name, table in (("dense", dense), ("sparse", sparse)):
        seconds = []
        for _ in range(repeats + 1):  # the first touches fresh memory
            table.zero_grad(set_to_none=True)
            started = time.perf_counter()
            sum(table(ids).pow(2).sum() for ids in chunks).backward()
            seconds.append(time.perf_counter() - started)
        medians[name] = float(np.median(seconds[1:])) * 1e3
    return medians


def main() -> None:
    from hybridembed.precision import resolve_precision
    from hybridembed.training.builder import prepare_training

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--tables", default=TABLES, help="word-embedding tables for the backward-alone table, VOCABxHIDDEN,...")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE", help="a recipe setting on top of the arm's")
    args = parser.parse_args()
    precision = resolve_precision(args.precision)
    dtype = torch.bfloat16 if precision == "bf16" else None
    with tempfile.TemporaryDirectory() as tmp:
        model = prepare_training(recipe(1, 32, tmp, precision, {**UNPACKED, **dict(args.set)})).model
    model.train()
    generator = torch.Generator().manual_seed(0)
    batches = {shape: features(*shape, generator) for shape in SHAPES}
    configs = [(shape, chunks) for shape in SHAPES for chunks in CHUNKS]
    for shape, chunks in configs:  # warm-up: first shapes and fresh memory cost seconds
        step_seconds(model, batches[shape], chunks, dtype)
    timings: dict[tuple, list[float]] = {config: [] for config in configs}
    for _ in range(args.repeats):
        for shape, chunks in configs:
            timings[(shape, chunks)].append(step_seconds(model, batches[shape], chunks, dtype))
    medians = {config: float(np.median(values)) for config, values in timings.items()}
    design = np.array([[chunks, rows * length] for (rows, length), chunks in configs], dtype=np.float64)
    per_chunk, per_token = np.linalg.lstsq(design, np.array([medians[c] for c in configs]), rcond=None)[0]
    settings = ", ".join(f"{k}={v}" for k, v in {**UNPACKED, **dict(args.set)}.items())
    print()
    print(f"all-MiniLM-L6-v2 → 768, {settings}, precision {precision}, torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print("| rows × tokens | " + " | ".join(f"{c} chunk{'s' if c > 1 else ''} (ms)" for c in CHUNKS) + " | fitted (ms) at 1 / 8 chunks |")
    print("|---|" + "---|" * (len(CHUNKS) + 1))
    for rows, length in SHAPES:
        fitted = [per_chunk * c + per_token * rows * length for c in (1, 8)]
        cells = " | ".join(f"{medians[((rows, length), c)] * 1e3:.0f}" for c in CHUNKS)
        print(f"| {rows} × {length} | {cells} | {fitted[0] * 1e3:.0f} / {fitted[1] * 1e3:.0f} |")
    print()
    print("| word-embedding table | backward of 4 chunks' lookups, dense gradient per chunk (ms) | sparse_embedding_backward (ms) | ratio |")
    print("|---|---|---|---|")
    for table in args.tables.split(","):
        vocabulary, hidden = map(int, table.split("x"))
        ms = embedding_backward_ms(vocabulary, hidden, args.repeats)
        print(f"| {vocabulary} × {hidden} | {ms['dense']:.1f} | {ms['sparse']:.1f} | {ms['dense'] / ms['sparse']:.1f} |")
    print(f"per chunk: {per_chunk * 1e3:.1f} ms, per token: {per_token * 1e3:.3f} ms, chunk_cost_tokens: {per_chunk / per_token:.0f}")


if __name__ == "__main__":
    main()
