"""Packed (unpadded) training forwards for encoder backbones: a chunk's rows run as one sequence of their real tokens.

sentence-transformers pads every row of a forward to the longest one; hybridembed's length-sorted
chunks (`training.forward_chunk_rows`) shrink that padding, and packing removes it. With
`training.packing: true` the `Transformer` module of the model, while it trains, concatenates the
non-padding tokens of its rows into one sequence, gives each row its own position ids (restarting
at the backbone's first position) and keeps rows from attending to each other:

* `flash_attention_2` / `flash_attention_3` backbones (`model.attn_implementation`) get transformers'
  varlen arguments (`cu_seq_lens_q/k`, `max_length_q/k`) and no mask, so attention runs over each
  row's own tokens only — FLOPs and memory proportional to the real tokens (the GPU path);
* `sdpa` backbones (and lane dropout's attention, hybridembed.modeling.dropout) get the same varlen
  arguments, and an attention function (`bucketed_attention`) that gathers the rows' queries, keys
  and values into buckets of rows of similar length, each padded to its longest row with a key
  mask, runs the dense attention per bucket and scatters the real tokens back: the linear layers,
  LayerNorms and GELUs (most of the FLOPs) see only real tokens, in one forward, and attention pays
  a bucket's padding only (the CPU path; buckets are cut by hybridembed.padding_cuts);
* `eager` gets rows packed in order into bins of at most `BIN_TOKENS` tokens (or the longest row)
  with a block-diagonal additive mask per bin: the same result, but attention covers (bin length)²
  per bin instead of Σ(row tokens)², so it is for checking correctness, not speed
  (docs/performance.md has the measurement).

The per-token outputs are scattered back to the padded (rows, length, hidden) layout before the
pooling module, so every sentence-transformers module after the encoder (pooling of any kind, Dense,
Normalize, Matryoshka's truncation, GradCache) sees exactly what it sees without packing. In eval
mode (`encode`, evaluation, mining) the stock padded forward runs. Nothing is saved: the folder is
the same sentence-transformers folder with or without packing.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from hybridembed.errors import RecipeError
from hybridembed.padding_cuts import cheapest_cuts

# model_type → first position id. BERT-style models count from 0; RoBERTa-style ones from padding_idx + 1
# (their embeddings derive position ids from input_ids when none are given, which packing must reproduce).
# Only the families tests/test_packing.py checks against the padded forward.
FIRST_POSITION: dict[str, str | int] = {"bert": 0, "roberta": "padding_idx+1", "xlm-roberta": "padding_idx+1"}
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")
# Tokens per bin of the masked path: bounds its (bin length)² attention mask and scores.
BIN_TOKENS = 512
# The attention function packed sdpa backbones get (bucketed_attention over transformers' sdpa).
PACKED_SDPA = "hybridembed_packed_sdpa"
# What one more attention bucket costs beyond its scores, in scores per head: a bucket adds ~10
# operator calls (gathers, two matmuls, softmax, the scatter) forward and backward, about the work
# of one 128-token row's attention for a small encoder on a CPU.
BUCKET_COST_SCORES = 128 * 128
PACKED_MARK = "_hybridembed_packs_rows"  # set on a Transformer module by enable_packing
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "position_ids")


def first_position(config: Any) -> int:
    """The position id of a row's first token for this backbone config."""
    rule = FIRST_POSITION[config.model_type]
    return int(config.pad_token_id) + 1 if rule == "padding_idx+1" else int(rule)


def enable_packing(model: Any) -> None:
    """Make the model's `Transformer` module (model[0]) run packed forwards while training; checks the backbone first."""
    transformer = model[0]
    backbone = getattr(transformer, "auto_model", None)
    config = getattr(backbone, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FIRST_POSITION:
        raise RecipeError(
            f"training.packing: backbone type {model_type!r} is not supported (supported: {', '.join(sorted(FIRST_POSITION))}); set training.packing: false"
        )
    if getattr(config, "is_decoder", False):
        raise RecipeError("training.packing: the backbone is configured as a decoder (causal attention); packing supports encoders")
    if getattr(config, "_attn_implementation", None) == "sdpa":
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import sdpa_mask

        AttentionInterface.register(PACKED_SDPA, bucketed_attention(sdpa_attention_forward))
        AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)  # eval runs padded, with sdpa's padding mask
        transformer.auto_model.set_attn_implementation(PACKED_SDPA)
    padded_forward = transformer.forward
    setattr(transformer, PACKED_MARK, True)
    transformer.forward = MethodType(lambda self, features, **kwargs: packed_forward(self, features, padded_forward, **kwargs), transformer)


