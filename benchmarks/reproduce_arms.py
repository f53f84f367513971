"""The reproduction driver's arms: what each arm trains (its recipe, or the stock trainer), the rows it draws, its evaluation, and its cache folder OUT/arms/<arm>-s<seed>/{model,result.json}.

Every training arm of a language reads the same sliced rows (reproduce_data) with the same steps,
batch size, learning rate and proportional mixing; an arm changes one thing against the arm it is
compared with. ``run_recipe`` writes the model to the recipe's ``training.output_dir``, which is
OUT/arms/<arm>-s<seed>/model — a sentence-transformers folder (``SentenceTransformer(path)``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

MRL_DIMS = [768, 384, 256, 128, 64]
PLAN_FILE = "started_plan.json"  # in an arm's model folder while it trains: what a resume must match
CHECKPOINT_EVERY = 50  # steps between the checkpoints an interrupted arm resumes from
NOPROJ_DIMS = [384, 256, 128, 64]
CLUSTER_SAMPLE = 2048

# name → lang, kind (base / ours / stock), the data view, the arm it is compared with, seeds (all / first), eval dims.
ARMS: dict[str, dict[str, Any]] = {
    "base-zh": {"lang": "zh", "kind": "base", "dims": NOPROJ_DIMS},
    "zh-infonce": {"lang": "zh", "kind": "ours", "view": "infonce", "vs": "zh-hybrid", "seeds": "all", "dims": [768]},
    "zh-cosent": {"lang": "zh", "kind": "ours", "view": "cosent", "vs": "zh-hybrid", "seeds": "all", "dims": [768]},
    "zh-hybrid": {"lang": "zh", "kind": "ours", "view": "hybrid", "vs": "zh-hybrid", "seeds": "all", "dims": MRL_DIMS},
    "zh-stock": {"lang": "zh", "kind": "stock", "view": "cosent", "vs": "zh-hybrid", "dims": [768]},
    "zh-nomrl": {"lang": "zh", "kind": "ours", "view": "hybrid", "vs": "zh-hybrid", "dims": MRL_DIMS, "model": {"matryoshka_dims": None}},
    "zh-noproj": {
        "lang": "zh",
        "kind": "ours",
        "view": "hybrid",
        "vs": "zh-hybrid",
        "dims": [384],
        "model": {"projection_dim": None, "matryoshka_dims": NOPROJ_DIMS},
    },
    "zh-pearson": {"lang": "zh", "kind": "ours", "view": "hybrid", "vs": "zh-hybrid", "dims": [768], "sts_loss": "pearson"},
    "zh-static": {"lang": "zh", "kind": "ours", "view": "hybrid", "vs": "zh-hybrid", "dims": [768], "bge": "bge_static"},
    "zh-dynamic": {"lang": "zh", "kind": "ours", "view": "hybrid", "vs": "zh-static", "dims": [768], "bge": "bge_pool", "dynamic": True},
    "base-en": {"lang": "en", "kind": "base", "dims": [384]},
    "en-infonce": {"lang": "en", "kind": "ours", "view": "infonce", "vs": "en-hybrid", "dims": [768]},
    "en-cosent": {"lang": "en", "kind": "ours", "view": "cosent", "vs": "en-hybrid", "dims": [768]},
    "en-hybrid": {"lang": "en", "kind": "ours", "view": "hybrid", "vs": "en-hybrid", "dims": [768]},
    "en-stock": {"lang": "en", "kind": "stock", "view": "cosent", "vs": "en-hybrid", "dims": [768]},
}


def backbone_dim(backbone: str) -> int:
    """Hidden size of the backbone (from its config.json; 384 when unreadable) — a tiny test BERT has 64."""
    from hybridembed.modeling.model import resolve_backbone

    try:
        config = json.loads((Path(resolve_backbone(backbone)) / "config.json").read_text())
        return int(config.get("hidden_size") or config.get("d_model") or 384)
    except (OSError, ValueError):
        return 384


# ---------------------------------------------------------------- recipes


def _ds(path: Path, task: str, **extra: Any) -> dict[str, Any]:
    return {"path": str(path), "task": task, **extra}


def datasets_for(arm: str, data: dict[str, Any], sz: dict[str, Any]) -> list[dict[str, Any]]:
    """The recipe's datasets: Piccolo2's routing (hybrid), with CoSENT only (cosent) or InfoNCE only (infonce)."""
    spec, f = ARMS[arm], data["files"]
    view = spec["view"]
    if view == "infonce":
        out = [_ds(f["sts_pairs"], "retrieval", num_negatives=0), _ds(f["pcls_pairs"], "retrieval", num_negatives=0)]
    else:
        sts_loss = {"loss": {"name": spec["sts_loss"]}} if spec.get("sts_loss") else {}
        out = [_ds(f["sts"], "sts", score_range=[0, 5], **sts_loss), _ds(f["pcls"], "pair_classification", score_range=[0, 1])]
    if "nli" in f:
        out.append(_ds(f["nli"], "retrieval", num_negatives=sz["nli_negatives"]))
    if "bge" in f:
        out.append(_ds(f[spec.get("bge", "bge")], "retrieval", num_negatives=sz["bge_negatives"]))
    if view == "hybrid":
        out += [_ds(f[n], "classification", num_negatives=sz["cls_negatives"]) for n in sorted(f) if n.startswith("cls_") and n != "cls_pairs"]
    else:
        out.append(_ds(f["cls_pairs"], "retrieval", num_negatives=0))
    return out


def arm_recipe(arm: str, seed: int, backbone: str, data: dict[str, Any], sz: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """The recipe (a dict for ``Recipe.model_validate``) of a training arm; the stock arm reads its data and model from it too."""
    spec = ARMS[arm]
    hidden = backbone_dim(backbone)
    model: dict[str, Any] = {"backbone": backbone, "max_seq_length": sz["max_seq_length"], "projection_dim": 768, "matryoshka_dims": list(MRL_DIMS)}
    model.update(spec.get("model", {}))
    if model["projection_dim"] is None and model["matryoshka_dims"]:
        model["matryoshka_dims"] = [d for d in model["matryoshka_dims"] if d <= hidden] or [hidden]
    recipe: dict[str, Any] = {
        "model": model,
        "datasets": datasets_for(arm, data, sz),
        "sampling": {"mixing": sz["mixing"]},
        "training": {
            "output_dir": str(model_dir),
            "batch_size": sz["batch"],
            "max_steps": sz["steps"],
            "learning_rate": sz["lr"],
            "warmup_ratio": sz["warmup_ratio"],
            "seed": seed,
            "logging_steps": max(1, sz["steps"] // 12),
            "report_to": [],
            "precision": sz.get("precision", "fp32"),
        },
    }  # loss_preset: the default (equal task weights, docs/losses.md "Task weights")
    if spec.get("dynamic"):
        recipe["mining"] = {"dynamic": {"every_steps": sz["every"], "ratio": 1.15, "max_score": 0.8, "pool_size": sz["mine_pool"], "init": "start"}}
    return recipe


def rows_drawn(recipe: Any) -> dict[str, Any]:
    """Replays the trainer's task sampler (same plans, seed and epochs; no model) and counts the rows of its first max_steps batches."""
    import bisect

    from hybridembed.data import load_datasets
    from hybridembed.training.builder import _batch_plans
    from hybridembed.training.sampling import TaskBatchSampler

    datasets = load_datasets(recipe.datasets)
    sampler = TaskBatchSampler(_batch_plans(recipe, datasets), recipe.sampling.mixing, recipe.sampling.temperature, recipe.training.seed)
    names = [p.name for p in sampler.plans]
    per: dict[str, int] = dict.fromkeys(names, 0)
    short = 0
    seen: dict[str, set[int]] = {n: set() for n in names}
    steps, epoch = 0, 0
    while steps < recipe.training.max_steps:
        sampler.set_epoch(epoch)
        for batch in sampler:
            d = bisect.bisect_right(sampler.offsets, batch[0]) - 1
            per[names[d]] += len(batch)
            seen[names[d]].update(batch)
            short += len(batch) < sampler.plans[d].batch_size
            steps += 1
            if steps == recipe.training.max_steps:
                break
        epoch += 1
    sizes = {ds.name: len(ds) for ds in datasets}
    return {
        "total": sum(per.values()),
        "batches": steps,
        "short_batches": short,
        "per_dataset": per,
        "distinct": {n: len(s) for n, s in seen.items()},
        "dataset_rows": sizes,
        "epochs": epoch,
    }


