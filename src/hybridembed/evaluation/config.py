"""The recipe's `eval:` section: which suite to run during training, how often, at which dims.

A plain validated model: loading a recipe imports no transformers or mteb. What it builds (the
evaluator, the trainer callbacks and arguments) lives in evaluation/evaluator.py and evaluation/callback.py.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from hybridembed.schema import Strict

EVAL_BATCH_SIZE = 32  # texts per encode call when a suite is scored (eval:, `hybridembed eval`, run_suite)


class EvalConfig(Strict):
    """A recipe's `eval:` section."""

    suite: Path = Field(description="suite YAML (relative paths: against the recipe's folder, see resolve())")
    every_steps: int | None = Field(None, gt=0, description="evaluate every N optimizer steps (None: only at the end)")
    at_end: bool = Field(True, description="evaluate after the last step and write the report")
    dims: list[int] | None = Field(None, description="Matryoshka dims to score (None: the model's full dim)")
    batch_size: int = Field(EVAL_BATCH_SIZE, gt=0)
    out_dir: Path | None = Field(None, description="report folder (default: <training output_dir>/eval)")
    metric: str = Field("overall", description="score that ranks checkpoints: a task name, <task>@<dim>, avg_<type>, overall")
    keep_best: bool = Field(False, description="save the best evaluated checkpoint's weights as the model (load_best_model_at_end)")
    early_stopping_patience: int | None = Field(None, gt=0, description="stop after this many evaluations without improvement")
    early_stopping_threshold: float = Field(0.0, ge=0, description="how much `metric` must improve to count")

    @model_validator(mode="after")
    def _selection_needs_periodic_evaluation(self) -> EvalConfig:
        if (self.keep_best or self.early_stopping_patience) and not self.every_steps:
            raise ValueError("keep_best and early_stopping_patience compare periodic evaluations: set every_steps")
        return self

    def resolve(self, base_dir: str | Path) -> EvalConfig:
        """A copy whose relative `suite` path is resolved against `base_dir` (e.g. the recipe's folder)."""
        base = Path(base_dir)
        suite = self.suite if self.suite.is_absolute() else base / self.suite
        return self.model_copy(update={"suite": suite})
