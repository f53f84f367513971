"""The trainer callback around `SuiteEvaluator`: the final evaluation, the wait group of multi-process runs, and the report.

The evaluation itself runs in the trainer's own `evaluate()` (scores logged as `eval_<key>`, which
TensorBoard shows as `eval/<key>`), so `metric_for_best_model`, `load_best_model_at_end` and
`EarlyStoppingCallback` work on it. This callback asks for one more evaluation after the last step
(`at_end`), creates the gloo group with a long timeout that the other ranks wait in while rank 0
evaluates, and at train end writes the report (results.json/.md/.png) of the step whose weights are
kept: the best checkpoint's when the best is loaded at the end, else the last evaluation's.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hybridembed.evaluation.config import EvalConfig
    from hybridembed.evaluation.evaluator import SuiteEvaluator

logger = logging.getLogger(__name__)

WAIT_TIMEOUT_S = 24 * 3600  # how long the other ranks wait for rank 0's evaluation (at least ddp_timeout)


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The global step of a `checkpoint-<step>` folder."""
    if not checkpoint:
        return None
    tail = Path(checkpoint).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


class SuiteEvalCallback(TrainerCallback):
    """Final evaluation, wait group and report for `evaluator` (register on every rank; `prepare_training` does)."""

    def __init__(self, evaluator: SuiteEvaluator, at_end: bool = True, out_dir: str | Path | None = None, wait_timeout_s: float = WAIT_TIMEOUT_S) -> None:
        self.evaluator = evaluator
        self.at_end = at_end
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.wait_timeout_s = wait_timeout_s
        self.kept_step: int | None = None  # the step whose results the report shows

    def folder(self, args: TrainingArguments) -> Path:
        # TrainingArguments types output_dir as optional but always sets it in __post_init__.
        return self.out_dir if self.out_dir is not None else Path(str(args.output_dir)) / "eval"

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        from hybridembed.distributed import is_distributed

        if is_distributed() and self.evaluator.wait_group is None:
            import torch.distributed as dist

            # new_group is collective: every rank runs this callback at the same point.
            timeout = timedelta(seconds=max(self.wait_timeout_s, getattr(args, "ddp_timeout", 0)))
            self.evaluator.wait_group = dist.new_group(backend="gloo", timeout=timeout)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        # The trainer evaluates right after this, before on_train_end, where reporting callbacks close their writers.
        if self.at_end and state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_evaluate = True

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not self.evaluator.results_by_step:
            return
        from hybridembed.evaluation.report import write_report

        best = checkpoint_step(state.best_model_checkpoint) if args.load_best_model_at_end else None
        self.kept_step = best if best in self.evaluator.results_by_step else max(self.evaluator.results_by_step)
        results = dict(self.evaluator.results_by_step[self.kept_step])
        results["selected"] = {"step": self.kept_step, "why": "best" if best is not None else "last",
                               "metric": self.evaluator.primary_metric, "last_step": state.global_step}  # fmt: skip
        paths = write_report(results, self.folder(args))
        logger.info("evaluation report (step %d, %s): %s", self.kept_step, results["selected"]["why"], paths["markdown"])


def eval_training_arguments(config: EvalConfig, save_steps: int | None) -> dict[str, Any]:
    """The trainer arguments that run `config`'s evaluation (given `training.save_steps`)."""
    args: dict[str, Any] = {"metric_for_best_model": config.metric, "greater_is_better": True}
    if config.every_steps:
        args |= {"eval_strategy": "steps", "eval_steps": config.every_steps}
    if config.keep_best:
        # transformers keeps the best checkpoint only among saved ones: save at (a multiple of) each evaluation.
        args |= {"load_best_model_at_end": True, "save_strategy": "steps", "save_steps": save_steps or config.every_steps}
    return args


def build_eval_callbacks(config: EvalConfig, evaluator: SuiteEvaluator) -> list[TrainerCallback]:
    """The callbacks a trainer needs for `config`'s evaluation: the final evaluation and report, early stopping."""
    from transformers import EarlyStoppingCallback

    callbacks: list[TrainerCallback] = [SuiteEvalCallback(evaluator, at_end=config.at_end, out_dir=config.out_dir)]
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold))
    return callbacks
