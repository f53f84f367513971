"""Dropout whose mask costs a quarter of torch's on a CPU: four 16-bit uniform lanes from each 64-bit random word.

On a CPU, `torch.nn.functional.dropout` draws one Bernoulli sample per element through torch's
generator, about 5 ns each on this project's machine: in a bf16 training step of MiniLM the masks
cost as much as all the matmuls (docs/performance.md). `lane_dropout` draws one 64-bit word per four
elements (`random_words`, viewed as int16 lanes) and drops an element when its lane falls below
``round(p · 65536)``: the same Bernoulli(p) mask up to p's rounding to 1/65536, scaled by the exact
keep probability so every element keeps its expectation. Each draw is seeded from torch's default
generator, so a seeded run repeats exactly and a resumed one continues the same stream.
Elsewhere (CUDA has a fused Philox dropout) it is torch's own dropout.

`use_lane_dropout(model)` swaps every `nn.Dropout` of a model for `LaneDropout` (a subclass, so code
reading `.p` — transformers' attention modules do — keeps working) and, for BERT-family backbones
that use SDPA, registers an attention function that applies the same mask to the attention
probabilities; transformers' SDPA path would otherwise fall back to its math kernel with torch's
Bernoulli mask whenever attention dropout is on. That function is one autograd node
(`LaneDropoutAttention`): it keeps the attention probabilities in the compute dtype and saves only
them, the keep factor and the dropped probabilities for backward — fewer passes over the
(heads × length²) tensors and less fresh memory than the autograd graph of the same math, which
under autocast also materialised an fp32 copy of the probabilities. Inference (eval mode, p = 0) is
unchanged.

The random words come from numpy's SFC64 seeded by one draw of torch's default generator (until
2026-12-07 its PCG64, 1.4× slower per word here; PCG64 itself has 2.7× the words per second of
torch's CPU generator, mt19937), and the stream stays a function of torch's generator state, so
seeding and resuming work as before. On a CPU the masks are applied as a product with a 1.0 / 0.0
factor of the input's dtype (`lane_keep_factor`), not with `torch.where` on a boolean mask: torch's
CPU kernels for boolean masks run scalar loops. The CPU draws go `BLOCK_LANES` lanes at a time, so
their words, comparison and output slice stay in cache between the passes; the stream is the same.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

LANES = 65536  # values of one 16-bit lane
ATTENTION_NAME = "hybridembed_sdpa_lane_dropout"
# torch's CPU softmax kernels (forward and backward) vectorise bf16/fp16 rows of at least this many
# elements; shorter rows run a scalar loop 2–6× slower than the fp32 kernels, so those stay in fp32.
VECTORISED_SOFTMAX_ROW = 32
# Lanes a CPU draw handles at a time: the block's words (128 KB), comparison (64 KB) and output slice
# (≤ 256 KB) stay in a core's L2 cache between the passes.
BLOCK_LANES = 65536  # a multiple of 4: every block but the last takes whole words, so the stream is the whole draw's


def random_words(count: int, device: torch.device) -> Tensor:
    """`count` uniform int64 words: on a CPU from numpy's SFC64 seeded by one draw of torch's default generator."""
    if torch.device(device).type != "cpu":
        return torch.randint(-(2**63), 2**63 - 1, (count,), dtype=torch.int64, device=device)
    return torch.from_numpy(_cpu_words().random_raw(count).view(np.int64))


def _cpu_words() -> np.random.SFC64:
    """A fresh SFC64 stream seeded by one draw of torch's default generator (so seeding and resuming torch's repeat it)."""
    return np.random.SFC64(int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64)))


def _threshold(p: float) -> tuple[int, float]:
    """(the int16 value a kept lane reaches, the exact keep probability) for drop probability `p` rounded to 1/65536."""
    dropped = round(p * LANES)
    return dropped - LANES // 2, 1.0 - dropped / LANES


def _cpu_keep(shape: torch.Size | tuple[int, ...], p: float, one: np.signedinteger[Any] | None) -> tuple[Tensor, float]:
    """The CPU draw: a keep mask of `shape` (`one` None) or `one` where kept and 0 elsewhere, and the exact keep probability.

    The lanes are `random_words((numel + 3) // 4)`'s, in order, drawn and compared `BLOCK_LANES` at a
    time: drawn whole, a mask's words, comparison and output are three arrays the size of the
    activations, which in a training step's cold caches took about twice the time per element
    (`benchmarks/profile_train.py --masks`, docs/performance.md).
    """
    numel = math.prod(shape)
    threshold, keep_probability = _threshold(p)
    words = _cpu_words()
    out = np.empty(numel, dtype=np.bool_ if one is None else one.dtype)
    block = BLOCK_LANES  # read at each draw, so a benchmark can change it
    kept = np.empty(min(numel, block), dtype=np.bool_)
    for start in range(0, numel, block):
        size = min(block, numel - start)
        lanes = words.random_raw((size + 3) // 4).view(np.int16)[:size]  # uniform over [-32768, 32767]
        if one is None:
            np.greater_equal(lanes, threshold, out=out[start : start + size])
        else:  # numpy has no bfloat16: `one` is 1.0's bit pattern, written from the comparison
            np.multiply(np.greater_equal(lanes, threshold, out=kept[:size]), one, out=out[start : start + size])
    return torch.from_numpy(out).view(shape), keep_probability


def _device_lanes(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> tuple[Tensor, int, float]:
    """Off a CPU: (`shape` uniform int16 lanes from `random_words`, the threshold a kept lane reaches, the keep probability)."""
    numel = math.prod(shape)
    lanes = random_words((numel + 3) // 4, device).view(torch.int16)[:numel].view(shape)
    return lanes, *_threshold(p)


def lane_keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> tuple[Tensor, float]:
    """(a boolean keep mask of `shape`, the exact keep probability): Bernoulli(1 − p) up to p rounded to 1/65536."""
    if torch.device(device).type == "cpu":  # numpy's comparison is vectorised; torch's int16 → bool one is not (~8× slower here)
        return _cpu_keep(shape, p, None)
    lanes, threshold, keep_probability = _device_lanes(shape, p, device)
    return lanes >= threshold, keep_probability


def lane_keep_factor(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, float]:
    """`lane_keep_mask`'s draw (the same random stream) as 1.0 / 0.0 in `dtype`, to multiply by.

    On a CPU, torch's kernels that apply a boolean mask (`where`, `masked_fill`, a product with a
    bool tensor) run a scalar loop 4–8× slower than a product of two tensors of one dtype, so the
    dropout paths multiply by this factor instead; numpy writes it from the comparison as the bit
    pattern of 1.0 (numpy has no bfloat16), a vectorised pass.
    """
    if torch.device(device).type == "cpu" and dtype.is_floating_point:
        factor, keep_probability = _cpu_keep(shape, p, _one_bits(dtype))
        return factor.view(dtype), keep_probability
    keep, keep_probability = lane_keep_mask(shape, p, device)
    return keep.to(dtype), keep_probability


@functools.cache
def _one_bits(dtype: torch.dtype) -> np.signedinteger[Any]:
    """1.0 of a float dtype as the numpy signed integer of its width (the bit pattern of 1.0 is positive)."""
    bits = f"int{dtype.itemsize * 8}"
    return np.dtype(bits).type(int(torch.ones((), dtype=dtype).view(getattr(torch, bits)).item()))


def lane_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout like `F.dropout`, with the mask from `lane_keep_mask` on a CPU (torch's own elsewhere)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training=True)
    factor, keep_probability = lane_keep_factor(x.shape, p, x.dtype, x.device)
    # x · 1.0 is exact, so this rounds once, as x · scale does; backward saves only the factor (grad · factor · scale).
    return (x * factor).mul_(1.0 / keep_probability)


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
    attended = lane_dropout_attention_heads_first(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    return attended.transpose(1, 2).contiguous(), None  # without dropout: SDPA's own output (transposed twice, not copied)


def lane_dropout_attention_heads_first(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> Tensor:
    """`sdpa_lane_dropout_attention` as (batch, heads, length, head_dim), the layout it computes in (packing's buckets take it so)."""
    if dropout == 0.0 or query.device.type != "cpu" or kwargs.get("is_causal") or getattr(module, "is_causal", False):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)[0].transpose(1, 2)
    if key.shape[1] != query.shape[1]:  # grouped-query attention: repeat the key/value heads
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    mask = None if attention_mask is None else attention_mask[..., : key.shape[-2]]
    return LaneDropoutAttention.apply(query, key, value, mask, dropout, scale)


