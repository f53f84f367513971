"""Two-process tests (torchrun, gloo on CPU): gathered InfoNCE equals one process, CBB schedules, checkpoint/kill/resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import WORKERS, free_port, kill_tree, torchrun


@pytest.mark.parametrize(("negatives", "sizes"), [(0, "4,4"), (2, "4,4"), (3, "5,3")])
def test_gathered_infonce_matches_one_process_on_the_concatenated_batch(tmp_path, negatives, sizes):
    out = tmp_path / "result.json"
    result = torchrun(str(WORKERS / "gather_equivalence.py"), str(out), str(negatives), sizes)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    ranks = sorted(data["ranks"], key=lambda r: r["rank"])
    rows = np.array([r["rows"] for r in ranks], dtype=float)
    # Each rank's loss is the mean over its own queries: weighted by rows they give the global mean.
    assert np.dot(rows, [r["loss"] for r in ranks]) / rows.sum() == pytest.approx(data["single_loss"], abs=1e-5)
    if rows[0] != rows[1]:
        return  # uneven shards: the loss check above is what pins the per-rank label offsets
    # After the gather's summed backward each rank holds world × the one-process gradient of its rows;
    # DDP's averaging over the 2 ranks turns that into exactly the one-process gradient.
    start = 0
    for rank in ranks:
        stop = start + rank["rows"]
        for key in ("grad_q", "grad_p"):
            np.testing.assert_allclose(np.array(rank[key]) / 2, np.array(data["single_" + key])[start:stop], atol=1e-5)
        for j in range(negatives):
            np.testing.assert_allclose(np.array(rank["grad_n"][j]) / 2, np.array(data["single_grad_n"][j])[start:stop], atol=1e-5)
        start = stop


def _recipe(tmp_path: Path, backbone: Path, strategy: str, **training) -> Path:
    import yaml

    from helpers import QUICKSTART

    recipe = {
        "model": {"backbone": str(backbone), "max_seq_length": 32},
        "datasets": [
            {"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts", "max_samples": 96},
            {"path": str(QUICKSTART / "stsb_paraphrase_pairs.jsonl"), "task": "retrieval", "max_samples": 96},
            {"path": str(QUICKSTART / "banking77_train.csv"), "task": "classification", "max_samples": 192, "num_negatives": 4},
        ],
        "sampling": {"strategy": strategy},
        "training": {"output_dir": str(tmp_path / "out"), "batch_size": 8, "max_steps": 12, "report_to": [], "logging_steps": 4, **training},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _rank_logs(prefix: Path) -> list[dict]:
    return [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in range(2)]


def test_cbb_gives_the_ranks_different_tasks_every_step_in_weighted_shares(tmp_path, tiny_bert_dir):
    result = torchrun(str(WORKERS / "train_worker.py"), str(_recipe(tmp_path, tiny_bert_dir, "cbb")), str(tmp_path / "log"))
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (log["step_tasks"] for log in _rank_logs(tmp_path / "log"))
    assert len(rank0) == len(rank1) == 12
    assert all(a != b for a, b in zip(rank0, rank1))
    counts = {t: rank0.count(t) + rank1.count(t) for t in ("sts", "retrieval", "classification")}
    # Batches per epoch: sts 12, retrieval 12, classification 24 → shares 1/4, 1/4, 1/2 of 24 rank-steps.
    assert counts == {"sts": 6, "retrieval": 6, "classification": 12}


def test_synchronized_ranks_train_the_same_task_each_step(tmp_path, tiny_bert_dir):
    result = torchrun(str(WORKERS / "train_worker.py"), str(_recipe(tmp_path, tiny_bert_dir, "synchronized")), str(tmp_path / "log"))
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (log["step_tasks"] for log in _rank_logs(tmp_path / "log"))
    assert rank0 == rank1 and len(set(rank0)) > 1


def test_sparse_embedding_backward_trains_the_same_weights_under_ddp(tmp_path, tiny_bert_dir):
    import torch

    weights = {}
    for sparse in (True, False):
        folder = tmp_path / str(sparse)
        folder.mkdir()
        # chunks of 4 rows: every step embeds its texts in several forwards, each adding its rows to the one gradient
        recipe = _recipe(folder, tiny_bert_dir, "synchronized", max_steps=4, forward_chunk_rows=4, learning_rate=1e-3, sparse_embedding_backward=sparse)
        result = torchrun(str(WORKERS / "train_worker.py"), str(recipe), str(folder / "log"))
        assert result.returncode == 0, result.stderr[-3000:]
        weights[sparse] = [torch.load(folder / f"log.rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(weights[True][0], weights[True][1], rtol=0, atol=0)  # DDP kept the ranks equal
    # and averaged the same gradient. The two paths sum a row's chunk gradients in different orders, and AdamW divides
    # each update by the gradient's own scale: where a row's contributions nearly cancel, fp32 reordering moves that
    # element by a visible fraction of one step (CI once saw 1.9e-6 at lr 1e-3). A dropped or double-counted chunk moves
    # whole rows by about lr per step, so 1% of one step's lr still separates the two.
    torch.testing.assert_close(weights[True][0], weights[False][0], rtol=0, atol=1e-2 * 1e-3)
    close = (weights[True][0] - weights[False][0]).abs() <= 1e-6
    assert close.float().mean() > 0.999  # and nearly every element agrees to fp32 reordering noise
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    untrained = build_model(ModelConfig(backbone=str(tiny_bert_dir)))[0].auto_model.get_input_embeddings().weight.detach()
    assert (weights[True][0] - untrained).abs().max() > 1e-3  # the rows trained: far more than the tolerance above


def test_two_process_run_checkpoints_is_killed_resumes_and_finishes(tmp_path, tiny_bert_dir):
    import time

    recipe = _recipe(tmp_path, tiny_bert_dir, "synchronized", save_steps=3, max_steps=100, save_total_limit=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "hybridembed.cli", "train", str(recipe)]  # fmt: skip
    process = subprocess.Popen(launch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not list((tmp_path / "out").glob("checkpoint-*/trainer_state.json")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    kill_tree(process.pid)
    process.wait()
    assert list((tmp_path / "out").glob("checkpoint-*/trainer_state.json")), "no checkpoint was written before the kill"
    assert not (tmp_path / "out" / "hybridembed.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run([*launch[:6], str(free_port()), *launch[7:], "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_from = int(resumed.stderr.split("resuming from checkpoint ")[1].split("checkpoint-")[1].split()[0])
    assert 3 <= resumed_from < 100
    meta = json.loads((tmp_path / "out" / "hybridembed.json").read_text())
    assert meta["global_step"] == 100


def test_a_finished_run_leaves_after_its_threads_and_atexit_handlers_and_without_teardown(tmp_path):
    out = tmp_path / "finish"
    result = torchrun(str(WORKERS / "finish_worker.py"), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"finish.rank{rank}.thread").read_text() == "done"  # non-daemon threads joined first
        assert (tmp_path / f"finish.rank{rank}.atexit").read_text() == "3.0"  # the atexit handlers ran
        assert not (tmp_path / f"finish.rank{rank}.after").exists()  # and the process left there
    assert "rank 0 finishing" in result.stdout and "rank 1 finishing" in result.stdout  # stdio flushed


def test_finishing_outside_a_multi_process_run_is_a_no_op():
    from hybridembed.distributed import finish_distributed_run

    assert finish_distributed_run(0) is None  # no process group: returns, the caller goes on
