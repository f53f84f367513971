"""The reproduction driver's arms: what each arm trains (its recipe file, or the stock trainer), the rows it draws, its evaluation, and its cache folder OUT/arms/<arm>-s<seed>/{model,result.json}.

The arms are listed in reproduce-arms/arms.yaml and each training arm's recipe is a YAML file beside it.

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

ARMS_DIR = Path(__file__).resolve().parent / "reproduce-arms"  # arms.yaml (the table) and one recipe YAML per training arm
PLAN_FILE = "started_plan.json"  # in an arm's model folder while it trains: what a resume must match
CHECKPOINT_EVERY = 50  # steps between the checkpoints an interrupted arm resumes from
CLUSTER_SAMPLE = 2048
ARM_KEYS = {"lang", "kind", "recipe", "vs", "seeds", "dims"}


def load_arms(path: Path = ARMS_DIR / "arms.yaml") -> dict[str, dict[str, Any]]:
    """arms.yaml: name → lang, kind (base / ours / stock), recipe file, the arm it is compared with, seeds (all / first), eval dims."""
    import yaml

    arms = yaml.safe_load(path.read_text(encoding="utf-8"))
    for name, spec in arms.items():
        unknown = set(spec) - ARM_KEYS
        if unknown or spec.get("kind") not in ("base", "ours", "stock") or (spec["kind"] != "base") != bool(spec.get("recipe")):
            raise ValueError(f"{path}: {name}: needs kind base/ours/stock and a recipe unless base; unknown keys {sorted(unknown)}")
    return arms


ARMS = load_arms()


def backbone_dim(backbone: str) -> int:
    """Hidden size of the backbone (from its config.json; 384 when unreadable) — a tiny test BERT has 64."""
    from hybridembed.modeling.model import resolve_backbone

    try:
        config = json.loads((Path(resolve_backbone(backbone)) / "config.json").read_text())
        return int(config.get("hidden_size") or config.get("d_model") or 384)
    except (OSError, ValueError):
        return 384


# ---------------------------------------------------------------- recipes


def data_dir(data: dict[str, Any]) -> Path:
    """The language's sliced training files (OUT/data/train-<lang>): where an arm recipe's relative paths point."""
    return Path(data["files"]["sts"]).parent


def arm_recipe(arm: str, seed: int, backbone: str, data: dict[str, Any], sz: dict[str, Any], model_dir: Path) -> Any:
    """The arm's recipe file (reproduce-arms/<recipe>) with the sizes every arm shares as overrides; the stock arm reads its data and model from it too."""
    from hybridembed.recipe import load_recipe

    path, raw = ARMS_DIR / ARMS[arm]["recipe"], recipe_yaml(arm)
    overrides: dict[str, Any] = {
        "model.backbone": backbone, "model.max_seq_length": sz["max_seq_length"], "sampling.mixing": sz["mixing"],
        "training.output_dir": str(model_dir), "training.batch_size": sz["batch"], "training.max_steps": sz["steps"],
        "training.learning_rate": sz["lr"], "training.warmup_ratio": sz["warmup_ratio"], "training.seed": seed,
        "training.logging_steps": max(1, sz["steps"] // 12), "training.precision": sz.get("precision", "fp32"),
    }  # fmt: skip
    if raw["model"].get("projection_dim", 768) is None and raw["model"].get("matryoshka_dims"):
        hidden = backbone_dim(backbone)  # without a projection the dims cannot exceed the backbone's width (64 for a tiny test BERT)
        overrides["model.matryoshka_dims"] = [d for d in raw["model"]["matryoshka_dims"] if d <= hidden] or [hidden]
    if mines_dynamically(arm):
        overrides |= {"mining.dynamic.every_steps": sz["every"], "mining.dynamic.pool_size": sz["mine_pool"]}
    return load_recipe(path, overrides, data_root=data_dir(data))


def recipe_yaml(arm: str) -> dict[str, Any]:
    """The arm's recipe file as written (no overrides); empty for a base arm."""
    import yaml

    return yaml.safe_load((ARMS_DIR / ARMS[arm]["recipe"]).read_text(encoding="utf-8")) if ARMS[arm].get("recipe") else {}


def needs_mining(arm: str) -> bool:
    """Whether the arm's recipe reads the negatives mined offline (reproduce_data.mine_pool's bge_mined_* files)."""
    return any(str(d["path"]).startswith("bge_mined_") for d in recipe_yaml(arm).get("datasets", []))


def mines_dynamically(arm: str) -> bool:
    return bool((recipe_yaml(arm).get("mining") or {}).get("dynamic"))


def recipe_negatives() -> dict[str, int]:
    """The negatives per row of the nli, bge and classification sources, as the recipes set them (the same in every arm: tests check).

    The sizes (``reproduce.sizes``) take them from here: the offline miner keeps that many for the static
    arm, the captions quote them, and the cache key holds them.
    """
    out: dict[str, int] = {}
    for arm in ARMS:
        for d in recipe_yaml(arm).get("datasets", []):
            stem = Path(d["path"]).stem
            source = "bge" if stem.startswith("bge") else stem.split("_")[0]  # bge_mined_pool → bge, cls_tnews → cls
            if d.get("num_negatives") and source in ("nli", "bge", "cls"):
                out.setdefault(f"{source}_negatives", d["num_negatives"])
    return out


def recipe_fingerprint(recipe: Any) -> dict[str, Any]:
    """A recipe as a cached result must match it: every setting except the seed and the output folder, dataset files by name.

    Cached results record the recipe they trained (results made before the arms were YAML files
    recorded the same settings as a dict), so editing an arm's YAML re-runs that arm.
    """
    from hybridembed.recipe import Recipe

    dump = Recipe.model_validate(recipe).model_dump(mode="json") if isinstance(recipe, dict) else recipe.model_dump(mode="json")
    for key in ("output_dir", "seed"):
        dump["training"].pop(key, None)
    for ds in dump["datasets"]:
        ds["path"] = Path(ds["path"]).name
    return dump


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
    if needs_mining(arm):
        key |= {k: sz[k] for k in ("mine_corpus", "mine_range", "mine_pool", "mine_max_ratio", "every")}
    if ARMS[arm]["kind"] == "base":
        key = {k: key[k] for k in ("backbone", "suite", "eval_max_seq_length", "quick")}
    return json.loads(json.dumps(key))


def expected_cache(arm: str, backbone: str, data: dict[str, Any], sz: dict[str, Any]) -> dict[str, Any]:
    """What a cached result of the arm must match: its plan key and (training arms) its recipe's fingerprint."""
    recipe = arm_recipe(arm, 0, backbone, data, sz, Path("model")) if ARMS[arm]["kind"] != "base" else None
    return {"plan": plan_key(arm, backbone, data, sz), "recipe": recipe_fingerprint(recipe) if recipe is not None else None}


def is_current(entry: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether a cached result.json / train.json entry was made with the expected plan and recipe."""
    if entry.get("plan") != expected["plan"]:
        return False
    return expected["recipe"] is None or ("recipe" in entry and recipe_fingerprint(entry["recipe"]) == expected["recipe"])


def run_arm(arm: str, seed: int, backbone: str, data: dict[str, Any], sz: dict[str, Any], out: Path, force: bool) -> dict[str, Any]:
    """Train (unless its model folder is complete), evaluate, and cache OUT/arms/<arm>-s<seed>/result.json."""
    spec = ARMS[arm]
    arm_dir = out / "arms" / f"{arm}-s{seed}"
    cache, model_dir, train_info = arm_dir / "result.json", arm_dir / "model", arm_dir / "train.json"
    expected = expected_cache(arm, backbone, data, sz)
    key = expected["plan"]
    if cache.exists() and not force:
        entry = json.loads(cache.read_text())
        if is_current(entry, expected):
            print(f"[{arm} seed {seed}] cached: {cache}", flush=True)
            return entry
        print(f"[{arm} seed {seed}] cached result was made with other sizes or another recipe: re-running", flush=True)
    started = time.perf_counter()
    entry: dict[str, Any] = {"arm": arm, "seed": seed, "lang": spec["lang"], "kind": spec["kind"], "plan": key}
    if spec["kind"] == "base":
        entry |= {"train_seconds": 0.0, "model": backbone}
        model_path = backbone
    else:
        recipe = arm_recipe(arm, seed, backbone, data, sz, model_dir)
        done = train_info.exists() and is_current(json.loads(train_info.read_text()), expected) and (model_dir / "modules.json").exists() and not force
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
            info = {"plan": key, "train_seconds": time.perf_counter() - t0, "resumed": resumable, "rows_drawn": drawn, "recipe": recipe.model_dump(mode="json")}
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


def cached_results(out: Path, expected: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every cached arm result under OUT/arms that is current for this invocation (`expected_cache`; arms run in earlier invocations too)."""
    res: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / "arms").glob("*/result.json")):
        entry = json.loads(path.read_text())
        if entry.get("arm") in expected and is_current(entry, expected[entry["arm"]]):
            res.setdefault(entry["arm"], []).append(entry)
    for entries in res.values():
        entries.sort(key=lambda e: e["seed"])
    return res
