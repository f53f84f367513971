"""Load a recipe's datasets into validated, canonical task datasets backed by memory-mapped Arrow; every problem is reported as `file:line: field: what`.

The validation pass streams the source once (memory does not grow with its rows) and writes the
canonical rows to the Arrow store (hybridembed.data.arrow_store); a later run, or another rank,
that reads the same bytes with the same settings opens that store without validating again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from hybridembed.data.arrow_store import RowWriter, entry_key, entry_lock, open_entry
from hybridembed.data.formats import canonical_fields, convert, detect_format, record_task
from hybridembed.data.readers import MAX_PROBLEMS
from hybridembed.data.rows import ROW_COLUMNS, TripletRow
from hybridembed.data.sources import RecordSource, open_source
from hybridembed.errors import DataError
from hybridembed.recipe import DataFormat, DatasetConfig
from hybridembed.tasks import LABEL_TASKS, TaskType

logger = logging.getLogger(__name__)
# The dataset settings that change which canonical rows a source yields (the Arrow store's key, and
# what `data check` compares to validate a file read the same way in two stages once).
READER_SETTINGS = ("task", "format", "columns", "header", "score_range", "max_samples", "config", "split", "revision")


class ArrowRows(Sequence):
    """The canonical rows of a memory-mapped Arrow table as dicts: indexing reads one row, iteration reads record batches."""

    def __init__(self, table: Any, columns: Sequence[str]) -> None:
        self.table = table
        self.columns = list(columns)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._rows(self.table.select(range(*index.indices(len(self)))))
        row = self.table[int(index) if index >= 0 else len(self) + int(index)]
        return {name: row[name] for name in self.columns}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.table.iter(batch_size=1024):
            yield from self._batch_rows(batch)

    def _rows(self, table: Any) -> list[dict[str, Any]]:
        return [row for batch in table.iter(batch_size=1024) for row in self._batch_rows(batch)]

    def _batch_rows(self, batch: dict[str, list]) -> Iterator[dict[str, Any]]:
        columns = [batch[name] for name in self.columns]
        for values in zip(*columns):
            yield dict(zip(self.columns, values))


@dataclass
class TaskDataset:
    """Validated rows of one dataset, all of one task type, in canonical shape, memory-mapped from the Arrow store."""

    name: str
    task: TaskType
    path: str
    table: Any  # datasets.Dataset over the store's rows.arrow: row_id + the row shape's canonical columns
    config: DatasetConfig
    format: DataFormat
    label_pool: list[str] | None = None  # label texts for (text, label) classification/clustering rows
    skipped: Counter = field(default_factory=Counter)  # documented skip rule → count
    cache_hit: bool = False  # opened from the store without validating again
    store: str = ""  # the store entry's folder

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def rows(self) -> ArrowRows:
        return ArrowRows(self.table, ROW_COLUMNS[self.task.shape])

    def to_hf(self):
        """The memory-mapped `datasets.Dataset` (`row_id` plus the canonical columns of this task's row shape)."""
        return self.table

    def summary(self) -> str:
        skipped = ", ".join(f"{rule}: {n}" for rule, n in self.skipped.items() if n) or "none"
        extra = f", {len(self.label_pool)} labels" if self.label_pool else ""
        cached = ", validated earlier (Arrow store reused)" if self.cache_hit else ""
        return f"{self.name}: {len(self)} rows, task {self.task}, format {self.format}{extra} (skipped by rule: {skipped}){cached}"


def reader_settings(cfg: DatasetConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", include=set(READER_SETTINGS))


def load_dataset(cfg: DatasetConfig) -> TaskDataset:
    """Read and validate one dataset (or reopen its validated store); raise DataError listing every bad record."""
    source = open_source(cfg)
    key = entry_key(source.identity(), reader_settings(cfg))
    with entry_lock(key) as folder:
        opened = open_entry(folder)
        if opened is not None:
            table, meta = opened
            dataset = TaskDataset(
                cfg.name or source.stem, TaskType(meta["task"]), source.label, table, cfg, DataFormat(meta["format"]),
                meta.get("label_pool"), Counter(meta.get("skipped", {})), cache_hit=True, store=str(folder),
            )  # fmt: skip
            logger.info("%s: %d rows validated earlier, read from the Arrow store %s", dataset.name, len(dataset), folder)
            return dataset
        return _validate_into(cfg, source, folder)


def _validate_into(cfg: DatasetConfig, source: RecordSource, folder) -> TaskDataset:
    """The streaming validation pass: each valid row goes to the store's writer; problems are collected, the entry is published only when there are none."""
    problems: list[str] = []
    n_problems = 0
    skipped: Counter = Counter()
    fmt: DataFormat | None = None if cfg.format is DataFormat.AUTO else cfg.format
    task: TaskType | None = cfg.task
    writer: RowWriter | None = None
    labels: set[str] = set()

    def report(line: int, message: str) -> None:
        nonlocal n_problems
        n_problems += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append(f"{source.label}:{source.where}{line}: {message}")

    try:
        for record in source.records():
            if fmt is None:
                fmt = detect_format(record.fields, has_columns=cfg.columns is not None)
                if fmt is None:
                    raise DataError(
                        [f"{source.label}:{source.where}{record.line}: (columns): cannot tell the format from columns {sorted(map(str, record.fields))}; "
                         "set `format:` or a `columns:` mapping (see docs/data.md)"]
                    )  # fmt: skip
            if fmt is DataFormat.COLUMNS and not cfg.columns:
                raise DataError([f"{source.label}: format 'columns' needs a `columns:` mapping"])
            row_task, task_problem = record_task(record.fields, fmt)
            if task_problem:
                report(record.line, task_problem)
                continue
            if row_task is not None:
                if task is None:
                    task = row_task
                elif row_task != task:
                    report(record.line, f"type: {record.fields.get('type')!r} means task {row_task}, but the dataset's task is {task}")
                    continue
            if task is None:
                raise DataError([f"{source.label}: no task type: set `task:` for this dataset (one of {[t.value for t in TaskType]})"])
            converted = convert(canonical_fields(record.fields, fmt, cfg.columns), task, cfg.score_range)
            for problem in converted.problems:
                report(record.line, problem)
            if converted.row is None:
                continue
            if writer is None:
                writer = RowWriter(folder, task.shape)
            if cfg.max_samples is not None and writer.rows >= cfg.max_samples:
                skipped["rows beyond max_samples"] += 1
                continue
            skipped["negatives equal to a positive (removed)"] += converted.removed_false_negatives
            if task in LABEL_TASKS:
                row = cast("TripletRow", converted.row)  # label tasks have triplet rows
                labels.update(row["positives"], row["negatives"] or [])
            if not n_problems:  # after the first problem nothing is kept; the pass goes on to report the rest
                writer.add(cast("dict[str, Any]", converted.row))  # a canonical row is the plain dict RowWriter stores
        if n_problems:
            raise DataError(problems, summary=f"{source.label}: {n_problems} invalid record(s); nothing was trained")
        assert fmt is not None and task is not None and writer is not None
        label_pool = _check_labels(source.label, task, labels)
        writer.commit({"task": task.value, "format": fmt.value, "label_pool": label_pool, "skipped": dict(skipped), "source": source.label})
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    opened = open_entry(folder)
    assert opened is not None, "the entry was just committed"
    table, _ = opened
    dataset = TaskDataset(cfg.name or source.stem, task, source.label, table, cfg, fmt, label_pool, skipped, store=str(folder))
    for rule, count in skipped.items():
        if count:
            logger.info("%s: skipped by documented rule %r: %d", dataset.name, rule, count)
    return dataset


def _check_labels(label: str, task: TaskType, texts: set[str]) -> list[str] | None:
    """Label tasks need at least two distinct labels: the other labels are the negatives."""
    if task not in LABEL_TASKS:
        return None
    # Whatever the row form — (text, label), or query + positives [+ negatives] — the label texts
    # are the positives and given negatives; a row without negatives draws from the others.
    pool = sorted(texts)
    if len(pool) < 2:
        single = f" has a single label ({pool[0]!r}); it" if pool else ""
        raise DataError([f"{label}: label: a {task} dataset{single} needs at least two distinct labels"])
    return pool


def load_datasets(configs: list[DatasetConfig]) -> list[TaskDataset]:
    """Load every dataset, gathering the problems of all files before failing."""
    loaded, problems = [], []
    for cfg in configs:
        try:
            loaded.append(load_dataset(cfg))
        except DataError as err:
            problems.extend(err.problems if len(err.problems) else [str(err)])
    if problems:
        raise DataError(problems, summary=f"{len(problems)} data problem(s) found before training; nothing was trained")
    return loaded
