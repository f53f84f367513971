"""Micro-batcher: queues the texts of concurrent requests and encodes them together on one worker thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

logger = logging.getLogger(__name__)

# encode_fn(texts, key) returns a tuple of row-aligned arrays (e.g. embeddings and token counts);
# `key` is what the texts of one batch share (here: the prompt name), None by default.
EncodeFn = Callable[[list[str], Any], Sequence[Any]]
# on_batch(texts, result, seconds) is told of every successfully encoded batch (metrics).
BatchHook = Callable[[list[str], Sequence[Any], float], None]


class QueueFull(Exception):
    """The queue already holds `max_queue` texts; the caller should answer 503 and the client retry."""


class BatcherClosed(Exception):
    """The batcher is stopped (server shutting down)."""


class InvalidInput(Exception):
    """A text the model cannot encode through no fault of the server (the caller should answer 400).

    encode_fn raises it with `index` = the position of the offending text in the list it was
    given; the batcher re-raises it to the submitter with `index` relative to that caller's texts.
    """

    def __init__(self, index: int, reason: str):
        super().__init__(f"input {index}: {reason}")
        self.index = index
        self.reason = reason


@dataclass
class _Item:
    texts: list[str]
    key: Any
    future: asyncio.Future
    enqueued: float
    cost: int = 0  # estimated tokens (cost_fn), for the token budget


def estimate_tokens(text: str, max_tokens: int | None = None) -> int:
    """A cheap upper-side estimate of a text's tokens, without the tokenizer: one per CJK/kana/hangul
    character, one per 4 other characters, plus 2 special tokens; at most `max_tokens` (truncation)."""
    if max_tokens and len(text) // 4 + 2 >= max_tokens:
        return max_tokens  # at least this many whatever the script: no need to scan a long text on the event loop
    wide = sum(1 for ch in text if ch >= "\u2e80")  # CJK, kana, hangul and other wide scripts: ~1 token each
    estimate = 2 + wide + -(-(len(text) - wide) // 4)
    return min(estimate, max_tokens) if max_tokens else estimate


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    largest_batch: int = 0
    encode_seconds: float = 0.0
    rejected_full: int = 0
    isolated_batches: int = 0  # batches that failed as a whole and were re-encoded request by request
    failed_requests: int = 0  # queue items whose texts failed at encode time (invalid input or model error)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "texts": self.texts,
            "mean_batch_size": round(self.texts / self.batches, 2) if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "encode_seconds": round(self.encode_seconds, 3),
            "rejected_queue_full": self.rejected_full,
            "isolated_batches": self.isolated_batches,
            "failed_requests": self.failed_requests,
        }


class MicroBatcher:
    """Collects texts from concurrent callers into batches of at most `max_batch_size` texts.

    A batch is dispatched when it is full or when its oldest text has waited `max_wait_ms`
    (texts that queued while the previous batch was encoding are therefore sent at once).
    A batch only holds items with the same key as its oldest item; the others keep their place.
    Encoding runs on a single dedicated thread, so the event loop keeps accepting requests,
    and requests larger than `max_batch_size` are split into several queue items (FIFO).

    One caller's bad text must not fail the others sharing its batch: when encode_fn raises
    InvalidInput, the item holding that text fails alone and the rest of the batch is encoded
    again; when it raises anything else, every item of the batch is re-encoded on its own, so
    only the items that still fail alone get the error.
    """

    def __init__(
        self,
        encode_fn: EncodeFn,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        max_batch_tokens: int | None = None,
        cost_fn: Callable[[str], int] = estimate_tokens,
        on_batch: BatchHook | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self._encode_fn = encode_fn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self._cost_fn = cost_fn
        self._on_batch = on_batch
        self.stats = BatcherStats()
        self._items: deque[_Item] = deque()
        self._queued_texts = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = True

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    async def start(self) -> None:
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybridembed-encode")
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hybridembed-batcher")

    async def stop(self) -> None:
        """Stop taking work, fail what is still queued, and wait for the batch in flight."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherClosed("the server is shutting down"))
        self._queued_texts = 0
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    async def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the encode thread (e.g. a warm-up pass), serialized with the batches."""
        if self._executor is None:
            raise BatcherClosed("the batcher is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, texts: list[str], key: Any = None) -> tuple[Any, ...]:
        """Encode `texts` together with whatever else is queued; returns encode_fn's arrays for these rows."""
        if self._closed or self._wakeup is None:
            raise BatcherClosed("the server is shutting down")
        if self._queued_texts and self._queued_texts + len(texts) > self.max_queue:
            self.stats.rejected_full += 1
            raise QueueFull(f"the server queue is full ({self._queued_texts} texts waiting); retry shortly")
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures, starts = [], []
        for start, end, cost in self._chunks(texts):
            item = _Item(texts[start:end], key, loop.create_future(), now, cost)
            self._items.append(item)
            self._queued_texts += end - start
            futures.append(item.future)
            starts.append(start)
        self._wakeup.set()
        parts = await asyncio.gather(*futures, return_exceptions=True)
        for k, part in enumerate(parts):
            if isinstance(part, InvalidInput):  # make the index relative to this caller's texts
                raise InvalidInput(part.index + starts[k], part.reason) from part
            if isinstance(part, BaseException):
                raise part
        arrays = cast("list[Any]", parts)  # each part is encode_fn's arrays: the exceptions were raised above
        if len(arrays) == 1:
            return tuple(arrays[0])
        return tuple(_concat([p[k] for p in arrays]) for k in range(len(arrays[0])))

    def _chunks(self, texts: list[str]) -> list[tuple[int, int, int]]:
        """(start, end, cost) of queue items: at most max_batch_size texts and, when set, max_batch_tokens
        estimated tokens each (a single text over the budget is an item of its own)."""
        if self.max_batch_tokens is None:
            return [(s, min(s + self.max_batch_size, len(texts)), 0) for s in range(0, len(texts), self.max_batch_size)]
        chunks, start, cost = [], 0, 0
        for i, text in enumerate(texts):
            c = self._cost_fn(text)
            if i > start and (i - start >= self.max_batch_size or cost + c > self.max_batch_tokens):
                chunks.append((start, i, cost))
                start, cost = i, 0
            cost += c
        if texts:
            chunks.append((start, len(texts), cost))
        return chunks

    def _over_budget(self, size: int, tokens: int, item: _Item) -> bool:
        if size + len(item.texts) > self.max_batch_size:
            return True
        return self.max_batch_tokens is not None and size > 0 and tokens + item.cost > self.max_batch_tokens

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._items:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._items[0].enqueued + self.max_wait
            while self._queued_texts < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if batch:
                await self._encode(batch)

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        kept: deque[_Item] = deque()
        size = tokens = 0
        key = self._items[0].key
        while self._items:
            item = self._items.popleft()
            if item.future.done():  # the caller went away (client disconnected)
                self._queued_texts -= len(item.texts)
                continue
            if item.key != key or self._over_budget(size, tokens, item):
                kept.append(item)
                if size >= self.max_batch_size or (self.max_batch_tokens is not None and tokens >= self.max_batch_tokens):
                    break
                continue
            self._queued_texts -= len(item.texts)
            batch.append(item)
            size += len(item.texts)
            tokens += item.cost
        kept.extend(self._items)
        self._items = kept
        return batch

    async def _encode(self, batch: list[_Item]) -> None:
        pending = batch
        while pending:
            try:
                result = await self._encode_items(pending)
            except InvalidInput as err:  # one text is at fault: fail its item alone, encode the rest again
                culprit, local = _locate(pending, err.index)
                if culprit is None:  # encode_fn gave an index outside the batch: treat it as a model error
                    await self._encode_each(pending, err)
                    return
                logger.info("input %d of a queued request cannot be encoded (%s); encoding the rest of its batch again", local, err.reason)
                self._fail(culprit, InvalidInput(local, err.reason))
                pending = [item for item in pending if item is not culprit and not item.future.done()]
            except Exception as err:
                await self._encode_each(pending, err)
                return
            else:
                self._deliver(pending, result)
                return

    async def _encode_each(self, batch: list[_Item], err: Exception) -> None:
        """The batch failed as a whole: encode each item on its own so only the culprits fail."""
        if len(batch) == 1:
            logger.error("encoding %d texts of one request failed", len(batch[0].texts), exc_info=err)
            self._fail(batch[0], err)
            return
        self.stats.isolated_batches += 1
        logger.warning(
            "encoding a batch of %d texts from %d requests failed (%s: %s); encoding each request on its own",
            sum(len(item.texts) for item in batch),
            len(batch),
            type(err).__name__,
            err,
        )
        for item in batch:
            if item.future.done():
                continue
            try:
                result = await self._encode_items([item])
            except InvalidInput as item_err:
                self._fail(item, item_err)
            except Exception as item_err:
                logger.error("encoding %d texts of one request failed", len(item.texts), exc_info=item_err)
                self._fail(item, item_err)
            else:
                self._deliver([item], result)

    async def _encode_items(self, items: list[_Item]) -> Sequence[Any]:
        """Run encode_fn on the texts of `items` on the worker thread; count the successful batch."""
        texts = [t for item in items for t in item.texts]
        started = time.perf_counter()
        assert self._executor is not None
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._encode_fn, texts, items[0].key)
        except asyncio.CancelledError:  # the batcher is stopping: nobody will encode these any more
            for item in items:
                if not item.future.done():
                    item.future.set_exception(BatcherClosed("the server is shutting down"))
            raise
        elapsed = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.texts += len(texts)
        self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
        self.stats.encode_seconds += elapsed
        if self._on_batch is not None:
            try:
                self._on_batch(texts, result, elapsed)
            except Exception:  # metrics must never fail a request
                logger.exception("on_batch hook failed")
        logger.debug("encoded %d texts from %d requests in %.1f ms", len(texts), len(items), elapsed * 1000)
        return result

    def _deliver(self, items: list[_Item], result: Sequence[Any]) -> None:
        start = 0
        for item in items:
            end = start + len(item.texts)
            if not item.future.done():
                item.future.set_result(tuple(part[start:end] for part in result))
            start = end

    def _fail(self, item: _Item, err: Exception) -> None:
        self.stats.failed_requests += 1
        if not item.future.done():
            item.future.set_exception(err)


def _locate(items: list[_Item], index: int) -> tuple[_Item | None, int]:
    """The item holding text `index` of the concatenated texts of `items`, and its position there."""
    if index < 0:
        return None, index
    for item in items:
        if index < len(item.texts):
            return item, index
        index -= len(item.texts)
    return None, index


def _concat(parts: list[Any]) -> Any:
    import numpy as np

    return np.concatenate([np.asarray(p) for p in parts], axis=0)
