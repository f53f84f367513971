"""Dynamic hard-negative mining during training (Conan-embedding): re-score the upcoming batches' active negatives every N steps and replace the ones that became easy.

Each row of a retrieval/reranking dataset keeps a **candidate pool** (its first `pool_size`
negatives — e.g. from `hybridembed mine`, hardest first) and **active negatives** (the first k
of the pool, k = the dataset's `num_negatives`) with the score each had when it was activated.
The collator draws the row's negatives from the active ones (`DatasetView.active_negatives`).

Every `every_steps` optimizer steps an event scores, with the current model (eval mode, no grad,
batched; the training mode is restored), the active negatives of the rows this process will
train in the batches of the coming `every_steps` steps (the sampler's schedule is a function of
(seed, epoch), so they are known in advance). The event runs *before the first of those batches
is collated*: the training loader may already hold one collated batch (accelerate's loader looks
one batch ahead), so with such a loader the event runs one step early (`DynamicMiner.lead`), and
each event covers exactly the batches collated between it and the next event.

A negative is easy when its current score fell below `easy_threshold(initial, ratio)` =
initial − (1 − 1/ratio)·|initial| — Conan's "score × ratio < initial" for initial ≥ 0, and
monotone (an unchanged or harder negative is never easy) for negative scores too — and is below
`max_score`. It is replaced by the hardest *unused* candidate of the pool that scores below
`max_score` (higher ones may be unlabelled positives) and higher than the easy negative (else the
easy one stays). `max_score` bounds every negative when it becomes active: an initial negative
scoring at or above it when its activation score is taken is swapped the same way. A retired
negative never comes back; initial scores are taken with the starting model for every row of the
first epoch (`init: start`) or at a row's first check (`init: lazy`).

Each event is logged through the trainer (`mining/checked`, `mining/replaced`, `mining/score_before`,
`mining/score_after`, …, so TensorBoard gets it). The state (active indices, activation scores,
used candidates) is written to `dynamic_mining.npz` in every checkpoint folder and read back on
resume. In multi-process runs each rank scores the rows of its own batches and the ranks
exchange their row updates with `torch.distributed.all_gather_object`, so every rank holds the
same state and rank 0 saves it.
"""

from __future__ import annotations

import bisect
import copy
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from hybridembed.errors import HybridembedError
from hybridembed.mining.config import DynamicMiningConfig
from hybridembed.model_folder import checkpoint_folder
from hybridembed.tasks import IN_BATCH_NEGATIVE_TASKS

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from hybridembed.data import TaskDataset
    from hybridembed.data.collator import DatasetView
    from hybridembed.training.sampling import TaskBatchSampler

logger = logging.getLogger(__name__)
STATE_FILE = "dynamic_mining.npz"


@dataclass
class MiningEvent:
    """What one re-scoring event did on this process (or, after `gather`, on all of them)."""

    step: int = 0
    judged: bool = True  # False for the activation pass before step 1 (`init: start`): nothing is judged there
    rows: int = 0
    initialized: int = 0  # negatives that got their activation score now (no judgement yet)
    checked: int = 0  # negatives judged against their activation score
    easy: int = 0
    replaced: int = 0
    exhausted: int = 0  # easy negatives left in place: no unused candidate below max_score scored higher
    guarded: int = 0  # negatives scoring >= max_score when they got their activation score (likely false negatives)
    guard_replaced: int = 0  # ... of which swapped for the hardest unused candidate below max_score
    above_max_score: int = 0  # judged negatives at or above max_score, which are never easy
    sum_before: float = 0.0  # over the checked negatives, their current scores ...
    sum_after: float = 0.0  # ... and the scores of whatever occupies their slots after the event

    def logs(self) -> dict[str, float]:
        keys: tuple[str, ...] = ("rows", "initialized", "guarded", "guard_replaced")
        if self.judged:
            keys += ("checked", "easy", "replaced", "exhausted", "above_max_score")
        out = {f"mining/{k}": float(getattr(self, k)) for k in keys}
        if self.checked:
            out["mining/score_before"] = round(self.sum_before / self.checked, 5)
            out["mining/score_after"] = round(self.sum_after / self.checked, 5)
        return out


