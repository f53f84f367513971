"""The mining corpus on disk: its unique texts in a UTF-8 blob with offsets and sorted 8-byte hashes, looked up and fetched by id without holding them in RAM.

A store is built by streaming the corpus once (`iter_corpus_texts` for a file, any iterable of
strings otherwise). Every non-blank text is appended to a raw blob and its 8-byte BLAKE2b hash to
a raw hash file; duplicates are then found by sorting the hashes (about 17 bytes of RAM per raw
text at that moment, never the texts), and the first occurrence of each text is copied, in
first-seen order, into ``texts.bin``. The folder beside the embedding cache
(``<cache>/texts/<key>/``) holds:

* ``texts.bin`` and ``offsets.i64`` (n + 1 offsets): text ``i`` is ``texts.bin[offsets[i]:offsets[i+1]]``,
  read with ``os.pread``;
* ``hashes.u64`` (sorted) and ``hash_ids.i64`` (the id of each): a text's id is found with
  ``np.searchsorted``, then confirmed by comparing its bytes with the stored ones, so a hash
  collision can never make a different text look present;
* ``meta.json``: the count and the content fingerprint the embedding cache is keyed by (the
  same digest `cache.corpus_fingerprint` computes for a list of the same texts).

The arrays are memory-mapped: a lookup touches about log2(n) pages of the hash file, a fetch reads
one range of the blob. A file's store is keyed by its path, size and modification time (as the
model's files key the embedding cache), so a second run reads nothing of the file; a store built
from texts already in memory is keyed by their content.

Collisions: two distinct texts share a 64-bit hash with probability about n²/2⁶⁵ (3·10⁻⁸ for a
million texts, 3·10⁻⁴ for 100 million). The only effect is that the later of the two is dropped
from the corpus as a "duplicate" (so it is never a candidate); lookups stay exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hybridembed.errors import HybridembedError
from hybridembed.mining.cache import default_cache_dir, frame_text, source_fingerprint

STORE_VERSION = 1
BATCH = 8192  # texts hashed, copied or decoded per step: bounds the transient Python objects
STORE_FILES = ("texts.bin", "offsets.i64", "hashes.u64", "hash_ids.i64")


def text_hash(encoded: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(encoded, digest_size=8).digest(), "little")


def iter_corpus_texts(path: str | Path, text_field: str = "text") -> Iterator[str]:
    """A corpus file's texts in file order: `.txt` one per non-blank line, else `text_field` of each record.

    Streamed by the shared reader (`data.readers.iter_texts`): its `file:line: field: problem`
    errors, UTF-8 checks and BOM handling, one record at a time.
    """
    from hybridembed.data.readers import iter_texts

    for record in iter_texts(path, text_field):
        yield record.text


class TextStore:
    """The unique texts of a corpus, by id (0-based, first-seen order), read from their folder on demand."""

    def __init__(self, folder: Path, reused: bool = False) -> None:
        self.path = Path(folder)
        self.reused = reused  # the folder was there before this run
        meta = json.loads((self.path / "meta.json").read_text())
        self.fingerprint: str = meta["fingerprint"]
        self._n = int(meta["rows"])
        self.offsets = np.memmap(self.path / "offsets.i64", dtype=np.int64, mode="r")
        self.hashes = np.memmap(self.path / "hashes.u64", dtype=np.uint64, mode="r")
        self.hash_ids = np.memmap(self.path / "hash_ids.i64", dtype=np.int64, mode="r")
        # Texts are read with pread, not mapped: a pass over the whole corpus (embedding it) then
        # leaves the texts in the page cache only, not in this process's resident set.
        self._fd = os.open(self.path / "texts.bin", os.O_RDONLY)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            del self._fd  # closed: getattr above sees None from now on

    def _read(self, start: int, end: int) -> bytes:
        data = os.pread(self._fd, end - start, start)
        if len(data) != end - start:
            raise HybridembedError(f"{self.path / 'texts.bin'}: truncated (expected {end} bytes); delete the folder to rebuild it")
        return data

    def __len__(self) -> int:
        return self._n

    def _bytes(self, i: int) -> bytes:
        return self._read(int(self.offsets[i]), int(self.offsets[i + 1]))

    def __getitem__(self, item: int | slice) -> str | list[str]:
        if isinstance(item, slice):
            start, stop, step = item.indices(self._n)
            if step != 1:
                return self.texts(range(start, stop, step))
            if stop <= start:
                return []
            bounds = np.asarray(self.offsets[start : stop + 1]) - int(self.offsets[start])
            data = self._read(int(self.offsets[start]), int(self.offsets[stop]))  # one read for the whole range
            return [data[a:b].decode("utf-8") for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
        index = int(item) + (self._n if item < 0 else 0)
        if not 0 <= index < self._n:
            raise IndexError(item)
        return self._bytes(index).decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        for start in range(0, self._n, BATCH):
            yield from self[start : start + BATCH]

    def texts(self, ids: Iterable[int]) -> list[str]:
        return [self._bytes(int(i)).decode("utf-8") for i in ids]

    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """The id of each text (int64), -1 for a text not in the corpus."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        encoded = [t.encode("utf-8") for t in texts]
        wanted = np.fromiter((text_hash(e) for e in encoded), dtype=np.uint64, count=len(encoded))
        slots = np.minimum(np.searchsorted(self.hashes, wanted), self._n - 1)
        found = np.asarray(self.hashes[slots]) == wanted
        ids = np.where(found, np.asarray(self.hash_ids[slots]), -1)
        for j in np.flatnonzero(found):  # a shared hash is not a shared text
            if self._bytes(ids[j]) != encoded[j]:
                ids[j] = -1
        return ids


