"""Reproduce the papers' claims at small scale on real data: one driver, fixed seeds, Markdown tables, PNG plots, JSON.

Arms (each trains all-MiniLM-L6-v2 from the same data for the same number of steps):

* a — Piccolo2's loss ablation: ``a-infonce`` (every dataset converted to pairs, in-batch InfoNCE),
  ``a-cosent`` (+ CoSENT for STS and pair classification), ``a-hybrid`` (+ label-contrastive for
  classification); each with every seed of ``--seeds``.
* b — Matryoshka: ``a-hybrid`` (384→768 projection + MRL) vs ``b-nomrl`` (projection, no MRL), scored at 768…64.
* c — dimension scaling: ``a-hybrid`` (projection to 768) vs ``c-noproj`` (384, MRL 384…64).
* d — Chinese: ``d-zh`` fine-tuned on the Chinese training sets vs the base model, on a subsample of zh-local.
* e — Jina's Pearson STS loss: ``e-pearson`` (= a-hybrid with Pearson instead of CoSENT on STS).
* f — Conan's dynamic mining: ``f-static`` vs ``f-dynamic`` on STS-B paraphrase retrieval rows whose
  negative pool was mined offline with the base model.

Evaluation never reads training data: the English suite is a seeded subsample of suites/en-local.yaml
(STS-B dev, MRPC test, Banking77 test, WikiQA dev, MS MARCO subset), the Chinese one of suites/zh-local.yaml;
training rows that share a text with an evaluation set are dropped (counted in the JSON).

    nice -n 19 python benchmarks/reproduce.py --out runs/reproduce            # full run
    nice -n 19 python benchmarks/reproduce.py --quick --out /tmp/rq           # plumbing, a few minutes
    python benchmarks/reproduce.py --only a-hybrid,b-nomrl --out runs/reproduce

Finished arms are cached in OUT/arms/<arm>-s<seed>.json and reused by a re-run (``--force`` retrains).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*ill-defined.*")  # sklearn, on tiny evaluation slices

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
EN_DIMS = [768, 384, 256, 128, 64]
TYPE_ORDER = ["sts", "pair_classification", "classification", "clustering", "reranking", "retrieval"]
TYPE_SHORT = {"sts": "STS", "pair_classification": "PairCls", "classification": "Cls", "clustering": "Clust", "reranking": "Rerank", "retrieval": "Retr"}
ALL_ARMS = ["base-en", "a-infonce", "a-cosent", "a-hybrid", "b-nomrl", "c-noproj", "e-pearson", "f-static", "f-dynamic", "base-zh", "d-zh"]


# ---------------------------------------------------------------- sizes


def sizes(quick: bool, steps: int | None, batch: int | None) -> dict[str, Any]:
    """Steps, batch size and evaluation slices; --quick is plumbing only."""
    s = {
        "steps": 4 if quick else 45,
        "batch": 8 if quick else 16,
        "max_seq_length": 128,
        "lr": 3e-5,
        # evaluation slices (seeded subsamples)
        "stsb": 60 if quick else 400,
        "mrpc": 60 if quick else 250,
        "banking_test": 80 if quick else 400,
        "banking_train_per_label": 2 if quick else 6,
        "wikiqa": 10 if quick else 40,
        "msmarco_queries": 2 if quick else 5,
        "msmarco_corpus": 100 if quick else 500,
        "zh_pairs": 60 if quick else 300,
        "zh_cls": 80 if quick else 300,
        "cmrc_queries": 10 if quick else 80,
        # mining (arm f)
        "mine_rows": 40 if quick else 720,
        "mine_corpus": 300 if quick else 3000,
        "mine_range": (5, 30) if quick else (10, 60),
        "pool": 10 if quick else 20,
        "every": 2 if quick else 10,
    }
    if steps:
        s["steps"] = steps
    if batch:
        s["batch"] = batch
    return s


# ---------------------------------------------------------------- data


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _tsv(path: Path, header: bool) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return lines[1:] if header else lines


def _seeded(rows: list[Any], n: int, seed: int = 0) -> list[Any]:
    if n >= len(rows):
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


class Decontaminator:
    """Drops training rows that share a text with any evaluation set (and counts them)."""

    def __init__(self, eval_texts: set[str]) -> None:
        self.eval_texts = {t.strip() for t in eval_texts}
        self.dropped: dict[str, int] = {}

    def keep(self, name: str, rows: list[dict[str, Any]], fields: tuple[str, ...]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            texts = []
            for f in fields:
                v = row.get(f)
                texts.extend(v if isinstance(v, list) else [v])
            if any(isinstance(t, str) and t.strip() in self.eval_texts for t in texts):
                continue
            out.append(row)
        self.dropped[name] = len(rows) - len(out)
        return out


def prepare_english(work: Path, sz: dict[str, Any]) -> dict[str, Any]:
    """Eval files + suite (subsamples of en-local) and the training files of arms a/b/c/e."""
    en = DATA / "en"
    ev = work / "eval-en"
    # --- evaluation slices
    stsb_dev = _seeded(_tsv(en / "stsb" / "dev.tsv", header=True), sz["stsb"])
    mrpc_test = _seeded(_tsv(en / "mrpc" / "test.tsv", header=False), sz["mrpc"])
    with open(en / "banking77" / "test.csv", encoding="utf-8") as f:
        bank_test = _seeded([(r["text"], r["category"]) for r in csv.DictReader(f)], sz["banking_test"])
    with open(en / "banking77" / "train.csv", encoding="utf-8") as f:
        bank_train_all = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    by_label: dict[str, list[tuple[str, str]]] = {}
    for text, label in bank_train_all:
        by_label.setdefault(label, []).append((text, label))
    rng = random.Random(0)
    bank_clf_train = [r for label in sorted(by_label) for r in rng.sample(by_label[label], min(sz["banking_train_per_label"], len(by_label[label])))]
    _write_jsonl(ev / "stsb_dev.jsonl", [{"text1": a, "text2": b, "score": float(s)} for a, b, s in stsb_dev])
    _write_jsonl(ev / "mrpc_test.jsonl", [{"text1": r[3], "text2": r[4], "label": int(r[0])} for r in mrpc_test])
    _write_jsonl(ev / "banking_test.jsonl", [{"text": t, "label": lab} for t, lab in bank_test])
    _write_jsonl(ev / "banking_clf_train.jsonl", [{"text": t, "label": lab} for t, lab in bank_clf_train])
    suite = {
        "name": "en-bench",
        "tasks": [
            {"name": "stsb-dev", "type": "sts", "path": str(ev / "stsb_dev.jsonl"), "columns": {"text1": "text1", "text2": "text2", "score": "score"}, "split": "dev", "score_range": [0, 5]},
            {"name": "mrpc-test", "type": "pair_classification", "path": str(ev / "mrpc_test.jsonl"), "columns": {"text1": "text1", "text2": "text2", "label": "label"}},
            {"name": "banking77-test", "type": "classification", "path": str(ev / "banking_test.jsonl"), "train_path": str(ev / "banking_clf_train.jsonl"), "columns": {"text": "text", "label": "label"}},
            {"name": "banking77-clustering", "type": "clustering", "path": str(ev / "banking_test.jsonl"), "columns": {"text": "text", "label": "label"}},
            {"name": "wikiqa-dev", "type": "reranking", "path": str(en / "wikiqa" / "dev.tsv"), "columns": {"query_id": "QuestionID", "query": "Question", "document": "Sentence", "label": "Label"}, "split": "dev", "max_samples": sz["wikiqa"]},
            {"name": "msmarco-trecdl19-subset", "type": "retrieval", "path": str(en / "msmarco_trecdl19_subset"), "format": "beir", "max_samples": sz["msmarco_queries"], "max_corpus": sz["msmarco_corpus"]},
        ],
    }
    suite_path = ev / "en-bench.yaml"
    import yaml

    suite_path.write_text(yaml.safe_dump(suite, sort_keys=False, allow_unicode=True), encoding="utf-8")

    # every text any English evaluation set can read (whole files, not only the slices)
    eval_texts: set[str] = set()
    for r in _tsv(en / "stsb" / "dev.tsv", header=True):
        eval_texts.update(r[:2])
    for r in _tsv(en / "mrpc" / "test.tsv", header=False):
        eval_texts.update(r[3:5])
    eval_texts.update(t for t, _ in bank_test)
    for r in _tsv(en / "wikiqa" / "dev.tsv", header=True):
        eval_texts.update((r[1], r[5]))
    dec = Decontaminator(eval_texts)

    # --- training data (one file per dataset and arm family); the same row slice for every arm
    n_rows = max(sz["steps"] * sz["batch"], 64)  # round-robin: each dataset gets steps/3 batches, so this is > 1 epoch-worth
    tr = work / "train-en"
    sts = [{"text1": a, "text2": b, "score": float(s)} for a, b, s in _tsv(en / "stsb" / "train.tsv", header=True)]
    sts = _seeded(dec.keep("stsb_train", sts, ("text1", "text2")), n_rows, 1)
    mrpc = [{"text1": r[3], "text2": r[4], "score": float(r[0])} for r in _tsv(en / "mrpc" / "train.tsv", header=False)]
    mrpc = _seeded(dec.keep("mrpc_train", mrpc, ("text1", "text2")), n_rows, 2)
    bank = [{"text": t, "label": lab.replace("_", " ")} for t, lab in bank_train_all]
    bank = _seeded(dec.keep("banking_train", bank, ("text",)), n_rows, 3)
    files = {
        "sts": _write_jsonl(tr / "stsb_train.jsonl", sts),
        "mrpc": _write_jsonl(tr / "mrpc_train.jsonl", mrpc),
        "bank": _write_jsonl(tr / "banking_train.jsonl", bank),
        # InfoNCE-only conversions (Piccolo2's baseline): high-score STS pairs and paraphrase pairs → (q, p);
        # (text, label) → (text, label text) with in-batch negatives
        "sts_pairs": _write_jsonl(tr / "stsb_pairs.jsonl", [{"query": r["text1"], "positive": r["text2"]} for r in sts if r["score"] >= 4.0]),
        "mrpc_pairs": _write_jsonl(tr / "mrpc_pairs.jsonl", [{"query": r["text1"], "positive": r["text2"]} for r in mrpc if r["score"] >= 1.0]),
        "bank_pairs": _write_jsonl(tr / "banking_pairs.jsonl", [{"query": r["text"], "positive": r["label"]} for r in bank]),
    }
    # --- arm f: retrieval rows (STS-B train pairs with score >= 3.8), negatives mined later
    pairs = [r for r in dec.keep("stsb_mine", [{"text1": a, "text2": b, "score": float(s)} for a, b, s in _tsv(en / "stsb" / "train.tsv", header=True)], ("text1", "text2")) if r["score"] >= 3.8]
    mine_rows = _seeded([{"query": r["text1"], "positive": r["text2"]} for r in pairs], sz["mine_rows"], 4)
    others = sorted({t for a, b, _ in _tsv(en / "stsb" / "train.tsv", header=True) for t in (a, b)} - eval_texts)
    corpus = sorted({r["positive"] for r in mine_rows} | set(_seeded(others, sz["mine_corpus"], 5)))
    files["mine_rows"] = _write_jsonl(tr / "mine_rows.jsonl", mine_rows)
    files["mine_corpus"] = tr / "mine_corpus.txt"
    files["mine_corpus"].write_text("\n".join(t.replace("\n", " ") for t in corpus) + "\n", encoding="utf-8")
    return {"suite": suite_path, "files": files, "dropped": dec.dropped, "rows": {k: sum(1 for _ in open(v, encoding="utf-8")) for k, v in files.items()}}


def prepare_chinese(work: Path, sz: dict[str, Any]) -> dict[str, Any]:
    """A subsample of zh-local (same files, fewer rows) and the Chinese training files."""
    zh = DATA / "zh"
    ev = work / "eval-zh"
    ev.mkdir(parents=True, exist_ok=True)
    n = sz["zh_pairs"]
    tasks = [
        {"name": "zh-stsb-dev", "type": "sts", "path": str(zh / "stsb" / "dev.tsv"), "header": False, "columns": {"text1": 0, "text2": 1, "score": 2}, "score_range": [0, 5], "split": "dev", "language": "cmn-Hans", "max_samples": n},
        {"name": "afqmc-dev", "type": "sts", "path": str(zh / "afqmc" / "dev.tsv"), "header": False, "columns": {"text1": 0, "text2": 1, "score": 2}, "score_range": [0, 1], "split": "dev", "language": "cmn-Hans", "max_samples": n},
        {"name": "lcqmc-dev", "type": "sts", "path": str(zh / "lcqmc" / "dev.tsv"), "header": False, "columns": {"text1": 0, "text2": 1, "score": 2}, "score_range": [0, 1], "split": "dev", "language": "cmn-Hans", "max_samples": n},
        {"name": "pawsx-dev", "type": "sts", "path": str(zh / "pawsx" / "dev.tsv"), "columns": {"text1": "sentence1", "text2": "sentence2", "score": "label"}, "score_range": [0, 1], "split": "dev", "language": "cmn-Hans", "max_samples": n},
        {"name": "ocnli-dev", "type": "pair_classification", "path": str(zh / "ocnli" / "dev.tsv"), "header": False, "columns": {"text1": 0, "text2": 1, "label": 2}, "label_map": {"entailment": 1, "contradiction": 0}, "main_score": "max_accuracy", "split": "dev", "language": "cmn-Hans", "max_samples": n},
        {"name": "tnews-fewclue", "type": "classification", "path": str(zh / "fewclue_tnews" / "dev_few_all.jsonl"), "train_path": str(zh / "fewclue_tnews" / "train_few_all.jsonl"), "columns": {"text": "sentence", "label": "label_desc"}, "split": "dev", "language": "cmn-Hans", "max_samples": sz["zh_cls"]},
        {"name": "tnews-clustering", "type": "clustering", "path": str(zh / "fewclue_tnews" / "dev_few_all.jsonl"), "columns": {"text": "sentence", "label": "label_desc"}, "split": "dev", "language": "cmn-Hans", "max_samples": sz["zh_cls"]},
        {"name": "cmrc2018-retrieval", "type": "retrieval", "path": str(zh / "cmrc2018" / "retrieval"), "format": "beir", "language": "cmn-Hans", "max_samples": sz["cmrc_queries"]},
    ]
    import yaml

    suite_path = ev / "zh-bench.yaml"
    suite_path.write_text(yaml.safe_dump({"name": "zh-bench", "tasks": tasks}, sort_keys=False, allow_unicode=True), encoding="utf-8")

    eval_texts: set[str] = set()
    for rel in ("stsb/dev.tsv", "afqmc/dev.tsv", "lcqmc/dev.tsv", "ocnli/dev.tsv"):
        for r in _tsv(zh / rel, header=False):
            eval_texts.update(r[:2])
    for r in _tsv(zh / "pawsx" / "dev.tsv", header=True):
        eval_texts.update(r[1:3])
    with open(zh / "fewclue_tnews" / "dev_few_all.jsonl", encoding="utf-8") as f:
        eval_texts.update(json.loads(line)["sentence"] for line in f if line.strip())
    dec = Decontaminator(eval_texts)

    n_rows = max(sz["steps"] * sz["batch"], 64)
    tr = work / "train-zh"
    sts = [{"text1": a, "text2": b, "score": float(s)} for a, b, s in (r[:3] for r in _tsv(zh / "stsb" / "train.tsv", header=False))]
    afqmc = [{"text1": a, "text2": b, "score": float(s)} for a, b, s in (r[:3] for r in _tsv(zh / "afqmc" / "train.tsv", header=False))]
    nli: dict[str, dict[str, list[str]]] = {}
    for rel in ("cmnli/dev.tsv", "csnli/dev.tsv"):  # OCNLI dev is an evaluation set: not used
        for r in _tsv(zh / rel, header=False):
            if len(r) < 3:
                continue
            entry = nli.setdefault(r[0], {"entailment": [], "contradiction": []})
            if r[2] in entry:
                entry[r[2]].append(r[1])
    triplets = [{"query": p, "positives": e["entailment"][:1], "negatives": e["contradiction"][:3]} for p, e in nli.items() if e["entailment"]]
    with open(zh / "retrieval" / "bge_finetune_data.jsonl", encoding="utf-8") as f:
        bge = [json.loads(line) for line in f if line.strip()]
    bge = [{"query": r["query"], "positives": r["pos"], "negatives": r["neg"]} for r in bge if r.get("pos")]
    files = {
        "zh_sts": _write_jsonl(tr / "zh_stsb_train.jsonl", _seeded(dec.keep("zh_stsb_train", sts, ("text1", "text2")), n_rows, 1)),
        "zh_afqmc": _write_jsonl(tr / "zh_afqmc_train.jsonl", _seeded(dec.keep("afqmc_train", afqmc, ("text1", "text2")), n_rows, 2)),
        "zh_nli": _write_jsonl(tr / "zh_nli_triplets.jsonl", _seeded(dec.keep("cmnli_csnli_dev", triplets, ("query", "positives", "negatives")), n_rows, 3)),
        "zh_bge": _write_jsonl(tr / "zh_bge_retrieval.jsonl", _seeded(dec.keep("bge_finetune_data", bge, ("query", "positives", "negatives")), n_rows, 4)),
    }
    return {"suite": suite_path, "files": files, "dropped": dec.dropped, "rows": {k: sum(1 for _ in open(v, encoding="utf-8")) for k, v in files.items()}}


def mine_pool(work: Path, backbone: str, files: dict[str, Path], sz: dict[str, Any]) -> Path:
    """Arm f's negative pool: ranks of the base model, the hardest `pool` candidates per row (offline, once)."""
    out = work / "train-en" / "mine_mined.jsonl"
    if out.exists():
        return out
    from hybridembed.mining.offline import MiningOptions, load_queries, mine_hard_negatives, read_corpus
    from hybridembed.model import load_model

    model = load_model(backbone)
    model.max_seq_length = sz["max_seq_length"]
    options = MiningOptions(rank_range=sz["mine_range"], num_negatives=sz["pool"], sampling="top", max_ratio=0.95, seed=0)
    report = mine_hard_negatives(
        model, load_queries(files["mine_rows"]), out, corpus=read_corpus(files["mine_corpus"]), options=options, cache_dir=work / "cache", progress=False
    )
    print(f"mined {report.negatives_written} negatives for {report.rows} rows from {report.corpus_size} texts: {'; '.join(report.notes) or 'ok'}", flush=True)
    return out


