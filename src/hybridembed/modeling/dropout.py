"""Dropout whose mask costs a quarter of torch's on a CPU: four 16-bit uniform lanes from each 64-bit random word.

On a CPU, `torch.nn.functional.dropout` draws one Bernoulli sample per element through torch's
generator, about 5 ns each on this project's machine: in a bf16 training step of MiniLM the masks
cost as much as all the matmuls (docs/performance.md). `lane_dropout` draws one 64-bit word per four
elements (`torch.randint` over the full int64 range, viewed as int16 lanes) and drops an element when
its lane falls below ``round(p · 65536)``: the same Bernoulli(p) mask up to p's rounding to 1/65536,
scaled by the exact keep probability so every element keeps its expectation. Draws come from torch's
default generator, so a seeded run repeats exactly and a resumed one continues the same stream.
Elsewhere (CUDA has a fused Philox dropout) it is torch's own dropout.

`use_lane_dropout(model)` swaps every `nn.Dropout` of a model for `LaneDropout` (a subclass, so code
reading `.p` — transformers' attention modules do — keeps working) and, for BERT-family backbones
that use SDPA, registers an attention function that applies the same mask to the attention
probabilities; transformers' SDPA path would otherwise fall back to its math kernel with torch's
Bernoulli mask whenever attention dropout is on. Inference (eval mode, p = 0) is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

LANES = 65536  # values of one 16-bit lane
ATTENTION_NAME = "hybridembed_sdpa_lane_dropout"


def lane_keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> tuple[Tensor, float]:
    """(a boolean keep mask of `shape`, the exact keep probability): Bernoulli(1 − p) up to p rounded to 1/65536."""
    numel = 1
    for size in shape:
        numel *= size
    words = torch.randint(-(2**63), 2**63 - 1, ((numel + 3) // 4,), dtype=torch.int64, device=device)
    lanes = words.view(torch.int16)[:numel].view(shape)  # uniform over [-32768, 32767]
    dropped = round(p * LANES)
    return lanes >= dropped - LANES // 2, 1.0 - dropped / LANES


def lane_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout like `F.dropout`, with the mask from `lane_keep_mask` on a CPU (torch's own elsewhere)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training=True)
    keep, keep_probability = lane_keep_mask(x.shape, p, x.device)
    # where() saves only the boolean mask for backward (the gradient is grad · mask / keep probability).
    return torch.where(keep, x * (1.0 / keep_probability), x.new_zeros(()))


class LaneDropout(nn.Dropout):
    """`nn.Dropout` with `lane_dropout`'s cheaper mask on a CPU."""

    def forward(self, input: Tensor) -> Tensor:
        if self.inplace:  # nothing in the backbones we train asks for it; keep torch's semantics there
            return super().forward(input)
        return lane_dropout(input, self.p, self.training)


def sdpa_lane_dropout_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' SDPA attention, except that attention dropout on a CPU uses `lane_dropout` on the probabilities.

    Without dropout (inference, p = 0, or another device) it is transformers' `sdpa_attention_forward`
    itself; with it, the math of that kernel's fallback: softmax(q·kᵀ · scaling + mask), dropped, · v.
    Returns (batch, length, heads, head_dim) as the attention functions of transformers do.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0 or query.device.type != "cpu" or kwargs.get("is_causal") or getattr(module, "is_causal", False):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if key.shape[1] != query.shape[1]:  # grouped-query attention: repeat the key/value heads
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask[..., : key.shape[-2]], torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    probabilities = lane_dropout(torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype), dropout)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), None


def use_lane_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` in `model` for `LaneDropout` (same p) and route SDPA attention through `sdpa_lane_dropout_attention`.

    Returns how many dropout modules were swapped. Backbones on eager or flash attention keep their
    attention function (their attention dropout is torch's).
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, sdpa_lane_dropout_attention)
    # Without a mask function of its own name transformers would build no padding mask at all for it.
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, LaneDropout(child.p, child.inplace).train(child.training))
                swapped += 1
        config = getattr(parent, "config", None)
        set_attention = getattr(parent, "set_attn_implementation", None)  # transformers' PreTrainedModel method
        if config is not None and getattr(config, "_attn_implementation", None) == "sdpa" and callable(set_attention):
            set_attention(ATTENTION_NAME)
    return swapped
