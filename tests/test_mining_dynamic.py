"""Dynamic hard-negative mining on the tiny model: Conan's replacement rule, logged events in training, state restored on resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import corpus_sentences


@pytest.fixture(scope="module")
def pool_data(tmp_path_factory) -> Path:
    """24 retrieval rows of real sentences, each with 12 negatives (the candidate pool)."""
    sentences = list(dict.fromkeys(corpus_sentences(1200)))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        others = [s for s in rng.choice(sentences[100:], size=14, replace=False).tolist() if s not in sentences[2 * i : 2 * i + 2]]
        rows.append({"query": sentences[2 * i], "positive": sentences[2 * i + 1], "negatives": others[:12]})
    path = tmp_path_factory.mktemp("dynamic") / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(backbone: Path, data: Path, out: Path, **dynamic):
    from hybridembed.recipe import Recipe

    return Recipe.model_validate(
        {
            "model": {"backbone": str(backbone), "max_seq_length": 32},
            "datasets": [{"path": str(data), "task": "retrieval", "num_negatives": 2, "batch_size": 4}],
            "training": {"output_dir": str(out), "max_steps": 6, "learning_rate": 1e-3, "logging_steps": 1, "report_to": [], "warmup_ratio": 0.0},
            "mining": {"dynamic": {"every_steps": 3, "ratio": 1.02, "max_score": 1.0, "pool_size": 12, **dynamic}},
        }
    )


def _cosines(model, query: str, texts: list[str]) -> np.ndarray:
    vectors = model.encode([query, *texts], normalize_embeddings=True)
    return vectors[1:] @ vectors[0]


def test_easy_negatives_are_replaced_by_harder_unused_candidates(tiny_bert_dir, pool_data, tmp_path):
    from hybridembed.training.builder import prepare_training

    trainer = prepare_training(_recipe(tiny_bert_dir, pool_data, tmp_path / "out", init="lazy", max_score=0.999))
    miner = trainer.dynamic_miner
    table = miner.tables["pool"]
    rows = list(range(12))
    assert trainer.data_collator.views["pool"].active_negatives is not None
    assert miner.refresh({"pool": rows}, judge=False).initialized == 24  # activation scores, nothing judged
    before = {r: table.active_texts(r) for r in rows}
    current = {r: _cosines(trainer.model, table.dataset.rows[r]["query"], before[r]) for r in rows}
    ratio = miner.config.ratio
    for r in rows:  # slot 0 just crossed Conan's threshold (easy), slot 1 just did not
        table.initial[r, 0] = current[r][0] * ratio + 1e-3
        table.initial[r, 1] = current[r][1] * ratio - 1e-3
    trainer.model.train()
    event = miner.refresh({"pool": rows}, step=3, chunk_rows=5)  # three chunks
    assert trainer.model.training  # the training mode is restored after scoring
    assert event.checked == 24 and event.easy == 12 and event.replaced + event.exhausted == 12 and event.replaced > 0
    replaced = 0
    for r in rows:
        after = table.active_texts(r)
        assert after[1] == before[r][1]  # not easy: kept
        if after[0] == before[r][0]:
            continue
        replaced += 1
        query, pool = table.dataset.rows[r]["query"], table.pools[r]
        new_score, old_score = _cosines(trainer.model, query, [after[0], before[r][0]])
        assert new_score > old_score and new_score < 0.999
        assert new_score == pytest.approx(table.initial[r, 0], abs=1e-4)  # activation score of the replacement
        unused = [t for t in pool if t not in before[r]]
        scores = _cosines(trainer.model, query, unused)
        assert new_score == pytest.approx(max(s for s in scores if s < 0.999), abs=1e-4)  # the hardest unused one
        assert trainer.data_collator.views["pool"].active_negatives(r) == after
    assert replaced == event.replaced
    # A retired negative never comes back, even when every active one is judged easy again.
    retired = {r: before[r][0] for r in rows if table.active_texts(r)[0] != before[r][0]}
    table.initial[:, :] = 10.0
    miner.refresh({"pool": rows}, step=6)
    assert all(retired[r] not in table.active_texts(r) for r in retired)


def test_training_with_dynamic_mining_logs_replacements_and_resume_restores_the_pools(tiny_bert_dir, pool_data, tmp_path):
    from hybridembed.mining.dynamic import STATE_FILE
    from hybridembed.training.builder import prepare_training

    out = tmp_path / "run"
    # ratio 1.001: a negative whose score fell at all is easy. At 1.02 whether any of the 24 fell by 2% in
    # two steps hung on float rounding, which a busy machine changes (MKL re-partitions its threads).
    recipe = _recipe(tiny_bert_dir, pool_data, out, ratio=1.001)
    recipe.training.save_steps = 6
    trainer = prepare_training(recipe)
    trainer.train()
    miner = trainer.dynamic_miner
    assert miner.lead == 1  # accelerate's loader collates one batch ahead, so the step-3 event runs after step 2 ...
    events = [e for e in trainer.state.log_history if "mining/checked" in e]
    assert [e["step"] for e in events] == [2]  # every 3 steps, none for the last step
    # ... and covers the batches from the one after the prefetched batch of step 3 to step 6's (the end)
    assert miner.windows == [(2, 3, 6)] and miner.upcoming_rows(3, 3) == miner.rows_of_batches(3, 6)
    assert events[0]["mining/checked"] > 0 and events[0]["mining/replaced"] > 0
    assert "mining/score_before" in events[0] and "mining/score_after" in events[0]
    assert events[0]["mining/score_after"] > events[0]["mining/score_before"]  # replacements are harder
    assert events[0]["mining/above_max_score"] == 0  # max_score 1.0
    start = [e for e in trainer.state.log_history if e["step"] == 0]  # init: start — the activation pass is logged too
    assert len(start) == 1 and start[0]["mining/initialized"] == 48 and "mining/checked" not in start[0]
    checkpoint = out / "checkpoint-6"
    saved = dict(np.load(checkpoint / STATE_FILE))
    default_active = np.tile(np.arange(2), (24, 1))
    assert (saved["0.active"] != default_active).any()  # the saved state holds replacements

    recipe.training.max_steps = 8  # steps 7-8: no event, so the restored state must survive as saved
    resumed = prepare_training(recipe)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    callback = next(c for c in resumed.callback_handler.callbacks if type(c).__name__ == "DynamicMiningCallback")
    assert callback.restored_from == str(checkpoint)
    table = resumed.dynamic_miner.tables["pool"]
    np.testing.assert_array_equal(table.active, saved["0.active"])
    np.testing.assert_array_equal(table.initial, saved["0.initial"])
    np.testing.assert_array_equal(table.used, saved["0.used"])


def test_upcoming_rows_follow_the_sampler(tiny_bert_dir, pool_data, tmp_path):
    from hybridembed.training.builder import prepare_training

    trainer = prepare_training(_recipe(tiny_bert_dir, pool_data, tmp_path / "o"))
    miner, sampler = trainer.dynamic_miner, trainer.task_sampler
    sampler.set_epoch(1)
    epoch1 = list(iter(sampler))
    steps = len(sampler)
    assert miner.upcoming_rows(steps + 2, 3) == {"pool": sorted({i for b in epoch1[2:5] for i in b})}
    assert sampler.epoch == 1  # the replay does not move the live sampler


WORKER = """
import json, sys
import torch.distributed as dist
from hybridembed.distributed import finish_distributed_run
from hybridembed.recipe import Recipe
from hybridembed.training.builder import prepare_training


