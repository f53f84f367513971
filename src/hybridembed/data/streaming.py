"""Streamed datasets (`streaming: true`): sharded jsonl/parquet files read as a torch IterableDataset, striped over ranks and dataloader workers, validated as rows arrive, resumable from a saved cursor.

`datasets`' streaming mode shards by file and resumes through `state_dict()` of a whole pipeline;
what this adds for training embedding models:

* **striping without overlap for any number of shards:** the records of a pass are numbered in
  the pass's shard order, and record *c* belongs to reader slot *c mod S* (S = ranks × workers),
  so 1 shard or 1,000 shards give every (rank, worker) its own rows and none twice; a reader
  parses only its own records (the others are skipped as raw lines);
* **a cursor per reader** — pass, shard, byte offset (row for parquet), line and the rows a
  duplicate-free batch deferred — carried with every batch, so a checkpoint stores exactly where
  each worker's *trained* batches ended (prefetched batches are read again) and a resumed run
  seeks there instead of reading from the start;
* **task-homogeneous, duplicate-free batches** as in the map-style sampler (one dataset per batch,
  the same dataset on every rank in a step, chosen by a pure function of (seed, batch index));
* **validation on the fly** with the same `file:line: field: problem` messages, raised in the
  training process before the step that would use the row; format, task and shard files are
  checked up front.

Shard order is reshuffled every pass (seeded); rows inside a shard keep their order, so shuffle
large corpora when you shard them.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from hybridembed.data.collator import DRAW_KEY
from hybridembed.data.formats import canonical_fields, convert, detect_format, record_task
from hybridembed.data.readers import decode_line, parse_json_line, read_records
from hybridembed.data.rows import TripletRow, row_texts
from hybridembed.errors import DataError, RecipeError
from hybridembed.recipe import DataFormat, DatasetConfig
from hybridembed.tasks import IN_BATCH_NEGATIVE_TASKS, LABEL_TASKS, TaskType

STATE_FILE = "stream_state_rank{rank}.json"
TRACE_ENV = "HYBRIDEMBED_TRACE_ROWS"  # a folder: each rank appends the rows of every streamed batch it trains (docs/data.md)
SHARD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


def shard_files(path: str, suffixes: dict[str, str] = SHARD_SUFFIXES) -> list[Path]:
    """The shards of a streamed dataset: one file, a folder of files with one of `suffixes`, or a glob pattern (sorted)."""
    kinds = ", ".join(suffixes)
    if any(ch in path for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(path))
    elif Path(path).is_dir():
        files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in suffixes)
    else:
        files = [Path(path)]
    if not files:
        raise DataError([f"{path}: no shards ({kinds} files) found"])
    problems = []
    for file in files:
        if not file.is_file():
            problems.append(f"{file}: file not found")
        elif file.suffix.lower() not in suffixes:
            problems.append(f"{file}: a streamed shard is one of {kinds}")
        elif file.stat().st_size == 0:
            problems.append(f"{file}: empty file")
    if problems:
        raise DataError(problems)
    return files


@dataclass
class StreamSpec:
    """One streamed dataset, checked up front in the training process."""

    name: str
    task: TaskType
    files: list[str]
    format: DataFormat
    config: DatasetConfig
    batch_size: int
    dedup: bool  # in-batch negatives: no text twice in a batch
    sample: list[dict[str, Any]] = field(default_factory=list)  # the first valid rows (model card, checks)
    label_pool: None = None  # label tasks are not streamed

    def placeholder(self):
        """A one-row `datasets.Dataset` for what sentence-transformers' trainer inspects (columns, model card); batches come from the stream."""
        from datasets import Dataset

        return Dataset.from_list([{"row_id": 0, **self.sample[0]}])


def open_stream(cfg: DatasetConfig, batch_size: int) -> StreamSpec:
    """Check the shards, the format and the task of a streamed dataset; later rows are validated as they arrive."""
    files = shard_files(cfg.path)
    first = next(read_records(files[0], header=cfg.header))
    fmt = cfg.format if cfg.format is not DataFormat.AUTO else detect_format(first.fields, has_columns=cfg.columns is not None)
    if fmt is None:
        raise DataError(
            [f"{files[0]}:{first.line}: (columns): cannot tell the format from columns {sorted(map(str, first.fields))}; set `format:` or `columns:`"]
        )
    task = cfg.task or record_task(first.fields, fmt)[0]
    if task is None:
        raise DataError([f"{cfg.path}: no task type: set `task:` for this dataset"])
    if task in LABEL_TASKS:
        raise RecipeError(f"datasets[{cfg.name}]: streaming: a {task} dataset draws negatives from its whole label set; read it without streaming")
    spec = StreamSpec(cfg.name or files[0].stem, task, [str(f) for f in files], fmt, cfg, batch_size, task in IN_BATCH_NEGATIVE_TASKS)
    spec.sample = [row for _, _, row in _validated(spec, iter([(first.line, first.fields)]), str(files[0]))]
    return spec