def easy_threshold(initial: np.ndarray | float, ratio: float) -> np.ndarray:
    """The score below which a negative activated at `initial` counts as easy: initial − (1 − 1/ratio)·|initial|.

    For initial ≥ 0 this is initial / ratio, i.e. Conan's "score × ratio < initial"; unlike the
    literal rule it stays below `initial` for negative cosines (the literal rule calls an unchanged
    −0.2 easy, since −0.2 × 1.15 = −0.23 < −0.2), so an unchanged or harder negative is never easy.
    """
    initial = np.asarray(initial, dtype=np.float64)
    return initial - (1.0 - 1.0 / ratio) * np.abs(initial)


def is_easy(score: np.ndarray | float, initial: np.ndarray | float, ratio: float, max_score: float) -> np.ndarray:
    """Conan's rule, sign-safe: the score fell below `easy_threshold(initial, ratio)` and is below `max_score`."""
    score = np.asarray(score, dtype=np.float64)
    return (score < easy_threshold(initial, ratio)) & (score < max_score)


def prefetched_batches(loader: Any) -> int:
    """How many batches `loader` collates beyond the one it hands out: accelerate's loaders look one batch ahead, torch's (no workers) none."""
    try:
        from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard
    except ImportError:  # pragma: no cover - accelerate is a dependency of the trainer
        return 0
    return 1 if isinstance(loader, (DataLoaderShard, DataLoaderDispatcher)) else 0


class _Table:
    """Dynamic state of one dataset: per row, k active slots (pool index, activation score) and the pool's used flags."""

    def __init__(self, dataset: TaskDataset, k: int, pool_size: int) -> None:
        self.dataset = dataset
        self.pools = [list((row["negatives"] or [])[:pool_size]) for row in dataset.rows]
        self.k, self.pool_size = k, pool_size
        n = len(self.pools)
        self.active = np.full((n, k), -1, dtype=np.int32)
        self.initial = np.full((n, k), np.nan, dtype=np.float32)
        self.used = np.zeros((n, pool_size), dtype=bool)
        for i, pool in enumerate(self.pools):
            m = min(k, len(pool))
            self.active[i, :m] = np.arange(m)
            self.used[i, :m] = True

    def active_texts(self, row: int) -> list[str]:
        return [self.pools[row][j] for j in self.active[row] if j >= 0]

    def row_update(self, row: int) -> tuple:
        return row, self.active[row].copy(), self.initial[row].copy(), self.used[row].copy()

    def apply(self, update: tuple) -> None:
        row, active, initial, used = update
        self.active[row], self.initial[row], self.used[row] = active, initial, used


