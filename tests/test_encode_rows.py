"""`hybridembed encode`: row i of the .npy is line (record) i of the input — blank lines are embedded or a file:line error — and record ids are written beside it."""

from __future__ import annotations

import json

import numpy as np

from hybridembed.cli import main

LINES = ["a man plays a guitar", "", "a woman is cooking", "   ", "the cat sleeps", "", ""]  # blanks in the middle and at the end


def _encode(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["encode", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_blank_lines_keep_rows_aligned_with_lines(tmp_path, tiny_model_dir, capsys):
    from sentence_transformers import SentenceTransformer

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    code, stdout, _ = _encode(capsys, str(tiny_model_dir), "--input", str(texts), "--output", str(out))
    assert code == 0
    emb = np.load(out)
    assert emb.shape[0] == len(LINES)  # one row per line, blank ones included
    assert "4 empty line(s) embedded" in stdout
    model = SentenceTransformer(str(tiny_model_dir))
    expected = model.encode([line if line.strip() else "" for line in LINES], convert_to_numpy=True)
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    assert not (tmp_path / "emb.ids.txt").exists()  # a .txt file has no ids


def test_on_empty_fail_names_every_blank_line(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    code, _, stderr = _encode(capsys, "unused-model", "--input", str(texts), "--output", str(out), "--on-empty", "fail")
    assert code == 2
    for number in (2, 4, 6, 7):
        assert f"{texts}:{number}: text: empty line" in stderr
    assert f"{texts}:1:" not in stderr and not out.exists()


def test_invalid_utf8_line_is_a_file_line_error(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_bytes(b"fine\nbad \xff byte\n")
    code, _, stderr = _encode(capsys, "unused-model", "--input", str(texts), "--output", str(tmp_path / "e.npy"))
    assert code == 2 and f"{texts}:2: (line): invalid UTF-8 at byte 4" in stderr


def test_jsonl_and_csv_ids_are_written_beside_the_embeddings(tmp_path, tiny_model_dir, capsys):
    records = tmp_path / "docs.jsonl"
    records.write_text(
        "".join(json.dumps(r) + "\n" for r in [{"id": "d1", "text": "first"}, {"id": 7, "text": ""}]) + "\n"
        + json.dumps({"id": "d3", "text": "third"}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    code, stdout, _ = _encode(capsys, str(tiny_model_dir), "--input", str(records), "--output", str(tmp_path / "docs"))
    assert code == 0
    assert np.load(tmp_path / "docs.npy").shape[0] == 3
    assert (tmp_path / "docs.ids.txt").read_text(encoding="utf-8").splitlines() == ["d1", "7", "d3"]
    assert "wrote 3 ids" in stdout

    table = tmp_path / "corpus.csv"
    table.write_text('_id,title,body\nx1,t,"hello, world"\nx2,t,second\n', encoding="utf-8")
    code, _, _ = _encode(capsys, str(tiny_model_dir), "--input", str(table), "--field", "body", "--output", str(tmp_path / "c.npy"))
    assert code == 0
    assert np.load(tmp_path / "c.npy").shape[0] == 2
    assert (tmp_path / "c.ids.txt").read_text(encoding="utf-8").splitlines() == ["x1", "x2"]


def test_record_problems_are_file_line_errors(tmp_path, capsys):
    records = tmp_path / "docs.jsonl"
    records.write_text(json.dumps({"id": "a", "text": "ok"}) + "\n" + json.dumps({"id": "b", "body": "x"}) + "\n", encoding="utf-8")
    code, _, stderr = _encode(capsys, "unused-model", "--input", str(records), "--output", str(tmp_path / "e.npy"))
    assert code == 2 and f"{records}:2: text: missing or empty text (the record's fields: body, id)" in stderr


def test_rows_equal_model_encode_across_blocks_and_planned_passes(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """The engine path (blocks tokenized once, passes planned from token counts) gives model.encode's rows, in input order."""
    from sentence_transformers import SentenceTransformer

    from hybridembed.commands import encode

    monkeypatch.setattr(encode, "BLOCK_TEXTS", 4)  # 11 texts: blocks of 4, 4, 3
    lines = ["short", "a much longer line " * 12, "", "short", "mid length line here", "x", "another " * 30, "é漢字", "short", "two words", "end"]
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = SentenceTransformer(str(tiny_model_dir))
    for extra in ([], ["--batch-size", "2"], ["--as-query"]):
        out = tmp_path / "emb.npy"
        assert _encode(capsys, str(tiny_model_dir), "--input", str(texts), "--output", str(out), *extra)[0] == 0
        prompt = "query" if "--as-query" in extra and "query" in (model.prompts or {}) else None
        np.testing.assert_allclose(np.load(out), model.encode(lines, convert_to_numpy=True, prompt_name=prompt), atol=1e-5)


def test_dtype_bfloat16_is_close_to_float32_and_bad_batch_size_is_refused(tmp_path, tiny_model_dir, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    fp32, bf16 = tmp_path / "fp32.npy", tmp_path / "bf16.npy"
    assert _encode(capsys, str(tiny_model_dir), "--input", str(texts), "--output", str(fp32))[0] == 0
    assert _encode(capsys, str(tiny_model_dir), "--input", str(texts), "--output", str(bf16), "--dtype", "bfloat16")[0] == 0
    a, b = np.load(fp32), np.load(bf16)
    assert b.dtype == np.float32 and np.isfinite(b).all()
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosines.min() > 0.99
    code, _, err = _encode(capsys, str(tiny_model_dir), "--input", str(texts), "--output", str(fp32), "--batch-size", "0")
    assert code != 0 and "--batch-size 0" in err and "Traceback" not in err


def test_a_text_the_tokenizer_rejects_is_a_file_line_error(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from hybridembed.serve.batching import InvalidInput
    from hybridembed.serve.engine import ServedModel

    def reject_second(self, texts, prompt_name=None, batch_size=None):
        raise InvalidInput(1, "the tokenizer cannot encode it")

    monkeypatch.setattr(ServedModel, "encode", reject_second)
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "fine"}\n\n{"text": "rejected"}\n', encoding="utf-8")  # record 2 is on line 3
    code, _, err = _encode(capsys, str(tiny_model_dir), "--input", str(texts), "--output", str(tmp_path / "e.npy"))
    assert code != 0 and f"{texts}:3: text: the tokenizer cannot encode it" in err and "Traceback" not in err
