"""The recipe schema on its own: dataset names that would shadow an nn.Module attribute, without torch in the schema."""

from __future__ import annotations

from pathlib import Path

from hybridembed.recipe import MODULE_ATTRIBUTES, recipe_from_mapping, shadows_module_attribute


def test_the_reserved_names_cover_every_nn_module_attribute():
    from torch import nn

    missing = sorted(name for name in dir(nn.Module) if not shadows_module_attribute(name))
    assert not missing, f"add to recipe.MODULE_ATTRIBUTES (a newer torch has them): {missing}"
    assert all(hasattr(nn.Module, name) for name in MODULE_ATTRIBUTES - {"smart_apply"})  # set by transformers on first use


def test_a_dataset_named_like_a_module_attribute_takes_its_folder_name(tmp_path: Path):
    raw = {"datasets": [{"path": "sts/train.jsonl", "task": "sts"}, {"path": "other/data.jsonl", "task": "sts"},
                        {"path": "x/__init__.jsonl", "task": "sts"}]}  # fmt: skip
    names = [ds.name for ds in recipe_from_mapping(raw, tmp_path).datasets]
    assert names == ["sts_train", "data", "x___init__"]


def test_load_recipe_resolves_relative_paths_against_data_root(tmp_path: Path):
    from hybridembed.recipe import load_recipe

    recipes, data = tmp_path / "recipes", tmp_path / "data"
    recipes.mkdir()
    data.mkdir()
    (data / "pairs.jsonl").write_text('{"query": "a", "positives": ["b"]}\n', encoding="utf-8")
    path = recipes / "r.yaml"
    path.write_text("model: {backbone: some/model}\ndatasets:\n  - {path: pairs.jsonl, task: retrieval}\n", encoding="utf-8")
    assert Path(load_recipe(path, data_root=data).datasets[0].path) == (data / "pairs.jsonl").resolve()
    (recipes / "pairs.jsonl").write_text('{"query": "a", "positives": ["b"]}\n', encoding="utf-8")
    assert Path(load_recipe(path).datasets[0].path) == (recipes / "pairs.jsonl").resolve()  # default: beside the recipe
