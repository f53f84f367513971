"""Backbone families: tell encoders from decoder LLMs and make a decoder's tokenizer and padding fit last-token pooling.

What this adds over transformers / sentence-transformers: sentence-transformers' ``lasttoken``
pooling already finds the last real token under left or right padding, but it relies on the input
*ending* with EOS (most LLM tokenizers — LLaMA, GPT-2, Qwen2's chat tokenizers — do not append it)
and on the model seeing the same positions whatever the padding side (a left-padded batch shifts
the absolute positions of a GPT-2-style model; RoPE models only drift by rounding). Here:
``append_eos`` turns on the tokenizer's own ``add_eos_token`` switch (saved with the tokenizer, so
a plain ``SentenceTransformer(path)`` keeps it), and ``use_mask_positions`` numbers positions from
the attention mask so a left-padded text gets exactly the positions it has unpadded.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hybridembed.errors import RecipeError

if TYPE_CHECKING:
    from sentence_transformers.sentence_transformer.modules import Transformer

logger = logging.getLogger(__name__)
_HOOK_FLAG = "_hybridembed_mask_positions"


def is_decoder(config: Any) -> bool:
    """A causal LM family (Qwen2, LLaMA, GPT-2, Mistral, …) rather than a masked-LM encoder (BERT, RoBERTa, XLM-R, ModernBERT)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_decoder", False):
        return True
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def append_eos(tokenizer: Any) -> bool:
    """Make every tokenized input end with EOS (keeping a BOS the tokenizer already adds); True if it changed anything."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise RecipeError("model.pooling: last-token pooling needs a tokenizer with an EOS token; this one has none")
    probe = tokenizer("a")["input_ids"]
    if probe and probe[-1] == eos_id:
        return False
    if not hasattr(type(tokenizer), "add_eos_token"):
        raise RecipeError(f"model.pooling: cannot make tokenizer {type(tokenizer).__name__} append EOS (no add_eos_token switch)")
    bos_id = tokenizer.bos_token_id
    if bos_id is not None and probe and probe[0] == bos_id and bos_id != eos_id and not tokenizer.add_bos_token:
        tokenizer.add_bos_token = True  # the switch rebuilds the post-processor: keep the BOS it had
    tokenizer.add_eos_token = True
    probe = tokenizer("a")["input_ids"]
    if not probe or probe[-1] != eos_id:
        raise RecipeError(f"model.pooling: tokenizer {type(tokenizer).__name__} still does not end inputs with EOS")
    return True


def has_absolute_positions(model: nn.Module) -> bool:
    """A learned position table (GPT-2's ``wpe``, BERT's ``position_embeddings``) rather than RoPE/ALiBi."""
    from hybridembed.modeling.positions import find_position_table

    return find_position_table(model) is not None


def mask_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counted over real tokens only: 0, 1, 2, … from the first unmasked one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def use_mask_positions(model: nn.Module) -> None:
    """Give left-padded batches the positions they would have unpadded (no-op for batches without left padding).

    Wraps the instance's ``forward`` rather than registering a forward pre-hook, because
    sentence-transformers calls ``model.forward(...)`` directly, which skips hooks.
    """
    if getattr(model, _HOOK_FLAG, False):
        return
    original = model.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        mask = kwargs.get("attention_mask")
        if kwargs.get("position_ids") is None and isinstance(mask, torch.Tensor) and mask.ndim == 2 and not bool(mask[:, 0].all()):
            kwargs["position_ids"] = mask_position_ids(mask)
        return original(*args, **kwargs)

    model.forward = forward
    setattr(model, _HOOK_FLAG, True)


def prepare_decoder(transformer: Transformer) -> None:
    """Ready a sentence-transformers Transformer module for last-token pooling.

    Pad token = EOS where missing; EOS appended to every input; positions numbered from the
    attention mask; a backbone with absolute positions is saved right-padding (so a plain
    sentence-transformers load, without our hook, still sees unshifted positions).
    """
    tokenizer = transformer.tokenizer
    if tokenizer is None:
        return
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if append_eos(tokenizer):
        logger.info("tokenizer now appends EOS (%s) for last-token pooling", tokenizer.eos_token)
    model = transformer.auto_model
    if has_absolute_positions(model):
        tokenizer.padding_side = "right"
    use_mask_positions(model)
