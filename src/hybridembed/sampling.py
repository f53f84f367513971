"""Task-homogeneous batch sampling: every batch comes from one dataset, datasets are mixed proportionally, round-robin or by temperature.

What this adds over sentence-transformers' multi-dataset samplers: a batch size per dataset (per
task type), dataset weights and repeats, temperature mixing, and duplicate-free batches only where
the loss uses in-batch negatives — in one sampler whose epoch is deterministic given (seed, epoch),
so a resumed run replays the same batch order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from hybridembed.recipe import MixingStrategy


@dataclass
class DatasetPlan:
    """How one dataset is batched: its size, batch size, weight, repeats and (optionally) the texts of a row."""

    name: str
    size: int
    batch_size: int
    weight: float = 1.0
    repeat: int = 1
    texts_of: Callable[[int], set[str]] | None = None  # set → batches without duplicate texts

    @property
    def batches_per_pass(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest >= 2 else 0)


class TaskBatchSampler(Sampler[list[int]]):
    """Yield index batches over the concatenation of several datasets, each batch from a single dataset."""

    def __init__(
        self,
        plans: list[DatasetPlan],
        strategy: MixingStrategy = MixingStrategy.PROPORTIONAL,
        temperature: float = 2.0,
        seed: int = 0,
    ) -> None:
        if not plans:
            raise ValueError("TaskBatchSampler needs at least one dataset")
        self.plans = plans
        self.strategy = strategy
        self.temperature = temperature
        self.seed = seed
        self.epoch = 0
        self.offsets = np.cumsum([0] + [p.size for p in plans[:-1]]).tolist()
        self.batch_counts = self._batch_counts()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batch_counts(self) -> list[int]:
        """Batches each dataset contributes to one epoch."""
        base = [p.batches_per_pass * p.repeat for p in self.plans]
        total = sum(base)
        match self.strategy:
            case MixingStrategy.PROPORTIONAL:
                return [max(1, round(b * p.weight)) if b else 0 for b, p in zip(base, self.plans)]
            case MixingStrategy.TEMPERATURE:
                mass = [(b * p.weight) ** (1.0 / self.temperature) if b else 0.0 for b, p in zip(base, self.plans)]
                return [max(1, round(total * m / sum(mass))) if m else 0 for m in mass]
            case MixingStrategy.ROUND_ROBIN:
                share = math.ceil(total / sum(1 for b in base if b))
                return [share if b else 0 for b in base]
        raise ValueError(f"unknown mixing strategy {self.strategy}")

    def __len__(self) -> int:
        return sum(self.batch_counts)

    def dataset_order(self, rng: np.random.Generator) -> list[int]:
        """The dataset index of each batch in this epoch."""
        if self.strategy is MixingStrategy.ROUND_ROBIN:
            order: list[int] = []
            remaining = list(self.batch_counts)
            while any(remaining):
                for d, left in enumerate(remaining):
                    if left:
                        order.append(d)
                        remaining[d] -= 1
            return order
        order = np.repeat(np.arange(len(self.plans)), self.batch_counts)
        rng.shuffle(order)
        return order.tolist()

    def _dataset_batches(self, d: int) -> Iterator[list[int]]:
        """Endless batches of dataset `d`: successive shuffled passes (a weight > 1 cycles it)."""
        plan = self.plans[d]
        for pass_index in range(10**9):
            rng = np.random.default_rng([self.seed, self.epoch, d, pass_index])
            permutation = rng.permutation(plan.size).tolist()
            batches = self._no_duplicate_batches(permutation, plan) if plan.texts_of else self._chunks(permutation, plan.batch_size)
            produced = 0
            for batch in batches:
                produced += 1
                yield batch
            if not produced:
                raise ValueError(f"dataset {plan.name!r}: no batch of two rows without shared texts can be formed")

    @staticmethod
    def _chunks(indices: list[int], size: int) -> Iterator[list[int]]:
        for start in range(0, len(indices), size):
            batch = indices[start : start + size]
            if len(batch) >= 2:  # a one-row batch gives no contrastive or ranking signal
                yield batch

    @staticmethod
    def _no_duplicate_batches(indices: list[int], plan: DatasetPlan) -> Iterator[list[int]]:
        """Greedy fill; a row sharing a text with the open batch waits for the next one."""
        pending = list(indices)
        while len(pending) >= 2:
            batch, texts, deferred = [], set(), []
            for position, index in enumerate(pending):
                row_texts = plan.texts_of(index)
                if texts.isdisjoint(row_texts):
                    batch.append(index)
                    texts |= row_texts
                    if len(batch) == plan.batch_size:
                        deferred.extend(pending[position + 1 :])
                        break
                else:
                    deferred.append(index)
            if len(batch) < 2:
                return
            yield batch
            pending = deferred

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        streams = [self._dataset_batches(d) if count else None for d, count in enumerate(self.batch_counts)]
        for d in self.dataset_order(rng):
            offset = self.offsets[d]
            yield [offset + i for i in next(streams[d])]
