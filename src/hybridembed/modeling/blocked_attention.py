"""Attention with dropout in blocks of query rows on a CPU: memory linear in the length, probabilities recomputed in backward.

torch's CPU kernels fuse attention only without dropout: with it, `scaled_dot_product_attention`
(and transformers' eager path) materialise softmax(q·kᵀ) for every head and keep it, its fp32
copy and the dropout mask for backward — about 10 bytes per (head, query, key) per layer, 8 GB
per layer for one 8192-token text, and memory-bound work that makes attention most of a training
step from a few hundred tokens on. `blocked_dropout_attention` is the FlashAttention recipe
(Dao et al., 2022) written with torch ops: queries in blocks small enough to stay in cache, each
block's probabilities dropped and multiplied by v at once, only the log-sum-exp of each row kept,
and the probabilities recomputed block by block in backward. The dropout mask is `lane_dropout`'s
(one 64-bit word per four elements), drawn from a generator seeded per block from one draw of
torch's default generator, so backward regenerates it, a seeded run repeats exactly and a resumed
run continues the same stream. GPUs have fused dropout attention already; this is for CPUs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybridembed.modeling.dropout import lane_keep_mask

# Elements of one block's (batch, heads, block rows, keys) scores: 4 MB in fp32, inside a CPU's L2+L3.
BLOCK_ELEMENTS = 1 << 20


def block_rows(batch_heads: int, keys: int, elements: int = BLOCK_ELEMENTS) -> int:
    """Query rows per block so that a block's scores hold about `elements` values (at least one row)."""
    return max(1, elements // max(1, batch_heads * keys))


def block_keep_mask(seed: int, block: int, shape: tuple[int, ...], p: float, device: torch.device) -> tuple[Tensor, float]:
    """The keep mask of query block `block` of an attention call seeded `seed`: the same in forward and backward."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed + block * 0x9E3779B97F4A7C15) % (1 << 63))  # golden-ratio step: distinct seeds per block
    return lane_keep_mask(shape, p, device, generator=generator)


def _block_probabilities(query: Tensor, key_t: Tensor, mask: Tensor | None, scale: float, log_sum_exp: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(fp32 softmax of one block's scores, its rows' log-sum-exp); with `log_sum_exp` given, the saved one is reused."""
    scores = torch.matmul(query, key_t).float().mul_(scale)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, torch.finfo(torch.float32).min)
        else:
            scores.add_(mask)
    if log_sum_exp is None:
        log_sum_exp = torch.logsumexp(scores, dim=-1, keepdim=True)
    return scores.sub_(log_sum_exp).exp_(), log_sum_exp


def _mask_rows(mask: Tensor | None, start: int, stop: int) -> Tensor | None:
    """The rows of a (…, queries or 1, keys) mask that belong to query rows [start, stop)."""
    if mask is None or mask.shape[-2] == 1:
        return mask
    return mask[..., start:stop, :]


class _BlockedDropoutAttention(torch.autograd.Function):
    """softmax(q·kᵀ·scale + mask) dropped at p, · v — in query blocks, probabilities recomputed in backward."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, p: float, scale: float, seed: int) -> Tensor:
        rows = block_rows(query.shape[0] * query.shape[1], key.shape[-2])
        outputs, sums = [], []
        with torch.autocast(query.device.type, enabled=False):  # the dtypes below are explicit; autocast would recast them
            key_t = key.transpose(-2, -1)
            for block, start in enumerate(range(0, query.shape[-2], rows)):
                stop = min(start + rows, query.shape[-2])
                probabilities, log_sum_exp = _block_probabilities(query[..., start:stop, :], key_t, _mask_rows(mask, start, stop), scale)
                keep, keep_probability = block_keep_mask(seed, block, tuple(probabilities.shape), p, query.device)
                dropped = torch.where(keep, probabilities.mul_(1.0 / keep_probability), 0.0).to(value.dtype)
                outputs.append(torch.matmul(dropped, value))
                sums.append(log_sum_exp)
        output = torch.cat(outputs, dim=-2)
        ctx.save_for_backward(query, key, value, mask, torch.cat(sums, dim=-2), output)
        ctx.p, ctx.scale, ctx.seed, ctx.rows = p, scale, seed, rows
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        query, key, value, mask, log_sum_exp, output = ctx.saved_tensors
        grad_query = []
        grad_key = torch.zeros(key.shape, dtype=torch.float32, device=key.device)
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        with torch.autocast(query.device.type, enabled=False):
            grad_output = grad_output.to(query.dtype)
            # rowsum(dP ∘ P) of the softmax backward equals rowsum(dO ∘ O), dropout included (FlashAttention's D).
            row_dots = (grad_output.float() * output.float()).sum(dim=-1, keepdim=True)
            key_t, value_t = key.transpose(-2, -1), value.transpose(-2, -1)
            for block, start in enumerate(range(0, query.shape[-2], ctx.rows)):
                stop = min(start + ctx.rows, query.shape[-2])
                block_query, block_grad = query[..., start:stop, :], grad_output[..., start:stop, :]
                probabilities, _ = _block_probabilities(block_query, key_t, _mask_rows(mask, start, stop), ctx.scale, log_sum_exp[..., start:stop, :])
                keep, keep_probability = block_keep_mask(ctx.seed, block, tuple(probabilities.shape), ctx.p, query.device)
                scale_kept = 1.0 / keep_probability
                dropped = torch.where(keep, probabilities * scale_kept, 0.0).to(value.dtype)
                grad_value += torch.matmul(dropped.transpose(-2, -1), block_grad).float()
                grad_dropped = torch.matmul(block_grad, value_t).float()
                grad_probabilities = torch.where(keep, grad_dropped.mul_(scale_kept), 0.0)
                grad_scores = probabilities.mul_(grad_probabilities.sub_(row_dots[..., start:stop, :])).mul_(ctx.scale).to(query.dtype)
                grad_query.append(torch.matmul(grad_scores, key))
                grad_key += torch.matmul(grad_scores.transpose(-2, -1), block_query).float()
        return torch.cat(grad_query, dim=-2), grad_key.to(key.dtype), grad_value.to(value.dtype), None, None, None, None


def blocked_dropout_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, p: float, scale: float) -> Tensor:
    """softmax(q·kᵀ·scale + mask) with inverted dropout p on the probabilities, · v; (batch, heads, length, head_dim) in and out.

    `mask`: None, boolean (True attends) or additive, broadcastable to (batch, heads, queries, keys).
    Memory beyond q, k, v and the output is one block of scores plus one value per query row.
    """
    seed = int(torch.randint(0, 1 << 62, (), dtype=torch.int64))  # one draw of the default generator per call
    if mask is not None:
        mask = mask[..., : key.shape[-2]]
    return _BlockedDropoutAttention.apply(query, key, value, mask, p, scale, seed)