def packs_rows(transformer: Any) -> bool:
    """Whether `enable_packing` made this Transformer module run packed forwards while it trains."""
    return bool(getattr(transformer, PACKED_MARK, False))


def packed_forward(transformer: Any, features: dict[str, Any], padded_forward: Any, **kwargs: Any) -> dict[str, Any]:
    """The Transformer module's forward with its rows packed (training mode); the stock forward otherwise."""
    mask = features.get("attention_mask")
    if not transformer.training or mask is None or "input_ids" not in features or kwargs or features.get("modality", "text") != "text":
        return padded_forward(features, **kwargs)
    backbone = transformer.auto_model
    keep = mask.bool()
    rows, length = mask.shape
    lengths = keep.sum(dim=1)
    # Index tensors on the batch's device (a CPU index into CUDA rows fails or syncs).
    row_of_token = torch.arange(rows, device=mask.device).unsqueeze(1).expand(rows, length)[keep]
    position_in_row = (mask.long().cumsum(dim=1) - 1)[keep]
    token_columns = {"input_ids": features["input_ids"][keep], "position_ids": position_in_row + first_position(backbone.config)}
    if features.get("token_type_ids") is not None:
        token_columns["token_type_ids"] = features["token_type_ids"][keep]
    if backbone.config._attn_implementation in VARLEN_ATTENTION or runs_packed_rows(backbone.config._attn_implementation):
        # One sequence of every real token; the kernel keeps each row to itself (cu_seq_lens).
        cumulative = torch.zeros(rows + 1, dtype=torch.int32, device=mask.device)
        cumulative[1:] = lengths.cumsum(dim=0)
        longest = int(lengths.max())
        inputs = {k: v.unsqueeze(0) for k, v in token_columns.items()}
        inputs |= {"cu_seq_lens_q": cumulative, "cu_seq_lens_k": cumulative, "max_length_q": longest, "max_length_k": longest}
        hidden = backbone(**inputs, return_dict=True).last_hidden_state[0]
    else:
        hidden = _masked_bins_forward(backbone, token_columns, row_of_token, position_in_row, lengths)
    token_embeddings = hidden.new_zeros(rows, length, hidden.shape[-1])
    token_embeddings[keep] = hidden
    features[transformer.module_output_name] = token_embeddings
    return features


def runs_packed_rows(attention_name: str) -> bool:
    """Whether transformers' attention function of that name is a `bucketed_attention` (takes one packed sequence)."""
    from transformers import AttentionInterface

    return getattr(AttentionInterface().get(attention_name), "runs_packed_rows", False)


