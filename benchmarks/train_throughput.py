"""Training throughput: hybridembed's trainer vs a stock SentenceTransformerTrainer on the same model, data, batch size and steps.

Both arms train all-MiniLM-L6-v2 (384→768 projection, Matryoshka dims) on the quickstart
multi-task data. The stock arm gets the closest stock losses: CoSENTLoss for STS,
MultipleNegativesRankingLoss for retrieval and for classification (text → label text), each in
MatryoshkaLoss, with ST's proportional multi-dataset sampler. The first `--warmup` steps of each
arm are not timed (new tensor shapes cost seconds on CPU). Prints a table and, last,
`speedup: X.XX` (ours ÷ stock pairs/s). Run it alone: two jobs on two cores slow each other.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


class RowCounter:
    """Wrap a collator to count rows per batch; the trainer callback reads it at step boundaries."""

    def __init__(self, collate):
        self.collate = collate
        self.rows = 0
        self.valid_label_columns = getattr(collate, "valid_label_columns", None)

    def __call__(self, batch):
        self.rows += len(batch)
        return self.collate(batch)


def make_timer(counter: RowCounter, warmup: int):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        start_time = start_rows = None
        end_time = end_rows = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.start_time, self.start_rows = time.perf_counter(), counter.rows
            self.end_time, self.end_rows = time.perf_counter(), counter.rows

        def pairs_per_second(self) -> float:
            # Rows collated after step `warmup` ended belong to the timed steps (the loader may prefetch one batch).
            return (self.end_rows - self.start_rows) / (self.end_time - self.start_time)

    return StepTimer()


def recipe(steps: int, batch_size: int, out: str):
    from hybridembed.recipe import load_recipe

    return load_recipe(
        REPO / "recipes" / "quickstart.yaml",
        {"training.max_steps": steps, "training.batch_size": batch_size, "training.output_dir": out, "training.report_to": []},
    )


def run_ours(steps: int, warmup: int, batch_size: int, out: str) -> tuple[float, float]:
    from hybridembed.train import prepare_training

    trainer = prepare_training(recipe(steps, batch_size, out))
    counter = RowCounter(trainer.data_collator)
    trainer.data_collator = counter
    timer = make_timer(counter, warmup)
    trainer.add_callback(timer)
    started = time.perf_counter()
    trainer.train()
    return timer.pairs_per_second(), time.perf_counter() - started


def run_stock(steps: int, warmup: int, batch_size: int, out: str) -> tuple[float, float]:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MatryoshkaLoss, MultipleNegativesRankingLoss

    from hybridembed.data import load_datasets
    from hybridembed.model import build_model
    from hybridembed.tasks import RowShape

    r = recipe(steps, batch_size, out)
    model = build_model(r.model)
    datasets, losses = {}, {}
    for ds in load_datasets(r.datasets):
        if ds.task.shape is RowShape.SCORED_PAIR:
            datasets[ds.name] = Dataset.from_dict(
                {"sentence1": [x["text1"] for x in ds.rows], "sentence2": [x["text2"] for x in ds.rows], "score": [x["score"] for x in ds.rows]}
            )
            base = CoSENTLoss(model)
        else:
            datasets[ds.name] = Dataset.from_dict({"anchor": [x["query"] for x in ds.rows], "positive": [x["positives"][0] for x in ds.rows]})
            base = MultipleNegativesRankingLoss(model)
        losses[ds.name] = MatryoshkaLoss(model, base, r.model.matryoshka_dims)
    args = SentenceTransformerTrainingArguments(
        output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=r.training.learning_rate,
        warmup_steps=0.1, seed=r.training.seed, report_to="none", save_strategy="no", logging_steps=10,
        multi_dataset_batch_sampler="proportional",
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=datasets, loss=losses)
    counter = RowCounter(trainer.data_collator)
    trainer.data_collator = counter
    timer = make_timer(counter, warmup)
    trainer.add_callback(timer)
    started = time.perf_counter()
    trainer.train()
    return timer.pairs_per_second(), time.perf_counter() - started


def main() -> None:
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours, ours_wall = run_ours(args.steps, args.warmup, args.batch_size, f"{tmp}/ours")
        stock, stock_wall = run_stock(args.steps, args.warmup, args.batch_size, f"{tmp}/stock")
    print()
    print(f"model: all-MiniLM-L6-v2 → 768 (Matryoshka 5 dims), data: recipes/quickstart.yaml, batch {args.batch_size}, "
          f"{args.steps} steps ({args.warmup} untimed), torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print("| trainer | pairs/s (timed steps) | wall time (s) |")
    print("|---|---|---|")
    print(f"| hybridembed | {ours:.1f} | {ours_wall:.0f} |")
    print(f"| stock SentenceTransformerTrainer | {stock:.1f} | {stock_wall:.0f} |")
    print(f"speedup: {ours / stock:.2f}")


if __name__ == "__main__":
    main()
