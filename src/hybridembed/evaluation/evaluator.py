"""A suite as a sentence-transformers evaluator, so the trainer's own evaluation, best-checkpoint selection and early stopping use it.

What this adds over sentence-transformers' evaluators: any suite (every task type, local or named
MTEB tasks, Matryoshka dims) scored in one call, its scores keyed `<task>` (largest dim),
`<task>@<dim>`, `avg_<task type>` and `overall`, so that `eval.metric` can name any of them as
`metric_for_best_model`; every evaluation's full results kept by step (the report of the step that
was kept is written at the end), and multi-process runs where rank 0 evaluates alone while the other
ranks wait at a barrier of their own, with a long timeout, instead of inside sharded-inference
collectives that give up after `training.ddp_timeout` seconds.
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from hybridembed.evaluation.config import EVAL_BATCH_SIZE, EvalConfig
from hybridembed.evaluation.results import SuiteResults

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from hybridembed.evaluation.suite import Suite

logger = logging.getLogger(__name__)

HISTORY_FILE = "eval_history.jsonl"


def scalars(results: dict[str, Any], prefix: str | None = None) -> dict[str, float]:
    """`<task>` at the largest dim, `<task>@<dim>` for the others, `avg_<type>` and `overall` (each `prefix/…` when given)."""
    results = SuiteResults(results)
    dims = results.dims
    out: dict[str, float] = {}
    suffixes = {dim: "" if i == 0 else f"@{dim}" for i, dim in enumerate(dims)}
    for name in results.tasks:
        for dim, suffix in suffixes.items():
            score = results.score(name, dim)
            if score is not None:
                out[f"{name}{suffix}"] = score
    for task_type in results.task_types if dims else []:
        value = results.average(task_type, dims[0])
        if value is not None:
            out[f"avg_{task_type}"] = value
    for dim, suffix in suffixes.items():
        value = results.average(dim=dim)
        if value is not None:
            out[f"overall{suffix}"] = value
    return {f"{prefix}/{key}": value for key, value in out.items()} if prefix else out


def metric_names(suite: Suite, dims: list[int] | None) -> set[str] | None:
    """The score keys a suite will produce (None when a named task's type is only known once it loads)."""
    names = {"overall"} | {spec.name for spec in suite.tasks}
    for dim in (dims or [])[1:]:
        names |= {f"{spec.name}@{dim}" for spec in suite.tasks} | {f"overall@{dim}"}
    types = {spec.type for spec in suite.tasks}
    if None in types:
        return None
    return names | {f"avg_{t}" for t in types}


class SuiteEvaluator(SentenceEvaluator):
    """Score `suite` at `dims`; `primary_metric` (default `overall`) is what best-checkpoint selection compares.

    Inputs: a suite (path or `Suite`), the dims (first = the one unsuffixed keys refer to), a batch
    size. Returns {score key: value}; the trainer prefixes `eval_`. Example::

        evaluator = SuiteEvaluator("suites/quickstart.yaml", dims=[768, 128], metric="stsb-dev")
        trainer = SentenceTransformerTrainer(..., evaluator=evaluator)
    """

    def __init__(
        self,
        suite: Suite | str | Path,
        dims: list[int] | None = None,
        batch_size: int = EVAL_BATCH_SIZE,
        metric: str = "overall",
        show_progress: bool = False,
    ) -> None:
        from hybridembed.evaluation.suite import SuiteError, load_suite

        super().__init__()
        self.suite = load_suite(suite) if isinstance(suite, (str, Path)) else suite  # fail before training starts
        self.dims = dims
        self.batch_size = batch_size
        self.show_progress = show_progress
        known = metric_names(self.suite, dims)
        if known is not None and metric not in known:
            raise SuiteError(f"eval.metric {metric!r}: the suite scores {', '.join(sorted(known))}")
        self.primary_metric = metric
        self.greater_is_better = True
        self.results_by_step: dict[int, dict[str, Any]] = {}  # rank 0 only
        self.history: list[dict[str, Any]] = []  # rank 0 only
        self.last_step: int | None = None  # the last evaluated step, on every rank
        self.wait_group: Any = None  # set by SuiteEvalCallback in multi-process runs
        self.waits = 0

    # The base class takes any model; the trainer only ever passes its SentenceTransformer here.
    def __call__(self, model: SentenceTransformer, output_path: str | None = None, epoch: float = -1, steps: int = -1) -> dict[str, float]:  # type: ignore[override]
        from hybridembed.evaluation.runner import run_suite

        results = run_suite(model, self.suite, dims=self.dims, batch_size=self.batch_size, model_name=f"step {steps}", show_progress=self.show_progress)
        results["global_step"] = steps
        values = scalars(results)
        if self.primary_metric not in values:
            raise KeyError(f"eval.metric {self.primary_metric!r}: the suite scored {', '.join(sorted(values))}")
        logger.info("step %d: %s", steps, ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
        entry = {"step": steps, "epoch": epoch, **values}
        self.history.append(entry)
        self.results_by_step[steps] = results
        if output_path:
            Path(output_path).mkdir(parents=True, exist_ok=True)
            with open(Path(output_path) / HISTORY_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        self.store_metrics_in_model_card_data(model, values, epoch, steps)  # type: ignore[arg-type]  # the trainer's epochs are fractional
        return values

    def evaluate_on_main(self, model: SentenceTransformer, output_path: str | None, epoch: float, steps: int, is_main: bool) -> dict[str, float]:
        """Rank 0 scores the suite; the others wait for it at `wait_group`'s barrier and receive its scores."""
        if self.wait_group is None:
            values = self(model, output_path, epoch, steps)
        else:
            import torch.distributed as dist

            payload: list[Any] = [None]
            if is_main:
                try:
                    payload = [(self(model, output_path, epoch, steps), None)]
                except Exception:
                    payload = [(None, traceback.format_exc())]
            dist.broadcast_object_list(payload, src=0, group=self.wait_group)
            self.waits += 1
            values, error = payload[0]
            if error is not None:
                raise RuntimeError(f"the evaluation on rank 0 failed:\n{error}")
        self.last_step = steps
        return values


def build_evaluator(config: EvalConfig) -> SuiteEvaluator:
    """The evaluator of a recipe's `eval:` section (its suite, dims, batch size and ranking metric)."""
    return SuiteEvaluator(config.suite, dims=config.dims, batch_size=config.batch_size, metric=config.metric)
