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
    from train_throughput import OURS, recipe, setting

    from hybridembed.training.builder import prepare_training

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32")
    parser.add_argument("--ops", action="store_true", help="torch.profiler instead of cProfile: torch operators (backward ones too) by self CPU time")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                        help=f"a recipe setting on top of train_throughput.py's arm ({OURS}), e.g. --set training.lane_dropout=false")  # fmt: skip
    args = parser.parse_args()
    from hybridembed.precision import resolve_precision

    settings = {**OURS, **dict(args.set)}
    trainer = prepare_training(recipe(args.steps, args.batch_size, "/tmp/hybridembed-profile", resolve_precision(args.precision), settings))
    if args.ops:
        profile_ops(trainer, args)
        return
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


def profile_ops(trainer, args) -> None:
    """torch.profiler over the whole run: every aten operator (forward and autograd's backward ones) by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train()
    wall = time.perf_counter() - started
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    print(f"\n{args.steps} steps, batch {args.batch_size}, quickstart data, precision {args.precision}, wall {wall:.1f} s (profiled: slower than unprofiled)")
    print("| operator | calls | self CPU (s) | share of wall |")
    print("|---|---|---|---|")
    for e in events:
        print(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e6:.2f} | {e.self_cpu_time_total / 1e6 / wall:.0%} |")


if __name__ == "__main__":
    main()
