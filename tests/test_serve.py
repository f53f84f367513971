"""The embeddings server end to end: the official openai client and raw httpx against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from helpers import running_server
from hybridembed.modeling.model import load_model, truncate_embeddings, write_metadata
from hybridembed.serve import ServeSettings, create_app, load_served_model

MODEL = "tiny"
API_KEY = "sk-test-0123456789"
TEXTS = [
    "A man is playing a guitar.",
    "A woman slices an onion.",
    "Two dogs run through a field of tall grass.",
    "short",
]
LIMITS = dict(max_inputs=8, max_chars=200, max_body_bytes=4096, max_batch_size=16, max_wait_ms=5)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A copy of the tiny model whose hybridembed.json records Matryoshka dims (as our trainer writes)."""
    out = tmp_path_factory.mktemp("serve") / "tiny-mrl"
    shutil.copytree(tiny_model_dir, out)
    write_metadata(out, matryoshka_dims=[64, 32, 16])
    return out


@pytest.fixture(scope="module")
def reference(model_dir):
    """A separate model instance for the expected embeddings (the server's runs on its own thread)."""
    return load_model(str(model_dir))


@pytest.fixture(scope="module")
def served(model_dir):
    return load_served_model(str(model_dir), model_name=MODEL)


@pytest.fixture(scope="module")
def base_url(served):
    with running_server(create_app(served, ServeSettings(**LIMITS))) as url:
        yield url


