"""Quickstart settings chosen on data carved from the training sources, then checked on held-out dev/test files.

Why: the quickstart's gain on STS-B dev must hold on data that neither trained nor tuned it. The
**tuning suite** is carved from the *training* files of ../shared/data and shares no row with the
quickstart's training data: the 1,500 STS-B train pairs that scripts/build_quickstart_data.py holds out of
data/quickstart (a uniform sample over the 0–5 score range), MRPC train, and Banking77 train rows not in data/quickstart (8 per label drawn
from one half, scored on the other). Arms are compared there; the **report suite** (STS-B dev,
MRPC test, Banking77 test, WikiQA dev) is only printed, never used to choose.

    python benchmarks/quickstart_tuning.py --arms base,main-before,piccolo2-weights,default --out runs/qs-tuning

Each arm is the quickstart recipe plus dotted overrides (see ARMS); results are cached per arm in
OUT/<arm>/results.json so the script can be resumed across invocations.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
QUICKSTART = REPO / "data" / "quickstart"
RECIPE = REPO / "recipes" / "quickstart.yaml"
sys.path.insert(0, str(REPO / "scripts"))
from build_quickstart_data import read_tsv as _read_tsv, split_stsb_train, write_tsv as _write_tsv  # noqa: E402  (one STS-B layout and split)

# arm → recipe overrides (dotted keys). "base" evaluates the untrained backbone.
ARMS: dict[str, dict] = {
    "base": {},
    # the STS loss of the quickstart (issue 13): Piccolo2's CoSENT (τ 0.05), a softer CoSENT, Jina's Pearson
    "cosent-t005": {"losses.sts": {"name": "cosent", "temperature": 0.05}},
    "cosent-t02": {"losses.sts": {"name": "cosent", "temperature": 0.2}},
    "pearson": {"losses.sts": {"name": "pearson"}},
    "main-before": {"loss_preset": "piccolo2", "training.task_weighting": "loss"},  # what main trained before: weights erased by clipping
    "piccolo2-weights": {"loss_preset": "piccolo2"},  # Piccolo2's weights, now acting (clip before weighting)
    "piccolo2-sts-w1": {"loss_preset": "piccolo2", "losses.sts": {"name": "cosent", "weight": 1.0}},
    "default": {},  # equal weights, clip before weighting
    "tau05": {"losses.retrieval": {"name": "infonce", "temperature": 0.05}},
    "lr6e-5": {"training.learning_rate": 6e-5},
}


def build_tuning_data(out: Path) -> tuple[Path, Path]:
    """Write the tuning files and both suite files; returns (tuning suite, report suite)."""
    out.mkdir(parents=True, exist_ok=True)
    _shipped, holdout = split_stsb_train(_read_tsv(SHARED / "en/stsb/train.tsv"), random.Random(0))
    _write_tsv(out / "stsb_train_holdout.tsv", holdout, ["sentence1", "sentence2", "score"])
    with open(QUICKSTART / "banking77_train.csv", encoding="utf-8", newline="") as f:
        shipped = {r["text"] for r in csv.DictReader(f)}
    with open(SHARED / "en/banking77/train.csv", encoding="utf-8", newline="") as f:
        banking = [r for r in csv.DictReader(f) if r["text"] not in shipped]
    random.Random(1).shuffle(banking)
    for name, part in (("banking77_holdout_fit.csv", banking[:3000]), ("banking77_holdout_score.csv", banking[3000:5000])):
        with open(out / name, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(part)
    tuning = {
        "name": "quickstart-tuning",
        "tasks": [
            {"name": "stsb-train-holdout", "type": "sts", "path": str(out / "stsb_train_holdout.tsv"),
             "columns": {"text1": "sentence1", "text2": "sentence2", "score": "score"}, "score_range": [0, 5], "split": "tune"},
            {"name": "mrpc-train", "type": "pair_classification", "path": str(SHARED / "en/mrpc/train.tsv"), "header": False,
             "columns": {"text1": 3, "text2": 4, "label": 0}, "max_samples": 1500, "split": "tune"},
            {"name": "banking77-holdout", "type": "classification", "path": str(out / "banking77_holdout_score.csv"),
             "train_path": str(out / "banking77_holdout_fit.csv"), "columns": {"text": "text", "label": "category"}, "split": "tune"},
        ],
    }  # fmt: skip
    report = {
        "name": "quickstart-report",
        "tasks": [
            {"name": "stsb-dev", "type": "sts", "path": str(QUICKSTART / "stsb_dev.tsv"),
             "columns": {"text1": "sentence1", "text2": "sentence2", "score": "score"}, "score_range": [0, 5], "split": "dev"},
            {"name": "mrpc-test", "type": "pair_classification", "path": str(SHARED / "en/mrpc/test.tsv"), "header": False,
             "columns": {"text1": 3, "text2": 4, "label": 0}},
            {"name": "banking77-test", "type": "classification", "path": str(SHARED / "en/banking77/test.csv"),
             "train_path": str(SHARED / "en/banking77/train.csv"), "columns": {"text": "text", "label": "category"}},
            {"name": "wikiqa-dev", "type": "reranking", "path": str(SHARED / "en/wikiqa/dev.tsv"),
             "columns": {"query_id": "QuestionID", "query": "Question", "document": "Sentence", "label": "Label"}, "split": "dev"},
        ],
    }  # fmt: skip
    import yaml

    (out / "tuning.yaml").write_text(yaml.safe_dump(tuning, sort_keys=False))
    (out / "report.yaml").write_text(yaml.safe_dump(report, sort_keys=False))
    return out / "tuning.yaml", out / "report.yaml"


def _scores(results: dict) -> dict[str, float]:
    from hybridembed.evaluation.results import SuiteResults

    return SuiteResults(results).scores()


def run_arm(arm: str, out: Path, suites: tuple[Path, Path], seed: int) -> dict:
    from hybridembed.evaluation import load_suite, run_suite
    from hybridembed.modeling.model import load_model
    from hybridembed.recipe import load_recipe
    from hybridembed.training.builder import run_training

    folder = out / f"{arm}-s{seed}"
    cached = folder / "results.json"
    if cached.exists():
        return json.loads(cached.read_text())
    overrides = dict(ARMS[arm])
    overrides.update({"training.output_dir": str(folder / "model"), "training.seed": seed, "training.report_to": []})
    recipe = load_recipe(RECIPE, overrides)
    start = time.time()
    if arm == "base":
        model = load_model(recipe.model.backbone)
        train_s = 0.0
    else:
        model = load_model(str(run_training(recipe)))
        train_s = time.time() - start
    result = {"arm": arm, "seed": seed, "train_s": round(train_s, 1)}
    for kind, suite in zip(("tune", "report"), suites):
        result[kind] = _scores(run_suite(model, load_suite(suite), show_progress=False))
    folder.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="base,default")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--out", default="runs/qs-tuning")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    suites = build_tuning_data(out / "data")
    rows = []
    for arm in args.arms.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            result = run_arm(arm, out, suites, seed)
            rows.append(result)
            print(json.dumps(result), flush=True)
    tune_names, report_names = list(rows[0]["tune"]), list(rows[0]["report"])
    print("\n| arm | seed | train s | " + " | ".join(f"{n} (tune)" for n in tune_names) + " | " + " | ".join(report_names) + " |")
    print("|---|---|---|" + "---|" * (len(tune_names) + len(report_names)))
    for r in rows:
        cells = [f"{r['tune'][n]:.4f}" for n in tune_names] + [f"{r['report'][n]:.4f}" for n in report_names]
        print(f"| {r['arm']} | {r['seed']} | {r['train_s']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
