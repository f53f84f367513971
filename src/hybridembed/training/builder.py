"""Run a recipe: validate data, build the model, routed losses, sampler, collator and callbacks, hand them to one trainer, save the model folder.

What this adds over `SentenceTransformerTrainer`: task-homogeneous batches with per-task batch
sizes and mixing (hybridembed.training.sampling), one collator for all task shapes with hard-negative and
label sampling (hybridembed.data.collator), the task → loss routing with Matryoshka wrapping, per-
task loss logging, and a model folder that also records the recipe, the data summary and the log.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformerTrainingArguments

from hybridembed import __version__
from hybridembed.allocator import keep_freed_memory
from hybridembed.data import TaskDataset, load_datasets
from hybridembed.data.collator import DatasetView, HybridCollator
from hybridembed.data.rows import row_texts
from hybridembed.data.streaming import StreamedRows, open_stream
from hybridembed.data.tokenize import text_tokenizer
from hybridembed.distributed import GatherGroups, is_distributed
from hybridembed.errors import RecipeError
from hybridembed.losses import build_loss, resolve_loss_config
from hybridembed.losses.forward import ChunkPlan
from hybridembed.model_folder import RunResult, last_complete_checkpoint, write_recipe, write_training_log
from hybridembed.modeling.dropout import use_lane_dropout
from hybridembed.modeling.embedding_gradient import use_sparse_embedding_backward
from hybridembed.modeling.model import build_model, embedding_dim, write_metadata
from hybridembed.modeling.packing import enable_packing
from hybridembed.precision import resolve_chunk_cost, resolve_chunk_rows, resolve_precision
from hybridembed.recipe import DistributedStrategy, Recipe
from hybridembed.tasks import IN_BATCH_NEGATIVE_TASKS, TaskType
from hybridembed.training.sampling import DatasetPlan, TaskBatchSampler
from hybridembed.training.task_weighting import WeightedClipping, loss_weight
from hybridembed.training.trainer import HybridTrainer

logger = logging.getLogger(__name__)


def _dataset_views(recipe: Recipe, datasets: list[TaskDataset]) -> dict[str, DatasetView]:
    views = {}
    for ds in datasets:
        cfg = ds.config
        default_k = ds.task.spec.default_negatives
        views[ds.name] = DatasetView(
            task=ds.task,
            num_negatives=cfg.num_negatives if cfg.num_negatives is not None else default_k,
            query_prefix=cfg.query_prefix if cfg.query_prefix is not None else recipe.model.query_prefix,
            passage_prefix=cfg.passage_prefix if cfg.passage_prefix is not None else recipe.model.passage_prefix,
            label_pool=ds.label_pool,
        )
    return views


def _batch_plans(recipe: Recipe, datasets: list[TaskDataset]) -> list[DatasetPlan]:
    plans = []
    for ds in datasets:
        batch_size = _batch_size(recipe, ds.config, ds.task)
        texts_of = None
        if ds.task in IN_BATCH_NEGATIVE_TASKS:
            rows = ds.rows
            texts_of = lambda i, rows=rows: row_texts(rows[i])  # noqa: E731
        plans.append(DatasetPlan(ds.name, len(ds), batch_size, ds.config.weight, ds.config.repeat, texts_of, ds.task))
    return plans


def training_arguments(recipe: Recipe, args_class: type = SentenceTransformerTrainingArguments, **overrides: Any):
    """The trainer's arguments for `recipe`; also used by the mlm stage (mlm.py), with a bare TrainingConfig
    (no DeepSpeed section), transformers' TrainingArguments as `args_class`, and `overrides` on top."""
    t = recipe.training if hasattr(recipe, "training") else recipe
    # Without use_cpu, transformers does not set up multi-process CPU training under torchrun
    # (each process would silently train alone); gloo is the CPU backend.
    on_cpu = not torch.cuda.is_available()
    precision = resolve_precision(t.precision)
    multi_cpu = on_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if multi_cpu and not torch.distributed.is_initialized() and {"MASTER_ADDR", "MASTER_PORT", "RANK"} <= os.environ.keys():
        from datetime import timedelta

        # transformers passes ddp_timeout to the process group on GPUs only; on CPUs it would stay at 30 min.
        torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=t.ddp_timeout))
    kwargs = dict(
        use_cpu=on_cpu,
        ddp_backend="gloo" if multi_cpu else None,
        output_dir=t.output_dir,
        per_device_train_batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps if t.warmup_steps is not None else t.warmup_ratio,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to=t.report_to or "none",
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        dataloader_num_workers=t.dataloader_num_workers,
        deepspeed=getattr(recipe, "deepspeed", None),
        ddp_find_unused_parameters=False,  # the unused BERT pooler is frozen (model.py), so every trainable parameter gets a gradient
        ddp_timeout=t.ddp_timeout,
        disable_tqdm=False,
    )
    return args_class(**{**kwargs, **overrides})