def main():
    trainer = prepare_training(Recipe.model_validate(json.load(open(sys.argv[1]))))
    trainer.train()
    miner, rank = trainer.dynamic_miner, dist.get_rank()
    table = miner.tables["pool"]
    result = {
        "active": table.active.tolist(),
        "initial": [[None if x != x else float(x) for x in row] for row in table.initial],
        "events": [e for e in trainer.state.log_history if "mining/checked" in e],
        "local": [e.__dict__ for e in miner.history],
        "own_rows": miner.upcoming_rows(3, 3).get("pool", []),
    }
    with open(f"{sys.argv[2]}.rank{rank}.json", "w") as f:
        json.dump(result, f)


main()
finish_distributed_run()  # close the groups, leave without interpreter teardown
"""


def test_two_processes_share_one_mining_state(tiny_bert_dir, pool_data, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    recipe = _recipe(tiny_bert_dir, pool_data, tmp_path / "ddp")
    (tmp_path / "recipe.json").write_text(recipe.model_dump_json())
    (tmp_path / "worker.py").write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(tmp_path / "worker.py"), str(tmp_path / "recipe.json"), str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["active"] == ranks[1]["active"] and ranks[0]["initial"] == ranks[1]["initial"]  # one shared state
    assert not set(ranks[0]["own_rows"]) & set(ranks[1]["own_rows"])  # each rank scored its own rows
    local = [r["local"][-1] for r in ranks]  # the step-3 event as each rank computed it, summed over ranks
    assert local[0]["rows"] == len(ranks[0]["own_rows"]) + len(ranks[1]["own_rows"]) == local[1]["rows"]
    assert ranks[0]["events"] and ranks[0]["events"][0]["mining/checked"] == local[0]["checked"]


# --- the easy rule (Conan's ratio, monotone for any sign) and the max_score bound ------------------------------------


def _fake_scores(miner, scores: dict[tuple[int, str], float]):
    """Replace the model's scoring by a table: (row, text) → score."""

    def score(name, pairs):
        return [np.array([scores[(r, t)] for t in texts], dtype=np.float32) for r, texts in pairs]

    miner.score = score


