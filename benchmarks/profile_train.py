"""Where a hybridembed training step spends its time: cProfile over HybridTrainer.train on the quickstart data, top operations by own time.

Run it alone (two jobs on two cores distort each other). Prints a Markdown table of the heaviest
functions (torch kernels show up as built-in methods) with their share of the training wall time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    from train_throughput import recipe

    from hybridembed.training.builder import prepare_training

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    trainer = prepare_training(recipe(args.steps, args.batch_size, "/tmp/hybridembed-profile"))
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    trainer.train()
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats
    rows = sorted(((own, calls, func) for func, (_, calls, own, _, _) in stats.items()), reverse=True)[: args.top]
    print(f"\n{args.steps} steps, batch {args.batch_size}, quickstart data, wall {wall:.1f} s ({wall / args.steps:.2f} s/step)")
    print("| function | calls | own time (s) | share of wall |")
    print("|---|---|---|---|")
    for own, calls, (filename, line, name) in rows:
        where = name if filename == "~" else f"{Path(filename).name}:{line}({name})"
        print(f"| `{where}` | {calls} | {own:.2f} | {own / wall:.0%} |")


if __name__ == "__main__":
    main()
