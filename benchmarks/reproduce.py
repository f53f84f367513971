"""Reproduce the papers' claims at a scale that can show something, on real data: one driver for the arms below, fixed seeds, Markdown tables, PNG plots, results.json.

Chinese first (Piccolo2's setting): all-MiniLM-L6-v2 (its vocabulary covers CJK characters) trained on
STS-B zh train, AFQMC (+ FewCLUE BUSTM) train, CMNLI/CSNLI triplets, the bge retrieval triples and the
FewCLUE classification train splits; evaluated on suites/zh-local.yaml (dev splits only). English: the
same loss arms on STS-B / MRPC / Banking77 / TREC / SST-2 train, evaluated on suites/en-local.yaml.

* A — loss ablation: ``zh-infonce`` (every dataset as InfoNCE pairs/triplets), ``zh-cosent`` (+ CoSENT for
  STS and pair classification), ``zh-hybrid`` (+ label-contrastive for classification: Piccolo2's routing),
  ``zh-stock`` (stock SentenceTransformerTrainer, CoSENTLoss + MultipleNegativesRankingLoss); the same for
  ``en-*``; ``base-zh`` / ``base-en`` evaluate the untrained model.
* B — Matryoshka: ``zh-hybrid`` vs ``zh-nomrl``, scored at 768…64.   * C — projection: vs ``zh-noproj``.
* E — ``zh-pearson`` (Pearson instead of CoSENT on STS).   * F — ``zh-static`` vs ``zh-dynamic`` mining.
The arms and their recipe YAML files: benchmarks/reproduce-arms/ (arms.yaml lists them).

Every training arm: the same 15,360 sliced rows of its language, 490 steps × batch 32 = 15,680 rows
(≥ 15,000 rows drawn even where duplicate-free InfoNCE batches come out short; results.json counts them),
lr 3e-5, warmup 0.1, proportional mixing, equal task weights, projection 384→768 + Matryoshka
[768, 384, 256, 128, 64] unless the arm removes one. Training rows sharing a text with the suite are
dropped (counted in results.json). Seeds: ``--seeds 0,1``; zh-infonce/cosent/hybrid run every seed,
the other arms the first.

    nice -n 19 python benchmarks/reproduce.py --out runs/reproduce --threads 2 --budget-min 150   # full run
    python benchmarks/reproduce.py --only zh-hybrid,zh-nomrl --seeds 0,1 --out runs/reproduce
    nice -n 19 python benchmarks/reproduce.py --quick --out /tmp/rq                             # plumbing only

Each trained model stays in OUT/arms/<arm>-s<seed>/model (``SentenceTransformer(path)`` loads it) with
its result in OUT/arms/<arm>-s<seed>/result.json; a re-run reuses both (``--force`` retrains), and the
tables include every cached arm made with the same sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*ill-defined.*")  # sklearn, on tiny evaluation slices
sys.path.insert(0, str(Path(__file__).resolve().parent))

import reproduce_arms as arms_mod  # noqa: E402
import reproduce_data as data_mod  # noqa: E402
import reproduce_tables as tables_mod  # noqa: E402
from reproduce_arms import ARMS  # noqa: E402

DATA = data_mod.DATA
ALL_ARMS = list(ARMS)
MIN_ROWS = 15_000
# Planning rates for the estimate (2-core CPU, 2 threads, machine otherwise idle), as measured by the first
# full zh-infonce arm (2026-12-02): 15,614 rows in 1,058 s = 14.8 rows/s with our trainer (triplets with
# 1–3 negatives and label texts make 2–5 texts per row, not the quickstart's ~2), zh-local evaluated in
# 159 s; the stock trainer at 1/2.5 of ours (docs/performance.md's ratio); en evaluation, per extra dim,
# mining and dynamic re-scoring are not measured at this scale yet.
PLAN = {"ours_rows_s": 14.8, "stock_rows_s": 5.9, "eval_s": {"zh": 160.0, "en": 150.0}, "eval_dim_s": 8.0, "mining_s": 90.0, "dynamic_s": 60.0}
# One slice per language: multiples of the batch size, 15,360 rows = 480 full batches (the hybrid arm's epoch; 490 steps start a second).
QUOTAS = {
    "zh": {"sts": 4000, "pcls": 4000, "nli": 2496, "bge": 1504, "cls_tnews": 992, "cls_iflytek": 1312, "cls_csldcp": 896, "cls_eprstmt": 160},
    "en": {"sts": 4000, "pcls": 2976, "cls_banking77": 5600, "cls_trec": 2016, "cls_sst2": 768},
}
QUICK_QUOTAS = {
    "zh": {"sts": 24, "pcls": 24, "nli": 16, "bge": 16, "cls_tnews": 16, "cls_iflytek": 16, "cls_csldcp": 16, "cls_eprstmt": 16},
    "en": {"sts": 24, "pcls": 24, "cls_banking77": 16, "cls_trec": 16, "cls_sst2": 16},
}


def sizes(quick: bool, steps: int | None = None, batch: int | None = None, eval_max_samples: int | None = None, precision: str = "fp32") -> dict[str, Any]:
    """Steps, batch, rows per source, mining and evaluation settings; --quick is plumbing only."""
    s = {
        "quick": quick, "steps": 4 if quick else 490, "batch": 8 if quick else 32, "lr": 3e-5, "warmup_ratio": 0.1,
        "max_seq_length": 64, "eval_max_seq_length": 256, "mixing": "proportional", "precision": precision,
        **arms_mod.recipe_negatives(),  # nli_negatives, bge_negatives, cls_negatives: as the arm recipes set them
        "quotas": QUICK_QUOTAS if quick else QUOTAS,
        "mine_corpus": 200 if quick else 6000, "mine_range": [3, 20] if quick else [10, 60], "mine_pool": 5 if quick else 20, "every": 2 if quick else 20,
        "mine_max_ratio": None if quick else 0.95,  # a random tiny model scores every text alike: no guard in --quick
        "eval_max_samples": eval_max_samples or (24 if quick else None), "eval_max_corpus": 60 if quick else None,
    }  # fmt: skip
    if steps:
        s["steps"] = steps
    if batch:
        s["batch"] = batch
    return s


def job_order(arms: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Base model, the ablation's first seed, its other seeds, then the single-seed arms; Chinese before English."""
    jobs: list[tuple[str, int]] = []
    for arm in ALL_ARMS:
        if arm in arms:
            jobs.append((arm, seeds[0]))
        if arm == "zh-hybrid":
            jobs += [(a, s) for s in seeds[1:] for a in ALL_ARMS if a in arms and ARMS[a].get("seeds") == "all"]
    return jobs


