"""Training throughput: hybridembed's trainer vs a stock SentenceTransformerTrainer on the same model, data, batch size and steps.

Both arms train all-MiniLM-L6-v2 (384→768 projection, Matryoshka dims) on the quickstart
multi-task data. The stock arm gets the closest stock losses: CoSENTLoss for STS,
MultipleNegativesRankingLoss for retrieval and for classification (text → label text), each in
MatryoshkaLoss, with ST's proportional multi-dataset sampler. The first `--warmup` steps of each
arm are not timed (new tensor shapes cost seconds on CPU).

Reported per arm: rows ("pairs") per second, non-padding tokens per second of the batches' texts,
training FLOP/s actually executed (6 × non-embedding parameters × non-padding tokens that went
through the network, plus 12 × layers × hidden × L² per text for attention; a text embedded once
for several uses counts once) as a fraction of the matmul peak of the arm's precision measured in the
same run (best of several 2048² matmul timings), STS-B dev cosine Spearman after the run, and page
the share of the tokens the backbone computed that were padding (every forward with gradients,
warm-up included; packed forwards compute none outside attention), and page faults per timed step (fresh pages: an arm that grows the process's memory pays for them, the arms
after it reuse that memory; docs/performance.md).

`--precision auto` (the default) trains our arm in bf16 where the hardware computes bf16 natively
(an AMX-BF16 or AVX512-BF16 CPU, a bf16 GPU; hybridembed.precision) and in fp32 elsewhere. The
stock trainer runs with its defaults (fp32), and, when ours runs bf16, once more with `bf16=True`, so the gain of the precision
and the gain of the trainer are shown apart. The last line reads
`speedup: X.XX peak_fraction: Y.YY quality_delta: Z.ZZZ` (ours ÷ stock-default rows/s; our FLOP/s ÷
the peak of our precision; our Spearman − stock's, 0–1 scale); the line before it compares with the
stock bf16 arm. `--repeats N` runs every arm N times in turn and reports medians (and each arm's
lowest and highest pairs/s); the ratios are ratios of medians. Before them, `--cold-runs` passes
(default 1) over every arm are timed the same way and printed in their own table, with
`cold_speedup: … cold_peak_fraction: … cold_quality_delta: …`, and left out of the medians: the
first run in a fresh process pays for growing the heap (~10 k page faults per timed step for ours
cold against ~400 warm, the tables' last column, each several µs in a VM) and the arms after it reuse that memory,
so in a cold pass the arm that runs first (ours) pays for all of them; a long run pays it once. Every arm runs under tcmalloc when
it is installed (`--allocator auto`, the default: the script re-executes itself with LD_PRELOAD, as
`make demo` trains, and names the allocator in its header); `--allocator system` keeps glibc's
malloc, where our arm runs first and applies `training.keep_freed_memory` (glibc malloc settings,
process-wide), so the stock arms after it run with them too. Run it alone: two jobs on two cores
slow each other.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


class RowCounter:
    """Wrap a collator to count the rows and non-padding tokens of every collated batch (the work asked for)."""

    def __init__(self, collate):
        self.collate = collate
        self.rows = 0
        self.tokens = 0
        self.executed_flops = 0.0  # filled by the model hook: what actually ran through the network
        self.forward_tokens = self.computed_tokens = 0  # the model hook's real tokens and tokens incl. padding
        self.valid_label_columns = getattr(collate, "valid_label_columns", None)

    def __call__(self, batch):
        self.rows += len(batch)
        collated = self.collate(batch)
        self.tokens += sum(int(v.sum()) for k, v in collated.items() if k.endswith("attention_mask"))
        return collated

    def count_executed(self, model) -> None:
        """Add the training FLOPs of every forward the model runs: 6 × params × tokens + 12 × layers × hidden × L²."""
        import torch

        from hybridembed.modeling.packing import packs_rows

        hidden, layers, params = _shape(model)

        def hook(module, args):
            mask = args[0]["attention_mask"]
            lengths = mask.sum(dim=1).double()
            if torch.is_grad_enabled():
                self.executed_flops += float(6 * params * lengths.sum() + 12 * layers * hidden * (lengths**2).sum())
                self.forward_tokens += int(lengths.sum())
                # a packed forward (training.packing) computes only the real tokens outside attention
                self.computed_tokens += int(lengths.sum()) if packs_rows(module) else mask.numel()

        model[0].register_forward_pre_hook(hook)


def make_timer(counter: RowCounter, warmup: int):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Snapshots the counters when step `warmup` ends and at every later step end."""

        start = end = None

        def on_step_end(self, args, state, control, **kwargs):
            snapshot = (time.perf_counter(), counter.rows, counter.tokens, counter.executed_flops, page_faults(), state.global_step)
            if state.global_step == warmup:
                self.start = snapshot
            self.end = snapshot

        def rates(self) -> tuple[float, float, float, float]:
            """(rows/s, batch tokens/s, executed training FLOP/s) over the timed steps, and page faults per timed step."""
            seconds = self.end[0] - self.start[0]
            return (*((self.end[i] - self.start[i]) / seconds for i in (1, 2, 3)), (self.end[4] - self.start[4]) / (self.end[5] - self.start[5]))

    return StepTimer()


