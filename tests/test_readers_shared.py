"""The shared reader (hybridembed.data.readers) on ragged input, and every reader converted to it reporting the same message for the same bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridembed.data import readers
from hybridembed.data.readers import iter_texts, lone_surrogate, read_records
from hybridembed.errors import DataError

LONG = 200_000  # > csv's default field_size_limit (131,072 characters)


def _problems(read) -> str:
    with pytest.raises(DataError) as err:
        read()
    return "\n".join(err.value.problems)


def _eval_spec(path: Path, header: bool = True):
    from hybridembed.evaluation.suite import TaskSpec

    columns = {"text1": "text", "text2": "text", "score": "score"} if header else {"text1": 0, "text2": 0, "score": 1}
    return TaskSpec(name="t", type="sts", path=path, header=header, columns=columns)


def _beir(folder: Path) -> Path:
    """A valid BEIR folder; tests overwrite its queries.jsonl with the bad file."""
    folder.mkdir()
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": "a passage"}) + "\n", encoding="utf-8")
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    return folder / "queries.jsonl"


def _record_readers(path: Path) -> dict:
    """Every converted reader of `path` (a .jsonl whose records carry `_id`, `text` and `score`)."""
    from hybridembed.commands.encode import read_input
    from hybridembed.commands.tokenizer import read_corpus
    from hybridembed.data.instructions import read_instruction_pairs
    from hybridembed.evaluation.local_data import read_beir, read_columns
    from hybridembed.evaluation.suite import TaskSpec
    from hybridembed.synthesize.corpus import read_passages

    return {
        "iter_texts": lambda: list(iter_texts(path)),
        "encode": lambda: read_input(path),
        "synthesize": lambda: read_passages(path),
        "tokenizer": lambda: read_corpus([f"{path}:text"]),
        "instructions": lambda: read_instruction_pairs(path),
        "eval columns": lambda: read_columns(_eval_spec(path)),
        "eval beir": lambda: read_beir(TaskSpec(name="b", type="retrieval", path=path.parent)),
    }


def _text_readers(path: Path) -> dict:
    """Every converted reader of a .txt file (one text per line)."""
    from hybridembed.commands.encode import read_input
    from hybridembed.commands.tokenizer import read_corpus

    return {"iter_texts": lambda: list(iter_texts(path)), "encode": lambda: read_input(path), "tokenizer": lambda: read_corpus([path])}


RECORD = {"_id": "q1", "text": "fine", "score": 1}
BAD_RECORD_FILES = {
    # name: (bytes of the file, the one message every reader reports)
    "invalid UTF-8 on line 3": (
        (json.dumps(RECORD) + "\n\n").encode() + b'{"_id": "q2", "text": "caf\xe9", "score": 1}\n',
        "{path}:3: (line): invalid UTF-8 at byte 26",
    ),
    "invalid JSON on line 2": ((json.dumps(RECORD) + '\n{"_id": "q2", "text": \n').encode(), "{path}:2: (line): invalid JSON: Expecting value"),
    "empty file": (b"", "{path}: empty file"),
    "blank lines only": (b"\n  \n", "{path}: empty file (no records)"),
}


@pytest.mark.parametrize("case", list(BAD_RECORD_FILES))
def test_every_reader_reports_the_same_message_for_the_same_bad_record_file(tmp_path, case):
    content, message = BAD_RECORD_FILES[case]
    path = _beir(tmp_path / "beir")
    path.write_bytes(content)
    expected = message.format(path=path)
    got = {name: _problems(read) for name, read in _record_readers(path).items()}
    assert got == dict.fromkeys(got, expected)


def test_every_reader_reports_a_missing_file_alike(tmp_path):
    path = tmp_path / "absent.jsonl"
    readers_of = _record_readers(path)
    del readers_of["eval beir"]  # a folder without queries.jsonl is its own error (below)
    got = {name: _problems(read) for name, read in readers_of.items()} | {
        name: _problems(read) for name, read in _text_readers(tmp_path / "absent.txt").items()
    }
    assert {name: text.replace(".txt", ".jsonl") for name, text in got.items()} == dict.fromkeys(got, f"{path}: file not found")


def test_text_fields_readers_report_a_lone_surrogate_and_a_missing_field_alike(tmp_path):
    path = _beir(tmp_path / "beir")
    path.write_text(
        json.dumps(RECORD) + "\n" + '{"_id": "q2", "text": "a\\ud800b", "score": 1}\n{"_id": "q3", "body": "x", "score": 1}\n', encoding="utf-8"
    )  # the JSON escape \ud800 decodes to half of a UTF-16 pair
    text_readers = {k: v for k, v in _record_readers(path).items() if k in ("iter_texts", "encode", "synthesize", "eval beir")}
    for name, read in text_readers.items():
        problems = _problems(read)
        assert f"{path}:2: text: contains a lone surrogate (U+D800) at character 1" in problems, name
        assert f"{path}:3: text: missing or empty text (the record's fields: _id, body, score)" in problems, name
    # The evaluation reader maps columns: the same surrogate message, then its own "column missing".
    problems = _problems(_record_readers(path)["eval columns"])
    assert f"{path}:2: text: contains a lone surrogate (U+D800) at character 1" in problems


def test_instruction_fields_with_a_lone_surrogate_are_named(tmp_path):
    from hybridembed.data.instructions import read_instruction_pairs

    path = tmp_path / "sft.jsonl"
    path.write_text(
        '{"instruction": "ok", "output": "fine answer"}\n{"instruction": "q", "output": "x\\udc00"}\n'
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d\\ude00 \\udfff"}]}]}\n',
        encoding="utf-8",
    )
    problems = _problems(lambda: read_instruction_pairs(path))
    assert f"{path}:2: output: contains a lone surrogate (U+DC00) at character 1" in problems
    assert f"{path}:3: messages[0].content: contains a lone surrogate (U+DFFF) at character 2" in problems  # a real pair is one character


def test_lone_surrogate_finds_only_unpaired_halves():
    assert lone_surrogate("plain ascii") is None
    assert lone_surrogate("emoji \U0001f600 and 中文") is None
    assert lone_surrogate("ab\ud800") == (2, 0xD800)
    assert lone_surrogate(json.loads('"\\udc00x"')) == (0, 0xDC00)


def test_blank_lines_of_a_text_file_are_skipped_and_counted_or_kept_or_errors(tmp_path, caplog):
    from hybridembed.commands.encode import read_input
    from hybridembed.commands.tokenizer import read_corpus

    path = tmp_path / "texts.txt"
    path.write_bytes(b"first\r\n\n   \n  second  \n\n")
    stream = iter_texts(path)
    assert [(t.line, t.text) for t in stream] == [(1, "first"), (4, "  second  ")]  # only the line end is removed
    assert stream.blank_lines == [2, 3, 5]
    kept = read_input(path)  # encode keeps rows aligned with lines
    assert kept.texts == ["first", "", "", "  second  ", ""] and kept.empty_lines == [2, 3, 5]
    with caplog.at_level("INFO", logger="hybridembed.commands.tokenizer"):
        assert read_corpus([path]) == ["first", "second"]
    assert f"{path}: 3 blank line(s) skipped" in caplog.text
    problems = _problems(lambda: read_input(path, on_empty="fail"))
    assert problems == "\n".join(f"{path}:{n}: text: empty line" for n in (2, 3, 5))


def test_an_empty_record_text_is_an_error_unless_kept(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a"}\n{"text": "  "}\n', encoding="utf-8")
    assert _problems(lambda: list(iter_texts(path))) == f"{path}:2: text: missing or empty text"
    stream = iter_texts(path, on_empty="keep")
    assert [t.text for t in stream] == ["a", ""] and stream.blank_lines == [2]


def test_a_file_without_any_text_is_an_error(tmp_path):
    from hybridembed.commands.encode import read_input

    txt = tmp_path / "blank.txt"
    txt.write_text("\n \n\t\n", encoding="utf-8")
    for name, read in _text_readers(txt).items():
        assert _problems(read) == f"{txt}: empty file (no text lines)", name
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    for name, read in _text_readers(empty).items():
        assert _problems(read) == f"{empty}: empty file", name
    records = tmp_path / "docs.jsonl"
    records.write_text('{"text": ""}\n', encoding="utf-8")
    assert _problems(lambda: read_input(records)) == f"{records}: no text in field 'text'"


def test_a_utf8_bom_is_not_part_of_the_first_text_or_column_name(tmp_path):
    from hybridembed.commands.encode import read_input
    from hybridembed.data.instructions import read_instruction_pairs
    from hybridembed.evaluation.local_data import read_columns

    bom = "\ufeff"
    txt = tmp_path / "t.txt"
    txt.write_text(bom + "first\nsecond\n", encoding="utf-8")
    assert [t.text for t in iter_texts(txt)] == ["first", "second"]
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(bom + "text,score\nhello,1\n", encoding="utf-8")
    assert [r.fields for r in read_records(csv_path)] == [{"text": "hello", "score": "1"}]
    assert read_input(csv_path).texts == ["hello"]
    tsv = tmp_path / "t.tsv"
    tsv.write_text(bom + "text\tscore\nhello\t1\n", encoding="utf-8")
    assert read_columns(_eval_spec(tsv))[0]["text1"] == "hello"
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(bom + '{"text": "hello"}\n', encoding="utf-8")
    assert [t.text for t in iter_texts(jsonl)] == ["hello"]
    array = tmp_path / "sft.json"
    array.write_text(bom + json.dumps([{"instruction": "q", "output": "an answer"}], indent=2), encoding="utf-8")
    pairs, records = read_instruction_pairs(array)
    assert records == 1 and (pairs[0].query, pairs[0].line) == ("q", 2)


def test_a_csv_field_longer_than_csvs_default_limit_is_read_by_every_reader(tmp_path):
    from hybridembed.commands.encode import read_input
    from hybridembed.evaluation.local_data import read_columns

    long_text = "a, b " * (LONG // 5)  # commas inside the quoted field
    path = tmp_path / "long.csv"
    path.write_text(f'text,score\n"{long_text}",1\nshort,2\n', encoding="utf-8")
    assert [(t.line, len(t.text)) for t in iter_texts(path)] == [(2, len(long_text)), (3, 5)]
    assert read_input(path).texts[0] == long_text
    assert read_columns(_eval_spec(path))[0]["text1"] == long_text


@pytest.mark.parametrize("name", ["data.csv", "data.tsv"])
def test_delimited_files_are_streamed_invalid_utf8_still_names_its_line(tmp_path, name):
    sep = "," if name.endswith(".csv") else "\t"
    path = tmp_path / name
    path.write_bytes(f"text{sep}score\nfirst{sep}1\nsecond{sep}2\n".encode() + b"bad \xff" + f"{sep}3\n".encode())
    records = read_records(path)
    assert next(records).fields == {"text": "first", "score": "1"}  # before the bad line is decoded
    assert next(records).line == 3
    with pytest.raises(DataError, match=rf"{name}:4: \(line\): invalid UTF-8 at byte 4"):
        next(records)


def test_parquet_is_read_in_batches_not_as_one_table(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hybridembed.commands.encode import read_input

    path = tmp_path / "docs.parquet"
    table = pa.table({"id": [f"d{i}" for i in range(35)], "text": [f"text {i}" for i in range(35)]})
    pq.write_table(table, path, row_group_size=10)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4

    def whole_table(*args, **kwargs):
        raise AssertionError("pq.read_table holds the whole file in memory")

    batches: list[int] = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in original(self, *args, **kwargs):
            batches.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq, "read_table", whole_table)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 8)
    records = read_records(path)
    assert next(records) == readers.RawRecord(1, {"id": "d0", "text": "text 0"})
    assert batches == [8]  # one batch decoded for the first record
    rest = list(records)
    assert [r.line for r in rest] == list(range(2, 36)) and len(batches) > 4
    assert max(batches) <= 8 and sum(batches) == 35
    data = read_input(path)  # encode reads parquet through the same reader
    assert data.texts[-1] == "text 34" and data.ids[:2] == ["d0", "d1"]


def test_json_array_records_are_streamed_and_named_by_their_first_line(tmp_path):
    path = tmp_path / "records.json"
    path.write_text('[\n  {"text": "one",\n   "n": 1},\n  {"text": "two"}, {"text": "three"},\n  {"text": \n]\n', encoding="utf-8")
    records = read_records(path)
    assert [(r.line, r.fields["text"]) for r in (next(records), next(records), next(records))] == [(2, "one"), (4, "two"), (4, "three")]
    with pytest.raises(DataError, match=r"records.json:5: \(record\): invalid JSON: Expecting value"):
        next(records)


def test_problems_are_capped_but_counted(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join('{"body": "x"}\n' for _ in range(readers.MAX_PROBLEMS + 50)), encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(iter_texts(path))
    assert len(err.value.problems) == readers.MAX_PROBLEMS
    assert str(err.value).startswith(f"{path}: {readers.MAX_PROBLEMS + 50} invalid record(s)")


def test_beir_keeps_empty_queries_and_title_only_documents(tmp_path):
    """Real sets hold them (cmrc2018 has empty queries); evaluation read them before the shared reader, and still does."""
    from hybridembed.evaluation.local_data import read_beir
    from hybridembed.evaluation.suite import TaskSpec

    queries = _beir(tmp_path / "beir")
    (queries.parent / "corpus.jsonl").write_text('{"_id": "d1", "title": "a title", "text": ""}\n{"_id": "d2", "text": "body"}\n', encoding="utf-8")
    queries.write_text('{"_id": "q1", "text": "a question"}\n{"_id": "q2", "text": ""}\n', encoding="utf-8")
    data = read_beir(TaskSpec(name="b", type="retrieval", path=queries.parent))
    assert data.queries == {"q1": "a question", "q2": ""}
    assert data.corpus == {"d1": "a title", "d2": "body"} and data.qrels == {"q1": {"d1": 1}}
    queries.write_text('{"_id": "q1", "text": "a question"}\n{"text": "no id"}\n', encoding="utf-8")
    assert _problems(lambda: read_beir(TaskSpec(name="b", type="retrieval", path=queries.parent))) == f"{queries}:2: _id: missing or empty id"
