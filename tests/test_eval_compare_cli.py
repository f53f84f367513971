"""`hybridembed eval compare A B` is a parser of its own next to `hybridembed eval MODEL --suite ...`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hybridembed.cli import build_parser, main


def _results(path, score: float, model: str = "m"):
    path.write_text(json.dumps({"model": model, "tasks": {"stsb": {"type": "sts", "dims": {"64": {"main_score": score}}}}}))
    return path


def test_compare_prints_deltas_from_files_and_folders(tmp_path, capsys):
    a = _results(tmp_path / "a.json", 0.80, "A")
    (tmp_path / "run").mkdir()
    _results(tmp_path / "run" / "results.json", 0.83, "B")
    assert main(["eval", "compare", str(a), str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "| stsb | sts | 64 | 80.00 | 83.00 | +3.00 |" in out and "(A)" in out and "(B)" in out


def test_compare_help_is_its_own(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "compare", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hybridembed eval compare [-h] A B")
    assert "--suite" not in out


def test_eval_help_mentions_compare_and_keeps_its_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "hybridembed eval compare A.json B.json" in out and "--suite" in out and "--out" in out


@pytest.mark.parametrize("argv", [["eval", "compare"], ["eval", "compare", "a.json"], ["eval", "compare", "a", "b", "c"]])
def test_compare_needs_exactly_two_files(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: hybridembed eval compare [-h] A B") and "Traceback" not in err


def test_eval_model_form_still_parses():
    args = build_parser().parse_args(["eval", "bundled:all-MiniLM-L6-v2", "--suite", "s.yaml", "--out", "o", "--dims", "64,16"])
    assert args.command == "eval" and args.model == "bundled:all-MiniLM-L6-v2" and args.dims == [64, 16]
    assert args.func.__name__ == "run"
    assert build_parser().parse_args(["eval", "compare", "a", "b"]).func.__name__ == "run_compare"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "results file not found"),
        ("{not json", "not valid JSON"),
        ('{"model": "x"}', "not a hybridembed results.json"),
    ],
)
def test_bad_results_file_is_a_one_line_error_without_traceback(tmp_path, content, message):
    good = _results(tmp_path / "good.json", 0.5)
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    for argv in ([str(bad), str(good)], [str(good), str(bad)]):
        proc = subprocess.run([sys.executable, "-m", "hybridembed.cli", "eval", "compare", *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr


def test_no_shared_task_is_an_error(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        path.write_text(json.dumps({"model": "m", "tasks": {}}))
    assert main(["eval", "compare", str(a), str(b)]) == 2
    assert capsys.readouterr().err.strip() == "error: the two results files share no task"
