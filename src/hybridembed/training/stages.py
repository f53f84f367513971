"""Run a whole recipe: one training run, or its `stages:` (mlm → pairs → multitask) in order, each from the previous stage's weights, skipping finished stages and resuming an interrupted one.

What this adds around `hybridembed.training.builder.run_training` (which trains one stage): per-stage
recipes resolved from the recipe's sections and the stage's overrides, the `pairs` defaults
(retrieval rows, bidirectional InfoNCE), a marker file per finished stage with a fingerprint of
what it trained on, resume from the stage's last checkpoint, LoRA merging between stages, and the
final model published in `training.output_dir`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hybridembed.errors import RecipeError
from hybridembed.model_folder import STAGE_MARKER, RunResult, checkpoints, read_marker, read_training_log, write_marker, write_recipe
from hybridembed.modeling.folder_compat import make_interoperable
from hybridembed.modeling.lora import is_adapter_folder, merge_saved_adapter
from hybridembed.modeling.model import write_metadata
from hybridembed.recipe import (
    DataFormat,
    InfoNCESettings,
    ModelConfig,
    Recipe,
    StageConfig,
    StageKind,
    TrainingConfig,
)
from hybridembed.tasks import TaskType

logger = logging.getLogger(__name__)
_Section = TypeVar("_Section", bound=BaseModel)  # a recipe section's schema (ModelConfig, TrainingConfig)
PAIRS_TEMPERATURE = 0.05  # default InfoNCE temperature of a pairs stage
# Training settings that change how a run is watched or stored, not what it learns.
UNTRACKED_TRAINING = {"output_dir", "resume", "logging_steps", "report_to", "save_steps", "save_total_limit", "dataloader_num_workers"}


@dataclass
class StagePlan:
    """One stage resolved against the recipe: where it writes and what it trains with."""

    index: int  # 1-based
    stage: StageConfig
    out: Path
    model: ModelConfig
    training: TrainingConfig

    @property
    def label(self) -> str:
        return f"stage {self.index} ({self.stage.name}, {self.stage.kind})"


def plan_stages(recipe: Recipe) -> list[StagePlan]:
    """Resolve every stage's model and training sections (recipe's, then the stage's overrides)."""
    root = Path(recipe.training.output_dir)
    plans = []
    for i, stage in enumerate(recipe.stages or [], start=1):
        out = root / f"stage-{i}-{stage.name}"
        model = _merged(ModelConfig, recipe.model, stage.model, f"stages[{i - 1}].model")
        training = _merged(TrainingConfig, recipe.training, stage.training, f"stages[{i - 1}].training", output_dir=str(out))
        plans.append(StagePlan(i, stage, out, model, training))
    return plans


def _merged(schema: type[_Section], base: BaseModel, override: Any, where: str, **fixed: Any) -> _Section:
    values = {**base.model_dump(), **(override.model_dump(exclude_unset=True) if override is not None else {}), **fixed}
    try:
        return schema.model_validate(values)
    except ValueError as err:
        raise RecipeError(f"{where}: {err}") from None


def stage_recipe(recipe: Recipe, plan: StagePlan, backbone: str, resume: bool) -> Recipe:
    """The single-stage recipe `run_training` runs for a pairs or multitask stage."""
    stage = plan.stage
    datasets = [d.model_copy(deep=True) for d in (stage.datasets or recipe.datasets)]
    losses = stage.losses if stage.losses is not None else recipe.losses
    if stage.kind is StageKind.PAIRS:
        for ds in datasets:
            if ds.task is None and ds.format is not DataFormat.PICCOLO:
                ds.task = TaskType.RETRIEVAL  # weakly supervised (query, passage) pairs
        if stage.losses is None:
            losses = {TaskType.RETRIEVAL: InfoNCESettings(bidirectional=True, temperature=PAIRS_TEMPERATURE)}
    rest = recipe.model_dump(exclude={"model", "datasets", "losses", "training", "stages"})
    if stage.mining is not None:
        rest["mining"] = stage.mining.model_dump()
    return Recipe.model_validate(
        {
            **rest,
            "model": {**plan.model.model_dump(), "backbone": backbone},
            "datasets": [d.model_dump() for d in datasets],
            "losses": {task: loss.model_dump() for task, loss in losses.items()},
            "training": {**plan.training.model_dump(), "resume": resume},
        }
    )


