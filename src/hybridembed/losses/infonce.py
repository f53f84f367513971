"""InfoNCE with in-batch and hard negatives (Piccolo2 retrieval loss), optionally bidirectional (Jina pairs stage)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridembed.distributed import active_group, gather_rows
from hybridembed.losses.forward import DEFAULT_CHUNK_ROWS, ChunkRows, embed_columns
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

    Inputs: columns ``query, positive, negative_1 … negative_k`` (k ≥ 0); labels: None, or the
    collator's dict of text ids (see ``CandidateIds``) — then empty negative slots of rows with
    fewer negatives are masked, and so is every candidate whose text equals the query's own
    positive (a false negative), in the batch and across ranks. Defaults: temperature 0.01, weight 1.0.

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
        chunk_rows: ChunkRows = DEFAULT_CHUNK_ROWS,
    ) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.weight = weight
        self.bidirectional = bidirectional
        self.in_batch_negatives = in_batch_negatives
        self.chunk_rows = chunk_rows

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Any = None) -> Tensor:
        embeddings = embed_columns(self.model, sentence_features, self.chunk_rows)
        return self.loss_from_embeddings(embeddings[0], embeddings[1], embeddings[2:], labels)

    def loss_from_columns(self, embeddings: list[Tensor], labels: Any = None) -> Tensor:
        """The loss from per-column embeddings (the entry point GradCache uses)."""
        return self.loss_from_embeddings(embeddings[0], embeddings[1], embeddings[2:], labels)

    def loss_from_embeddings(self, queries: Tensor, positives: Tensor, negatives: list[Tensor], labels: Any = None) -> Tensor:
        """queries, positives: (B, d); negatives: k tensors of (B, d), the j-th hard negative of every row.

        ``labels``: the collator's dict (``negative_counts``, text ids) or None (every slot is a
        real negative and nothing is masked).
        """
        queries = F.normalize(queries.float(), dim=-1)
        positives = F.normalize(positives.float(), dim=-1)
        negatives = [F.normalize(n.float(), dim=-1) for n in negatives]
        batch = queries.shape[0]
        ids = CandidateIds.from_labels(labels, batch, len(negatives))
        rows = torch.arange(batch, device=queries.device)
        if not self.in_batch_negatives:
            if self.bidirectional:
                raise ValueError("bidirectional InfoNCE needs in-batch negatives")
            own = torch.stack([positives, *negatives], dim=1)  # (B, 1 + k, d)
            logits = torch.einsum("bd,bkd->bk", queries, own) / self.temperature
            if ids is not None:
                logits = logits.masked_fill(ids.own_slot_ids.to(logits.device) == 0, float("-inf"))
            return self.weight * F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=queries.device))
        # Candidates of every rank that shares this step's batch (see hybridembed.distributed);
        # each query's target is its own positive, found at this rank's offset in the gathered rows.
        group = active_group()
        candidates, offset = gather_rows(torch.cat([positives, *negatives], dim=0), group)
        target = offset + rows
        scores = queries @ candidates.T / self.temperature
        if ids is not None:
            candidate_ids, _ = gather_rows(ids.candidate_ids.to(queries.device), group)
            scores = _mask_false_negatives(scores, candidate_ids, ids.positive_ids.to(queries.device), target)
        loss = F.cross_entropy(scores, target)
        if self.bidirectional:
            all_queries, query_offset = gather_rows(queries, group)
            backward_target = query_offset + rows
            backward = positives @ all_queries.T / self.temperature
            if ids is not None:
                query_ids, _ = gather_rows(ids.query_ids.to(queries.device), group)
                backward = _mask_false_negatives(backward, query_ids, ids.query_ids.to(queries.device), backward_target)
            loss = loss + F.cross_entropy(backward, backward_target)
        return self.weight * loss

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "weight": self.weight,
            "bidirectional": self.bidirectional,
            "in_batch_negatives": self.in_batch_negatives,
        }


@dataclass
class CandidateIds:
    """Text ids of a batch's candidates, from the collator's label dict (0 marks an empty negative slot).

    Rows may draw different numbers of hard negatives (a mined row can have none); the collator
    fills a row's empty slots with its own positive and records 0 for them here, and the loss
    masks them. The ids also find *false negatives*: a candidate whose text is the query's own
    positive (the same passage in another row, another rank's batch, or as another row's hard
    negative) is masked instead of being pushed away.
    """

    query_ids: Tensor  # (B,)
    positive_ids: Tensor  # (B,)
    negative_ids: Tensor  # (B, k); 0 = empty slot

    @classmethod
    def from_labels(cls, labels: Any, batch: int, width: int) -> CandidateIds | None:
        if not isinstance(labels, Mapping):
            return None
        negative_ids = labels["negative_ids"].reshape(batch, -1)
        if negative_ids.shape[1] != width:
            raise ValueError(f"labels describe {negative_ids.shape[1]} negative columns, the batch has {width}")
        return cls(labels["query_ids"].reshape(batch), labels["positive_ids"].reshape(batch), negative_ids)

    @property
    def candidate_ids(self) -> Tensor:
        """Ids in the order of the loss's candidate rows: all positives, then negative column 1, 2, …"""
        return torch.cat([self.positive_ids, self.negative_ids.T.reshape(-1)])

    @property
    def own_slot_ids(self) -> Tensor:
        """(B, 1 + k): each row's positive and its own negative slots."""
        return torch.cat([self.positive_ids[:, None], self.negative_ids], dim=1)


def _mask_false_negatives(scores: Tensor, candidate_ids: Tensor, own_ids: Tensor, target: Tensor) -> Tensor:
    """-inf for empty slots and for candidates equal to the row's own target text (except the target itself)."""
    mask = (candidate_ids == 0)[None, :] | (candidate_ids[None, :] == own_ids[:, None])
    mask[torch.arange(scores.shape[0], device=scores.device), target] = False
    return scores.masked_fill(mask, float("-inf"))
