"""A disk cache of corpus embeddings: a float32 memmap filled chunk by chunk, keyed by (model weights, prefix, corpus content).

Memory stays bounded by one chunk of texts and embeddings; a run that is interrupted resumes at
its last completed chunk, and a re-run with the same model and corpus reads the file without
encoding anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """`$HYBRIDEMBED_CACHE/embeddings`, else `~/.cache/hybridembed/embeddings`."""
    root = os.environ.get("HYBRIDEMBED_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hybridembed")
    return Path(root) / "embeddings"


def model_fingerprint(model: SentenceTransformer, source: str | Path | None = None) -> str:
    """A digest of what decides an embedding: the module stack, the sequence limit, the tokenizer, and the weights.

    With `source` (the local folder, bundled alias or hub id the model was loaded from, as it is on
    disk now) the weights are identified by the folder's files — each file's path, size, modification
    time and target blob, and each safetensors header (names, dtypes, shapes, offsets) — without
    reading a weight: milliseconds for a 14–28 GB checkpoint. Without one (a model changed in memory,
    as during training), or when the source is not on disk, every weight's bytes are hashed.
    """
    import torch

    digest = hashlib.sha256()
    digest.update(repr([type(m).__name__ for m in model]).encode())
    digest.update(str(getattr(model, "max_seq_length", None)).encode())
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        digest.update(str(len(tokenizer)).encode() + str(getattr(tokenizer, "do_lower_case", "")).encode())
    folder = _source_folder(source)
    if folder is not None:
        digest.update(b"files")
        _hash_files(digest, folder)
        return digest.hexdigest()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _source_folder(source: str | Path | None) -> Path | None:
    """The folder holding the model's files: a local path (or the bundled copy), else the hub cache's snapshot."""
    if source is None:
        return None
    from hybridembed.modeling.model import resolve_backbone

    path = Path(resolve_backbone(str(source)))
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), local_files_only=True))  # the snapshot folder names the revision
    except Exception:  # not a hub id, or not in the local cache
        return None


def _hash_files(digest: Any, folder: Path) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        real = path.resolve()  # hub snapshots link to blobs named by their content hash
        stat = real.stat()
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}|{real.name}".encode())
        if path.suffix == ".safetensors":
            with open(real, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                digest.update(f.read(min(size, 100 * 2**20)))  # the JSON header: tensor names, dtypes, shapes, offsets


def source_fingerprint(path: Path) -> str:
    """A data file or folder identified by its files' paths, sizes and modification times (nothing is read but safetensors headers)."""
    digest = hashlib.sha256()
    if path.is_dir():
        _hash_files(digest, path)
    else:
        stat = path.stat()
        digest.update(f"{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def frame_text(digest: Any, encoded: bytes | memoryview) -> None:
    """Add one UTF-8 text to a corpus digest, length-prefixed so that no two text lists share a byte stream."""
    digest.update(len(encoded).to_bytes(8, "little"))
    digest.update(encoded)


def corpus_fingerprint(texts: Sequence[str]) -> str:
    """The digest of the texts in order; a `corpus.TextStore` carries the same digest, computed when it was written."""
    stored = getattr(texts, "fingerprint", None)
    if isinstance(stored, str):
        return stored
    digest = hashlib.sha256()
    for text in texts:
        frame_text(digest, text.encode("utf-8"))
    return digest.hexdigest()


@dataclass
class CachedEmbeddings:
    """Unit-length float32 embeddings of a corpus, read-only from the memmap."""

    vectors: np.memmap
    path: Path
    reused_rows: int  # rows found already encoded on disk (== len(vectors) for a full cache hit)

    @property
    def hit(self) -> bool:
        return self.reused_rows == len(self.vectors)


def _write_meta(path: Path, meta: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)


def embed_corpus(
    model: SentenceTransformer,
    texts: Sequence[str],
    prefix: str = "",
    cache_dir: str | Path | None = None,
    chunk_size: int = 8192,
    batch_size: int = 64,
    progress: bool = True,
    fingerprint: str | None = None,
) -> CachedEmbeddings:
    """Encode `texts` (each with `prefix`) into the cache, reusing whatever an earlier run already wrote."""
    if not texts:
        raise ValueError("embed_corpus: no texts")
    fingerprint = fingerprint or model_fingerprint(model)
    key = hashlib.sha256(f"{FORMAT_VERSION}|{fingerprint}|{prefix}|{corpus_fingerprint(texts)}".encode()).hexdigest()[:24]
    folder = Path(cache_dir or default_cache_dir()) / key
    folder.mkdir(parents=True, exist_ok=True)
    meta_path, data_path = folder / "meta.json", folder / "embeddings.f32"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    n = len(texts)
    if meta is None or meta.get("rows") != n or not data_path.exists():
        dim = model.get_embedding_dimension() or int(model.encode(["x"]).shape[1])
        meta = {"version": FORMAT_VERSION, "rows": n, "dim": int(dim), "done": 0, "prefix": prefix}
        np.memmap(data_path, dtype=np.float32, mode="w+", shape=(n, meta["dim"])).flush()
        _write_meta(meta_path, meta)
    dim, done = int(meta["dim"]), int(meta["done"])
    reused = done
    if done < n:
        if done:
            logger.info("embedding cache %s: resuming at row %d of %d", folder, done, n)
        vectors = np.memmap(data_path, dtype=np.float32, mode="r+", shape=(n, dim))
        with tqdm(total=n, initial=done, desc="embedding corpus", unit="text", disable=not progress) as bar:
            for start in range(done, n, chunk_size):
                end = min(n, start + chunk_size)
                step = batch_size * 8  # the bar moves within a chunk; the chunk is the unit of resumption
                for block in range(start, end, step):
                    texts_block = [prefix + t for t in texts[block : min(end, block + step)]]
                    vectors[block : block + len(texts_block)] = model.encode(
                        texts_block, batch_size=batch_size, prompt="", normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
                    ).astype(np.float32)
                    bar.update(len(texts_block))
                vectors.flush()
                meta["done"] = end
                _write_meta(meta_path, meta)
        del vectors
    else:
        logger.info("embedding cache hit: %s (%d x %d)", folder, n, dim)
    return CachedEmbeddings(np.memmap(data_path, dtype=np.float32, mode="r", shape=(n, dim)), folder, reused)


__all__ = ["CachedEmbeddings", "corpus_fingerprint", "default_cache_dir", "embed_corpus", "frame_text", "model_fingerprint", "source_fingerprint"]