def page_faults() -> int:
    """Minor page faults of this process so far: each is a fresh 4 KB page the kernel zero-fills (costly in a VM)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# What our arm sets beyond the quickstart recipe: the CPU-speed settings that keep the model the same (docs/performance.md).
OURS = {"training.lane_dropout": True, "training.packing": True}


def recipe(steps: int, batch_size: int, out: str, precision: str = "fp32", settings: dict | None = None):
    """The quickstart recipe with one batch size for every dataset (the stock sampler has only one), plus `settings` (dotted keys)."""
    from hybridembed.recipe import load_recipe

    loaded = load_recipe(
        REPO / "recipes" / "quickstart.yaml",
        {"training.max_steps": steps, "training.batch_size": batch_size, "training.output_dir": out, "training.report_to": [],
         "training.precision": precision, **(settings or {})},
    )  # fmt: skip
    for dataset in loaded.datasets:
        dataset.batch_size = None
    return loaded


def stock_columns(ds, num_negatives: int, rng) -> dict[str, list]:
    """The dataset in sentence-transformers' column convention, with the same number of negatives ours draws per row."""
    from hybridembed.tasks import RowShape

    if ds.task.shape is RowShape.SCORED_PAIR:
        return {"sentence1": [x["text1"] for x in ds.rows], "sentence2": [x["text2"] for x in ds.rows], "score": [x["score"] for x in ds.rows]}
    candidates = [x["negatives"] or [label for label in ds.label_pool or [] if label not in x["positives"]] for x in ds.rows]
    k = min([num_negatives, *map(len, candidates)])
    columns = {"anchor": [x["query"] for x in ds.rows], "positive": [x["positives"][0] for x in ds.rows]}
    drawn = [rng.sample(c, k) for c in candidates]
    for j in range(k):
        columns[f"negative_{j + 1}"] = [negatives[j] for negatives in drawn]
    return columns


def _shape(model) -> tuple[int, int, int]:
    """(hidden size, layers, non-embedding parameters incl. the projection) of a sentence-transformers model."""
    config = model[0].auto_model.config
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    return config.hidden_size, config.num_hidden_layers, sum(p.numel() for p in model.parameters()) - embedding


def timed_train(trainer, warmup: int) -> dict:
    counter = RowCounter(trainer.data_collator)
    counter.count_executed(trainer.model)
    trainer.data_collator = counter
    timer = make_timer(counter, warmup)
    trainer.add_callback(timer)
    started = time.perf_counter()
    trainer.train()
    rows, tokens, flops, faults = timer.rates()
    return {"rows": rows, "tokens": tokens, "flops": flops, "faults": faults, "wall": time.perf_counter() - started,
            "padding": 1 - counter.forward_tokens / counter.computed_tokens, "spearman": stsb_dev_spearman(trainer.model)}  # fmt: skip


def stsb_dev_spearman(model) -> float:
    from hybridembed.evaluation import load_suite, run_suite

    suite = load_suite(REPO / "suites" / "quickstart.yaml")
    results = run_suite(model, suite.model_copy(update={"tasks": suite.tasks[:1]}))  # STS-B dev only: the rest is not reported
    return results.score(results.tasks[0])


def matmul_peak(precision: str, size: int = 2048, repeats: int = 5, trials: int = 5) -> float:
    """Best of several timings of dense 2048² matmuls in `precision` (the best trial is the least disturbed)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - started))
    return best


def run_ours(steps: int, warmup: int, batch_size: int, out: str, precision: str, settings: dict) -> dict:
    from hybridembed.training.builder import prepare_training

    return timed_train(prepare_training(recipe(steps, batch_size, out, precision, settings)), warmup)


def setting(text: str) -> tuple[str, object]:
    """`KEY=VALUE` of `--also`: a dotted recipe key and a YAML value."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. training.lane_dropout=false")
    return key, yaml.safe_load(value)


