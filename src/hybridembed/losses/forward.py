"""One forward pass for all columns of a batch: each distinct text once, rows sorted by length and chunked so padding stays small."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sentence_transformers.base.losses.gradcache import _create_minibatch
from sentence_transformers.base.losses.merged_forward import merge_feature_batches
from torch import Tensor, nn

from hybridembed.padding_cuts import cheapest_cuts
from hybridembed.precision import CPU_CHUNK_COST_TOKENS, CPU_CHUNK_ROWS


@dataclass(frozen=True)
class ChunkPlan:
    """How a batch's length-sorted rows are cut into forward chunks: at most `max_rows` rows each.

    With `chunk_cost_tokens` set, the cuts minimise the cost of the chunks: the tokens each computes
    (its rows × its width, padding included, each token weighted by its share of attention,
    1 + width / (6 × hidden)) plus `chunk_cost_tokens` per chunk — what one more forward and
    backward costs beyond its tokens (module calls, smaller matmuls, one more word-embedding
    gradient), in tokens. Fixed chunks of `max_rows` leave the longest rows of a batch with the
    shortest ones of their chunk: on the quickstart data 38% of the tokens computed were padding
    (docs/performance.md). None: fixed chunks of `max_rows` rows in length order.
    """

    max_rows: int
    chunk_cost_tokens: int | None = CPU_CHUNK_COST_TOKENS

    def ends(self, widths: Sequence[int], hidden: int | None = None) -> list[int]:
        """The end (exclusive) of each chunk over rows in length order; `widths`: each row's padded extent."""
        rows = len(widths)
        if self.chunk_cost_tokens is None or rows <= 1:
            return [*range(self.max_rows, rows, self.max_rows), rows]
        width = np.asarray(widths, dtype=np.float64)
        return cheapest_cuts(width * (1.0 + width / (6.0 * hidden)) if hidden else width, self.max_rows, self.chunk_cost_tokens)


# Rows per forward chunk, or a ChunkPlan; None: one forward. Chunks of similar length cut padding;
# on CPUs the matmuls of 16–32 short rows are already efficient, so little is lost per call. (The
# recipe's `auto` picks chunks on a CPU and one forward on a GPU: hybridembed.precision.)
ChunkRows = int | ChunkPlan | None
DEFAULT_CHUNK_ROWS: ChunkRows = ChunkPlan(CPU_CHUNK_ROWS)


def embed_columns(model: nn.Module, features_list: Iterable[dict[str, Any]], chunk_rows: ChunkRows = DEFAULT_CHUNK_ROWS) -> list[Tensor]:
    """Embed every column of a batch; returns one (rows, dim) tensor per column.

    sentence-transformers' ``embed_columns`` runs the query column alone and merges the others,
    each padded to the widest row. Ours merges *all* columns, embeds each distinct text once (a
    label-contrastive batch repeats the same few label texts hundreds of times; the gradient of a
    shared embedding is the sum over its uses, exactly as if embedded per use), sorts the rows by
    length, embeds them in chunks trimmed to their own longest row — at most ``chunk_rows`` rows each,
    cut where a `ChunkPlan` says (an int: a plan with that many rows at most and the default chunk
    cost) — and restores the order: the same embeddings and gradients with far fewer tokens through the model. Falls
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


def _embed_sorted(model: nn.Module, features: dict[str, Any], chunk_rows: ChunkRows) -> Tensor:
    """Embed rows in length order in the chunks `chunk_rows` plans, each chunk trimmed to its longest row; original order out."""
    rows = features["attention_mask"].shape[0]
    plan = ChunkPlan(chunk_rows) if isinstance(chunk_rows, int) else chunk_rows
    if plan is None or (plan.max_rows >= rows and plan.chunk_cost_tokens is None):
        return model(_create_minibatch(features, 0, rows))["sentence_embedding"]
    mask = features["attention_mask"]
    order = torch.argsort(mask.sum(dim=1), stable=True)
    by_length = {k: v[order] if _is_row_tensor(v, rows) else v for k, v in features.items()}
    # a chunk is as wide as its rows' last real token (left padding keeps every row at full width)
    columns = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    widths = (by_length["attention_mask"].bool() * columns).amax(dim=1).tolist()
    ends = plan.ends(widths, _hidden_size(model))
    if len(ends) == 1:
        return model(_create_minibatch(features, 0, rows))["sentence_embedding"]
    chunks = [model(_create_minibatch(by_length, b, e))["sentence_embedding"] for b, e in zip([0, *ends[:-1]], ends)]
    sorted_embeddings = torch.cat(chunks, dim=0)
    embeddings = torch.empty_like(sorted_embeddings)
    embeddings[order] = sorted_embeddings
    return embeddings


def _hidden_size(model: nn.Module) -> int | None:
    """The backbone's hidden size, for the attention share of a token's cost (None when the model does not say)."""
    backbone = getattr(next(iter(model.children()), None), "auto_model", None)
    return getattr(getattr(backbone, "config", None), "hidden_size", None)


def _is_row_tensor(value: Any, rows: int) -> bool:
    return isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == rows
