"""Streamed mlm corpora: .txt/.jsonl/.parquet shards striped over ranks × workers without overlap, records split across batches resumed mid-record, masks a pure function of (seed, rank, batch), bad records failing with file:line, and SIGKILL → resume (2 processes × 2 workers) training the same texts with the same losses."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from helpers import kill_after_first_checkpoint, launch_traced_training, read_trace
from hybridembed.data.streaming import TRACE_ENV
from hybridembed.data.text_stream import StreamedTexts, count_streamed_texts, open_text_sources
from hybridembed.errors import DataError
from hybridembed.recipe import StageConfig, TextsConfig
from hybridembed.training.stream_training import pass_through

MAX_STEPS, SAVE_STEPS, BATCH = 100, 5, 4


def _corpus(folder: Path, lines: int = 90, records: int = 60) -> Path:
    """A .txt shard (with blank lines), a .jsonl shard of 1-, 2- and 3-text records and a parquet shard; every text unique."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "a.txt", "w", encoding="utf-8") as f:
        for i in range(lines):
            f.write(f"line {i} of the text shard\n" + ("\n" if i % 13 == 0 else ""))
    with open(folder / "b.jsonl", "w", encoding="utf-8") as f:
        for i in range(records):
            row = (
                {"query": f"query {i}", "positive": f"passage {i}"}
                if i % 3
                else {"query": f"query {i}", "positive": f"passage {i}", "negative": f"negative {i}"}
            )
            f.write(json.dumps(row if i % 5 else {"text": f"text {i}"}) + "\n")
    pq.write_table(pa.Table.from_pylist([{"text": f"parquet text {i}"} for i in range(40)]), folder / "c.parquet", row_group_size=7)
    return folder


def _all_texts(folder: Path) -> list[str]:
    sources = open_text_sources([TextsConfig(path=str(folder), streaming=True)])
    from hybridembed.data.streaming import Cursor
    from hybridembed.data.text_stream import _text_reader

    return [t for s, p in enumerate(sources.files) for line, rec in _text_reader(p)(p, Cursor(), 0, 1) for t in sources.texts(s, p, line, rec)]


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert_dir))


def _stream(folder: Path, tokenizer, rank: int = 0, world_size: int = 1) -> StreamedTexts:
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.3)
    sources = open_text_sources([TextsConfig(path=str(folder), streaming=True)])
    return StreamedTexts(sources, tokenizer, collator, max_length=16, batch_size=BATCH, seed=3, rank=rank, world_size=world_size)


def _batches(stream: StreamedTexts, n: int, workers: int, resume: dict | None = None) -> list[dict]:
    stream.resume = resume or {}
    loader = DataLoader(stream, batch_size=None, collate_fn=pass_through, num_workers=workers)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_ranks_and_workers_read_disjoint_texts_and_a_resumed_reader_continues_mid_record(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv(TRACE_ENV, str(tmp_path))  # batches carry their texts
    folder = _corpus(tmp_path / "corpus")
    everything = _all_texts(folder)
    assert len(everything) == len(set(everything)) == 90 + (12 * 1 + 16 * 3 + 32 * 2) + 40  # jsonl: 12 one-text, 16 three-text, 32 two-text records
    per_pass = len(everything) // (2 * 2 * BATCH)  # batches per reader slot that stay inside the first pass
    seen = []
    for rank in (0, 1):
        batches = _batches(_stream(folder, tokenizer, rank, 2), 2 * per_pass, workers=2)
        seen += [t for b in batches for t in b["stream_rows"]]
        # Resume after k batches (even or odd: the loader starts again at worker 0): the same texts and masks follow.
        for k in (per_pass // 2 * 2, per_pass // 2 * 2 + 1):
            states = {str(b["stream_state"]["worker"]): b["stream_state"] for b in batches[:k]}
            resumed = _batches(_stream(folder, tokenizer, rank, 2), 2 * per_pass - k, workers=2, resume=states)
            assert [b["stream_rows"] for b in resumed] == [b["stream_rows"] for b in batches[k:]], f"resumed after {k} batches"
            for got, want in zip(resumed, batches[k:]):
                assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])
    assert len(seen) == len(set(seen)), "no text read twice across ranks and workers"
    assert set(seen) <= set(everything)
    assert any(batch.count(" ") for batch in seen)  # sanity: real texts