def store_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "texts"


def open_corpus(
    source: str | Path | Iterable[str] | TextStore,
    text_field: str = "text",
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> TextStore:
    """The store of a corpus file (built on first use, then reused while the file is unchanged) or of an iterable of texts."""
    if isinstance(source, TextStore):
        return source
    root = store_root(cache_dir)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise HybridembedError(f"{path}: corpus not found")
        key = hashlib.sha256(f"{STORE_VERSION}|{path.resolve()}|{text_field}|{source_fingerprint(path)}".encode()).hexdigest()[:24]
        if (root / f"f{key}" / "meta.json").exists():
            return TextStore(root / f"f{key}", reused=True)
        return build_store(iter_corpus_texts(path, text_field), root, f"f{key}", f"{path}: the corpus is empty", progress)
    return build_store(source, root, None, "the corpus is empty", progress)


def build_store(texts: Iterable[str], root: Path, key: str | None, empty_message: str, progress: bool = False) -> TextStore:
    """Write the unique texts of `texts` to `root/key` (key None: named by their content); reuse an equal store already there."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".building-{uuid.uuid4().hex}"  # renamed into place when complete: a killed run leaves no half store
    tmp.mkdir()
    try:
        raw_rows = _write_raw(texts, tmp, progress)
        if not raw_rows:
            raise HybridembedError(empty_message)
        meta = _deduplicate(tmp, raw_rows)
        key = key or f"c{meta['fingerprint'][:24]}"
        final = root / key
        if not (final / "meta.json").exists():
            try:
                os.rename(tmp, final)
                return TextStore(final)
            except OSError:  # another process put the same store in place first
                if not (final / "meta.json").exists():
                    raise
        return TextStore(final, reused=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_raw(texts: Iterable[str], folder: Path, progress: bool) -> int:
    """Append every text to raw.bin, where it ends to raw_ends.i64 and its hash to raw_hashes.u64; return the count."""
    count, filled, size = 0, 0, 0
    ends, hashes = np.empty(BATCH, dtype=np.int64), np.empty(BATCH, dtype=np.uint64)  # reused: no per-text list grows
    with (
        open(folder / "raw.bin", "wb", buffering=1 << 20) as blob,
        open(folder / "raw_ends.i64", "wb") as ends_file,
        open(folder / "raw_hashes.u64", "wb") as hashes_file,
        tqdm(desc="reading corpus", unit="text", disable=not progress) as bar,
    ):
        for text in texts:
            encoded = text.encode("utf-8")
            blob.write(encoded)
            size += len(encoded)
            ends[filled], hashes[filled] = size, text_hash(encoded)
            filled += 1
            if filled == BATCH:
                ends.tofile(ends_file)
                hashes.tofile(hashes_file)
                count, filled = count + filled, 0
                bar.update(BATCH)
        ends[:filled].tofile(ends_file)
        hashes[:filled].tofile(hashes_file)
        bar.update(filled)
    return count + filled


def _deduplicate(folder: Path, raw_rows: int) -> dict:
    """Keep the first occurrence of each hash, in first-seen order: write the store's files and meta.json; drop the raw ones.

    The raw arrays are read through memmaps and the outputs written in batches, so the heap holds
    about 17 bytes per raw text at the peak (the sort order, the sorted hashes, a mask), never a text.
    """
    raw_hashes = np.memmap(folder / "raw_hashes.u64", dtype=np.uint64, mode="r")
    order = np.argsort(raw_hashes, kind="stable")  # among equal hashes, the earliest occurrence comes first
    sorted_hashes = raw_hashes[order]
    del raw_hashes
    first = np.ones(raw_rows, dtype=bool)
    np.not_equal(sorted_hashes[1:], sorted_hashes[:-1], out=first[1:])
    with open(folder / "hashes.u64", "wb") as out:
        for at in range(0, raw_rows, BATCH):
            sorted_hashes[at : at + BATCH][first[at : at + BATCH]].tofile(out)
    del sorted_hashes
    first_raw = order[first]  # raw index of each distinct hash, in hash order
    del order, first
    keep = np.sort(first_raw)  # the raw index of corpus id i is keep[i]
    with open(folder / "hash_ids.i64", "wb") as out:
        for at in range(0, len(first_raw), BATCH):
            np.searchsorted(keep, first_raw[at : at + BATCH]).astype(np.int64).tofile(out)
    del first_raw
    fingerprint, size = _copy_kept(folder, keep)
    for name in ("raw.bin", "raw_ends.i64", "raw_hashes.u64"):
        (folder / name).unlink()
    meta = {"version": STORE_VERSION, "rows": len(keep), "raw_rows": raw_rows, "bytes": size, "fingerprint": fingerprint}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _copy_kept(folder: Path, keep: np.ndarray) -> tuple[str, int]:
    """Copy the raw texts `keep` to texts.bin and their offsets to offsets.i64, in id order; return their `corpus_fingerprint` and size."""
    digest = hashlib.sha256()
    raw_ends = np.memmap(folder / "raw_ends.i64", dtype=np.int64, mode="r")
    size = 0
    # Buffered reads, not a memmap: `keep` is increasing, so the reads run forward through raw.bin
    # and its pages are not mapped into (and counted in) this process.
    with (
        open(folder / "raw.bin", "rb", buffering=1 << 20) as raw,
        open(folder / "texts.bin", "wb", buffering=1 << 20) as out,
        open(folder / "offsets.i64", "wb") as offsets,
    ):
        np.zeros(1, dtype=np.int64).tofile(offsets)
        for at in range(0, len(keep), BATCH):
            ids = keep[at : at + BATCH]
            ends = np.asarray(raw_ends[ids])
            starts = np.where(ids > 0, np.asarray(raw_ends[np.maximum(ids - 1, 0)]), 0)
            (size + np.cumsum(ends - starts)).astype(np.int64).tofile(offsets)
            for start, end in zip(starts.tolist(), ends.tolist()):
                raw.seek(start)
                piece = raw.read(end - start)
                frame_text(digest, piece)
                out.write(piece)
                size += end - start
    return digest.hexdigest(), size


__all__ = ["TextStore", "build_store", "iter_corpus_texts", "open_corpus", "store_root", "text_hash"]
