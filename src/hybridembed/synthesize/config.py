"""Settings of `hybridembed data synthesize`: how queries are generated (endpoint or local model), requested, filtered and written."""

from __future__ import annotations

from dataclasses import dataclass, field

from hybridembed.errors import HybridembedError
from hybridembed.recipe import BUNDLED_MODEL

# Language codes the prompts spell out (the template says "Write the query in Chinese", not "in zh").
LANGUAGE_NAMES = {
    "en": "English", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "de": "German", "fr": "French", "es": "Spanish",
    "it": "Italian", "pt": "Portuguese", "ru": "Russian", "ar": "Arabic", "nl": "Dutch", "pl": "Polish", "tr": "Turkish",
    "vi": "Vietnamese", "id": "Indonesian", "uk": "Ukrainian", "sv": "Swedish", "cs": "Czech", "fi": "Finnish",
}  # fmt: skip


@dataclass
class EndpointSettings:
    """An OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, TGI, ...)."""

    url: str  # base URL: https://api.openai.com, http://localhost:8000 (with or without /v1)
    model: str
    api_key: str | None = None  # None: no Authorization header (local servers)
    concurrency: int = 8  # requests in flight at once
    timeout: float = 60.0  # seconds per request
    max_retries: int = 5  # attempts after the first, on 429 / 5xx / timeouts / connection errors
    backoff_base: float = 1.0  # seconds; attempt n waits base·2^n (capped) with full jitter, or Retry-After
    backoff_max: float = 60.0
    max_requests: int | None = None  # budget of HTTP requests sent (retries included); None: unbounded


@dataclass
class LocalSettings:
    """A causal LM in a transformers folder, run here with batched generation."""

    path: str
    batch_size: int = 8
    device: str | None = None  # None: cuda if available, else cpu
    max_prompt_tokens: int | None = None  # None: the model's position limit minus max_new_tokens


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.7  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass
class QualitySettings:
    """The filters a generated query must pass; each one's drops are counted in the summary."""

    min_query_chars: int = 3
    max_query_chars: int = 512
    max_overlap: float = 0.8  # drop a query when this share of its tokens (words / CJK bigrams) is in the passage; 1: off
    language: str | None = None  # a pair_filters.LANGUAGE_SCRIPTS code: the query must be in its script
    language_min_share: float = 0.5
    near_threshold: float | None = 0.9  # MinHash Jaccard between queries; None: exact duplicates only
    consistency: bool = True
    consistency_k: int = 1  # keep a query when its passage ranks in its top k (Promptagator's round-trip filter)
    filter_model: str = BUNDLED_MODEL
    batch_size: int = 64
    cache_dir: str | None = None  # corpus-embedding cache (hybridembed.mining.cache)

    def check(self) -> None:
        """The ranges; the language code is checked against the script table by synthesize.filters.check_quality."""
        if not 0 < self.max_overlap <= 1:
            raise HybridembedError(f"--max-overlap {self.max_overlap}: must be in (0, 1]")
        if self.near_threshold is not None and not 0 < self.near_threshold <= 1:
            raise HybridembedError(f"--near-threshold {self.near_threshold}: must be in (0, 1]")
        if self.consistency_k < 1:
            raise HybridembedError(f"--consistency-k {self.consistency_k}: must be at least 1")


@dataclass
class SynthesisSettings:
    corpus: str
    out: str
    prompts: list[str] = field(default_factory=lambda: ["question"])  # names of packaged templates or file paths
    language: str | None = None  # code (zh, en, ...) for the prompt and the language filter
    instruction: str | None = None  # task description put into the prompt's {instruction} line
    max_passage_chars: int = 2000  # longer passages are cut before prompting (the written positive is whole)
    limit: int | None = None  # passages of the corpus considered (the first N)
    chunk_size: int = 64  # passages generated, filtered and appended together
    mine_negatives: int = 0  # negatives per kept row mined with mining.offline (0: none)
    negatives_range: tuple[int, int] = (10, 100)  # 1-based rank window the negatives come from
    progress: bool = True
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)

    def language_name(self) -> str:
        if self.language is None:
            return "the same language as the passage"
        return LANGUAGE_NAMES.get(self.language, self.language)