class LaneDropoutAttention(torch.autograd.Function):
    """softmax(q·kᵀ · scale + mask) with lane dropout, · v — one autograd node with a hand-written backward.

    Everything runs in the query's dtype (bf16 under autocast: the softmax accumulates in fp32 inside
    the kernel and rounds once, where autocast's graph wrote an fp32 copy and cast it back), except
    the softmax of rows shorter than `VECTORISED_SOFTMAX_ROW` keys, which is faster in fp32. The
    scores are one `baddbmm` onto the padding mask's additive bias (alpha = scale): torch's CPU
    kernel for adding a head-broadcast bias to the scores takes 10–20× the time of copying it there
    at MiniLM's bucket sizes (benchmarks/attention_ops.py), and the GEMM applies the scale and the bias before it rounds. The 1 / keep-probability
    scale is applied to the (length × head_dim) output and its gradient instead of the
    (length × length) probabilities, and so is the softmax's `scale` in backward (its backward is
    linear in the gradient). Backward saves the probabilities, the keep factor and the dropped
    probabilities, and uses aten's fused softmax backward (`torch._softmax_backward_data`, the one
    private torch op this project calls; transformers' DeBERTa used it the same way).
    """

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, p: float, scale: float) -> Tensor:
        with torch.autocast(query.device.type, enabled=False):  # dtypes are explicit here
            key, value = key.to(query.dtype), value.to(query.dtype)
            batch, heads, length, _ = query.shape
            keys = key.shape[-2]
            scores = torch.empty((batch, heads, length, keys), dtype=query.dtype, device=query.device)
            if mask is not None:
                # An additive bias of the mask's (usually head-broadcast) shape, clamped so an fp32 mask's minimum
                # stays finite in bf16 (−inf would give NaN on a row with every key masked).
                lowest = torch.finfo(scores.dtype).min
                if mask.dtype == torch.bool:
                    bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~mask, lowest)
                else:
                    bias = mask.clamp(min=lowest).to(scores.dtype)
                scores.copy_(bias)  # broadcast over heads (and query positions)
            _scaled_bmm(query, key.transpose(-1, -2), scale, out=scores, add_to_out=mask is not None)
            short_rows = scores.dtype in (torch.bfloat16, torch.float16) and keys < VECTORISED_SOFTMAX_ROW
            probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32 if short_rows else scores.dtype)
            del scores
            keep, keep_probability = lane_keep_factor(probabilities.shape, p, probabilities.dtype, probabilities.device)
            dropped = (probabilities * keep).to(query.dtype)
            attended = _scaled_bmm(dropped, value, 1.0 / keep_probability)
        ctx.save_for_backward(query, key, value, probabilities, keep, dropped)
        ctx.scale, ctx.inverse_keep = scale, 1.0 / keep_probability
        return attended

    @staticmethod
    def backward(ctx, grad_attended: Tensor):
        query, key, value, probabilities, keep, dropped = ctx.saved_tensors
        grad = grad_attended.to(query.dtype)
        grad_value = _scaled_bmm(dropped.transpose(-1, -2), grad, ctx.inverse_keep)
        grad_dropped = _scaled_bmm(grad, value.transpose(-1, -2), ctx.inverse_keep * ctx.scale)  # the softmax's scale, here
        grad_probabilities = grad_dropped.to(probabilities.dtype).mul_(keep)  # keep: 1.0 / 0.0 in the probabilities' dtype
        del grad_dropped
        grad_scores = torch._softmax_backward_data(grad_probabilities, probabilities, -1, probabilities.dtype).to(query.dtype)
        del grad_probabilities
        grad_query = torch.matmul(grad_scores, key)
        grad_key = torch.matmul(grad_scores.transpose(-1, -2), query)
        return grad_query, grad_key, grad_value, None, None, None