def test_easy_threshold_is_conans_rule_for_positive_scores_and_monotone_for_negative_ones():
    from hybridembed.mining.dynamic import easy_threshold, is_easy

    ratio = 1.15
    initial = np.array([-0.9, -0.5, -0.2, -0.01, 0.0, 0.01, 0.2, 0.5, 0.9])
    threshold = easy_threshold(initial, ratio)
    assert (threshold <= initial).all()  # an unchanged (or harder) negative is never easy, whatever its sign
    assert not is_easy(initial, initial, ratio, max_score=1.0).any()
    assert not is_easy(initial + 0.05, initial, ratio, max_score=1.0).any()
    assert np.all(np.diff(threshold) > 0)  # a higher activation score needs a higher score to stay hard
    positive = initial >= 0
    np.testing.assert_allclose(threshold[positive], initial[positive] / ratio)  # Conan: score × ratio < initial
    for init in initial[positive]:
        for score in np.linspace(-1, 1, 41):
            assert bool(is_easy(score, init, ratio, 1.0)) == bool(score * ratio < init)
    # the example of the issue: initial −0.2, now −0.2 (Conan's literal rule: −0.23 < −0.2, "easy")
    assert not is_easy(-0.2, -0.2, ratio, 1.0) and -0.2 * ratio < -0.2
    assert is_easy(-0.3, -0.2, ratio, 1.0) and not is_easy(-0.22, -0.2, ratio, 1.0)  # threshold −0.2261
    assert is_easy(-0.01, 0.0, ratio, 1.0) and not is_easy(0.0, 0.0, ratio, 1.0)
    assert is_easy(0.43, 0.5, ratio, 1.0) and not is_easy(0.44, 0.5, ratio, 1.0)  # 0.5 / 1.15 = 0.4348
    assert not is_easy(0.81, 0.95, ratio, max_score=0.8)  # not below max_score: not easy (Conan's "and is below 0.8")


def test_refresh_judges_negative_zero_and_positive_scores_by_the_monotone_rule(tiny_bert_dir, pool_data, tmp_path):
    from hybridembed.training.builder import prepare_training

    trainer = prepare_training(_recipe(tiny_bert_dir, pool_data, tmp_path / "out", init="lazy", ratio=1.15))
    miner = trainer.dynamic_miner
    table = miner.tables["pool"]
    cases = {  # row: (initial, now) of slot 0 and whether it is easy
        0: (-0.2, -0.2, False),  # unchanged negative score (Conan's literal rule calls it easy)
        1: (-0.2, -0.1, False),  # harder
        2: (-0.2, -0.3, True),  # easier
        3: (0.0, 0.0, False),
        4: (0.0, -0.05, True),
        5: (0.5, 0.44, False),  # 0.44 × 1.15 = 0.506 ≥ 0.5
        6: (0.5, 0.43, True),  # 0.43 × 1.15 = 0.4945 < 0.5
    }
    scores = {}
    for r, (initial, now, _) in cases.items():
        pool = table.pools[r]
        table.initial[r] = [initial, 0.0]
        scores.update({(r, pool[0]): now, (r, pool[1]): 0.0})
        scores.update({(r, t): now + 0.01 * (j + 1) for j, t in enumerate(pool[2:])})  # harder candidates exist
    _fake_scores(miner, scores)
    before = {r: table.active_texts(r) for r in cases}
    event = miner.refresh({"pool": list(cases)}, step=3)
    for r, (_, _, easy) in cases.items():
        assert (table.active_texts(r)[0] != before[r][0]) == easy, (r, cases[r])
        assert table.active_texts(r)[1] == before[r][1]
    assert event.easy == event.replaced == sum(easy for *_, easy in cases.values())


