"""Losses (one file each) and the single place that routes a task type to its default loss.

Adding a loss: write one file with an ``nn.Module`` taking ``(sentence_features, labels)`` and a
class attribute ``accepts`` (the row shape it trains on), add one line to ``LOSS_CLASSES`` and its
settings model to ``recipe.LossConfig`` (CONTRIBUTING.md).
"""

from __future__ import annotations

from torch import nn

from hybridembed.errors import RecipeError
from hybridembed.losses.cached import CachedLoss
from hybridembed.losses.cosent import CoSENTLoss
from hybridembed.losses.forward import DEFAULT_CHUNK_ROWS, ChunkRows
from hybridembed.losses.infonce import InfoNCELoss
from hybridembed.losses.label_contrastive import LabelContrastiveLoss
from hybridembed.losses.pearson import PearsonLoss
from hybridembed.recipe import LossConfig, LossName, loss_config
from hybridembed.tasks import TASKS, TaskType

# Each has a class attribute `accepts` (its row shape) and takes (model, …, chunk_rows=…).
LOSS_CLASSES: dict[LossName, type[InfoNCELoss] | type[CoSENTLoss] | type[PearsonLoss]] = {
    LossName.INFONCE: InfoNCELoss,
    LossName.COSENT: CoSENTLoss,
    LossName.LABEL_CONTRASTIVE: LabelContrastiveLoss,
    LossName.PEARSON: PearsonLoss,
}

# Piccolo2's routing (tasks.TASKS): retrieval-like tasks → InfoNCE, graded pairs → CoSENT, labels → label-contrastive.
DEFAULT_LOSS_FOR_TASK: dict[TaskType, LossName] = {task: LossName(spec.default_loss) for task, spec in TASKS.items()}


# Task weights when a recipe gives none. Since a weight now scales its task's (clipped) steps
# (hybridembed.training.task_weighting), hybridembed defaults to equal weights; Piccolo2's public-code
# weights stay available as `loss_preset: piccolo2`. Why: docs/losses.md ("Task weights").
LOSS_WEIGHT_PRESETS: dict[str, dict[LossName, float]] = {
    "hybridembed": {},  # every loss at weight 1.0
    "piccolo2": {LossName.COSENT: 0.04, LossName.LABEL_CONTRASTIVE: 0.2},
}


def resolve_loss_config(task: TaskType, per_task: dict[TaskType, LossConfig], per_dataset: LossConfig | None) -> LossConfig:
    """Dataset setting beats the recipe's per-task setting, which beats the default routing."""
    return per_dataset or per_task.get(task) or loss_config(DEFAULT_LOSS_FOR_TASK[task])


def build_loss(
    model: nn.Module,
    task: TaskType,
    config: LossConfig,
    matryoshka_dims: list[int] | None = None,
    matryoshka_weights: list[float] | None = None,
    where: str = "losses",
    cache_minibatch_size: int | None = None,
    forward_chunk_rows: ChunkRows = DEFAULT_CHUNK_ROWS,
    preset: str = "hybridembed",
) -> nn.Module:
    """Instantiate the configured loss for `task`: optionally gradient-cached, then wrapped in MatryoshkaLoss if dims are given."""
    name = LossName(config.name)
    loss_class = LOSS_CLASSES[name]
    if loss_class.accepts is not task.shape:
        raise RecipeError(f"{where}: loss {name} trains on {loss_class.accepts} rows, but task {task} has {task.shape} rows")
    # The settings model of each loss holds exactly what its class takes (tests/test_losses.py checks it).
    kwargs = config.model_dump(exclude={"name"}, exclude_none=True)
    kwargs.setdefault("weight", LOSS_WEIGHT_PRESETS[preset].get(name, 1.0))
    loss: nn.Module = loss_class(model, chunk_rows=forward_chunk_rows, **kwargs)
    if cache_minibatch_size:
        loss = CachedLoss(loss, mini_batch_size=cache_minibatch_size)
    if matryoshka_dims:
        from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

        # Piccolo2 averages the per-dimension losses; sentence-transformers sums them (weights 1),
        # which makes the loss — and how often max_grad_norm clips — grow with the number of dims.
        weights = matryoshka_weights or matryoshka_mean_weights(matryoshka_dims)
        # sentence-transformers types `model` as a SentenceTransformer; any embedding module does here.
        loss = MatryoshkaLoss(model, loss, matryoshka_dims=matryoshka_dims, matryoshka_weights=weights)  # type: ignore[arg-type]
    return loss


def matryoshka_mean_weights(dims: list[int]) -> list[float]:
    """Equal weights that sum to 1: the Matryoshka loss is the mean over dims, as in Piccolo2."""
    return [1.0 / len(dims)] * len(dims)


__all__ = [
    "CachedLoss",
    "CoSENTLoss",
    "DEFAULT_LOSS_FOR_TASK",
    "InfoNCELoss",
    "LOSS_CLASSES",
    "LOSS_WEIGHT_PRESETS",
    "LabelContrastiveLoss",
    "PearsonLoss",
    "build_loss",
    "matryoshka_mean_weights",
    "resolve_loss_config",
]