def plan(sz: dict[str, Any], seeds: list[int], arms: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """What each job trains on (pure: no data read): steps, batch, rows = steps × batch, rows per source, the arm it is compared with."""
    out = {}
    for arm, seed in job_order(arms or ALL_ARMS, seeds):
        spec = ARMS[arm]
        entry: dict[str, Any] = {"arm": arm, "seed": seed, "lang": spec["lang"], "kind": spec["kind"], "vs": spec.get("vs"), "dims": spec["dims"]}
        if spec["kind"] != "base":
            quotas = dict(sz["quotas"][spec["lang"]])
            entry |= {"steps": sz["steps"], "batch": sz["batch"], "rows": sz["steps"] * sz["batch"], "source_rows": quotas,
                      "source_rows_total": sum(quotas.values()), "lr": sz["lr"], "mixing": sz["mixing"], "max_seq_length": sz["max_seq_length"]}  # fmt: skip
        out[f"{arm}-s{seed}"] = entry
    return out


def estimate_seconds(job: dict[str, Any], measured: dict[str, list[float]] | None = None) -> float:
    """Planned seconds of one job: rows / rate + its evaluation (+ mining); measured rates win once an arm of that kind has run."""
    measured = measured or {}

    def rate(key: str, default: float) -> float:
        return sorted(measured[key])[len(measured[key]) // 2] if measured.get(key) else default

    lang, kind = job["lang"], job["kind"]
    seconds = rate(f"eval_{lang}", PLAN["eval_s"][lang]) + PLAN["eval_dim_s"] * (len(job["dims"]) - 1)
    if kind != "base":
        seconds += job["rows"] / rate(kind, PLAN[f"{kind}_rows_s"])
    if arms_mod.needs_mining(job["arm"]):
        seconds += PLAN["dynamic_s"] if arms_mod.mines_dynamically(job["arm"]) else PLAN["mining_s"]
    return seconds


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()}-core CPU ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads, load avg at start {load:.1f}"


def _caption(lang: str, sz: dict[str, Any], data: dict[str, Any], backbone: str, mach: str) -> str:
    suite = (
        "the whole shipped suite"
        if not data["suite_subsampled"]
        else f"a generated copy with max_samples ≤ {sz['eval_max_samples']} per task (subsampled for time)"
    )
    return (
        f"{sz['steps']} steps × batch {sz['batch']} = {sz['steps'] * sz['batch']} rows per training arm, from the same {data['rows_total']} sliced source rows of {lang} "
        f"(proportional mixing); lr {sz['lr']}, warmup {sz['warmup_ratio']}, max_seq_length {sz['max_seq_length']} (eval {sz['eval_max_seq_length']} for every model), training precision {sz['precision']}, "
        f"equal task weights (default loss_preset, not piccolo2); backbone {backbone}; evaluation: {suite} ({data['suite'].name}), clustering bootstrap {arms_mod.CLUSTER_SAMPLE} draws; machine: {mach}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/reproduce", help="output folder (tables, PNGs, results.json, arms/<arm>-s<seed>/{model,result.json})")
    p.add_argument("--quick", action="store_true", help="tiny sizes and evaluation slices: checks the plumbing in minutes")
    p.add_argument("--only", default=None, help=f"comma-separated arms to run (default all): {','.join(ALL_ARMS)}")
    p.add_argument("--seeds", default="0,1", help="seeds of zh-infonce/zh-cosent/zh-hybrid (every other arm uses the first)")
    p.add_argument("--steps", type=int, default=None, help="training steps per arm (default 490; --quick 4)")
    p.add_argument("--batch", type=int, default=None, help="rows per batch (default 32; --quick 8)")
    p.add_argument("--backbone", default="bundled:all-MiniLM-L6-v2", help="backbone (tests pass a tiny random BERT)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="retrain and re-evaluate arms whose cached result exists")
    p.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help="start no arm that the estimate says would end after this many minutes (cut arms are listed; a re-run continues)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="training precision of every arm, the stock one included (auto: bf16 on a CPU with AMX-BF16 or AVX512-BF16 or a bf16 GPU; evaluation stays fp32)",
    )
    p.add_argument(
        "--eval-max-samples",
        type=int,
        default=None,
        help="evaluate a generated copy of each suite with max_samples ≤ N per task (for time; said in the captions)",
    )
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from hybridembed.precision import resolve_precision

    sz = sizes(args.quick, args.steps, args.batch, args.eval_max_samples, resolve_precision(args.precision))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    arms = [a.strip() for a in args.only.split(",") if a.strip()] if args.only else list(ALL_ARMS)
    unknown = sorted(set(arms) - set(ALL_ARMS))
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {ALL_ARMS}")
    mach = machine()

    work = out / "data"
    data = {lang: data_mod.prepare(lang, work, sz["quotas"][lang], sz["eval_max_samples"], sz["eval_max_corpus"]) for lang in ("zh", "en")}
    expected = {arm: arms_mod.expected_cache(arm, args.backbone, data[ARMS[arm]["lang"]], sz) for arm in ALL_ARMS}

    def is_cached(arm: str, seed: int) -> bool:
        path = out / "arms" / f"{arm}-s{seed}" / "result.json"
        return not args.force and path.exists() and arms_mod.is_current(json.loads(path.read_text()), expected[arm])

    jobs = job_order(arms, seeds)
    planned = plan(sz, seeds, arms)
    if any(arms_mod.needs_mining(a) and not is_cached(a, s) for a, s in jobs):
        data["zh"]["files"].update(data_mod.mine_pool(work, args.backbone, data["zh"], sz))
    todo = [f"{a}-s{s}" for a, s in jobs if not is_cached(a, s)]
    est = {j: estimate_seconds(planned[j]) for j in todo}
    print(f"plan: {len(jobs)} jobs, {len(todo)} to run; estimate {sum(est.values()) / 60:.1f} min "
          f"(planning rates: ours {PLAN['ours_rows_s']} rows/s, stock {PLAN['stock_rows_s']} rows/s, eval zh {PLAN['eval_s']['zh']:.0f} s / en {PLAN['eval_s']['en']:.0f} s)", flush=True)  # fmt: skip
    for j in todo:
        print(f"  {j}: ~{est[j] / 60:.1f} min", flush=True)

    measured: dict[str, list[float]] = {}
    cut: list[str] = []
    failed: list[str] = []
    for arm, seed in jobs:
        job = planned[f"{arm}-s{seed}"]
        elapsed = time.perf_counter() - wall0
        if args.budget_min and not is_cached(arm, seed) and elapsed + estimate_seconds(job, measured) > 60 * args.budget_min:
            cut.append(f"{arm}-s{seed}")
            continue
        try:
            was_cached = is_cached(arm, seed)
            entry = arms_mod.run_arm(arm, seed, args.backbone, data[job["lang"]], sz, out, args.force)
            if not was_cached:
                measured.setdefault(f"eval_{job['lang']}", []).append(entry["eval_seconds"])
                if job["kind"] != "base" and entry["train_seconds"] > 0 and not entry.get("resumed"):
                    measured.setdefault(job["kind"], []).append(job["rows"] / entry["train_seconds"])
        except Exception as err:  # one broken arm must not lose the others; it is listed and re-runs next time
            failed.append(f"{arm}-s{seed}: {type(err).__name__}: {err}")
            print(f"[{arm} seed {seed}] FAILED: {failed[-1]}", flush=True)
            import traceback

            traceback.print_exc()

    res = arms_mod.cached_results(out, expected)
    wall = time.perf_counter() - wall0
    meta = {
        "sizes": {k: v for k, v in sz.items() if k != "quotas"},
        "seeds": seeds,
        "plan": planned,
        "planning_rates": PLAN,
        "estimate_minutes_at_start": round(sum(est.values()) / 60, 1),
        "measured_rates": {k: [round(v, 1) for v in vs] for k, vs in measured.items()},
        "rows_per_source": {lang: d["rows"] for lang, d in data.items()},
        "source_rows_read": {lang: d["read"] for lang, d in data.items()},
        "dropped_for_overlap_with_eval": {lang: d["dropped_for_overlap_with_eval"] for lang, d in data.items()},
        "infonce_conversion_dropped": {lang: d["infonce_dropped"] for lang, d in data.items()},
        "labels_per_classification_source": {lang: d["cls_labels"] for lang, d in data.items()},
        "rows_drawn": {f"{e['arm']}-s{e['seed']}": (e.get("rows_drawn") or {}).get("total") for es in res.values() for e in es if e["kind"] != "base"},
        "suites": {lang: str(d["suite"]) for lang, d in data.items()},
        "mining": data["zh"].get("mining") or data_mod.mining_report(work),
        "cut_by_budget": cut,
        "failed": failed,
        "backbone": args.backbone,
        "machine": mach,
        "started": started_at,
        "wall_seconds_this_invocation": round(wall, 1),
        "arm_seconds": {
            f"{e['arm']}-s{e['seed']}": {"train": round(e["train_seconds"], 1), "eval": round(e["eval_seconds"], 1)} for es in res.values() for e in es
        },
        "command": "python benchmarks/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "caption": {lang: _caption(lang, sz, data[lang], args.backbone, mach) for lang in data},
    }
    meta["arms_total_seconds"] = round(sum(v["train"] + v["eval"] for v in meta["arm_seconds"].values()), 1)
    tables = tables_mod.build_tables(res, meta)
    printed = [
        f"# hybridembed reproduction — {'QUICK (plumbing only)' if args.quick else 'full run'}",
        f"command: `{meta['command']}`",
        f"machine: {mach}; started {started_at}; wall time of this invocation {wall / 60:.1f} min "
        f"(sum over the tabled arms, incl. cached ones: {meta['arms_total_seconds'] / 60:.1f} min)",
        f"rows drawn per training arm: {', '.join(f'{k} {v}' for k, v in meta['rows_drawn'].items())}",
    ]
    if cut:
        printed.append(f"**cut by --budget-min {args.budget_min}: {', '.join(cut)} (not run; a re-run continues)**")
    if failed:
        printed.append(f"**failed: {'; '.join(failed)}**")
    printed.append("")
    for t in tables:
        png = out / f"{t['id']}.png"
        tables_mod.plot_table(t, png)
        t["png"] = png.name
        printed += [f"## {t['title']}", "", t["markdown"], "", f"_{t['caption']}_", "", f"![{t['id']}]({t['png']})", ""]
    text = "\n".join(printed)
    print(text, flush=True)
    (out / "tables.md").write_text(text + "\n", encoding="utf-8")
    results = {"meta": meta, "tables": [{k: v for k, v in t.items() if k != "plot"} for t in tables], "arms": res}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str, ensure_ascii=False), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