@dataclass
class Cursor:
    """Where one reader slot stands in one streamed dataset."""

    passes: int = 0  # passes over the shards completed
    shard: int = 0  # position in this pass's shard order
    offset: int = 0  # byte offset (jsonl) or row index (parquet) of the next record in that shard
    line: int = 0  # lines (jsonl) or rows (parquet) of that shard read so far
    record: int = 0  # records of this pass seen (the striping counter)
    waiting: list[dict[str, Any]] = field(default_factory=list)  # rows a duplicate-free batch deferred


def _validated(spec: StreamSpec, records, path: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    cfg = spec.config
    for line, fields in records:
        problems = []
        row_task, problem = record_task(fields, spec.format)
        if problem:
            problems.append(problem)
        elif row_task is not None and row_task != spec.task:
            problems.append(f"type: {fields.get('type')!r} means task {row_task}, but the dataset's task is {spec.task}")
        else:
            converted = convert(canonical_fields(fields, spec.format, cfg.columns), spec.task, cfg.score_range)
            problems = converted.problems
        if problems:
            raise DataError([f"{path}:{line}: {p}" for p in problems], summary=f"{path}: invalid record in a streamed dataset; training stopped")
        yield line, path, cast("dict[str, Any]", converted.row)  # set, as there is no problem; a plain dict from here on (cursors store rows as JSON)


def shard_order(shards: int, seed: int, dataset_index: int, passes: int) -> list[int]:
    """The order of a pass over the shards: a pure function of (seed, dataset, pass)."""
    return np.random.default_rng([seed, dataset_index, passes]).permutation(shards).tolist()


def line_records(path: str, cursor: Cursor, slot: int, slots: int, parse=parse_json_line) -> Iterator[tuple[int, Any]]:
    """This slot's records of a line-per-record shard (jsonl; text with `parse` returning the line) from the cursor on; the cursor moves past each line before it is yielded."""
    with open(path, "rb") as f:
        f.seek(cursor.offset)
        while raw := f.readline():
            cursor.offset += len(raw)
            cursor.line += 1
            text = decode_line(path, cursor.line, raw)
            if not text.strip():
                continue
            mine = cursor.record % slots == slot
            cursor.record += 1
            if mine:  # the other readers' lines are only decoded, never parsed
                yield cursor.line, parse(path, cursor.line, text)


def parquet_records(path: str, cursor: Cursor, slot: int, slots: int) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    start = 0
    groups: list[int] = []
    for g in range(file.num_row_groups):  # skip the whole row groups before the cursor
        rows = file.metadata.row_group(g).num_rows
        if not groups and start + rows <= cursor.offset:
            start += rows
        else:
            groups.append(g)
    position = start
    for batch in file.iter_batches(batch_size=1024, row_groups=groups):
        for row in batch.to_pylist():
            position += 1
            if position <= cursor.offset:
                continue
            cursor.offset = cursor.line = position
            mine = cursor.record % slots == slot
            cursor.record += 1
            if mine:
                yield position, row


def reader_role(resume: dict[str, Any], worker: int, workers: int) -> tuple[int, dict[str, Any] | None]:
    """The reader a dataloader worker plays, and that reader's saved state (None: from the start).

    A DataLoader takes batches from its workers round-robin starting at worker 0 on every new
    iterator. A run resumed after an odd number of batches (2 workers) must start with the reader
    whose batch comes next, so the readers are rotated by (next batch index) mod workers."""
    following = [resume[str(w)]["batch"] if str(w) in resume else w for w in range(workers)]
    role = (worker + min(following)) % workers
    return role, resume.get(str(role))


def record_reader(path: str):
    """The reader of one shard file, by its suffix."""
    return parquet_records if path.lower().endswith(".parquet") else line_records


def slot_records(files: list[str], name: str, cursor: Cursor, slot: int, slots: int, seed: int, dataset_index: int, reader=record_reader):
    """(path, line, record) of one reader slot over endless passes of `files` (reshuffled each pass), from the cursor on."""
    while True:
        order = shard_order(len(files), seed, dataset_index, cursor.passes)
        got = cursor.record > slot  # a resumed pass may already have given this slot records
        while cursor.shard < len(order):
            path = files[order[cursor.shard]]
            for line, record in reader(path)(path, cursor, slot, slots):
                got = True
                yield path, line, record
            cursor.shard, cursor.offset, cursor.line = cursor.shard + 1, 0, 0
        if not got:
            raise DataError([f"{name}: no rows for reader slot {slot} of {slots}: fewer records than ranks × dataloader workers"])
        cursor.passes, cursor.shard, cursor.offset, cursor.line, cursor.record = cursor.passes + 1, 0, 0, 0, 0


class StreamedRows(IterableDataset):
    """Batches of canonical rows of several streamed datasets for one rank; each dataloader worker reads its own stripe."""

    def __init__(self, specs: list[StreamSpec], seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.specs = specs
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.resume: dict[str, Any] = {}  # worker id → the state of its last trained batch
        weights = np.array([s.config.weight for s in specs], dtype=float)
        self.probabilities = weights / weights.sum()

    def dataset_of_batch(self, batch_index: int) -> int:
        """The dataset of this rank's `batch_index`-th batch: the same on every rank, so the step's ranks share negatives."""
        if len(self.specs) == 1:
            return 0
        return int(np.random.default_rng([self.seed, batch_index]).choice(len(self.specs), p=self.probabilities))

    def _rows(self, d: int, cursor: Cursor, slot: int, slots: int) -> Iterator[dict[str, Any]]:
        spec = self.specs[d]
        for path, line, fields in slot_records(spec.files, spec.name, cursor, slot, slots, self.seed, d):
            for _, _, row in _validated(spec, iter([(line, fields)]), path):
                yield row

    def _batch(self, d: int, cursor: Cursor, stream: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
        spec = self.specs[d]
        batch: list[dict[str, Any]] = []
        texts: set[str] = set()
        deferred: list[dict[str, Any]] = []
        scanned = 0
        for row in cursor.waiting:
            scanned += 1
            if self._take(spec, row, batch, texts, deferred):
                break
        while len(batch) < spec.batch_size:
            self._take(spec, next(stream), batch, texts, deferred)
            if len(deferred) > 64 * spec.batch_size:
                raise DataError([f"{spec.name}: {len(deferred)} rows in a row share a text with the open batch; a duplicate-free batch cannot be formed"])
        cursor.waiting = deferred + cursor.waiting[scanned:]
        return batch

    @staticmethod
    def _take(spec: StreamSpec, row: dict[str, Any], batch: list, texts: set, deferred: list) -> bool:
        texts_of_row = row_texts(cast("TripletRow", row)) if spec.dedup else set()  # dedup: in-batch negative tasks, whose rows are triplets
        if texts.isdisjoint(texts_of_row):
            batch.append(row)
            texts |= texts_of_row
        else:
            deferred.append(row)
        return len(batch) == spec.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        worker, state = reader_role(self.resume, info.id if info is not None else 0, workers)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        cursors = [Cursor(**state["cursors"][s.name]) if state else Cursor() for s in self.specs]
        streams = [self._rows(d, cursors[d], slot, slots) for d in range(len(self.specs))]
        batch_index = state["batch"] if state else worker
        try:
            while True:
                d = self.dataset_of_batch(batch_index)
                rows = self._batch(d, cursors[d], streams[d])
                name = self.specs[d].name
                yield {
                    "rows": [{**row, "dataset_name": name, DRAW_KEY: (0, batch_index)} for row in rows],
                    "state": {"worker": worker, "batch": batch_index + workers, "cursors": {s.name: asdict(c) for s, c in zip(self.specs, cursors)}},
                }
                batch_index += workers
        except DataError as err:  # raised in the training process, with its file:line (see StreamCollate)
            yield {"error": err.problems, "summary": str(err).splitlines()[0]}


@dataclass
class StreamCheck:
    """What `data check` reports of a streamed dataset (the `len` and `summary()` of a loaded one)."""

    name: str
    spec: StreamSpec
    rows: int

    def __len__(self) -> int:
        return self.rows

    def summary(self) -> str:
        spec = self.spec
        return f"{self.name}: {self.rows} rows in {len(spec.files)} shard(s), task {spec.task}, format {spec.format} (streamed: validated, not stored)"


def check_stream(cfg: DatasetConfig) -> StreamCheck:
    """`data check` of a streamed dataset: one pass over every shard, validating each record (stops at the first bad one)."""
    spec = open_stream(cfg, batch_size=2)
    cursor, rows = Cursor(), 0
    for index, path in enumerate(spec.files):
        cursor.shard, cursor.offset, cursor.line = index, 0, 0
        rows += sum(1 for _ in _validated(spec, record_reader(path)(path, cursor, 0, 1), path))
    return StreamCheck(spec.name, spec, rows)


@dataclass
class StreamCollate:
    """The collate_fn of a streamed loader: the collator's batch plus the reader's state (or the data error it met)."""

    collator: Any

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        if "error" in item:
            return {"stream_error": item["error"], "stream_error_summary": item["summary"]}
        batch = self.collator(item["rows"])
        batch["stream_state"] = item["state"]
        batch["stream_rows"] = [row.get("query", row.get("text1")) for row in item["rows"]]  # for the trainer's row trace
        return batch


def save_state(folder: Path, rank: int, world_size: int, workers: int, positions: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"world_size": world_size, "workers": workers, "positions": positions}
    (folder / STATE_FILE.format(rank=rank)).write_text(json.dumps(payload), encoding="utf-8")


def load_state(folder: Path, rank: int, world_size: int, workers: int) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE.format(rank=rank)
    if not path.is_file():
        raise RecipeError(f"{folder}: no {path.name}: this checkpoint was not written by a streamed run")
    payload = json.loads(path.read_text(encoding="utf-8"))
    if (payload["world_size"], payload["workers"]) != (world_size, max(workers, 1)):
        raise RecipeError(
            f"{folder}: the streamed run was checkpointed with {payload['world_size']} rank(s) × {payload['workers']} dataloader worker(s); "
            f"resume it with the same (now {world_size} × {max(workers, 1)}), since each reader's stripe of the data depends on both"
        )
    return payload["positions"]


__all__ = ["StreamCollate", "check_stream", "StreamSpec", "StreamedRows", "load_state", "open_stream", "save_state", "shard_files"]
