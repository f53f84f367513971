"""Packed (unpadded) training forwards for encoder backbones: a chunk's rows run as one sequence of their real tokens.

sentence-transformers pads every row of a forward to the longest one; hybridembed's length-sorted
chunks (`training.forward_chunk_rows`) shrink that padding, and packing removes it. With
`training.packing: true` the `Transformer` module of the model, while it trains, concatenates the
non-padding tokens of its rows into one sequence, gives each row its own position ids (restarting
at the backbone's first position) and keeps rows from attending to each other:

* `flash_attention_2` / `flash_attention_3` backbones (`model.attn_implementation`) get transformers'
  varlen arguments (`cu_seq_lens_q/k`, `max_length_q/k`) and no mask, so attention runs over each
  row's own tokens only — FLOPs and memory proportional to the real tokens (the GPU path);
* `sdpa` and `eager` get rows packed in order into bins of at most `BIN_TOKENS` tokens (or the
  longest row) with a block-diagonal boolean mask per bin. The result is the same as the padded
  forward, but attention then covers (bin length)² per bin instead of Σ(row tokens)², so this path is
  for checking correctness anywhere and for backbones without a varlen kernel, not a speed-up on its
  own (docs/performance.md has the measurement).

The per-token outputs are scattered back to the padded (rows, length, hidden) layout before the
pooling module, so every sentence-transformers module after the encoder (pooling of any kind, Dense,
Normalize, Matryoshka's truncation, GradCache) sees exactly what it sees without packing. In eval
mode (`encode`, evaluation, mining) the stock padded forward runs. Nothing is saved: the folder is
the same sentence-transformers folder with or without packing.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
from torch import Tensor

from hybridembed.errors import RecipeError

# model_type → first position id. BERT-style models count from 0; RoBERTa-style ones from padding_idx + 1
# (their embeddings derive position ids from input_ids when none are given, which packing must reproduce).
# Only the families tests/test_packing.py checks against the padded forward.
FIRST_POSITION: dict[str, str | int] = {"bert": 0, "roberta": "padding_idx+1", "xlm-roberta": "padding_idx+1"}
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")
# Tokens per bin of the masked path: bounds its (bin length)² attention mask and scores.
BIN_TOKENS = 512


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
    padded_forward = transformer.forward
    transformer.forward = MethodType(lambda self, features, **kwargs: packed_forward(self, features, padded_forward, **kwargs), transformer)


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
    if backbone.config._attn_implementation in VARLEN_ATTENTION:
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
    hidden = backbone(**inputs, attention_mask=same_row.unsqueeze(1), return_dict=True).last_hidden_state
    return hidden[token_bin, token_slot]
