"""Training through the recipe and CLI on tiny random backbones: model folder, routing, resume, Piccolo data, decoders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from helpers import QUICKSTART


def _recipe(tmp_path: Path, backbone: Path, **training) -> Path:
    recipe = {
        "model": {"backbone": str(backbone), "projection_dim": 96, "matryoshka_dims": [96, 64, 32], "max_seq_length": 48},
        "datasets": [
            {"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts", "score_range": [0, 5], "max_samples": 64},
            {"path": str(QUICKSTART / "stsb_paraphrase_pairs.jsonl"), "task": "retrieval", "max_samples": 64},
            {"path": str(QUICKSTART / "flagembedding_retrieval.jsonl"), "task": "retrieval", "num_negatives": 2, "batch_size": 4},
            {"path": str(QUICKSTART / "banking77_train.csv"), "task": "classification", "max_samples": 64, "num_negatives": 5},
        ],
        "training": {"output_dir": str(tmp_path / "out"), "batch_size": 8, "max_steps": 6, "logging_steps": 1, "report_to": [], "learning_rate": 1e-3, **training},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user would (one run per test keeps the suite fast)."""
    return subprocess.run([sys.executable, "-m", "hybridembed.cli", *args], capture_output=True, text=True)


def _cli_inprocess(capsys, *args: str) -> tuple[int, str, str]:
    from hybridembed.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]


