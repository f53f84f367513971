"""The evaluation-suite schema (a YAML list of local or named MTEB tasks), validated with pydantic.

A suite names tasks; each is either a local file mapped onto the columns an mteb task needs
(`type`, `path`, `columns`, ...) or a named MTEB / C-MTEB task (`name: "mteb:STSBenchmark"`).
Relative paths are resolved against the folder of the suite file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from hybridembed.errors import HybridembedError
from hybridembed.schema import Strict, validation_problems
from hybridembed.tasks import TaskType

MTEB_PREFIX = "mteb:"

# The column roles each local task type reads (required ones first; `optional` may be absent).
REQUIRED_COLUMNS: dict[TaskType, tuple[str, ...]] = {
    TaskType.STS: ("text1", "text2", "score"),
    TaskType.PAIR_CLASSIFICATION: ("text1", "text2", "label"),
    TaskType.CLASSIFICATION: ("text", "label"),
    TaskType.CLUSTERING: ("text", "label"),
    TaskType.RERANKING: ("query",),
    TaskType.RETRIEVAL: ("query",),
}
OPTIONAL_COLUMNS: dict[TaskType, tuple[str, ...]] = {
    TaskType.RERANKING: ("query_id", "document", "label", "positive", "negative"),
    TaskType.RETRIEVAL: ("query_id", "positive", "negative"),
}
# The metric mteb reports as main score for each type (mteb 2.26 names).
DEFAULT_MAIN_SCORE: dict[TaskType, str] = {
    TaskType.STS: "cosine_spearman",
    TaskType.PAIR_CLASSIFICATION: "max_ap",
    TaskType.CLASSIFICATION: "accuracy",
    TaskType.CLUSTERING: "v_measure",
    TaskType.RERANKING: "map_at_1000",
    TaskType.RETRIEVAL: "ndcg_at_10",
}


class SuiteError(HybridembedError):
    """The suite file is missing, malformed, or names an unknown key or a missing file."""


class TaskSpec(Strict):
    """One task of a suite: a local data file (or BEIR folder) or a named MTEB task."""

    name: str = Field(description='task name in the report; "mteb:<TaskName>" runs a named MTEB/C-MTEB task')
    type: TaskType | None = Field(None, description="task type (required for local tasks)")
    path: Path | None = Field(None, description="data file, or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    format: Literal["auto", "tsv", "csv", "jsonl", "beir"] = "auto"
    header: bool = Field(True, description="false: csv/tsv columns are addressed by 0-based index")
    columns: dict[str, str | int] = Field(default_factory=dict, description="role -> column name or 0-based index")
    split: str | None = Field(None, description="split label (default test); named tasks: the mteb split (default: its first)")
    score_range: tuple[float, float] | None = Field(None, description="STS gold score range; default: data min/max")
    label_map: dict[str, int] | None = Field(None, description="pair classification: raw label -> 0/1; others dropped")
    train_path: Path | None = Field(None, description="classification: training file, same format and columns")
    main_score: str | None = Field(None, description="override the main score (e.g. max_accuracy for C-MTEB pairs)")
    language: str = Field("eng-Latn", description="mteb language code of the data, e.g. zho-Hans")
    max_samples: int | None = Field(None, gt=0, description="seeded subsample of rows / queries to keep runtime low")
    max_corpus: int | None = Field(None, gt=0, description="retrieval: keep all relevant docs + random others up to this")
    seed: int = 42
    optional: bool = Field(False, description="skip this task (listed in Suite.skipped) when its files are absent, instead of failing")
    hf_subsets: list[str] | None = Field(None, description="named tasks: which mteb subsets (languages) to run")

    @property
    def is_named(self) -> bool:
        return self.name.startswith(MTEB_PREFIX)

    @property
    def mteb_name(self) -> str:
        return self.name[len(MTEB_PREFIX) :]

    @property
    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        assert self.path is not None
        if self.path.is_dir():
            return "beir"
        suffix = self.path.suffix.lower()
        return {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix, "tsv")

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.is_named:
            local_only = [k for k in ("type", "path", "columns", "train_path", "label_map") if getattr(self, k)]
            if local_only:
                raise ValueError(f"named task {self.name!r} takes no {', '.join(local_only)}")
            return self
        if self.split is None:
            self.split = "test"
        if self.type is None or self.path is None:
            raise ValueError(f"local task {self.name!r} needs `type` and `path` (or name it mteb:<TaskName>)")
        if self.format == "beir" or (self.format == "auto" and self.path.suffix == ""):
            if self.type not in (TaskType.RETRIEVAL, TaskType.RERANKING):
                raise ValueError(f"task {self.name!r}: a BEIR folder is only valid for retrieval/reranking")
            return self
        allowed = set(REQUIRED_COLUMNS[self.type]) | set(OPTIONAL_COLUMNS.get(self.type, ()))
        unknown = sorted(set(self.columns) - allowed)
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown column role(s) {unknown} for type {self.type}; allowed {sorted(allowed)}")
        missing = [r for r in REQUIRED_COLUMNS[self.type] if r not in self.columns]
        if missing:
            raise ValueError(f"task {self.name!r}: columns must map {missing} for type {self.type}")
        if self.type in (TaskType.RETRIEVAL, TaskType.RERANKING):
            has_long = {"document", "label"} <= set(self.columns)
            has_lists = "positive" in self.columns
            if not (has_long or has_lists):
                raise ValueError(f"task {self.name!r}: map either `document` + `label` (one candidate per row) or `positive` [+ `negative`] (lists per query)")
        if self.type == TaskType.CLASSIFICATION and self.train_path is None:
            raise ValueError(f"task {self.name!r}: classification needs `train_path` (mteb fits logistic regression on it)")
        if not self.header and any(isinstance(v, str) for v in self.columns.values()):
            raise ValueError(f"task {self.name!r}: with `header: false`, columns must be 0-based integer indices")
        if self.score_range is not None and self.score_range[0] >= self.score_range[1]:
            raise ValueError(f"task {self.name!r}: score_range must be [low, high] with low < high")
        return self


class Suite(Strict):
    """A named list of tasks; `source` is the file it was read from (None when built in code)."""

    name: str | None = None
    description: str | None = None
    tasks: list[TaskSpec] = Field(min_length=1)
    source: Path | None = Field(None, exclude=True)
    skipped: list[str] = Field(default_factory=list, exclude=True, description="why each absent optional task was left out")

    @model_validator(mode="after")
    def _unique_names(self) -> Suite:
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate task names: {dupes}")
        return self


def parse_suite(data: Any, base_dir: str | Path | None = None, where: str = "suite") -> Suite:
    """Validate a suite given as a dict (or a bare list of tasks); resolve relative paths against `base_dir`."""
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict):
        raise SuiteError(f"{where}: expected a mapping with a `tasks:` list")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as err:
        raise SuiteError(f"{where}: " + "; ".join(validation_problems(err))) from None
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    kept = []
    for task in suite.tasks:
        missing = None
        for attr in ("path", "train_path"):
            value = getattr(task, attr)
            if value is not None:
                resolved = value if value.is_absolute() else (base / value)
                resolved = Path(str(resolved.resolve()))
                if not resolved.exists():
                    missing = f"task {task.name!r}: {attr} {value} not found (resolved to {resolved})"
                    break
                setattr(task, attr, resolved)
        if missing is None:
            kept.append(task)
        elif task.optional:
            suite.skipped.append(f"{missing}; optional task skipped")
        else:
            raise SuiteError(f"{where}: {missing}")
    if not kept:
        raise SuiteError(f"{where}: every task is optional and absent: " + "; ".join(suite.skipped))
    suite.tasks = kept
    return suite


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite YAML file; relative data paths are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: invalid YAML: {err}") from None
    suite = parse_suite(data, base_dir=path.resolve().parent, where=str(path))
    suite.source = path.resolve()
    if suite.name is None:
        suite.name = path.stem
    return suite
