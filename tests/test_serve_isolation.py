"""One bad request must not fail the others in its micro-batch.

Unit tests of the batcher's isolation (fake encoders), of the engine's culprit search (tiny model),
and a mixed load of valid and malformed requests from 32 concurrent clients against a real uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import numpy as np
import pytest

from helpers import running_server
from hybridembed.modeling.model import load_model
from hybridembed.serve import ServeSettings, create_app, load_served_model, schemas
from hybridembed.serve.batching import InvalidInput, MicroBatcher

MODEL = "tiny"
POISON = "poison"


class PickyEncoder:
    """Encodes text t as the row [len(t)]; fails any batch holding POISON, the way `fail` says."""

    def __init__(self, fail: str = "runtime"):
        self.fail = fail
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, texts, key):
        with self.lock:
            self.calls.append(list(texts))
        if POISON in texts:
            if self.fail == "invalid":
                raise InvalidInput(texts.index(POISON), "the tokenizer refused it")
            raise RuntimeError("model exploded on one text")
        return (np.array([[len(t)] for t in texts], dtype=np.float32),)


async def _submit_all(batcher, requests):
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(texts) for texts in requests), return_exceptions=True)
    finally:
        await batcher.stop()


REQUESTS = [["alpha"], ["bb", POISON], ["ccc"], ["dddd", "ee"], [POISON], ["ffffff"]]


def test_batch_failure_is_retried_per_request_so_only_the_culprit_fails():
    enc = PickyEncoder(fail="runtime")
    batcher = MicroBatcher(enc, max_batch_size=64, max_wait_ms=50)
    outcomes = asyncio.run(_submit_all(batcher, REQUESTS))

    assert len(enc.calls[0]) == sum(map(len, REQUESTS))  # all requests first shared one batch
    for texts, outcome in zip(REQUESTS, outcomes):
        if POISON in texts:
            assert isinstance(outcome, RuntimeError)  # a model error stays a server error (500)
        else:
            (rows,) = outcome
            assert rows[:, 0].tolist() == [len(t) for t in texts]
    assert enc.calls[1:] == REQUESTS  # then each request on its own, in order
    assert batcher.stats.isolated_batches == 1 and batcher.stats.failed_requests == 2


def test_invalid_input_fails_its_request_alone_and_the_rest_is_encoded_again():
    enc = PickyEncoder(fail="invalid")
    batcher = MicroBatcher(enc, max_batch_size=64, max_wait_ms=50)
    outcomes = asyncio.run(_submit_all(batcher, REQUESTS))

    for texts, outcome in zip(REQUESTS, outcomes):
        if POISON in texts:
            assert isinstance(outcome, InvalidInput) and outcome.index == texts.index(POISON)
        else:
            (rows,) = outcome
            assert rows[:, 0].tolist() == [len(t) for t in texts]
    assert len(enc.calls) == 3  # the whole batch, without the first culprit, without the second
    assert batcher.stats.isolated_batches == 0 and batcher.stats.failed_requests == 2


def test_invalid_input_index_is_relative_to_the_whole_request_when_it_was_split():
    enc = PickyEncoder(fail="invalid")
    batcher = MicroBatcher(enc, max_batch_size=2, max_wait_ms=5)
    texts = ["a", "b", "c", POISON, "e"]
    (outcome,) = asyncio.run(_submit_all(batcher, [texts]))
    assert isinstance(outcome, InvalidInput) and outcome.index == 3


# --- the real tiny model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    return load_served_model(str(tiny_model_dir), model_name=MODEL)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def test_engine_names_the_text_the_tokenizer_rejects(served, reference):
    texts = ["a fine sentence", "another one", "bad \ud800 text", "fine again"]
    with pytest.raises(InvalidInput) as info:
        served.encode(texts)
    assert info.value.index == 2
    json.dumps(info.value.reason, ensure_ascii=False).encode("utf-8")  # safe to put in a response body
    good = [t for i, t in enumerate(texts) if i != 2]
    embeddings, _, _ = served.encode(good)  # the model is unharmed
    np.testing.assert_allclose(embeddings, reference.encode(good), atol=1e-5)


# --- a real server under a mixed load ------------------------------------------------------------

CLIENTS = 32
ROUNDS = 4

# (raw JSON body, where the error points, message fragments, holds a lone surrogate). Escapes are
# JSON text: "\\ud800" is the six characters \ud800, which json.loads turns into a lone surrogate.
MALFORMED = [
    ('{"model": "tiny", "input": "bad \\ud800 text"}', "'input'", ["surrogate", "U+D800"], True),
    ('{"model": "tiny", "input": ["good one", "good two", "x\\udfff"]}', "'input[2]'", ["surrogate", "U+DFFF"], True),
    ('{"model": "tiny", "input": ["\\udc00", "fine"]}', "'input[0]'", ["surrogate"], True),
    ('{"model": "tiny", "input": ["a", 5]}', "'input[1]'", ["must be a string"], False),
    ('{"model": "tiny", "input": null}', "'input'", ["must be a string or a list"], False),
]


def _workload():
    """(client, round) -> a valid request's texts, or the index of a malformed body (about 1 in 3)."""
    plan = {}
    for c in range(CLIENTS):
        for r in range(ROUNDS):
            if (c + r) % 3 == 0:
                plan[c, r] = (c * ROUNDS + r) % len(MALFORMED)
            else:
                n = 1 + (c + r) % 3
                plan[c, r] = [f"client {c} round {r} item {i}: a cat sat on the mat" + " again" * (i + c % 4) for i in range(n)]
    return plan


