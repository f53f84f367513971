"""Micro-batcher: queues the texts of concurrent requests and encodes them together on one worker thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# encode_fn(texts, key) returns a tuple of row-aligned arrays (e.g. embeddings and token counts);
# `key` is what the texts of one batch share (here: the prompt name), None by default.
EncodeFn = Callable[[list[str], Any], Sequence[Any]]


class QueueFull(Exception):
    """The queue already holds `max_queue` texts; the caller should answer 503 and the client retry."""


class BatcherClosed(Exception):
    """The batcher is stopped (server shutting down)."""


@dataclass
class _Item:
    texts: list[str]
    key: Any
    future: asyncio.Future
    enqueued: float


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    largest_batch: int = 0
    encode_seconds: float = 0.0
    rejected_full: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "texts": self.texts,
            "mean_batch_size": round(self.texts / self.batches, 2) if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "encode_seconds": round(self.encode_seconds, 3),
            "rejected_queue_full": self.rejected_full,
        }


class MicroBatcher:
    """Collects texts from concurrent callers into batches of at most `max_batch_size` texts.

    A batch is dispatched when it is full or when its oldest text has waited `max_wait_ms`
    (texts that queued while the previous batch was encoding are therefore sent at once).
    A batch only holds items with the same key as its oldest item; the others keep their place.
    Encoding runs on a single dedicated thread, so the event loop keeps accepting requests,
    and requests larger than `max_batch_size` are split into several queue items (FIFO).
    """

    def __init__(self, encode_fn: EncodeFn, *, max_batch_size: int = 32, max_wait_ms: float = 5.0, max_queue: int = 4096):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self._encode_fn = encode_fn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
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
        futures = []
        for start in range(0, len(texts), self.max_batch_size):
            chunk = texts[start : start + self.max_batch_size]
            item = _Item(chunk, key, loop.create_future(), now)
            self._items.append(item)
            self._queued_texts += len(chunk)
            futures.append(item.future)
        self._wakeup.set()
        parts = await asyncio.gather(*futures, return_exceptions=True)
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        if len(parts) == 1:
            return tuple(parts[0])
        return tuple(_concat([p[k] for p in parts]) for k in range(len(parts[0])))

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
                except asyncio.TimeoutError:
                    break
            batch = self._take_batch()
            if batch:
                await self._encode(batch)

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        kept: deque[_Item] = deque()
        size = 0
        key = self._items[0].key
        while self._items:
            item = self._items.popleft()
            if item.future.done():  # the caller went away (client disconnected)
                self._queued_texts -= len(item.texts)
                continue
            if item.key != key or size + len(item.texts) > self.max_batch_size:
                kept.append(item)
                if size >= self.max_batch_size:
                    break
                continue
            self._queued_texts -= len(item.texts)
            batch.append(item)
            size += len(item.texts)
        kept.extend(self._items)
        self._items = kept
        return batch

    async def _encode(self, batch: list[_Item]) -> None:
        texts = [t for item in batch for t in item.texts]
        started = time.perf_counter()
        try:
            assert self._executor is not None
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._encode_fn, texts, batch[0].key
            )
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(BatcherClosed("the server is shutting down"))
            raise
        except Exception as err:  # the model failed: every caller in this batch gets the error
            logger.exception("encoding a batch of %d texts failed", len(texts))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        elapsed = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.texts += len(texts)
        self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
        self.stats.encode_seconds += elapsed
        logger.debug("encoded %d texts from %d requests in %.1f ms", len(texts), len(batch), elapsed * 1000)
        start = 0
        for item in batch:
            end = start + len(item.texts)
            if not item.future.done():
                item.future.set_result(tuple(part[start:end] for part in result))
            start = end


def _concat(parts: list[Any]) -> Any:
    import numpy as np

    return np.concatenate([np.asarray(p) for p in parts], axis=0)
