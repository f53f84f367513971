"""GradCache for any hybridembed loss: large batches on small memory by embedding in mini-batches and caching gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from torch import Tensor, nn


class CachedLoss(CachedLossMixin, nn.Module):
    """Wrap a loss that has ``loss_from_columns(embeddings, labels)`` in sentence-transformers' GradCache machinery.

    sentence-transformers ships cached versions of a few of its own losses; this wrapper gives the
    same three-step GradCache (Gao et al., 2021, arXiv 2101.06983) to ours — InfoNCE with hard and
    cross-device negatives, label-contrastive, CoSENT, Pearson: (1) embed every column in
    mini-batches without a graph, (2) compute the full-batch loss on those embeddings and
    back-propagate to them, (3) re-embed each mini-batch with a graph, replaying its RNG state, and
    push the cached gradients through. Only one mini-batch of activations lives at a time, and the
    loss and gradients equal the uncached loss's. ``MatryoshkaLoss`` composes with it (it detects
    the gradient cache and truncates the cached embeddings instead of patching the forward).

    Example::

        loss = CachedLoss(InfoNCELoss(model), mini_batch_size=16)
    """

    def __init__(self, loss: nn.Module, mini_batch_size: int = 32) -> None:
        super().__init__()
        if not hasattr(loss, "loss_from_columns"):
            raise TypeError(f"{type(loss).__name__} has no loss_from_columns(); it cannot be cached")
        self.loss = loss
        self.model = loss.model
        self.mini_batch_size = mini_batch_size
        self.accepts = getattr(loss, "accepts", None)

    def calculate_loss(self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False) -> Tensor:
        embeddings = [torch.cat(minibatches, dim=0) for minibatches in reps]
        # nn.Module types its attributes as `Tensor | Module`; __init__ checked that the wrapped loss has this method.
        loss = cast("Callable[..., Tensor]", self.loss.loss_from_columns)(embeddings, labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        return self.forward_cached(sentence_features, labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {"loss": type(self.loss).__name__, "mini_batch_size": self.mini_batch_size, **cast("Callable[[], dict[str, Any]]", self.loss.get_config_dict)()}
