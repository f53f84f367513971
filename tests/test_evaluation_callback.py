"""Evaluation during training through the trainer's own evaluate(): logs, TensorBoard, the final evaluation, best checkpoint, early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hybridembed.evaluation import EvalConfig
from hybridembed.evaluation.callback import build_eval_callbacks, eval_training_arguments
from hybridembed.evaluation.evaluator import build_evaluator

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "data" / "quickstart"


@pytest.fixture
def suite_file(tmp_path) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(
        "tasks:\n  - {name: stsb, type: sts, path: " + str(QUICKSTART / "stsb_dev.tsv") + ", max_samples: 40,\n"
        "     columns: {text1: sentence1, text2: sentence2, score: score}, score_range: [0, 5]}\n"
    )
    return path


def test_eval_config_validates_and_resolves(tmp_path, suite_file):
    cfg = EvalConfig.model_validate({"suite": "suites/x.yaml", "every_steps": 50, "dims": [64, 32]})
    assert cfg.resolve(tmp_path).suite == tmp_path / "suites/x.yaml"
    with pytest.raises(ValueError, match="every_step"):
        EvalConfig.model_validate({"suite": "x.yaml", "every_step": 5})
    with pytest.raises(ValueError, match="greater than 0"):
        EvalConfig.model_validate({"suite": "x.yaml", "every_steps": 0})
    with pytest.raises(ValueError, match="set every_steps"):
        EvalConfig.model_validate({"suite": "x.yaml", "keep_best": True})
    from hybridembed.evaluation.suite import SuiteError

    with pytest.raises(SuiteError, match="eval.metric 'stsb@32'.*stsb@16"):
        build_evaluator(EvalConfig(suite=suite_file, every_steps=2, dims=[64, 16], metric="stsb@32"))
    assert build_evaluator(EvalConfig(suite=suite_file, every_steps=2, dims=[64, 16], metric="avg_sts")).primary_metric == "avg_sts"


def test_keep_best_needs_save_steps_that_are_multiples_of_every_steps(tmp_path, suite_file):
    from hybridembed.errors import RecipeError
    from hybridembed.recipe import recipe_from_mapping

    raw = {"datasets": [{"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts"}],
           "training": {"save_steps": 3}, "eval": {"suite": str(suite_file), "every_steps": 2, "keep_best": True}}  # fmt: skip
    with pytest.raises(RecipeError, match="save_steps 3 must be a multiple of eval.every_steps 2"):
        recipe_from_mapping(raw, tmp_path)
    raw["training"]["save_steps"] = 4
    args = eval_training_arguments(recipe_from_mapping(raw, tmp_path).eval, 4)
    assert args["load_best_model_at_end"] and args["save_steps"] == 4 and args["eval_steps"] == 2 and args["metric_for_best_model"] == "overall"


def test_a_tiny_stock_trainer_evaluates_every_n_steps_and_at_the_end_logs_to_tensorboard_and_writes_the_report(
    tiny_model_dir, suite_file, tmp_path, monkeypatch
):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    train = Dataset.from_dict({"anchor": [f"sentence number {i}" for i in range(24)], "positive": [f"number {i}" for i in range(24)]})
    out = tmp_path / "run"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(out / "tb"))
    cfg = EvalConfig(suite=suite_file, every_steps=2, dims=[64, 16])
    evaluator = build_evaluator(cfg)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=5, per_device_train_batch_size=8, logging_steps=1, report_to=["tensorboard"],
        save_strategy="no", disable_tqdm=True, use_cpu=True, **eval_training_arguments(cfg, None),
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=MultipleNegativesRankingLoss(model),
                                         evaluator=evaluator, callbacks=build_eval_callbacks(cfg, evaluator))  # fmt: skip
    trainer.train()

    evals = [e for e in trainer.state.log_history if "eval_stsb" in e]
    assert [e["step"] for e in evals] == [2, 4, 5]  # every 2 steps and after the last one, never twice
    assert {"eval_stsb", "eval_stsb@16", "eval_overall", "eval_avg_sts"} <= set(evals[-1])
    report = json.loads((out / "eval" / "results.json").read_text())
    assert report["global_step"] == 5 and set(report["tasks"]["stsb"]["dims"]) == {"64", "16"}
    assert report["selected"] == {"step": 5, "why": "last", "metric": "overall", "last_step": 5}
    assert report["tasks"]["stsb"]["dims"]["64"]["main_score"] == pytest.approx(evals[-1]["eval_stsb"])
    assert (out / "eval" / "results.md").exists() and (out / "eval" / "results_dims.png").exists()
    history = [json.loads(line) for line in (out / "eval" / "eval_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4, 5] and evaluator.history == history
    assert model.training is False or model.training is True  # evaluate() leaves the mode to the trainer

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    tag = next(t for t in tags if t.endswith("eval/stsb"))
    assert [e.step for e in acc.Scalars(tag)] == [2, 4, 5]


def _recipe(tmp_path: Path, backbone: Path, suite: Path, eval_: dict, **training) -> dict:
    return {
        "model": {"backbone": str(backbone), "max_seq_length": 32},
        "datasets": [{"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts", "score_range": [0, 5], "max_samples": 64}],
        "training": {"output_dir": str(tmp_path / "out"), "batch_size": 8, "logging_steps": 1, "report_to": [], "learning_rate": 2e-3, **training},
        "eval": {"suite": str(suite), **eval_},
    }


def test_keep_best_saves_the_best_evaluated_steps_weights_and_says_so(tmp_path, tiny_bert_dir, suite_file):
    """A learning rate high enough that the score moves; the folder must hold the best step's weights, whichever it is."""
    from sentence_transformers import SentenceTransformer

    from hybridembed.recipe import recipe_from_mapping
    from hybridembed.training.stages import run_recipe

    recipe = recipe_from_mapping(_recipe(tmp_path, tiny_bert_dir, suite_file, {"every_steps": 2, "keep_best": True, "metric": "stsb"},
                                         max_steps=8, save_total_limit=1), tmp_path)  # fmt: skip
    out = run_recipe(recipe).folder
    history = [json.loads(line) for line in (out / "eval" / "eval_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    best = max(history, key=lambda h: h["stsb"])
    report = json.loads((out / "eval" / "results.json").read_text())
    assert report["selected"]["step"] == best["step"] and report["selected"]["why"] == "best"
    assert json.loads((out / "hybridembed.json").read_text())["best_checkpoint"] == {
        "step": best["step"],
        "metric": "stsb",
        "value": pytest.approx(best["stsb"]),
    }
    assert "best" in (out / "README.md").read_text().lower() and f"step {best['step']}" in (out / "README.md").read_text()
    # The saved weights are the best checkpoint's: re-scoring the folder gives the best step's score.
    from hybridembed.evaluation.runner import run_suite

    rescored = run_suite(SentenceTransformer(str(out), device="cpu"), suite_file, show_progress=False)
    assert rescored["tasks"]["stsb"]["dims"][rescored["dims"][0]]["main_score"] == pytest.approx(best["stsb"], abs=1e-6)
    assert len({round(h["stsb"], 6) for h in history}) > 1  # the scores did move, so "best" was a real choice


def test_early_stopping_ends_training_after_patience_evaluations_without_gain(tmp_path, tiny_bert_dir, suite_file):
    from hybridembed.recipe import recipe_from_mapping
    from hybridembed.training.builder import prepare_training

    # A threshold no score can beat: every evaluation after the first counts as no improvement.
    eval_ = {"every_steps": 1, "keep_best": True, "early_stopping_patience": 2, "early_stopping_threshold": 10.0}
    trainer = prepare_training(recipe_from_mapping(_recipe(tmp_path, tiny_bert_dir, suite_file, eval_, max_steps=20), tmp_path))
    trainer.train()
    assert trainer.state.global_step == 3  # step 1 sets the best, steps 2 and 3 fail to beat it by 10
    evaluator = trainer.evaluator
    best = max(evaluator.history, key=lambda h: h["overall"])  # the best is the plain maximum; the threshold only gates patience
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
    assert np.isclose(trainer.state.best_metric, best["overall"])
