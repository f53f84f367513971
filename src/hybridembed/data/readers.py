"""The one place input files are read: raw records (`read_records`) and texts (`iter_texts`), streamed with the same `file:line: field: problem` errors for every command."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import chain
from pathlib import Path
from typing import Any, Literal

from hybridembed.errors import DataError

# csv's default limit (131,072 characters per field) would end a long passage in a traceback.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time: memory holds one batch, not the file
MAX_PROBLEMS = 200  # problems kept for one error message, for every reader (the count covers them all)
OnEmpty = Literal["skip", "keep", "fail"]


class FileKind(StrEnum):
    """How a file is read: by its suffix (.txt reads as tsv records; as one text per line in `iter_texts`)."""

    JSONL = "jsonl"  # .jsonl, .ndjson, .json (one record per line, or one array)
    CSV = "csv"
    TSV = "tsv"
    PARQUET = "parquet"
    HF_DISK = "hf_disk"  # a `datasets` save_to_disk folder

    @property
    def is_text(self) -> bool:
        """Text formats report `file:line`; binary ones report `file:row`."""
        return self in (FileKind.JSONL, FileKind.CSV, FileKind.TSV)


@dataclass(frozen=True)
class RawRecord:
    line: int  # 1-based line in the file (row number for binary formats)
    fields: dict[str | int, Any]  # by field name; by 0-based column index for csv/tsv read without a header


STREAM_HINT = " (a folder or glob of shards is read with `streaming: true`)"


def missing_file(path: Path | str) -> str:
    """The problem of a path that is not there; a glob pattern is pointed at streaming."""
    return f"{path}: file not found" + (STREAM_HINT if any(ch in str(path) for ch in "*?[") else "")


def file_kind(path: Path) -> FileKind:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return FileKind.HF_DISK
        raise DataError([f"{path}: folder is not a Hugging Face save_to_disk dataset (no dataset_info.json/state.json){STREAM_HINT}"])
    suffixes = [s.lower() for s in path.suffixes]
    match suffixes[-1] if suffixes else "":
        case ".jsonl" | ".json" | ".ndjson":
            return FileKind.JSONL
        case ".csv":
            return FileKind.CSV
        case ".tsv" | ".txt":
            return FileKind.TSV
        case ".parquet":
            return FileKind.PARQUET
    raise DataError([f"{path}: unsupported file type (expected .jsonl, .csv, .tsv, .parquet or a save_to_disk folder)"])


def _check_file(path: Path, is_text: bool) -> None:
    if not path.exists():
        raise DataError([missing_file(path)])
    if is_text and path.stat().st_size == 0:
        raise DataError([f"{path}: empty file"])


def read_records(path: str | Path, header: bool = True, kind: FileKind | str | None = None) -> Iterator[RawRecord]:
    """Yield records; without a header, csv/tsv fields are keyed by their 0-based column index.

    `kind` (jsonl / csv / tsv / parquet / hf_disk) overrides the one the file name implies.
    """
    path = Path(path)
    _check_file(path, is_text=False)  # before file_kind: a missing path is "not found", not "unsupported"
    kind = FileKind(kind) if kind else file_kind(path)
    _check_file(path, is_text=kind.is_text)
    match kind:
        case FileKind.JSONL:
            yield from _read_jsonl(path)
        case FileKind.CSV:
            yield from _read_delimited(path, ",", header, quoting=csv.QUOTE_MINIMAL)
        case FileKind.TSV:
            yield from _read_delimited(path, "\t", header, quoting=csv.QUOTE_NONE)
        case FileKind.PARQUET:
            yield from _read_parquet(path)
        case FileKind.HF_DISK:
            yield from _read_hf_disk(path)
        case _:
            raise ValueError(f"unknown reader kind {kind!r}")


def decode_line(path: Path | str, number: int, raw: bytes) -> str:
    """One line's text (with its line end); invalid UTF-8 is reported with its line, a BOM on line 1 is dropped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError([f"{path}:{number}: (line): invalid UTF-8 at byte {err.start}"]) from None
    # A UTF-8 byte order mark (Windows editors write one) is not part of the first text or column name.
    return text.removeprefix("\ufeff") if number == 1 else text


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text with its line end) one line at a time, so invalid UTF-8 is reported with its line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            yield number, decode_line(path, number, raw)