def _scaled_bmm(a: Tensor, b: Tensor, alpha: float, out: Tensor | None = None, add_to_out: bool = False) -> Tensor:
    """alpha · (a @ b) over the leading (batch, heads) dimensions as one `baddbmm`, the scale applied inside the GEMM.

    `out` (contiguous, the result's shape) receives it: added to its values with `add_to_out`
    (beta = 1), written over them otherwise (beta = 0: its values are never read).
    """
    rows, inner, columns = a.shape[-2], a.shape[-1], b.shape[-1]
    if out is None:
        out = torch.empty((*a.shape[:-2], rows, columns), dtype=a.dtype, device=a.device)
    out.view(-1, rows, columns).baddbmm_(a.reshape(-1, rows, inner), b.reshape(-1, inner, columns), beta=1.0 if add_to_out else 0.0, alpha=alpha)
    return out


def use_lane_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` in `model` for `LaneDropout` (same p) and route SDPA attention through `sdpa_lane_dropout_attention`.

    Returns how many dropout modules were swapped. Backbones on eager or flash attention keep their
    attention function (their attention dropout is torch's).
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    from hybridembed.modeling.packing import PACKED_SDPA, bucketed_attention

    # bucketed: the same function, and packed forwards (training.packing) run through it per bucket of rows
    AttentionInterface.register(ATTENTION_NAME, bucketed_attention(sdpa_lane_dropout_attention, lane_dropout_attention_heads_first))
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
        if config is not None and getattr(config, "_attn_implementation", None) in ("sdpa", PACKED_SDPA) and callable(set_attention):
            set_attention(ATTENTION_NAME)
    return swapped