def fingerprint(plan: StagePlan, previous: str, recipe: Recipe) -> str:
    """What a stage learns from (its resolved sections, its data, the stage before it), hashed."""
    stage = plan.stage
    content = {
        "previous": previous,
        "stage": stage.model_dump(mode="json", exclude={"training", "model", "datasets"}),
        "datasets": [d.model_dump(mode="json") for d in (stage.datasets or recipe.datasets)] if stage.kind is not StageKind.MLM else None,
        "model": plan.model.model_dump(mode="json", exclude={"backbone"} if previous else None),
        "training": plan.training.model_dump(mode="json", exclude=UNTRACKED_TRAINING),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finish_model(out: Path, model: ModelConfig, final: bool) -> None:
    """Merge a LoRA adapter into the saved weights unless this is the final model and the recipe keeps the adapter."""
    if model.lora is not None and is_adapter_folder(out) and not (final and model.lora.save == "adapter"):
        merge_saved_adapter(out)
    if not is_adapter_folder(out) and int(os.environ.get("RANK", "0")) == 0:
        # After the merge, which re-saves the folder with sentence-transformers 6's names.
        make_interoperable(out)


def run_recipe(recipe: Recipe, recipe_text: str | None = None) -> RunResult:
    """Train as the recipe says (all stages, or one run); return the final model folder with its global step and last metrics."""
    if not recipe.stages:
        from hybridembed.training.builder import run_training

        result = run_training(recipe, recipe_text)
        finish_model(result.folder, recipe.model, final=True)
        return result
    return run_stages(recipe, recipe_text)


def run_stages(recipe: Recipe, recipe_text: str | None = None) -> RunResult:
    """Run the stages in order; a finished stage (marker with the same fingerprint) is skipped."""
    plans = plan_stages(recipe)
    backbone, previous, result = recipe.model.backbone, "", None
    for plan in plans:
        digest = fingerprint(plan, previous, recipe)
        marker = read_marker(plan.out)
        if marker is not None:
            if marker.get("fingerprint") != digest:
                raise RecipeError(
                    f"{plan.label} finished earlier with other settings or data ({plan.out / STAGE_MARKER}); "
                    f"delete {plan.out} and the stage folders after it to train it again"
                )
            logger.info("%s: finished earlier, skipping (%s)", plan.label, plan.out)
            result = RunResult.from_log(plan.out, read_training_log(plan.out))
        else:
            resume = bool(checkpoints(plan.out))
            logger.info("%s: %s from %s", plan.label, "resuming" if resume else "training", backbone)
            result = _run_one(recipe, plan, backbone, resume, final=plan is plans[-1])
            marker = {"stage": plan.index, "name": plan.stage.name, "kind": plan.stage.kind.value, "fingerprint": digest,
                      "backbone": backbone, "global_step": result.global_step}  # fmt: skip
            if int(os.environ.get("RANK", "0")) == 0:  # one writer
                write_marker(plan.out, marker)
        backbone, previous = str(plan.out), digest
    root = _publish(recipe, plans, recipe_text)
    assert result is not None, "run_stages runs a recipe with stages"
    return RunResult(root, result.global_step, result.metrics)


def _run_one(recipe: Recipe, plan: StagePlan, backbone: str, resume: bool, final: bool) -> RunResult:
    match plan.stage.kind:
        case StageKind.MLM:
            from hybridembed.training.mlm import run_mlm

            model = plan.model.model_copy(update={"backbone": backbone})
            result = run_mlm(model, plan.stage.texts or [], plan.training, plan.stage.mlm_probability, resume)
        case StageKind.PAIRS | StageKind.MULTITASK:
            from hybridembed.training.builder import run_training

            result = run_training(stage_recipe(recipe, plan, backbone, resume))
            finish_model(plan.out, plan.model, final)
    from hybridembed.distributed import is_distributed

    if is_distributed():
        import torch.distributed as dist

        dist.barrier()  # rank 0 finishes the folder (its log, LoRA merge, interoperable names) before any rank reads it
    return result


def _publish(recipe: Recipe, plans: list[StagePlan], recipe_text: str | None) -> Path:
    """Copy the last stage's model into output_dir, with the whole recipe and a list of the stages."""
    root = Path(recipe.training.output_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return root  # one writer: other ranks copying and rewriting the same files at once read each other's half-written JSON
    last = plans[-1].out
    for item in last.iterdir():
        if item.name == STAGE_MARKER or item.name == "runs" or item.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
            continue
        target = root / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    write_recipe(root, recipe, recipe_text)
    stages = [{**(read_marker(p.out) or {}), "dir": p.out.name} for p in plans]
    write_metadata(root, stages=stages)
    make_interoperable(root)
    logger.info("final model (from %s) in %s", plans[-1].label, root)
    return root


__all__ = ["plan_stages", "run_recipe", "run_stages", "stage_recipe"]
