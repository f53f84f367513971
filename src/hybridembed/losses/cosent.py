"""CoSENT ranking loss for STS and pair classification, parametrised by temperature and task weight."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sentence_transformers.sentence_transformer.losses import CoSENTLoss as _STCoSENTLoss
from torch import Tensor, nn

from hybridembed.losses.forward import DEFAULT_CHUNK_ROWS, ChunkRows, embed_columns
from hybridembed.tasks import RowShape


class CoSENTLoss(_STCoSENTLoss):
    """CoSENT: for every two pairs whose gold scores are ordered, penalise the reversed cosine order.

    loss = log(1 + Σ_{s_i > s_j} exp((cos_j − cos_i) / τ)). The computation is sentence-transformers'
    ``CoSENTLoss`` (scale = 1/τ); ours expresses it with Piccolo2's temperature and adds the task
    ``weight`` that balances it against the other task losses in hybrid training.

    Papers: CoSENT (Su, 2022; Huang et al., IEEE TASLP 2024); weights from Piccolo2 (arXiv 2405.06932).

    Inputs: columns ``text1, text2`` and a float score label per pair (any scale: only the order
    matters; 0/1 labels for pair classification). Defaults: temperature 0.05 (Piccolo2), weight 1.0
    (Piccolo2's 0.04 is the `piccolo2` loss preset, see ``LOSS_WEIGHT_PRESETS``).

    Example::

        loss = CoSENTLoss(model)  # τ = 0.05, weight = 1.0
        value = loss([text1_features, text2_features], scores)
    """

    accepts = RowShape.SCORED_PAIR

    def __init__(self, model: nn.Module, temperature: float = 0.05, weight: float = 1.0, chunk_rows: ChunkRows = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__(model, scale=1.0 / temperature)  # type: ignore[arg-type]  # typed SentenceTransformer; it only stores the model
        self.temperature = temperature
        self.weight = weight
        self.chunk_rows = chunk_rows

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        return self.loss_from_columns(embed_columns(self.model, sentence_features, self.chunk_rows), labels)

    def loss_from_columns(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        """The loss from per-column embeddings (the entry point GradCache uses)."""
        return self.weight * self.compute_loss_from_embeddings(embeddings, labels.float())

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "weight": self.weight}
