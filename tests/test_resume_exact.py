"""Exact resume: a run SIGKILLed twice at random moments after its checkpoints and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import QUICKSTART

MAX_STEPS = 60
SAVE_STEPS = 8


def _recipe(tmp_path: Path, backbone: Path, out: Path) -> Path:
    """Quickstart's four datasets and loss routing (projection, Matryoshka) on the tiny BERT, crossing an epoch boundary."""
    recipe = {
        "model": {"backbone": str(backbone), "projection_dim": 96, "matryoshka_dims": [96, 64, 32], "max_seq_length": 32},
        "datasets": [
            {"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts", "score_range": [0, 5], "max_samples": 48},
            {"path": str(QUICKSTART / "stsb_paraphrase_pairs.jsonl"), "task": "retrieval", "max_samples": 48},
            {"path": str(QUICKSTART / "flagembedding_retrieval.jsonl"), "task": "retrieval", "num_negatives": 3, "batch_size": 4},
            {"path": str(QUICKSTART / "banking77_train.csv"), "task": "classification", "max_samples": 64, "num_negatives": 5},
        ],
        "training": {"output_dir": str(out), "batch_size": 8, "max_steps": MAX_STEPS, "save_steps": SAVE_STEPS, "save_total_limit": 2,
                     "learning_rate": 1e-3, "warmup_ratio": 0.1, "logging_steps": 5, "report_to": [], "seed": 42},
    }  # fmt: skip
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _launch(recipe: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hybridembed.cli", "train", str(recipe), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def _steps_saved(out: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))


def _kill_after_a_checkpoint_newer_than(process: subprocess.Popen, out: Path, newer_than: int, rng: random.Random) -> int:
    """Wait for a checkpoint past `newer_than`, then SIGKILL at a random moment (possibly mid-save of the next one)."""
    deadline = time.time() + 300
    while not [s for s in _steps_saved(out) if s > newer_than] and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.6))
    process.kill()
    process.wait()
    assert not (out / "hybridembed.json").exists(), "the run finished before it could be killed"
    return max(_steps_saved(out))


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    weights = {}
    for file in sorted(folder.rglob("*.safetensors")):
        if "checkpoint-" in str(file.relative_to(folder)):
            continue
        for name, value in load_file(str(file)).items():
            weights[f"{file.relative_to(folder)}:{name}"] = value
    return weights


@pytest.mark.timeout(900)
def test_killed_twice_and_resumed_run_ends_with_the_uninterrupted_weights(tmp_path, tiny_bert_dir):
    seed = int(os.environ.get("RESUME_TEST_SEED", random.randrange(1 << 16)))
    rng = random.Random(seed)
    print(f"kill moments drawn with RESUME_TEST_SEED={seed}")
    reference_out, resumed_out = tmp_path / "reference", tmp_path / "resumed"
    reference = _launch(_recipe(tmp_path, tiny_bert_dir, reference_out))
    interrupted = _launch(_recipe(tmp_path, tiny_bert_dir, resumed_out))
    first = _kill_after_a_checkpoint_newer_than(interrupted, resumed_out, 0, rng)
    second_run = _launch(_recipe(tmp_path, tiny_bert_dir, resumed_out), "--resume")
    second = _kill_after_a_checkpoint_newer_than(second_run, resumed_out, first, rng)
    assert first < second < MAX_STEPS
    final = _launch(_recipe(tmp_path, tiny_bert_dir, resumed_out), "--resume")
    _, final_err = final.communicate(timeout=600)
    assert final.returncode == 0, final_err[-3000:]
    assert f"checkpoint-{second}" in final_err.split("resuming from checkpoint ")[1].split()[0]
    _, reference_err = reference.communicate(timeout=600)
    assert reference.returncode == 0, reference_err[-3000:]
    want, got = _weights(reference_out), _weights(resumed_out)
    assert want.keys() == got.keys() and want
    worst = max(float(np.abs(want[k].astype(np.float64) - got[k]).max()) for k in want)
    # Two uninterrupted runs here differ by ~2e-6 (floating-point noise); a different draw moves weights by ~1e-3.
    assert worst < 1e-5, f"max |weight difference| {worst:.2e} (RESUME_TEST_SEED={seed}, killed after steps {first} and {second})"


def test_resume_skips_a_checkpoint_torn_by_the_kill(tmp_path):
    from hybridembed.model_folder import last_complete_checkpoint

    for step, state in ((8, '{"global_step": 8}'), (16, '{"global_st'), (24, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
    assert last_complete_checkpoint(tmp_path / "absent") is None
