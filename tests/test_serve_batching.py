"""Unit tests of the micro-batcher (fake encoders, no model) and of the request schema."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

import numpy as np
import pytest

from hybridembed.serve.batching import BatcherClosed, MicroBatcher, QueueFull
from hybridembed.serve.schemas import ApiError, embedding_payload, parse_embedding_request


class RecordingEncoder:
    """Encodes text i as the row [len(text), key-id]; records each batch; optionally sleeps or blocks."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None, fail: bool = False):
        self.delay = delay
        self.gate = gate
        self.fail = fail
        self.batches: list[tuple[list[str], object]] = []
        self.threads: set[str] = set()

    def __call__(self, texts, key):
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        self.batches.append((list(texts), key))
        rows = np.array([[len(t), 0 if key is None else 1] for t in texts], dtype=np.float32)
        return rows, np.array([len(t) for t in texts])


def run(coro):
    return asyncio.run(coro)


def test_concurrent_submits_are_encoded_together_on_a_worker_thread():
    enc = RecordingEncoder(delay=0.05)

    async def main():
        batcher = MicroBatcher(enc, max_batch_size=64, max_wait_ms=20)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(["x" * (i + 1)]) for i in range(20)))
        await batcher.stop()
        return batcher, results

    batcher, results = run(main())
    assert len(enc.batches) < 20 / 4, enc.batches  # 20 requests, a handful of batches
    assert batcher.stats.texts == 20 and batcher.stats.batches == len(enc.batches)
    for i, (rows, counts) in enumerate(results):  # each caller gets its own rows back, in order
        assert rows.shape == (1, 2) and rows[0, 0] == i + 1 and counts.tolist() == [i + 1]
    assert enc.threads and all(name.startswith("hybridembed-encode") for name in enc.threads)


def test_event_loop_stays_free_while_a_batch_encodes():
    gate = threading.Event()
    enc = RecordingEncoder(gate=gate)

    async def main():
        batcher = MicroBatcher(enc, max_batch_size=8, max_wait_ms=0)
        await batcher.start()
        pending = asyncio.ensure_future(batcher.submit(["blocked"]))
        started = time.perf_counter()
        for _ in range(5):  # the loop keeps running other work while the encoder is blocked
            await asyncio.sleep(0.01)
        loop_latency = time.perf_counter() - started
        assert not pending.done()
        gate.set()
        rows, _ = await pending
        await batcher.stop()
        return loop_latency, rows

    loop_latency, rows = run(main())
    assert loop_latency < 1.0 and rows[0, 0] == len("blocked")


def test_batches_respect_max_size_and_split_large_requests():
    enc = RecordingEncoder()

    async def main():
        batcher = MicroBatcher(enc, max_batch_size=4, max_wait_ms=5)
        await batcher.start()
        rows, counts = await batcher.submit([f"t{i:02d}" for i in range(10)])
        await batcher.stop()
        return rows, counts

    rows, counts = run(main())
    assert [len(texts) for texts, _ in enc.batches] == [4, 4, 2]
    assert rows.shape == (10, 2) and counts.tolist() == [3] * 10


def test_batches_never_mix_keys():
    enc = RecordingEncoder(delay=0.02)

    async def main():
        batcher = MicroBatcher(enc, max_batch_size=32, max_wait_ms=20)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit([f"text {i}"], key="query" if i % 2 else None) for i in range(10)))
        await batcher.stop()
        return results

    results = run(main())
    for texts, key in enc.batches:  # every text of a batch was submitted with that batch's key
        assert {"query" if int(t.split()[1]) % 2 else None for t in texts} == {key}
    assert sorted(len(texts) for texts, _ in enc.batches) == [5, 5]
    for i, (rows, _) in enumerate(results):
        assert rows[0, 1] == (1 if i % 2 else 0)


def test_encoder_errors_reach_every_caller_and_the_batcher_survives():
    enc = RecordingEncoder(fail=True)

    async def main():
        batcher = MicroBatcher(enc, max_batch_size=8, max_wait_ms=5)
        await batcher.start()
        outcomes = await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b"]), return_exceptions=True)
        enc.fail = False
        rows, _ = await batcher.submit(["still works"])
        await batcher.stop()
        return outcomes, rows

    outcomes, rows = run(main())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert rows[0, 0] == len("still works")


