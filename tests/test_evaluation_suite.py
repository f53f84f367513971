"""Suite files: validation errors name the key, relative paths resolve against the suite's folder; shipped suites load."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridembed.evaluation import SuiteError, load_suite, parse_suite
from hybridembed.tasks import TaskType

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "pairs.tsv"
    path.write_text("a\tb\t1\nc\td\t0\n", encoding="utf-8")
    return path


def test_relative_paths_resolve_against_the_suite_folder(tmp_path, data_file):
    suite_dir = tmp_path / "suites"
    suite_dir.mkdir()
    path = _write(
        suite_dir,
        "tasks:\n  - {name: p, type: pair_classification, path: ../data/pairs.tsv, header: false, columns: {text1: 0, text2: 1, label: 2}}\n",
    )
    suite = load_suite(path)
    assert suite.name == "suite"
    assert suite.tasks[0].path == data_file.resolve()
    assert suite.tasks[0].type is TaskType.PAIR_CLASSIFICATION


def test_unknown_key_is_named(tmp_path, data_file):
    path = _write(tmp_path, f"tasks:\n  - {{name: p, type: sts, path: {data_file}, colums: {{}}}}\n")
    with pytest.raises(SuiteError, match="tasks.0.colums: unknown key"):
        load_suite(path)
    path = _write(tmp_path, "taks: []\n", "top.yaml")
    with pytest.raises(SuiteError, match="taks: unknown key"):
        load_suite(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: p, type: sts, path: PATH, columns: {text1: a, text2: b}}", r"columns must map \['score'\]"),
        ("{name: p, type: sts, path: PATH, header: false, columns: {text1: a, text2: b, score: 2}}", "0-based integer"),
        ("{name: p, type: sts, path: PATH, columns: {text1: 0, text2: 1, score: 2, label: 3}}", "unknown column role"),
        ("{name: p, type: classification, path: PATH, columns: {text: 0, label: 1}}", "needs `train_path`"),
        ("{name: p, type: retrieval, path: PATH, columns: {query: 0}}", "map either `document`"),
        ("{name: p, path: PATH}", "needs `type` and `path`"),
        ("{name: p, type: sts, path: missing.tsv, columns: {text1: 0, text2: 1, score: 2}}", "not found"),
        ("{name: 'mteb:STSBenchmark', type: sts}", "takes no type"),
        ("{name: p, type: nli, path: PATH}", "tasks.0.type"),
    ],
)
def test_invalid_entries(tmp_path, data_file, entry, message):
    path = _write(tmp_path, "tasks:\n  - " + entry.replace("PATH", str(data_file)) + "\n")
    with pytest.raises(SuiteError, match=message):
        load_suite(path)


def test_duplicate_names_and_empty_suite(tmp_path, data_file):
    task = {"name": "x", "type": "sts", "path": str(data_file), "columns": {"text1": 0, "text2": 1, "score": 2}}
    with pytest.raises(SuiteError, match="duplicate task names"):
        parse_suite({"tasks": [task, task]})
    with pytest.raises(SuiteError, match="tasks"):
        parse_suite({"tasks": []})


def test_named_task_and_bare_list():
    suite = parse_suite([{"name": "mteb:STSBenchmark", "split": "test"}])
    assert suite.tasks[0].is_named and suite.tasks[0].mteb_name == "STSBenchmark"


def test_missing_suite_file_and_bad_yaml(tmp_path):
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "nope.yaml")
    with pytest.raises(SuiteError, match="invalid YAML"):
        load_suite(_write(tmp_path, "tasks: [\n"))


def test_optional_task_with_absent_files_is_skipped_and_listed(tmp_path, data_file):
    present = {"name": "here", "type": "sts", "path": str(data_file), "columns": {"text1": 0, "text2": 1, "score": 2}, "header": False}
    absent = {**present, "name": "gone", "path": str(tmp_path / "nope.tsv"), "optional": True}
    suite = parse_suite({"tasks": [present, absent]})
    assert [t.name for t in suite.tasks] == ["here"]
    assert len(suite.skipped) == 1 and "'gone'" in suite.skipped[0] and "nope.tsv" in suite.skipped[0]
    with pytest.raises(SuiteError, match="not found"):  # not optional: still an error
        parse_suite({"tasks": [present, {**absent, "optional": False}]})
    with pytest.raises(SuiteError, match="every task is optional and absent"):
        parse_suite({"tasks": [absent]})


def test_shipped_quickstart_suite_loads():
    suite = load_suite(REPO / "suites" / "quickstart.yaml")
    shared = (REPO.parent / "shared" / "data" / "en" / "mrpc" / "test.tsv").is_file()
    expected = ["stsb-dev", "mrpc-test", "banking77-test", "wikiqa-dev"] if shared else ["stsb-dev"]
    assert [t.name for t in suite.tasks] == expected
    assert len(suite.skipped) == 4 - len(expected)
    assert suite.tasks[0].path == (REPO / "data" / "quickstart" / "stsb_dev.tsv").resolve()


@pytest.mark.parametrize("name", ["en-local.yaml", "zh-local.yaml"])
def test_shipped_shared_data_suites_load(shared_data, name):
    suite = load_suite(REPO / "suites" / name)
    types = {t.type for t in suite.tasks}
    if name == "en-local.yaml":
        assert types == set(TaskType)  # every task type is covered
    for task in suite.tasks:  # nothing that the training recipes use
        assert "train" not in task.path.name
        assert "bge_finetune_data" not in str(task.path)


def test_data_errors_name_file_and_line(tmp_path):
    from hybridembed.errors import DataError
    from hybridembed.evaluation.local_tasks import build_local_task

    path = tmp_path / "sts.tsv"
    path.write_text("s1\ts2\tscore\na\tb\t1.0\nc\td\tfive\n", encoding="utf-8")
    suite = parse_suite([{"name": "s", "type": "sts", "path": str(path), "columns": {"text1": "s1", "text2": "s2", "score": "score"}}])
    with pytest.raises(DataError, match=r"sts.tsv:3: score: expected a number, got 'five'"):
        build_local_task(suite.tasks[0]).load_data()
    path.write_text("s1\ts2\na\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"sts.tsv:2: column 'score' \(score\) missing"):
        build_local_task(suite.tasks[0]).load_data()
