"""The per-task table (tasks.TASKS) agrees with the losses it routes to and the views derived from it."""

from __future__ import annotations

from hybridembed.losses import DEFAULT_LOSS_FOR_TASK, LOSS_CLASSES
from hybridembed.recipe import LossName
from hybridembed.tasks import IN_BATCH_NEGATIVE_TASKS, LABEL_TASKS, TASKS, RowShape, TaskType


def test_every_task_type_has_one_entry_whose_default_loss_takes_its_rows():
    assert set(TASKS) == set(TaskType)
    for task, spec in TASKS.items():
        loss = LOSS_CLASSES[LossName(spec.default_loss)]
        accepts = getattr(loss, "accepts", None)
        assert accepts is None or accepts is spec.shape, f"{task}: {loss.__name__} does not take {spec.shape} rows"
        assert DEFAULT_LOSS_FOR_TASK[task] is LossName(spec.default_loss)
        assert task.shape is spec.shape


def test_derived_views_and_piccolo2_routing():
    assert {TaskType.RETRIEVAL, TaskType.RERANKING} == IN_BATCH_NEGATIVE_TASKS
    assert {TaskType.CLASSIFICATION, TaskType.CLUSTERING} == LABEL_TASKS
    assert not (IN_BATCH_NEGATIVE_TASKS & LABEL_TASKS)
    assert all(TASKS[t].shape is RowShape.TRIPLET for t in IN_BATCH_NEGATIVE_TASKS | LABEL_TASKS)
    assert [TASKS[t].default_negatives for t in TaskType] == [7, 7, 0, 0, 10, 10]
