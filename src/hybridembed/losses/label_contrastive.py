"""Label-contrastive InfoNCE without in-batch negatives, for classification and clustering (Piccolo2)."""

from __future__ import annotations

from torch import nn

from hybridembed.losses.forward import DEFAULT_CHUNK_ROWS, ChunkRows
from hybridembed.losses.infonce import InfoNCELoss


class LabelContrastiveLoss(InfoNCELoss):
    """InfoNCE where each text competes only against its own label and up to K other labels.

    Classification/clustering rows are (text, label): the label's text is the positive and other
    labels of the dataset are the negatives. Other rows of the batch are *not* negatives: two texts
    of the same class often share a batch, and treating one's label as the other's negative would
    be a false negative. This is Piccolo2's ``cls_contrast`` objective.

    Paper: Piccolo2 (arXiv 2405.06932), "label-contrastive" loss for classification/clustering.

    Inputs: columns ``text, label_text, other_label_1 … other_label_k``; labels: None or the
    collator's dict (a row with fewer other labels than k has its empty slots masked).
    Defaults: temperature 0.05 (Piccolo2's public code), weight 1.0 (Piccolo2's 0.2 is the `piccolo2`
    loss preset), up to 10 negative labels
    (the number of negatives is set by the dataset's ``num_negatives``).

    Example::

        loss = LabelContrastiveLoss(model)
        value = loss([text_features, label_features, *other_label_features], labels=None)
    """

    def __init__(self, model: nn.Module, temperature: float = 0.05, weight: float = 1.0, chunk_rows: ChunkRows = DEFAULT_CHUNK_ROWS) -> None:
        super().__init__(model, temperature, weight, bidirectional=False, in_batch_negatives=False, chunk_rows=chunk_rows)

    def get_config_dict(self) -> dict[str, float]:
        return {"temperature": self.temperature, "weight": self.weight}
