"""Task-homogeneous batch sampling: every batch comes from one dataset, datasets are mixed proportionally, round-robin or by temperature.

What this adds over sentence-transformers' multi-dataset samplers: a batch size per dataset (per
task type), dataset weights and repeats, temperature mixing, duplicate-free batches only where the
loss uses in-batch negatives, and a rank-aware schedule for multi-process runs — either every rank
trains the same dataset in a step (`synchronized`, so negatives can be gathered over all ranks) or
Conan's Cross-GPU Batch Balance (`cbb`: the ranks of a step work on different task types). The
schedule is a deterministic function of (seed, epoch), identical on every rank, so a resumed run
replays the same order and every rank knows which ranks share a dataset in each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Sampler

from hybridembed.data.collator import DRAW_KEY
from hybridembed.recipe import MixingStrategy
from hybridembed.tasks import TaskType


@dataclass
class DatasetPlan:
    """How one dataset is batched: its size, batch size, weight, repeats and (optionally) the texts of a row."""

    name: str
    size: int
    batch_size: int
    weight: float = 1.0
    repeat: int = 1
    texts_of: Callable[[int], set[str]] | None = None  # set → batches without duplicate texts
    task: TaskType | None = None  # CBB balances task types

    @property
    def batches_per_pass(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest >= 2 else 0)


def _take(index: int, texts_of: Callable[[int], set[str]], batch_size: int, batch: list[int], texts: set[str], deferred: list[int]) -> bool:
    """Put row `index` in the open batch unless it shares a text with it (then it waits); True when the batch is full."""
    row_texts = texts_of(index)
    if texts.isdisjoint(row_texts):
        batch.append(index)
        texts |= row_texts
        return len(batch) == batch_size
    deferred.append(index)
    return False


class TaskBatchSampler(Sampler[list[int]]):
    """Yield index batches over the concatenation of several datasets, each batch from a single dataset."""

    def __init__(
        self,
        plans: list[DatasetPlan],
        strategy: MixingStrategy = MixingStrategy.PROPORTIONAL,
        temperature: float = 2.0,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        cross_device_balance: bool = False,
    ) -> None:
        if not plans:
            raise ValueError("TaskBatchSampler needs at least one dataset")
        self.plans = plans
        self.strategy = strategy
        self.temperature = temperature
        self.seed = seed
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank
        self.cross_device_balance = cross_device_balance
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
        """Steps per epoch (each step is one batch on every rank)."""
        return math.ceil(sum(self.batch_counts) / self.num_replicas)

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
        shuffled = np.repeat(np.arange(len(self.plans)), self.batch_counts)
        rng.shuffle(shuffled)
        return shuffled.tolist()

    def _dataset_batches(self, d: int) -> Iterator[list[int]]:
        """Endless batches of dataset `d`: successive shuffled passes (a weight > 1 cycles it)."""
        plan = self.plans[d]
        for pass_index in range(10**9):
            rng = np.random.default_rng([self.seed, self.epoch, d, pass_index])
            # A numpy permutation (8 bytes a row) read lazily: the sampler's index is all it holds per row.
            permutation = rng.permutation(plan.size)
            batches = self._no_duplicate_batches(permutation, plan) if plan.texts_of else self._chunks(permutation, plan.batch_size)
            produced = 0
            for batch in batches:
                produced += 1
                yield batch
            if not produced:
                raise ValueError(f"dataset {plan.name!r}: no batch of two rows without shared texts can be formed")

    @staticmethod
    def _chunks(indices: np.ndarray, size: int) -> Iterator[list[int]]:
        for start in range(0, len(indices), size):
            batch = indices[start : start + size].tolist()
            if len(batch) >= 2:  # a one-row batch gives no contrastive or ranking signal
                yield batch

    @staticmethod
    def _no_duplicate_batches(indices: np.ndarray, plan: DatasetPlan) -> Iterator[list[int]]:
        """Greedy fill; a row sharing a text with the open batch waits for the next one.

        Each batch scans the rows that waited (oldest first), then the rest of the permutation;
        only the waiting rows are held in a list, so a pass costs no memory per row of the dataset.
        """
        texts_of, batch_size = plan.texts_of, plan.batch_size
        assert texts_of is not None, "only for plans with texts_of"
        waiting: list[int] = []
        cursor = 0
        while len(waiting) + len(indices) - cursor >= 2:
            batch: list[int] = []
            texts: set[str] = set()
            deferred: list[int] = []
            scanned = 0
            for index in waiting:
                scanned += 1
                if _take(index, texts_of, batch_size, batch, texts, deferred):
                    break
            if len(batch) < plan.batch_size:
                while cursor < len(indices):
                    index = int(indices[cursor])
                    cursor += 1
                    if _take(index, texts_of, batch_size, batch, texts, deferred):
                        break
            if len(batch) < 2:
                return
            yield batch
            waiting = deferred + waiting[scanned:]

    def schedule(self, epoch: int | None = None) -> Iterator[list[int]]:
        """For each step, the dataset index every rank trains on (the same answer on every rank)."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        steps = len(self)
        if not self.cross_device_balance:
            for d in self._synchronized_order(steps, rng):
                yield [d] * self.num_replicas
            return
        yield from self._balanced_schedule(steps, rng)

    def synchronized_steps(self, steps: int) -> list[int]:
        """Steps per dataset in one epoch when all ranks train one dataset together.

        Such a step uses `num_replicas` batches of its dataset, so a dataset's share of the steps
        is its batch count / num_replicas: the floor of that quota for each dataset, and the
        steps left over to the largest remainders (each dataset within ±1 step of its share, for
        any number of ranks; with one rank exactly its batch count).
        """
        quota = np.array(self.batch_counts, dtype=float) / self.num_replicas
        counts = np.floor(quota).astype(int)  # Σ quota = total / R ≤ steps, so at most one extra step each
        for d in np.argsort(-(quota - counts), kind="stable")[: steps - int(counts.sum())]:
            counts[d] += 1
        return counts.tolist()

    def _synchronized_order(self, steps: int, rng: np.random.Generator) -> list[int]:
        counts = self.synchronized_steps(steps)
        if self.num_replicas == 1:
            return self.dataset_order(rng)  # counts == batch_counts: the single-process order as before
        saved, self.batch_counts = self.batch_counts, counts
        try:
            return self.dataset_order(rng)
        finally:
            self.batch_counts = saved

    def _balanced_schedule(self, steps: int, rng: np.random.Generator) -> Iterator[list[int]]:
        """Cross-GPU Batch Balance: per step, ranks get distinct task types while there are enough.

        Credits (a smooth weighted round-robin) keep each task type's share of rank-steps equal
        to its share of the epoch's batches; a task type with several ranks in a step (when there
        are more ranks than types) gives them batches of one dataset, so they can share negatives.
        """
        tasks = sorted({p.task for p, c in zip(self.plans, self.batch_counts) if c}, key=str)
        task_share = {t: sum(c for p, c in zip(self.plans, self.batch_counts) if p.task == t) for t in tasks}
        total = sum(task_share.values())
        task_credit = {t: 0.0 for t in tasks}
        data_credit = [0.0] * len(self.plans)
        for _ in range(steps):
            for t in tasks:
                task_credit[t] += self.num_replicas * task_share[t] / total
            chosen: list[TaskType | None] = []
            for _ in range(self.num_replicas):
                fresh = [t for t in tasks if t not in chosen] or tasks
                pick = max(fresh, key=lambda t: (task_credit[t], -tasks.index(t)))
                task_credit[pick] -= 1.0
                chosen.append(pick)
            dataset_of_task = {}
            for t in dict.fromkeys(chosen):
                members = [d for d, p in enumerate(self.plans) if p.task == t and self.batch_counts[d]]
                for d in members:
                    data_credit[d] += self.batch_counts[d] / task_share[t]
                best = max(members, key=lambda d: (data_credit[d], -d))
                data_credit[best] -= 1.0
                dataset_of_task[t] = best
            yield [dataset_of_task[t] for t in chosen]

    def __iter__(self) -> Iterator[list[int]]:
        streams = {d: self._dataset_batches(d) for d, count in enumerate(self.batch_counts) if count}  # the schedule picks only these
        for assignment in self.schedule():
            # Every rank draws every rank's batch so the streams stay aligned; it yields its own.
            for r, d in enumerate(assignment):
                batch = next(streams[d])
                if r == self.rank:
                    mine = [self.offsets[d] + i for i in batch]
            yield mine

    def sharing_ranks(self, epochs: int) -> set[frozenset[int]]:
        """Every set of ranks that trains one dataset together in some step of the first `epochs` epochs."""
        subsets: set[frozenset[int]] = set()
        for epoch in range(epochs):
            for assignment in self.schedule(epoch):
                for d in set(assignment):
                    subsets.add(frozenset(r for r, x in enumerate(assignment) if x == d))
        return subsets


class KeyedBatches(Sampler[list[tuple[int, int, int]]]):
    """The task sampler's batches with each index tagged (index, epoch, batch index): the key the collator seeds its draws with.

    Wrapping (not changing) the sampler keeps its plain index batches for the schedule replays
    (dynamic mining) while the dataloader, its workers and accelerate's resume skipping carry the
    key to the collator with every row, so no draw depends on how many batches were collated before.
    """

    def __init__(self, sampler: TaskBatchSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch = self.sampler.epoch
        for batch_index, batch in enumerate(self.sampler):
            yield [(index, epoch, batch_index) for index in batch]


class KeyedRows(Dataset):
    """Rows of several datasets addressed by `KeyedBatches` keys; each row comes back with its draw key."""

    def __init__(self, datasets: list) -> None:
        self.rows: ConcatDataset[dict[str, Any]] = ConcatDataset(datasets)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int, int] | int) -> dict:
        index, epoch, batch_index = key if isinstance(key, tuple) else (key, 0, 0)
        return {**self.rows[index], DRAW_KEY: (epoch, batch_index)}
