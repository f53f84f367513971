"""One forward pass for all columns of a batch, with rows sorted by length and chunked so padding stays small."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import _create_minibatch
from sentence_transformers.base.losses.merged_forward import merge_feature_batches
from torch import Tensor, nn

# Rows per forward chunk. Small chunks of similar length cut padding; on CPUs the matmuls of
# 16–32 short rows are already efficient, so little is lost per call. None: one forward.
DEFAULT_CHUNK_ROWS = 32


def embed_columns(model: nn.Module, features_list: Iterable[dict[str, Any]], chunk_rows: int | None = DEFAULT_CHUNK_ROWS) -> list[Tensor]:
    """Embed every column of a batch; returns one (rows, dim) tensor per column.

    sentence-transformers' ``embed_columns`` runs the query column alone and merges the others,
    each padded to the widest row. Ours merges *all* columns, sorts the rows by length, embeds
    them in chunks of ``chunk_rows`` trimmed to their own longest row, and restores the order —
    the same embeddings and gradients with far fewer padding tokens when lengths vary (queries
    vs passages, short vs long sentences). Falls back to one forward per column when the columns
    cannot be merged (e.g. different feature keys).
    """
    features_list = list(features_list)
    merged = merge_feature_batches(features_list) if len(features_list) > 1 else dict(features_list[0])
    if merged is None or "attention_mask" not in merged:
        return [model(features)["sentence_embedding"] for features in features_list]
    rows = merged["attention_mask"].shape[0]
    if chunk_rows is None or chunk_rows >= rows:
        embeddings = model(_create_minibatch(merged, 0, rows))["sentence_embedding"]
    else:
        order = torch.argsort(merged["attention_mask"].sum(dim=1), stable=True)
        by_length = {k: v[order] if _is_row_tensor(v, rows) else v for k, v in merged.items()}
        chunks = [model(_create_minibatch(by_length, b, min(b + chunk_rows, rows)))["sentence_embedding"] for b in range(0, rows, chunk_rows)]
        sorted_embeddings = torch.cat(chunks, dim=0)
        embeddings = torch.empty_like(sorted_embeddings)
        embeddings[order] = sorted_embeddings
    sizes = [features["attention_mask"].shape[0] for features in features_list]
    return list(torch.split(embeddings, sizes, dim=0))


def _is_row_tensor(value: Any, rows: int) -> bool:
    return isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == rows
