"""Turn a task-homogeneous batch of canonical rows into tokenized loss inputs (one collator for every task type)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from hybridembed.tasks import RowShape, TaskType


@dataclass
class DatasetView:
    """What the collator needs to know about one dataset."""

    task: TaskType
    num_negatives: int
    query_prefix: str = ""
    passage_prefix: str = ""
    label_pool: list[str] | None = None
    # Hook for dynamic hard-negative mining: row index → the negatives currently active for that row.
    active_negatives: Callable[[int], list[str]] | None = None


@dataclass
class HybridCollator:
    """Tokenizes the columns a batch's loss expects and names them `<column>_<feature>` as sentence-transformers' trainer does.

    Triplet rows → ``query``, ``positive``, ``negative_1..k`` columns: one positive is drawn from
    the row's positives, and k = min(the dataset's ``num_negatives``, the fewest candidates of any
    row in the batch) negatives are drawn without replacement from the row's negatives (or, for
    (text, label) rows, from the dataset's other labels), so no negative is ever invented or
    repeated. Scored pairs → ``text1``, ``text2`` and a float ``label``. Query prefixes go on
    queries and on both sides of symmetric pairs; passage prefixes on positives and negatives.
    """

    tokenize: Callable[[list[str]], dict[str, torch.Tensor]]
    views: dict[str, DatasetView]
    seed: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        name = rows[0]["dataset_name"]
        view = self.views[name]
        batch: dict[str, Any] = {"dataset_name": name}
        if view.task.shape is RowShape.SCORED_PAIR:
            self._add_column(batch, "text1", [view.query_prefix + r["text1"] for r in rows])
            self._add_column(batch, "text2", [view.query_prefix + r["text2"] for r in rows])
            batch["label"] = torch.tensor([float(r["score"]) for r in rows], dtype=torch.float32)
            return batch
        candidates = [self._negative_candidates(r, view) for r in rows]
        k = min([view.num_negatives] + [len(c) for c in candidates])
        self._add_column(batch, "query", [view.query_prefix + r["query"] for r in rows])
        self._add_column(batch, "positive", [view.passage_prefix + self.rng.choice(r["positives"]) for r in rows])
        drawn = [self.rng.sample(c, k) for c in candidates]
        for j in range(k):
            self._add_column(batch, f"negative_{j + 1}", [view.passage_prefix + negs[j] for negs in drawn])
        batch["label"] = torch.zeros(len(rows))
        return batch

    @staticmethod
    def _negative_candidates(row: dict[str, Any], view: DatasetView) -> list[str]:
        if view.active_negatives is not None:
            return list(view.active_negatives(row["row_id"]))
        if row["negatives"]:
            return list(row["negatives"])
        if view.label_pool:
            return [label for label in view.label_pool if label not in row["positives"]]
        return []

    def _add_column(self, batch: dict[str, Any], column: str, texts: list[str]) -> None:
        for key, value in self.tokenize(texts).items():
            batch[f"{column}_{key}"] = value
