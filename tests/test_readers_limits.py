"""csv/tsv training reader: fields past csv's default 131,072-character limit load, and malformed csv is a file:line error (CLI: no traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hybridembed.data import load_datasets
from hybridembed.data.readers import read_records
from hybridembed.errors import DataError
from hybridembed.recipe import DatasetConfig

LONG = 200_000  # > csv's default field_size_limit (131,072)


def _cfg(path, **kw):
    cfg = DatasetConfig(path=str(path), **kw)
    cfg.name = "test"
    return cfg


def test_tsv_with_a_200k_character_field_loads(tmp_path):
    long_text = "word " * (LONG // 5)
    path = tmp_path / "long.tsv"
    path.write_text(f"sentence1\tsentence2\tscore\nshort\t{long_text}\t3\na\tb\t1\n", encoding="utf-8")
    [dataset] = load_datasets([_cfg(path, task="sts", score_range=(0, 5))])
    assert len(dataset) == 2
    assert len(dataset.rows[0]["text2"].strip()) == len(long_text.strip())


def test_csv_with_a_200k_character_quoted_field_loads(tmp_path):
    long_text = "a, b " * (LONG // 5)  # commas inside the quoted field
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long_text}",x\nshort,y\n', encoding="utf-8")
    records = list(read_records(path))
    assert [r.line for r in records] == [2, 3]
    assert records[0].fields["text"] == long_text


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        ('text,label\nfine,x\nunterminated,"y\nmore,z\n', 3, "unterminated quoted field"),
        ('text,label\nfine,x\n"stray"quote,y\n', 3, "malformed row"),
    ],
)
def test_malformed_csv_is_a_file_line_error(tmp_path, content, line, problem):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_datasets([_cfg(path, task="classification")])
    assert f"{path}:{line}: (row): {problem}" in str(err.value)


def test_data_check_cli_prints_malformed_csv_without_traceback(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('text,label\nfine,x\nunterminated,"y\nmore,z\n', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "hybridembed.cli", "data", "check", str(path), "--task", "classification"], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{path}:3: (row): unterminated quoted field" in result.stderr
    assert "Traceback" not in result.stderr
