"""Settings of `hybridembed data synthesize`: how queries are generated (endpoint or local model), requested, filtered and written."""

from __future__ import annotations

from pydantic import Field

from hybridembed.recipe import BUNDLED_MODEL
from hybridembed.schema import Strict

# Language codes the prompts spell out (the template says "Write the query in Chinese", not "in zh").
LANGUAGE_NAMES = {
    "en": "English", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "de": "German", "fr": "French", "es": "Spanish",
    "it": "Italian", "pt": "Portuguese", "ru": "Russian", "ar": "Arabic", "nl": "Dutch", "pl": "Polish", "tr": "Turkish",
    "vi": "Vietnamese", "id": "Indonesian", "uk": "Ukrainian", "sv": "Swedish", "cs": "Czech", "fi": "Finnish",
}  # fmt: skip


class EndpointSettings(Strict):
    """An OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, TGI, ...)."""

    url: str  # base URL: https://api.openai.com, http://localhost:8000 (with or without /v1)
    model: str
    api_key: str | None = None  # None: no Authorization header (local servers)
    concurrency: int = Field(8, ge=1)  # requests in flight at once
    timeout: float = Field(60.0, gt=0)  # seconds per request
    max_retries: int = Field(5, ge=0)  # attempts after the first, on 429 / 5xx / timeouts / connection errors
    backoff_base: float = Field(1.0, ge=0)  # seconds; attempt n waits base·2^n (capped) with full jitter, or Retry-After
    backoff_max: float = Field(60.0, ge=0)
    max_requests: int | None = Field(None, ge=1)  # budget of HTTP requests sent (retries included); None: unbounded


class LocalSettings(Strict):
    """A causal LM in a transformers folder, run here with batched generation."""

    path: str
    batch_size: int = Field(8, ge=1)
    device: str | None = None  # None: cuda if available, else cpu
    max_prompt_tokens: int | None = None  # None: the model's position limit minus max_new_tokens


class GenerationSettings(Strict):
    """How each query is sampled (the same for an endpoint and a local model)."""

    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.7, ge=0)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0


class QualitySettings(Strict):
    """The filters a generated query must pass; each one's drops are counted in the summary."""

    min_query_chars: int = Field(3, ge=0)
    max_query_chars: int = Field(512, ge=1)
    max_overlap: float = Field(0.8, gt=0, le=1)  # drop a query when this share of its tokens (words / CJK bigrams) is in the passage; 1: off
    language: str | None = None  # a pair_filters.LANGUAGE_SCRIPTS code: the query must be in its script
    language_min_share: float = Field(0.5, ge=0, le=1)
    near_threshold: float | None = Field(0.9, gt=0, le=1)  # MinHash Jaccard between queries; None: exact duplicates only
    consistency: bool = True
    consistency_k: int = Field(1, ge=1)  # keep a query when its passage ranks in its top k (Promptagator's round-trip filter)
    filter_model: str = BUNDLED_MODEL
    batch_size: int = Field(64, ge=1)
    cache_dir: str | None = None  # corpus-embedding cache (hybridembed.mining.cache)


class SynthesisSettings(Strict):
    """One `hybridembed data synthesize` run: the corpus, the output file, the prompts and the filters."""

    corpus: str
    out: str
    prompts: list[str] = Field(default_factory=lambda: ["question"], min_length=1)  # names of packaged templates or file paths
    language: str | None = None  # code (zh, en, ...) for the prompt and the language filter
    instruction: str | None = None  # task description put into the prompt's {instruction} line
    max_passage_chars: int = Field(2000, ge=1)  # longer passages are cut before prompting (the written positive is whole)
    limit: int | None = Field(None, ge=1)  # passages of the corpus considered (the first N)
    chunk_size: int = Field(64, ge=1)  # passages generated, filtered and appended together
    mine_negatives: int = Field(0, ge=0)  # negatives per kept row mined with mining.offline (0: none)
    negatives_range: tuple[int, int] = (10, 100)  # 1-based rank window the negatives come from
    progress: bool = True
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)

    def language_name(self) -> str:
        if self.language is None:
            return "the same language as the passage"
        return LANGUAGE_NAMES.get(self.language, self.language)