def test_masks_differ_between_batches_and_ranks(tmp_path, tokenizer):
    folder = tmp_path / "same"
    folder.mkdir()
    (folder / "t.txt").write_text("".join("the same words in every line of this file\n" for _ in range(64)))
    a = _batches(_stream(folder, tokenizer, 0, 2), 3, workers=0)
    b = _batches(_stream(folder, tokenizer, 1, 2), 3, workers=0)
    assert not torch.equal(a[0]["labels"], a[1]["labels"])
    assert not torch.equal(a[0]["labels"], b[0]["labels"])
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(a, _batches(_stream(folder, tokenizer, 0, 2), 3, workers=0)))


def test_a_bad_record_arrives_as_an_error_batch_with_file_and_line(tmp_path, tokenizer):
    folder = tmp_path / "bad"
    folder.mkdir()
    lines = [json.dumps({"text": f"fine {i}"}) for i in range(30)] + [json.dumps({"text": "   "})]
    (folder / "part.jsonl").write_text("\n".join(lines) + "\n")
    batches = _batches(_stream(folder, tokenizer), 20, workers=0)
    error = batches[-1]
    assert error["stream_error"] == [f"{folder / 'part.jsonl'}:31: text_fields: no text in this record"]
    assert (error["labels"] == -100).all() and "input_ids" in error  # the trainer's bookkeeping sees a usual batch
    assert len(batches) == 30 // BATCH + 1


def test_up_front_checks(tmp_path):
    with pytest.raises(DataError, match="no shards"):
        open_text_sources([TextsConfig(path=str(tmp_path / "nothing-*.txt"), streaming=True)])
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="a streamed shard is one of .txt"):
        open_text_sources([TextsConfig(path=str(tmp_path / "x.csv"), streaming=True)])
    (tmp_path / "odd.jsonl").write_text(json.dumps({"colour": "red"}) + "\n")
    with pytest.raises(DataError, match=r"odd.jsonl:1: text_fields: cannot tell which fields hold text"):
        open_text_sources([TextsConfig(path=str(tmp_path / "odd.jsonl"), streaming=True)])
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"bad.txt:2: \(line\): invalid UTF-8"):
        count_streamed_texts(TextsConfig(path=str(tmp_path / "bad.txt"), streaming=True))
    with pytest.raises(ValueError, match="max_samples"):
        TextsConfig(path="a.txt", streaming=True, max_samples=5)
    with pytest.raises(ValueError, match="stream every text file"):
        StageConfig(kind="mlm", texts=[{"path": "a.txt", "streaming": True}, {"path": "b.txt"}])


def _recipe(tmp_path: Path, backbone: Path, corpus: Path, out: Path) -> Path:
    recipe = {
        "model": {"backbone": str(backbone), "max_seq_length": 16},
        "stages": [{"kind": "mlm", "texts": [{"path": str(corpus), "streaming": True}]}],
        "training": {"output_dir": str(out), "batch_size": BATCH, "max_steps": MAX_STEPS, "save_steps": SAVE_STEPS, "save_total_limit": 2,
                     "learning_rate": 1e-3, "logging_steps": 1, "report_to": [], "seed": 7, "dataloader_num_workers": 2},
    }  # fmt: skip
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _losses(stage: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in map(json.loads, (stage / "training_log.jsonl").read_text().splitlines()) if "loss" in e}


