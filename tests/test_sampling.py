"""Task-homogeneous batch sampling: homogeneity, batch sizes, duplicate-free retrieval batches, mixing, determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from hybridembed.recipe import MixingStrategy
from hybridembed.training.sampling import DatasetPlan, TaskBatchSampler


def _dataset_of(index, plans):
    start = 0
    for d, plan in enumerate(plans):
        if index < start + plan.size:
            return d
        start += plan.size
    raise IndexError(index)


def test_batches_are_homogeneous_and_use_each_dataset_batch_size():
    plans = [DatasetPlan("a", 100, 10), DatasetPlan("b", 40, 4), DatasetPlan("c", 33, 8)]
    sampler = TaskBatchSampler(plans, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 + 10 + 4  # c: 33 = 4 × 8 + 1 (a 1-row remainder is dropped)
    for batch in batches:
        datasets = {_dataset_of(i, plans) for i in batch}
        assert len(datasets) == 1
        d = datasets.pop()
        assert len(batch) <= plans[d].batch_size
    seen = Counter(i for b in batches for i in b)
    assert len(seen) == 100 + 40 + 32 and max(seen.values()) == 1


def test_retrieval_batches_have_no_duplicate_texts():
    texts = [{"q" + str(i % 7), "p" + str(i % 5)} for i in range(60)]  # many shared queries/positives
    plan = DatasetPlan("r", 60, 4, texts_of=lambda i: texts[i])
    for batch in TaskBatchSampler([plan], seed=3):
        seen = [t for i in batch for t in texts[i]]
        assert len(seen) == len(set(seen))


def test_same_seed_and_epoch_replay_the_same_order_and_epochs_differ():
    plans = [DatasetPlan("a", 50, 5), DatasetPlan("b", 30, 5)]
    first, again = TaskBatchSampler(plans, seed=7), TaskBatchSampler(plans, seed=7)
    assert list(first) == list(again)
    again.set_epoch(1)
    assert list(first) != list(again)


@pytest.mark.parametrize(
    ("strategy", "weights", "expected"),
    [
        (MixingStrategy.PROPORTIONAL, (1, 1), [40, 10]),
        (MixingStrategy.PROPORTIONAL, (1, 3), [40, 30]),
        (MixingStrategy.ROUND_ROBIN, (1, 1), [25, 25]),
        (MixingStrategy.TEMPERATURE, (1, 1), [33, 17]),  # p ∝ n^(1/2): 40^.5 : 10^.5 = 2 : 1
    ],
)
def test_mixing_strategies_set_batch_shares(strategy, weights, expected):
    plans = [DatasetPlan("big", 400, 10, weight=weights[0]), DatasetPlan("small", 100, 10, weight=weights[1])]
    sampler = TaskBatchSampler(plans, strategy=strategy, temperature=2.0)
    counts = Counter(_dataset_of(batch[0], plans) for batch in sampler)
    assert [counts[0], counts[1]] == expected


def test_round_robin_alternates():
    plans = [DatasetPlan("a", 40, 10), DatasetPlan("b", 40, 10)]
    order = [_dataset_of(b[0], plans) for b in TaskBatchSampler(plans, strategy=MixingStrategy.ROUND_ROBIN)]
    assert order == [0, 1] * 4


@pytest.mark.parametrize("ranks", [1, 2, 8])
@pytest.mark.parametrize("strategy", [MixingStrategy.PROPORTIONAL, MixingStrategy.ROUND_ROBIN, MixingStrategy.TEMPERATURE])
def test_synchronized_schedule_gives_every_dataset_its_share_each_epoch_on_any_number_of_ranks(ranks, strategy):
    # 100 batches per epoch at batch 10: a 10-batch dataset beside a 90-batch one, and a 1-batch one.
    plans = [DatasetPlan("big", 880, 10), DatasetPlan("small", 100, 10), DatasetPlan("tiny", 10, 10)]
    sampler = TaskBatchSampler(plans, strategy=strategy, seed=5, num_replicas=ranks)
    for epoch in range(40):
        schedule = list(sampler.schedule(epoch))
        assert len(schedule) == len(sampler) == -(-sum(sampler.batch_counts) // ranks)
        assert all(len(set(step)) == 1 for step in schedule)  # synchronized: one dataset per step
        steps = Counter(step[0] for step in schedule)
        for d, batches in enumerate(sampler.batch_counts):
            assert abs(steps[d] - batches / ranks) <= 1, (epoch, d, steps[d], batches / ranks)


def test_one_rank_schedule_is_the_batch_order_of_the_epoch():
    plans = [DatasetPlan("a", 50, 5), DatasetPlan("b", 30, 5)]
    sampler = TaskBatchSampler(plans, seed=7)
    assert Counter(step[0] for step in sampler.schedule(0)) == {0: 10, 1: 6}


def test_keyed_batches_tag_each_index_with_epoch_and_batch_index():
    from hybridembed.training.sampling import KeyedBatches, KeyedRows

    plans = [DatasetPlan("a", 12, 4)]
    sampler = TaskBatchSampler(plans, seed=1)
    keyed = KeyedBatches(sampler)
    keyed.set_epoch(3)
    batches = list(keyed)
    assert len(batches) == len(keyed) == 3
    assert [[i for i, _, _ in b] for b in batches] == list(sampler)
    assert {(e, b) for batch in batches for _, e, b in batch} == {(3, 0), (3, 1), (3, 2)}
    rows = KeyedRows([[{"x": i} for i in range(12)]])
    assert rows[(5, 3, 1)] == {"x": 5, "draw_key": (3, 1)}
