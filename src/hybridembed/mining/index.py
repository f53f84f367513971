"""Top-k inner-product search over cached corpus embeddings with faiss: exact (streamed from the memmap) or IVF / HNSW.

The exact searcher never holds the corpus in memory: it scores each memmap chunk with
`faiss.knn` and merges the per-chunk top-k with `faiss.ResultHeap`. The approximate indexes
(`ivf`: IndexIVFFlat trained on a sample; `hnsw`: IndexHNSWFlat) are filled chunk by chunk but
keep every vector in RAM, as faiss indexes do.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

IndexKind = Literal["flat", "ivf", "hnsw"]
INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")


class Searcher:
    """`search(queries, k)` → (scores, ids), each (n_queries, k), best first; ids are -1 where the corpus ran out."""

    def __init__(
        self,
        vectors: np.ndarray,
        kind: IndexKind = "flat",
        chunk_size: int = 16384,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int | None = None,
        seed: int = 0,
    ) -> None:
        import faiss

        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r} (expected one of {INDEX_KINDS})")
        self.vectors = vectors
        self.kind = kind
        self.chunk_size = chunk_size
        self.ef_search = ef_search
        n, dim = vectors.shape
        self.index = None
        if kind == "ivf":
            # ~4·sqrt(n) lists, but at least 39 training points per list (faiss's minimum).
            nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
            quantizer = faiss.IndexFlatIP(dim)
            self.index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 256 * nlist), replace=False))
            self.index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
            self.index.nprobe = min(nprobe, nlist)
            self.quantizer = quantizer  # the IVF index does not own it
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = max(40, 2 * hnsw_m)
        if self.index is not None:
            for start in range(0, n, chunk_size):
                self.index.add(np.ascontiguousarray(vectors[start : start + chunk_size], dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, k)
        if self.index is not None:
            if self.kind == "hnsw":
                self.index.hnsw.efSearch = max(self.ef_search or 0, 2 * k, 64)
            return self.index.search(queries, k)
        heap = faiss.ResultHeap(len(queries), k, keep_max=True)
        for start in range(0, len(self.vectors), self.chunk_size):
            chunk = np.ascontiguousarray(self.vectors[start : start + self.chunk_size], dtype=np.float32)
            scores, ids = faiss.knn(queries, chunk, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
            if scores.shape[1] < k:  # a chunk smaller than k: pad so every block has k columns
                pad = k - scores.shape[1]
                scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
                ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.where(ids >= 0, ids + start, -1).astype(np.int64))
        heap.finalize()
        return heap.D, heap.I


__all__ = ["INDEX_KINDS", "IndexKind", "Searcher"]