class DynamicMiner:
    """Holds the pools and active negatives of the triplet datasets and runs Conan's re-mining events."""

    def __init__(
        self,
        model: SentenceTransformer,
        config: DynamicMiningConfig,
        datasets: Sequence[TaskDataset],
        views: dict[str, DatasetView],
        sampler: TaskBatchSampler,
        gradient_accumulation_steps: int = 1,
    ) -> None:
        self.model, self.config, self.views, self.sampler = model, config, views, sampler
        self.accumulation = gradient_accumulation_steps
        self.tables: dict[str, _Table] = {}
        for ds in datasets:
            k = views[ds.name].num_negatives
            if ds.task in IN_BATCH_NEGATIVE_TASKS and k > 0 and any(row["negatives"] for row in ds.rows):
                self.tables[ds.name] = _Table(ds, k, config.pool_size)
        self.plan_names = [plan.name for plan in sampler.plans]
        self.events = 0
        self.history: list[MiningEvent] = []  # this run's events, for callers and tests
        self.windows: list[tuple[int, int, int]] = []  # (step it ran after, first batch, end batch) of each event
        # Batches the training loader has collated beyond the trained ones when a step ends (set from
        # the loader at train begin): events run `lead` steps early so that none of their batches is collated yet.
        self.lead = 0
        self._epoch_cache: dict[int, list[list[int]]] = {}

    # --- hooks -------------------------------------------------------------------------------
    def active_negatives(self, name: str) -> Callable[[int], list[str]]:
        table = self.tables[name]
        return table.active_texts

    # --- which rows come next ----------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epoch_cache:
            replay = copy.copy(self.sampler)  # same plans, seed and rank; its own epoch
            replay.set_epoch(epoch)
            self._epoch_cache = {e: b for e, b in self._epoch_cache.items() if e >= epoch - 1}
            self._epoch_cache[epoch] = list(iter(replay))
        return self._epoch_cache[epoch]

    # Batches are numbered by their position in this process's stream over the whole run: epoch e's
    # batch i is at e·B + i (B = len(sampler) batches per epoch); optimizer step t (1-based) of an
    # epoch trains its `accumulation` batches (the last step of an epoch fewer).
    @property
    def steps_per_epoch(self) -> int:
        return max(1, -(-len(self.sampler) // self.accumulation))

    def consumed_batches(self, step: int) -> int:
        """Stream position after the batches of optimizer steps 1 … step."""
        if step <= 0:
            return 0
        per_epoch = len(self.sampler)
        epoch, within = divmod(step - 1, self.steps_per_epoch)
        return epoch * per_epoch + min((within + 1) * self.accumulation, per_epoch)

    def collated_batches(self, step: int) -> int:
        """Stream position of the first batch not yet collated when step `step` ends.

        The trainer fetches a step's micro-batches when the step starts; a loader that looks `lead`
        batches ahead has collated that many more, within the epoch (a new epoch's iterator starts
        only after the last step of the previous one ends).
        """
        done, per_epoch = self.consumed_batches(step), len(self.sampler)
        if self.lead and step > 0 and done % per_epoch:
            done = min(done + self.lead, (done // per_epoch + 1) * per_epoch)
        return done

    def is_event_step(self, step: int, max_steps: int | None = None) -> bool:
        """Whether an event runs when optimizer step `step` ends: the event of nominal step N = k·every_steps runs after step N − lead."""
        nominal = step + self.lead
        return step >= 1 and nominal % self.config.every_steps == 0 and not (max_steps and nominal >= max_steps)

    def event_window(self, step: int, max_steps: int | None = None) -> tuple[int, int]:
        """Stream positions [first, end) of the batches the event run after `step` covers.

        Those collated between it and the next event — or, for the last event, to the end of training.
        """
        first = self.collated_batches(step)
        following = step + self.config.every_steps
        end = self.collated_batches(following)
        if max_steps and not self.is_event_step(following, max_steps):
            end = self.consumed_batches(max_steps)
        return first, max(first, end)

    def rows_of_batches(self, first: int, end: int) -> dict[str, list[int]]:
        """Row ids, per mined dataset, of the batches at stream positions first … end − 1."""
        per_epoch = len(self.sampler)
        rows: dict[str, set[int]] = defaultdict(set)
        for position in range(first, end):
            epoch, i = divmod(position, per_epoch)
            for index in self._epoch_batches(epoch)[i]:
                d = bisect.bisect_right(self.sampler.offsets, index) - 1
                name = self.plan_names[d]
                if name in self.tables:
                    rows[name].add(index - self.sampler.offsets[d])
        return {name: sorted(ids) for name, ids in rows.items()}

    def upcoming_rows(self, global_step: int, steps: int) -> dict[str, list[int]]:
        """Row ids, per mined dataset, of the batches this process trains in optimizer steps global_step+1 … global_step+steps."""
        return self.rows_of_batches(self.consumed_batches(global_step), self.consumed_batches(global_step + steps))

    def window_rows(self, step: int, max_steps: int | None = None) -> dict[str, list[int]]:
        """Row ids, per mined dataset, of the batches the event run after `step` covers (see `event_window`)."""
        return self.rows_of_batches(*self.event_window(step, max_steps))

    def epoch_rows(self, epoch: int) -> dict[str, list[int]]:
        per_epoch = len(self.sampler)
        return self.rows_of_batches(epoch * per_epoch, (epoch + 1) * per_epoch)

    # --- scoring -----------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if not texts:
            return {}
        vectors = self.model.encode(
            texts,
            batch_size=self.config.batch_size,
            prompt="",
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return dict(zip(texts, vectors.float()))

    def score(self, name: str, pairs: list[tuple[int, list[str]]]) -> list[np.ndarray]:
        """Cosine of each row's query with each of its given passages, under the current model (eval mode, no grad)."""
        view, rows = self.views[name], self.tables[name].dataset.rows
        queries = [view.query_prefix + rows[r]["query"] for r, _ in pairs]
        passages = [view.passage_prefix + t for _, texts in pairs for t in texts]
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                vectors = self._encode(list(dict.fromkeys(queries + passages)))
        finally:
            self.model.train(was_training)
        out = []
        for query, (_, texts) in zip(queries, pairs):
            if not texts:
                out.append(np.zeros(0, dtype=np.float32))
                continue
            stacked = torch.stack([vectors[view.passage_prefix + t] for t in texts])
            out.append((stacked @ vectors[query]).cpu().numpy().astype(np.float32))
        return out

    # --- events ------------------------------------------------------------------------------
    def refresh(self, rows_by_dataset: dict[str, list[int]], step: int = 0, judge: bool = True, chunk_rows: int = 2048) -> MiningEvent:
        """Score the active negatives of these rows; set missing activation scores; if `judge`, replace the easy ones.

        Rows are handled `chunk_rows` at a time, so memory holds one chunk's embeddings.
        """
        event = MiningEvent(step=step, judged=judge)
        updates: dict[str, list[tuple]] = {}
        total = sum(len(ids) for ids in rows_by_dataset.values())
        with tqdm(total=total, desc="dynamic mining: scoring", unit="row", disable=total <= 2 * chunk_rows, leave=False) as bar:
            for name, row_ids in rows_by_dataset.items():
                table = self.tables[name]
                row_ids = [r for r in row_ids if (table.active[r] >= 0).any()]
                event.rows += len(row_ids)
                for start in range(0, len(row_ids), chunk_rows):
                    self._refresh_rows(name, table, row_ids[start : start + chunk_rows], judge, event)
                    bar.update(len(row_ids[start : start + chunk_rows]))
                updates[name] = [table.row_update(r) for r in row_ids]
        self._share(updates, event)
        self.history.append(event)
        return event

    def _refresh_rows(self, name: str, table: _Table, row_ids: list[int], judge: bool, event: MiningEvent) -> None:
        current = self.score(name, [(r, table.active_texts(r)) for r in row_ids])
        ratio, max_score = self.config.ratio, self.config.max_score
        # row → [(slot, current score, judged)]: first the fresh slots at/above max_score, then the easy ones, easiest first
        swaps: dict[int, list[tuple[int, float, bool]]] = {}
        for r, scores in zip(row_ids, current):
            slots = np.flatnonzero(table.active[r] >= 0)
            fresh = np.isnan(table.initial[r, slots])
            table.initial[r, slots[fresh]] = scores[fresh]
            event.initialized += int(fresh.sum())
            # max_score bounds every negative when it becomes active, the initial ones included
            guard = [(int(slot), float(score), False) for slot, score in zip(slots[fresh], scores[fresh]) if score >= max_score]
            event.guarded += len(guard)
            easy: list[tuple[int, float, bool]] = []
            if judge:
                judged_slots, judged_scores = slots[~fresh], scores[~fresh]
                flags = is_easy(judged_scores, table.initial[r, judged_slots], ratio, max_score)
                easy = sorted(((int(s), float(v), True) for s, v, f in zip(judged_slots, judged_scores, flags) if f), key=lambda x: x[1])
                event.checked += len(judged_slots)
                event.above_max_score += int((judged_scores >= max_score).sum())
                event.sum_before += float(judged_scores.sum())
                event.sum_after += float(judged_scores.sum()) - sum(score for _, score, _ in easy)
                event.easy += len(easy)
            if guard or easy:
                swaps[r] = guard + easy
        self._replace(name, table, swaps, event)

    def _replace(self, name: str, table: _Table, swaps: dict[int, list[tuple[int, float, bool]]], event: MiningEvent) -> None:
        """Swap each slot for the hardest unused candidate below max_score; an easy (judged) slot only for one that beats its current score."""
        unused = {r: [j for j in range(len(table.pools[r])) if not table.used[r, j]] for r in swaps}
        candidate_scores = self.score(name, [(r, [table.pools[r][j] for j in unused[r]]) for r in swaps])
        for (r, slots), scores in zip(swaps.items(), candidate_scores):
            ranked = [(s, j) for s, j in sorted(zip(scores.tolist(), unused[r]), reverse=True) if s < self.config.max_score]
            for slot, before, judged in slots:
                if ranked and (ranked[0][0] > before or not judged):
                    score, j = ranked.pop(0)
                    table.active[r, slot], table.initial[r, slot], table.used[r, j] = j, score, True
                    if judged:
                        event.replaced += 1
                        event.sum_after += score
                    else:
                        event.guard_replaced += 1
                elif judged:
                    event.exhausted += 1
                    event.sum_after += before

    def _share(self, updates: dict[str, list[tuple]], event: MiningEvent) -> None:
        """Multi-process: every rank applies every rank's row updates and the event counts are summed."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
            return
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (updates, asdict(event)))
        rank = torch.distributed.get_rank()
        totals: defaultdict[str, float] = defaultdict(float)
        for other, (other_updates, other_event) in enumerate(gathered):
            for key, value in other_event.items():
                totals[key] += value
            if other != rank:
                for name, rows in other_updates.items():
                    for update in rows:
                        self.tables[name].apply(update)
        for key, value in totals.items():
            if key not in ("step", "judged"):
                setattr(event, key, type(getattr(event, key))(value))

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        meta = {
            "version": 1,
            "events": self.events,
            "config": self.config.model_dump(),
            "datasets": {n: {"rows": len(t.pools), "k": t.k, "pool_size": t.pool_size} for n, t in self.tables.items()},
        }
        arrays = {"meta": np.array(json.dumps(meta))}
        for i, table in enumerate(self.tables.values()):
            arrays.update({f"{i}.active": table.active, f"{i}.initial": table.initial, f"{i}.used": table.used})
        return arrays

    def load_state_dict(self, arrays: dict[str, np.ndarray], source: str = "state") -> None:
        meta = json.loads(str(arrays["meta"]))
        expected = {n: {"rows": len(t.pools), "k": t.k, "pool_size": t.pool_size} for n, t in self.tables.items()}
        if meta["datasets"] != expected:
            raise HybridembedError(
                f"{source}: dynamic-mining state was saved for datasets {meta['datasets']}, this run has {expected}; "
                "resume with the same data, num_negatives and mining.dynamic.pool_size"
            )
        for i, table in enumerate(self.tables.values()):
            table.active, table.initial, table.used = (np.array(arrays[f"{i}.{key}"]) for key in ("active", "initial", "used"))
        self.events = int(meta["events"])

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **self.state_dict())  # type: ignore[arg-type]  # numpy's stub matches **kwds against allow_pickle: bool too
        return path

    def load(self, folder: str | Path) -> bool:
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return False
        with np.load(path, allow_pickle=False) as arrays:
            self.load_state_dict(dict(arrays), source=str(path))
        return True


class DynamicMiningCallback(TrainerCallback):
    """Runs the miner's events on the trainer's schedule, logs them through the trainer, saves/restores its state with checkpoints."""

    def __init__(self, miner: DynamicMiner, trainer: Any) -> None:
        self.miner, self.trainer = miner, trainer
        self.restored_from: str | None = None
        self.warned_bound = False

    def on_train_begin(self, args, state, control, **kwargs):
        # (0 dataloader workers: prepare_training rejects workers with dynamic mining, see WORKERS_ERROR)
        self.miner.lead = prefetched_batches(kwargs.get("train_dataloader"))
        if state.global_step > 0:
            checkpoint = str(checkpoint_folder(args.output_dir, state.global_step))
            if self.miner.load(checkpoint):
                self.restored_from = checkpoint
                logger.info("dynamic mining: restored pools and active negatives from %s", checkpoint)
                return
            logger.warning("dynamic mining: no %s in %s; starting from the rows' own negatives", STATE_FILE, checkpoint)
        if self.miner.config.init == "start":
            epoch = state.global_step // self.miner.steps_per_epoch
            event = self.miner.refresh(self.miner.epoch_rows(epoch), step=state.global_step, judge=False)
            logger.info("dynamic mining: activation scores for %d negatives of %d rows", event.initialized, event.rows)
            self.trainer.log(event.logs())  # the guard's swaps before step 1 (mining/guarded, mining/guard_replaced)

    def on_step_end(self, args, state, control, **kwargs):
        # The event of nominal step N (a multiple of every_steps) runs before the batches after it are
        # collated: after step N when the loader collates nothing ahead, after step N − 1 when it looks
        # one batch ahead (accelerate). It covers the batches collated between it and the next event.
        step = state.global_step
        if not self.miner.is_event_step(step, state.max_steps):
            return
        first, end = self.miner.event_window(step, state.max_steps)
        event = self.miner.refresh(self.miner.rows_of_batches(first, end), step=step)
        self.miner.windows.append((step, first, end))
        self.miner.events += 1
        self.trainer.log(event.logs())
        self._warn_if_bound_blocks(event)

    def _warn_if_bound_blocks(self, event: MiningEvent) -> None:
        # Measured: all-MiniLM-L6-v2 on Chinese scores its negatives at 0.84-0.95 cosine, so with max_score 0.8 no
        # negative was ever judged easy in 490 steps (docs/RESULTS.md, Table F). Say so once, early.
        if self.warned_bound or not event.checked or event.above_max_score * 2 <= event.checked:
            return
        self.warned_bound = True
        logger.warning(
            "dynamic mining: %d of %d judged negatives score at or above max_score %.2f (mean %.3f), and such a "
            "negative is never judged easy, so the rule can hardly replace anything; this model's cosines sit above "
            "the bound — set mining.dynamic.max_score from its score distribution on training data (docs/mining.md)",
            event.above_max_score,
            event.checked,
            self.miner.config.max_score,
            event.sum_before / event.checked,
        )

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.miner.save(str(checkpoint_folder(args.output_dir, state.global_step)))


WORKERS_ERROR = (
    "mining.dynamic needs training.dataloader_num_workers: 0 — worker processes collate from a copy of the active "
    "negatives taken when their epoch starts, so the replacements of an event would not reach the batches it scored"
)


def build_dynamic_miner(
    model: Any, config: DynamicMiningConfig, datasets: Sequence[TaskDataset], views: dict[str, Any], sampler: Any, accumulation: int
) -> DynamicMiner | None:
    """The miner for a run, with the `active_negatives` hooks of the retrieval/reranking datasets' views set
    (before the collator and trainer are built from them); None when no dataset has negatives to re-mine.
    The trainer registers its `DynamicMiningCallback` (HybridTrainer(dynamic_miner=…))."""
    miner = DynamicMiner(model, config, datasets, views, sampler, accumulation)
    if not miner.tables:
        logger.warning("mining.dynamic: no retrieval/reranking dataset with negatives; nothing to re-mine")
        return None
    for name in miner.tables:
        views[name].active_negatives = miner.active_negatives(name)
    return miner


__all__ = ["DynamicMiner", "DynamicMiningCallback", "MiningEvent", "build_dynamic_miner", "easy_threshold", "is_easy", "prefetched_batches"]
