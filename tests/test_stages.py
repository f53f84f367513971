"""Multi-stage recipes on a tiny BERT: mlm → pairs → multitask end to end, skip finished stages, resume an interrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import QUICKSTART


def _three_stage_recipe(tmp_path: Path, backbone: Path, **final_training) -> Path:
    recipe = {
        "model": {"backbone": str(backbone), "pooling": "mean", "max_seq_length": 48},
        "datasets": [
            {"path": str(QUICKSTART / "stsb_train.tsv"), "task": "sts", "score_range": [0, 5], "max_samples": 64},
            {"path": str(QUICKSTART / "banking77_train.csv"), "task": "classification", "max_samples": 64, "num_negatives": 3},
        ],
        "training": {"output_dir": str(tmp_path / "out"), "batch_size": 8, "logging_steps": 1, "report_to": [], "learning_rate": 1e-3},
        "stages": [
            {"kind": "mlm", "texts": [{"path": str(QUICKSTART / "stsb_dev.tsv"), "text_fields": ["sentence1", "sentence2"], "max_samples": 200}],
             "training": {"max_steps": 3, "batch_size": 16}},
            {"name": "weak", "kind": "pairs", "datasets": [{"path": str(QUICKSTART / "stsb_paraphrase_pairs.jsonl"), "max_samples": 128}],
             "training": {"max_steps": 3, "batch_size": 32}},
            {"kind": "multitask", "model": {"projection_dim": 96, "matryoshka_dims": [96, 32]}, "training": {"max_steps": 4, **final_training}},
        ],
    }  # fmt: skip
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _log_steps(folder: Path) -> list[int]:
    return [e["step"] for e in map(json.loads, (folder / "training_log.jsonl").read_text().splitlines()) if "loss" in e]


class _Interrupt(Exception):
    pass


def test_three_stages_run_end_to_end_resume_after_an_interruption_and_skip_finished_stages(tmp_path, tiny_bert_dir, monkeypatch, caplog):
    """One run of mlm → pairs → multitask, killed in stage 3, then run again: the done-when of issue 6."""
    from sentence_transformers import SentenceTransformer

    from hybridembed.errors import RecipeError
    from hybridembed.recipe import load_recipe
    from hybridembed.training.stages import run_recipe
    from hybridembed.training.trainer import HybridTrainer

    recipe_path = _three_stage_recipe(tmp_path, tiny_bert_dir, save_steps=2)
    original = HybridTrainer.training_step

    def interrupted_step(self, *args, **kwargs):
        if self.state.global_step == 3 and "stage-3" in self.args.output_dir:
            raise _Interrupt("killed at step 3")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HybridTrainer, "training_step", interrupted_step)
    with pytest.raises(_Interrupt):
        run_recipe(load_recipe(recipe_path))
    out = tmp_path / "out"
    assert (out / "stage-2-weak" / "stage_done.json").is_file()
    assert not (out / "stage-3-multitask" / "stage_done.json").exists()
    assert (out / "stage-3-multitask" / "checkpoint-2").is_dir()
    monkeypatch.setattr(HybridTrainer, "training_step", original)

    caplog.set_level("INFO")
    run_recipe(load_recipe(recipe_path))
    assert "stage 1 (mlm, mlm): finished earlier, skipping" in caplog.text
    assert "stage 2 (weak, pairs): finished earlier, skipping" in caplog.text
    assert f"resuming from checkpoint {out / 'stage-3-multitask' / 'checkpoint-2'}" in caplog.text
    assert _log_steps(out / "stage-3-multitask") == [1, 2, 3, 4]
    assert json.loads((out / "stage-3-multitask" / "stage_done.json").read_text())["global_step"] == 4

    stage_dirs = [out / "stage-1-mlm", out / "stage-2-weak", out / "stage-3-multitask"]
    markers = [json.loads((d / "stage_done.json").read_text()) for d in stage_dirs]
    assert [m["kind"] for m in markers] == ["mlm", "pairs", "multitask"]
    assert [m["global_step"] for m in markers] == [3, 3, 4]
    # Each stage starts from the folder the stage before it wrote.
    assert markers[0]["backbone"] == str(tiny_bert_dir)
    assert markers[1]["backbone"] == str(stage_dirs[0]) and markers[2]["backbone"] == str(stage_dirs[1])
    # The mlm stage trained a masked-LM head on the backbone and saved a Hugging Face checkpoint.
    assert json.loads((stage_dirs[0] / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    mlm_losses = [e["loss"] for e in map(json.loads, (stage_dirs[0] / "training_log.jsonl").read_text().splitlines()) if "loss" in e]
    assert len(mlm_losses) == 3
    # The pairs stage defaults to bidirectional InfoNCE on retrieval rows.
    pairs_recipe = yaml.safe_load((stage_dirs[1] / "recipe.yaml").read_text())
    assert pairs_recipe["losses"]["retrieval"]["bidirectional"] is True and pairs_recipe["datasets"][0]["task"] == "retrieval"
    # The final model lives in output_dir and lists its stages.
    model = SentenceTransformer(str(out), device="cpu")
    assert model.encode(["a man plays a guitar"]).shape == (1, 96)
    meta = json.loads((out / "hybridembed.json").read_text())
    assert [s["dir"] for s in meta["stages"]] == [d.name for d in stage_dirs] and meta["matryoshka_dims"] == [96, 32]
    assert "stages:" in (out / "recipe.yaml").read_text()

    # A finished stage whose settings changed is not silently reused.
    changed = yaml.safe_load(recipe_path.read_text())
    changed["stages"][1]["training"]["learning_rate"] = 5e-4
    recipe_path.write_text(yaml.safe_dump(changed))
    with pytest.raises(RecipeError, match=r"stage 2 \(weak, pairs\) finished earlier with other settings"):
        run_recipe(load_recipe(recipe_path))


def test_stage_schema_errors_name_the_stage_and_key(tmp_path, capsys):
    from hybridembed.cli import main

    def check(stages, expected):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"datasets": [{"path": "x.jsonl"}], "stages": stages}))
        code = main(["train", str(path)])
        err = capsys.readouterr().err
        assert code == 2 and expected in err, err

    check([{"kind": "pairs", "training": {"learning_rat": 1}}], "stages.0.training.learning_rat: unknown key")
    check([{"kind": "mlm"}], "an mlm stage needs `texts:`")
    check([{"kind": "mlm", "texts": [{"path": "t.txt"}], "datasets": [{"path": "x.jsonl"}]}], "an mlm stage takes `texts:`")
    check([{"kind": "pretrain"}], "stages.0.kind")
    check([{"kind": "pairs"}, {"kind": "pairs"}], "duplicate stage name 'pairs'")
