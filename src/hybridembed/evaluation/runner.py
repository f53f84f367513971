"""Run a suite on a model: every task through mteb's own evaluation, every requested Matryoshka dim, one encode.

What this adds over `mteb.evaluate`: local tasks from a suite file, a dims sweep that scores
cached embeddings truncated per dim instead of re-encoding, and one results dict
(`{"model", "mteb_version", "tasks": {name: {"type", "dims": {dim: {"main_score", "metrics",
"seconds"}}}}, "averages"}`) that the report, the CLI and the training callback share.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridembed.errors import HybridembedError
from hybridembed.evaluation.config import EVAL_BATCH_SIZE
from hybridembed.evaluation.results import SuiteResults
from hybridembed.evaluation.suite import Suite, TaskSpec, load_suite

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

OVERALL_METHOD = "mean of the task-type averages (each type weighs the same, whatever its number of tasks)"


@contextlib.contextmanager
def _quiet_mteb() -> Iterator[None]:
    """mteb logs every phase at INFO and datasets shows a bar per map(); keep our own progress bar readable."""
    from datasets.utils import logging as ds_logging

    mteb_logger = logging.getLogger("mteb")
    old = mteb_logger.level
    mteb_logger.setLevel(max(old, logging.WARNING))
    bars_were_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        mteb_logger.setLevel(old)
        if bars_were_on:
            ds_logging.enable_progress_bar()


def _model_name(model: SentenceTransformer, given: str | None) -> str:
    if given:
        return given
    card = getattr(model, "model_card_data", None)
    for attr in ("model_name", "base_model", "model_id"):
        value = getattr(card, attr, None) if card is not None else None
        if value:
            return str(value)
    return type(model).__name__


def resolve_dims(dims: Sequence[int] | None, full_dim: int) -> list[int]:
    """Requested dims, largest first, checked against the model's dimension (None -> [full_dim])."""
    if not dims:
        return [full_dim]
    bad = [d for d in dims if d <= 0 or d > full_dim]
    if bad:
        raise HybridembedError(f"--dims {bad}: each dim must be between 1 and the model's dimension {full_dim}")
    return sorted(set(int(d) for d in dims), reverse=True)


def _build_task(spec: TaskSpec) -> Any:
    from hybridembed.evaluation.local_tasks import build_local_task, build_named_task, load_named_task_data

    if spec.is_named:
        task = build_named_task(spec)
        load_named_task_data(task, spec)
    else:
        task = build_local_task(spec)
        task.load_data()
    return task


def _reseed(task: Any) -> None:
    """mteb seeds a task's RNGs once at construction; reseed so every dim sees the same sampling."""
    from mteb._set_seed import _set_seed

    task.rng_state, task.np_rng = _set_seed(task.seed)


def _eval_split(task: Any, spec: TaskSpec) -> str:
    if not spec.is_named:
        assert spec.split is not None
        return spec.split
    if spec.split is None:
        return str(task.eval_splits[0])
    if spec.split not in task.eval_splits:
        raise HybridembedError(f"task {spec.name!r}: split {spec.split!r} not in the mteb task's splits {list(task.eval_splits)}")
    return spec.split


