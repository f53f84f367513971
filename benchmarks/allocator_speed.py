"""Long-input CPU training with glibc's default malloc, with `training.keep_freed_memory` (the default), and under tcmalloc.

At 512 tokens one layer's attention probabilities are tens of MB; glibc maps every block above its
mmap threshold afresh and unmaps it on free, so each step page-faults through all of them again
(hybridembed.allocator). This trains all-MiniLM-L6-v2 (the quickstart model section) on retrieval
rows with long passages — MS MARCO passages from ../shared/data joined to about `--words` words,
3 hard negatives per row; the content does not matter, only the lengths — for `--steps` steps
(`--warmup` untimed), each allocator setting in a fresh process (the settings are process-wide),
in turn, `--repeats` times, and prints pairs/s, batch tokens/s and page faults per timed step.
Speed only: nothing is evaluated. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hybridembed.allocator import TCMALLOC_PATHS, installed_tcmalloc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "en" / "msmarco_trecdl19_subset" / "corpus.jsonl"
TCMALLOC = installed_tcmalloc() or TCMALLOC_PATHS[0]
# name → (training.keep_freed_memory, LD_PRELOAD)
MODES = {
    "glibc malloc, defaults (keep_freed_memory: false)": (False, None),
    "glibc malloc, keep_freed_memory: true (hybridembed's default)": (True, None),
    "tcmalloc through LD_PRELOAD": (False, TCMALLOC),
}
SHORT_NAMES = dict(zip(("default", "keep", "tcmalloc"), MODES, strict=True))  # --only's names for MODES


def long_rows(words: int, rows: int, seed: int = 0) -> list[dict]:
    """Retrieval rows whose passages are corpus passages joined to about `words` words."""
    passages = [json.loads(line)["text"] for line in CORPUS.open(encoding="utf-8")]
    rng = random.Random(seed)

    def passage() -> str:
        text: list[str] = []
        while len(text) < words:
            text += rng.choice(passages).split()
        return " ".join(text[:words])

    return [{"query": " ".join(passage().split()[:12]), "pos": [passage()], "neg": [passage() for _ in range(3)]} for _ in range(rows)]


def worker(args) -> None:
    """One allocator setting in this process: train and print one JSON line of rates."""
    import yaml
    from train_throughput import OURS, RowCounter, make_timer

    from hybridembed.recipe import recipe_from_mapping
    from hybridembed.training.builder import prepare_training

    raw = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text(encoding="utf-8"))
    raw["model"]["max_seq_length"] = args.max_length
    raw["datasets"] = [{"path": args.data, "task": "retrieval", "num_negatives": 3, "batch_size": args.batch_size}]
    raw["training"] |= {"max_steps": args.steps, "output_dir": args.out, "report_to": [], "precision": "auto", "save_steps": None,
                        "keep_freed_memory": args.keep, **{k.removeprefix("training."): v for k, v in OURS.items()}}  # fmt: skip
    raw.pop("eval", None)
    trainer = prepare_training(recipe_from_mapping(raw, REPO / "recipes"))
    counter = RowCounter(trainer.data_collator)
    trainer.data_collator = counter
    timer = make_timer(counter, args.warmup)
    trainer.add_callback(timer)
    trainer.train()
    rows, tokens, _, faults = timer.rates()
    print(json.dumps({"rows": rows, "tokens": tokens, "faults": faults}))


def encode_worker(args) -> None:
    """One allocator setting in this process: `hybridembed encode`'s path over the rows' passages; one JSON line."""
    from hybridembed.commands.encode import EncodeInput, encode_in_blocks
    from hybridembed.modeling.model import build_model
    from hybridembed.recipe import ModelConfig

    if args.keep:
        from hybridembed.allocator import keep_freed_memory

        keep_freed_memory()
    model = build_model(ModelConfig(backbone="bundled:all-MiniLM-L6-v2", max_seq_length=args.max_length)).eval()
    texts = [text for row in map(json.loads, Path(args.data).read_text(encoding="utf-8").splitlines()) for text in row["neg"]]
    data = EncodeInput(texts=texts, ids=None, lines=list(range(1, len(texts) + 1)), empty_lines=[])
    encode_in_blocks(model, EncodeInput(texts=texts[:32], ids=None, lines=list(range(1, 33)), empty_lines=[]), "warm-up", 32, None, progress=False)
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        encode_in_blocks(model, data, "passages", 32, None, progress=False)
        best = min(best, time.perf_counter() - started)
    print(json.dumps({"rows": len(texts) / best, "tokens": 0.0, "faults": 0.0}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--words", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--encode", action="store_true",
                        help="time encoding instead: `hybridembed encode`'s path (batches of ≤ 32) over the passages, best of two passes")  # fmt: skip
    parser.add_argument("--only", choices=list(SHORT_NAMES), action="append",
                        help="run only these settings (repeatable): glibc defaults, keep_freed_memory, tcmalloc")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=lambda v: v == "true", default=True, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return encode_worker(args) if args.encode else worker(args)
    import torch

    chosen = [name for short, name in SHORT_NAMES.items() if not args.only or short in args.only]
    modes = {name: MODES[name] for name in chosen if MODES[name][1] is None or MODES[name][1].is_file()}
    results: dict[str, list[dict]] = {name: [] for name in modes}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "long.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in long_rows(args.words, args.batch_size * args.steps)), encoding="utf-8")
        for repeat in range(args.repeats):
            for name, (keep, preload) in modes.items():
                env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | ({"LD_PRELOAD": str(preload)} if preload else {})
                command = [sys.executable, __file__, "--worker", "--keep", str(keep).lower(), "--data", str(data), "--out", f"{tmp}/run",
                           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                           "--max-length", str(args.max_length)] + (["--encode"] if args.encode else [])  # fmt: skip
                started = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).parent)
                if done.returncode != 0:
                    sys.exit(f"{name}: the worker failed:\n{done.stderr[-3000:]}")
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"run {repeat + 1}/{args.repeats}, {name}: {results[name][-1]['rows']:.2f} pairs/s ({time.perf_counter() - started:.0f} s)", flush=True)
    best = {name: max(runs, key=lambda r: r["rows"]) for name, runs in results.items()}
    print()
    what = (f"encoding the rows' {len(long_rows(args.words, args.batch_size * args.steps)) * 3} negative passages, batches of ≤ 32, best of two passes"
            if args.encode else f"retrieval rows with 3 negatives, batch {args.batch_size}, {args.steps} steps ({args.warmup} untimed), precision auto")  # fmt: skip
    model = "bundled all-MiniLM-L6-v2" if args.encode else "all-MiniLM-L6-v2 (quickstart model section)"
    print(f"model: {model}, passages of ~{args.words} words, max_seq_length {args.max_length}, "
          f"{what}, torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats} run(s)")  # fmt: skip
    if args.encode:
        print("| malloc | texts/s |\n|---|---|")
        for name, run in best.items():
            print(f"| {name} | {run['rows']:.1f} |")
    else:
        print("| malloc | pairs/s | batch tokens/s | page faults per step |\n|---|---|---|---|")
        for name, run in best.items():
            print(f"| {name} | {run['rows']:.2f} | {run['tokens']:.0f} | {run['faults']:.0f} |")
    if all(name in best for name in list(MODES)[:2]):
        default, kept = (best[name]["rows"] for name in list(MODES)[:2])
        print(f"keep_freed_memory_speedup: {kept / default:.2f}")


if __name__ == "__main__":
    main()