def _read_jsonl(path: Path) -> Iterator[RawRecord]:
    lines = _decoded_lines(path)
    first = next(((n, t) for n, t in lines if t.strip()), None)
    lines = chain([first] if first else [], lines)
    # A .json file may be one array of records (alpaca, ShareGPT dumps) instead of one record per line.
    is_array = path.suffix.lower() == ".json" and first is not None and first[1].lstrip().startswith("[")
    records = _read_json_array(path, lines) if is_array else _read_json_lines(path, lines)
    seen_any = False
    for record in records:
        seen_any = True
        yield record
    if not seen_any:
        raise DataError([f"{path}: empty file (no records)"])


def parse_json_line(path: Path | str, number: int, text: str) -> dict[str | int, Any]:
    """The JSON object on one (non-blank) line, or a `file:line: (line): …` error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError([f"{path}:{number}: (line): invalid JSON: {err.msg}"]) from None
    if not isinstance(value, dict):
        raise DataError([f"{path}:{number}: (line): expected a JSON object, got {type(value).__name__}"])
    return value


def _read_json_lines(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[RawRecord]:
    for number, text in lines:
        if text.strip():
            yield RawRecord(number, parse_json_line(path, number, text))


def _read_json_array(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[RawRecord]:
    """The records of a `[{...}, {...}]` file, each at the line where it starts, holding about one record in memory."""
    decoder = json.JSONDecoder()
    pending: list[str] = []  # lines not decoded yet; the first of them is line `first`
    first, size, retry_at, opened = 1, 0, 0, False
    for number, text in chain(lines, [(0, "")]):  # line 0: the end of the file
        final = number == 0
        if not final:
            if not pending:
                first = number
            pending.append(text)
            size += len(text)
            # Only a line ending a value (`}`, `},`, `]`) can complete a record, and after a failed
            # attempt the next waits until the pending text has doubled: decoding stays linear.
            if size < retry_at or not text.rstrip().endswith(("}", "},", "]", "],")):
                continue
        buffer = "".join(pending)
        pos, counted, line = 0, 0, first
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n,":
                pos += 1
            if pos == len(buffer):
                break
            if not opened:  # _read_jsonl saw that the first line starts with "["
                opened, pos = True, pos + 1
                continue
            if buffer[pos] == "]":
                return
            line += buffer.count("\n", counted, pos)
            counted = pos
            try:
                value, pos = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as err:
                # JSON strings and numbers never span lines, so an undecodable record may just
                # continue on the next line: only at the end of the file is it an error.
                if final:
                    raise DataError([f"{path}:{line}: (record): invalid JSON: {err.msg}"]) from None
                break
            if not isinstance(value, dict):
                raise DataError([f"{path}:{line}: (record): expected a JSON object, got {type(value).__name__}"])
            yield RawRecord(line, value)
        rest = buffer[pos:]
        first = line + buffer.count("\n", counted, pos)
        pending, size = ([rest], len(rest)) if rest.strip() else ([], 0)
        retry_at = 2 * size


def _read_delimited(path: Path, delimiter: str, header: bool, quoting: Literal[0, 1, 2, 3]) -> Iterator[RawRecord]:  # a csv.QUOTE_* constant
    # csv.reader pulls decoded lines one at a time: the file is streamed, and invalid UTF-8 is still
    # reported with its line number. csv: strict quoting, so an unterminated or stray quote is an
    # error instead of a field that silently swallows the following lines (tsv has no quoting at all).
    lines = (text for _, text in _decoded_lines(path))
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=quoting != csv.QUOTE_NONE)
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError([f"{path}: not a readable parquet file ({err})"]) from None
    if parquet.metadata.num_rows == 0:
        raise DataError([f"{path}: empty file (no rows)"])
    number = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            number += 1
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
    return file_kind(Path(path)).is_text


def lone_surrogate(text: str) -> tuple[int, int] | None:
    """(position, code point) of the first unpaired surrogate in `text`, None when there is none.

    JSON allows escapes such as "\\ud800" that decode to half of a UTF-16 pair; Python keeps such a
    code point in a str, but it is not Unicode text: it cannot be UTF-8 encoded, and the Rust
    tokenizers refuse it. (A proper pair, "\\ud83d\\ude00", decodes to one character and is fine.)
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start, ord(text[err.start])
    return None