def settings_row(text: str) -> tuple[tuple[str, object], ...]:
    """`KEY=VALUE[;KEY=VALUE...]` of `--also`: one row of our arm with all of these settings changed."""
    return tuple(setting(part.strip()) for part in text.split(";") if part.strip())


def run_stock(steps: int, warmup: int, batch_size: int, out: str, precision: str) -> dict:
    """The stock trainer with its defaults, and `bf16=True` (its own autocast) when `precision` is bf16."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MatryoshkaLoss, MultipleNegativesRankingLoss

    from hybridembed.data import load_datasets
    from hybridembed.modeling.model import build_model
    from hybridembed.tasks import RowShape

    r = recipe(steps, batch_size, out)
    model = build_model(r.model)
    datasets, losses = {}, {}
    rng = random.Random(r.training.seed)
    for ds in load_datasets(r.datasets):
        k = ds.config.num_negatives if ds.config.num_negatives is not None else ds.task.spec.default_negatives
        datasets[ds.name] = Dataset.from_dict(stock_columns(ds, k, rng))
        base = CoSENTLoss(model) if ds.task.shape is RowShape.SCORED_PAIR else MultipleNegativesRankingLoss(model)
        losses[ds.name] = MatryoshkaLoss(model, base, r.model.matryoshka_dims)
    args = SentenceTransformerTrainingArguments(
        output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=r.training.learning_rate,
        warmup_steps=0.1, seed=r.training.seed, report_to="none", save_strategy="no", logging_steps=10,
        multi_dataset_batch_sampler="proportional", bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=datasets, loss=losses)
    return timed_train(trainer, warmup)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def summarise(runs: list[dict]) -> dict:
    """One arm over its repeats: the median of every measure, and the lowest and highest pairs/s."""
    summary = {key: median([run[key] for run in runs]) for key in runs[0]}
    summary["rows_low"], summary["rows_high"] = min(run["rows"] for run in runs), max(run["rows"] for run in runs)
    return summary


def main() -> None:
    import tempfile

    import torch

    from hybridembed.allocator import installed_tcmalloc, preloaded_allocator
    from hybridembed.precision import resolve_precision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="our arm's training.precision (auto: bf16 on a CPU with AMX-BF16 or AVX512-BF16 or a bf16 GPU, else fp32)")  # fmt: skip
    parser.add_argument("--also", type=settings_row, action="append", default=[], metavar="KEY=VALUE[;KEY=VALUE...]",
                        help=f"also time our arm with these recipe settings changed (a row each; ours sets {OURS}), "
                        "e.g. --also training.lane_dropout=false --also 'training.packing=true;training.forward_chunk_rows=null'")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every arm this many times, in turn (ours, the --also rows, stock, ...), and report medians and the range")  # fmt: skip
    parser.add_argument("--cold-runs", type=int, default=1,
                        help="passes over every arm first, reported in their own table and left out of the medians: the first "
                        "run in a process pays for growing its memory, which the arms after it reuse (docs/performance.md)")  # fmt: skip
    parser.add_argument("--allocator", choices=["auto", "system"], default="auto",
                        help="auto: run every arm under tcmalloc when it is installed (re-executes with LD_PRELOAD; Debian: "
                        "libtcmalloc-minimal4); system: the process's own malloc (glibc, with our arm's training.keep_freed_memory)")  # fmt: skip
    args = parser.parse_args()
    if args.repeats < 1 or args.cold_runs < 0 or args.warmup >= args.steps:
        parser.error("--repeats must be ≥ 1, --cold-runs ≥ 0 and --warmup below --steps")
    tcmalloc = installed_tcmalloc()
    if args.allocator == "auto" and tcmalloc and not preloaded_allocator():
        # the allocator is chosen when a process starts: start again with it, every arm in the same process as before
        preload = ":".join(filter(None, [tcmalloc, os.environ.get("LD_PRELOAD")]))  # the caller's own preloads stay
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "LD_PRELOAD": preload})
    precision = resolve_precision(args.precision)
    precisions = sorted({"fp32", precision})
    peaks = {p: matmul_peak(p) for p in precisions}
    passes: list[dict[str, dict]] = [{} for _ in range(args.cold_runs + args.repeats)]  # one dict of arm name → run per pass over the arms
    with tempfile.TemporaryDirectory() as tmp:
        for repeat, runs in enumerate(passes):  # in turn, so a slow spell of the machine spreads over every arm
            sizes = (args.steps, args.warmup, args.batch_size)
            runs["hybridembed"] = run_ours(*sizes, f"{tmp}/ours-{repeat}", precision, OURS)
            for i, row in enumerate(args.also):
                name = "hybridembed, " + ", ".join(f"{key}: {value}" for key, value in row)
                runs[name] = run_ours(*sizes, f"{tmp}/also-{i}-{repeat}", precision, {**OURS, **dict(row)})
            runs["stock SentenceTransformerTrainer"] = run_stock(*sizes, f"{tmp}/stock-{repeat}", "fp32")
            if precision != "fp32":  # the stock trainer with the same precision: what a user of it would set
                runs[f"stock SentenceTransformerTrainer, {precision}=True"] = run_stock(*sizes, f"{tmp}/stock-{precision}-{repeat}", precision)
            peaks = {p: max(peaks[p], matmul_peak(p)) for p in precisions}
    print()
    print(f"model: all-MiniLM-L6-v2 → 768 (Matryoshka 5 dims), data: recipes/quickstart.yaml, batch {args.batch_size}, "
          f"{args.steps} steps ({args.warmup} untimed), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"hybridembed precision {precision}, matmul peak " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items())
          + f", allocator {preloaded_allocator() or 'glibc malloc'}")  # fmt: skip
    if args.cold_runs:
        cold = arms_over(passes[: args.cold_runs])
        print(f"\nFirst {plural(args.cold_runs, 'pass')} over the arms in a fresh process (cold: each arm grows the heap the arms after it reuse; "
              "not in the medians below)")  # fmt: skip
        print_table(cold, precision, peaks, args.cold_runs)
        print(summary_line(cold, precision, peaks, prefix="cold_"))
    arms = arms_over(passes[args.cold_runs :])
    print(f"\nThe next {plural(args.repeats, 'pass')} (warm: every arm reuses the heap the first passes grew), median per arm")
    print_table(arms, precision, peaks, args.repeats)
    ours = arms["hybridembed"]
    if precision != "fp32":
        same = arms[f"stock SentenceTransformerTrainer, {precision}=True"]
        print(f"speedup_vs_stock_{precision}: {ours['rows'] / same['rows']:.2f} quality_delta_vs_stock_{precision}: {ours['spearman'] - same['spearman']:.3f}")
    print(summary_line(arms, precision, peaks))


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}es"


def arms_over(passes: list[dict[str, dict]]) -> dict[str, dict]:
    """Every arm's summary (medians and pairs/s range) over these passes."""
    return {name: summarise([runs[name] for runs in passes]) for name in passes[0]}


