"""torch.compile of the encoder for training, measured: eager vs inductor on all-MiniLM-L6-v2, fp32 and bf16 autocast.

Two workloads, each a forward + backward + fused AdamW step through the whole sentence-transformers
model (pooling, projection, Matryoshka-free), the compiled part being the backbone's forward:

* `static`: one 32 × 64 token batch, repeated (`dynamic=False`, the best case for compiled kernels);
* `ragged`: 32-row chunks of real training sentences sorted by length (so each chunk has its own
  length, as `training.forward_chunk_rows` produces them), compiled with `dynamic=True`.

It prints the compile (first-pass) cost and the steady-state time per step. Note: sentence-transformers
6 calls the backbone's `forward` method directly, so `backbone.compile()` (nn.Module.compile) is
silently never used; the forward function itself has to be compiled, as here.

    python benchmarks/compile_speed.py
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))  # a cold cache: the compile cost a user pays once
REPO = Path(__file__).resolve().parents[1]


def build(compiled: bool, dynamic: bool):
    import torch

    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    model = build_model(ModelConfig(backbone="bundled:all-MiniLM-L6-v2", max_seq_length=128))
    model.train()
    if compiled:
        backbone = model[0].auto_model
        backbone.forward = torch.compile(backbone.forward, dynamic=dynamic)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)


def step(model, optimizer, features, bf16: bool) -> None:
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(dict(features))["sentence_embedding"].float().pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def ragged_chunks(model) -> list[dict]:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import corpus_sentences

    texts = sorted(corpus_sentences(960), key=len)
    chunks = [texts[i : i + 32] for i in range(0, len(texts), 32)]
    random.Random(0).shuffle(chunks)
    return [model.tokenize(chunk) for chunk in chunks]


def measure(workload: str, compiled: bool, bf16: bool) -> tuple[float, float]:
    """(first pass seconds, steady seconds per step)."""
    model, optimizer = build(compiled, dynamic=workload == "ragged")
    if workload == "static":
        features = model.tokenize(["the quick brown fox jumps over the lazy dog again and again " * 6] * 32)
        batches = [{k: v[:, :64] if hasattr(v, "dim") and v.dim() == 2 else v for k, v in features.items()}] * 20
    else:
        batches = ragged_chunks(model)
    started = time.perf_counter()
    for features in batches[:2] if workload == "static" else batches:
        step(model, optimizer, features, bf16)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for features in batches:
        step(model, optimizer, features, bf16)
    return first, (time.perf_counter() - started) / len(batches)


def main() -> None:
    import torch

    print(f"all-MiniLM-L6-v2, torch {torch.__version__}, {torch.get_num_threads()} threads; forward + backward + fused AdamW")
    print("| workload | precision | eager ms/step | compiled ms/step | compiled / eager | compile + first pass (s) |")
    print("|---|---|---|---|---|---|")
    for workload in ("static", "ragged"):
        for precision in ("fp32", "bf16"):
            _, eager = measure(workload, False, precision == "bf16")
            first, compiled = measure(workload, True, precision == "bf16")
            print(f"| {workload} | {precision} | {eager * 1000:.0f} | {compiled * 1000:.0f} | {compiled / eager:.2f} | {first:.1f} |", flush=True)


if __name__ == "__main__":
    main()
