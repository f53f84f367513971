"""Streamed datasets: striping over ranks × workers without overlap, on-the-fly validation with file:line, and SIGKILL → resume without repeated or skipped rows (2 processes × 2 dataloader workers)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import kill_after_first_checkpoint, launch_traced_training, read_trace
from hybridembed.data.streaming import Cursor, StreamedRows, open_stream
from hybridembed.errors import DataError, RecipeError
from hybridembed.recipe import DatasetConfig

MAX_STEPS, SAVE_STEPS, BATCH = 120, 6, 4  # long enough that the kill lands before the end on an idle machine


def _shards(folder: Path, sizes=(150, 170), duplicate_every: int = 0) -> Path:
    """One jsonl and one parquet shard of unique queries (optionally with a repeated passage now and then)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rows = [[{"query": f"q{k}-{i}", "positive": "shared passage" if duplicate_every and i % duplicate_every == 0 else f"p{k}-{i}"}
             for i in range(n)] for k, n in enumerate(sizes)]  # fmt: skip
    with open(folder / "part-0.jsonl", "w", encoding="utf-8") as f:
        for i, row in enumerate(rows[0]):
            f.write(json.dumps(row) + "\n" + ("\n" if i % 37 == 0 else ""))  # blank lines are skipped, not records
    pq.write_table(pa.Table.from_pylist(rows[1]), folder / "part-1.parquet", row_group_size=25)
    return folder


def _read(stream: StreamedRows, worker_states: dict | None = None, batches: int = 10) -> list[list[str]]:
    stream.resume = worker_states or {}
    out = []
    for item in stream:
        out.append([r["query"] for r in item["rows"]])
        if len(out) == batches:
            return out
    return out


def test_ranks_and_workers_read_disjoint_stripes_and_resume_at_a_cursor(tmp_path):
    spec = open_stream(DatasetConfig(path=str(_shards(tmp_path / "d", duplicate_every=7)), task="retrieval"), batch_size=BATCH)
    assert len(spec.files) == 2 and spec.sample[0]["query"].startswith("q")
    seen = []
    for rank in range(8):  # 8 ranks, one worker each: together they read each record once
        stream = StreamedRows([spec], seed=3, rank=rank, world_size=8)
        rows = [q for batch in _read(stream, batches=9) for q in batch]
        assert all("shared passage" not in q for q in rows)
        seen += rows
    assert len(seen) == len(set(seen)) == 8 * 9 * BATCH

    stream = StreamedRows([spec], seed=3)
    items = []
    for item in stream:
        items.append(item)
        if len(items) == 12:
            break
    for item in items:  # no batch holds the shared passage twice
        passages = [r["positives"][0] for r in item["rows"]]
        assert len(passages) == len(set(passages))
    # Resuming from the state after batch 5 gives batches 6.. exactly (cursor: shard, byte offset or row, deferred rows).
    resumed = _read(StreamedRows([spec], seed=3), {"0": items[5]["state"]}, batches=6)
    assert resumed == [[r["query"] for r in item["rows"]] for item in items[6:12]]


