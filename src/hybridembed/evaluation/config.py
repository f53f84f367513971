"""The recipe's `eval:` section: which suite to run during training, how often, at which dims.

Kept free of heavy imports so that loading a recipe does not import transformers or mteb.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from transformers import Trainer

    from hybridembed.evaluation.callback import SuiteEvalCallback


class EvalConfig(BaseModel):
    """A recipe's `eval:` section."""

    model_config = ConfigDict(extra="forbid")

    suite: Path = Field(description="suite YAML (relative paths: against the recipe's folder, see resolve())")
    every_steps: int | None = Field(None, gt=0, description="evaluate every N optimizer steps (None: only at the end)")
    at_end: bool = Field(True, description="evaluate after the last step and write the report")
    dims: list[int] | None = Field(None, description="Matryoshka dims to score (None: the model's full dim)")
    batch_size: int = Field(32, gt=0)
    out_dir: Path | None = Field(None, description="report folder (default: <training output_dir>/eval)")

    def resolve(self, base_dir: str | Path) -> EvalConfig:
        """A copy whose relative `suite` path is resolved against `base_dir` (e.g. the recipe's folder)."""
        base = Path(base_dir)
        suite = self.suite if self.suite.is_absolute() else base / self.suite
        return self.model_copy(update={"suite": suite})

    def build_callback(self, trainer: Trainer | None = None) -> SuiteEvalCallback:
        """The callback for this config; with `trainer`, also registers it there (scalars then go through trainer.log)."""
        from hybridembed.evaluation.callback import SuiteEvalCallback

        callback = SuiteEvalCallback(
            self.suite,
            every_steps=self.every_steps,
            dims=self.dims,
            out_dir=self.out_dir,
            batch_size=self.batch_size,
            at_end=self.at_end,
        )
        if trainer is not None:
            callback.attach(trainer)
        return callback
