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
    parser.add_argument("--gemms", action="store_true",
                        help="torch.profiler with shapes: the step's matmuls in place and each shape replayed alone, against the 2048² peak")  # fmt: skip
    parser.add_argument("--masks", action="store_true",
                        help="time every lane-dropout mask draw in place: by dtype and rank, ns per element and share of the wall")  # fmt: skip
    parser.add_argument("--mask-block-lanes", type=int, default=None, metavar="N",
                        help="with --masks: draw masks N lanes at a time instead of the default "
                        "(hybridembed.modeling.dropout.BLOCK_LANES); a huge N draws each mask whole, as before 270426b")  # fmt: skip
    parser.add_argument("--gc", action="store_true",
                        help="time every cyclic-GC collection during training, by generation: as the trainer runs (its startup objects frozen, "
                        "hybridembed.training.gc_freeze) and, in a second run, without the freeze")  # fmt: skip
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                        help=f"a recipe setting on top of train_throughput.py's arm ({OURS}), e.g. --set training.lane_dropout=false")  # fmt: skip
    args = parser.parse_args()
    from hybridembed.precision import resolve_precision

    settings = {**OURS, **dict(args.set)}
    trainer = prepare_training(recipe(args.steps, args.batch_size, "/tmp/hybridembed-profile", resolve_precision(args.precision), settings))
    if args.ops:
        profile_ops(trainer, args)
        return
    if args.gemms:
        profile_gemms(trainer, args, resolve_precision(args.precision))
        return
    if args.masks:
        profile_masks(trainer, args)
        return
    if args.gc:
        profile_gc(
            trainer,
            args,
            lambda: prepare_training(recipe(args.steps, args.batch_size, "/tmp/hybridembed-profile-2", resolve_precision(args.precision), settings)),
        )
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


class MaskTimer:
    """Wraps a mask-drawing function `(shape, p, dtype, device) -> (factor, keep probability)`, adding up calls, elements and seconds by (dtype, rank)."""

    def __init__(self, draw):
        self.draw = draw
        self.totals: dict[tuple[str, int], list[float]] = {}

    def __call__(self, shape, p, dtype, device):
        started = time.perf_counter()
        drawn = self.draw(shape, p, dtype, device)
        total = self.totals.setdefault((str(dtype).removeprefix("torch."), len(shape)), [0, 0, 0.0])
        total[0] += 1
        total[1] += drawn[0].numel()
        total[2] += time.perf_counter() - started
        return drawn


def profile_masks(trainer, args) -> None:
    """Every lane-dropout mask draw of the run, timed where it happens (in a step's cold caches, unlike a loop of draws alone)."""
    import hybridembed.modeling.dropout as dropout

    if args.mask_block_lanes is not None:
        if args.mask_block_lanes < 4 or args.mask_block_lanes % 4:
            sys.exit("--mask-block-lanes must be a positive multiple of 4 (each block takes whole 64-bit words)")
        dropout.BLOCK_LANES = args.mask_block_lanes
    timer = MaskTimer(dropout.lane_keep_factor)
    dropout.lane_keep_factor = timer  # the dropout paths look it up in the module at each call
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    print(f"\n{args.steps} steps, batch {args.batch_size}, quickstart data, precision {args.precision}, wall {wall:.1f} s, "
          f"mask blocks of {dropout.BLOCK_LANES} lanes")  # fmt: skip
    print("| mask dtype | rank | draws | elements (M) | seconds | ns per element |")
    print("|---|---|---|---|---|---|")
    for (dtype, rank), (calls, elements, seconds) in sorted(timer.totals.items()):
        print(f"| {dtype} | {rank} | {calls} | {elements / 1e6:.1f} | {seconds:.3f} | {seconds / max(elements, 1) * 1e9:.2f} |")
    elements, seconds = (sum(total[i] for total in timer.totals.values()) for i in (1, 2))
    print(f"masks: {seconds / wall:.1%} of the wall, {seconds / max(elements, 1) * 1e9:.2f} ns per element")


class CollectionTimer:
    """A `gc.callbacks` entry adding up the collections that start and stop while it is on: count, seconds and objects collected by generation."""

    def __init__(self) -> None:
        self.on = False
        self.started = 0.0
        self.totals: dict[int, list[float]] = {}

    def __call__(self, phase: str, info: dict) -> None:
        if not self.on:
            return
        if phase == "start":
            self.started = time.perf_counter()
            return
        total = self.totals.setdefault(info["generation"], [0, 0.0, 0])
        total[0] += 1
        total[1] += time.perf_counter() - self.started
        total[2] += info["collected"]


