"""Task weights survive gradient clipping: each step is clipped at max_grad_norm × its task weight."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from helpers import QUICKSTART


def _recipe(tmp_path: Path, backbone: Path, name: str, sts_weight: float, weighting: str) -> Path:
    recipe = {
        "model": {"backbone": str(backbone), "max_seq_length": 32},
        "datasets": [
            {"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts", "score_range": [0, 5], "max_samples": 48,
             "loss": {"name": "cosent", "weight": sts_weight}},
            {"path": str(QUICKSTART / "stsb_paraphrase_pairs.jsonl"), "task": "retrieval", "max_samples": 48},
        ],
        "training": {"output_dir": str(tmp_path / name), "batch_size": 8, "max_steps": 6, "report_to": [], "learning_rate": 1e-3,
                     "max_grad_norm": 0.001, "task_weighting": weighting, "logging_steps": 1},
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train(path: Path):
    from hybridembed.recipe import load_recipe
    from hybridembed.training.builder import prepare_training

    trainer = prepare_training(load_recipe(path))
    trainer.train()
    return trainer, torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


@pytest.mark.parametrize("weighting", ["loss", "step"])
def test_a_task_weight_changes_what_is_learned_only_when_clipping_comes_first(tmp_path, tiny_bert_dir, weighting):
    small, small_weights = _train(_recipe(tmp_path, tiny_bert_dir, "small", 0.04, weighting))
    full, full_weights = _train(_recipe(tmp_path, tiny_bert_dir, "full", 1.0, weighting))
    assert "sts" in small.step_tasks  # the STS dataset trained in these steps
    difference = float((small_weights - full_weights).abs().max())
    if weighting == "loss":
        # The stock order (weight, then clip) erases the weight: every clipped step has the same norm.
        assert difference < 1e-5  # float rounding of the two clip factors only
    else:
        assert difference > 1e-3, difference
        assert small.weighted_clipping is not None and small.args.max_grad_norm == 0.0
        # every weight 1: the bound is max_grad_norm itself, so the trainer's own clipping does it (one norm per step)
        assert full.weighted_clipping is None and full.args.max_grad_norm == 0.001


def test_the_clip_bound_is_the_sum_of_the_step_weights_averaged_over_micro_batches():
    from hybridembed.losses import CoSENTLoss
    from hybridembed.training.task_weighting import WeightedClipping, loss_weight

    clip = WeightedClipping(2.0)
    parameter = torch.nn.Parameter(torch.zeros(3))
    parameter.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5
    model = torch.nn.Module()
    model.p = parameter
    clip.add(0.04)
    clip.add(1.04)  # e.g. a CBB micro-batch whose ranks trained STS and retrieval
    clip.on_pre_optimizer_step(None, None, None, model=model)
    assert clip.last_bound == pytest.approx(2.0 * 0.54)
    assert float(parameter.grad.norm()) == pytest.approx(2.0 * 0.54, rel=1e-5)
    assert loss_weight(CoSENTLoss(None, weight=0.04)) == pytest.approx(0.04)


def test_loss_weight_looks_through_matryoshka_and_gradcache(tiny_bert_dir):
    from hybridembed.losses import build_loss
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import LossName, ModelConfig, loss_config
    from hybridembed.tasks import TaskType
    from hybridembed.training.task_weighting import loss_weight

    model = build_model(ModelConfig(backbone=str(tiny_bert_dir)))
    wrapped = build_loss(model, TaskType.STS, loss_config(LossName.COSENT), [64, 32], cache_minibatch_size=4, preset="piccolo2")
    assert loss_weight(wrapped) == pytest.approx(0.04)
