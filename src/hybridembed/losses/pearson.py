"""Pearson-correlation STS loss from Jina's bilingual embeddings: 1 − corr(cosine, gold score) over the batch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridembed.losses.forward import DEFAULT_CHUNK_ROWS, ChunkRows, embed_columns
from hybridembed.tasks import RowShape


class PearsonLoss(nn.Module):
    """Negative Pearson correlation between predicted cosine similarities and gold scores.

    Jina's bilingual embeddings (arXiv 2402.17016) train STS with this loss in the multi-task
    stage: it is invariant to the scale and offset of the gold scores, so data annotated on
    different scales (0–5, 0–1, binary) can share it, and it rewards the batch's whole ordering at
    once. We minimise ``1 − r`` (same gradient as ``−r``; 0 at perfect correlation). Batches need at
    least two distinct gold scores; a batch where all gold scores are equal carries no
    correlation signal and contributes zero loss.

    Inputs: columns ``text1, text2`` and a float score per pair. Defaults: weight 1.0.

    Example::

        loss = PearsonLoss(model)
        value = loss([text1_features, text2_features], scores)
    """

    accepts = RowShape.SCORED_PAIR

    def __init__(self, model: nn.Module, weight: float = 1.0, temperature: float | None = None, chunk_rows: ChunkRows = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__()
        if temperature is not None:
            raise ValueError("the Pearson loss has no temperature (it is invariant to score scale)")
        self.model = model
        self.weight = weight
        self.chunk_rows = chunk_rows

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        text1, text2 = embed_columns(self.model, sentence_features, self.chunk_rows)
        return self.loss_from_embeddings(text1, text2, labels)

    def loss_from_columns(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        """The loss from per-column embeddings (the entry point GradCache uses)."""
        return self.loss_from_embeddings(embeddings[0], embeddings[1], labels)

    def loss_from_embeddings(self, text1: Tensor, text2: Tensor, scores: Tensor) -> Tensor:
        predicted = F.cosine_similarity(text1.float(), text2.float(), dim=-1)
        gold = scores.to(predicted.device, torch.float32).view(-1)
        predicted_centered = predicted - predicted.mean()
        gold_centered = gold - gold.mean()
        gold_norm = gold_centered.norm()
        if gold_norm < 1e-12:
            return predicted.sum() * 0.0
        correlation = (predicted_centered * gold_centered).sum() / (predicted_centered.norm() * gold_norm + 1e-12)
        return self.weight * (1.0 - correlation)

    def get_config_dict(self) -> dict[str, Any]:
        return {"weight": self.weight}