def profile_gc(trainer, args, second_trainer) -> None:
    """Cyclic-GC pauses inside `train()`: the trainer as it runs (startup objects frozen), then a fresh one with the freeze turned off."""
    import contextlib
    import gc

    import hybridembed.training.trainer as trainer_module

    timer = CollectionTimer()
    gc.callbacks.append(timer)
    rows = []
    for label, make in (("startup objects frozen (the trainer's default)", lambda: trainer), ("not frozen", second_trainer)):
        if label == "not frozen":
            trainer_module.frozen_startup_objects = contextlib.nullcontext  # the name the trainer's train() looks up
        current = make()
        timer.totals, timer.on = {}, True
        current.train()
        timer.on = False
        rows.append((label, len(gc.get_objects()), dict(timer.totals)))
    gc.callbacks.remove(timer)
    print(f"\n{args.steps} steps, batch {args.batch_size}, quickstart data, precision {args.precision}")
    print("| run | tracked objects after | generation | collections | seconds | objects collected |")
    print("|---|---|---|---|---|---|")
    for label, objects, totals in rows:
        for generation, (count, seconds, collected) in sorted(totals.items()):
            print(f"| {label} | {objects} | {generation} | {count} | {seconds:.3f} | {collected} |")
    full = [sum(seconds for generation, (_, seconds, _) in totals.items() if generation == 2) for _, _, totals in rows]
    print(f"full collections: {full[0]:.3f} s frozen, {full[1]:.3f} s not frozen")


# The matmul operators a training step runs (forward and autograd's backward), and how to rebuild one from its input shapes.
GEMMS = {
    "aten::mm": lambda shapes: (shapes[0], shapes[1]),
    "aten::addmm": lambda shapes: (shapes[1], shapes[2]),
    "aten::bmm": lambda shapes: (shapes[0], shapes[1]),
    "aten::baddbmm": lambda shapes: (shapes[1], shapes[2]),
}


def gemm_flops(a: list[int], b: list[int]) -> float:
    """2·m·k·n (times the batch for bmm) of a product of an (…, m, k) and a (…, k, n) operand."""
    batch = a[0] if len(a) == 3 else 1
    return 2.0 * batch * a[-2] * a[-1] * b[-1]


def replay_gemm(op: str, a: list[int], b: list[int], dtype, seconds: float = 0.05) -> float:
    """Seconds per call of the product of contiguous random operands of these shapes, best of five timings."""
    import torch

    x, y = torch.randn(a, dtype=dtype), torch.randn(b, dtype=dtype)
    product = torch.bmm if op in ("aten::bmm", "aten::baddbmm") else torch.mm
    product(x, y)
    started = time.perf_counter()
    calls = 0
    while time.perf_counter() - started < seconds:
        product(x, y)
        calls += 1
    calls = max(calls, 1)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            product(x, y)
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def profile_gemms(trainer, args, precision: str) -> None:
    """How fast the step's matmuls run, in place and alone, and the peak fraction they would allow if nothing else took time.

    The benchmark's peak is the best rate of 2048² matmuls. A training step of a small encoder
    multiplies much smaller operands (rows of a chunk × 384 or 1536); this measures, shape by
    shape, what those products reach alone on this CPU — the ceiling of `peak_fraction` when every
    other operator took no time at all. Operands are replayed contiguous (the profiler records
    shapes, not strides), so transposed backward operands may differ from their in-place rate.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile
    from train_throughput import matmul_peak

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = matmul_peak(precision)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        trainer.train()
    wall = time.perf_counter() - started
    shapes: dict[tuple, list[float]] = {}  # (op, a, b) → [calls, self seconds in place]
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in GEMMS and e.input_shapes:
            a, b = GEMMS[e.key](e.input_shapes)
            entry = shapes.setdefault((e.key, tuple(a), tuple(b)), [0, 0.0])
            entry[0] += e.count
            entry[1] += e.self_cpu_time_total / 1e6
    flops = in_place = alone = 0.0
    rows = []
    for (op, a, b), (calls, seconds) in shapes.items():
        one = replay_gemm(op, list(a), list(b), dtype)
        f = gemm_flops(list(a), list(b)) * calls
        flops, in_place, alone = flops + f, in_place + seconds, alone + one * calls
        rows.append((seconds, op, a, b, calls, f / seconds / peak if seconds else 0.0, f / (one * calls) / peak))
    print(f"\n{args.steps} steps, batch {args.batch_size}, quickstart data, precision {precision}, wall {wall:.1f} s (profiled), "
          f"{precision} 2048² matmul peak {peak / 1e9:.0f} GFLOP/s, {len(shapes)} distinct matmul shapes")  # fmt: skip
    print("| operator | operand shapes | calls | self CPU (s) | in place: fraction of peak | alone: fraction of peak |")
    print("|---|---|---|---|---|---|")
    for seconds, op, a, b, calls, here, solo in sorted(rows, reverse=True)[: args.top]:
        print(f"| `{op}` | {list(a)} × {list(b)} | {calls} | {seconds:.2f} | {here:.2f} | {solo:.2f} |")
    print(f"matmuls: {in_place / wall:.0%} of the profiled wall; in place {flops / in_place / peak:.2f} of the peak, "
          f"replayed alone {flops / alone / peak:.2f} (the peak_fraction ceiling if every other operator took no time)")  # fmt: skip


if __name__ == "__main__":
    main()
