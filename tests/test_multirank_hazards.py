"""Multi-rank hazards (issue 11): LoRA on unused modules, rank 0's evaluation vs. the other ranks' collectives, epochs with gradient accumulation, the MLM stage under torchrun."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import QUICKSTART, WORKERS, torchrun

TEXTS = ["a man plays a guitar on the street", "a dog", "two women are cooking dinner together tonight"]


# --- 11a: LoRA all-linear must not target the frozen, unused BERT pooler -----------------------------


def test_lora_all_linear_on_bert_leaves_the_pooler_alone_and_every_trainable_parameter_gets_a_gradient(tiny_bert_dir, tmp_path):
    pytest.importorskip("peft")
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    model = build_model(ModelConfig(backbone=str(tiny_bert_dir), pooling="mean", lora={"r": 4, "alpha": 8, "dropout": 0.0}))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not [n for n in trainable if ".pooler." in n], "LoRA adapters on the unused pooler: DDP (find_unused_parameters=False) fails"
    assert any(".attention." in n for n in trainable) and any(".intermediate." in n for n in trainable)  # still all-linear elsewhere
    for name, param in trainable.items():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)  # lora_B starts at zero, which would give lora_A a zero gradient
    features = model.tokenize(TEXTS)
    model(features)["sentence_embedding"].pow(2).sum().backward()
    assert [n for n, p in trainable.items() if p.grad is None] == []
    # The exclusion is saved with the adapter, and the folder loads back to the same model.
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model.save(str(tmp_path / "adapter"))
    with torch.no_grad():
        expected = model.encode(TEXTS)
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "adapter"), device="cpu").encode(TEXTS), expected, atol=1e-5)


# --- 11b: rank 0 evaluates while the other ranks wait at a barrier; training.ddp_timeout -------------


def _recipe(tmp_path: Path, backbone: Path, *, stages=None, eval_=None, max_samples=96, **training) -> Path:
    import yaml

    recipe = {
        "model": {"backbone": str(backbone), "max_seq_length": 32},
        "datasets": [
            {"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts", "max_samples": max_samples},
            {"path": str(QUICKSTART / "stsb_paraphrase_pairs.jsonl"), "task": "retrieval", "max_samples": max_samples},
        ],
        "training": {"output_dir": str(tmp_path / "out"), "batch_size": 8, "max_steps": 4, "report_to": [], "logging_steps": 1, **training},
    }  # fmt: skip
    if stages is not None:
        recipe["stages"] = stages
    if eval_ is not None:
        recipe["eval"] = eval_
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_ddp_timeout_reaches_the_training_arguments_of_both_trainers(tmp_path, tiny_bert_dir):
    from hybridembed.recipe import TrainingConfig, load_recipe
    from hybridembed.training.builder import training_arguments
    from hybridembed.training.mlm import _mlm_arguments

    assert TrainingConfig().ddp_timeout == 1800  # transformers' own default, documented in docs/distributed.md
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir), overrides={"training.ddp_timeout": 45})
    assert training_arguments(recipe).ddp_timeout == 45
    assert _mlm_arguments(recipe.training).ddp_timeout == 45


def test_slow_rank0_evaluation_does_not_time_out_the_other_rank(tmp_path, tiny_bert_dir):
    """ddp_timeout 10 s, rank 0's first evaluation takes 20 s: without the barrier rank 1 would give up in its next collective."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "tasks:\n  - {name: stsb, type: sts, path: " + str(QUICKSTART / "stsb_dev.tsv") + ", max_samples: 24,\n"
        "     columns: {text1: sentence1, text2: sentence2, score: score}, score_range: [0, 5]}\n"
    )
    recipe = _recipe(tmp_path, tiny_bert_dir, ddp_timeout=10, eval_={"suite": str(suite), "every_steps": 2})
    result = torchrun(str(WORKERS / "slow_eval_worker.py"), str(recipe), str(tmp_path / "log"), SLOW_EVAL_SECONDS="20")
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"log.rank{r}.json").read_text()) for r in range(2))
    assert rank0["ddp_timeout"] == rank1["ddp_timeout"] == 10
    assert rank0["slept"] == [20.0] and rank0["evaluated"] == [2, 4] and rank1["evaluated"] == []
    assert rank0["waits"] == rank1["waits"] == 2  # every rank passed the barrier at both evaluations
    assert rank0["global_step"] == rank1["global_step"] == 4


# --- 11c: the gather groups cover every epoch the trainer runs, with gradient accumulation ----------


def test_gather_groups_cover_all_trained_epochs_with_gradient_accumulation(tmp_path, tiny_bert_dir, monkeypatch):
    import hybridembed.training.builder as train
    from hybridembed.recipe import load_recipe
    from hybridembed.training.sampling import TaskBatchSampler

    covered: list[int] = []
    real_sharing_ranks = TaskBatchSampler.sharing_ranks
    monkeypatch.setattr(TaskBatchSampler, "sharing_ranks", lambda self, epochs: covered.append(epochs) or real_sharing_ranks(self, epochs))
    # 6 batches per epoch, 4 per optimizer step → 2 steps per epoch; 5 steps run 3 epochs (the old count said 1).
    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, max_steps=5, gradient_accumulation_steps=4, logging_steps=100, max_samples=24))
    with monkeypatch.context() as m:
        m.setattr(train, "is_distributed", lambda: True)  # take the multi-process branch of prepare_training only
        trainer = train.prepare_training(recipe)
    assert len(trainer.task_sampler) == 6
    trainer.train()
    assert trainer.state.global_step == 5
    trained_epochs = math.ceil(trainer.state.epoch - 1e-9)
    assert trained_epochs == 3 and covered == [3]


# --- 11d: the mlm stage trains as one process group under CPU torchrun ------------------------------


def test_mlm_stage_training_arguments_use_cpu_and_gloo_under_cpu_torchrun(tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformerTrainingArguments
    from transformers import TrainingArguments

    from hybridembed.recipe import TrainingConfig
    from hybridembed.training.mlm import _mlm_arguments

    # With WORLD_SIZE=2, __post_init__ would set up the process group right away; the fields are what matters here.
    monkeypatch.setattr(TrainingArguments, "__post_init__", lambda self: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK"):  # not under torchrun: no process group is set up here
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = _mlm_arguments(TrainingConfig(output_dir=str(tmp_path), report_to=[], ddp_timeout=99))
    assert isinstance(args, TrainingArguments) and not isinstance(args, SentenceTransformerTrainingArguments)  # a plain Trainer's
    assert args.use_cpu is True and args.ddp_backend == "gloo" and args.ddp_timeout == 99
    assert args.deepspeed is None and args.ddp_find_unused_parameters is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _mlm_arguments(TrainingConfig(output_dir=str(tmp_path), report_to=[])).ddp_backend is None


def test_two_process_mlm_stage_trains_as_one_gloo_group(tmp_path, tiny_bert_dir):
    stages = [{"kind": "mlm", "texts": [{"path": str(QUICKSTART / "stsb_dev.tsv"), "text_fields": ["sentence1"], "max_samples": 64}]}]
    recipe = _recipe(tmp_path, tiny_bert_dir, stages=stages, max_steps=2)
    result = torchrun(str(WORKERS / "mlm_worker.py"), str(recipe), str(tmp_path / "log"))
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(p.read_text()) for p in tmp_path.glob("log.pid*.json")]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert all(r["initialized"] and r["world"] == 2 and r["backend"] == "gloo" for r in reports)