# ---------------------------------------------------------------- the stock arm


def train_stock(recipe: Any, model_dir: Path) -> dict[str, Any]:
    """The stock SentenceTransformerTrainer on the same data, model, batch size, steps, lr and warmup (cf. benchmarks/train_throughput.py).

    CoSENTLoss for STS and pair classification, MultipleNegativesRankingLoss for the triplets and the
    (text, label text) pairs, each inside MatryoshkaLoss with the same dims and mean weights as ours;
    ST's proportional multi-dataset sampler; ST's no-duplicates batch sampler for the MNRL datasets
    and its default one for the CoSENT pairs (ours builds duplicate-free batches only where the loss
    uses in-batch negatives, too).
    """
    import random

    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MatryoshkaLoss, MultipleNegativesRankingLoss

    from hybridembed.data import load_datasets
    from hybridembed.losses import matryoshka_mean_weights
    from hybridembed.model_folder import write_training_log
    from hybridembed.modeling.model import build_model
    from hybridembed.tasks import RowShape

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from train_throughput import stock_columns

    torch.manual_seed(recipe.training.seed)
    model = build_model(recipe.model)
    model.max_seq_length = recipe.model.max_seq_length
    dims = recipe.model.matryoshka_dims
    rng = random.Random(recipe.training.seed)
    train, losses = {}, {}
    for ds in load_datasets(recipe.datasets):
        k = ds.config.num_negatives if ds.config.num_negatives is not None else ds.task.spec.default_negatives
        train[ds.name] = Dataset.from_dict(stock_columns(ds, k, rng))
        base = CoSENTLoss(model) if ds.task.shape is RowShape.SCORED_PAIR else MultipleNegativesRankingLoss(model)
        losses[ds.name] = MatryoshkaLoss(model, base, dims, matryoshka_weights=matryoshka_mean_weights(dims)) if dims else base
    t = recipe.training
    args = SentenceTransformerTrainingArguments(
        output_dir=str(model_dir), per_device_train_batch_size=t.batch_size, max_steps=t.max_steps, learning_rate=t.learning_rate,
        warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, seed=t.seed, report_to="none",
        save_strategy="no", logging_steps=t.logging_steps, logging_first_step=True, use_cpu=not torch.cuda.is_available(), bf16=t.precision == "bf16",
        multi_dataset_batch_sampler="proportional", batch_sampler=_stock_batch_sampler, disable_tqdm=True,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=losses)
    counter = _BatchSizes(trainer.data_collator)
    trainer.data_collator = counter
    trainer.train()
    trainer.save_model(str(model_dir))
    write_training_log(model_dir, trainer.state.log_history)
    trained = counter.sizes[: trainer.state.global_step]  # the loader collates one batch ahead of the trained ones
    return {
        "total": sum(trained),
        "batches": len(trained),
        "short_batches": sum(1 for n in trained if n < t.batch_size),
        "dataset_rows": {n: len(d) for n, d in train.items()},
    }


