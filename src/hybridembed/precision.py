"""What the recipe's `auto` settings mean on this machine: the training precision and the forward chunk size.

Precision: bf16 where matmuls run natively in bf16, else fp32.

transformers and accelerate take `bf16=True` on a CPU too (torch.autocast on "cpu"), but leave the
choice to the user; on a CPU without native bf16 dot products bf16 autocast is slower than fp32
(NOTES-cpu.md), while oneDNN runs bf16 matmuls several times faster than fp32 on one with AMX-BF16
(Intel Sapphire Rapids and later; 6.5× measured) or AVX512-BF16 (AMD Zen 4, Intel Cooper Lake; 4.2×
measured on an AMD EPYC; docs/performance.md). `auto` makes that choice once, here, from the CPU
flags — not from a timing probe, so the same recipe on the same machine always trains the same
way — for training (recipe `training.precision`) and the benchmarks.

Forward chunks (`training.forward_chunk_rows`): on a CPU, embedding a batch's length-sorted texts in
chunks of at most 32 rows cuts padding at little cost per call (docs/performance.md); on a GPU a kernel
launch costs more than padding, so one forward per batch is the better default. Where padded chunks
are cut (`training.forward_chunk_cost_tokens`, hybridembed.losses.forward.ChunkPlan) weighs the
padding a cut saves against what one more forward and backward costs on a CPU, in tokens. Packed
forwards (`training.packing`) have no padding to save, so on a CPU they take chunks of up to 256 rows.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU reports AMX-BF16 or AVX512-BF16 (Linux /proc/cpuinfo flags; other systems: False)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return ("amx_bf16" in flags and "amx_tile" in flags) or "avx512_bf16" in flags


CPU_CHUNK_ROWS = 32
# Packed forwards (training.packing) compute no padding, so fewer, larger chunks only save calls; the
# bound keeps a chunk's activations in memory (real tokens of at most this many rows).
CPU_PACKED_CHUNK_ROWS = 256
# What one more chunk's forward and backward costs beyond its tokens, in tokens, on a CPU:
# all-MiniLM-L6-v2 in bf16, fitted by benchmarks/chunk_cost.py (docs/performance.md).
CPU_CHUNK_COST_TOKENS = 128


def resolve_chunk_rows(chunk_rows: int | str | None, packing: bool = False) -> int | None:
    """Rows per forward chunk for `training.forward_chunk_rows`; `auto`: 32 on a CPU (256 packed), one forward (None) on a GPU."""
    if chunk_rows != "auto":
        return None if chunk_rows is None else int(chunk_rows)
    import torch

    return None if torch.cuda.is_available() else CPU_PACKED_CHUNK_ROWS if packing else CPU_CHUNK_ROWS


def resolve_chunk_cost(cost_tokens: int | str | None) -> int | None:
    """Tokens one more forward chunk costs, for `training.forward_chunk_cost_tokens`; `auto`: the CPU figure; None: fixed chunks."""
    return CPU_CHUNK_COST_TOKENS if cost_tokens == "auto" else None if cost_tokens is None else int(cost_tokens)


def resolve_precision(precision: str) -> str:
    """`fp32`, `bf16` or `fp16` for a recipe's `precision`; `auto`: bf16 on a bf16-capable GPU or a CPU with native bf16, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_native() else "fp32"


def bf16_is_native(device: str | None = None) -> bool:
    """Whether `device` (default: the GPU when there is one, else the CPU) computes bf16 natively: the one rule behind every `auto`."""
    import torch

    on_gpu = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if on_gpu:
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()


SERVING_DTYPES = ("float32", "float16", "bfloat16", "auto")  # `serve --dtype` (torch backend), `encode --dtype`


def resolve_serving_dtype(dtype: str, device: str | None = None) -> str:
    """torch dtype name for `serve` / `encode --dtype`; `auto`: bfloat16 where bf16 is native (as `precision: auto`), else float32.

    On a CPU with AVX512-BF16 the serve engine encodes 2.2× faster with bf16 weights at the same
    STS-B Spearman (docs/performance.md); elsewhere bf16 weights would be slower on a CPU.
    """
    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16_is_native(device) else "float32"
