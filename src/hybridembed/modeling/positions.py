"""Longer inputs: extend a learned absolute position table (BERT, RoBERTa, XLM-R, GPT-2) by tiling or by hierarchical decomposition.

What this adds over transformers: transformers can resize token embeddings but not a position
table. Two initialisations of the new rows, both keeping the trained rows 0…L−1 unchanged:

* ``tile`` (the copy extension used for Piccolo's long-input BERT): position ``i`` gets the trained
  vector of position ``i mod L`` — the table repeated. Simple; the model must learn during
  fine-tuning to tell the copies apart.
* ``hierarchical`` (hierarchical decomposition of position embeddings, Su Jianlin 2020,
  kexue.fm/archives/7947, the method Piccolo2 cites): with ``u_k = (p_k − α·p_0) / (1 − α)``,
  position ``i = q·L + r`` gets ``α·u_q + (1 − α)·u_r``. For ``q = 0`` that is exactly ``p_r``;
  farther blocks differ by the coarse "which block" term ``α·u_q``, so every position up to L² is
  distinct. α = 0.4 is Su's value.

Backbones with RoPE or ALiBi (Qwen2, LLaMA, ModernBERT, Jina-BERT) have no table and pass through.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from hybridembed.errors import RecipeError

logger = logging.getLogger(__name__)
TABLE_NAMES = ("position_embeddings", "wpe", "embed_positions")


def find_position_table(model: nn.Module) -> tuple[nn.Module, str, nn.Embedding] | None:
    """(parent module, attribute name, table) of the learned absolute position embedding, or None."""
    for module in model.modules():
        for name in TABLE_NAMES:
            table = getattr(module, name, None)
            if isinstance(table, nn.Embedding):
                return module, name, table
    return None


def tile_positions(table: torch.Tensor, length: int) -> torch.Tensor:
    """Rows 0…length−1 where row i is row ``i mod L`` of the trained (L, d) table."""
    index = torch.arange(length, device=table.device) % table.shape[0]
    return table[index].clone()


def hierarchical_positions(table: torch.Tensor, length: int, alpha: float = 0.4) -> torch.Tensor:
    """Rows 0…length−1 by hierarchical decomposition (see the module docstring); length ≤ L²."""
    size = table.shape[0]
    if length > size * size:
        raise RecipeError(f"model.max_seq_length: hierarchical extension of {size} positions reaches at most {size * size}")
    if not 0 < alpha < 1:
        raise RecipeError(f"model.hierarchical_alpha must be in (0, 1), got {alpha}")
    base = (table.float() - alpha * table[:1].float()) / (1 - alpha)
    index = torch.arange(length, device=table.device)
    return (alpha * base[index // size] + (1 - alpha) * base[index % size]).to(table.dtype)


def extend_position_table(model: nn.Module, max_positions: int, method: str, alpha: float = 0.4) -> int:
    """Grow the model's position table so inputs of `max_positions` tokens fit; returns the old usable length.

    RoBERTa-style tables reserve rows 0…padding_idx (positions start at padding_idx + 1): those
    rows are kept and only the usable rows are extended.
    """
    found = find_position_table(model)
    if found is None:
        raise RecipeError("model.extend_positions: this backbone has no learned position table (RoPE/ALiBi need no extension)")
    parent, name, table = found
    offset = table.padding_idx + 1 if table.padding_idx is not None else 0
    old_usable = table.num_embeddings - offset
    if max_positions <= old_usable:
        return old_usable
    trained = table.weight.data[offset:]
    match method:
        case "tile":
            rows = tile_positions(trained, max_positions)
        case "hierarchical":
            rows = hierarchical_positions(trained, max_positions, alpha)
        case _:
            raise RecipeError(f"model.extend_positions: unknown method {method!r} (expected 'tile' or 'hierarchical')")
    new_table = nn.Embedding(offset + max_positions, table.embedding_dim, padding_idx=table.padding_idx)
    new_table.weight.data = torch.cat([table.weight.data[:offset], rows.to(table.weight.dtype)], dim=0).to(table.weight.device)
    setattr(parent, name, new_table)
    _resize_position_buffers(parent, offset + max_positions)
    _set_config_positions(model, offset + max_positions)
    logger.info("extended %s from %d to %d positions (%s)", name, old_usable, max_positions, method)
    return old_usable


def _resize_position_buffers(module: nn.Module, size: int) -> None:
    """BERT-style embeddings keep (1, max_positions) buffers of position and token-type ids."""
    for buffer_name in ("position_ids", "token_type_ids"):
        buffer = getattr(module, buffer_name, None)
        if isinstance(buffer, torch.Tensor) and buffer.ndim == 2 and buffer.shape[1] < size:
            fresh = torch.arange(size, device=buffer.device) if buffer_name == "position_ids" else torch.zeros(size, dtype=buffer.dtype, device=buffer.device)
            module.register_buffer(buffer_name, fresh.to(buffer.dtype).expand((1, -1)), persistent=False)


def _set_config_positions(model: nn.Module, size: int) -> None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        if config is not None and hasattr(config, key):
            setattr(config, key, size)


def fit_positions(model: nn.Module, tokenizer: Any, max_seq_length: int, method: str | None, alpha: float = 0.4) -> None:
    """Let a Hugging Face model and its tokenizer take `max_seq_length` tokens.

    A learned table shorter than that is extended with `method` (an error without one); a
    RoPE/ALiBi backbone passes through, with its config and tokenizer limits raised.
    """
    found = find_position_table(model)
    if found is not None:
        table = found[2]
        usable = table.num_embeddings - (table.padding_idx + 1 if table.padding_idx is not None else 0)
        if max_seq_length > usable:
            if method is None:
                raise RecipeError(
                    f"model.max_seq_length: {max_seq_length} exceeds the backbone's {usable} learned positions; "
                    "set model.extend_positions to 'tile' or 'hierarchical' (see docs/backbones.md)"
                )
            extend_position_table(model, max_seq_length, method, alpha)
    else:
        if method is not None:
            logger.info("model.extend_positions ignored: %s has relative positions (RoPE/ALiBi)", type(model).__name__)
        trained = getattr(model.config, "max_position_embeddings", None)
        if isinstance(trained, int) and 0 < trained < max_seq_length:
            logger.warning("max_seq_length %d is beyond the %d positions %s was trained on", max_seq_length, trained, type(model).__name__)
            _set_config_positions(model, max_seq_length)  # so a reload does not clamp the length back
    if tokenizer is not None and tokenizer.model_max_length < max_seq_length:
        tokenizer.model_max_length = max_seq_length


def fit_max_seq_length(transformer: Any, max_seq_length: int, method: str | None, alpha: float = 0.4) -> None:
    """`fit_positions` for a sentence-transformers Transformer module, then set its max_seq_length."""
    fit_positions(transformer.auto_model, transformer.tokenizer, max_seq_length, method, alpha)
    transformer.max_seq_length = max_seq_length
