"""`hybridembed data check RECIPE` checks every stage: each stage's datasets as `train` resolves them, and an mlm stage's text files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hybridembed.cli import main

REPO = Path(__file__).resolve().parents[1]


def _check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["data", "check", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _recipe(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"  # no task: a pairs stage reads these as retrieval rows
    path.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"p{i}"}) + "\n" for i in range(2)), encoding="utf-8")
    return path


def test_bad_row_in_a_later_stage_fails_with_file_line(tmp_path, capsys):
    bad = tmp_path / "sts.tsv"
    bad.write_text("sentence1\tsentence2\tscore\na\tb\t1\n\tb\t2\n", encoding="utf-8")
    recipe = _recipe(tmp_path, {"stages": [
        {"name": "warmup", "kind": "pairs", "datasets": [{"path": str(_pairs(tmp_path))}]},
        {"name": "finetune", "kind": "multitask", "datasets": [{"path": str(bad), "task": "sts", "score_range": [0, 5]}]},
    ]})  # fmt: skip
    code, out, err = _check(capsys, str(recipe))
    assert code == 2
    assert f"{bad}:3: text1: empty or whitespace-only text" in err
    assert "stage 1 (warmup, pairs): 1 dataset(s), 2 rows" in out
    assert "stage 2 (finetune, multitask): 0 dataset(s), 0 rows; FAILED: 1 problem(s)" in out


def test_stage_without_datasets_checks_the_recipe_datasets(tmp_path, capsys):
    recipe = _recipe(tmp_path, {
        "datasets": [{"path": str(_pairs(tmp_path)), "task": "retrieval"}],
        "stages": [{"name": "a", "kind": "pairs"}, {"name": "b", "kind": "multitask"}],
    })  # fmt: skip
    code, out, _ = _check(capsys, str(recipe))
    assert code == 0
    assert "stage 1 (a, pairs): 1 dataset(s), 2 rows" in out and "stage 2 (b, multitask): 1 dataset(s), 2 rows" in out
    assert "ok: 2 stage(s): 2 dataset(s), 4 rows" in out


def test_mlm_stage_text_files_are_checked_up_front(tmp_path, capsys):
    good = tmp_path / "corpus.txt"
    good.write_text("one text\n\nanother text\n", encoding="utf-8")
    bad = tmp_path / "broken.txt"
    bad.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    missing = tmp_path / "nowhere.txt"
    table = tmp_path / "texts.tsv"
    table.write_text("sentence1\tsentence2\nhello\tworld\n \t \n", encoding="utf-8")
    recipe = _recipe(tmp_path, {"stages": [
        {"name": "mlm", "kind": "mlm", "texts": [
            {"path": str(good)}, {"path": str(bad)}, {"path": str(missing)},
            {"path": str(table), "text_fields": ["sentence1", "sentence2"]},
        ]},
        {"name": "pairs", "kind": "pairs", "datasets": [{"path": str(_pairs(tmp_path))}]},
    ]})  # fmt: skip
    code, out, err = _check(capsys, str(recipe))
    assert code == 2
    assert f"{bad}:3: (line): invalid UTF-8 at byte 4" in err
    assert f"{missing}: file not found" in err
    assert f"{table}:3: text_fields: no text in this record" in err
    assert f"texts {good}: 2 texts" in out
    assert "stage 1 (mlm, mlm): 1 text file(s), 2 texts; FAILED: 3 problem(s)" in out
    assert "stage 2 (pairs, pairs): 1 dataset(s), 2 rows" in out


def test_allow_missing_lists_absent_files_and_checks_the_rest(tmp_path, capsys):
    missing = tmp_path / "later.jsonl"
    recipe = _recipe(tmp_path, {"stages": [{"kind": "pairs", "datasets": [{"path": str(missing)}, {"path": str(_pairs(tmp_path))}]}]})
    code, _, err = _check(capsys, str(recipe))
    assert code == 2 and f"{missing}: file not found" in err and "--allow-missing" in err
    code, out, _ = _check(capsys, str(recipe), "--allow-missing")
    assert code == 0
    assert f"later: {missing} is not here (not checked)" in out
    assert "ok: 1 stage(s): 1 dataset(s), 2 rows; 1 file(s) not here" in out


@pytest.mark.parametrize(
    ("name", "stages"),
    [("conan", ["stage 1 (pretrain, pairs)", "stage 2 (finetune, multitask)"]),
     ("jina-bilingual", ["stage 1 (mlm, mlm)", "stage 2 (pairs, pairs)", "stage 3 (multitask, multitask)"]),
     ("piccolo2", []), ("quickstart", [])],
)  # fmt: skip
def test_shipped_recipes_report_rows_for_every_stage(name, stages, shared_data, capsys):
    code, out, err = _check(capsys, str(REPO / "recipes" / f"{name}.yaml"), "--allow-missing")
    assert code == 0, err
    for stage in stages:
        line = next(line for line in out.splitlines() if line.startswith(stage))
        assert " 0 rows" not in line and " 0 texts" not in line, line
    total = out.splitlines()[-1]
    rows = int(total.split(" rows")[0].split()[-1])
    assert total.startswith("ok: ") and rows > 0
    if name == "jina-bilingual":
        assert "; 2 text file(s), " in total


def test_conan_without_its_own_files_names_them(shared_data, capsys):
    code, out, err = _check(capsys, str(REPO / "recipes" / "conan.yaml"))
    assert code == 2
    assert "weak_pairs.jsonl: file not found" in err and "llm_pairs.jsonl: file not found" in err
    assert "stage 2 (finetune, multitask): 4 dataset(s)" in out  # the files that are here are still checked
