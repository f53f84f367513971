"""Offline hard-negative mining: embed queries and a corpus, search with faiss, sample negatives from a rank window, write our retrieval format with scores.

sentence-transformers has `util.mine_hard_negatives` (rank window, margins, optional faiss). What
this module adds:

* **a bounded-memory, reusable embedding cache** (hybridembed.mining.cache): the corpus is encoded
  chunk by chunk into a float32 memmap keyed by the model's *weights*, the passage prefix and the
  corpus content (sentence-transformers keys its `.npy` cache by the model's name, keeps the whole
  corpus in memory and writes it only at the end); an interrupted run resumes at its last chunk,
  and exact search streams the memmap instead of loading it;
* **a corpus kept on disk** (hybridembed.mining.corpus): read once, deduplicated by 8-byte text
  hashes and written to a text store beside the cache; texts are looked up by hash and fetched by
  id only for the negatives written, so no list or dict of the corpus is ever built;
* **IVF / HNSW / IVF-PQ indexes** beside exact inner-product search (hybridembed.mining.index);
* **rows with several positives** (none is ever written as a negative) read from every input
  format our readers accept (ours, FlagEmbedding, Piccolo, sentence-transformers columns, …)
  with the same `file:line` validation as training;
* **rank-window sampling with a false-negative guard** measured against the query's *weakest*
  positive (`margin`: drop candidates scoring ≥ positive − margin; `max_ratio`: drop those
  scoring ≥ ratio × positive, NV-Retriever's "TopK-PercPos");
* **our retrieval format** with each negative's score and rank, so training (and dynamic
  mining, whose candidate pool is the row's negatives) reads it directly.

Ranks follow FlagEmbedding's convention: 1-based positions in the query's full ranking of the
corpus, positives included, so `rank_range=(50, 100)` is the same slice whatever the positives;
a positive (or the query's own text) inside the slice is skipped. Scores are cosine similarities.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from tqdm.auto import tqdm

from hybridembed.errors import HybridembedError
from hybridembed.mining.cache import embed_corpus
from hybridembed.mining.corpus import TextStore, iter_corpus_texts, open_corpus
from hybridembed.mining.index import IndexKind, Searcher

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from hybridembed.data import TaskDataset

logger = logging.getLogger(__name__)


@dataclass
class MiningOptions:
    rank_range: tuple[int, int] = (50, 100)  # 1-based, inclusive
    num_negatives: int = 7
    index: IndexKind = "flat"
    margin: float | None = None  # keep a candidate only if score < weakest positive − margin
    max_ratio: float | None = None  # keep a candidate only if score < max_ratio × weakest positive
    sampling: Literal["random", "top"] = "random"
    seed: int = 0
    batch_size: int = 64  # texts per forward pass
    chunk_size: int = 8192  # corpus texts per cache chunk
    query_block: int = 1024  # queries encoded and searched together
    query_prefix: str | None = None  # None: the model's "query" prompt, if any
    passage_prefix: str | None = None  # None: the model's "document" prompt, if any
    nprobe: int = 16
    pq_m: int | None = None  # ivfpq: one-byte codes per vector (None: the largest divisor of dim not above dim / 8)

    def check(self) -> None:
        lo, hi = self.rank_range
        if lo < 1 or hi < lo:
            raise HybridembedError(f"--range {lo} {hi}: need 1 <= FIRST <= LAST (1-based ranks, inclusive)")
        if self.num_negatives < 1:
            raise HybridembedError(f"--num-negatives {self.num_negatives}: must be at least 1")
        if self.max_ratio is not None and self.max_ratio <= 0:
            raise HybridembedError(f"--max-ratio {self.max_ratio}: must be positive")
        if self.pq_m is not None and self.pq_m < 1:
            raise HybridembedError(f"--pq-m {self.pq_m}: must be at least 1")


@dataclass
class MiningReport:
    rows: int = 0
    corpus_size: int = 0
    negatives_written: int = 0
    short_rows: int = 0  # rows that got fewer than num_negatives
    empty_rows: int = 0  # rows that got none
    positives_in_window: int = 0  # skipped: a positive (or the query itself) ranked inside the window
    dropped_by_guard: int = 0
    cache_path: str = ""
    cache_hit: bool = False
    text_store: str = ""  # the corpus's text store folder
    text_store_reused: bool = False  # it was there before this run (a corpus file's: nothing of the file was read)
    embed_seconds: float = 0.0
    search_seconds: float = 0.0  # query encoding + search + sampling
    out: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def queries_per_second(self) -> float:
        return self.rows / self.search_seconds if self.search_seconds else float("nan")


def read_corpus(path: str | Path, text_field: str = "text") -> list[str]:
    """Corpus texts in a list, deduplicated in first-seen order (small corpora; mining takes the path and keeps them on disk)."""
    texts = list(dict.fromkeys(iter_corpus_texts(path, text_field)))
    if not texts:
        raise HybridembedError(f"{path}: the corpus is empty")
    return texts


def row_texts(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The default corpus: every positive and negative of the rows, in order (the store drops repeats)."""
    for row in rows:
        yield from row["positives"]
        yield from row["negatives"] or []