def text_problem(value: Any, allow_blank: bool = False) -> str | None:
    """Why `value` is not usable text, in the words every reader reports after `file:line: field: `; None when it is."""
    if value is None or (isinstance(value, str) and not allow_blank and not value.strip()):
        return "missing or empty text"
    if not isinstance(value, str):
        return f"expected text, got {type(value).__name__}"
    surrogate = lone_surrogate(value)
    if surrogate is not None:
        return f"contains a lone surrogate (U+{surrogate[1]:04X}) at character {surrogate[0]}"
    return None


@dataclass(frozen=True)
class TextRecord:
    line: int  # 1-based line (row number for binary formats)
    text: str  # "" for a blank line or empty text kept with on_empty="keep"
    fields: dict[str | int, Any]  # the whole record ({} for a .txt line)


@dataclass
class TextStream:
    """The texts of one file, streamed: iterate once; problems of single records are collected and raised together at the end.

    `.txt`: one text per line (the line end removed, nothing else). Other files: field `text_field`
    of each record (`read_records`). `on_empty` says what a blank line / an empty text is:
    ``"skip"`` (default): a blank .txt line is skipped, an empty record field is a problem (a
    record is meant as data, a blank line is layout); ``"keep"``: both are yielded as "" (rows
    stay aligned with the input); ``"fail"``: both are problems. Blank lines and empty texts,
    skipped or kept, are counted in `blank_lines`. A file without any text is an error.
    """

    path: Path
    text_field: str | int = "text"
    on_empty: OnEmpty = "skip"
    header: bool = True
    kind: FileKind | str | None = None
    blank_lines: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the first MAX_PROBLEMS
    problem_count: int = 0

    def add_problem(self, problem: str) -> None:
        """Record a problem; callers add their own (e.g. a bad id) so that one error lists them all."""
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def check(self) -> None:
        """Raise the collected problems; iteration does so at its end (call it after stopping early)."""
        if self.problem_count:
            noun = "line(s)" if self.is_text_file else "record(s)"
            raise DataError(self.problems, summary=f"{self.path}: {self.problem_count} invalid {noun}")

    @property
    def is_text_file(self) -> bool:
        return self.kind is None and self.path.suffix.lower() == ".txt"

    def __iter__(self) -> Iterator[TextRecord]:
        texts = 0
        for item in self._lines() if self.is_text_file else self._records():
            texts += bool(item.text)
            yield item
        self.check()
        if not texts:
            raise DataError([f"{self.path}: empty file (no text lines)" if self.is_text_file else f"{self.path}: no text in field {self.text_field!r}"])

    def _empty(self, line: int, problem: str, fields: dict[str | int, Any], skippable: bool) -> Iterator[TextRecord]:
        if self.on_empty == "fail" or (self.on_empty == "skip" and not skippable):
            self.add_problem(f"{self.path}:{line}: {problem}")
            return
        self.blank_lines.append(line)
        if self.on_empty == "keep":
            yield TextRecord(line, "", fields)

    def _lines(self) -> Iterator[TextRecord]:
        _check_file(self.path, is_text=True)
        for number, line in _decoded_lines(self.path):
            text = line.removesuffix("\n").removesuffix("\r")
            if text.strip():
                yield TextRecord(number, text, {})
            else:
                yield from self._empty(number, "text: empty line", {}, skippable=True)

    def _records(self) -> Iterator[TextRecord]:
        for record in read_records(self.path, self.header, self.kind):
            value: Any = record.fields.get(self.text_field)  # a str once text_problem passes it
            problem: str | None
            if value is None:
                names = sorted(map(str, record.fields))
                problem = f"missing or empty text (the record's fields: {', '.join(names[:10])}{', …' if len(names) > 10 else ''})"
            else:
                problem = text_problem(value, allow_blank=True)
            if problem is not None:
                self.add_problem(f"{self.path}:{record.line}: {self.text_field}: {problem}")
            elif not value.strip():
                yield from self._empty(record.line, f"{self.text_field}: missing or empty text", record.fields, skippable=False)
            else:
                yield TextRecord(record.line, value, record.fields)


def iter_texts(
    path: str | Path, text_field: str | int = "text", on_empty: OnEmpty = "skip", header: bool = True, kind: FileKind | str | None = None
) -> TextStream:
    """The texts of `path` as TextRecord(line, text, fields) items; see `TextStream` for the rules."""
    return TextStream(Path(path), text_field, on_empty, header, kind)
