"""Load a recipe's datasets into validated, canonical task datasets; every problem is reported as `file:line: field: what`."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridembed.data.formats import canonical_fields, convert, detect_format, record_task
from hybridembed.data.readers import is_line_numbered, read_records
from hybridembed.errors import DataError
from hybridembed.recipe import DataFormat, DatasetConfig
from hybridembed.tasks import LABEL_TASKS, RowShape, TaskType

logger = logging.getLogger(__name__)
MAX_PROBLEMS_PER_FILE = 200


@dataclass
class TaskDataset:
    """Validated rows of one dataset, all of one task type, in canonical shape."""

    name: str
    task: TaskType
    path: str
    rows: list[dict[str, Any]]
    config: DatasetConfig
    format: DataFormat
    label_pool: list[str] | None = None  # label texts for (text, label) classification/clustering rows
    skipped: Counter = field(default_factory=Counter)  # documented skip rule → count

    def __len__(self) -> int:
        return len(self.rows)

    def to_hf(self):
        """A `datasets.Dataset` with the canonical columns of this task's row shape."""
        from datasets import Dataset

        if self.task.shape is RowShape.SCORED_PAIR:
            return Dataset.from_dict({k: [r[k] for r in self.rows] for k in ("text1", "text2", "score")})
        return Dataset.from_dict(
            {
                "row_id": list(range(len(self.rows))),
                "query": [r["query"] for r in self.rows],
                "positives": [r["positives"] for r in self.rows],
                "negatives": [r["negatives"] or [] for r in self.rows],
            }
        )

    def summary(self) -> str:
        skipped = ", ".join(f"{rule}: {n}" for rule, n in self.skipped.items() if n) or "none"
        extra = f", {len(self.label_pool)} labels" if self.label_pool else ""
        return f"{self.name}: {len(self.rows)} rows, task {self.task}, format {self.format}{extra} (skipped by rule: {skipped})"


def load_dataset(cfg: DatasetConfig) -> TaskDataset:
    """Read and validate one dataset; raise DataError listing every bad record."""
    path = Path(cfg.path)
    where = "" if not path.exists() or is_line_numbered(path) else "row "
    problems: list[str] = []
    n_problems = 0
    rows: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    fmt: DataFormat | None = None if cfg.format is DataFormat.AUTO else cfg.format
    task: TaskType | None = cfg.task

    def report(line: int, message: str) -> None:
        nonlocal n_problems
        n_problems += 1
        if len(problems) < MAX_PROBLEMS_PER_FILE:
            problems.append(f"{path}:{where}{line}: {message}")

    for record in read_records(path, header=cfg.header):
        if fmt is None:
            fmt = detect_format(record.fields, has_columns=cfg.columns is not None)
            if fmt is None:
                raise DataError(
                    [f"{path}:{where}{record.line}: (columns): cannot tell the format from columns {sorted(map(str, record.fields))}; "
                     "set `format:` or a `columns:` mapping (see docs/data.md)"]
                )  # fmt: skip
        if fmt is DataFormat.COLUMNS and not cfg.columns:
            raise DataError([f"{path}: format 'columns' needs a `columns:` mapping"])
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
            raise DataError([f"{path}: no task type: set `task:` for this dataset (one of {[t.value for t in TaskType]})"])
        converted = convert(canonical_fields(record.fields, fmt, cfg.columns), task, cfg.score_range)
        for problem in converted.problems:
            report(record.line, problem)
        if converted.row is None:
            continue
        if cfg.max_samples is not None and len(rows) >= cfg.max_samples:
            skipped["rows beyond max_samples"] += 1
            continue
        skipped["negatives equal to a positive (removed)"] += converted.removed_false_negatives
        rows.append(converted.row)

    if n_problems:
        raise DataError(problems, summary=f"{path}: {n_problems} invalid record(s); nothing was trained")
    assert fmt is not None and task is not None
    label_pool = _check_labels(path, task, rows)
    dataset = TaskDataset(cfg.name or path.stem, task, str(path), rows, cfg, fmt, label_pool, skipped)
    for rule, count in skipped.items():
        if count:
            logger.info("%s: skipped by documented rule %r: %d", dataset.name, rule, count)
    return dataset


def _check_labels(path: Path, task: TaskType, rows: list[dict[str, Any]]) -> list[str] | None:
    """Label tasks need at least two distinct labels: the other labels are the negatives."""
    if task not in LABEL_TASKS:
        return None
    # Whatever the row form — (text, label), or query + positives [+ negatives] — the label texts
    # are the positives and given negatives; a row without negatives draws from the others.
    pool = sorted({t for r in rows for t in r["positives"] + (r["negatives"] or [])})
    if len(pool) < 2:
        single = f" has a single label ({pool[0]!r}); it" if pool else ""
        raise DataError([f"{path}: label: a {task} dataset{single} needs at least two distinct labels"])
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
