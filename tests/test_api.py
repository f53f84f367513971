"""The Python API (`hybridembed.train/evaluate/mine`) and `train --set`: same code paths as the CLI, on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import QUICKSTART


def _recipe_dict(out: Path, backbone: Path) -> dict:
    return {
        "model": {"backbone": str(backbone), "max_seq_length": 32},
        "datasets": [
            {"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts", "score_range": [0, 5], "max_samples": 32},
            {"path": str(QUICKSTART / "stsb_paraphrase_pairs.jsonl"), "task": "retrieval", "max_samples": 32},
        ],
        "training": {"output_dir": str(out), "batch_size": 8, "max_steps": 50, "logging_steps": 1, "report_to": []},
    }


def test_flatten_overrides_accepts_sections_double_underscores_and_dotted_keys():
    from hybridembed.api import flatten_overrides

    flat = flatten_overrides({"model.max_seq_length": 64}, training={"max_steps": 5, "seed": 1}, losses__sts__name="pearson")
    assert flat == {"model.max_seq_length": 64, "training.max_steps": 5, "training.seed": 1, "losses.sts.name": "pearson"}


def test_parse_assignments_reads_values_as_yaml_and_rejects_malformed_ones():
    from hybridembed.errors import RecipeError
    from hybridembed.recipe import parse_assignments

    parsed = parse_assignments(["training.learning_rate=2e-5", "model.matryoshka_dims=[64, 32]", "training.resume=true", "x.y=a=b"])
    assert parsed == {"training.learning_rate": 2e-5, "model.matryoshka_dims": [64, 32], "training.resume": True, "x.y": "a=b"}
    for bad in ("training.learning_rate", "=3", "training..x=1", "a.b=[1,"):
        with pytest.raises(RecipeError, match="--set"):
            parse_assignments([bad])


def test_load_applies_overrides_to_a_mapping_without_changing_it_and_checks_them(tmp_path, tiny_bert_dir):
    import hybridembed.api as api
    from hybridembed.errors import RecipeError

    raw = _recipe_dict(tmp_path / "out", tiny_bert_dir)
    recipe = api.load(raw, training={"learning_rate": 3e-4}, model__max_seq_length=16)
    assert recipe.training.learning_rate == 3e-4 and recipe.model.max_seq_length == 16
    assert raw["model"]["max_seq_length"] == 32 and "learning_rate" not in raw["training"]
    with pytest.raises(RecipeError, match="training.no_such_key: unknown key"):
        api.load(raw, training={"no_such_key": 1})
    with pytest.raises(RecipeError, match="not a section"):
        api.load(raw, **{"training.max_steps.x": 1})


def test_python_train_evaluate_and_mine_produce_what_the_cli_produces(tmp_path, tiny_bert_dir):
    import hybridembed

    raw = _recipe_dict(tmp_path / "out", tiny_bert_dir)
    import hybridembed.training.builder  # noqa: F401  (importing the training package must not shadow the function)

    result = hybridembed.train(raw, training={"max_steps": 3})
    assert callable(hybridembed.train)
    folder = result.folder
    assert folder == tmp_path / "out" and (folder / "modules.json").is_file() and str(result) == str(folder)
    assert result.global_step == 3  # the override, not the mapping's 50
    assert result.metrics["train_loss"] > 0 and "loss" in result.metrics
    steps = [json.loads(line).get("step") for line in (folder / "training_log.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 3
    assert yaml.safe_load((folder / "recipe.yaml").read_text())["training"]["max_steps"] == 3

    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "api", "tasks": [
        {"name": "sts", "type": "sts", "path": str(QUICKSTART / "stsb_train.tsv"), "score_range": [0, 5], "max_samples": 40,
         "columns": {"text1": "sentence1", "text2": "sentence2", "score": "score"}}]}))  # fmt: skip
    results = hybridembed.evaluate(result, suite, dims=[32], out=tmp_path / "report", show_progress=False)
    assert results["dims"] == ["32"] and -1.0 <= results["tasks"]["sts"]["dims"]["32"]["main_score"] <= 1.0
    assert json.loads((tmp_path / "report" / "results.json").read_text())["tasks"]["sts"]["dims"]["32"]["main_score"] == pytest.approx(
        results["tasks"]["sts"]["dims"]["32"]["main_score"]
    )

    report = hybridembed.mine(folder, QUICKSTART / "flagembedding_retrieval.jsonl", tmp_path / "mined.jsonl",
                              rank_range=(1, 5), num_negatives=2, show_progress=False)  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "mined.jsonl").read_text().splitlines()]
    assert report.rows == len(rows) > 0 and all(len(r["negatives"]) <= 2 for r in rows)
    from hybridembed.errors import HybridembedError

    with pytest.raises(HybridembedError, match="unexpected keyword"):
        hybridembed.mine(folder, QUICKSTART / "flagembedding_retrieval.jsonl", tmp_path / "m2.jsonl", no_such_option=1)


def test_train_cli_set_overrides_any_key_and_the_named_flags_win(tmp_path, tiny_bert_dir):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe_dict(tmp_path / "out", tiny_bert_dir)))
    cmd = [sys.executable, "-m", "hybridembed.cli", "train", str(path), "--set", "training.max_steps=40",
           "--set", "model.max_seq_length=24", "--set", "training.learning_rate=2e-4", "--max-steps", "2"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())
    assert saved["training"]["max_steps"] == 2 and saved["training"]["learning_rate"] == 2e-4 and saved["model"]["max_seq_length"] == 24
    bad = subprocess.run([*cmd[:5], "--set", "training.learning_rate"], capture_output=True, text=True)
    assert bad.returncode != 0 and "expected KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr


def test_a_null_override_sets_the_key_to_null():
    from hybridembed.recipe import load_recipe, parse_assignments

    recipe_path = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    overrides = parse_assignments(["training.forward_chunk_rows=null", "model.projection_dim=null", "model.matryoshka_dims=null"])
    recipe = load_recipe(recipe_path, overrides)
    assert recipe.training.forward_chunk_rows is None and recipe.model.projection_dim is None and recipe.model.matryoshka_dims is None
    assert load_recipe(recipe_path).model.projection_dim is not None  # what the nulls replaced


def test_every_required_option_says_so_in_its_help(capsys):
    from hybridembed.cli import build_parser, main

    build_parser()
    for command in (["mine"], ["encode"], ["data", "synthesize"], ["tokenizer", "extend"], ["export"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert "(required)" in out, command
