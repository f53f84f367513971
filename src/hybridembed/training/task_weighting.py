"""How per-task loss weights act on a step when batches are task-homogeneous and gradients are clipped.

With one task per batch, the stock recipe (weight × loss, then clip the step's gradient to
``max_grad_norm``) erases the weights: a weighted and an unweighted batch are both rescaled to
the same norm, so the weight changes nothing whenever clipping engages (tests/test_task_weighting.py:
weights 0.04 and 1.0 end within float rounding of each other in that order). hybridembed therefore
clips *before* weighting: each step's gradient is clipped at ``max_grad_norm × w``, where w is
the step's task weight — for one task per step exactly ``w × clip(unweighted gradient)``. With
several tasks in one optimizer step (gradient accumulation over tasks, or CBB's ranks), w is
the sum of the weights of the step's distinct datasets averaged over its micro-batches, the
bound a sum of per-task clipped gradients has.

``training.task_weighting: loss`` keeps the stock behaviour (clip after weighting).
Under DeepSpeed the engine clips inside its own step, so the stock behaviour applies there.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from transformers import TrainerCallback


def loss_weight(loss: nn.Module) -> float:
    """The task weight of a routed loss, looking through the Matryoshka and GradCache wrappers."""
    while not hasattr(loss, "weight") and hasattr(loss, "loss"):
        loss = cast("nn.Module", loss.loss)  # nn.Module types attributes as `Tensor | Module`; a wrapper's `loss` is a module
    return float(getattr(loss, "weight", 1.0))


class WeightedClipping(TrainerCallback):
    """Clips every optimizer step at ``max_grad_norm × the step's task weight`` (the trainer's own clipping is off).

    The trainer reports each micro-batch's step weight through ``add``; the callback clips in
    ``on_pre_optimizer_step`` (after the gradients are all-reduced, before the optimizer step).
    The logged ``grad_norm`` stays the norm before clipping, as in the stock trainer.
    """

    def __init__(self, max_grad_norm: float) -> None:
        self.max_grad_norm = max_grad_norm
        self._weights: list[float] = []
        self.last_bound: float | None = None

    def add(self, step_weight: float) -> None:
        self._weights.append(step_weight)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self._weights or model is None:
            return
        self.last_bound = self.max_grad_norm * sum(self._weights) / len(self._weights)
        self._weights.clear()
        parameters = [p for p in model.parameters() if p.grad is not None]
        # Plain torch clipping: the trainer already unscaled fp16 gradients when it measured their norm.
        torch.nn.utils.clip_grad_norm_(parameters, self.last_bound)