async def _hammer(url: str, plan: dict) -> dict:
    """Every client sends its rounds one after the other; the 32 clients run concurrently."""
    results: dict = {}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def client(c: int) -> None:
            for r in range(ROUNDS):
                job = plan[c, r]
                if isinstance(job, int):
                    content = MALFORMED[job][0].encode("ascii")
                else:
                    content = json.dumps({"model": MODEL, "input": job, "encoding_format": "float"}).encode()
                try:
                    results[c, r] = await http.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
                except httpx.HTTPError as err:  # a dropped connection or a timeout
                    results[c, r] = err

        await asyncio.gather(*(client(c) for c in range(CLIENTS)))
    return results


def _check_results(plan: dict, results: dict, reference, at_encode: bool = False) -> None:
    """0 dropped connections, 0 5xx, a 400 naming the input for each malformed request, and the
    reference embeddings for each valid one. `at_encode`: surrogates were refused by the tokenizer."""
    errors = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert not errors, f"connections failed: {errors}"
    server_errors = {k: (v.status_code, v.text) for k, v in results.items() if v.status_code >= 500}
    assert not server_errors, server_errors
    good = {k: job for k, job in plan.items() if not isinstance(job, int)}
    texts = [t for job in good.values() for t in job]
    want = dict(zip(texts, reference.encode(texts, convert_to_numpy=True)))
    for key, job in plan.items():
        response = results[key]
        if isinstance(job, int):
            assert response.status_code == 400, response.text
            err = response.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["type"] == "invalid_request_error" and err["param"] == "input"
            _, where, fragments, surrogate = MALFORMED[job]
            if at_encode and surrogate:
                fragments = ["could not be encoded by this model's tokenizer", "surrogate"]
            for fragment in [where, *fragments]:
                assert fragment in err["message"], (fragment, err["message"])
        else:
            assert response.status_code == 200, response.text
            got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
            np.testing.assert_allclose(got, np.stack([want[t] for t in job]), atol=1e-5)


def test_mixed_load_of_valid_and_malformed_requests(served, reference):
    plan = _workload()
    with running_server(create_app(served, ServeSettings(warmup=False, max_wait_ms=20))) as url:
        results = asyncio.run(_hammer(url, plan))
        health = httpx.get(f"{url}/health").json()
    _check_results(plan, results, reference)
    good_requests = sum(not isinstance(job, int) for job in plan.values())
    assert health["batching"]["batches"] < good_requests  # requests really were batched together
    assert health["batching"]["failed_requests"] == 0  # the bad ones were refused before the queue


def test_bad_texts_that_reach_a_batch_fail_alone(tiny_model_dir, reference, monkeypatch):
    """With the up-front check switched off, lone surrogates reach the shared batches: the
    tokenizer refuses them at encode time, and still only their own requests fail (with a 400)."""
    monkeypatch.setattr(schemas, "lone_surrogate", lambda text: None)
    served = load_served_model(str(tiny_model_dir), model_name=MODEL)
    batches: list[list[str]] = []
    original = served.encode

    def recording_encode(texts, prompt_name=None, batch_size=None):
        batches.append(list(texts))
        return original(texts, prompt_name, batch_size)

    served.encode = recording_encode
    plan = _workload()
    with running_server(create_app(served, ServeSettings(warmup=False, max_wait_ms=20))) as url:
        results = asyncio.run(_hammer(url, plan))
        health = httpx.get(f"{url}/health").json()
    _check_results(plan, results, reference, at_encode=True)
    shared = [b for b in batches if any(map(_has_surrogate, b)) and not all(map(_has_surrogate, b))]
    assert shared, "no bad text shared a batch with good ones: the test proves nothing"
    surrogate_requests = sum(isinstance(job, int) and MALFORMED[job][3] for job in plan.values())
    assert health["batching"]["failed_requests"] == surrogate_requests


def test_a_model_failure_on_one_request_is_a_500_for_it_alone(tiny_model_dir, reference):
    served = load_served_model(str(tiny_model_dir), model_name=MODEL)
    original = served.encode

    def flaky_encode(texts, prompt_name=None, batch_size=None):
        if any("boom" in t for t in texts):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(texts, prompt_name, batch_size)

    served.encode = flaky_encode
    texts = [f"request {i} is about a dog" if i % 4 else f"request {i} goes boom" for i in range(16)]

    async def main(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            return await asyncio.gather(*(http.post("/v1/embeddings", json={"model": MODEL, "input": t, "encoding_format": "float"}) for t in texts))

    with running_server(create_app(served, ServeSettings(warmup=False, max_wait_ms=50))) as url:
        responses = asyncio.run(main(url))
        health = httpx.get(f"{url}/health").json()
    for text, response in zip(texts, responses):
        if "boom" in text:
            assert response.status_code == 500
            assert response.json()["error"]["type"] == "server_error"
        else:
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(response.json()["data"][0]["embedding"], reference.encode([text])[0], atol=1e-5)
    assert health["batching"]["isolated_batches"] >= 1


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)
