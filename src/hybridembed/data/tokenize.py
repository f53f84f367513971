"""Tokenize a training batch's text columns exactly as sentence-transformers' `preprocess` does, without its slow conversion to tensors.

What ours adds: `SentenceTransformer.preprocess` asks the tokenizer for `return_tensors="pt"`, and
transformers' `BatchEncoding.convert_to_tensors` then walks every padded row in Python (a
`flatten` of the whole batch only to test whether it is empty) before `torch.tensor`. For the short
texts of a training batch that walk is a third of the collation time (`benchmarks/collate_speed.py`:
the benchmark's batches collate 1.5× faster without it, into identical tensors; docs/performance.md). `text_tokenizer(model)` runs the same `preprocess` — so
truncation, `max_seq_length`, the module's own processing kwargs and prompts stay sentence-
transformers' — with `return_tensors=None`, and builds each padded list of rows into one tensor
directly. Modules whose `preprocess` needs tensors after tokenizing (decoders checking left padding,
query expansion, FlashAttention's flattened inputs, chat templates) and non-Transformer first modules
keep `model.preprocess` unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Tokenize = Callable[[list[str]], dict[str, Any]]

# preprocess post-processes the tokenizer's output as tensors for these transformer tasks (left-padding checks, logits_to_keep)
TENSOR_POSTPROCESSED_TASKS = ("text-generation", "any-to-any")


def text_tokenizer(model: Any) -> Tokenize:
    """The collator's tokenizer for `model`: ST's preprocess with a direct list-to-tensor step where that is exact, else `model.preprocess`."""
    if not converts_lists_exactly(model):
        return model.preprocess

    def tokenize(texts: list[str]) -> dict[str, Any]:
        if not texts:
            return model.preprocess(texts)
        features = model.preprocess(texts, processing_kwargs={"common": {"return_tensors": None}})
        return {key: _as_tensor(value) for key, value in features.items()}

    return tokenize


def converts_lists_exactly(model: Any) -> bool:
    """Whether `model`'s first module is a plain-text ST Transformer whose preprocess uses its tensors only as the tokenizer returns them."""
    from sentence_transformers.sentence_transformer.modules import Transformer

    module = model[0] if len(model) else None
    if type(module) is not Transformer:  # subclasses (ColBERT-style, routers) may post-process tensors
        return False
    return (
        getattr(module, "transformer_task", None) not in TENSOR_POSTPROCESSED_TASKS
        and getattr(module, "query_expansion", None) is None
        and not getattr(module, "can_flatten_inputs", True)
        and "message" not in getattr(module, "modality_config", {"message": None})
    )


def _as_tensor(value: Any) -> Any:
    """A padded batch (a list of equal-length int lists) as one int64 tensor, as `return_tensors="pt"` gives; anything else as it is."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        return torch.tensor(value, dtype=torch.long)
    return value


__all__ = ["converts_lists_exactly", "text_tokenizer"]
