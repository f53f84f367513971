"""Dynamic hard-negative mining on the tiny model: Conan's replacement rule, logged events in training, state restored on resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import corpus_sentences


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
    from hybridembed.train import prepare_training

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
    from hybridembed.train import prepare_training

    out = tmp_path / "run"
    recipe = _recipe(tiny_bert_dir, pool_data, out)
    recipe.training.save_steps = 6
    trainer = prepare_training(recipe)
    view = trainer.data_collator.views["pool"]
    collated, active = [], view.active_negatives
    view.active_negatives = lambda row_id: collated.append(row_id) or active(row_id)
    trainer.train()
    sizes = [len(b) for b in trainer.dynamic_miner._epoch_batches(0)]
    # The event after step 3 scored exactly the rows the collator then fed to steps 4-6.
    assert set(collated[sum(sizes[:3]) : sum(sizes[:6])]) == set(trainer.dynamic_miner.upcoming_rows(3, 3)["pool"])
    events = [e for e in trainer.state.log_history if "mining/checked" in e]
    assert [e["step"] for e in events] == [3]  # every 3 steps, none after the last step
    assert events[0]["mining/checked"] > 0 and events[0]["mining/replaced"] > 0
    assert "mining/score_before" in events[0] and "mining/score_after" in events[0]
    assert events[0]["mining/score_after"] > events[0]["mining/score_before"]  # replacements are harder
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
    from hybridembed.train import prepare_training

    trainer = prepare_training(_recipe(tiny_bert_dir, pool_data, tmp_path / "o"))
    miner, sampler = trainer.dynamic_miner, trainer.task_sampler
    sampler.set_epoch(1)
    epoch1 = list(iter(sampler))
    steps = len(sampler)
    assert miner.upcoming_rows(steps + 2, 3) == {"pool": sorted({i for b in epoch1[2:5] for i in b})}
    assert sampler.epoch == 1  # the replay does not move the live sampler


WORKER = '''
import json, sys
import torch.distributed as dist
from hybridembed.recipe import Recipe
from hybridembed.train import prepare_training

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
json.dump(result, open(f"{sys.argv[2]}.rank{rank}.json", "w"))
'''


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
