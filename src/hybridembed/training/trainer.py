"""The trainer: sentence-transformers' SentenceTransformerTrainer with task-homogeneous batches, routed losses and per-task logging.

What this adds over `SentenceTransformerTrainer`: the task sampler's batches (hybridembed.training.sampling)
or streamed rows as the data loader, one collator for all task shapes, per-task loss logging, gathered
negatives and per-task gradient weighting across ranks. Built by hybridembed.training.builder.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformerTrainer
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from hybridembed.data.arrow_store import release_mapped_pages
from hybridembed.data.streaming import StreamCollate, StreamedRows
from hybridembed.distributed import GatherGroups, all_gather_ints, gathering_over, is_distributed
from hybridembed.tasks import TaskType
from hybridembed.training.gc_freeze import frozen_startup_objects
from hybridembed.training.sampling import KeyedBatches, KeyedRows, TaskBatchSampler
from hybridembed.training.stream_training import StreamedTrainingMixin
from hybridembed.training.task_weighting import WeightedClipping, loss_weight

logger = logging.getLogger(__name__)


class _SamplerEpochCallback(TrainerCallback):
    """Tell the task sampler the epoch (accelerate's batch-sampler shard does not forward set_epoch); release the Arrow pages each step touched."""

    def __init__(self, sampler: TaskBatchSampler) -> None:
        self.sampler = sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.sampler.set_epoch(int(state.epoch or 0))

    def on_step_end(self, args, state, control, **kwargs):
        release_mapped_pages()  # random rows of a memory-mapped store would otherwise pile up in RSS


class HybridTrainer(StreamedTrainingMixin, SentenceTransformerTrainer):
    """`SentenceTransformerTrainer` fed by the task-homogeneous sampler and collator, with per-task loss logs.

    In multi-process runs every rank follows the sampler's shared schedule (so the loader is not
    re-sharded by accelerate); each step the ranks agree on who trains which dataset, the ranks
    sharing a dataset gather their in-batch negatives over their process group, and each rank's
    loss is scaled by world_size / (ranks sharing its dataset) so that, after DDP averages the
    gradients, the step optimises the sum over the step's datasets of each dataset's mean loss.
    """

    def __init__(
        self,
        *args: Any,
        task_sampler: TaskBatchSampler | None,
        dataset_tasks: dict[str, TaskType],
        streamed: StreamedRows | None = None,
        gather_groups: GatherGroups | None = None,
        weighted_clipping: WeightedClipping | None = None,
        dynamic_miner: Any = None,
        **kwargs: Any,
    ) -> None:
        self.task_sampler = task_sampler
        self.dataset_tasks = dataset_tasks
        self.dataset_index = {name: i for i, name in enumerate(dataset_tasks)}
        self.gather_groups = gather_groups or GatherGroups()
        self._task_loss_sum: dict[str, torch.Tensor | float] = defaultdict(float)  # tensors: no device sync per step
        self._task_loss_count: dict[str, int] = defaultdict(int)
        self.task_batches: dict[str, int] = defaultdict(int)  # batches trained per task type by this rank
        self.step_tasks: list[str] = []  # this rank's task type at every training step (cheap; for logs and tests)
        self.weighted_clipping = weighted_clipping
        kwargs.setdefault("callbacks", [])
        self.setup_stream(streamed, kwargs["callbacks"])  # streamed datasets: batches come from their readers, not from the sampler
        if task_sampler is not None:
            kwargs["callbacks"].append(_SamplerEpochCallback(task_sampler))
        if weighted_clipping is not None:
            kwargs["callbacks"].append(weighted_clipping)
        super().__init__(*args, **kwargs)
        self.dynamic_miner = dynamic_miner  # hybridembed.mining.dynamic: re-mines the hard negatives on schedule
        if dynamic_miner is not None:
            from hybridembed.mining.dynamic import DynamicMiningCallback

            self.add_callback(DynamicMiningCallback(dynamic_miner, self))  # it logs through this trainer
        weights = {name: loss_weight(fn) for name, fn in self.loss.items()} if isinstance(self.loss, dict) else {}
        self.dataset_weights = [weights.get(name, 1.0) for name in dataset_tasks]  # by dataset index

    def train(self, *args: Any, **kwargs: Any):
        """sentence-transformers' training loop, with the objects the run starts with out of the cyclic GC's full passes (training/gc_freeze.py)."""
        with frozen_startup_objects():
            return super().train(*args, **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        if self.streamed is not None:
            return self.streamed_loader(StreamCollate(self.data_collator))
        loader = DataLoader(
            KeyedRows(list(self.train_dataset.values())),
            batch_sampler=KeyedBatches(self.task_sampler),  # each row carries its draw key to the collator
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
        )
        if self.args.world_size > 1:
            # The sampler already gives each rank its own batches; the trainer moves them to the device.
            return loader
        # Batches differ in size across tasks; accelerate must not pad them to equal sizes.
        self.accelerator.even_batches = False
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        problems, summary = self.take_stream_state(inputs, model.training)
        if problems is not None and not is_distributed():
            self.stop_on_stream_error(problems, summary, bad_ranks=[])
        name = inputs.get("dataset_name")
        group, scale = None, 1.0
        datasets_of_ranks = [self.dataset_index.get(name, -1)]
        if is_distributed():
            datasets_of_ranks = all_gather_ints(-1 if problems is not None else self.dataset_index[name])
            # every rank stops at the same step, not only the one that read the bad row
            self.stop_on_stream_error(problems, summary, bad_ranks=[r for r, d in enumerate(datasets_of_ranks) if d == -1])
        task = self.dataset_tasks[name]
        if is_distributed():
            sharing = frozenset(r for r, d in enumerate(datasets_of_ranks) if d == self.dataset_index[name])
            group = self.gather_groups.for_ranks(sharing)
            scale = len(datasets_of_ranks) / len(sharing)
        with gathering_over(group):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training:
            self._task_loss_sum[task.value] += loss.detach()
            self._task_loss_count[task.value] += 1
            self.task_batches[task.value] += 1
            self.step_tasks.append(task.value)
            if self.weighted_clipping is not None:  # the step's bound: the weights of the datasets its ranks train
                self.weighted_clipping.add(sum(self.dataset_weights[d] for d in set(datasets_of_ranks)))
        if scale != 1.0:
            loss = loss * scale
            result = (loss, result[1]) if return_outputs else loss
        return result

    def compute_loss_context_manager(self):
        """The stock context, plus one autocast region around the whole loss when training in bf16 / fp16.

        accelerate wraps every model forward in an autocast region of its own, and torch empties its
        cache of low-precision weight copies whenever the outermost region exits: a batch embedded in
        several chunks (`forward_chunk_rows`), columns or GradCache mini-batches would cast every
        weight again for each forward, and send each copy's gradient back through a cast of its own.
        Inside one outer region each weight is cast once per step (autograd sums the chunks' gradients
        at that copy).
        """
        stack = super().compute_loss_context_manager()
        if self.accelerator.mixed_precision in ("bf16", "fp16"):
            stack.enter_context(self.accelerator.autocast())
        return stack

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        from hybridembed.evaluation.evaluator import SuiteEvaluator

        if not isinstance(self.evaluator, SuiteEvaluator):
            return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        from transformers.trainer_utils import EvalLoopOutput

        # Rank 0 scores the suite alone while the other ranks wait at the evaluator's long-timeout barrier;
        # sentence-transformers' sharded inference would keep them in collectives bounded by ddp_timeout.
        folder = str(Path(self.args.output_dir) / "eval") if self.is_world_process_zero() else None
        values = self.evaluator.evaluate_on_main(self.model, folder, self.state.epoch, self.state.global_step, self.is_world_process_zero())
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in values.items()}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=0)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            for task, count in self._task_loss_count.items():
                if count:
                    logs[f"loss_{task}"] = round(float(self._task_loss_sum[task]) / count, 5)
            self._task_loss_sum.clear()
            self._task_loss_count.clear()
        super().log(logs, start_time)
