"""Times one dropout forward + backward on a CPU: torch's `F.dropout` against hybridembed's `lane_dropout`.

The shapes are those of a MiniLM training chunk (32 rows of ~24 tokens): hidden states (384 wide),
the feed-forward intermediate (1536 wide) and attention probabilities (12 heads). Prints a markdown
table of microseconds per call (median of `--repeats` timings of `--calls` calls each) and the ratio.

    python benchmarks/dropout_speed.py [--calls 200] [--repeats 5] [--p 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hybridembed.modeling.dropout import lane_dropout

SHAPES = {"hidden states": (32 * 24, 384), "feed-forward": (32 * 24, 1536), "attention probabilities": (32, 12, 24, 24)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--p", type=float, default=0.1, help="dropout probability (MiniLM's is 0.1)")
    args = parser.parse_args()
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
