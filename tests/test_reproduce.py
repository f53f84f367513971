"""The reproduction driver's plumbing (data slices, one training arm, evaluation, tables, PNG, JSON) on a tiny random BERT."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_one_arm_writes_table_json_png(tmp_path, tiny_bert_dir, shared_data, capsys):
    reproduce = _driver()
    if not (reproduce.DATA / "en" / "stsb" / "train.tsv").is_file():
        pytest.skip("needs ../shared/data")
    out = tmp_path / "rq"
    results = reproduce.main(
        ["--quick", "--out", str(out), "--only", "a-hybrid", "--seeds", "0", "--steps", "2", "--backbone", str(tiny_bert_dir)]
    )
    printed = capsys.readouterr().out
    assert "Table A" in printed and "| a-hybrid | 0 |" in printed
    assert "Table B" in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["meta"]["steps"] == 2 and saved["meta"]["seeds"] == [0]
    entry = saved["arms"]["a-hybrid"][0]
    assert set(entry["eval"]["tasks"]) >= {"stsb-dev", "banking77-test", "msmarco-trecdl19-subset"}
    assert entry["train_log"][-1]["step"] == 2
    for table in results["tables"]:
        png = out / table["png"]
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert (out / "tables.md").read_text().count("## Table") == len(results["tables"]) == 2
    # a second invocation reuses the cached arm instead of training again
    reproduce.main(["--quick", "--out", str(out), "--only", "a-hybrid", "--seeds", "0", "--steps", "2", "--backbone", str(tiny_bert_dir)])
    assert "cached" in capsys.readouterr().out
