"""The task types a dataset can have, and the canonical row shape each one trains on."""

from __future__ import annotations

from enum import StrEnum


class TaskType(StrEnum):
    RETRIEVAL = "retrieval"
    RERANKING = "reranking"
    STS = "sts"
    PAIR_CLASSIFICATION = "pair_classification"
    CLASSIFICATION = "classification"
    CLUSTERING = "clustering"

    @property
    def shape(self) -> RowShape:
        return TASK_SHAPES[self]


class RowShape(StrEnum):
    """Canonical columns: TRIPLET = query, positives[], negatives[]; SCORED_PAIR = text1, text2, score."""

    TRIPLET = "triplet"
    SCORED_PAIR = "scored_pair"


TASK_SHAPES = {
    TaskType.RETRIEVAL: RowShape.TRIPLET,
    TaskType.RERANKING: RowShape.TRIPLET,
    TaskType.CLASSIFICATION: RowShape.TRIPLET,
    TaskType.CLUSTERING: RowShape.TRIPLET,
    TaskType.STS: RowShape.SCORED_PAIR,
    TaskType.PAIR_CLASSIFICATION: RowShape.SCORED_PAIR,
}

# Tasks whose loss uses other rows of the batch as negatives: a duplicate text in such a batch
# would be a false negative, so their batches are built without duplicates.
IN_BATCH_NEGATIVE_TASKS = frozenset({TaskType.RETRIEVAL, TaskType.RERANKING})
LABEL_TASKS = frozenset({TaskType.CLASSIFICATION, TaskType.CLUSTERING})
