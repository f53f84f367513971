"""Evaluation of embedding models on local or named MTEB tasks: suites, runs, Matryoshka sweeps, reports.

Public API: `load_suite(path)`, `run_suite(model, suite, dims=None, batch_size=32)` → `SuiteResults`
(`.score(task, dim)`, `.scores(dim)`, `.average(type, dim)`), `EvalConfig`
(a recipe's `eval:` section), `hybridembed.evaluation.evaluator.SuiteEvaluator` (a suite as a sentence-transformers evaluator).
Heavy imports (torch, mteb) happen inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridembed.evaluation.config import EVAL_BATCH_SIZE, EvalConfig
from hybridembed.evaluation.results import SuiteResults
from hybridembed.evaluation.suite import Suite, SuiteError, TaskSpec, load_suite, parse_suite

if TYPE_CHECKING:
    from pathlib import Path

    from sentence_transformers import SentenceTransformer

__all__ = ["EvalConfig", "Suite", "SuiteError", "SuiteResults", "TaskSpec", "load_suite", "main_scores", "parse_suite", "run_suite"]


def run_suite(
    model: SentenceTransformer | str,
    suite: Suite | str | Path,
    dims: list[int] | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    **kwargs: Any,
) -> SuiteResults:
    """Evaluate `model` on every task of `suite` at every dim; see `hybridembed.evaluation.runner.run_suite`."""
    from hybridembed.evaluation.runner import run_suite as _run

    return _run(model, suite, dims=dims, batch_size=batch_size, **kwargs)


def main_scores(results: dict[str, Any], dim: str | int | None = None) -> dict[str, float]:
    """{task name: main score} at `dim` (default: the largest evaluated dim); `SuiteResults(results).scores(dim)`."""
    return SuiteResults(results).scores(dim)
