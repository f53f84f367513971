"""Evaluate a suite during training: a transformers TrainerCallback (configured by `EvalConfig`).

What this adds over sentence-transformers' evaluators: any suite (all task types, local or named
MTEB tasks, Matryoshka dims) every N steps and at the end of training, logged as `eval/<task>`
scalars through `Trainer.log` (so TensorBoard and every other reporting callback receive them),
with the final report (results.json/.md/.png) and the eval history written beside the model.
In multi-process runs only rank 0 evaluates while the other ranks wait for it at a barrier of
their own (a gloo group with a long timeout), instead of in the next training collective, which
would give up after `training.ddp_timeout` seconds.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

    from hybridembed.evaluation.suite import Suite

logger = logging.getLogger(__name__)

HISTORY_FILE = "eval_history.jsonl"
WAIT_TIMEOUT_S = 24 * 3600  # how long the other ranks wait for rank 0's evaluation (at least ddp_timeout)


def _unwrap(model: Any) -> Any:
    while hasattr(model, "module") and not hasattr(model, "encode"):
        model = model.module
    return model


def scalars(results: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """`eval/<task>` at the largest dim, `eval/<task>@<dim>` for the others, plus type and overall averages."""
    dims = results["dims"]
    out: dict[str, float] = {}
    for name, task in results["tasks"].items():
        for i, dim in enumerate(dims):
            if dim in task["dims"]:
                key = f"{prefix}/{name}" if i == 0 else f"{prefix}/{name}@{dim}"
                out[key] = float(task["dims"][dim]["main_score"])
    averages = results.get("averages", {})
    for task_type, by_dim in averages.get("by_type", {}).items():
        if dims[0] in by_dim:
            out[f"{prefix}/avg_{task_type}"] = float(by_dim[dims[0]])
    for i, dim in enumerate(dims):
        if dim in averages.get("overall", {}):
            out[f"{prefix}/overall" if i == 0 else f"{prefix}/overall@{dim}"] = float(averages["overall"][dim])
    return out


class SuiteEvalCallback(TrainerCallback):
    """Run `suite` on the trainer's model every `every_steps` steps and after the last step.

    Scalars go through `trainer.log` once `attach(trainer)` (or `EvalConfig.build_callback(trainer)`)
    gave the callback its trainer — a TrainerCallback is not handed the trainer otherwise; without
    one they are only written to the log and to `eval_history.jsonl`. Only the main process evaluates.
    At train end the report is written to `out_dir` (default `<output_dir>/eval`).

    Multi-process: register the callback on every rank (`prepare_training` does). At train begin the
    ranks create a gloo group whose timeout is `wait_timeout_s` (or ddp_timeout if larger); while
    rank 0 evaluates, the others wait at a barrier of that group, so an evaluation longer than
    ddp_timeout does not time out their next collective. `waits` counts the barriers passed.
    """

    def __init__(
        self,
        suite: Suite | str | Path,
        every_steps: int | None = None,
        dims: list[int] | None = None,
        out_dir: str | Path | None = None,
        batch_size: int = 64,
        at_end: bool = True,
        show_progress: bool = False,
        wait_timeout_s: float = WAIT_TIMEOUT_S,
    ) -> None:
        from hybridembed.evaluation.suite import load_suite

        self.suite = load_suite(suite) if isinstance(suite, (str, Path)) else suite  # fail before training starts
        self.every_steps = every_steps
        self.dims = dims
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.batch_size = batch_size
        self.at_end = at_end
        self.show_progress = show_progress
        self.trainer: Trainer | None = None
        self.history: list[dict[str, Any]] = []
        self.last_results: dict[str, Any] | None = None
        self._last_step: int | None = None  # step of rank 0's last evaluation
        self._due_step: int | None = None  # step of the last evaluation, as every rank knows it
        self.wait_timeout_s = wait_timeout_s
        self._wait_group: Any = None
        self.waits = 0

    def attach(self, trainer: Trainer) -> SuiteEvalCallback:
        """Register with `trainer` and log through it."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def _folder(self, args: TrainingArguments) -> Path:
        return self.out_dir if self.out_dir is not None else Path(args.output_dir) / "eval"

    def evaluate(self, model: Any, args: TrainingArguments, state: TrainerState) -> dict[str, Any]:
        """Run the suite now, log the scalars, append to the history; returns the results dict."""
        from hybridembed.evaluation.runner import run_suite

        results = run_suite(
            _unwrap(model),
            self.suite,
            dims=self.dims,
            batch_size=self.batch_size,
            model_name=f"{args.output_dir}@step{state.global_step}",
            show_progress=self.show_progress,
        )
        results["global_step"] = state.global_step
        values = scalars(results)
        logger.info("step %d: %s", state.global_step, ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
        if self.trainer is not None:
            # Trainer.log clears control.should_log (and on_log callbacks may change other flags): on rank 0
            # only, that would skip this step's training-loss log, whose gather the other ranks still join.
            control = getattr(self.trainer, "control", None)
            flags = dict(vars(control)) if control is not None else {}
            self.trainer.log(dict(values))
            for key, value in flags.items():
                setattr(self.trainer.control, key, value)
        entry = {"step": state.global_step, "epoch": state.epoch, **values}
        self.history.append(entry)
        folder = self._folder(args)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / HISTORY_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        self.last_results = results
        self._last_step = state.global_step
        return results

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        from hybridembed.distributed import is_distributed

        if is_distributed() and self._wait_group is None:
            import torch.distributed as dist

            # new_group is collective: every rank runs this callback at the same point.
            timeout = timedelta(seconds=max(self.wait_timeout_s, getattr(args, "ddp_timeout", 0)))
            self._wait_group = dist.new_group(backend="gloo", timeout=timeout)

    def _evaluate_on_main(self, args: TrainingArguments, state: TrainerState, model: Any) -> None:
        """Rank 0 evaluates; every other rank waits for it at the wait group's barrier."""
        self._due_step = state.global_step
        try:
            if state.is_world_process_zero:
                self.evaluate(model, args, state)
        finally:
            if self._wait_group is not None:
                import torch.distributed as dist

                dist.barrier(group=self._wait_group)
                self.waits += 1

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        step = state.global_step
        periodic = bool(self.every_steps) and step > 0 and step % self.every_steps == 0
        final = self.at_end and state.max_steps > 0 and step >= state.max_steps
        # The final evaluation happens here, before on_train_end, where reporting callbacks close their writers.
        if (periodic or final) and self._due_step != step:
            self._evaluate_on_main(args, state, kwargs["model"])

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not self.at_end:
            return
        if self._due_step != state.global_step:  # stopped early: evaluate the model as it is
            self._evaluate_on_main(args, state, kwargs["model"])
        if state.is_world_process_zero and self.last_results is not None:
            from hybridembed.evaluation.report import write_report

            paths = write_report(self.last_results, self._folder(args))
            logger.info("evaluation report: %s", paths["markdown"])
