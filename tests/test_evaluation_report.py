"""Report files, `eval compare` deltas and the `hybridembed eval` command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridembed.cli import main
from hybridembed.evaluation.report import compare, render_compare, write_report
from hybridembed.evaluation.runner import compute_averages

REPO = Path(__file__).resolve().parents[1]


def _results(scores: dict[str, tuple[str, dict[str, float]]], model: str = "m") -> dict:
    tasks = {
        name: {"type": ttype, "main_metric": "x", "dims": {d: {"main_score": v, "metrics": {}, "seconds": 0.1} for d, v in dims.items()}}
        for name, (ttype, dims) in scores.items()
    }
    dims = sorted({d for _, ds in scores.values() for d in ds}, key=int, reverse=True)
    return {"model": model, "mteb_version": "2.26.24", "suite": "s", "dims": dims, "tasks": tasks, "averages": compute_averages(tasks)}


def test_averages_are_means_of_type_averages():
    res = _results({"a": ("sts", {"64": 0.8}), "b": ("sts", {"64": 0.6}), "c": ("retrieval", {"64": 0.4})})
    assert res["averages"]["by_type"] == {"sts": {"64": pytest.approx(0.7)}, "retrieval": {"64": 0.4}}
    assert res["averages"]["overall"]["64"] == pytest.approx((0.7 + 0.4) / 2)


def test_write_report_files_and_table(tmp_path):
    res = _results({"stsb": ("sts", {"64": 0.81234, "32": 0.7}), "ret": ("retrieval", {"64": 0.5, "32": 0.45})})
    paths = write_report(res, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == res
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    md = paths["markdown"].read_text()
    assert "| stsb | sts | x | 81.23 | 70.00 |" in md
    assert "| **overall** | | | **65.62** | **57.50** |" in md
    assert "mteb 2.26.24" in md


def test_compare_deltas():
    a = _results({"stsb": ("sts", {"64": 0.80}), "only_a": ("sts", {"64": 0.5})}, "A")
    b = _results({"stsb": ("sts", {"64": 0.83}), "only_b": ("retrieval", {"64": 0.4})}, "B")
    rows = {(r["task"], r["dim"]): r for r in compare(a, b)}
    assert rows[("stsb", "64")]["delta"] == pytest.approx(0.03)
    assert rows[("only_a", "64")]["delta"] is None and rows[("only_b", "64")]["a"] is None
    text = render_compare(compare(a, b), "A", "B")
    assert "| stsb | sts | 64 | 80.00 | 83.00 | +3.00 |" in text


def test_cli_eval_writes_results_and_compare_prints_deltas(tiny_model_dir, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"tasks:\n  - {{name: stsb-dev, type: sts, path: {REPO / 'data/quickstart/stsb_dev.tsv'}, max_samples: 80,\n"
        "     columns: {text1: sentence1, text2: sentence2, score: score}, score_range: [0, 5]}\n"
    )
    out = tmp_path / "run"
    assert main(["eval", str(tiny_model_dir), "--suite", str(suite), "--dims", "64,16", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == str(tiny_model_dir) and res["mteb_version"] == "2.26.24"
    entry = res["tasks"]["stsb-dev"]
    assert entry["type"] == "sts" and set(entry["dims"]) == {"64", "16"}
    assert 0 <= entry["dims"]["64"]["main_score"] <= 1 and "cosine_spearman" in entry["dims"]["64"]["metrics"]
    assert (out / "results.md").exists() and (out / "results_dims.png").exists()
    capsys.readouterr()
    other = json.loads((out / "results.json").read_text())
    other["tasks"]["stsb-dev"]["dims"]["64"]["main_score"] += 0.05
    (tmp_path / "b.json").write_text(json.dumps(other))
    assert main(["eval", "compare", str(out / "results.json"), str(tmp_path / "b.json")]) == 0
    assert "+5.00" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - {name: x, type: sts, path: nowhere.tsv, columns: {text1: 0, text2: 1, score: 2}, extra: 1}\n")
    assert main(["eval", "bundled:all-MiniLM-L6-v2", "--suite", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "tasks.0.extra: unknown key" in err and "\n" not in err
    assert main(["eval", "compare", str(tmp_path / "missing.json"), str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: results file not found: {tmp_path / 'missing.json'}"
    with pytest.raises(SystemExit):
        main(["eval", "m", "--suite", "s.yaml", "--dims", "64,abc", "--out", "o"])
