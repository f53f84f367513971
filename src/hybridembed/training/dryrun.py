"""`train --dry-run`: turn a recipe into one that builds everything and trains 2 steps per stage, with stand-ins for data (and, with --tiny, the backbone) that are not here.

What it keeps: the schema checks, every stage and its kind, losses, projection, Matryoshka, LoRA,
instructions, position extension, and validation of every data file that exists. What it swaps:
missing data files → small shipped files of the same task type (data/quickstart, logged), rows kept
per dataset → 256 (all still validated), batch sizes → at most 8, steps → 2, logging → none, precision → fp32 without a GPU, and with ``tiny`` the
backbone → a random tiny model of the same family (decoder when pooling is ``last``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hybridembed.recipe import Recipe, StageKind
from hybridembed.tasks import TaskType

logger = logging.getLogger(__name__)
QUICKSTART = Path(__file__).resolve().parents[3] / "data" / "quickstart"
DRY_STEPS = 2
DRY_BATCH = 8
DRY_TEXTS = 256  # raw texts read per mlm file
DRY_ROWS = 256  # rows kept per dataset
TINY_MAX_POSITIONS = 512
STAND_INS: dict[TaskType | None, dict[str, Any]] = {
    TaskType.RETRIEVAL: {"path": "stsb_paraphrase_pairs.jsonl", "task": "retrieval"},
    TaskType.RERANKING: {"path": "flagembedding_retrieval.jsonl", "task": "reranking"},
    TaskType.STS: {"path": "stsb_train.tsv", "task": "sts", "score_range": [0, 5]},
    TaskType.PAIR_CLASSIFICATION: {"path": "stsb_train.tsv", "task": "pair_classification", "score_range": [0, 5]},
    TaskType.CLASSIFICATION: {"path": "banking77_train.csv", "task": "classification"},
    TaskType.CLUSTERING: {"path": "banking77_train.csv", "task": "clustering"},
    None: {"path": "stsb_paraphrase_pairs.jsonl", "task": "retrieval"},  # pairs stage rows without a declared task
}
TEXTS_STAND_IN: dict[str, Any] = {"path": "stsb_train.tsv", "text_fields": ["sentence1", "sentence2"]}
# What a dry run may keep of a dataset entry when its file is swapped for a stand-in.
KEPT_KEYS = ("name", "weight", "num_negatives", "instruction", "loss", "query_prefix", "passage_prefix")


def _stand_in_dataset(entry: dict[str, Any]) -> dict[str, Any]:
    if Path(entry["path"]).exists():  # every record is still read and validated; only the first rows are kept
        return {**entry, "max_samples": min(entry.get("max_samples") or DRY_ROWS, DRY_ROWS)}
    task = TaskType(entry["task"]) if entry.get("task") else None
    stand_in = {**STAND_INS[task], "max_samples": DRY_ROWS, **{k: entry[k] for k in KEPT_KEYS if entry.get(k) is not None}}
    stand_in["path"] = str(QUICKSTART / stand_in["path"])
    logger.info("dry run: %s is not here; using %s (%s)", entry["path"], stand_in["path"], stand_in["task"])
    return stand_in


def _stand_in_texts(entry: dict[str, Any]) -> dict[str, Any]:
    if Path(entry["path"]).exists():
        return {**entry, "max_samples": min(entry.get("max_samples") or DRY_TEXTS, DRY_TEXTS)}
    logger.info("dry run: %s is not here; using the STS-B sentences of data/quickstart", entry["path"])
    return {**TEXTS_STAND_IN, "path": str(QUICKSTART / TEXTS_STAND_IN["path"]), "max_samples": DRY_TEXTS}


def _small_training(section: dict[str, Any] | None, cpu_only: bool) -> dict[str, Any]:
    section = dict(section or {})
    section.update(max_steps=DRY_STEPS, logging_steps=1, report_to=[], save_steps=None, epochs=1.0)
    for key in ("batch_size",):
        if section.get(key):
            section[key] = min(section[key], DRY_BATCH)
    if section.get("batch_size_per_task"):
        section["batch_size_per_task"] = {t: min(b, DRY_BATCH) for t, b in section["batch_size_per_task"].items()}
    if cpu_only and section.get("precision") in ("bf16", "fp16"):
        section["precision"] = "fp32"
    return section


def dry_run_recipe(recipe: Recipe, workdir: Path, tiny: bool = False) -> Recipe:
    """The recipe to run for `--dry-run`, writing under `workdir`."""
    import torch

    cpu_only = not torch.cuda.is_available()
    raw = recipe.model_dump(mode="json", exclude_unset=True)  # a stage override lists only what it changes
    raw["eval"] = None
    if raw.get("deepspeed"):
        logger.info("dry run: deepspeed section not used (it needs the deepspeed launcher)")
        raw["deepspeed"] = None
    raw["training"] = {**_small_training(raw.get("training"), cpu_only), "output_dir": str(workdir / "run"), "resume": False}
    raw["datasets"] = [_stand_in_dataset(d) for d in raw.get("datasets") or []]
    for stage in raw.get("stages") or []:
        stage["training"] = _small_training(stage.get("training"), cpu_only) if stage.get("training") else None
        if stage.get("datasets"):
            stage["datasets"] = [_stand_in_dataset(d) for d in stage["datasets"]]
        if stage.get("texts"):
            stage["texts"] = [_stand_in_texts(t) for t in stage["texts"]]
    for ds in raw["datasets"] + [d for s in raw.get("stages") or [] for d in s.get("datasets") or []]:
        if ds.get("batch_size"):
            ds["batch_size"] = min(ds["batch_size"], DRY_BATCH)
    if tiny:
        raw["model"] = {**raw.get("model", {}), **_tiny_backbone(recipe, workdir)}
        for stage in raw.get("stages") or []:
            if stage.get("model"):
                stage["model"]["attn_implementation"] = None
    return Recipe.model_validate(raw)


def _tiny_backbone(recipe: Recipe, workdir: Path) -> dict[str, Any]:
    """A tiny random stand-in of the recipe's backbone family, long enough for its max_seq_length unless it extends positions."""
    from hybridembed.modeling.tiny import build_tiny_backbone

    decoder = recipe.model.pooling == "last" or any(s.model is not None and s.model.pooling == "last" for s in recipe.stages or [])
    has_mlm = any(s.kind is StageKind.MLM for s in recipe.stages or [])
    kind = "qwen2" if decoder and not has_mlm else "bert"
    overrides: list[Any] = [s.model for s in recipe.stages or []]  # a stage's `model:` schema is built at run time (recipe.ModelOverride)
    lengths = [recipe.model.max_seq_length or 128] + [m.max_seq_length for m in overrides if m and m.max_seq_length]
    positions = TINY_MAX_POSITIONS if recipe.model.extend_positions else max([TINY_MAX_POSITIONS, *lengths])
    corpus = _quickstart_sentences()
    path = build_tiny_backbone(workdir / f"tiny-{kind}", corpus, kind=kind, max_positions=positions, vocab_size=1000)
    logger.info("dry run: tiny random %s backbone (%d positions) stands in for %s", kind, positions, recipe.model.backbone)
    return {"backbone": str(path), "attn_implementation": None}


def _quickstart_sentences(limit: int = 2000) -> list[str]:
    import csv

    with open(QUICKSTART / "stsb_train.tsv", encoding="utf-8") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [text for row in rows for text in (row["sentence1"], row["sentence2"])][:limit]