def prepare_training(recipe: Recipe, datasets: list[TaskDataset] | None = None) -> HybridTrainer:
    """Everything up to the first step: data (validated), model, losses, sampler, trainer."""
    if recipe.mining is not None and recipe.mining.dynamic is not None and recipe.training.dataloader_num_workers:
        from hybridembed.mining.dynamic import WORKERS_ERROR

        raise RecipeError(f"training.dataloader_num_workers: {WORKERS_ERROR}")
    streaming = _check_streaming(recipe)
    if streaming:
        datasets = [open_stream(cfg, _batch_size(recipe, cfg, cfg.task)) for cfg in recipe.datasets]
        for spec in datasets:
            logger.info(
                "data %s: streamed from %d shard(s), task %s, format %s (rows are validated as they arrive)", spec.name, len(spec.files), spec.task, spec.format
            )
    else:
        datasets = datasets if datasets is not None else load_datasets(recipe.datasets)
    for ds in [] if streaming else datasets:
        logger.info("data %s", ds.summary())
    if recipe.training.keep_freed_memory:
        keep_freed_memory()
    torch.manual_seed(recipe.training.seed)
    model = build_model(recipe.model)
    if recipe.training.packing:
        enable_packing(model)
    if recipe.training.lane_dropout:
        use_lane_dropout(model)
    if recipe.training.sparse_embedding_backward and not recipe.deepspeed:  # ZeRO owns the gradients' memory
        use_sparse_embedding_backward(model)
    dims = recipe.model.matryoshka_dims
    if dims and max(dims) > embedding_dim(model):
        raise RecipeError(f"model.matryoshka_dims {dims} exceed the model's embedding dimension {embedding_dim(model)}")
    losses = {}
    chunk_rows = resolve_chunk_rows(recipe.training.forward_chunk_rows, recipe.training.packing)
    # packed chunks compute no padding: the cuts that save it do not apply, only the row bound
    cost = None if recipe.training.packing else resolve_chunk_cost(recipe.training.forward_chunk_cost_tokens)
    chunks = None if chunk_rows is None else ChunkPlan(chunk_rows, cost)
    for ds in datasets:
        loss_cfg = resolve_loss_config(ds.task, recipe.losses, ds.config.loss)
        losses[ds.name] = build_loss(
            model,
            ds.task,
            loss_cfg,
            dims,
            recipe.model.matryoshka_weights,
            where=f"datasets[{ds.name}].loss",
            cache_minibatch_size=recipe.training.cache_minibatch_size,
            forward_chunk_rows=chunks,
            preset=recipe.loss_preset,
        )
    weighted_clipping = None
    weighted = any(loss_weight(fn) != 1.0 for fn in losses.values())  # all 1: the bound is max_grad_norm, the stock clipping
    if recipe.training.task_weighting == "step" and recipe.training.max_grad_norm > 0 and not recipe.deepspeed and weighted:
        # Clip before weighting (hybridembed.training.task_weighting): the trainer's own clipping is off
        # (it would measure the norm a second time each step).
        weighted_clipping = WeightedClipping(recipe.training.max_grad_norm)
    overrides = {"max_grad_norm": 0.0} if weighted_clipping else {}
    if recipe.eval is not None:
        from hybridembed.evaluation.callback import eval_training_arguments

        overrides |= eval_training_arguments(recipe.eval, recipe.training.save_steps)
    if streaming:
        overrides["ignore_data_skip"] = True  # the readers resume at their saved positions; nothing is skipped
    args = training_arguments(recipe, **overrides)
    sampler, streamed = None, None
    if streaming:
        streamed = StreamedRows(datasets, recipe.training.seed, rank=args.process_index, world_size=args.world_size)
    else:
        sampler = TaskBatchSampler(
            _batch_plans(recipe, datasets),
            recipe.sampling.mixing,
            recipe.sampling.temperature,
            recipe.training.seed,
            num_replicas=args.world_size,
            rank=args.process_index,
            cross_device_balance=recipe.sampling.strategy is DistributedStrategy.CBB,
        )
    gather_groups = None
    if streaming:
        gather_groups = GatherGroups()  # every rank trains the step's dataset: the world group
    elif is_distributed():
        epochs = (
            math.ceil(recipe.training.max_steps / math.ceil(len(sampler) / recipe.training.gradient_accumulation_steps))
            if recipe.training.max_steps
            else math.ceil(recipe.training.epochs)
        )  # the trainer: ceil(batches / accumulation) steps per epoch
        gather_groups = GatherGroups(sampler.sharing_ranks(epochs))
    views = _dataset_views(recipe, datasets)
    miner = None
    if recipe.mining is not None and recipe.mining.dynamic is not None:
        from hybridembed.mining.dynamic import build_dynamic_miner

        miner = build_dynamic_miner(model, recipe.mining.dynamic, datasets, views, sampler, args.gradient_accumulation_steps)
    collator = HybridCollator(text_tokenizer(model), views, seed=recipe.training.seed, rank=args.process_index)
    evaluator, eval_callbacks = None, []
    if recipe.eval is not None:
        from hybridembed.evaluation.callback import build_eval_callbacks
        from hybridembed.evaluation.evaluator import build_evaluator

        evaluator = build_evaluator(recipe.eval)
        eval_callbacks = build_eval_callbacks(recipe.eval, evaluator)
    train_sets = {ds.name: ds.placeholder() if streaming else ds.to_hf() for ds in datasets}
    # sentence-transformers picks its model card's widget examples from 1,000 random rows of each training
    # set, which pages a whole memory-mapped file of millions of rows into memory; its first rows do as well.
    model.model_card_data.set_widget_examples(
        {name: data.select(range(min(1000, len(data)))).select_columns([c for c in ("query", "text1", "text2") if c in data.column_names])
         for name, data in train_sets.items()}
    )  # fmt: skip
    trainer = HybridTrainer(
        model=model,
        args=args,
        train_dataset=train_sets,
        loss=losses,
        data_collator=collator,
        task_sampler=sampler,
        dataset_tasks={ds.name: ds.task for ds in datasets},
        gather_groups=gather_groups,
        weighted_clipping=weighted_clipping,
        evaluator=evaluator,
        callbacks=eval_callbacks,
        dynamic_miner=miner,
        streamed=streamed,
    )
    return trainer