def load_queries(path: str | Path, fmt: str = "auto") -> TaskDataset:
    """Read retrieval rows (query, positives, negatives) with the training readers and validation."""
    from hybridembed.data import load_dataset
    from hybridembed.recipe import DatasetConfig
    from hybridembed.tasks import TaskType

    dataset = load_dataset(DatasetConfig(path=str(path), task=TaskType.RETRIEVAL, format=fmt))
    if not dataset.rows:
        raise HybridembedError(f"{path}: no rows to mine for")
    return dataset


def _prefixes(model: SentenceTransformer, options: MiningOptions) -> tuple[str, str]:
    prompts = getattr(model, "prompts", None) or {}
    query = options.query_prefix if options.query_prefix is not None else prompts.get("query", "")
    passage = options.passage_prefix if options.passage_prefix is not None else prompts.get("document", prompts.get("passage", ""))
    return query, passage


def _encode(model: SentenceTransformer, texts: Sequence[str], prefix: str, batch_size: int) -> np.ndarray:
    if not texts:
        return np.zeros((0, model.get_embedding_dimension() or 1), dtype=np.float32)
    return model.encode(
        [prefix + t for t in texts], batch_size=batch_size, prompt="", normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    ).astype(np.float32)


def select_negatives(
    scores: np.ndarray,
    ids: np.ndarray,
    excluded: set[int],
    weakest_positive: float,
    options: MiningOptions,
    rng: np.random.Generator,
    report: MiningReport,
) -> list[tuple[int, float, int]]:
    """(corpus id, score, rank) of the negatives chosen from one query's ranking (best first)."""
    lo, hi = options.rank_range
    limit = np.inf
    if options.margin is not None:
        limit = min(limit, weakest_positive - options.margin)
    if options.max_ratio is not None:
        limit = min(limit, options.max_ratio * weakest_positive)
    window: list[tuple[int, float, int]] = []
    for position in range(lo - 1, min(hi, len(ids))):
        corpus_id = int(ids[position])
        if corpus_id < 0:
            break
        if corpus_id in excluded:
            report.positives_in_window += 1
            continue
        score = float(scores[position])
        if score >= limit:
            report.dropped_by_guard += 1
            continue
        window.append((corpus_id, score, position + 1))
    if len(window) > options.num_negatives:
        if options.sampling == "random":
            keep = rng.choice(len(window), size=options.num_negatives, replace=False)
            window = [window[i] for i in sorted(keep)]
        else:
            window = window[: options.num_negatives]
    return window


