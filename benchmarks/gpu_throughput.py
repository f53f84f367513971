"""Training throughput and model-FLOPs utilisation of the GPU path: padded vs packed forwards, SDPA vs FlashAttention-2.

The prepared device check of issue 18, runnable on any machine (`--tiny` is the CPU smoke test the
test suite runs). Arms, each trained for `--steps` steps (the first `--warmup` untimed) in bf16
autocast where the device supports it:

* `bert-base/<attention>/<padded|packed>`: a BERT-base-size encoder (768 hidden, 12 layers, 12 heads;
  random weights — speed does not depend on them) on the quickstart's multi-task data (STS-B pairs,
  paraphrase pairs, FlagEmbedding triples, Banking77 with negative labels), one forward per batch
  (`forward_chunk_rows: null`, the GPU default), with `training.packing` off and on, for SDPA and —
  when the `flash_attn` package imports and the device is CUDA — `flash_attention_2`;
* `quickstart`: the quickstart recipe itself (all-MiniLM-L6-v2 → 768, Matryoshka) as shipped.

It prints tokens/s (non-padding tokens of the batches) and MFU: model FLOPs (6 × non-embedding
parameters × tokens + 12 × layers × hidden × Σ row length², what the rows need, not what padding
adds) per second over the device's dense bf16 peak — measured in the same run with large matmuls
and, on an H100/H200, also over the nominal 989 TFLOP/s.

    python benchmarks/gpu_throughput.py                 # on the GPU machine
    python benchmarks/gpu_throughput.py --tiny          # anywhere: a 2-layer model, 3 steps per arm
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import REPO, RowCounter, make_timer  # noqa: E402  (the same counters as the CPU benchmark)

NOMINAL_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, no sparsity: vendor data sheets


def measured_peak(device: str, dtype_name: str) -> float:
    """Best rate of square matmuls in the training dtype on `device` (8192² on a GPU, 2048² on a CPU)."""
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    size = 8192 if device == "cuda" else 2048
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    best = 0.0
    for _ in range(5):
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(5):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 * 5 / (time.perf_counter() - started))
    return best


def encoder_backbone(out: Path, tiny: bool) -> Path:
    from hybridembed.modeling.tiny import build_tiny_backbone

    sys.path.insert(0, str(REPO / "tests"))
    from helpers import corpus_sentences

    size = {"hidden_size": 64, "num_layers": 2, "num_heads": 4} if tiny else {"hidden_size": 768, "num_layers": 12, "num_heads": 12}
    return build_tiny_backbone(out, corpus_sentences(), kind="bert", vocab_size=8000, max_positions=512, **size)


def arm_recipe(out: Path, steps: int, precision: str, backbone: str | None, attention: str | None, packing: bool | None):
    from hybridembed.recipe import load_recipe

    overrides = {"training.max_steps": steps, "training.output_dir": str(out), "training.report_to": [], "training.precision": precision}
    if backbone is not None:  # the BERT-base arms: one forward per batch, no projection (a plain encoder)
        overrides |= {"model.backbone": backbone, "model.projection_dim": None, "model.matryoshka_dims": None, "training.forward_chunk_rows": None}
    if attention is not None:
        overrides["model.attn_implementation"] = attention
    if packing is not None:
        overrides["training.packing"] = packing
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", overrides)
    recipe.eval = None
    return recipe


def run_arm(recipe, warmup: int, device: str) -> dict:
    import torch
    from transformers import TrainerCallback

    from hybridembed.training.builder import prepare_training

    trainer = prepare_training(recipe)
    counter = RowCounter(trainer.data_collator)
    counter.count_executed(trainer.model)
    trainer.data_collator = counter
    if device == "cuda":

        class Synchronize(TrainerCallback):  # step times must include the queued kernels
            def on_step_end(self, args, state, control, **kwargs):
                torch.cuda.synchronize()

        trainer.add_callback(Synchronize())
    timer = make_timer(counter, warmup)
    trainer.add_callback(timer)
    trainer.train()
    rows, tokens, flops, _ = timer.rates()
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return {"rows": rows, "tokens": tokens, "flops": flops, "memory": memory}


def main() -> None:
    import torch

    from hybridembed.precision import resolve_precision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per arm (default 40; 3 with --tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 5; 1 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-hidden encoder: the CPU smoke test")
    args = parser.parse_args()
    steps = args.steps or (3 if args.tiny else 40)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision("auto")
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    attentions = ["sdpa"] + (["flash_attention_2"] if device == "cuda" and importlib.util.find_spec("flash_attn") else [])
    peak = measured_peak(device, precision)
    nominal = next((v for k, v in NOMINAL_BF16_PEAK.items() if k in name), None) if precision == "bf16" else None
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        backbone = str(encoder_backbone(Path(tmp) / "encoder", args.tiny))
        for attention in attentions:
            for packing in (False, True):
                label = f"{'tiny' if args.tiny else 'bert-base'}/{attention}/{'packed' if packing else 'padded'}"
                print(f"== {label}", flush=True)
                recipe = arm_recipe(Path(tmp) / label.replace("/", "-"), steps, precision, backbone, attention, packing)
                results[label] = run_arm(recipe, warmup, device)
        print("== quickstart", flush=True)
        results["quickstart (MiniLM → 768, as shipped)"] = run_arm(arm_recipe(Path(tmp) / "quickstart", steps, precision, None, None, None), warmup, device)
    print()
    print(f"device: {name}, torch {torch.__version__}, precision {precision}, {steps} steps per arm ({warmup} untimed), "
          f"measured {precision} matmul peak {peak / 1e12:.1f} TFLOP/s" + (f", nominal {nominal / 1e12:.0f} TFLOP/s" if nominal else ""))  # fmt: skip
    print("| arm | rows/s | tokens/s | model TFLOP/s | MFU (measured peak) | MFU (nominal peak) | max memory (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for label, r in results.items():
        mfu_nominal = f"{r['flops'] / nominal:.2f}" if nominal else "–"
        print(f"| {label} | {r['rows']:.1f} | {r['tokens']:.0f} | {r['flops'] / 1e12:.2f} | {r['flops'] / peak:.2f} | {mfu_nominal} | {r['memory']:.1f} |")


if __name__ == "__main__":
    main()
