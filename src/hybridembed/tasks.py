"""The task types a dataset can have, and every per-task fact in one table: row shape, default loss, default negatives, in-batch negatives, label pool."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TaskType(StrEnum):
    RETRIEVAL = "retrieval"
    RERANKING = "reranking"
    STS = "sts"
    PAIR_CLASSIFICATION = "pair_classification"
    CLASSIFICATION = "classification"
    CLUSTERING = "clustering"

    @property
    def spec(self) -> TaskSpec:
        return TASKS[self]

    @property
    def shape(self) -> RowShape:
        return TASKS[self].shape


class RowShape(StrEnum):
    """Canonical columns: TRIPLET = query, positives[], negatives[] (and label); SCORED_PAIR = text1, text2, score."""

    TRIPLET = "triplet"
    SCORED_PAIR = "scored_pair"


@dataclass(frozen=True)
class TaskSpec:
    """What a task type trains on and how, when a recipe does not say otherwise."""

    shape: RowShape
    default_loss: str  # a recipe.LossName value (Piccolo2's routing); a string so this module imports nothing
    default_negatives: int  # hard negatives (or negative labels) per row per step
    in_batch_negatives: bool  # other rows of the batch are negatives: a duplicate text would be a false negative, so batches have none
    label_pool: bool  # negatives are drawn from the dataset's whole label set


TASKS: dict[TaskType, TaskSpec] = {
    TaskType.RETRIEVAL: TaskSpec(RowShape.TRIPLET, "infonce", 7, in_batch_negatives=True, label_pool=False),
    TaskType.RERANKING: TaskSpec(RowShape.TRIPLET, "infonce", 7, in_batch_negatives=True, label_pool=False),
    TaskType.STS: TaskSpec(RowShape.SCORED_PAIR, "cosent", 0, in_batch_negatives=False, label_pool=False),
    TaskType.PAIR_CLASSIFICATION: TaskSpec(RowShape.SCORED_PAIR, "cosent", 0, in_batch_negatives=False, label_pool=False),
    TaskType.CLASSIFICATION: TaskSpec(RowShape.TRIPLET, "label_contrastive", 10, in_batch_negatives=False, label_pool=True),
    TaskType.CLUSTERING: TaskSpec(RowShape.TRIPLET, "label_contrastive", 10, in_batch_negatives=False, label_pool=True),
}

# Views of the table, for the many call sites that only ask one question.
TASK_SHAPES = {task: spec.shape for task, spec in TASKS.items()}
IN_BATCH_NEGATIVE_TASKS = frozenset(task for task, spec in TASKS.items() if spec.in_batch_negatives)
LABEL_TASKS = frozenset(task for task, spec in TASKS.items() if spec.label_pool)
