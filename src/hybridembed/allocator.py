"""glibc malloc settings for training on Linux: big tensors from the heap, freed memory kept for the next step instead of fresh pages.

glibc serves every allocation above its mmap threshold (at most 32 MB on 64-bit) with a fresh
`mmap` and returns it with `munmap` on free, so each step of a long-input CPU run touches new
pages for every large activation — one page fault per 4 KB, which the kernel zero-fills. The
attention probabilities of one layer at 512 tokens are 8 rows × 12 heads × 512² × 4 B = 100 MB;
`benchmarks/allocator_speed.py` and docs/performance.md show what the faults cost. tcmalloc and
jemalloc (through LD_PRELOAD) keep freed memory and do not have this problem, but few users preload
them. `keep_freed_memory()` asks glibc for the same with `mallopt`: no mmap for large blocks
(they come from the heap) and no trimming of the heap's free top, so a step's tensors reuse the
previous step's pages. The cost: the process keeps its peak heap until it exits, which a training
run reaches in its first steps anyway. Nothing happens under another allocator, off glibc, in a
multi-process (torchrun) run, or with `training.keep_freed_memory: false`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# No trimming at all: mallopt's int value is taken as a size_t, so −1 is SIZE_MAX (2**31 − 1, the
# largest positive int, still trims a heap that grew past 2 GB — long-input steps do).
NEVER = -1
# Allocators whose preloading means malloc is not glibc's (they cache freed memory themselves).
OTHER_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
# Where Debian/Ubuntu's libtcmalloc-minimal4 installs tcmalloc (the Makefile's TCMALLOC lists the same paths).
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")

_applied: bool | None = None  # the result of the first call; the settings hold for the whole process


def installed_tcmalloc() -> str | None:
    """The path of an installed tcmalloc to preload (LD_PRELOAD), or None."""
    return next((path for path in TCMALLOC_PATHS if os.path.exists(path)), None)


def preloaded_allocator() -> str | None:
    """The name of the allocator this process preloaded instead of glibc's malloc, or None."""
    preloaded = os.environ.get("LD_PRELOAD", "")
    return next((name for name in OTHER_ALLOCATORS if name in preloaded), None)


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True when glibc accepted them (False: another allocator, another libc, or refused)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if not sys.platform.startswith("linux") or preloaded_allocator():
        return False
    # Multi-process runs (torchrun sets WORLD_SIZE) are left alone: not measured with these settings, and
    # one CI run saw two 2-rank gloo tests abort at exit ("terminate called without an active exception").
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only (musl's mallopt ignores these parameters)
        return False
    applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER))
    if applied:
        logger.info("glibc malloc: large blocks from the heap and freed memory kept (training.keep_freed_memory)")
    return applied