def test_full_queue_is_refused_and_stopped_batcher_refuses():
    gate = threading.Event()
    enc = RecordingEncoder(gate=gate)

    async def main():
        batcher = MicroBatcher(enc, max_batch_size=2, max_wait_ms=0, max_queue=4)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(["a", "b"]))
        await asyncio.sleep(0.05)  # first batch is now blocked in the encoder
        queued = asyncio.ensure_future(batcher.submit(["c", "d", "e"]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit(["f", "g"])
        gate.set()
        await asyncio.gather(first, queued)
        await batcher.stop()
        with pytest.raises(BatcherClosed):
            await batcher.submit(["late"])
        return batcher.stats.rejected_full

    assert run(main()) == 1


def test_cancelled_callers_are_skipped():
    gate = threading.Event()
    enc = RecordingEncoder(gate=gate)

    async def main():
        batcher = MicroBatcher(enc, max_batch_size=1, max_wait_ms=0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(["gone"]))
        await asyncio.sleep(0)
        gone.cancel()
        gate.set()
        await first
        kept = await batcher.submit(["kept"])
        await batcher.stop()
        return kept

    run(main())
    assert [texts for texts, _ in enc.batches] == [["first"], ["kept"]]


LIMITS = {"max_inputs": 3, "max_chars": 10, "max_dim": 64}


@pytest.mark.parametrize(
    "payload, param, fragment",
    [
        ([], None, "JSON object"),
        ({"model": "m"}, "input", "must provide"),
        ({"input": "a"}, "model", "must provide"),
        ({"input": 5, "model": "m"}, "input", "a number"),
        ({"input": None, "model": "m"}, "input", "null"),
        ({"input": [], "model": "m"}, "input", "empty list"),
        ({"input": "", "model": "m"}, "input", "empty string"),
        ({"input": ["a", ""], "model": "m"}, "input", "input[1]"),
        ({"input": ["a", 3], "model": "m"}, "input", "input[1]' must be a string"),
        ({"input": ["a", "b\ud800"], "model": "m"}, "input", "'input[1]' contains a lone surrogate (U+D800) at character 1"),
        ({"input": "\udfff", "model": "m"}, "input", "'input' contains a lone surrogate (U+DFFF)"),
        ({"input": [1, 2, 3], "model": "m"}, "input", "token-array"),
        ({"input": [[1, 2], [3]], "model": "m"}, "input", "token-array"),
        ({"input": ["a"] * 4, "model": "m"}, "input", "at most 3"),
        ({"input": "x" * 11, "model": "m"}, "input", "at most 10"),
        ({"input": "a", "model": 7}, "model", "string"),
        ({"input": "a", "model": "m", "dimensions": 65}, "dimensions", "64 dimensions"),
        ({"input": "a", "model": "m", "dimensions": 0}, "dimensions", "positive"),
        ({"input": "a", "model": "m", "dimensions": "16"}, "dimensions", "integer"),
        ({"input": "a", "model": "m", "dimensions": 16.0}, "dimensions", "integer"),
        ({"input": "a", "model": "m", "dimensions": True}, "dimensions", "integer"),
        ({"input": "a", "model": "m", "encoding_format": "binary"}, "encoding_format", "base64"),
        ({"input": "a", "model": "m", "input_type": "passage"}, "input_type", "document"),
        ({"input": "a", "model": "m", "dimension": 8}, "dimension", "Unrecognized"),
    ],
)
def test_bad_requests_name_the_parameter(payload, param, fragment):
    with pytest.raises(ApiError) as info:
        parse_embedding_request(payload, **LIMITS)
    assert info.value.status == 400
    assert info.value.param == param
    assert fragment in info.value.message


def test_good_request_normalizes_input_to_a_list():
    req = parse_embedding_request({"input": "hello", "model": "m", "dimensions": 8, "user": None}, **LIMITS)
    assert req.input == ["hello"] and req.dimensions == 8 and req.encoding_format is None


def test_surrogate_pairs_and_other_unicode_are_accepted():
    import json

    texts = json.loads('["\\ud83d\\ude00 pair", "caf\\u00e9", "nul \\u0000 inside", "\\u200b"]')
    assert parse_embedding_request({"input": texts, "model": "m"}, max_inputs=8, max_chars=100, max_dim=64).input == texts


def test_base64_payload_is_little_endian_float32():
    vec = np.array([1.0, -2.5, 0.125], dtype=np.float32)
    raw = base64.b64decode(embedding_payload(vec, "base64"))
    assert raw == vec.astype("<f4").tobytes()
    assert raw[:4] == bytes([0, 0, 0x80, 0x3F])  # 1.0f little-endian
    assert embedding_payload(vec, "float") == [1.0, -2.5, 0.125]
