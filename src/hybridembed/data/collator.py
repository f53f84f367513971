"""Turn a task-homogeneous batch of canonical rows into tokenized loss inputs (one collator for every task type)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hybridembed.tasks import RowShape, TaskType

# The key a row carries from the batch sampler (see hybridembed.training.sampling.KeyedBatches): which
# (epoch, batch index) of the schedule it was drawn for. The collator seeds its draws with it.
DRAW_KEY = "draw_key"


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


def text_hash(text: str) -> int:
    """A stable, non-zero 63-bit id of a text (0 marks an empty negative slot)."""
    value = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little", signed=True)
    return value | 1


@dataclass
class HybridCollator:
    """Tokenizes the columns a batch's loss expects and names them `<column>_<feature>` as sentence-transformers' trainer does.

    Triplet rows → ``query``, ``positive``, ``negative_1..K`` columns: one positive is drawn from
    the row's positives, and each row draws min(the dataset's ``num_negatives``, its own number of
    candidates) negatives without replacement from its negatives (or, for label tasks, from the
    dataset's other labels) — Piccolo2's per-row ``min(neg_num, len)``. K is the most any row drew;
    a row with fewer fills its empty slots with its own positive (free: the merged forward embeds
    each distinct text once) and the loss masks them, so no negative is invented or repeated.
    The label is a dict the losses read (``negative_counts`` and text ids for masking duplicates
    of a query's own positive, see ``hybridembed.losses.infonce``). Scored pairs → ``text1``,
    ``text2`` and a float ``label``. Query prefixes go on queries and on both sides of symmetric
    pairs; passage prefixes on positives and negatives.

    Every draw is a pure function of (seed, epoch, batch index, rank): the batch's rows carry
    their (epoch, batch index) from the sampler, so a resumed run, dataloader workers and a replay
    of the schedule all draw the same positives and negatives.
    """

    tokenize: Callable[[list[str]], dict[str, torch.Tensor]]
    views: dict[str, DatasetView]
    seed: int = 0
    rank: int = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        name = rows[0]["dataset_name"]
        view = self.views[name]
        batch: dict[str, Any] = {"dataset_name": name}
        if view.task.shape is RowShape.SCORED_PAIR:
            self._add_column(batch, "text1", [view.query_prefix + r["text1"] for r in rows])
            self._add_column(batch, "text2", [view.query_prefix + r["text2"] for r in rows])
            batch["label"] = torch.tensor([float(r["score"]) for r in rows], dtype=torch.float32)
            return batch
        rng = self.rng_for(rows)
        queries = [view.query_prefix + r["query"] for r in rows]
        positives = [view.passage_prefix + r["positives"][int(rng.integers(len(r["positives"])))] for r in rows]
        drawn = []
        for row in rows:
            candidates = list(dict.fromkeys(self._negative_candidates(row, view)))  # a repeated text is one negative
            count = min(view.num_negatives, len(candidates))
            picks: np.ndarray | list[int] = rng.choice(len(candidates), size=count, replace=False) if count else []
            drawn.append([view.passage_prefix + candidates[int(i)] for i in picks])
        width = max((len(d) for d in drawn), default=0)
        self._add_column(batch, "query", queries)
        self._add_column(batch, "positive", positives)
        for j in range(width):
            self._add_column(batch, f"negative_{j + 1}", [d[j] if j < len(d) else p for d, p in zip(drawn, positives)])
        batch["label"] = {
            "negative_counts": torch.tensor([len(d) for d in drawn], dtype=torch.long),
            "query_ids": torch.tensor([text_hash(q) for q in queries], dtype=torch.long),
            "positive_ids": torch.tensor([text_hash(p) for p in positives], dtype=torch.long),
            "negative_ids": torch.tensor([[text_hash(d[j]) if j < len(d) else 0 for j in range(width)] for d in drawn], dtype=torch.long).view(len(rows), width),
        }  # fmt: skip
        return batch

    def rng_for(self, rows: Sequence[dict[str, Any]]) -> np.random.Generator:
        """The generator of this batch's draws: seeded by (seed, epoch, batch index, rank), never by call order."""
        key = rows[0].get(DRAW_KEY)
        if key is None:  # rows not from the keyed sampler (direct calls): key on the rows themselves
            key = (0, text_hash("\x00".join(str(r.get("row_id", r.get("query"))) for r in rows)) & 0x7FFFFFFF)
        epoch, batch_index = key
        return np.random.default_rng([self.seed, int(epoch), int(batch_index), self.rank])

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
