"""Readers that stream raw records with their line (or row) number from jsonl, csv, tsv, parquet and HF save_to_disk folders."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridembed.errors import DataError

# csv's default limit (131,072 characters per field) would end a long passage in a traceback; the
# eval reader (evaluation/local_data.py) raises it the same way.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class RawRecord:
    line: int  # 1-based line in the file (row number for binary formats)
    fields: dict[str, Any]


def file_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "hf_disk"
        raise DataError([f"{path}: folder is not a Hugging Face save_to_disk dataset (no dataset_info.json/state.json)"])
    suffixes = [s.lower() for s in path.suffixes]
    match suffixes[-1] if suffixes else "":
        case ".jsonl" | ".json" | ".ndjson":
            return "jsonl"
        case ".csv":
            return "csv"
        case ".tsv" | ".txt":
            return "tsv"
        case ".parquet":
            return "parquet"
    raise DataError([f"{path}: unsupported file type (expected .jsonl, .csv, .tsv, .parquet or a save_to_disk folder)"])


def read_records(path: str | Path, header: bool = True) -> Iterator[RawRecord]:
    """Yield records; without a header, csv/tsv fields are keyed by their 0-based column index."""
    path = Path(path)
    if not path.exists():
        raise DataError([f"{path}: file not found"])
    kind = file_kind(path)
    if kind in ("jsonl", "csv", "tsv") and path.stat().st_size == 0:
        raise DataError([f"{path}: empty file"])
    match kind:
        case "jsonl":
            yield from _read_jsonl(path)
        case "csv":
            yield from _read_delimited(path, ",", header, quoting=csv.QUOTE_MINIMAL)
        case "tsv":
            yield from _read_delimited(path, "\t", header, quoting=csv.QUOTE_NONE)
        case "parquet":
            yield from _read_parquet(path)
        case "hf_disk":
            yield from _read_hf_disk(path)


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError([f"{path}:{number}: (line): invalid UTF-8 at byte {err.start}"]) from None


def _read_jsonl(path: Path) -> Iterator[RawRecord]:
    seen_any = False
    for number, text in _decoded_lines(path):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError([f"{path}:{number}: (line): invalid JSON: {err.msg}"]) from None
        if not isinstance(value, dict):
            raise DataError([f"{path}:{number}: (line): expected a JSON object, got {type(value).__name__}"])
        seen_any = True
        yield RawRecord(number, value)
    if not seen_any:
        raise DataError([f"{path}: empty file (no records)"])


def _read_delimited(path: Path, delimiter: str, header: bool, quoting: int) -> Iterator[RawRecord]:
    # Decode line by line first so invalid UTF-8 is reported with its line number.
    lines = [text for _, text in _decoded_lines(path)]
    # csv: strict quoting, so an unterminated or stray quote is an error instead of a field that
    # silently swallows the following lines (tsv has no quoting at all).
    reader = csv.reader(io.StringIO("".join(lines)), delimiter=delimiter, quoting=quoting, strict=quoting != csv.QUOTE_NONE)
    names: list[str] | None = None
    seen_any = False
    while True:
        start = reader.line_num + 1  # the line the next record starts on
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            if "unexpected end of data" in str(err):
                raise DataError([f"{path}:{start}: (row): unterminated quoted field (its quote is never closed)"]) from None
            raise DataError([f"{path}:{reader.line_num}: (row): malformed row: {err}"]) from None
        number = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header and names is None:
            names = [name.strip() for name in row]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise DataError([f"{path}:{number}: (header): duplicate column name(s) {duplicates}"])
            continue
        expected = len(names) if names is not None else None
        if expected is not None and len(row) != expected:
            raise DataError([f"{path}:{number}: (row): ragged row: {len(row)} fields, header has {expected}"])
        seen_any = True
        keys = names if names is not None else list(range(len(row)))
        yield RawRecord(number, dict(zip(keys, row, strict=True)))
    if not seen_any:
        raise DataError([f"{path}: empty file (no data rows)"])


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if table.num_rows == 0:
        raise DataError([f"{path}: empty file (no rows)"])
    for number, row in enumerate(table.to_pylist(), start=1):
        yield RawRecord(number, row)


def _read_hf_disk(path: Path) -> Iterator[RawRecord]:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise DataError([f"{path}: DatasetDict without a 'train' split (splits: {list(dataset)})"])
        dataset = dataset["train"]
    if len(dataset) == 0:
        raise DataError([f"{path}: empty dataset (no rows)"])
    for number, row in enumerate(dataset, start=1):
        yield RawRecord(number, row)


def is_line_numbered(path: str | Path) -> bool:
    """Text formats report `file:line`; binary ones report `file:row`."""
    return file_kind(Path(path)) in ("jsonl", "csv", "tsv")