@pytest.mark.timeout(900)
def test_streamed_mlm_stage_killed_and_resumed_trains_every_text_once_with_the_same_losses(tmp_path, tiny_bert_dir):
    rng = random.Random(int(os.environ.get("RESUME_TEST_SEED", random.randrange(1 << 16))))
    corpus = _corpus(tmp_path / "corpus", lines=500, records=300)  # one pass: 100 steps × 2 ranks × 4 texts < 1,020 texts
    reference = launch_traced_training(_recipe(tmp_path, tiny_bert_dir, corpus, tmp_path / "reference"), tmp_path / "trace-ref")
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    want = read_trace(tmp_path / "trace-ref")
    assert {s for s, _, _ in want} == set(range(MAX_STEPS))
    texts = [t for _, _, batch in want for t in batch]
    assert len(texts) == len(set(texts)) == MAX_STEPS * 2 * BATCH, "no text trained twice, across ranks and workers"

    out = tmp_path / "resumed"
    stage = out / "stage-1-mlm"
    first = launch_traced_training(_recipe(tmp_path, tiny_bert_dir, corpus, out), tmp_path / "trace-1")
    saved = kill_after_first_checkpoint(first, stage, rng)
    assert saved and saved[-1] < MAX_STEPS, "killed before the end"
    second = launch_traced_training(_recipe(tmp_path, tiny_bert_dir, corpus, out), tmp_path / "trace-2", "--resume")
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    resumed_from = saved[-1]
    assert min(s for s, _, _ in read_trace(tmp_path / "trace-2")) == resumed_from
    got = read_trace(tmp_path / "trace-1", before_step=resumed_from) | read_trace(tmp_path / "trace-2")
    assert got == want, f"resumed at step {resumed_from}: the interrupted + resumed run trained other texts than the uninterrupted one"
    reference_losses, resumed_losses = _losses(tmp_path / "reference" / "stage-1-mlm"), _losses(stage)
    after = [s for s in reference_losses if s > resumed_from]
    assert after and all(abs(resumed_losses[s] - reference_losses[s]) < 1e-4 for s in after), "same texts, same masks: same losses"


def test_a_streamed_mlm_run_stops_at_the_bad_record_with_its_line(tmp_path, tiny_bert_dir):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "part.jsonl").write_text("".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(40)) + json.dumps({"text": 3}) + "\n")
    recipe = yaml.safe_load(_recipe(tmp_path, tiny_bert_dir, folder, tmp_path / "out").read_text())
    recipe["training"].update(max_steps=100, save_steps=None)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([sys.executable, "-m", "hybridembed.cli", "train", str(tmp_path / "bad.yaml")], text=True, capture_output=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, timeout=300)  # fmt: skip
    assert result.returncode != 0
    assert f"{folder / 'part.jsonl'}:41: text_fields: no text in this record" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_streamed_mlm_stage_needs_max_steps(tmp_path, tiny_bert_dir):
    recipe = yaml.safe_load(_recipe(tmp_path, tiny_bert_dir, _corpus(tmp_path / "c"), tmp_path / "out").read_text())
    recipe["training"].pop("max_steps")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([sys.executable, "-m", "hybridembed.cli", "train", str(tmp_path / "r.yaml")], text=True, capture_output=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)  # fmt: skip
    assert result.returncode != 0 and "set max_steps" in result.stderr and "Traceback" not in result.stderr


def test_data_check_counts_every_text_of_a_streamed_mlm_stage(tmp_path, tiny_bert_dir, capsys):
    from hybridembed.cli import main

    folder = _corpus(tmp_path / "c")
    recipe = _recipe(tmp_path, tiny_bert_dir, folder, tmp_path / "out")
    assert main(["data", "check", str(recipe)]) == 0
    assert f"texts {folder}: {len(_all_texts(folder))} texts" in capsys.readouterr().out
    with open(folder / "b.jsonl", "a", encoding="utf-8") as f:
        f.write('{"query": ""}\n')
    assert main(["data", "check", str(recipe)]) == 2
    printed = capsys.readouterr()
    assert f"{folder / 'b.jsonl'}:61: text_fields:" in printed.out + printed.err
