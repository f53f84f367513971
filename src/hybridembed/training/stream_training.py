"""The trainer side of streamed data: readers' positions saved in every checkpoint and restored on resume, and a bad streamed row stopping every rank at the same step.

Mixed into both trainers that can read a stream: `training.HybridTrainer` (streamed `pairs` /
`multitask` datasets) and `mlm.StreamedMLMTrainer` (a streamed `mlm` corpus). transformers resumes
an iterable dataset by replaying and skipping its batches from the start; these trainers instead
run with `ignore_data_skip` and let each reader seek to where its last *trained* batch ended.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hybridembed.data.streaming import TRACE_ENV, load_state, save_state
from hybridembed.distributed import all_gather_ints, is_distributed
from hybridembed.errors import DataError

if TYPE_CHECKING:
    from transformers import Trainer

    from hybridembed.data.streaming import StreamedRows
    from hybridembed.data.text_stream import StreamedTexts

    _TrainerBase = Trainer  # the mixin is only ever mixed into a transformers Trainer subclass
else:
    _TrainerBase = object


class _StreamStateCallback(TrainerCallback):
    """Write the readers' positions into a checkpoint folder before the trainer fills it (its trainer_state.json comes last, so a complete checkpoint has them)."""

    def __init__(self, trainer: StreamedTrainingMixin) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            save_state(folder, args.process_index, args.world_size, max(args.dataloader_num_workers, 1), self.trainer.stream_positions)


class StreamedTrainingMixin(_TrainerBase):
    """For a transformers `Trainer` subclass whose batches come from `self.streamed`: an IterableDataset of ready batches, each carrying `stream_state`."""

    streamed: StreamedRows | StreamedTexts | None = None

    def setup_stream(self, streamed: StreamedRows | StreamedTexts | None, callbacks: list) -> None:
        """Call before `Trainer.__init__` with the callbacks it will get."""
        self.streamed = streamed
        self.stream_positions: dict[str, Any] = {}  # dataloader worker → reader state after its last trained batch
        if streamed is not None:
            callbacks.append(_StreamStateCallback(self))

    def train(self, resume_from_checkpoint=None, *args: Any, **kwargs: Any):
        self._rng_checkpoint: str | None = None
        if self.streamed is not None and isinstance(resume_from_checkpoint, str):
            # Each reader seeks to where its last trained batch ended (the trainer skips no batches: ignore_data_skip).
            self.streamed.resume = load_state(Path(resume_from_checkpoint), self.args.process_index, self.args.world_size, self.args.dataloader_num_workers)
            self._rng_checkpoint = resume_from_checkpoint
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        if getattr(self, "_rng_checkpoint", None):
            # transformers restores the checkpoint's RNG states (dropout) only when it skips batches or
            # resumes at an epoch start, neither of which a stream does; restore them before the first
            # resumed step, after the loader has drawn its workers' seeds, as the uninterrupted run had.
            # `_load_rng_state` is private to transformers: this is the one place that calls it.
            self._load_rng_state(self._rng_checkpoint)
            self._rng_checkpoint = None
        return batches

    def streamed_loader(self, collate_fn) -> DataLoader:
        """The stream's loader as is: every rank reads its own stripe, so accelerate must not shard or pad it; the trainer moves batches to the device."""
        assert self.streamed is not None, "only for a trainer with a stream"
        return DataLoader(self.streamed, batch_size=None, collate_fn=collate_fn, num_workers=self.args.dataloader_num_workers)

    def take_stream_state(self, inputs: dict[str, Any], training: bool) -> tuple[list[str] | None, str | None]:
        """Pop the stream's keys from a batch; remember where a trained batch's reader stands. Returns the batch's data error (problems, summary), if any."""
        problems = inputs.pop("stream_error", None)
        summary = inputs.pop("stream_error_summary", None)
        state = inputs.pop("stream_state", None)
        rows = inputs.pop("stream_rows", None)
        if state is not None and training:
            self.stream_positions[str(state["worker"])] = state
            if os.environ.get(TRACE_ENV):  # debugging aid (docs/data.md): which rows every step trained on
                with open(Path(os.environ[TRACE_ENV]) / f"rank{self.args.process_index}.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": self.state.global_step, "rows": rows}) + "\n")
        return problems, summary

    @staticmethod
    def stop_on_stream_error(problems: list[str] | None, summary: str | None, bad_ranks: list[int] | None = None) -> None:
        """Raise the batch's data error, or (multi-rank) the error of the ranks that read a bad row, so every rank stops at the same step."""
        if bad_ranks is None and is_distributed():
            bad_ranks = [rank for rank, bad in enumerate(all_gather_ints(int(problems is not None))) if bad]
        if problems is not None or bad_ranks:
            raise DataError(problems or [f"rank(s) {bad_ranks} read an invalid record of a streamed dataset (their log has the file:line)"], summary=summary)


def pass_through(batch: dict[str, Any]) -> dict[str, Any]:
    """collate_fn of a stream whose reader yields finished batches (a module function: dataloader workers pickle it)."""
    return batch


__all__ = ["StreamedTrainingMixin", "pass_through"]
