"""Filters for LLM prompt–response pairs before they become training pairs: length, refusals, templated replies, language, exact and near duplicates, each counted.

The rules (docs/data.md repeats them):

* **length**: query and response length in characters (not tokens, so the bounds mean the same in
  every language) within [min, max].
* **refusal**: the response's first 300 characters match a refusal or disclaimer pattern
  (English and Chinese: "I'm sorry, but I can't", "As an AI language model", "我无法", "作为一个人工智能" …).
* **templated**: the same normalized response answers ≥ ``template_min_count`` different queries
  (a canned reply carries no information about its query).
* **language**: optional; the share of letters written in the language's script (Han for zh,
  kana for ja, Hangul for ko, Cyrillic for ru/uk, Arabic for ar, Latin for en/de/fr/es/…) is at least
  ``language_min_share`` in query and response. It checks the writing system, so it cannot tell
  English from German.
* **exact duplicate**: normalized-text hashing — the pair after Unicode NFKC, case folding and
  whitespace collapsing, hashed (SHA-1); the first occurrence is kept.
* **near duplicate**: MinHash (``num_perm`` = 128 permutations over character 5-gram shingles of query +
  response) with LSH banding to find candidates; a pair whose estimated Jaccard similarity to an
  earlier kept pair is ≥ ``near_threshold`` is dropped. The banding (b bands × r rows, b·r ≤
  ``num_perm``) follows the threshold: as datasketch's ``MinHashLSH._optimal_param``, it minimises
  the weighted probability of false-positive and false-negative candidates, here weighted 0.1/0.9
  (``LSH_WEIGHTS``) because a false-positive candidate only costs one signature comparison while a
  missed candidate leaves the duplicate in the data.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np

from hybridembed.data.instructions import Pair

REFUSAL_PATTERNS = [
    r"\bI(?:'m| am) sorry,? (?:but )?I (?:can(?:no|')t|won't|am unable|'m unable)",
    r"\bI(?:'m| am) (?:not able|unable) to (?:help|assist|provide|comply|fulfil)",
    r"\bI can(?:no|')t (?:help|assist|provide|comply|fulfil|do that)",
    r"\bas an AI(?: language model| assistant)?\b",
    r"\bI(?:'m| am) just an AI\b",
    r"我(?:无法|不能|没办法)(?:回答|提供|帮助|协助|完成)",
    r"(?:抱歉|对不起)[，,]?\s*(?:我|作为)",
    r"作为(?:一个|一名)?(?:AI|人工智能|语言模型|AI语言模型|AI助手)",
]
REFUSAL_RE = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)
SCRIPTS: dict[str, Callable[[str], bool]] = {
    "han": lambda c: "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf",
    "kana": lambda c: "\u3040" <= c <= "\u30ff",
    "hangul": lambda c: "\uac00" <= c <= "\ud7af" or "\u1100" <= c <= "\u11ff",
    "cyrillic": lambda c: "\u0400" <= c <= "\u04ff",
    "arabic": lambda c: "\u0600" <= c <= "\u06ff",
    "latin": lambda c: c.isascii() and c.isalpha() or "\u00c0" <= c <= "\u024f",
}
LANGUAGE_SCRIPTS = {
    "zh": ("han",), "ja": ("kana", "han"), "ko": ("hangul", "han"), "ru": ("cyrillic",), "uk": ("cyrillic",), "ar": ("arabic",),
    **{code: ("latin",) for code in ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs", "tr", "id", "vi")},
}  # fmt: skip


@dataclass
class FilterSettings:
    min_query_chars: int = 3
    max_query_chars: int = 4000
    min_response_chars: int = 10
    max_response_chars: int = 8000
    drop_refusals: bool = True
    template_min_count: int = 3  # 0 turns the templated-reply rule off
    language: str | None = None
    language_min_share: float = 0.5
    near_threshold: float | None = 0.9  # None turns near-duplicate removal off
    num_perm: int = 128
    seed: int = 0


@dataclass
class FilterReport:
    read: int
    removed: Counter = field(default_factory=Counter)
    kept: int = 0

    def lines(self) -> list[str]:
        rules = ["too short", "too long", "refusal", "templated reply", "language", "exact duplicate", "near duplicate"]
        return [f"  {rule}: {self.removed.get(rule, 0)}" for rule in rules]


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def script_share(text: str, scripts: Iterable[str]) -> float:
    """Share of the text's letters written in one of `scripts`."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    tests = [SCRIPTS[s] for s in scripts]
    return sum(1 for c in letters if any(t(c) for t in tests)) / len(letters)


class MinHasher:
    """MinHash signatures over character 5-gram shingles, universal hashing (a·x + b) mod p on CRC32 shingle ids.

    a, b and the ids are taken mod the Mersenne prime p = 2^31 − 1, so each permutation is a
    bijection of Z_p whose products stay below 2^62 in uint64. (With p = 2^61 − 1 and 31-bit a, x ↦ a·x + b
    hardly ever wrapped around p: it stayed nearly monotone in x, every "permutation" picked about the
    same minimum, and the estimated Jaccard was far off the true one.)
    """

    PRIME = (1 << 31) - 1

    def __init__(self, num_perm: int = 64, seed: int = 0, shingle: int = 5) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, self.PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, self.PRIME, size=num_perm, dtype=np.uint64)
        self.shingle = shingle

    def shingles(self, text: str) -> set[str]:
        """The character n-grams of the normalized text that the signature is computed over."""
        text = normalize(text)
        return {text[i : i + self.shingle] for i in range(max(1, len(text) - self.shingle + 1))}

    def signature(self, text: str) -> np.ndarray:
        grams = self.shingles(text)
        ids = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams)) % self.PRIME
        # a, ids < 2^31, so a·x + b < 2^62: uint64 arithmetic does not overflow.
        return ((ids[:, None] * self.a[None, :] + self.b[None, :]) % self.PRIME).min(axis=0)


LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative) weights of the banding choice


def _integral(f: Callable[[np.ndarray], np.ndarray], a: float, b: float, points: int = 1001) -> float:
    x = np.linspace(a, b, points)
    y = f(x)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def _shared_band(s: np.ndarray, rows: int, bands: int) -> np.ndarray:
    """P(a pair of Jaccard similarity s shares at least one of `bands` bands of `rows` rows)."""
    return 1 - (1 - s**rows) ** bands


def _no_shared_band(s: np.ndarray, rows: int, bands: int) -> np.ndarray:
    return (1 - s**rows) ** bands


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, weights: tuple[float, float] = LSH_WEIGHTS) -> tuple[int, int]:
    """(bands, rows) with bands·rows ≤ num_perm minimising w_fp·P(false-positive candidate) + w_fn·P(missed candidate).

    A pair of Jaccard similarity s shares at least one band with probability 1 − (1 − s^r)^b; the two
    probabilities integrate that curve below and (its complement) above the threshold, as datasketch's
    ``MinHashLSH._optimal_param`` does.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"near-duplicate threshold {threshold} must be in (0, 1]")
    w_fp, w_fn = weights
    best: tuple[float, int, int] | None = None
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = _integral(partial(_shared_band, rows=rows, bands=bands), 0.0, threshold)
            fn = _integral(partial(_no_shared_band, rows=rows, bands=bands), threshold, 1.0)
            error = w_fp * fp + w_fn * fn
            if best is None or error < best[0]:
                best = (error, bands, rows)
    assert best is not None
    return best[1], best[2]


def _near_duplicate_filter(settings: FilterSettings) -> Callable[[str], bool]:
    """A stateful check: True when the text is a near duplicate of one seen (and kept) before."""
    threshold = settings.near_threshold
    assert threshold is not None, "called only with near-duplicate removal on"
    hasher = MinHasher(settings.num_perm, settings.seed)
    bands, rows = lsh_params(threshold, settings.num_perm)
    buckets: dict[tuple[int, bytes], list[np.ndarray]] = defaultdict(list)

    def seen(text: str) -> bool:
        signature = hasher.signature(text)
        keys = [(band, signature[band * rows : (band + 1) * rows].tobytes()) for band in range(bands)]
        for key in keys:
            for other in buckets.get(key, ()):
                if float(np.mean(other == signature)) >= threshold:
                    return True
        for key in keys:
            buckets[key].append(signature)
        return False

    return seen


def _rule(pair: Pair, settings: FilterSettings, templated: set[str]) -> str | None:
    """The per-pair rule that drops this pair, if any (duplicates are handled across pairs)."""
    q, p = pair.query, pair.positive
    if len(q) < settings.min_query_chars or len(p) < settings.min_response_chars:
        return "too short"
    if len(q) > settings.max_query_chars or len(p) > settings.max_response_chars:
        return "too long"
    if settings.drop_refusals and REFUSAL_RE.search(p[:300]):
        return "refusal"
    if normalize(p) in templated:
        return "templated reply"
    if settings.language is not None:
        scripts = LANGUAGE_SCRIPTS[settings.language]
        if min(script_share(q, scripts), script_share(p, scripts)) < settings.language_min_share:
            return "language"
    return None


def filter_pairs(pairs: list[Pair], settings: FilterSettings) -> tuple[list[Pair], FilterReport]:
    """Apply the rules in the order of the module docstring; returns the kept pairs and the counts."""
    if settings.language is not None and settings.language not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown language {settings.language!r} (known: {sorted(LANGUAGE_SCRIPTS)})")
    report = FilterReport(read=len(pairs))
    templated: set[str] = set()
    if settings.template_min_count:
        queries_per_reply: dict[str, set[str]] = defaultdict(set)
        for pair in pairs:
            queries_per_reply[normalize(pair.positive)].add(normalize(pair.query))
        templated = {reply for reply, queries in queries_per_reply.items() if len(queries) >= settings.template_min_count}
    near = _near_duplicate_filter(settings) if settings.near_threshold is not None else None
    hashes: set[bytes] = set()
    kept = []
    for pair in pairs:
        rule = _rule(pair, settings, templated)
        if rule is None:
            digest = hashlib.sha1(f"{normalize(pair.query)}\x00{normalize(pair.positive)}".encode()).digest()
            if digest in hashes:
                rule = "exact duplicate"
            else:
                hashes.add(digest)
                if near is not None and near(f"{pair.query}\n{pair.positive}"):
                    rule = "near duplicate"
        if rule is None:
            kept.append(pair)
        else:
            report.removed[rule] += 1
    report.kept = len(kept)
    return kept, report