def test_a_bad_row_fails_with_file_and_line_when_it_arrives(tmp_path):
    folder = _shards(tmp_path / "d")
    with open(folder / "part-0.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"query": "late", "positive": ""}) + "\n")
    spec = open_stream(DatasetConfig(path=str(folder / "*.jsonl"), task="retrieval"), batch_size=BATCH)
    items = list(_iter_until_error(StreamedRows([spec], seed=0)))
    assert items[-1]["error"] == [f"{folder / 'part-0.jsonl'}:{_line_of(folder / 'part-0.jsonl', 'late')}: positive: row has no positive"]
    assert len(items) > 30, "the rows before the bad one were trained"


def _iter_until_error(stream):
    for item in stream:
        yield item
        if "error" in item:
            return


def _line_of(path: Path, query: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if f'"{query}"' in line)


def test_up_front_checks(tmp_path):
    with pytest.raises(DataError, match="no shards"):
        open_stream(DatasetConfig(path=str(tmp_path / "none-*.jsonl"), task="retrieval"), batch_size=4)
    (tmp_path / "labels.jsonl").write_text(json.dumps({"text": "hi", "label": "greet"}) + "\n")
    with pytest.raises(RecipeError, match="label set"):
        open_stream(DatasetConfig(path=str(tmp_path / "labels.jsonl"), task="classification"), batch_size=4)
    assert Cursor().waiting == []


def _recipe(tmp_path: Path, backbone: Path, data: Path, out: Path) -> Path:
    recipe = {
        "model": {"backbone": str(backbone), "max_seq_length": 16},
        "stages": [{"kind": "pairs", "datasets": [{"path": str(data), "streaming": True}]}],
        "training": {"output_dir": str(out), "batch_size": BATCH, "max_steps": MAX_STEPS, "save_steps": SAVE_STEPS, "save_total_limit": 2,
                     "learning_rate": 1e-3, "logging_steps": 5, "report_to": [], "seed": 7, "dataloader_num_workers": 2},
    }  # fmt: skip
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.timeout(900)
def test_streamed_pairs_stage_killed_and_resumed_trains_every_row_once(tmp_path, tiny_bert_dir):
    rng = random.Random(int(os.environ.get("RESUME_TEST_SEED", random.randrange(1 << 16))))
    data = _shards(tmp_path / "shards", sizes=(500, 520))  # one pass: 120 steps × 2 ranks × 4 rows < 1,020 rows
    reference = launch_traced_training(_recipe(tmp_path, tiny_bert_dir, data, tmp_path / "reference"), tmp_path / "trace-ref")
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    want = read_trace(tmp_path / "trace-ref")
    assert {s for s, _, _ in want} == set(range(MAX_STEPS))
    rows = [q for _, _, batch in want for q in batch]
    assert len(rows) == len(set(rows)) == MAX_STEPS * 2 * BATCH, "no row trained twice, across ranks and workers"

    out = tmp_path / "resumed"
    stage = out / "stage-1-pairs"
    first = launch_traced_training(_recipe(tmp_path, tiny_bert_dir, data, out), tmp_path / "trace-1")
    saved = kill_after_first_checkpoint(first, stage, rng)
    assert saved and saved[-1] < MAX_STEPS, "killed before the end"
    second = launch_traced_training(_recipe(tmp_path, tiny_bert_dir, data, out), tmp_path / "trace-2", "--resume")
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    resumed_from = saved[-1]
    got = read_trace(tmp_path / "trace-1", before_step=resumed_from) | read_trace(tmp_path / "trace-2")
    assert min(s for s, _, _ in read_trace(tmp_path / "trace-2")) == resumed_from
    assert got == want, f"resumed at step {resumed_from}: the interrupted + resumed run trained other rows than the uninterrupted one"


def test_a_training_run_stops_at_the_bad_streamed_row_with_its_line(tmp_path, tiny_bert_dir):
    folder = tmp_path / "d"
    folder.mkdir()
    rows = [{"query": f"q{i}", "positive": f"p{i}"} for i in range(40)] + [{"query": "bad", "positive": 3}]
    (folder / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = yaml.safe_load(_recipe(tmp_path, tiny_bert_dir, folder, tmp_path / "out").read_text())
    recipe["training"].update(max_steps=100, save_steps=None, dataloader_num_workers=2)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([sys.executable, "-m", "hybridembed.cli", "train", str(tmp_path / "bad.yaml")], text=True, capture_output=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, timeout=300)  # fmt: skip
    assert result.returncode != 0
    assert f"{folder / 'part.jsonl'}:41: positive[0]: expected text, got int" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_check_validates_every_record_of_a_streamed_dataset(tmp_path, tiny_bert_dir, capsys):
    from hybridembed.cli import main

    folder = _shards(tmp_path / "d")
    recipe = _recipe(tmp_path, tiny_bert_dir, folder, tmp_path / "out")
    assert main(["data", "check", str(recipe)]) == 0
    assert "320 rows in 2 shard(s), task retrieval" in capsys.readouterr().out
    with open(folder / "part-0.jsonl", "a", encoding="utf-8") as f:
        f.write('{"query": "x"}\n')
    assert main(["data", "check", str(recipe)]) == 2
    printed = capsys.readouterr()
    assert f"{folder / 'part-0.jsonl'}:{_line_of(folder / 'part-0.jsonl', 'x')}: positive: row has no positive" in printed.out + printed.err


def test_a_loader_with_two_workers_resumed_after_an_odd_number_of_batches_continues_in_order(tmp_path):
    from torch.utils.data import DataLoader

    from hybridembed.training.stream_training import pass_through

    spec = open_stream(DatasetConfig(path=str(_shards(tmp_path / "d")), task="retrieval"), batch_size=BATCH)

    def batches(n: int, resume: dict) -> list[dict]:
        stream = StreamedRows([spec], seed=5)
        stream.resume = resume
        out = []
        for item in DataLoader(stream, batch_size=None, collate_fn=pass_through, num_workers=2):
            out.append(item)
            if len(out) == n:
                return out
        return out

    full = batches(12, {})
    for k in (4, 5):  # the loader starts at worker 0 again; after 5 batches worker 1's reader is next
        states = {str(b["state"]["worker"]): b["state"] for b in full[:k]}
        resumed = batches(12 - k, states)
        assert [[r["query"] for r in b["rows"]] for b in resumed] == [[r["query"] for r in b["rows"]] for b in full[k:]], f"after {k}"


def test_a_glob_or_folder_of_shards_without_streaming_points_at_it(tmp_path):
    from hybridembed.data import load_dataset

    folder = _shards(tmp_path / "d")
    for path in (folder, folder / "part-*.jsonl"):
        with pytest.raises(DataError, match=r"read with `streaming: true`"):
            load_dataset(DatasetConfig(path=str(path)))
