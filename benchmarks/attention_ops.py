"""Times, on a CPU, the operators behind two choices in packed attention with lane dropout (docs/performance.md).

1. Attention scores with a head-broadcast padding mask, bf16, 12 heads of 32 (MiniLM): the
   composition `matmul(q, kᵀ) · scale + bias` against the bias copied into the scores' memory and
   one `baddbmm` onto it with alpha = scale (what `LaneDropoutAttention` does), with each piece
   alone; and each formulation's relative error against float64.
2. A gather of (token, head) rows, forward + backward: `index_select`, whose autograd backward is
   `index_add_` (a serial loop on a CPU), against packing's `_RowGather`, whose backward is a gather.

Prints markdown tables of microseconds per call (median of `--repeats` timings of `--calls` calls).

    python benchmarks/attention_ops.py [--calls 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from hybridembed.modeling.packing import _RowGather

# (rows, keys) of a bucket: quickstart sentences, longer ones, the 128-token passages
SCORE_SHAPES = ((32, 24), (32, 40), (64, 40), (116, 128))
HEADS, HEAD_DIM = 12, 32
GATHER_TOKENS = 1500  # a packed MiniLM forward's tokens


def microseconds(call, calls: int, repeats: int) -> float:
    """Median over `repeats` of the mean time of `call()`, after a warm-up."""
    for _ in range(3):
        call()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        timings.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(timings)


def composed_scores(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.matmul(q, k.transpose(-1, -2)).mul_(scale).add_(bias)


def gemm_scores(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    rows, heads, length, head_dim = q.shape
    scores = torch.empty((rows, heads, length, k.shape[-2]), dtype=q.dtype)
    scores.copy_(bias)
    scores.view(rows * heads, length, -1).baddbmm_(q.view(-1, length, head_dim), k.view(-1, k.shape[-2], head_dim).transpose(1, 2), alpha=scale)
    return scores


def relative_error(got: torch.Tensor, want: torch.Tensor, real: torch.Tensor) -> float:
    """Relative error over the unmasked scores (masked ones are the bias's minimum in both)."""
    got, want = got.double()[real.expand_as(got)], want[real.expand_as(want)]
    return float((got - want).norm() / want.norm())


def time_scores(calls: int, repeats: int) -> None:
    print(
        "| rows × keys | matmul · scale + bias (µs) | bias copy + baddbmm (µs) | baddbmm / composed | matmul alone | broadcast bias add alone | bias copy alone | error composed | error baddbmm |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rows, keys in SCORE_SHAPES:
        generator = torch.Generator().manual_seed(0)
        q, k = (torch.randn(rows, HEADS, keys, HEAD_DIM, generator=generator).bfloat16() for _ in range(2))
        real = torch.rand(rows, 1, 1, keys, generator=generator) > 0.1  # the keys a row attends to
        bias = torch.zeros(real.shape, dtype=torch.bfloat16).masked_fill_(~real, torch.finfo(torch.bfloat16).min)
        scale = HEAD_DIM**-0.5
        exact = q.double() @ k.double().transpose(-1, -2) * scale
        scores = torch.empty(rows, HEADS, keys, keys, dtype=torch.bfloat16)
        composed = microseconds(functools.partial(composed_scores, q, k, bias, scale), calls, repeats)
        gemm = microseconds(functools.partial(gemm_scores, q, k, bias, scale), calls, repeats)
        matmul = microseconds(functools.partial(torch.matmul, q, k.transpose(-1, -2)), calls, repeats)
        add = microseconds(functools.partial(scores.add_, bias), calls, repeats)
        copy = microseconds(functools.partial(scores.copy_, bias), calls, repeats)
        errors = [relative_error(f(q, k, bias, scale), exact, real) for f in (composed_scores, gemm_scores)]
        print(
            f"| {rows} × {keys} | {composed:.0f} | {gemm:.0f} | {gemm / composed:.2f} | {matmul:.0f} | {add:.0f} | {copy:.0f} | {errors[0]:.2e} | {errors[1]:.2e} |"
        )


def _forward_backward(gather, grad: torch.Tensor) -> None:
    gather().backward(grad)


def time_gathers(calls: int, repeats: int) -> None:
    print(f"\n{GATHER_TOKENS} tokens × {HEADS} heads × {HEAD_DIM} bf16 values, 1.2 slots per token")
    print("| gather | forward (µs) | forward + backward (µs) |")
    print("|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    rows = GATHER_TOKENS * HEADS
    source = torch.randn(rows, HEAD_DIM, generator=generator).bfloat16().requires_grad_()
    index = torch.cat([torch.randperm(rows, generator=generator), torch.randint(0, rows, (rows // 5,), generator=generator)])
    back = torch.argsort(index)[:rows]  # a slot of each row
    grad = torch.randn(len(index), HEAD_DIM, generator=generator).bfloat16()
    gathers = {"index_select (backward: index_add_)": functools.partial(source.index_select, 0, index),
               "_RowGather (backward: a gather)": functools.partial(_RowGather.apply, source, index, back, False)}  # fmt: skip
    for name, gather in gathers.items():
        forward = microseconds(gather, calls, repeats)
        both = microseconds(functools.partial(_forward_backward, gather, grad), calls, repeats)
        print(f"| {name} | {forward:.0f} | {both:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    time_scores(args.calls, args.repeats)
    time_gathers(args.calls, args.repeats)


if __name__ == "__main__":
    main()