def bucketed_attention(attention: Callable[..., tuple[Tensor, Any]], heads_first: Callable[..., Tensor] | None = None) -> Callable[..., tuple[Tensor, Any]]:
    """An attention function that runs packed inputs (one sequence, `cu_seq_lens_q`) per bucket of rows; others go to `attention`.

    `attention` takes transformers' attention arguments (module, query, key, value, mask, dropout,
    scaling) on (batch, heads, length, head_dim) and returns (batch, length, heads, head_dim);
    `heads_first`, when given, takes the same and returns (batch, heads, length, head_dim), which
    saves the buckets a transpose copy. A bucket's rows are padded to its longest; padded slots
    repeat a real token and are masked as keys and dropped as queries, so every real token gets
    exactly its own row's attention.

    Every bucket's inputs come from one gather per input (`_RowGather`) of (token, head) rows, in
    the contiguous (rows, heads, width, head_dim) layout of each bucket, so its matmuls copy nothing;
    the real slots come back in one more gather. Each gather's backward is a gather too, where
    autograd's `index_select` backward is `index_add_`, a serial loop on a CPU (and per-bucket
    advanced indexing, the first version, back-propagated through an element-by-element
    `index_put_`: 5% of a packed MiniLM step).
    """

    def run(module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, dropout: float = 0.0,
            scaling: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:  # fmt: skip
        cumulative = kwargs.get("cu_seq_lens_q")
        if cumulative is None or query.shape[0] != 1:
            return attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        rest = {k: v for k, v in kwargs.items() if k not in VARLEN_KEYS}
        plan = _buckets(cumulative)
        bucketed = []
        for x in (query, key, value):  # (1, heads, tokens, head_dim) → per bucket (rows, heads, width, head_dim)
            heads, tokens, head_dim = x.shape[1:]
            slot_rows = plan.rows(heads)
            gathered = _RowGather.apply(x[0].transpose(0, 1).reshape(tokens * heads, head_dim), slot_rows.sources, slot_rows.homes, False)
            bucketed.append([part.view(n, heads, width, head_dim) for part, (n, width, _) in zip(gathered.split(slot_rows.sizes), plan.buckets)])
        parts = []
        for q_b, k_b, v_b, (_, _, keys) in zip(*bucketed, plan.buckets):
            if heads_first is not None:
                attended = heads_first(module, q_b, k_b, v_b, keys, dropout=dropout, scaling=scaling, **rest)
            else:
                attended = attention(module, q_b, k_b, v_b, keys, dropout=dropout, scaling=scaling, **rest)[0].transpose(1, 2)
            parts.append(attended.reshape(-1, attended.shape[-1]))  # (rows × heads × width, head_dim)
        heads, tokens = query.shape[1:3]
        slot_rows = plan.rows(heads)
        # the real slots in (token, head) order: (1, tokens, heads, head_dim), as transformers' attention functions return
        return _RowGather.apply(torch.cat(parts), slot_rows.homes, slot_rows.owners, True).view(1, tokens, heads, -1), None

    run.runs_packed_rows = True  # type: ignore[attr-defined]
    return run


class _RowGather(torch.autograd.Function):
    """`source.index_select(0, rows)` whose backward is a gather as well: the gradient of source row i is that of output row `back[i]`.

    For the bucket gathers that is the whole gradient: each (token, head) row of the packed sequence
    appears once in a real slot and otherwise only in padded slots, whose gradient is zero (masked as
    keys, so their probabilities are 0; dropped as queries, so no gradient reaches them). With
    `zero_row`, `back` may name one row past the gradient's end: a source row that no output row
    holds (the padded slots, for the gather of the real ones), whose gradient is zero.
    """

    @staticmethod
    def forward(ctx, source: Tensor, rows: Tensor, back: Tensor, zero_row: bool) -> Tensor:
        ctx.save_for_backward(back)
        ctx.zero_row = zero_row
        return source.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (back,) = ctx.saved_tensors
        if ctx.zero_row:
            grad = torch.cat([grad, grad.new_zeros(1, *grad.shape[1:])])
        return grad.index_select(0, back), None, None, None


class SlotRows(NamedTuple):
    """The (token, head) rows of a bucket plan for one head count: packed tokens × heads of head_dim each."""

    sources: Tensor  # (Σ rows × heads × width,) per slot row, bucket after bucket in (row, head, position) order: token × heads + head
    homes: Tensor  # (tokens × heads,) per (token, head): the slot row of its real slot
    owners: Tensor  # (Σ rows × heads × width,) per slot row: token × heads + head for a real slot, tokens × heads for a padded one
    sizes: list[int]  # slot rows per bucket


class BucketPlan(NamedTuple):
    """Where the tokens of one packed forward go for attention per bucket."""

    buckets: list[tuple[int, int, Tensor]]  # per bucket: rows, width, key mask (rows, 1, 1, width)
    tokens: list[np.ndarray]  # per bucket (rows, width): the packed token in each slot; padded slots repeat the row's first
    real: list[np.ndarray]  # per bucket (rows, width): whether the slot holds a real token
    device: torch.device
    by_heads: dict[int, SlotRows]  # `rows(heads)`, filled on first use

    def rows(self, heads: int) -> SlotRows:
        """The slot rows for a tensor of `heads` heads (queries and grouped keys/values may differ)."""
        if heads not in self.by_heads:
            self.by_heads[heads] = _slot_rows(self, heads)
        return self.by_heads[heads]


def _slot_rows(plan: BucketPlan, heads: int) -> SlotRows:
    """`plan`'s slots as rows of a (tokens × heads, head_dim) view of a packed (tokens, heads, head_dim) tensor."""
    tokens = sum(int(real.sum()) for real in plan.real)
    sources, owners, sizes, homes, offset = [], [], [], np.empty(tokens * heads, dtype=np.int64), 0
    for slots, real in zip(plan.tokens, plan.real):
        head = np.arange(heads)[None, :, None]
        source = slots[:, None, :] * heads + head  # (rows, heads, width)
        is_real = np.broadcast_to(real[:, None, :], source.shape)
        homes[source[is_real]] = offset + np.flatnonzero(is_real)
        sources.append(source.reshape(-1))
        owners.append(np.where(is_real, source, tokens * heads).reshape(-1))
        sizes.append(source.size)
        offset += source.size
    as_tensor = lambda parts: torch.as_tensor(np.concatenate(parts), device=plan.device)  # noqa: E731
    return SlotRows(as_tensor(sources), torch.as_tensor(homes, device=plan.device), as_tensor(owners), sizes)


class _BucketPlans:
    """The bucket plan of one packed forward, computed once from its `cu_seq_lens_q` and kept on that tensor for every layer."""

    ATTRIBUTE = "_hybridembed_buckets"

    def __call__(self, cumulative: Tensor) -> BucketPlan:
        cached = getattr(cumulative, self.ATTRIBUTE, None)
        if cached is None:
            cached = _plan_buckets(cumulative)
            setattr(cumulative, self.ATTRIBUTE, cached)
        return cached


_buckets = _BucketPlans()


def _plan_buckets(cumulative: Tensor) -> BucketPlan:
    """The buckets of the rows whose packed boundaries are `cumulative`.

    Rows sorted by length are cut where a bucket's padded scores, (rows × width²), plus
    BUCKET_COST_SCORES per bucket are least.
    """
    device = cumulative.device
    starts = np.asarray(cumulative[:-1].tolist())
    lengths = np.diff(cumulative.tolist())
    by_length = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[by_length].astype(np.float64)
    ends = cheapest_cuts(sorted_lengths**2, len(sorted_lengths), BUCKET_COST_SCORES)
    buckets, tokens, reals = [], [], []
    for begin, end in zip([0, *ends[:-1]], ends):
        rows = by_length[begin:end]
        width = int(lengths[rows].max())
        positions = np.arange(width)
        real = positions[None, :] < lengths[rows][:, None]
        tokens.append(starts[rows][:, None] + np.where(real, positions[None, :], 0))  # padded slots repeat the row's first token
        reals.append(real)
        buckets.append((len(rows), width, torch.as_tensor(real, device=device)[:, None, None, :]))
    return BucketPlan(buckets, tokens, reals, device, {})


def _masked_bins_forward(backbone: Any, columns: dict[str, Tensor], row_of_token: Tensor, position_in_row: Tensor, lengths: Tensor) -> Tensor:
    """Rows packed in order into bins of at most `max(BIN_TOKENS, longest row)` tokens, one block-diagonal mask per bin.

    A mask costs (bin length)² per bin, so bins bound it (one sequence of 32 × 256 tokens would hold
    a 8192² score matrix per head and layer). Empty slots at a bin's end attend only to themselves:
    a fully masked row would give NaN scores whose gradient reaches the weights.
    """
    sizes = lengths.tolist()
    capacity = max(BIN_TOKENS, max(sizes))
    bin_of_row: list[int] = []
    offset_of_row: list[int] = []
    bins, used = 1, 0
    for size in sizes:
        if used + size > capacity:
            bins, used = bins + 1, 0
        bin_of_row.append(bins - 1)
        offset_of_row.append(used)
        used += size
    bin_length = capacity if bins > 1 else used
    device = row_of_token.device
    token_bin = torch.tensor(bin_of_row, device=device)[row_of_token]
    token_slot = torch.tensor(offset_of_row, device=device)[row_of_token] + position_in_row
    inputs = {}
    for name, values in columns.items():
        packed = values.new_zeros(bins, bin_length)
        packed[token_bin, token_slot] = values
        inputs[name] = packed
    segment = torch.full((bins, bin_length), -1, dtype=torch.long, device=device)
    segment[token_bin, token_slot] = row_of_token
    same_row = (segment.unsqueeze(2) == segment.unsqueeze(1)) & (segment.unsqueeze(2) >= 0)
    same_row |= torch.eye(bin_length, dtype=torch.bool, device=device)
    # additive: eager attention adds the mask to the scores (a boolean one would be added as 0/1)
    blocked = torch.zeros(same_row.shape, dtype=backbone.dtype, device=device).masked_fill_(~same_row, torch.finfo(backbone.dtype).min)
    hidden = backbone(**inputs, attention_mask=blocked.unsqueeze(1), return_dict=True).last_hidden_state
    return hidden[token_bin, token_slot]
