"""Keep the objects a training run starts with out of Python's cyclic garbage collector while it trains.

A training process holds hundreds of thousands of long-lived Python objects before step 1 — torch's
and transformers' modules, the model's parameters' wrappers, and the loaded datasets' rows (one dict
and several strings per row) — and none of them becomes cyclic garbage while it trains. Python's
full (generation 2) collection still walks all of them whenever enough new objects have survived:
in the benchmark's quickstart run one 0.28–0.36 s pause inside 40 steps that train in 14–17 s (~530 k
tracked objects; `benchmarks/profile_train.py --gc`, docs/performance.md), and a pause grows with the rows
held in memory.
`gc.freeze()` moves every object tracked so far into a permanent generation the collector skips;
`frozen_startup_objects()` does that for the duration of a `train()` and unfreezes afterwards, so
anything of the startup objects that became garbage meanwhile is collected then. What stays: cycles
created during training are collected as before. Nothing is collected up front (that would cost the
full pass it saves); garbage already present when training starts is kept until it ends.
The standard library has the mechanism; what this adds is using it around a training loop, nested
calls included (stages call `train()` one after another; only the outermost call unfreezes).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0  # nested frozen_startup_objects() calls: only the outermost one unfreezes


@contextmanager
def frozen_startup_objects() -> Iterator[None]:
    """Within the block, the objects that existed when it began are skipped by the cyclic GC; afterwards they are collectable again."""
    global _depth
    if _depth == 0:
        gc.freeze()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            gc.unfreeze()


__all__ = ["frozen_startup_objects"]
