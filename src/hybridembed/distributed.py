"""Cross-device pieces torch.distributed lacks for contrastive training: an all-gather with exact gradients and per-step process groups.

What this adds: `gather_rows` concatenates a tensor from every rank of a group (rows may
differ per rank) and back-propagates by summing each rank's gradient for its own rows, so a loss
computed on gathered embeddings gives the same gradients as one process on the concatenated batch
(after DDP's averaging). `GatherGroups` holds the process groups of the rank subsets that run a
gathering loss together in a step, created up front on every rank (group creation is collective).
"""

from __future__ import annotations

import atexit
import contextvars
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def close_process_group() -> bool:
    """After a successful run: wait for every rank, then destroy the process groups; False outside a multi-process run."""
    global _CPU_GROUP
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()
    dist.destroy_process_group()
    _CPU_GROUP = None
    return True


def finish_distributed_run(code: int = 0) -> None:
    """End a finished multi-process run: close its process groups and leave without interpreter teardown.

    A rank that leaves through the interpreter's normal shutdown can abort there ("terminate called
    without an active exception", SIGABRT) after a complete run, and torchrun then reports the whole
    run as failed. destroy_process_group only unregisters a gloo group: its C++ object and worker
    threads stay alive (held outside Python's reach; measured: both `pt_gloo_runloop` threads survive
    it and a full `gc.collect()`), and they are torn down with the interpreter — where, most likely,
    a gloo thread that needs the GIL is killed mid-call (not reproduced here; CI hit it). So a rank
    does what the shutdown would do for the user — wait for non-daemon threads, run the `atexit`
    handlers (logging, experiment trackers), flush stdio — and then exits with `os._exit`. Outside a
    multi-process run (nothing to close) it returns.
    """
    if not close_process_group():
        return
    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # the stdlib's own shutdown step; no public name for it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _GatherRows(torch.autograd.Function):
    """all_gather of tensors whose first dimension may differ per rank; backward sums the gradients over the group."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group, sizes: list[int]) -> torch.Tensor:
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded.contiguous(), group=group)
        ctx.group, ctx.sizes, ctx.rank = group, sizes, dist.get_rank(group)
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)], dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad = grad_output.contiguous().clone()
        # Every rank's loss used every rank's rows: the gradient of a row is the sum over the group.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_rows(tensor: torch.Tensor, group=None) -> tuple[torch.Tensor, int]:
    """Rows of `tensor` from every rank of `group` in rank order, and where this rank's rows start.

    Outside a distributed run (or with group None) it returns `(tensor, 0)`.
    """
    if group is None or not is_distributed() or dist.get_world_size(group) == 1:
        return tensor, 0
    sizes_t = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes_t, torch.tensor([tensor.shape[0]], device=tensor.device), group=group)
    sizes = [int(s.item()) for s in sizes_t]
    return _GatherRows.apply(tensor, group, sizes), sum(sizes[: dist.get_rank(group)])


_active_group: contextvars.ContextVar = contextvars.ContextVar("hybridembed_gather_group", default=None)


@contextmanager
def gathering_over(group) -> Iterator[None]:
    """Within the block, in-batch-negative losses gather embeddings over `group` (None: local only)."""
    token = _active_group.set(group)
    try:
        yield
    finally:
        _active_group.reset(token)


def active_group():
    return _active_group.get()


class GatherGroups:
    """Process groups for the rank subsets that share negatives; the whole world is always available."""

    def __init__(self, subsets: Iterable[frozenset[int]] = ()) -> None:
        self.groups: dict[frozenset[int], object] = {}
        if not is_distributed():
            return
        world = frozenset(range(dist.get_world_size()))
        self.groups[world] = dist.group.WORLD
        _cpu_group()
        # new_group is collective: every rank creates every subset, in the same (sorted) order.
        for subset in sorted({s for s in subsets if len(s) > 1 and s != world}, key=lambda s: sorted(s)):
            self.groups[subset] = dist.new_group(sorted(subset))

    def for_ranks(self, ranks: frozenset[int]):
        if len(ranks) <= 1:
            return None
        try:
            return self.groups[ranks]
        except KeyError:
            raise RuntimeError(f"no process group was created for ranks {sorted(ranks)}") from None


def all_gather_ints(value: int) -> list[int]:
    """One small integer from every rank (used to agree on which ranks run which task this step)."""
    if not is_distributed():
        return [value]
    out = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(out, torch.tensor([value], dtype=torch.long), group=_cpu_group())
    return [int(t.item()) for t in out]


_CPU_GROUP = None


def _cpu_group():
    """A gloo group for small host-side agreements, so NCCL runs need no device copies for them."""
    global _CPU_GROUP
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    if _CPU_GROUP is None:
        _CPU_GROUP = dist.new_group(backend="gloo")
    return _CPU_GROUP
