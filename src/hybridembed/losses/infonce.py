"""InfoNCE with in-batch and hard negatives (Piccolo2 retrieval loss), optionally bidirectional (Jina pairs stage)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridembed.distributed import active_group, gather_rows
from hybridembed.losses.forward import DEFAULT_CHUNK_ROWS, embed_columns
from hybridembed.tasks import RowShape


class InfoNCELoss(nn.Module):
    """Contrastive loss over (query, positive, negative_1..k) columns.

    Each query is scored (cosine / temperature) against the positives *and* the hard negatives of
    every row in the batch — Piccolo2's retrieval loss, which uses the query–passage and
    query–negative pairs of the whole batch — and cross-entropy picks its own positive.
    With ``bidirectional=True`` a passage→query term over the in-batch queries is added, as in the
    pair-training stage of Jina's bilingual embeddings (arXiv 2402.17016).

    What it adds over sentence-transformers' ``MultipleNegativesRankingLoss``: the temperature and
    a loss ``weight`` are recipe parameters, the scope of negatives can be restricted to the row's
    own candidates (``in_batch_negatives=False``, used by label-contrastive training), and in
    multi-process runs the positives and hard negatives of every rank sharing the step are
    gathered with exact gradients (``hybridembed.distributed``), with each query's target offset
    to its own rank's block — hard negatives included.

    Papers: Piccolo2 (arXiv 2405.06932); van den Oord et al., CPC (arXiv 1807.03748).

    Inputs: columns ``query, positive, negative_1 … negative_k`` (k ≥ 0, same k for the batch);
    labels are ignored. Defaults: temperature 0.01, weight 1.0.

    Example::

        loss = InfoNCELoss(model, temperature=0.01)
        value = loss([query_features, positive_features, negative_features], labels=None)
    """

    accepts = RowShape.TRIPLET

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.01,
        weight: float = 1.0,
        bidirectional: bool = False,
        in_batch_negatives: bool = True,
        chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    ) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.weight = weight
        self.bidirectional = bidirectional
        self.in_batch_negatives = in_batch_negatives
        self.chunk_rows = chunk_rows

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        embeddings = embed_columns(self.model, sentence_features, self.chunk_rows)
        return self.loss_from_embeddings(embeddings[0], embeddings[1], embeddings[2:])

    def loss_from_columns(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """The loss from per-column embeddings (the entry point GradCache uses)."""
        return self.loss_from_embeddings(embeddings[0], embeddings[1], embeddings[2:])

    def loss_from_embeddings(self, queries: Tensor, positives: Tensor, negatives: list[Tensor]) -> Tensor:
        """queries, positives: (B, d); negatives: k tensors of (B, d), the j-th hard negative of every row."""
        queries = F.normalize(queries.float(), dim=-1)
        positives = F.normalize(positives.float(), dim=-1)
        negatives = [F.normalize(n.float(), dim=-1) for n in negatives]
        batch = queries.shape[0]
        if not self.in_batch_negatives:
            if self.bidirectional:
                raise ValueError("bidirectional InfoNCE needs in-batch negatives")
            own = torch.stack([positives, *negatives], dim=1)  # (B, 1 + k, d)
            logits = torch.einsum("bd,bkd->bk", queries, own) / self.temperature
            return self.weight * F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=queries.device))
        # Candidates of every rank that shares this step's batch (see hybridembed.distributed);
        # each query's target is its own positive, found at this rank's offset in the gathered rows.
        group = active_group()
        candidates, offset = gather_rows(torch.cat([positives, *negatives], dim=0), group)
        target = offset + torch.arange(batch, device=queries.device)
        loss = F.cross_entropy(queries @ candidates.T / self.temperature, target)
        if self.bidirectional:
            all_queries, query_offset = gather_rows(queries, group)
            backward_target = query_offset + torch.arange(batch, device=queries.device)
            loss = loss + F.cross_entropy(positives @ all_queries.T / self.temperature, backward_target)
        return self.weight * loss

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "weight": self.weight,
            "bidirectional": self.bidirectional,
            "in_batch_negatives": self.in_batch_negatives,
        }
