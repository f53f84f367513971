"""One forward pass for all columns of a batch: each distinct text once, rows sorted by length and chunked so padding stays small."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import _create_minibatch
from sentence_transformers.base.losses.merged_forward import merge_feature_batches
from torch import Tensor, nn

from hybridembed.precision import CPU_CHUNK_ROWS

# Rows per forward chunk. Small chunks of similar length cut padding; on CPUs the matmuls of
# 16–32 short rows are already efficient, so little is lost per call. None: one forward.
# (The recipe's `auto` picks this on a CPU and one forward on a GPU: hybridembed.precision.)
DEFAULT_CHUNK_ROWS = CPU_CHUNK_ROWS


def embed_columns(model: nn.Module, features_list: Iterable[dict[str, Any]], chunk_rows: int | None = DEFAULT_CHUNK_ROWS) -> list[Tensor]:
    """Embed every column of a batch; returns one (rows, dim) tensor per column.

    sentence-transformers' ``embed_columns`` runs the query column alone and merges the others,
    each padded to the widest row. Ours merges *all* columns, embeds each distinct text once (a
    label-contrastive batch repeats the same few label texts hundreds of times; the gradient of a
    shared embedding is the sum over its uses, exactly as if embedded per use), sorts the rows by
    length, embeds them in chunks of ``chunk_rows`` trimmed to their own longest row, and restores
    the order — the same embeddings and gradients with far fewer tokens through the model. Falls
    back to one forward per column when the columns cannot be merged (e.g. different feature keys).
    """
    features_list = list(features_list)
    merged = merge_feature_batches(features_list) if len(features_list) > 1 else dict(features_list[0])
    if merged is None or "attention_mask" not in merged:
        return [model(features)["sentence_embedding"] for features in features_list]
    rows = merged["attention_mask"].shape[0]
    representatives, inverse = _distinct_rows(merged)
    if representatives is not None:
        merged = {k: v[representatives] if _is_row_tensor(v, rows) else v for k, v in merged.items()}
    embeddings = _embed_sorted(model, merged, chunk_rows)
    if inverse is not None:
        embeddings = embeddings[inverse]
    sizes = [features["attention_mask"].shape[0] for features in features_list]
    return list(torch.split(embeddings, sizes, dim=0))


def _distinct_rows(features: dict[str, Any]) -> tuple[Tensor | None, Tensor | None]:
    """(index of the first occurrence of each distinct row, row → its distinct row), or (None, None) if all differ."""
    if "input_ids" not in features:
        return None, None
    key = torch.cat([features["input_ids"], features["attention_mask"]], dim=1)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    rows = key.shape[0]
    if distinct.shape[0] == rows:
        return None, None
    # Index tensors live on the batch's device: a CPU index into CUDA rows fails (or syncs) on GPUs.
    first = torch.full((distinct.shape[0],), rows, dtype=torch.long, device=inverse.device)
    first.scatter_reduce_(0, inverse, torch.arange(rows, device=inverse.device), reduce="amin")
    return first, inverse


def _embed_sorted(model: nn.Module, features: dict[str, Any], chunk_rows: int | None) -> Tensor:
    """Embed rows in length order, `chunk_rows` at a time, each chunk trimmed to its longest row; original order out."""
    rows = features["attention_mask"].shape[0]
    if chunk_rows is None or chunk_rows >= rows:
        return model(_create_minibatch(features, 0, rows))["sentence_embedding"]
    order = torch.argsort(features["attention_mask"].sum(dim=1), stable=True)
    by_length = {k: v[order] if _is_row_tensor(v, rows) else v for k, v in features.items()}
    chunks = [model(_create_minibatch(by_length, b, min(b + chunk_rows, rows)))["sentence_embedding"] for b in range(0, rows, chunk_rows)]
    sorted_embeddings = torch.cat(chunks, dim=0)
    embeddings = torch.empty_like(sorted_embeddings)
    embeddings[order] = sorted_embeddings
    return embeddings


def _is_row_tensor(value: Any, rows: int) -> bool:
    return isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == rows