@pytest.fixture(scope="module")
def auth_url(served):
    with running_server(create_app(served, ServeSettings(api_key=API_KEY, warmup=False, **LIMITS))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    from openai import OpenAI

    with OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def expected(reference, texts, dim=None):
    emb = reference.encode(texts, convert_to_numpy=True)
    return truncate_embeddings(emb, dim) if dim else emb


# --- the official openai client ------------------------------------------------------------


def test_openai_client_float(client, reference, served):
    resp = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    assert resp.object == "list" and resp.model == MODEL
    assert [d.index for d in resp.data] == list(range(len(TEXTS))) and all(d.object == "embedding" for d in resp.data)
    assert got.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(got, expected(reference, TEXTS), atol=1e-5)
    tokens = sum(len(ids) for ids in reference.tokenizer(TEXTS)["input_ids"])
    assert resp.usage.prompt_tokens == tokens == resp.usage.total_tokens


@pytest.mark.parametrize("dim", [16, 40])  # a trained Matryoshka dim and an arbitrary one
def test_openai_client_base64_with_dimensions(client, reference, dim):
    resp = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64", dimensions=dim)
    assert all(isinstance(d.embedding, str) for d in resp.data)
    got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in resp.data])
    assert got.shape == (len(TEXTS), dim)
    np.testing.assert_allclose(got, expected(reference, TEXTS, dim), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_openai_client_default_format_single_string(client, reference):
    # without encoding_format the client asks for base64 and decodes it itself
    resp = client.embeddings.create(model=MODEL, input=TEXTS[0], dimensions=32)
    assert len(resp.data) == 1 and len(resp.data[0].embedding) == 32
    np.testing.assert_allclose(resp.data[0].embedding, expected(reference, TEXTS[:1], 32)[0], atol=1e-5)


def test_openai_client_async_concurrent_requests_match(base_url, reference):
    import asyncio

    from openai import AsyncOpenAI

    texts = [f"sentence number {i} about a cat on a mat" + " again" * (i % 5) for i in range(24)]

    async def main():
        async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as c:
            return await asyncio.gather(*(c.embeddings.create(model=MODEL, input=t, encoding_format="float") for t in texts))

    before = httpx.get(f"{base_url}/health").json()["batching"]
    responses = asyncio.run(main())
    after = httpx.get(f"{base_url}/health").json()["batching"]
    got = np.array([r.data[0].embedding for r in responses], dtype=np.float32)
    np.testing.assert_allclose(got, expected(reference, texts), atol=1e-5)
    assert after["texts"] - before["texts"] == len(texts)
    assert after["batches"] - before["batches"] < len(texts)  # requests were encoded together


def test_openai_client_errors(client, auth_url):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=["ok", ""])
    assert info.value.body["param"] == "input" and "empty" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    with openai.OpenAI(base_url=f"{auth_url}/v1", api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(model=MODEL, input="hi")
    with openai.OpenAI(base_url=f"{auth_url}/v1", api_key=API_KEY, max_retries=0) as good:
        assert len(good.embeddings.create(model=MODEL, input="hi").data[0].embedding) == 64


def test_models_and_health(client, base_url, served):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    raw = httpx.get(f"{base_url}/v1/models").json()["data"][0]
    assert raw["dimensions"] == 64 and raw["matryoshka_dimensions"] == [16, 32, 64]
    assert raw["max_input_tokens"] == served.max_seq_length > 0
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{base_url}/v1/models/other").status_code == 404
    health = httpx.get(f"{base_url}/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL


def test_raw_base64_bytes_are_little_endian_float32(base_url, reference):
    r = httpx.post(f"{base_url}/v1/embeddings", json={"model": MODEL, "input": "hello", "encoding_format": "base64"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert len(raw) == 64 * 4
    np.testing.assert_allclose(np.frombuffer(raw, dtype="<f4"), expected(reference, ["hello"])[0], atol=1e-5)


def test_overlong_inputs_are_truncated_and_counted_in_a_header(base_url, served, reference):
    long_text = " ".join(["a"] * 99)  # 197 chars: under max_chars=200, but 99 tokens
    saved = served.max_seq_length
    served.max_seq_length = served.model.max_seq_length = 32
    try:
        r = httpx.post(f"{base_url}/v1/embeddings", json={"model": MODEL, "input": [long_text, "short"], "encoding_format": "float"})
    finally:
        served.max_seq_length = served.model.max_seq_length = saved
    assert r.status_code == 200 and r.headers["x-hybridembed-truncated-inputs"] == "1"
    short_tokens = len(reference.tokenizer("short")["input_ids"])
    assert r.json()["usage"]["prompt_tokens"] == 32 + short_tokens
    cut = reference.tokenizer.decode(reference.tokenizer(long_text)["input_ids"][1:31])  # 30 words + CLS/SEP = 32
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], expected(reference, [cut])[0], atol=1e-5)
    plain = httpx.post(f"{base_url}/v1/embeddings", json={"model": MODEL, "input": "short"})
    assert "x-hybridembed-truncated-inputs" not in plain.headers


# --- malformed requests: 4xx with an OpenAI-style error body, never a 5xx ----------------------


def _nested(depth: int) -> bytes:
    return b'{"model": "tiny", "input": ' + b"[" * depth + b"]" * depth + b"}"


BAD_REQUESTS = [
    ("invalid json", b'{"model": "tiny", "input": ', None, 400, None),
    ("invalid utf-8", b'{"model": "tiny", "input": "\xff\xfe"}', None, 400, None),
    ("empty body", b"", None, 400, None),
    ("not an object", b'["a", "b"]', None, 400, None),
    ("deep nesting", _nested(1900), None, 400, None),
    ("nested lists", _nested(50), None, 400, "input"),
    ("input number", {"model": MODEL, "input": 42}, None, 400, "input"),
    ("input object", {"model": MODEL, "input": {"text": "a"}}, None, 400, "input"),
    ("input mixed", {"model": MODEL, "input": ["a", None]}, None, 400, "input"),
    ("empty list", {"model": MODEL, "input": []}, None, 400, "input"),
    ("empty string", {"model": MODEL, "input": ""}, None, 400, "input"),
    ("empty string in list", {"model": MODEL, "input": ["a", ""]}, None, 400, "input"),
    ("lone surrogate", b'{"model": "tiny", "input": ["ok", "x\\ud800y"]}', None, 400, "input"),
    ("token array", {"model": MODEL, "input": [101, 2023, 102]}, None, 400, "input"),
    ("token arrays", {"model": MODEL, "input": [[101, 2023], [102]]}, None, 400, "input"),
    ("too many inputs", {"model": MODEL, "input": ["a"] * 9}, None, 400, "input"),
    ("too long input", {"model": MODEL, "input": "x" * 201}, None, 400, "input"),
    ("missing model", {"input": "a"}, None, 400, "model"),
    ("missing input", {"model": MODEL}, None, 400, "input"),
    ("model not a string", {"model": ["tiny"], "input": "a"}, None, 400, "model"),
    ("unknown model", {"model": "text-embedding-3-small", "input": "a"}, None, 404, "model"),
    ("dimensions too big", {"model": MODEL, "input": "a", "dimensions": 65}, None, 400, "dimensions"),
    ("dimensions zero", {"model": MODEL, "input": "a", "dimensions": 0}, None, 400, "dimensions"),
    ("dimensions negative", {"model": MODEL, "input": "a", "dimensions": -8}, None, 400, "dimensions"),
    ("dimensions string", {"model": MODEL, "input": "a", "dimensions": "16"}, None, 400, "dimensions"),
    ("dimensions float", {"model": MODEL, "input": "a", "dimensions": 16.5}, None, 400, "dimensions"),
    ("encoding_format unknown", {"model": MODEL, "input": "a", "encoding_format": "int8"}, None, 400, "encoding_format"),
    ("unknown field", {"model": MODEL, "input": "a", "dimension": 16}, None, 400, "dimension"),
    ("user not a string", {"model": MODEL, "input": "a", "user": 5}, None, 400, "user"),
    ("body too large", {"model": MODEL, "input": ["y" * 199] * 8, "pad": "z" * 4000}, None, 413, None),
    ("form content type", b"input=a&model=tiny", "application/x-www-form-urlencoded", 415, None),
    ("no content type", b'{"model": "tiny", "input": "a"}', "", 415, None),
]


@pytest.mark.parametrize("name, body, content_type, status, param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_malformed_requests_get_openai_errors(base_url, name, body, content_type, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json" if content_type is None else content_type}
    r = httpx.post(f"{base_url}/v1/embeddings", content=content, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param


def test_streamed_body_over_the_limit_is_413(base_url):
    def chunks():  # no Content-Length: the limit must hold while reading
        yield b'{"model": "tiny", "input": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    r = httpx.post(f"{base_url}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/embeddings", 405), ("POST", "/v1/nothing", 404)])
def test_unknown_routes_get_openai_errors(base_url, method, path, status):
    r = httpx.request(method, f"{base_url}{path}")
    assert r.status_code == status and r.json()["error"]["message"]


def test_server_still_healthy_after_bad_requests(base_url):
    r = httpx.post(f"{base_url}/v1/embeddings", json={"model": MODEL, "input": "still fine"})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 64


# --- API key ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer sk-wrong"}, {"authorization": f"Basic {API_KEY}"}, {"authorization": "Bearer"}, {"authorization": f"Bearer {API_KEY}x"}],
    ids=["missing", "wrong", "not bearer", "empty", "longer"],
)
@pytest.mark.parametrize("method, path", [("POST", "/v1/embeddings"), ("GET", "/v1/models")])
def test_missing_or_wrong_key_is_401(auth_url, headers, method, path):
    r = httpx.request(method, f"{auth_url}{path}", json={"model": MODEL, "input": "a"}, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"


def test_right_key_is_accepted_and_health_is_open(auth_url):
    ok = httpx.post(f"{auth_url}/v1/embeddings", json={"model": MODEL, "input": "a"}, headers={"authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    assert httpx.get(f"{auth_url}/health").status_code == 200


# --- prompts (input_type) ----------------------------------------------------------------------


def test_input_type_applies_the_models_prompts(model_dir, reference):
    import asyncio

    from openai import AsyncOpenAI

    prompted = load_served_model(str(model_dir), model_name=MODEL)
    prompted.model.prompts = {"query": "query: ", "document": "passage: "}
    texts = ["how do I cook rice", "Rice is cooked in water.", "boil the water first"]
    kinds = [None, "query", "document"]
    want = {
        None: reference.encode(texts),
        "query": reference.encode(["query: " + t for t in texts]),
        "document": reference.encode(["passage: " + t for t in texts]),
    }
    with running_server(create_app(prompted, ServeSettings(warmup=False, max_wait_ms=20))) as url:

        async def main():
            async with AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as c:
                calls = [
                    c.embeddings.create(
                        model=MODEL,
                        input=texts,
                        encoding_format="float",
                        extra_body={"input_type": kind} if kind else None,
                    )
                    for kind in kinds * 2  # sent concurrently: batches must not mix prompts
                ]
                return await asyncio.gather(*calls)

        responses = asyncio.run(main())
        info = httpx.get(f"{url}/v1/models").json()["data"][0]
    assert info["prompts"] == {"query": "query: ", "document": "passage: "}
    for kind, resp in zip(kinds * 2, responses):
        got = np.array([d.embedding for d in resp.data], dtype=np.float32)
        np.testing.assert_allclose(got, want[kind], atol=1e-5)
    assert not np.allclose(want["query"], want[None], atol=1e-3)
    query_tokens = sum(len(ids) for ids in reference.tokenizer(["query: " + t for t in texts])["input_ids"])
    assert responses[1].usage.prompt_tokens == query_tokens


# --- responsiveness ---------------------------------------------------------------------------


def test_health_answers_while_a_slow_batch_encodes(model_dir):
    slow = load_served_model(str(model_dir), model_name=MODEL)
    original = slow.encode

    def slow_encode(texts, prompt_name=None, batch_size=None):
        time.sleep(1.0)
        return original(texts, prompt_name, batch_size)

    slow.encode = slow_encode
    with running_server(create_app(slow, ServeSettings(warmup=False))) as url:
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(r=httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": "x"}, timeout=30)))
        worker.start()
        time.sleep(0.2)
        started = time.perf_counter()
        health = httpx.get(f"{url}/health", timeout=5)
        health_seconds = time.perf_counter() - started
        worker.join(30)
    assert health.status_code == 200 and health_seconds < 0.5
    assert result["r"].status_code == 200


# --- the CLI -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_with_api_key(model_dir):
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TEST_SERVE_KEY=API_KEY)
    cmd = [
        sys.executable,
        "-m",
        "hybridembed.cli",
        "serve",
        str(model_dir),
        "--port",
        str(port),
        "--api-key-env",
        "TEST_SERVE_KEY",
        "--model-name",
        MODEL,
        "--no-access-log",
        "--max-inputs",
        "2",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 45
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        auth = {"authorization": f"Bearer {API_KEY}"}
        ok = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": ["a", "b"], "dimensions": 16}, headers=auth)
        assert ok.status_code == 200 and len(ok.json()["data"][1]["embedding"]) == 16
        assert httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": ["a"] * 3}, headers=auth).status_code == 400
        assert httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": "a"}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(15)


def test_cli_refuses_unset_key_variable(monkeypatch, capsys):
    from hybridembed.cli import main

    monkeypatch.delenv("HYBRIDEMBED_NO_SUCH_KEY", raising=False)
    assert main(["serve", "some-model", "--api-key-env", "HYBRIDEMBED_NO_SUCH_KEY"]) == 2
    assert "HYBRIDEMBED_NO_SUCH_KEY" in capsys.readouterr().err


def test_cli_refuses_inconsistent_limits(capsys):
    from hybridembed.cli import main

    assert main(["serve", "some-model", "--max-inputs", "100", "--max-queue", "10"]) == 2
    assert "max_queue (10) must be >= max_inputs (100)" in capsys.readouterr().err
    assert main(["serve", "some-model", "--max-batch-size", "0"]) == 2
    assert "invalid serve option: max_batch_size: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_settings_are_frozen_and_public_hides_the_key():
    import pydantic

    settings = ServeSettings(api_key="secret")
    with pytest.raises(pydantic.ValidationError):
        settings.max_inputs = 1  # type: ignore[misc]
    assert settings.public()["api_key"] is True and "secret" not in str(settings.public())


def test_cpu_threads_default_leaves_a_core_free():
    import torch

    from hybridembed.commands.serve import set_cpu_threads

    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(None) == max(1, before - 1) == torch.get_num_threads()
        assert set_cpu_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
