"""Query generators: an OpenAI-compatible chat endpoint (bounded concurrency, retries with backoff, a request budget) and a local transformers causal LM (batched, left-padded, seeded)."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal, Protocol, cast

from hybridembed.errors import HybridembedError
from hybridembed.synthesize.config import EndpointSettings, GenerationSettings, LocalSettings

logger = logging.getLogger(__name__)
# WordPiece decoders (BERT-style vocabularies) put a space between every two CJK characters; Chinese and Japanese
# are written without them (Korean keeps its spaces: Hangul is not in the set).
CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"  # CJK punctuation, kana, Han, full-width forms
CJK_GAP_RE = re.compile(f"(?<=[{CJK}]) +(?=[{CJK}])")
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# A wrong URL, model name or key fails every request the same way: stop at the first instead of spending the corpus.
FATAL_STATUS = {401, 403, 404}


@dataclass
class Reply:
    text: str | None
    status: Literal["ok", "failed", "budget"]  # failed: gave up (counted by kind); budget: never sent, --max-requests spent


class Generator(Protocol):
    name: str  # written to every row as `generator`
    stats: Counter  # requests, retries and error kinds, merged into the run's summary

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Reply]: ...


def chat_url(url: str) -> str:
    """Accept a server root, its /v1 base, or the full /v1/chat/completions address."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (delay seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class EndpointGenerator:
    """Chat completions over HTTP; counts every request, retry and error kind in `stats`."""

    def __init__(self, settings: EndpointSettings, generation: GenerationSettings, stats: Counter) -> None:
        if settings.concurrency < 1:
            raise HybridembedError(f"--concurrency {settings.concurrency}: must be at least 1")
        self.settings, self.generation, self.stats = settings, generation, stats
        self.url = chat_url(settings.url)
        self.name = f"endpoint:{settings.model}"
        self.requests_left = settings.max_requests
        self.rng = random.Random(generation.seed)

    @property
    def budget_spent(self) -> bool:
        return self.requests_left is not None and self.requests_left <= 0

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Reply]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._generate_all(prompts, seeds))
        # Called from inside an event loop (a notebook): asyncio.run would refuse, so run ours in a thread.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self._generate_all(prompts, seeds)).result()

    async def _generate_all(self, prompts: list[str], seeds: list[int]) -> list[Reply]:
        import httpx

        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        limits = httpx.Limits(max_connections=self.settings.concurrency, max_keepalive_connections=self.settings.concurrency)
        slots = asyncio.Semaphore(self.settings.concurrency)
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self.settings.timeout), limits=limits) as client:
            return await asyncio.gather(*(self._one(client, slots, p, s) for p, s in zip(prompts, seeds, strict=True)))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.settings.backoff_max)
        # Full jitter (AWS's "exponential backoff and jitter"): spreads the retries of a burst of 429s.
        return self.rng.uniform(0, min(self.settings.backoff_max, self.settings.backoff_base * 2**attempt))

    async def _one(self, client, slots: asyncio.Semaphore, prompt: str, seed: int) -> Reply:
        import httpx

        payload = {
            "model": self.settings.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.generation.max_new_tokens,
            "temperature": self.generation.temperature,
            "top_p": self.generation.top_p,
            "seed": seed,
        }
        for attempt in range(self.settings.max_retries + 1):
            if self.budget_spent:
                self.stats["not sent: --max-requests spent"] += 1
                return Reply(None, "budget")
            if self.requests_left is not None:
                self.requests_left -= 1
            if attempt:
                self.stats["retries"] += 1
            self.stats["requests sent"] += 1
            retry_after = None
            async with slots:
                try:
                    response = await client.post(self.url, json=payload)
                except httpx.TimeoutException:
                    kind = "timeout"
                except httpx.TransportError as err:
                    kind = f"connection ({type(err).__name__})"
                else:
                    if response.status_code == 200:
                        return self._parse(response)
                    kind = f"HTTP {response.status_code}"
                    if response.status_code in FATAL_STATUS:
                        raise HybridembedError(f"{self.url}: HTTP {response.status_code}: {response.text[:300]} (check --endpoint, --model and the API key)")
                    if response.status_code not in RETRYABLE_STATUS:
                        self.stats[f"http error: {kind}"] += 1
                        self.stats["failed: not retryable"] += 1
                        return Reply(None, "failed")
                    retry_after = retry_after_seconds(response.headers.get("retry-after"))
            self.stats[f"http error: {kind}"] += 1
            if attempt < self.settings.max_retries:
                await asyncio.sleep(self._backoff(attempt, retry_after))
        self.stats["failed: retries exhausted"] += 1
        return Reply(None, "failed")

    def _parse(self, response) -> Reply:
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            self.stats["http error: unreadable response body"] += 1
            self.stats["failed: not retryable"] += 1
            return Reply(None, "failed")
        return Reply(content if isinstance(content, str) else None, "ok")


class LocalGenerator:
    """AutoModelForCausalLM + AutoTokenizer from a folder; the chat template when the tokenizer has one, else the plain prompt."""

    def __init__(self, settings: LocalSettings, generation: GenerationSettings, stats: Counter) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings, self.generation, self.stats = settings, generation, stats
        self.name = f"local:{settings.path.rstrip('/').split('/')[-1]}"
        self.device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if not os.path.isdir(settings.path):
            raise HybridembedError(f"--local {settings.path}: not a folder (a transformers causal-LM folder with config.json)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(settings.path)
            # transformers' @wraps(nn.Module.to) gives `to` the unbound signature: mypy takes the device for `self`.
            self.model = AutoModelForCausalLM.from_pretrained(settings.path).to(self.device).eval()  # type: ignore[arg-type]
        except (OSError, ValueError) as err:
            raise HybridembedError(f"--local {settings.path}: cannot load a causal LM: {err}") from None
        # Left padding: every prompt then ends at the last column, where generation continues.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        limit = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", None)
        self.max_prompt_tokens = settings.max_prompt_tokens or (max(16, limit - generation.max_new_tokens) if limit else None)

    def _text(self, prompt: str) -> tuple[str, bool]:
        """The model input and whether the tokenizer should still add its special tokens."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
            return cast(str, text), False  # tokenize=False: the rendered string (the return type covers token ids too)
        return prompt, True

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Reply]:
        import torch

        replies: list[Reply] = []
        step = max(1, self.settings.batch_size)
        for start in range(0, len(prompts), step):
            texts = [self._text(p) for p in prompts[start : start + step]]
            # The prompt's end (the "Query:" cue) matters most: truncate from the left.
            self.tokenizer.truncation_side = "left"
            batch = self.tokenizer(
                [t for t, _ in texts], return_tensors="pt", padding=True, truncation=self.max_prompt_tokens is not None,
                max_length=self.max_prompt_tokens, add_special_tokens=texts[0][1],
            ).to(self.device)  # fmt: skip
            batch.pop("token_type_ids", None)
            torch.manual_seed(seeds[start])  # seeded per batch: a re-run of the same passages samples the same queries
            sample = self.generation.temperature > 0
            with torch.inference_mode():
                output = self.model.generate(
                    **batch, max_new_tokens=self.generation.max_new_tokens, do_sample=sample,
                    temperature=self.generation.temperature if sample else None, top_p=self.generation.top_p if sample else None,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                )  # fmt: skip
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
                replies.append(Reply(CJK_GAP_RE.sub("", text), "ok"))
            self.stats["requests sent"] += len(texts)
        return replies