def _collect(scores_by_subset: dict[str, dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """main_score (mean over subsets, as mteb aggregates) and the metrics (flat when one subset)."""
    mains = [float(s["main_score"]) for s in scores_by_subset.values()]
    main = sum(mains) / len(mains)
    if len(scores_by_subset) == 1:
        metrics = dict(next(iter(scores_by_subset.values())))
    else:
        metrics = {subset: dict(s) for subset, s in scores_by_subset.items()}
    return main, _jsonable(metrics)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def compute_averages(tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-type averages per dim and the overall average (mean of the type averages, per dim)."""
    by_type: dict[str, dict[str, list[float]]] = {}
    for result in tasks.values():
        for dim, entry in result["dims"].items():
            by_type.setdefault(str(result["type"]), {}).setdefault(dim, []).append(entry["main_score"])
    type_avg = {t: {d: sum(v) / len(v) for d, v in dims.items()} for t, dims in by_type.items()}
    all_dims = sorted({d for dims in type_avg.values() for d in dims}, key=int, reverse=True)
    overall = {}
    for d in all_dims:
        values = [dims[d] for dims in type_avg.values() if d in dims]
        overall[d] = sum(values) / len(values)
    return {"by_type": type_avg, "overall": overall, "overall_method": OVERALL_METHOD}


def run_suite(
    model: SentenceTransformer | str,
    suite: Suite | str | Path,
    dims: Sequence[int] | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    *,
    model_name: str | None = None,
    show_progress: bool = True,
) -> SuiteResults:
    """Evaluate `model` (a SentenceTransformer or a path/hub id) on every task of `suite` at every dim.

    Returns the results (a dict with score accessors); nothing is written (see `hybridembed.evaluation.report.write_report`).
    """
    import mteb
    from tqdm.auto import tqdm

    from hybridembed.evaluation.encoder import CachingTruncatingEncoder
    from hybridembed.evaluation.local_tasks import task_type_of
    from hybridembed.modeling.model import embedding_dim, load_model

    if isinstance(suite, (str, Path)):
        suite = load_suite(suite)
    if isinstance(model, str):
        model_name = model_name or model
        model = load_model(model)
    full_dim = embedding_dim(model)
    dim_list = resolve_dims(dims, full_dim)
    with _quiet_mteb():
        encoder = CachingTruncatingEncoder(model, full_dim=full_dim, show_progress_bar=show_progress)
    encode_kwargs = {"batch_size": batch_size, "show_progress_bar": show_progress}
    was_training = model.training
    model.eval()
    results: dict[str, Any] = {
        "model": _model_name(model, model_name),
        "mteb_version": mteb.__version__,
        "suite": suite.name,
        "embedding_dim": full_dim,
        "dims": [str(d) for d in dim_list],
        "skipped": list(suite.skipped),  # optional tasks whose files are absent
        "tasks": {},
    }
    started = time.perf_counter()
    progress = tqdm(total=len(suite.tasks) * len(dim_list), desc="eval", unit="task·dim", disable=not show_progress)
    try:
        with _quiet_mteb():
            # Load every task's data first: a bad file or an unreachable named task fails before any encoding.
            loaded = []
            for spec in suite.tasks:
                load_start = time.perf_counter()
                task = _build_task(spec)
                loaded.append((spec, task, _eval_split(task, spec), time.perf_counter() - load_start))
            for spec, task, split, load_seconds in loaded:
                progress.set_postfix_str(spec.name)
                entry: dict[str, Any] = {
                    "type": str(task_type_of(task, spec)),
                    "split": split,
                    "main_metric": task.metadata.main_score,
                    "load_seconds": round(load_seconds, 3),
                    "dims": {},
                }
                for dim in dim_list:
                    encoder.dim = dim
                    _reseed(task)
                    encoded_before, enc_seconds_before = encoder.texts_encoded, encoder.encode_seconds
                    t0 = time.perf_counter()
                    scores = task.evaluate(encoder, split, encode_kwargs=dict(encode_kwargs))
                    main, metrics = _collect(scores)
                    entry["dims"][str(dim)] = {
                        "main_score": main,
                        "metrics": metrics,
                        "seconds": round(time.perf_counter() - t0, 3),
                        "encode_seconds": round(encoder.encode_seconds - enc_seconds_before, 3),
                        "texts_encoded": encoder.texts_encoded - encoded_before,
                    }
                    progress.update(1)
                results["tasks"][spec.name] = entry
                task.dataset = None  # free the data (mteb's unload_data also drops our metadata)
    finally:
        progress.close()
        encoder.clear_cache()
        model.train(was_training)
    results["averages"] = compute_averages(results["tasks"])
    results["seconds"] = round(time.perf_counter() - started, 3)
    return SuiteResults(results)


def main_scores(results: dict[str, Any], dim: str | int | None = None) -> dict[str, float]:
    """{task name: main score} at `dim` (default: the largest evaluated dim); `SuiteResults.scores`."""
    return SuiteResults(results).scores(dim)