def _stock_batch_sampler(dataset: Any, **kwargs: Any) -> Any:
    """ST's NoDuplicatesBatchSampler for (anchor, positive, …) datasets, its DefaultBatchSampler for scored pairs."""
    from sentence_transformers.base.sampler import DefaultBatchSampler, NoDuplicatesBatchSampler
    from torch.utils.data import RandomSampler

    if "anchor" in dataset.column_names:
        return NoDuplicatesBatchSampler(dataset, **kwargs)
    return DefaultBatchSampler(RandomSampler(dataset, generator=kwargs.get("generator")), **kwargs)  # as ST's trainer builds its default


class _BatchSizes:
    """Wraps the stock collator to record the size of every batch it collates, in order."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.sizes: list[int] = []
        self.valid_label_columns = getattr(collate, "valid_label_columns", None)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        self.sizes.append(len(batch))
        return self.collate(batch)


# ---------------------------------------------------------------- evaluation and the cache


def evaluate(model_path: str, suite: Path, dims: list[int], sz: dict[str, Any]) -> dict[str, Any]:
    """run_suite at `dims` (those the model has), every model truncated at the same eval_max_seq_length (or its position limit)."""
    from mteb.abstasks.clustering import AbsTaskClustering

    from hybridembed.evaluation import run_suite
    from hybridembed.modeling.model import embedding_dim, load_model

    # mteb's clustering draws 10 bootstrap samples of 16,384 documents and runs k-means on each; 2,048
    # draws from the same few thousand texts keep the protocol's shape at 1/8 of the cost (same for every model).
    AbsTaskClustering.max_documents_per_cluster = CLUSTER_SAMPLE
    model = load_model(model_path)
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    model.max_seq_length = min(sz["eval_max_seq_length"], getattr(config, "max_position_embeddings", None) or sz["eval_max_seq_length"])
    full = embedding_dim(model)
    dims = [d for d in dims if d <= full] or [full]
    return run_suite(model, suite, dims=dims, batch_size=64, show_progress=False)


def plan_key(arm: str, backbone: str, data: dict[str, Any], sz: dict[str, Any]) -> dict[str, Any]:
    """What a cached result must match to be reused (sizes, rows, backbone, evaluation settings)."""
    keys = ("steps", "batch", "lr", "warmup_ratio", "max_seq_length", "eval_max_seq_length", "mixing", "nli_negatives", "bge_negatives", "cls_negatives")
    key = (
        {k: sz[k] for k in keys}
        | ({"precision": sz["precision"]} if sz.get("precision", "fp32") != "fp32" else {})
        | {"backbone": backbone, "rows": data["rows"], "suite": str(data["suite"]), "quick": sz["quick"]}
    )
    if ARMS[arm].get("bge"):
        key |= {k: sz[k] for k in ("mine_corpus", "mine_range", "mine_pool", "mine_max_ratio", "every")}
    if ARMS[arm]["kind"] == "base":
        key = {k: key[k] for k in ("backbone", "suite", "eval_max_seq_length", "quick")}
    return json.loads(json.dumps(key))


def run_arm(arm: str, seed: int, backbone: str, data: dict[str, Any], sz: dict[str, Any], out: Path, force: bool) -> dict[str, Any]:
    """Train (unless its model folder is complete), evaluate, and cache OUT/arms/<arm>-s<seed>/result.json."""
    spec = ARMS[arm]
    arm_dir = out / "arms" / f"{arm}-s{seed}"
    cache, model_dir, train_info = arm_dir / "result.json", arm_dir / "model", arm_dir / "train.json"
    key = plan_key(arm, backbone, data, sz)
    if cache.exists() and not force:
        entry = json.loads(cache.read_text())
        if entry.get("plan") == key:
            print(f"[{arm} seed {seed}] cached: {cache}", flush=True)
            return entry
        print(f"[{arm} seed {seed}] cached result was made with other sizes: re-running", flush=True)
    started = time.perf_counter()
    entry: dict[str, Any] = {"arm": arm, "seed": seed, "lang": spec["lang"], "kind": spec["kind"], "plan": key}
    if spec["kind"] == "base":
        entry |= {"train_seconds": 0.0, "model": backbone}
        model_path = backbone
    else:
        from hybridembed.recipe import Recipe

        raw = arm_recipe(arm, seed, backbone, data, sz, model_dir)
        recipe = Recipe.model_validate(raw)
        done = train_info.exists() and json.loads(train_info.read_text()).get("plan") == key and (model_dir / "modules.json").exists() and not force
        if done:
            info = json.loads(train_info.read_text())
            print(f"[{arm} seed {seed}] model folder complete, evaluating it: {model_dir}", flush=True)
        else:
            from hybridembed.model_folder import checkpoints, last_complete_checkpoint

            # An interrupted arm of the same plan resumes from its last checkpoint (exactly: docs/recipes.md).
            started_plan = model_dir / PLAN_FILE
            resumable = spec["kind"] != "stock" and started_plan.exists() and json.loads(started_plan.read_text()) == key
            resumable = resumable and last_complete_checkpoint(model_dir) is not None
            if not resumable:
                shutil.rmtree(model_dir, ignore_errors=True)
                model_dir.mkdir(parents=True)
                started_plan.write_text(json.dumps(key, default=str))
            print(f"[{arm} seed {seed}] {'resuming' if resumable else 'training'} → {model_dir}", flush=True)
            t0 = time.perf_counter()
            if spec["kind"] == "stock":
                drawn = train_stock(recipe, model_dir)
            else:
                from hybridembed.training.stages import run_recipe

                drawn = rows_drawn(recipe)
                run_recipe(recipe.model_copy(update={"training": recipe.training.model_copy(
                    update={"save_steps": CHECKPOINT_EVERY, "save_total_limit": 1, "resume": True})}))  # fmt: skip
                for _, checkpoint in checkpoints(model_dir):
                    shutil.rmtree(checkpoint)  # only resuming needed them
            # A resumed arm's seconds are only this invocation's: say so, so that timing plans can leave it out.
            info = {"plan": key, "train_seconds": time.perf_counter() - t0, "resumed": resumable, "rows_drawn": drawn, "recipe": raw}
            train_info.write_text(json.dumps(info, indent=1, default=str))
        from hybridembed.model_folder import read_training_log

        log = read_training_log(model_dir)
        entry |= {
            "train_seconds": info["train_seconds"],
            "resumed": info.get("resumed", False),
            "rows_drawn": info["rows_drawn"],
            "recipe": info["recipe"],
            "model": str(model_dir),
            "train_log": log,
        }
        entry["mining"] = {
            k: sum(e.get(k, 0) for e in log) for k in ("mining/checked", "mining/easy", "mining/replaced", "mining/exhausted", "mining/guard_replaced")
        }
        model_path = str(model_dir)
    t0 = time.perf_counter()
    entry["eval"] = evaluate(model_path, data["suite"], spec["dims"], sz)
    entry["eval_seconds"] = time.perf_counter() - t0
    entry["seconds"] = time.perf_counter() - started
    arm_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(entry, indent=1, default=str))
    print(f"[{arm} seed {seed}] train {entry['train_seconds']:.0f} s, eval {entry['eval_seconds']:.0f} s", flush=True)
    return entry


def cached_results(out: Path, keys: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every cached arm result under OUT/arms whose plan matches this invocation's (arms run in earlier invocations too)."""
    res: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / "arms").glob("*/result.json")):
        entry = json.loads(path.read_text())
        if entry.get("arm") in keys and entry.get("plan") == keys[entry["arm"]]:
            res.setdefault(entry["arm"], []).append(entry)
    for entries in res.values():
        entries.sort(key=lambda e: e["seed"])
    return res
