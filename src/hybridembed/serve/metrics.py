"""Prometheus metrics of the server: HTTP requests through prometheus-fastapi-instrumentator, batching and errors of our own.

What this adds over the instrumentator's HTTP metrics (`http_requests_total{handler,method,status}`,
`http_request_duration_seconds`, request/response sizes): the micro-batcher's view — texts and tokens
embedded, the size and encode time of every batch, the queue depth at scrape time — and errors by
the OpenAI error `code` we answer with (`overloaded`, `invalid_json`, …). Each app gets its own
registry, so two servers (or tests) in one process never collide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_fastapi_instrumentator import Instrumentator

if TYPE_CHECKING:
    from fastapi import FastAPI

    from hybridembed.serve.batching import MicroBatcher

METRICS_PATH = "/metrics"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
ENCODE_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The counters, histograms and gauges of one server, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.texts = Counter("hybridembed_texts_total", "Texts embedded", registry=self.registry)
        self.prompt_tokens = Counter("hybridembed_prompt_tokens_total", "Tokens embedded (the usage.prompt_tokens of the answers)", registry=self.registry)
        self.truncated = Counter("hybridembed_truncated_inputs_total", "Inputs cut at the model's max_seq_length", registry=self.registry)
        self.batch_size = Histogram("hybridembed_batch_size", "Texts per encoded batch", buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.batch_tokens = Histogram("hybridembed_batch_tokens", "Tokens per encoded batch", buckets=BATCH_TOKEN_BUCKETS, registry=self.registry)
        self.encode_seconds = Histogram(
            "hybridembed_batch_encode_seconds", "Seconds to encode one batch", buckets=ENCODE_SECONDS_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge("hybridembed_queue_texts", "Texts waiting in the batcher's queue", registry=self.registry)
        self.errors = Counter("hybridembed_errors_total", "Error answers by HTTP status and OpenAI error code", ["status", "code"], registry=self.registry)

    def install(self, app: FastAPI, batcher: MicroBatcher) -> None:
        """Instrument `app`'s routes and expose everything at /metrics (no API key, like /health)."""
        self.queue_depth.set_function(lambda: batcher.queued_texts)
        instrumentator = Instrumentator(
            should_group_status_codes=False,  # 400 and 413 are different problems
            excluded_handlers=[METRICS_PATH],
            registry=self.registry,
        )
        instrumentator.instrument(app).expose(app, endpoint=METRICS_PATH, include_in_schema=False)

    def record_batch(self, texts: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(texts)
        self.batch_tokens.observe(tokens)
        self.encode_seconds.observe(seconds)

    def record_answer(self, texts: int, prompt_tokens: int, truncated: int) -> None:
        self.texts.inc(texts)
        self.prompt_tokens.inc(prompt_tokens)
        self.truncated.inc(truncated)

    def record_error(self, status: int, code: str | None) -> None:
        self.errors.labels(status=str(status), code=code or "none").inc()
