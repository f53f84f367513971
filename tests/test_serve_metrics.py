"""Operators' view of the server: batching by a token budget, and Prometheus /metrics (requests, batches, queue, errors by code)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from hybridembed.serve.batching import InvalidInput, MicroBatcher, estimate_tokens


def _encoder(batches):
    def encode(texts, key):
        for i, text in enumerate(texts):
            if text == "bad":
                raise InvalidInput(i, "bad text")
        batches.append(list(texts))
        return np.array([[len(t)] for t in texts], dtype=np.float32), np.array([estimate_tokens(t) for t in texts])

    return encode


def test_estimate_tokens_counts_wide_characters_one_each_and_caps_at_the_model_limit():
    assert estimate_tokens("") == 2
    assert estimate_tokens("abcdefgh") == 2 + 2
    assert estimate_tokens("一个戴着安全帽") == 2 + 7
    assert estimate_tokens("a" * 4000, max_tokens=128) == 128


def test_token_budget_splits_batches_and_requests_and_keeps_each_callers_rows_and_error_indexes():
    batches: list[list[str]] = []

    async def main():
        batcher = MicroBatcher(_encoder(batches), max_batch_size=64, max_wait_ms=20, max_batch_tokens=30)
        await batcher.start()
        long_request = ["x" * 40] + ["y" * 8] * 6  # 12 + 6 × 4 estimated tokens
        short = [batcher.submit(["z" * 8]) for _ in range(4)]
        results = await asyncio.gather(batcher.submit(long_request), *short)
        with pytest.raises(InvalidInput) as err:
            await batcher.submit(["y" * 8] * 7 + ["bad"])  # the bad text lands in the second chunk
        await batcher.stop()
        return results, err.value

    results, err = asyncio.run(main())
    costs = [sum(estimate_tokens(t) for t in batch) for batch in batches]
    assert all(c <= 30 or len(b) == 1 for c, b in zip(costs, batches)), (costs, batches)
    assert len(batches) >= 3  # 4 + 7 texts at 4-12 tokens each do not fit one 30-token batch
    rows, _ = results[0]
    assert rows[:, 0].tolist() == [40] + [8] * 6  # the caller's rows come back in its order
    assert err.index == 7  # relative to that caller's texts, across its chunks


def test_a_single_text_over_the_budget_is_encoded_alone():
    batches: list[list[str]] = []

    async def main():
        batcher = MicroBatcher(_encoder(batches), max_batch_size=8, max_wait_ms=5, max_batch_tokens=10)
        await batcher.start()
        rows, _ = await batcher.submit(["w" * 100, "v"])
        await batcher.stop()
        return rows

    rows = asyncio.run(main())
    assert rows[:, 0].tolist() == [100, 1] and batches == [["w" * 100], ["v"]]


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        have = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if part) if label_text else {}
        if all(have.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_metrics_count_requests_texts_tokens_batches_and_errors_by_code(tiny_model_dir):
    from hybridembed.serve import ServeSettings, create_app, load_served_model

    served = load_served_model(str(tiny_model_dir), model_name="tiny")
    app = create_app(served, ServeSettings(max_batch_tokens=64, warmup=False))

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                ok = await asyncio.gather(*(client.post("/v1/embeddings", json={"model": "tiny", "input": [f"text {i}", "another one"]}) for i in range(5)))
                bad_json = await client.post("/v1/embeddings", content=b"{", headers={"content-type": "application/json"})
                unknown = await client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
                metrics = await client.get("/metrics")
        return ok, bad_json, unknown, metrics

    ok, bad_json, unknown, metrics = asyncio.run(main())
    assert all(r.status_code == 200 for r in ok) and bad_json.status_code == 400 and unknown.status_code == 404
    text = metrics.text
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    assert _metric(text, "http_requests_total", handler="/v1/embeddings", method="POST", status="200") == 5
    assert _metric(text, "http_requests_total", handler="/v1/embeddings", method="POST", status="400") == 1
    assert _metric(text, "hybridembed_texts_total") == 10
    tokens = sum(r.json()["usage"]["prompt_tokens"] for r in ok)
    assert _metric(text, "hybridembed_prompt_tokens_total") == tokens
    assert _metric(text, "hybridembed_batch_size_sum") == 10 and _metric(text, "hybridembed_batch_size_count") >= 1
    assert _metric(text, "hybridembed_batch_tokens_sum") == tokens
    assert _metric(text, "hybridembed_errors_total", status="400", code="invalid_json") == 1
    assert _metric(text, "hybridembed_errors_total", status="404", code="model_not_found") == 1
    assert _metric(text, "hybridembed_queue_texts") == 0
    assert "http_request_duration_seconds_bucket" in text
