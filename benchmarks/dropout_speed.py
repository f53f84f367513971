"""Times one dropout forward + backward on a CPU: torch's `F.dropout` against hybridembed's `lane_dropout`.

The shapes are those of a MiniLM training chunk (32 rows of ~24 tokens): hidden states (384 wide),
the feed-forward intermediate (1536 wide) and attention probabilities (12 heads). Prints a markdown
table of microseconds per call (median of `--repeats` timings of `--calls` calls each) and the ratio.

`--attention` times whole attention with dropout instead (forward + backward of MiniLM's 12 heads of
32 at 24, 128 and 512 tokens): torch's SDPA with `dropout_p` (what transformers runs; its math kernel
with a Bernoulli mask), the autograd graph of the same math with the lane mask (hybridembed's
attention function before the `LaneDropoutAttention` node), and that node.

    python benchmarks/dropout_speed.py [--calls 200] [--repeats 5] [--p 0.1] [--attention]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from hybridembed.allocator import keep_freed_memory
from hybridembed.modeling.dropout import LaneDropoutAttention, lane_dropout, lane_keep_mask

SHAPES = {"hidden states": (32 * 24, 384), "feed-forward": (32 * 24, 1536), "attention probabilities": (32, 12, 24, 24)}
# (rows, tokens) of a training chunk for --attention: quickstart sentences, its 128-token passages, long inputs
ATTENTION_CHUNKS = ((32, 24), (32, 128), (8, 512))


def microseconds_per_call(dropout, x: torch.Tensor, calls: int, repeats: int) -> float:
    """Median over `repeats` of the mean time of forward + backward, after a warm-up."""
    grad = torch.ones_like(x)
    for _ in range(10):
        dropout(x).backward(grad)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            dropout(x).backward(grad)
        timings.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(timings)


def graph_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """Dropped attention as an autograd graph of torch ops, under autocast an fp32 softmax cast back (the previous function)."""
    scores = (torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5).masked_fill(~mask, torch.finfo(q.dtype).min)
    keep, keep_probability = lane_keep_mask(scores.shape, p, scores.device)
    probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(torch.where(keep, probabilities * (1.0 / keep_probability), probabilities.new_zeros(())), v)


def attention_step(attend, qkv: tuple[torch.Tensor, ...], mask: torch.Tensor, bf16: bool, _) -> torch.Tensor:
    """One attention forward, under bf16 autocast on the bf16 tensors the projections would hand it, or in fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return attend(*(t.to(torch.bfloat16) if bf16 else t for t in qkv), mask)


def time_attention(args) -> None:
    """Forward + backward of attention with dropout per implementation, at the chunk shapes a training step runs."""
    keep_freed_memory()  # as training does: without it each call's fresh pages, not the arithmetic, are timed
    paths = {
        "torch SDPA, dropout_p": lambda q, k, v, mask: torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, args.p),
        "autograd graph, lane mask": lambda q, k, v, mask: graph_attention(q, k, v, mask, args.p),
        "LaneDropoutAttention": lambda q, k, v, mask: LaneDropoutAttention.apply(q, k, v, mask, args.p, q.shape[-1] ** -0.5),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, p = {args.p}, 12 heads of 32, forward + backward per call (ms)")
    print("| rows × tokens | precision | " + " | ".join(paths) + " | node / SDPA | node / graph |")
    print("|---|---|" + "---|" * (len(paths) + 2))
    for precision in ("fp32", "bf16"):
        for rows, tokens in ATTENTION_CHUNKS:
            q, k, v = (torch.randn(rows, 12, tokens, 32, requires_grad=True) for _ in range(3))
            mask = torch.ones(rows, 1, tokens, tokens, dtype=torch.bool)
            mask[rows // 2 :, ..., tokens * 3 // 4 :] = False  # half the rows padded
            timings = []
            for attend in paths.values():
                step = functools.partial(attention_step, attend, (q, k, v), mask, precision == "bf16")
                calls = max(1, args.calls * 24 * 24 // (tokens * tokens))
                timings.append(microseconds_per_call(step, q, calls, args.repeats) / 1000)
            sdpa, graph, node = timings
            print(f"| {rows} × {tokens} | {precision} | " + " | ".join(f"{t:.1f}" for t in timings) + f" | {node / sdpa:.2f} | {node / graph:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--p", type=float, default=0.1, help="dropout probability (MiniLM's is 0.1)")
    parser.add_argument("--attention", action="store_true", help="time attention with dropout (forward + backward) instead")
    args = parser.parse_args()
    if args.attention:
        time_attention(args)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, p = {args.p}, forward + backward per call")
    print("| tensor | dtype | torch dropout (µs) | lane dropout (µs) | lane / torch |")
    print("|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for name, shape in SHAPES.items():
            x = torch.randn(shape, dtype=dtype, requires_grad=True)
            stock = microseconds_per_call(lambda t: torch.nn.functional.dropout(t, args.p, True), x, args.calls, args.repeats)
            ours = microseconds_per_call(lambda t: lane_dropout(t, args.p, True), x, args.calls, args.repeats)
            print(f"| {name} {tuple(shape)} | {str(dtype).removeprefix('torch.')} | {stock:.0f} | {ours:.0f} | {ours / stock:.2f} |")


if __name__ == "__main__":
    main()