# ---------------------------------------------------------------- arms


def _ds(path: Path, task: str, **extra: Any) -> dict[str, Any]:
    return {"path": str(path), "task": task, **extra}


def arm_recipe(arm: str, seed: int, backbone: str, data: dict[str, Any], sz: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    f = data["files"]
    model: dict[str, Any] = {"backbone": backbone, "max_seq_length": sz["max_seq_length"], "projection_dim": 768, "matryoshka_dims": EN_DIMS}
    mining = None
    hybrid = []
    if "sts" in f:  # the English multi-task set (arms a/b/c/e)
        hybrid = [_ds(f["sts"], "sts", score_range=[0, 5]), _ds(f["mrpc"], "pair_classification", score_range=[0, 1]), _ds(f["bank"], "classification", num_negatives=10)]
    if arm == "a-infonce":
        datasets = [_ds(f["sts_pairs"], "retrieval", num_negatives=0), _ds(f["mrpc_pairs"], "retrieval", num_negatives=0), _ds(f["bank_pairs"], "retrieval", num_negatives=0)]
    elif arm == "a-cosent":
        datasets = hybrid[:2] + [_ds(f["bank_pairs"], "retrieval", num_negatives=0)]
    elif arm in ("a-hybrid", "b-nomrl", "c-noproj"):
        datasets = hybrid
        if arm == "b-nomrl":
            model["matryoshka_dims"] = None
        if arm == "c-noproj":
            model["projection_dim"] = None
            model["matryoshka_dims"] = EN_DIMS[1:]
    elif arm == "e-pearson":
        datasets = [_ds(f["sts"], "sts", score_range=[0, 5], loss={"name": "pearson"}), *hybrid[1:]]
    elif arm in ("f-static", "f-dynamic"):
        model.update(projection_dim=None, matryoshka_dims=None)
        datasets = [_ds(f["mined"], "retrieval", num_negatives=2)]
        if arm == "f-dynamic":
            mining = {"dynamic": {"every_steps": sz["every"], "ratio": 1.15, "max_score": 0.8, "pool_size": sz["pool"]}}
    elif arm == "d-zh":
        model.update(projection_dim=None, matryoshka_dims=None)
        datasets = [
            _ds(f["zh_sts"], "sts", score_range=[0, 5]),
            _ds(f["zh_afqmc"], "pair_classification", score_range=[0, 1]),
            _ds(f["zh_nli"], "retrieval", num_negatives=1),
            _ds(f["zh_bge"], "retrieval", num_negatives=1),
        ]
    else:
        raise ValueError(f"unknown training arm {arm}")
    recipe = {
        "model": model,
        "datasets": datasets,
        "loss_preset": "piccolo2",  # the paper's ablation: Piccolo2's task weights (CoSENT 0.04, label-contrastive 0.2)
        "sampling": {"mixing": "round_robin"},
        "training": {
            "output_dir": str(out_dir),
            "batch_size": sz["batch"],
            "max_steps": sz["steps"],
            "learning_rate": sz["lr"],
            "warmup_ratio": 0.1,
            "seed": seed,
            "logging_steps": max(1, sz["steps"] // 4),
            "report_to": [],
        },
    }
    if mining:
        recipe["mining"] = mining
    return recipe


CLUSTER_SAMPLE = 2048


def evaluate(model_path: str, suite: Path, dims: list[int], sz: dict[str, Any]) -> dict[str, Any]:
    from mteb.abstasks.clustering import AbsTaskClustering

    from hybridembed.evaluation import run_suite

    # mteb's clustering draws 10 bootstrap samples of 16,384 documents (with replacement) and runs k-means on each:
    # ~40 s per dim on this CPU for a 400-text set. 2,048 draws from the same few hundred texts keep the protocol's
    # shape at 1/8 of the cost (same for every arm and the base model).
    AbsTaskClustering.max_documents_per_cluster = CLUSTER_SAMPLE
    from hybridembed.model import load_model

    from hybridembed.model import embedding_dim

    model = load_model(model_path)
    model.max_seq_length = sz["max_seq_length"]  # the same truncation for the base model and every fine-tuned one
    full = embedding_dim(model)
    dims = [d for d in dims if d <= full] or [full]  # a tiny test backbone has fewer dims than MiniLM
    return run_suite(model, suite, dims=dims, batch_size=64, show_progress=False)


def run_arm(arm: str, seed: int, backbone: str, data: dict[str, Any], sz: dict[str, Any], out: Path, force: bool) -> dict[str, Any]:
    cache = out / "arms" / f"{arm}-s{seed}.json"
    if cache.exists() and not force:
        print(f"[{arm} seed {seed}] cached: {cache}", flush=True)
        return json.loads(cache.read_text())
    started = time.perf_counter()
    en_dims = {"a-infonce": [768], "a-cosent": [768], "a-hybrid": EN_DIMS, "b-nomrl": EN_DIMS, "c-noproj": EN_DIMS[1:], "e-pearson": [768]}
    entry: dict[str, Any] = {"arm": arm, "seed": seed}
    if arm in ("base-en", "base-zh"):
        suite = data["en"]["suite"] if arm == "base-en" else data["zh"]["suite"]
        dims = EN_DIMS[1:] if arm == "base-en" else [384]
        entry["train_seconds"] = 0.0
        t0 = time.perf_counter()
        entry["eval"] = evaluate(backbone, suite, dims, sz)
        entry["eval_seconds"] = time.perf_counter() - t0
    else:
        from hybridembed.recipe import Recipe
        from hybridembed.train import run_training

        lang = "zh" if arm == "d-zh" else "en"
        model_dir = out / "models" / f"{arm}-s{seed}"
        recipe = Recipe.model_validate(arm_recipe(arm, seed, backbone, data[lang], sz, model_dir))
        t0 = time.perf_counter()
        run_training(recipe)
        entry["train_seconds"] = time.perf_counter() - t0
        log = [json.loads(line) for line in open(model_dir / "training_log.jsonl", encoding="utf-8")]
        entry["train_log"] = log
        entry["mining"] = {k: sum(e.get(k, 0) for e in log) for k in ("mining/checked", "mining/easy", "mining/replaced", "mining/exhausted")}
        dims = [384] if lang == "zh" else en_dims.get(arm, [384])
        t0 = time.perf_counter()
        entry["eval"] = evaluate(str(model_dir), data[lang]["suite"], dims, sz)
        entry["eval_seconds"] = time.perf_counter() - t0
        shutil.rmtree(model_dir, ignore_errors=True)  # weights are not needed after evaluation (≈ 90 MB each)
    entry["seconds"] = time.perf_counter() - started
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(entry, indent=1, default=str))
    print(f"[{arm} seed {seed}] train {entry['train_seconds']:.0f} s, eval {entry['eval_seconds']:.0f} s", flush=True)
    return entry


# ---------------------------------------------------------------- tables


def _score(entry: dict[str, Any], task: str, dim: int) -> float | None:
    t = entry["eval"]["tasks"].get(task)
    d = t and t["dims"].get(str(dim))
    return None if not d or d["main_score"] is None else 100 * d["main_score"]


def _type_scores(entry: dict[str, Any], dim: int) -> dict[str, float]:
    by_type = entry["eval"]["averages"]["by_type"]
    out = {t: 100 * by_type[t][str(dim)] for t in TYPE_ORDER if t in by_type and str(dim) in by_type[t]}
    if str(dim) in entry["eval"]["averages"]["overall"]:
        out["avg"] = 100 * entry["eval"]["averages"]["overall"][str(dim)]
    return out


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def build_tables(res: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Each table: id, title, markdown, and the numbers its plot draws."""
    tables = []
    common = f"steps {meta['steps']} × batch {meta['batch']}, max_seq_length {meta['max_seq_length']}, lr {meta['lr']}, backbone {meta['backbone']}; machine: {meta['machine']}"

    def seeds_of(arm: str) -> list[int]:
        return [e["seed"] for e in res.get(arm, [])]

    def mean_spread(arm: str, dim: int, key: str) -> tuple[float, float, list[float]]:
        vals = [_type_scores(e, dim).get(key) for e in res.get(arm, [])]
        vals = [v for v in vals if v is not None]
        if not vals:
            return float("nan"), float("nan"), []
        return statistics.mean(vals), (max(vals) - min(vals)) / 2, vals

    # --- a
    a_arms = [a for a in ("a-infonce", "a-cosent", "a-hybrid") if res.get(a)]
    if a_arms:
        keys = [t for t in TYPE_ORDER] + ["avg"]
        rows, plot = [], {}
        if res.get("base-en"):
            base = _type_scores(res["base-en"][0], 384)
            rows.append(["base (no training, 384)", "–"] + [_fmt(base.get(k)) for k in keys])
        for arm in a_arms:
            for e in res[arm]:
                sc = _type_scores(e, 768)
                rows.append([arm, str(e["seed"])] + [_fmt(sc.get(k)) for k in keys])
            if len(res[arm]) > 1:
                cells = []
                for k in keys:
                    m, h, _ = mean_spread(arm, 768, k)
                    cells.append(f"{m:.2f} ± {h:.2f}")
                rows.append([f"**{arm} mean ± half-range**", ",".join(map(str, seeds_of(arm)))] + cells)
            plot[arm] = {k: mean_spread(arm, 768, k) for k in keys}
        md = _md(["arm", "seed"] + [TYPE_SHORT.get(k, k) for k in keys], rows)
        tables.append({
            "id": "a_piccolo_ablation",
            "title": "Table A — Piccolo2 loss ablation (en-bench, main scores × 100 at 768 dims; avg = mean of task-type averages)",
            "caption": f"seeds {sorted({s for a in a_arms for s in seeds_of(a)})}; {common}",
            "markdown": md,
            "plot": plot,
        })
    # --- b
    if res.get("a-hybrid") or res.get("b-nomrl"):
        rows, plot = [], {}
        for arm, label in (("base-en", "base, no projection (prefix of 384)"), ("b-nomrl", "projection 768, no MRL"), ("a-hybrid", "projection 768 + MRL")):
            if not res.get(arm):
                continue
            line = []
            for d in EN_DIMS:
                m, h, vals = mean_spread(arm, d, "avg")
                line.append(None if not vals else m)
            n = len(res[arm])
            rows.append([label, ",".join(map(str, seeds_of(arm))) if arm != "base-en" else "–"] + [_fmt(v) for v in line])
            plot[label] = dict(zip(map(str, EN_DIMS), line))
            del n
        md = _md(["model", "seed(s)"] + [str(d) for d in EN_DIMS], rows)
        tables.append({
            "id": "b_matryoshka",
            "title": "Table B — Matryoshka: en-bench average × 100 at each embedding prefix (mean over seeds)",
            "caption": f"{common}",
            "markdown": md,
            "plot": plot,
        })
    # --- c
    if res.get("a-hybrid") and res.get("c-noproj"):
        keys = TYPE_ORDER + ["avg"]
        rows, plot = [], {}
        for arm, label, dim in (("base-en", "base (384)", 384), ("c-noproj", "no projection (384, MRL 384…64)", 384), ("a-hybrid", "projection 384→768 (+MRL)", 768), ("a-hybrid", "projection 384→768, first 384 dims", 384)):
            if not res.get(arm):
                continue
            cells = [mean_spread(arm, dim, k)[0] for k in keys]
            rows.append([label, ",".join(map(str, seeds_of(arm))) if arm != "base-en" else "–"] + [_fmt(v) for v in cells])
            plot[label] = dict(zip(keys, cells))
        md = _md(["model", "seed(s)"] + [TYPE_SHORT.get(k, k) for k in keys], rows)
        tables.append({
            "id": "c_dimension_scaling",
            "title": "Table C — dimension scaling: projection to 768 vs none (en-bench × 100)",
            "caption": common,
            "markdown": md,
            "plot": plot,
        })
    # --- d
    if res.get("base-zh") and res.get("d-zh"):
        base, ft = res["base-zh"][0], res["d-zh"][0]
        rows, plot = [], {}
        for task in base["eval"]["tasks"]:
            b, f = _score(base, task, 384), _score(ft, task, 384)
            rows.append([task, base["eval"]["tasks"][task]["main_metric"], _fmt(b), _fmt(f), _fmt(None if b is None or f is None else f - b)])
            plot[task] = {"base": b, "fine-tuned": f}
        b, f = _type_scores(base, 384).get("avg"), _type_scores(ft, 384).get("avg")
        rows.append(["**average** (of task types)", "", _fmt(b), _fmt(f), _fmt(None if b is None or f is None else f - b)])
        md = _md(["task", "metric", "base", "fine-tuned", "Δ"], rows)
        tables.append({
            "id": "d_chinese",
            "title": "Table D — Chinese: all-MiniLM-L6-v2 fine-tuned on Chinese training sets vs base (zh-bench × 100, 384 dims)",
            "caption": f"seed {seeds_of('d-zh')}; {common}",
            "markdown": md,
            "plot": plot,
        })
    # --- e
    if res.get("e-pearson") and res.get("a-hybrid"):
        rows, plot = [], {}
        for arm, label in (("a-hybrid", "CoSENT on STS (τ 0.05, weight 0.04)"), ("e-pearson", "Pearson on STS (weight 1)")):
            sts = [_score(e, "stsb-dev", 768) or float("nan") for e in res[arm]]
            avg = [_type_scores(e, 768).get("avg", float("nan")) for e in res[arm]]
            pc = [_score(e, "mrpc-test", 768) or float("nan") for e in res[arm]]
            rows.append([label, ",".join(map(str, seeds_of(arm))), _fmt(statistics.mean(sts)), _fmt(statistics.mean(pc)), _fmt(statistics.mean(avg))])
            plot[label] = {"STS-B dev": statistics.mean(sts), "MRPC": statistics.mean(pc), "avg": statistics.mean(avg)}
        md = _md(["STS loss (rest of the hybrid recipe unchanged)", "seed(s)", "STS-B dev Spearman", "MRPC max AP", "en-bench avg"], rows)
        tables.append({"id": "e_pearson_vs_cosent", "title": "Table E — Pearson vs CoSENT for STS (768 dims, × 100)", "caption": common, "markdown": md, "plot": plot})
    # --- f
    if res.get("f-static") and res.get("f-dynamic"):
        keys = ["stsb-dev", "wikiqa-dev", "msmarco-trecdl19-subset"]
        rows, plot = [], {}
        if res.get("base-en"):
            e = res["base-en"][0]
            rows.append(["base (no training)", "–"] + [_fmt(_score(e, k, 384)) for k in keys] + [_fmt(_type_scores(e, 384).get("avg")), "–"])
        for arm, label in (("f-static", "static negatives (mined once, ranks from the base model)"), ("f-dynamic", "dynamic mining (Conan rule)")):
            e = res[arm][0]
            m = e.get("mining") or {}
            events = f"{int(m.get('mining/replaced', 0))} / {int(m.get('mining/checked', 0))}" if arm == "f-dynamic" else "–"
            rows.append([label, str(e["seed"])] + [_fmt(_score(e, k, 384)) for k in keys] + [_fmt(_type_scores(e, 384).get("avg")), events])
            plot[label] = {k: _score(e, k, 384) for k in keys}
        md = _md(["negatives", "seed", "STS-B dev", "WikiQA MAP", "MS MARCO nDCG@10", "en-bench avg", "replaced / checked"], rows)
        tables.append({
            "id": "f_dynamic_mining",
            "title": "Table F — dynamic hard-negative mining on vs off (retrieval rows from STS-B train, 384 dims, × 100)",
            "caption": f"{common}; 2 active negatives per row from a pool of {meta['pool']} (ranks {meta['mine_range'][0]}–{meta['mine_range'][1]} of the base model), re-scored every {meta['every']} steps",
            "markdown": md,
            "plot": plot,
        })
    return tables


def plot_table(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    plot = table["plot"]
    if table["id"] == "b_matryoshka":
        for label, series in plot.items():
            xs = [int(d) for d, v in series.items() if v is not None]
            ys = [v for v in series.values() if v is not None]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(EN_DIMS, [str(d) for d in EN_DIMS])
        ax.set_xlabel("embedding dims (prefix)")
        ax.set_ylabel("en-bench average × 100")
    else:
        series_names = list(plot)
        groups = list(dict.fromkeys(k for s in plot.values() for k in s))
        width = 0.8 / max(1, len(series_names))
        for i, name in enumerate(series_names):
            vals, errs = [], []
            for g in groups:
                v = plot[name].get(g)
                if isinstance(v, (tuple, list)):
                    vals.append(v[0])
                    errs.append(v[1])
                else:
                    vals.append(float("nan") if v is None else v)
                    errs.append(0.0)
            xs = [j + i * width for j in range(len(groups))]
            ax.bar(xs, vals, width=width, yerr=errs if any(errs) else None, capsize=3, label=name)
        ax.set_xticks([j + width * (len(series_names) - 1) / 2 for j in range(len(groups))], [TYPE_SHORT.get(g, g) for g in groups], rotation=20)
        ax.set_ylabel("score × 100")
    ax.set_title(table["title"].split(" — ")[0] + " — " + table["title"].split(" — ")[1].split(" (")[0], fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/reproduce", help="output folder (tables, PNGs, results.json, cached arms)")
    p.add_argument("--quick", action="store_true", help="tiny steps and slices: checks the plumbing in a few minutes")
    p.add_argument("--only", default=None, help=f"comma-separated arms to run (default all): {','.join(ALL_ARMS)}")
    p.add_argument("--seeds", default="0,1", help="seeds of the a-* ablation arms (other arms use the first)")
    p.add_argument("--steps", type=int, default=None, help="training steps per arm (default 45; --quick 4)")
    p.add_argument("--batch", type=int, default=None, help="rows per batch (default 16; --quick 8)")
    p.add_argument("--backbone", default="bundled:all-MiniLM-L6-v2", help="backbone (tests pass a tiny random BERT)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="re-run arms whose cached result exists")
    p.add_argument("--budget-min", type=float, default=None, help="start no new arm after this many minutes (cut arms are listed)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sz = sizes(args.quick, args.steps, args.batch)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    arms = [a.strip() for a in args.only.split(",")] if args.only else list(ALL_ARMS)
    unknown = sorted(set(arms) - set(ALL_ARMS))
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {ALL_ARMS}")

    work = out / "data"
    data: dict[str, Any] = {}
    if any(a not in ("base-zh", "d-zh") for a in arms):
        data["en"] = prepare_english(work, sz)
        if any(a.startswith("f-") for a in arms):
            data["en"]["files"]["mined"] = mine_pool(work, args.backbone, data["en"]["files"], sz)
    if any(a in ("base-zh", "d-zh") for a in arms):
        data["zh"] = prepare_chinese(work, sz)

    # Job order: the base model, the ablation's first seed, its other seeds, then the other arms —
    # so that a run cut by --budget-min loses the least important work first.
    jobs = [(a, seeds[0]) for a in arms if not a.startswith("a-") and a.startswith("base-en")]
    jobs += [(a, s) for s in seeds for a in arms if a.startswith("a-")]
    jobs += [(a, seeds[0]) for a in arms if not a.startswith("a-") and a != "base-en"]
    res: dict[str, list[dict[str, Any]]] = {}
    cut: list[str] = []
    failed: list[str] = []
    for arm, seed in jobs:
        cached = (out / "arms" / f"{arm}-s{seed}.json").exists() and not args.force
        if args.budget_min and not cached and time.perf_counter() - wall0 > 60 * args.budget_min:
            cut.append(f"{arm}-s{seed}")
            continue
        try:
            res.setdefault(arm, []).append(run_arm(arm, seed, args.backbone, data, sz, out, args.force))
        except Exception as err:  # one broken arm must not lose the others; it is listed and re-runs next time
            if not res.get(arm):
                res.pop(arm, None)
            failed.append(f"{arm}-s{seed}: {type(err).__name__}: {err}")
            print(f"[{arm} seed {seed}] FAILED: {failed[-1]}", flush=True)
            import traceback

            traceback.print_exc()
    for entries in res.values():
        entries.sort(key=lambda e: e["seed"])

    wall = time.perf_counter() - wall0
    meta = {
        **{k: sz[k] for k in ("steps", "batch", "max_seq_length", "lr", "pool", "every", "mine_range")},
        "slices": {k: v for k, v in sz.items() if k not in ("steps", "batch", "max_seq_length", "lr")},
        "seeds": seeds,
        "clustering_bootstrap_sample": CLUSTER_SAMPLE,
        "cut_by_budget": cut,
        "failed": failed,
        "quick": args.quick,
        "backbone": args.backbone,
        "machine": machine(),
        "started": started_at,
        "wall_seconds_this_invocation": round(wall, 1),
        "arm_seconds": {f"{e['arm']}-s{e['seed']}": round(e["seconds"], 1) for es in res.values() for e in es},
        "command": "python benchmarks/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data_rows": {lang: d["rows"] for lang, d in data.items()},
        "dropped_for_overlap_with_eval": {lang: d["dropped"] for lang, d in data.items()},
    }
    meta["arms_total_seconds"] = round(sum(meta["arm_seconds"].values()), 1)
    tables = build_tables(res, meta)
    printed = [
        f"# hybridembed reproduction — {'QUICK (plumbing only)' if args.quick else 'full run'}",
        f"command: `{meta['command']}`",
        f"machine: {meta['machine']}; started {started_at}; wall time of this invocation {wall / 60:.1f} min "
        f"(sum over arms, incl. cached ones: {meta['arms_total_seconds'] / 60:.1f} min)",
    ]
    if cut:
        printed.append(f"**cut by --budget-min {args.budget_min}: {', '.join(cut)} (not run)**")
    if failed:
        printed.append(f"**failed: {'; '.join(failed)}**")
    printed.append("")
    for t in tables:
        png = out / f"{t['id']}.png"
        plot_table(t, png)
        t["png"] = png.name
        printed += [f"## {t['title']}", "", t["markdown"], "", f"_{t['caption']}_", ""]
    text = "\n".join(printed)
    print(text, flush=True)
    (out / "tables.md").write_text(text + "\n", encoding="utf-8")
    results = {"meta": meta, "tables": [{k: v for k, v in t.items() if k != "plot"} for t in tables], "arms": res}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