def _check_streaming(recipe: Recipe) -> bool:
    """Whether the run streams its datasets; a streamed run needs max_steps and every dataset streamed."""
    flags = [cfg.streaming for cfg in recipe.datasets]
    if not any(flags):
        return False
    if not all(flags):
        raise RecipeError("datasets: stream every dataset of a run or none (streamed and in-memory datasets cannot share one schedule)")
    if not recipe.training.max_steps:
        raise RecipeError("training.max_steps: a streamed run has no epoch length; set max_steps")
    if recipe.sampling.strategy is DistributedStrategy.CBB:
        raise RecipeError("sampling.strategy: cbb needs the datasets' sizes; streamed runs use synchronized")
    if recipe.mining is not None and recipe.mining.dynamic is not None:
        raise RecipeError("mining.dynamic: re-mining needs indexed rows; a streamed dataset has none")
    return True


def _batch_size(recipe: Recipe, cfg, task: TaskType | None) -> int:
    return cfg.batch_size or (recipe.training.batch_size_per_task.get(task) if task else None) or recipe.training.batch_size


def _resume_checkpoint(recipe: Recipe) -> str | bool | None:
    resume = recipe.training.resume
    if resume is True:
        last = last_complete_checkpoint(recipe.training.output_dir)
        if last is None:
            logger.info("resume: no checkpoint in %s, starting from scratch", recipe.training.output_dir)
        return last
    return resume or None


def run_training(recipe: Recipe, recipe_text: str | None = None) -> RunResult:
    """Train one stage as the recipe says and save the model folder; returns it with the run's step and metrics."""
    trainer = prepare_training(recipe)
    checkpoint = _resume_checkpoint(recipe)
    if checkpoint:
        logger.info("resuming from checkpoint %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    out = Path(recipe.training.output_dir)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        save_run_files(trainer, recipe, out, recipe_text)
    return RunResult.from_log(out, trainer.state.log_history)


def save_run_files(trainer: HybridTrainer, recipe: Recipe, out: Path, recipe_text: str | None) -> None:
    """Recipe, training log and metadata beside the weights, so a model folder explains itself."""
    write_recipe(out, recipe, recipe_text)
    write_training_log(out, trainer.state.log_history)
    write_metadata(
        out,
        hybridembed_version=__version__,
        matryoshka_dims=sorted(recipe.model.matryoshka_dims or [], reverse=True),
        embedding_dim=embedding_dim(trainer.model),
        task_batches=dict(trainer.task_batches),
        global_step=trainer.state.global_step,
        datasets=[{"name": d.name, "path": d.path, "task": trainer.dataset_tasks[d.name].value} for d in recipe.datasets],
    )
    _write_card_and_selection(trainer, recipe, out)


def _write_card_and_selection(trainer: HybridTrainer, recipe: Recipe, out: Path) -> None:
    """Record which weights the folder holds (best checkpoint or last step) and extend the model card with the run."""
    from hybridembed.evaluation.callback import SuiteEvalCallback, checkpoint_step
    from hybridembed.training.model_card import extend_model_card, training_section

    kept = None
    if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint:
        kept = {"step": checkpoint_step(trainer.state.best_model_checkpoint), "metric": trainer.args.metric_for_best_model,
                "value": trainer.state.best_metric}  # fmt: skip
        write_metadata(out, best_checkpoint=kept)
    callback = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, SuiteEvalCallback)), None)
    evaluation = None
    if callback is not None and callback.kept_step is not None:
        evaluation = callback.evaluator.results_by_step[callback.kept_step]
    tasks = {name: task.value for name, task in trainer.dataset_tasks.items()}
    extend_model_card(out, training_section(recipe, trainer.state.global_step, dict(trainer.task_batches), tasks, kept, evaluation))


__all__ = ["HybridTrainer", "prepare_training", "run_training"]
