"""Top-k inner-product search over cached corpus embeddings with faiss: exact (streamed from the memmap), IVF, HNSW, or IVF-PQ (compressed codes, exact re-scoring).

What each kind keeps in RAM (n vectors of `dim` float32):

* `flat`: nothing of the corpus but one memmap chunk (`chunk_size` × dim × 4 bytes): each chunk
  is scored with `faiss.knn` and the per-chunk top-k merged with `faiss.ResultHeap`;
* `ivf` (IndexIVFFlat): every vector, 4·dim + 8 (its id) bytes each, plus the nlist centroids;
* `hnsw` (IndexHNSWFlat): every vector plus its graph links, about 4·dim + 8·M bytes each;
* `ivfpq` (IndexIVFPQ, 8-bit codes): `pq_m` + 8 bytes per vector, plus the centroids and the
  codebooks. Its candidates (`refine` × k per query) are re-scored exactly from the memmap and
  re-sorted, so the scores it returns are true cosines, like the other kinds'.

The approximate indexes are trained on a sample of the memmap and filled chunk by chunk.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Literal, cast

import numpy as np

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf", "hnsw", "ivfpq"]
INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw", "ivfpq")
TRAIN_CAP = 1 << 18  # training vectors read beyond faiss's minimum of 39 per list (1 GiB at 1024 dims)
RESCORE_ROWS = 16384  # candidate vectors gathered from the memmap at a time when re-scoring


def default_pq_m(dim: int) -> int:
    """Sub-quantizers for IVF-PQ: the largest divisor of `dim` not above dim / 8 (48 one-byte codes for 384 dims, 1/32 of float32).

    Sub-vectors of 8 dimensions or more: in a one-off timing here faiss trained 4-dimensional codebooks
    far slower than 8-dimensional ones (not a benchmark of this repo; rerun before relying on it).
    """
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


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
        pq_m: int | None = None,
        refine: int = 4,
    ) -> None:
        import faiss

        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r} (expected one of {INDEX_KINDS})")
        n, dim = vectors.shape
        if kind == "ivfpq" and n < 256:  # an 8-bit codebook needs 256 training vectors
            logger.info("ivfpq: %d corpus texts are too few to train a codebook; searching exactly", n)
            kind = "flat"
        self.vectors = vectors
        self.kind = kind
        self.chunk_size = chunk_size
        self.ef_search = ef_search
        self.refine = max(1, refine)
        self.index: faiss.Index | None = None  # None: exact search
        if kind in ("ivf", "ivfpq"):
            # ~4·sqrt(n) lists, but at least 39 training points per list (faiss's minimum).
            nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
            self.quantizer = faiss.IndexFlatIP(dim)  # kept on self: the IVF index does not own it
            ivf: faiss.IndexIVF
            if kind == "ivf":
                ivf = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                self.pq_m = pq_m or default_pq_m(dim)
                if dim % self.pq_m:
                    raise ValueError(f"pq_m {self.pq_m} must divide the embedding dimension {dim}")
                ivf = faiss.IndexIVFPQ(self.quantizer, dim, nlist, self.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            size = min(n, max(39 * nlist, min(256 * nlist, TRAIN_CAP)))
            sample = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
            ivf.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
            ivf.nprobe = min(nprobe, nlist)
            self.index = ivf
        elif kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = max(40, 2 * hnsw_m)
            self.index = hnsw
        if self.index is not None:
            for start in range(0, n, chunk_size):
                self.index.add(np.ascontiguousarray(vectors[start : start + chunk_size], dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, k)
        if self.index is None:
            return self._exact(queries, k)
        if self.kind == "hnsw":
            cast("faiss.IndexHNSW", self.index).hnsw.efSearch = max(self.ef_search or 0, 2 * k, 64)  # built as IndexHNSWFlat
        if self.kind == "ivfpq":
            _, ids = self.index.search(queries, min(len(self.vectors), self.refine * k))
            return self._rescore(queries, ids, k)
        return self.index.search(queries, k)

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

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

    def _rescore(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the compressed index's candidates, read from the memmap in id order; the best k of each query, padded."""
        scores_out = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids_out = np.full((len(queries), k), -1, dtype=np.int64)
        step = max(1, RESCORE_ROWS // max(1, candidates.shape[1]))
        for start in range(0, len(queries), step):
            block = candidates[start : start + step]
            valid = block >= 0
            wanted, inverse = np.unique(block[valid], return_inverse=True)
            gathered = np.asarray(self.vectors[wanted], dtype=np.float32)  # sorted ids: sequential-ish reads
            scores = np.full(block.shape, -np.inf, dtype=np.float32)
            rows = np.nonzero(valid)[0] + start
            scores[valid] = np.einsum("ij,ij->i", gathered[inverse], queries[rows])
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            rows_out = slice(start, start + len(block))
            scores_out[rows_out, : order.shape[1]] = np.take_along_axis(scores, order, axis=1)
            ids_out[rows_out, : order.shape[1]] = np.take_along_axis(block, order, axis=1)  # -1 stays with -inf
        return scores_out, ids_out


__all__ = ["INDEX_KINDS", "IndexKind", "Searcher", "default_pq_m"]
