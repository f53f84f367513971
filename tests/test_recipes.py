"""The shipped recipes: each validates, and each passes `train --dry-run --tiny` (every stage built and trained 2 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
PAPER_RECIPES = ["conan.yaml", "jina-bilingual.yaml", "piccolo2.yaml"]


def test_the_paper_recipes_ship():
    assert set(PAPER_RECIPES) <= {p.name for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path):
    from hybridembed.recipe import load_recipe

    recipe = load_recipe(path)
    match path.name:
        case "piccolo2.yaml":
            assert recipe.model.projection_dim == 1792 and recipe.model.matryoshka_dims[0] == 256
            assert recipe.losses["sts"].weight == 0.04 and recipe.losses["classification"].weight == 0.2
            assert recipe.deepspeed["zero_optimization"]["stage"] == 1
        case "conan.yaml":
            assert [s.kind for s in recipe.stages] == ["pairs", "multitask"]
            from hybridembed.training.stages import plan_stages, stage_recipe

            pretrain, finetune = (stage_recipe(recipe, plan, "backbone", resume=False) for plan in plan_stages(recipe))
            assert pretrain.mining is None and finetune.mining.dynamic.every_steps == 100  # Conan mines while fine-tuning
            assert finetune.model.projection_dim == 1792 and pretrain.model.projection_dim is None
        case "jina-bilingual.yaml":
            assert [s.kind for s in recipe.stages] == ["mlm", "pairs", "multitask"]
            assert recipe.stages[0].mlm_probability == 0.30 and recipe.stages[2].losses["sts"].name == "pearson"


@pytest.mark.parametrize("name", [p.name for p in RECIPES])
def test_recipe_dry_run_on_a_tiny_backbone(name, tmp_path, capsys):
    from hybridembed.cli import main

    out = tmp_path / "dry"
    code = main(["train", str(REPO / "recipes" / name), "--dry-run", "--tiny", "--output-dir", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "dry run ok" in captured.out
    meta = json.loads((out / "run" / "hybridembed.json").read_text())
    recipe_stages = {"conan.yaml": 2, "jina-bilingual.yaml": 3, "bilingual-extend.yaml": 3}.get(name, 0)
    assert len(meta.get("stages", [])) == recipe_stages
    assert all(s["global_step"] == 2 for s in meta.get("stages", []))
    if not recipe_stages:
        assert meta["global_step"] == 2


def test_the_readme_recipe_validates_and_its_files_exist():
    import re

    import yaml

    from hybridembed.recipe import recipe_from_mapping

    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    recipe = recipe_from_mapping(yaml.safe_load(block), REPO)
    assert recipe.datasets and all(Path(d.path).is_file() for d in recipe.datasets)