def test_train_cli_writes_a_sentence_transformers_folder_with_projection(tmp_path, tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    result = _cli("train", str(_recipe(tmp_path, tiny_bert_dir)), "--max-steps", "8", "--seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    modules = [m["type"] for m in json.loads((out / "modules.json").read_text())]
    assert any("Dense" in m for m in modules) and any("Normalize" in m for m in modules)
    dense_config = json.loads(next(out.glob("*_Dense/config.json")).read_text())
    assert dense_config["out_features"] == 96 and "Identity" in dense_config["activation_function"]
    model = SentenceTransformer(str(out))
    embeddings = model.encode(["a man plays a guitar", "a woman is cooking"])
    assert embeddings.shape == (2, 96)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    meta = json.loads((out / "hybridembed.json").read_text())
    assert meta["matryoshka_dims"] == [96, 64, 32] and meta["global_step"] == 8
    assert sum(meta["task_batches"].values()) == 8 and set(meta["task_batches"]) <= {"sts", "retrieval", "classification"}
    logged = {k for entry in _log(out) for k in entry if k.startswith("loss_")}
    assert logged and logged <= {"loss_sts", "loss_retrieval", "loss_classification"}
    assert yaml.safe_load((out / "recipe.yaml").read_text())["model"]["projection_dim"] == 96


def test_training_changes_the_weights_and_lowers_the_loss(tmp_path, tiny_bert_dir):
    from hybridembed.recipe import load_recipe
    from hybridembed.training.builder import prepare_training

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, max_steps=30))
    recipe.datasets = recipe.datasets[1:2]  # one retrieval dataset: the loss curve is comparable step to step
    trainer = prepare_training(recipe)
    before = next(trainer.model.parameters()).detach().clone()
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert not np.allclose(before, next(trainer.model.parameters()).detach())
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_bad_data_fails_before_training_with_file_line(tmp_path, tiny_bert_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n{"query": "q2", "positive": ""}\n')
    recipe = yaml.safe_load(_recipe(tmp_path, tiny_bert_dir).read_text())
    recipe["datasets"].append({"path": str(bad), "task": "retrieval"})
    path = tmp_path / "bad_recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = _cli_inprocess(capsys, "train", str(path))
    assert code == 2
    assert f"{bad}:2: positive: " in err
    assert not (tmp_path / "out").exists()


def test_unknown_recipe_key_is_an_error_naming_it(tmp_path, tiny_bert_dir, capsys):
    recipe = yaml.safe_load(_recipe(tmp_path, tiny_bert_dir).read_text())
    recipe["training"]["learning_rat"] = 1.0
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = _cli_inprocess(capsys, "train", str(path))
    assert code == 2 and "training.learning_rat: unknown key" in err


def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_bert_dir):
    recipe = _recipe(tmp_path, tiny_bert_dir, save_steps=3)
    first = _cli("train", str(recipe), "--max-steps", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    assert (tmp_path / "out" / "checkpoint-3").is_dir()
    second = _cli("train", str(recipe), "--max-steps", "5", "--resume")
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming from checkpoint {tmp_path / 'out' / 'checkpoint-3'}" in second.stderr
    steps = [e["step"] for e in _log(tmp_path / "out") if "loss" in e]
    assert steps == [1, 2, 3, 4, 5]  # 1-3 restored from the checkpoint's history, 4-5 trained now


def test_piccolo_example_trains_without_conversion(tmp_path, tiny_bert_dir, shared_data):
    recipe = {
        "model": {"backbone": str(tiny_bert_dir), "max_seq_length": 64},
        "datasets": [{"path": str(shared_data / "piccolo_example" / f"{n}.dataset"), "num_negatives": 3} for n in ("retri", "sts", "cls")],
        "training": {"output_dir": str(tmp_path / "picc"), "batch_size": 8, "max_steps": 4, "report_to": []},
    }
    path = tmp_path / "piccolo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = _cli("train", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((tmp_path / "picc" / "hybridembed.json").read_text())
    assert {d["task"] for d in meta["datasets"]} == {"retrieval", "sts", "classification"}


def test_decoder_backbone_with_last_token_pooling_trains(tmp_path, tiny_decoder_dir):
    from sentence_transformers import SentenceTransformer

    recipe = yaml.safe_load(_recipe(tmp_path, tiny_decoder_dir, max_steps=2).read_text())
    recipe["model"] = {"backbone": str(tiny_decoder_dir), "pooling": "last", "max_seq_length": 48}
    path = tmp_path / "decoder.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = _cli("train", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    model = SentenceTransformer(str(tmp_path / "out"))
    assert model.encode(["short", "a somewhat longer sentence here"]).shape == (2, 64)


def test_encode_cli_truncates_and_renormalizes(tmp_path, tiny_model_dir, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("a man plays a guitar\na woman is cooking\n")
    full, short = tmp_path / "full.npy", tmp_path / "short.npy"
    assert _cli_inprocess(capsys, "encode", str(tiny_model_dir), "--input", str(texts), "--output", str(full))[0] == 0
    assert _cli_inprocess(capsys, "encode", str(tiny_model_dir), "--input", str(texts), "--output", str(short), "--dim", "16")[0] == 0
    a, b = np.load(full), np.load(short)
    assert b.shape == (2, 16)
    np.testing.assert_allclose(b, a[:, :16] / np.linalg.norm(a[:, :16], axis=1, keepdims=True), atol=1e-6)
    assert _cli_inprocess(capsys, "encode", str(tiny_model_dir), "--input", str(texts), "--output", str(short), "--dim", "999")[0] == 2


def test_recipe_eval_section_runs_the_suite_during_training_and_writes_the_report(tmp_path, tiny_bert_dir):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "tasks": [
                    {
                        "name": "stsb-dev",
                        "type": "sts",
                        "path": str(QUICKSTART / "stsb_dev.tsv"),
                        "max_samples": 200,
                        "columns": {"text1": "sentence1", "text2": "sentence2", "score": "score"},
                    }
                ]
            }
        )  # fmt: skip
    )
    recipe = yaml.safe_load(_recipe(tmp_path, tiny_bert_dir, max_steps=4).read_text())
    recipe["eval"] = {"suite": "suite.yaml", "every_steps": 2, "dims": [96, 32]}  # relative to the recipe's folder
    path = tmp_path / "with_eval.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = _cli("train", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    evaluated = [e for e in _log(out) if any(k.startswith("eval_") for k in e)]
    assert [e["step"] for e in evaluated][:2] == [2, 4]
    report = json.loads((out / "eval" / "results.json").read_text())
    assert set(report["tasks"]["stsb-dev"]["dims"]) == {"96", "32"}


def test_bf16_training_runs_every_task_type_with_finite_losses(tmp_path, tiny_bert_dir):
    """precision bf16 on a CPU is torch.autocast("cpu"): every loss path (CoSENT, InfoNCE with negatives, label pools) runs under it."""
    from hybridembed.recipe import load_recipe
    from hybridembed.training.builder import prepare_training

    recipe = load_recipe(_recipe(tmp_path, tiny_bert_dir, max_steps=8, precision="bf16"))
    trainer = prepare_training(recipe)
    assert trainer.args.bf16
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all(np.isfinite(e["loss"]) for e in logged)
    assert {k for e in logged for k in e if k.startswith("loss_")} >= {"loss_sts", "loss_retrieval"}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
