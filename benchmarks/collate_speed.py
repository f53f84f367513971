"""Collation speed: the training batches of train_throughput.py's arm, collated with sentence-transformers' preprocess and with hybridembed's text tokenizer.

Collation runs in the training process between steps (`dataloader_num_workers: 0`, the default:
on two cores a worker process took compute from the step, docs/performance.md), so its time adds to
every step's. Both arms collate the same batches of the quickstart recipe, in the order training
draws them, several passes in turn; the table gives the best pass per arm (the least disturbed) and
checks that both produced identical batches. Run it alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def same_batch(a: dict, b: dict) -> bool:
    import torch

    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        if isinstance(value, dict):
            if not same_batch(value, b[key]):
                return False
        elif torch.is_tensor(value):
            if not (torch.is_tensor(b[key]) and value.dtype == b[key].dtype and torch.equal(value, b[key])):
                return False
        elif value != b[key]:
            return False
    return True


def main() -> None:
    from torch.utils.data import DataLoader
    from train_throughput import OURS, recipe

    from hybridembed.data.tokenize import text_tokenizer
    from hybridembed.training.builder import prepare_training
    from hybridembed.training.sampling import KeyedBatches, KeyedRows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    trainer = prepare_training(recipe(args.batches, args.batch_size, "/tmp/hybridembed-collate", "fp32", OURS))
    collator = trainer.data_collator
    # the trainer's own row order (its sampler keys every row with its draw), each batch kept as rows
    loader = DataLoader(KeyedRows(list(trainer.train_dataset.values())), batch_sampler=KeyedBatches(trainer.task_sampler), collate_fn=list)
    row_batches = [rows for _, rows in zip(range(args.batches), loader)]
    model = trainer.model
    tokenizers = {"sentence-transformers preprocess": model.preprocess, "hybridembed text_tokenizer": text_tokenizer(model)}
    best = dict.fromkeys(tokenizers, float("inf"))
    texts = 0
    outputs: dict[str, list[dict]] = {}
    for _ in range(args.passes):
        for name, tokenize in tokenizers.items():
            collator.tokenize = tokenize
            started = time.perf_counter()
            outputs[name] = [collator(rows) for rows in row_batches]
            best[name] = min(best[name], time.perf_counter() - started)
    for batch in outputs["hybridembed text_tokenizer"]:
        texts += sum(value.shape[0] for key, value in batch.items() if key.endswith("_input_ids"))
    identical = all(same_batch(a, b) for a, b in zip(*outputs.values(), strict=True))
    print(f"\n{len(row_batches)} training batches of {args.batch_size} rows (quickstart recipe, train_throughput.py's order), "
          f"{texts} texts tokenized per pass, best of {args.passes} passes")  # fmt: skip
    print("| tokenizer | ms per batch | µs per text |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds / len(row_batches) * 1e3:.2f} | {seconds / texts * 1e6:.1f} |")
    stock, ours = best.values()
    print(f"collate_speedup: {stock / ours:.2f} saved_ms_per_batch: {(stock - ours) / len(row_batches) * 1e3:.2f} identical_batches: {identical}")
    if not identical:
        sys.exit("the two tokenizers collated different batches")


if __name__ == "__main__":
    main()