def test_max_score_bounds_every_negative_when_it_becomes_active(tiny_bert_dir, pool_data, tmp_path):
    """Replacements and initial negatives alike: nothing at or above max_score becomes (or stays, when avoidable) active."""
    from hybridembed.training.builder import prepare_training

    trainer = prepare_training(_recipe(tiny_bert_dir, pool_data, tmp_path / "out", init="lazy", max_score=0.8))
    miner = trainer.dynamic_miner
    table = miner.tables["pool"]
    p0, p1 = table.pools[0], table.pools[1]
    scores = {(0, t): 0.1 for t in p0} | {(1, t): 0.9 for t in p1}
    scores.update({(0, p0[0]): 0.9, (0, p0[1]): 0.5, (0, p0[2]): 0.95, (0, p0[3]): 0.7, (0, p0[4]): 0.6})
    scores.update({(1, p1[0]): 0.85, (1, p1[1]): 0.4})  # row 1: every candidate scores 0.9
    _fake_scores(miner, scores)

    # Activation (a row's first check; `init: start` takes the same path before step 1).
    event = miner.refresh({"pool": [0, 1]}, judge=False)
    assert table.active_texts(0) == [p0[3], p0[1]]  # 0.9 ≥ 0.8 swapped for the hardest candidate below 0.8 (not p0[2]: 0.95)
    assert table.initial[0].tolist() == pytest.approx([0.7, 0.5])
    assert table.used[0, 0] and table.used[0, 3] and not table.used[0, 2]
    assert table.active_texts(1) == [p1[0], p1[1]]  # no candidate below 0.8: the initial one stays
    assert table.initial[1].tolist() == pytest.approx([0.85, 0.4])
    assert event.initialized == 4 and event.guarded == 2 and event.guard_replaced == 1

    # A judged easy negative: the replacement must score below max_score (p0[2] = 0.95 never qualifies).
    scores.update({(0, p0[1]): 0.3, (1, p1[0]): 0.81, (1, p1[1]): 0.2})
    event = miner.refresh({"pool": [0, 1]}, step=3)
    assert table.active_texts(0) == [p0[3], p0[4]] and table.initial[0, 1] == pytest.approx(0.6)
    # row 1: slot 0 is below its threshold (0.85 / 1.02) but not below max_score, so not easy; slot 1 is easy,
    # and every unused candidate scores ≥ 0.8, so it stays (exhausted)
    assert table.active_texts(1) == [p1[0], p1[1]]
    assert event.checked == 4 and event.easy == 2 and event.replaced == 1 and event.exhausted == 1
    assert event.above_max_score == 1  # row 1, slot 0 (0.81)


def test_the_callback_warns_once_when_most_judged_negatives_sit_above_max_score(tiny_bert_dir, pool_data, tmp_path, caplog):
    from hybridembed.mining.dynamic import DynamicMiningCallback, MiningEvent
    from hybridembed.training.builder import prepare_training

    trainer = prepare_training(_recipe(tiny_bert_dir, pool_data, tmp_path / "out", max_score=0.8))
    callback = DynamicMiningCallback(trainer.dynamic_miner, trainer)
    with caplog.at_level("WARNING", logger="hybridembed.mining.dynamic"):
        callback._warn_if_bound_blocks(MiningEvent(checked=10, above_max_score=5, sum_before=8.0))  # half: no warning
        assert not caplog.records
        callback._warn_if_bound_blocks(MiningEvent(checked=10, above_max_score=6, sum_before=9.0))
        callback._warn_if_bound_blocks(MiningEvent(checked=10, above_max_score=9, sum_before=9.3))
    assert len(caplog.records) == 1
    assert "6 of 10 judged negatives score at or above max_score 0.80 (mean 0.900)" in caplog.records[0].getMessage()


