"""The results of one suite run: the JSON dict `run_suite` returns and results.json holds, with accessors for its scores.

`SuiteResults` is a `dict` (so it is written, compared and sent as is), shaped
`{"dims": ["768", …], "tasks": {name: {"type", "dims": {"768": {"main_score", "metrics", …}}}},
"averages": {"by_type", "overall"}, …}`. Callers read scores through `.score(task, dim)`,
`.scores(dim)`, `.average(task_type, dim)` and `.metrics(task, dim)` instead of spelling that shape.
"""

from __future__ import annotations

import math
from typing import Any


class SuiteResults(dict):
    """A suite run's results (see the module docstring); `dim=None` means the largest evaluated dim."""

    @property
    def dims(self) -> list[int]:
        """Evaluated dims, largest first (from the tasks when an older file has no top-level `dims`)."""
        listed = self.get("dims") or {d for task in self.get("tasks", {}).values() for d in task.get("dims", {})}
        return sorted((int(d) for d in listed), reverse=True)

    @property
    def tasks(self) -> list[str]:
        return list(self.get("tasks", {}))

    def task_type(self, task: str) -> str | None:
        return self.get("tasks", {}).get(task, {}).get("type")

    def _dim(self, dim: int | str | None) -> str | None:
        if dim is not None:
            return str(dim)
        return str(self.dims[0]) if self.dims else None

    def _entry(self, task: str, dim: int | str | None) -> dict[str, Any]:
        return self.get("tasks", {}).get(task, {}).get("dims", {}).get(self._dim(dim), {})

    def score(self, task: str, dim: int | str | None = None) -> float | None:
        """The task's main score at `dim` (0–1 scale), or None where it was not evaluated (or mteb gave NaN)."""
        return _number(self._entry(task, dim).get("main_score"))

    def metrics(self, task: str, dim: int | str | None = None) -> dict[str, Any]:
        """Every metric mteb reported for the task at `dim` ({} where it was not evaluated)."""
        return self._entry(task, dim).get("metrics", {})

    def scores(self, dim: int | str | None = None) -> dict[str, float]:
        """{task: main score} at `dim`, for the tasks evaluated there."""
        found = {task: self.score(task, dim) for task in self.tasks}
        return {task: value for task, value in found.items() if value is not None}

    def average(self, task_type: str | None = None, dim: int | str | None = None) -> float | None:
        """The average of one task type at `dim`, or the overall average (mean of the type averages) when `task_type` is None."""
        averages = self.get("averages", {})
        by_dim = averages.get("overall", {}) if task_type is None else averages.get("by_type", {}).get(task_type, {})
        return _number(by_dim.get(self._dim(dim)))

    @property
    def task_types(self) -> list[str]:
        return list(self.get("averages", {}).get("by_type", {}))


def _number(value: Any) -> float | None:
    """A score as a float; None for a missing one and for NaN (mteb gives NaN where a metric is undefined)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)