def print_table(arms: dict[str, dict], precision: str, peaks: dict[str, float], runs: int) -> None:
    spread = " | pairs/s: lowest–highest run" if runs > 1 else ""
    print(
        f"| trainer | precision | pairs/s | batch tokens/s | executed GFLOP/s | fraction of that precision's peak | padding share of the tokens the backbone computed "
        f"| STS-B dev Spearman | wall (s) | page faults per timed step{spread} |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if spread else ""))
    for name, arm in arms.items():
        p = precision if name.startswith("hybridembed") or name.endswith("=True") else "fp32"
        low_high = f" {arm['rows_low']:.1f}–{arm['rows_high']:.1f} |" if spread else ""
        print(f"| {name} | {p} | {arm['rows']:.1f} | {arm['tokens']:.0f} | {arm['flops'] / 1e9:.1f} | {arm['flops'] / peaks[p]:.2f} | {arm['padding']:.2f} | "
              f"{arm['spearman']:.4f} | {arm['wall']:.0f} | {arm['faults']:.0f} |{low_high}")  # fmt: skip


def summary_line(arms: dict[str, dict], precision: str, peaks: dict[str, float], prefix: str = "") -> str:
    """`speedup: X peak_fraction: Y quality_delta: Z`: ours ÷ stock-default rows/s, our FLOP/s ÷ our precision's peak, Spearman gap."""
    ours, stock = arms["hybridembed"], arms["stock SentenceTransformerTrainer"]
    return (
        f"{prefix}speedup: {ours['rows'] / stock['rows']:.2f} {prefix}peak_fraction: {ours['flops'] / peaks[precision]:.2f} "
        f"{prefix}quality_delta: {ours['spearman'] - stock['spearman']:.3f}"
    )


if __name__ == "__main__":
    main()
