"""The training callback: a tiny sentence-transformers Trainer run logs eval/<task> to TensorBoard and writes the report."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from hybridembed.evaluation import EvalConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def suite_file(tmp_path) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(
        "tasks:\n  - {name: stsb, type: sts, path: " + str(REPO / "data/quickstart/stsb_dev.tsv") + ", max_samples: 40,\n"
        "     columns: {text1: sentence1, text2: sentence2, score: score}, score_range: [0, 5]}\n"
    )
    return path


def test_eval_config_validates_and_resolves(tmp_path):
    cfg = EvalConfig.model_validate({"suite": "suites/x.yaml", "every_steps": 50, "dims": [64, 32]})
    assert cfg.resolve(tmp_path).suite == tmp_path / "suites/x.yaml"
    with pytest.raises(ValueError, match="every_step"):
        EvalConfig.model_validate({"suite": "x.yaml", "every_step": 5})
    with pytest.raises(ValueError, match="greater than 0"):
        EvalConfig.model_validate({"suite": "x.yaml", "every_steps": 0})


def test_callback_in_a_tiny_trainer_logs_to_tensorboard_and_writes_report(tiny_model_dir, suite_file, tmp_path, monkeypatch):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    train = Dataset.from_dict({"anchor": [f"sentence number {i}" for i in range(24)], "positive": [f"number {i}" for i in range(24)]})
    out = tmp_path / "run"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(out / "tb"))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=5, per_device_train_batch_size=8, logging_steps=1, report_to=["tensorboard"],
        save_strategy="no", disable_tqdm=True, use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=MultipleNegativesRankingLoss(model))
    callback = EvalConfig(suite=suite_file, every_steps=2, dims=[64, 16]).build_callback(trainer)
    trainer.train()

    evals = [e for e in trainer.state.log_history if "eval/stsb" in e]
    assert [e["step"] for e in evals] == [2, 4, 5]  # every 2 steps and after the last one, never twice
    assert {"eval/stsb", "eval/stsb@16", "eval/overall", "eval/avg_sts"} <= set(evals[-1])
    report = json.loads((out / "eval" / "results.json").read_text())
    assert report["global_step"] == 5 and set(report["tasks"]["stsb"]["dims"]) == {"64", "16"}
    assert report["tasks"]["stsb"]["dims"]["64"]["main_score"] == pytest.approx(evals[-1]["eval/stsb"])
    assert (out / "eval" / "results.md").exists() and (out / "eval" / "results_dims.png").exists()
    history = [json.loads(line) for line in (out / "eval" / "eval_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4, 5] and callback.history == history

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert any(t.endswith("eval/stsb") for t in tags), tags
    tag = next(t for t in tags if t.endswith("eval/stsb"))
    assert [e.step for e in acc.Scalars(tag)] == [2, 4, 5]


def test_callback_evaluates_at_train_end_when_stopped_early(tiny_model_dir, suite_file, tmp_path):
    from transformers import TrainerControl, TrainerState

    from hybridembed.evaluation.callback import SuiteEvalCallback
    from hybridembed.model import load_model

    model = load_model(str(tiny_model_dir))
    model.train()
    logged = []
    fake_trainer = SimpleNamespace(log=logged.append, add_callback=lambda cb: None)
    callback = SuiteEvalCallback(suite_file, every_steps=10, out_dir=tmp_path / "rep").attach(fake_trainer)
    state, control, args = TrainerState(), TrainerControl(), SimpleNamespace(output_dir=str(tmp_path))
    state.max_steps = 100
    for step in range(1, 14):
        state.global_step = step
        callback.on_step_end(args, state, control, model=model)
    assert [entry["step"] for entry in callback.history] == [10]
    callback.on_train_end(args, state, control, model=model)  # stopped at 13 of 100
    assert [entry["step"] for entry in callback.history] == [10, 13]
    assert len(logged) == 2 and "eval/stsb" in logged[0]
    assert model.training  # evaluation put the model back into training mode
    assert json.loads((tmp_path / "rep" / "results.json").read_text())["global_step"] == 13