# --- timing: the event runs before the first batch it covers is collated ---------------------------------------------


@pytest.mark.parametrize(("accumulation", "every"), [(1, 3), (2, 2)])
def test_the_batches_after_an_event_are_collated_with_its_replacements(tiny_bert_dir, pool_data, tmp_path, accumulation, every):
    """The loader collates ahead of training (accelerate looks one batch ahead; each step fetches its micro-batches).

    Every event must run before the batches it scored are collated: the batches of the step after
    its nominal step N (N = every, 2·every, …) get the post-event active negatives, and the event
    scores exactly the rows of the batches collated between it and the next event.
    """
    from transformers import TrainerCallback

    from hybridembed.training.builder import prepare_training

    recipe = _recipe(tiny_bert_dir, pool_data, tmp_path / "out", every_steps=every)
    recipe.training.gradient_accumulation_steps = accumulation
    trainer = prepare_training(recipe)
    miner, view = trainer.dynamic_miner, trainer.data_collator.views["pool"]
    table = miner.tables["pool"]
    log: list[tuple] = []  # ("batch", [(row, negatives), ...]) per collated batch; ("event", rows, after) per event

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, rows):
            log.append(("batch", []))
            return self.inner(rows)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    trainer.data_collator = Recording(trainer.data_collator)
    hook = view.active_negatives
    view.active_negatives = lambda row: (out := list(hook(row)), log[-1][1].append((row, tuple(out))))[0]
    refresh = miner.refresh

    def snapshot():
        return {r: tuple(table.active_texts(r)) for r in range(len(table.pools))}

    def recording_refresh(rows, step=0, judge=True, **kwargs):
        before = snapshot()
        event = refresh(rows, step=step, judge=judge, **kwargs)
        if judge:
            log.append(("event", set(rows.get("pool", [])), before, snapshot()))
        return event

    miner.refresh = recording_refresh

    class EverythingEasy(TrainerCallback):  # after the activation scores: every judged negative is easy
        def on_train_begin(self, args, state, control, **kwargs):
            table.initial[table.active >= 0] = 10.0

    trainer.add_callback(EverythingEasy())
    trainer.train()

    trained = len(trainer.step_tasks)  # batches that went through a training step
    assert trained == 6 * accumulation
    batches, events = [], []  # batches in collation order; events: (position of the first batch collated after it, rows, before, after)
    for entry in log:
        if entry[0] == "batch":
            batches.append(entry[1])
        else:
            events.append((len(batches), *entry[1:]))
    n_events = len(range(every, 6, every))
    assert len(events) == n_events
    per_epoch = len(trainer.task_sampler)
    steps_per_epoch = -(-per_epoch // accumulation)

    def batches_of_step(step):  # positions (in collation order) of the micro-batches of optimizer step `step` (1-based)
        epoch, within = divmod(step - 1, steps_per_epoch)
        return range(epoch * per_epoch + within * accumulation, epoch * per_epoch + min((within + 1) * accumulation, per_epoch))

    changed = 0
    for k, (first, scored, before, after) in enumerate(events):
        nominal = (k + 1) * every
        for p in batches_of_step(nominal + 1):
            assert p >= first, f"step {nominal + 1}'s batch {p} was collated before the event (first after it: {first})"
        # each batch collated after this event (and before the next) was scored by it and trains on its result
        last = min(events[k + 1][0] if k + 1 < len(events) else trained, trained)
        for p in range(first, last):
            for row, negatives in batches[p]:
                assert set(negatives) == set(after[row]), (p, row)
        # ... and the event scores the rows of exactly those batches (none already collated, none later)
        assert scored == {row for p in range(first, last) for row, _ in batches[p]}
        changed += sum(set(before[row]) != set(after[row]) for p in batches_of_step(nominal + 1) for row, _ in batches[p])
    assert changed > 0  # not vacuous: the first batch trained after an event's nominal step holds replaced negatives
