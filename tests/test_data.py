"""Readers, format detection and validation: every problem class is reported as file:line: field: what."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hybridembed.data import load_dataset
from hybridembed.errors import DataError
from hybridembed.recipe import DataFormat, DatasetConfig
from hybridembed.tasks import TaskType


def _cfg(path, **kw):
    cfg = DatasetConfig(path=str(path), **kw)
    cfg.name = cfg.name or "test"
    return cfg


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _problems(cfg):
    with pytest.raises(DataError) as err:
        load_dataset(cfg)
    return "\n".join(err.value.problems)


def test_all_formats_load_to_canonical_rows(tmp_path):
    ours = _write(tmp_path, "ours.jsonl", json.dumps({"query": "q", "positive": "p", "negatives": ["n1", "n2"]}) + "\n")
    flag = _write(tmp_path, "flag.jsonl", json.dumps({"query": "q", "pos": ["p1", "p2"], "neg": ["n"]}) + "\n")
    st = _write(tmp_path, "st.csv", "anchor,positive,negative\nq,p,n\n")
    sts = _write(tmp_path, "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t4.5\n")
    cls = _write(tmp_path, "cls.csv", "text,label\nhello,greet\nbye,leave\n")
    assert load_dataset(_cfg(ours, task="retrieval")).rows[0] == {"query": "q", "positives": ["p"], "negatives": ["n1", "n2"], "label": None}
    flag_ds = load_dataset(_cfg(flag, task="retrieval"))
    assert flag_ds.format is DataFormat.FLAGEMBEDDING and flag_ds.rows[0]["positives"] == ["p1", "p2"]
    assert load_dataset(_cfg(st, task="retrieval")).rows[0]["negatives"] == ["n"]
    assert load_dataset(_cfg(sts, task="sts")).rows[0] == {"text1": "a", "text2": "b", "score": 4.5}
    cls_ds = load_dataset(_cfg(cls, task="classification"))
    assert cls_ds.label_pool == ["greet", "leave"] and cls_ds.rows[0]["positives"] == ["greet"]


def test_headerless_tsv_with_column_indices(tmp_path):
    path = _write(tmp_path, "mrpc.tsv", "1\tid\tid\tA cat.\tA feline.\n0\tid\tid\tA dog.\tA car.\n")
    ds = load_dataset(_cfg(path, task="pair_classification", header=False, columns={"text1": 3, "text2": 4, "score": 0}))
    assert [r["score"] for r in ds.rows] == [1.0, 0.0]


def test_parquet_and_save_to_disk(tmp_path):
    import pandas as pd
    from datasets import Dataset

    pd.DataFrame({"sentence1": ["a", "c"], "sentence2": ["b", "d"], "score": [1.0, 2.0]}).to_parquet(tmp_path / "x.parquet")
    assert len(load_dataset(_cfg(tmp_path / "x.parquet", task="sts"))) == 2
    Dataset.from_dict({"query": ["q1", "q2"], "positive": ["p1", "p2"]}).save_to_disk(str(tmp_path / "disk"))
    assert len(load_dataset(_cfg(tmp_path / "disk", task="retrieval"))) == 2


def test_piccolo_example_loads_as_is(shared_data):
    tasks = {}
    for name in ("retri", "sts", "cls"):
        ds = load_dataset(_cfg(shared_data / "piccolo_example" / f"{name}.dataset"))
        tasks[name] = ds.task
        assert ds.format is DataFormat.PICCOLO and len(ds) == 51
    assert tasks == {"retri": TaskType.RETRIEVAL, "sts": TaskType.STS, "cls": TaskType.CLASSIFICATION}


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "expected"),
    [
        (
            "a.jsonl",
            '{"query": "q", "positive": "p"}\n{"query": "  ", "positive": "p"}\n',
            {"task": "retrieval"},
            "a.jsonl:2: query: empty or whitespace-only text",
        ),
        (
            "b.jsonl",
            '{"query": "q", "positive": "p"}\n{"query": "q2"}\n',
            {"task": "retrieval", "format": "hybridembed"},
            "b.jsonl:2: positive: row has no positive",
        ),
        ("c.tsv", "sentence1\tsentence2\tscore\na\tb\thigh\n", {"task": "sts"}, "c.tsv:2: score: not a number: 'high'"),
        ("d.tsv", "sentence1\tsentence2\tscore\na\tb\t7\n", {"task": "sts", "score_range": (0, 5)}, "d.tsv:2: score: 7 outside the declared range [0, 5]"),
        ("e.tsv", "sentence1\tsentence2\tscore\na\tb\t1\nc\td\n", {"task": "sts"}, "e.tsv:3: (row): ragged row: 2 fields, header has 3"),
        (
            "f.tsv",
            "sentence1\tsentence1\tscore\na\tb\t1\n",
            {"task": "sts", "format": "columns", "columns": {"text1": "sentence1", "text2": "score", "score": "score"}},
            "f.tsv:1: (header): duplicate column name(s) ['sentence1']",
        ),
        ("g.csv", "text,label\nhi,greet\nyo,greet\n", {"task": "classification"}, "g.csv: label: a classification dataset has a single label ('greet')"),
        ("h.jsonl", "", {"task": "sts"}, "h.jsonl: empty file"),
        ("i.jsonl", '{"query": "q", "positive": "p"}\n{"query": "q", "positive": "p"\n', {"task": "retrieval"}, "i.jsonl:2: (line): invalid JSON"),
        ("k.tsv", "sentence1\tsentence2\na\tb\n", {"task": "sts", "format": "sentence_transformers"}, "k.tsv:2: score: missing field"),
    ],
)
def test_each_problem_class_names_file_line_and_field(tmp_path, name, content, kwargs, expected):
    path = _write(tmp_path, name, content)
    assert expected in _problems(_cfg(path, **kwargs))


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"query": "q", "positive": "p"}\n{"query": "\xff", "positive": "p"}\n')
    assert "bad.jsonl:2: (line): invalid UTF-8" in _problems(_cfg(path, task="retrieval"))


def test_unknown_piccolo_type_is_reported(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": ["a", "b"], "text_pos": ["p", "p"], "text_neg": [["n"], ["n"]], "type": ["retri_contrast", "mystery"]}).save_to_disk(
        str(tmp_path / "p")
    )
    assert "row 2: type: unknown task type 'mystery'" in _problems(_cfg(tmp_path / "p"))


def test_all_problems_are_collected_not_just_the_first(tmp_path):
    path = _write(tmp_path, "many.jsonl", "".join(json.dumps({"query": "", "positive": "p"}) + "\n" for _ in range(5)))
    with pytest.raises(DataError) as err:
        load_dataset(_cfg(path, task="retrieval"))
    assert len(err.value.problems) == 5 and "5 invalid record(s)" in str(err.value)


def test_documented_skip_rules_are_counted(tmp_path):
    path = _write(tmp_path, "r.jsonl", "".join(json.dumps({"query": f"q{i}", "positive": "p", "negatives": ["p", "n"]}) + "\n" for i in range(4)))
    ds = load_dataset(_cfg(path, task="retrieval", max_samples=3))
    assert len(ds) == 3 and ds.rows[0]["negatives"] == ["n"]
    assert ds.skipped["negatives equal to a positive (removed)"] == 3
    assert ds.skipped["rows beyond max_samples"] == 1


def test_data_check_cli_exits_nonzero_and_names_file_line(tmp_path):
    path = _write(tmp_path, "bad.tsv", "sentence1\tsentence2\tscore\na\tb\t1\n\tb\t2\n")
    result = subprocess.run([sys.executable, "-m", "hybridembed.cli", "data", "check", str(path), "--task", "sts"], capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{path}:3: text1: empty or whitespace-only text" in result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "hybridembed.cli", "data", "check", str(_write(tmp_path, "ok.tsv", "sentence1\tsentence2\tscore\na\tb\t1\n")), "--task", "sts"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert good.returncode == 0 and "1 rows" in good.stdout