def mine_hard_negatives(
    model: SentenceTransformer,
    dataset: TaskDataset,
    out: str | Path,
    corpus: str | Path | Iterable[str] | TextStore | None = None,
    options: MiningOptions | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    fingerprint: str | None = None,
    corpus_field: str = "text",
) -> MiningReport:
    """Mine `options.num_negatives` negatives per row of `dataset` from `corpus` into `out`.

    `corpus`: a file (`.txt` lines or records with `corpus_field`), texts, or a `TextStore`; default:
    all positives and negatives of the rows. It goes to a text store under `cache_dir` first.
    """
    options = options or MiningOptions()
    options.check()
    dim = model.get_embedding_dimension()
    if options.index == "ivfpq" and options.pq_m and dim and dim % options.pq_m:  # before hours of embedding, not after
        raise HybridembedError(f"--pq-m {options.pq_m}: must divide the embedding dimension {dim}")
    rows = dataset.rows
    store = open_corpus(corpus if corpus is not None else row_texts(rows), corpus_field, cache_dir, progress)
    report = MiningReport(rows=len(rows), corpus_size=len(store), out=str(out), text_store=str(store.path), text_store_reused=store.reused)
    if options.rank_range[0] > len(store):
        report.notes.append(f"the corpus has {len(store)} texts, fewer than the first rank {options.rank_range[0]}: nothing can be mined")
    query_prefix, passage_prefix = _prefixes(model, options)

    started = time.perf_counter()
    # `fingerprint`: the model's cache key, e.g. model_fingerprint(model, its folder) (default: hash its weights)
    # a TextStore reads as a Sequence[str] (len, int and slice indexing, iteration) without being registered as one
    cached = embed_corpus(model, cast("Sequence[str]", store), passage_prefix, cache_dir, options.chunk_size, options.batch_size, progress, fingerprint)
    report.cache_path, report.cache_hit = str(cached.path), cached.hit
    vectors = cached.vectors
    searcher = Searcher(vectors, options.index, chunk_size=max(options.chunk_size, 4096), nprobe=options.nprobe, seed=options.seed, pq_m=options.pq_m)
    report.embed_seconds = time.perf_counter() - started

    started = time.perf_counter()
    k = min(options.rank_range[1], len(store))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as sink, tqdm(total=len(rows), desc="mining", unit="query", disable=not progress) as bar:
        for start in range(0, len(rows), options.query_block):
            block = rows[start : start + options.query_block]
            query_vectors = _encode(model, [r["query"] for r in block], query_prefix, options.batch_size)
            all_scores, all_ids = searcher.search(query_vectors, k)
            positive_ids, query_ids, positive_vectors = _block_positives(model, block, store, vectors, passage_prefix, options.batch_size)
            for offset, row in enumerate(block):
                index = start + offset
                positive_scores = positive_vectors[offset] @ query_vectors[offset]
                excluded = {int(i) for i in (*positive_ids[offset], query_ids[offset]) if i >= 0}
                chosen = select_negatives(
                    all_scores[offset], all_ids[offset], excluded, float(positive_scores.min()), options,
                    np.random.default_rng([options.seed, index]), report,
                )  # fmt: skip
                chosen.sort(key=lambda c: -c[1])
                negatives = store.texts(i for i, _, _ in chosen)  # the only corpus texts read back
                sink.write(json.dumps(_output_row(row, chosen, negatives, positive_scores), ensure_ascii=False) + "\n")
                report.negatives_written += len(chosen)
                report.short_rows += len(chosen) < options.num_negatives
                report.empty_rows += not chosen
            bar.update(len(block))
    report.search_seconds = time.perf_counter() - started
    if report.short_rows:
        report.notes.append(
            f"{report.short_rows} row(s) got fewer than {options.num_negatives} negatives ({report.empty_rows} none): "
            "widen --range, relax --margin/--max-ratio, or use a larger --corpus"
        )
    return report


def _block_positives(
    model: SentenceTransformer, block: Sequence[dict[str, Any]], store: TextStore, vectors: np.ndarray, prefix: str, batch_size: int
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Per row of a query block: its positives' corpus ids (-1: not in the corpus), its query's id, its positives' vectors."""
    flat = [p for row in block for p in row["positives"]]
    ids = store.lookup(flat)
    # Positives missing from the corpus still need a vector for the guard: encoded here, once per block.
    missing = list(dict.fromkeys(p for p, i in zip(flat, ids) if i < 0))
    extra = dict(zip(missing, _encode(model, missing, prefix, batch_size)))
    bounds = np.cumsum([0] + [len(row["positives"]) for row in block])
    positive_ids = [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    positive_vectors = [np.stack([vectors[i] if i >= 0 else extra[p] for p, i in zip(row["positives"], row_ids)]) for row, row_ids in zip(block, positive_ids)]
    return positive_ids, store.lookup([row["query"] for row in block]), positive_vectors


def _output_row(row: dict[str, Any], chosen: list[tuple[int, float, int]], negatives: list[str], positive_scores: np.ndarray) -> dict[str, Any]:
    return {
        "query": row["query"],
        "positives": row["positives"],
        "negatives": negatives,
        "negative_scores": [round(s, 6) for _, s, _ in chosen],
        "negative_ranks": [r for _, _, r in chosen],
        "positive_scores": [round(float(s), 6) for s in positive_scores],
    }


__all__ = ["MiningOptions", "MiningReport", "load_queries", "mine_hard_negatives", "read_corpus", "row_texts", "select_negatives"]
