"""Quality filters for generated queries: malformed, wrong length, copied from the passage, wrong script, duplicates (pair_filters' hashing and MinHash LSH) and round-trip consistency (mining.offline's encoder and index).

Drops are counted under the names below, in the order they are applied; a query is dropped by
the first rule it fails. Per-query rules run first, then consistency on the survivors of a chunk,
then duplicates, so a duplicate's first copy is the one that survived everything else.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from hybridembed.data.pair_filters import LANGUAGE_SCRIPTS, FilterSettings, _near_duplicate_filter, normalize, script_share
from hybridembed.errors import HybridembedError
from hybridembed.synthesize.config import QualitySettings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MALFORMED = "malformed or empty reply"
LENGTH = "query too short or too long"
SUBSTRING = "copies the passage (substring)"
OVERLAP = "copies the passage (token overlap)"
LANGUAGE = "language (script)"
INCONSISTENT = "consistency (passage not in top k)"
EXACT = "exact duplicate"
NEAR = "near duplicate"
RULES = (MALFORMED, LENGTH, SUBSTRING, OVERLAP, LANGUAGE, INCONSISTENT, EXACT, NEAR)

# Runs of letters/digits; a run in a script written without spaces is split into character bigrams below.
RUN_RE = re.compile(r"\w+", re.UNICODE)
UNSPACED = ("han", "kana", "hangul")


def _unspaced(char: str) -> bool:
    from hybridembed.data.pair_filters import SCRIPTS

    return any(SCRIPTS[s](char) for s in UNSPACED)


def overlap_tokens(text: str) -> set[str]:
    """Words of spaced scripts (case-folded) and character bigrams of Chinese/Japanese/Korean runs."""
    tokens: set[str] = set()
    for run in RUN_RE.findall(normalize(text)):
        if not any(_unspaced(c) for c in run):
            tokens.add(run)
            continue
        tokens.update(run[i : i + 2] for i in range(max(1, len(run) - 1)))
    return tokens


def overlap_ratio(query: str, passage: str) -> float:
    """Share of the query's tokens that occur in the passage (1.0: every query word is lifted from it)."""
    mine = overlap_tokens(query)
    return len(mine & overlap_tokens(passage)) / len(mine) if mine else 0.0


def check_quality(settings: QualitySettings) -> None:
    """A language code the script table knows (the table lives with the filters; the settings model checks the ranges)."""
    if settings.language is not None and settings.language not in LANGUAGE_SCRIPTS:
        raise HybridembedError(f"--language {settings.language}: the language filter knows {sorted(LANGUAGE_SCRIPTS)}")


class QueryFilters:
    """The per-query rules and the duplicate state (seeded with the rows an earlier run wrote)."""

    def __init__(self, settings: QualitySettings, stats: Counter) -> None:
        check_quality(settings)
        self.settings, self.stats = settings, stats
        self.hashes: set[bytes] = set()
        near = FilterSettings(near_threshold=settings.near_threshold)
        self.near = _near_duplicate_filter(near) if settings.near_threshold is not None else None

    def rule(self, query: str | None, passage: str) -> str | None:
        """The per-query rule that drops `query` (None: it passes them all); duplicates are checked by `duplicate`."""
        s = self.settings
        if query is None:
            return MALFORMED
        if not s.min_query_chars <= len(query) <= s.max_query_chars:
            return LENGTH
        if normalize(query) in normalize(passage):
            return SUBSTRING
        if s.max_overlap < 1 and overlap_ratio(query, passage) >= s.max_overlap:  # 1: the rule is off
            return OVERLAP
        if s.language is not None and script_share(query, LANGUAGE_SCRIPTS[s.language]) < s.language_min_share:
            return LANGUAGE
        return None

    def duplicate(self, query: str) -> str | None:
        """EXACT / NEAR when an earlier kept query says the same; otherwise remember this one and return None."""
        digest = hashlib.sha1(normalize(query).encode()).digest()
        if digest in self.hashes:
            return EXACT
        self.hashes.add(digest)
        if self.near is not None and self.near(query):
            return NEAR
        return None

    def remember(self, queries: Iterable[str]) -> None:
        """Queries already in the output (a resumed run): later copies of them are duplicates."""
        for query in queries:
            self.duplicate(query)


class ConsistencyFilter:
    """Round-trip consistency (Promptagator; Lewis et al.'s PAQ): keep a query only if the retriever ranks its source passage in the top k."""

    def __init__(self, model: SentenceTransformer, corpus: Sequence[str], settings: QualitySettings, progress: bool = True) -> None:
        from hybridembed.mining.cache import embed_corpus
        from hybridembed.mining.index import Searcher
        from hybridembed.mining.offline import MiningOptions, _prefixes

        self.model, self.settings = model, settings
        self.query_prefix, passage_prefix = _prefixes(model, MiningOptions())
        cached = embed_corpus(model, list(corpus), passage_prefix, settings.cache_dir, batch_size=settings.batch_size, progress=progress)
        self.searcher = Searcher(cached.vectors, "flat")
        self.k = min(settings.consistency_k, len(corpus))

    def keep(self, queries: Sequence[str], passage_indices: Sequence[int]) -> list[bool]:
        from hybridembed.mining.offline import _encode

        if not queries:
            return []
        vectors = _encode(self.model, queries, self.query_prefix, self.settings.batch_size)
        _, ids = self.searcher.search(vectors, self.k)
        return [int(index) in set(row.tolist()) for index, row in zip(passage_indices, ids, strict=True)]
