"""The recipe's `eval:` section: which suite to run during training, how often, at which dims.

Kept free of heavy imports so that loading a recipe does not import transformers or mteb.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from hybridembed.evaluation.evaluator import SuiteEvaluator


class EvalConfig(BaseModel):
    """A recipe's `eval:` section."""

    model_config = ConfigDict(extra="forbid")

    suite: Path = Field(description="suite YAML (relative paths: against the recipe's folder, see resolve())")
    every_steps: int | None = Field(None, gt=0, description="evaluate every N optimizer steps (None: only at the end)")
    at_end: bool = Field(True, description="evaluate after the last step and write the report")
    dims: list[int] | None = Field(None, description="Matryoshka dims to score (None: the model's full dim)")
    batch_size: int = Field(32, gt=0)
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

    def training_arguments(self, save_steps: int | None) -> dict[str, Any]:
        """The trainer arguments that run this evaluation (given `training.save_steps`)."""
        args: dict[str, Any] = {"metric_for_best_model": self.metric, "greater_is_better": True}
        if self.every_steps:
            args |= {"eval_strategy": "steps", "eval_steps": self.every_steps}
        if self.keep_best:
            # transformers keeps the best checkpoint only among saved ones: save at (a multiple of) each evaluation.
            args |= {"load_best_model_at_end": True, "save_strategy": "steps", "save_steps": save_steps or self.every_steps}
        return args

    def build_evaluator(self) -> SuiteEvaluator:
        from hybridembed.evaluation.evaluator import SuiteEvaluator

        return SuiteEvaluator(self.suite, dims=self.dims, batch_size=self.batch_size, metric=self.metric)

    def build_callbacks(self, evaluator: SuiteEvaluator) -> list[TrainerCallback]:
        """The callbacks a trainer needs for this evaluation: the final evaluation and report, early stopping."""
        from transformers import EarlyStoppingCallback

        from hybridembed.evaluation.callback import SuiteEvalCallback

        callbacks: list[TrainerCallback] = [SuiteEvalCallback(evaluator, at_end=self.at_end, out_dir=self.out_dir)]
        if self.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(self.early_stopping_patience, self.early_stopping_threshold))
        return callbacks
