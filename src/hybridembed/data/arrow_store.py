"""The on-disk store of validated canonical rows: one memory-mapped Arrow file per (source content, reader settings), written once and reused by every run and rank.

`datasets` caches what *it* reads (`load_dataset`, `map`) by fingerprints of the processing
functions; what it lacks for us is a cache of *our* validation pass: a file that passed
`file:line` validation is written as canonical rows (the columns of its task's row shape) to
``<cache>/<key>/rows.arrow`` in the Arrow streaming format `datasets` reads with
`Dataset.from_file` (memory-mapped, nothing loaded), with the dataset's facts beside it
(``meta.json``: task, format, label pool, rows skipped by rule). The key hashes the source's
bytes, the reader settings and the row schema version, so an edited file, a different `columns:`
mapping or a new hybridembed row layout is validated again, and anything else is not. One
process builds an entry while the others wait on a file lock (ranks of one run share the cache);
an entry appears atomically (written to a temporary folder, then renamed), so a run killed while
writing leaves no half entry behind.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hybridembed.data.rows import arrow_schema
from hybridembed.tasks import RowShape

ROWS_FILE = "rows.arrow"
META_FILE = "meta.json"
ROW_SCHEMA_VERSION = 1  # bump when the canonical columns change: old entries are then rebuilt
WRITE_BATCH_ROWS = 8192  # rows buffered before an Arrow record batch is written (bounded memory)
CACHE_ENV = "HYBRIDEMBED_DATA_CACHE"


def cache_root() -> Path:
    """`$HYBRIDEMBED_DATA_CACHE`, else a `hybridembed` folder in the `datasets` cache (`$HF_DATASETS_CACHE`)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "hybridembed"


def content_hash(path: Path, chunk_bytes: int = 1 << 23) -> str:
    """blake2b of a file's bytes, or of a folder's relative file names and bytes (save_to_disk folders)."""
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode("utf-8", "surrogatepass") + b"\x00")
        with open(file, "rb") as f:
            while block := f.read(chunk_bytes):
                digest.update(block)
    return digest.hexdigest()


def entry_key(source_id: str, settings: dict[str, Any]) -> str:
    """The cache key of one source read with `settings` (JSON-serialisable reader settings)."""
    text = json.dumps({"source": source_id, "settings": settings, "schema": ROW_SCHEMA_VERSION}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def open_entry(folder: Path) -> tuple[Any, dict[str, Any]] | None:
    """(memory-mapped `datasets.Dataset`, meta) of a complete entry, or None."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("schema") != ROW_SCHEMA_VERSION or not (folder / ROWS_FILE).is_file():
        return None
    return _mapped_dataset(folder / ROWS_FILE), meta


_MAPPINGS: list[mmap.mmap] = []  # the stores this process has open (release_mapped_pages)


def _mapped_dataset(path: Path):
    """A `datasets.Dataset` over the memory-mapped file, mapped by us so its pages can be released.

    `Dataset.from_file` maps the file itself; the mapping's pages then stay in this process's RSS
    once touched, and random row access touches many pages per row (the kernel maps pages around
    each fault, and a row reads several Arrow buffers): docs/data.md has the measured growth.
    `datasets.table.MemoryMappedTable` (datasets' own wrapper, used only here) keeps the path, so
    pickling to dataloader workers re-maps the file there.
    """
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import MemoryMappedTable

    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    table = pa.ipc.open_stream(pa.py_buffer(mapping)).read_all()  # zero-copy: buffers point into the mapping
    _MAPPINGS.append(mapping)
    return Dataset(MemoryMappedTable(table, str(path)))


def release_mapped_pages() -> None:
    """Drop the touched pages of every open store from this process's RSS (they stay in the page cache; the next access maps them again)."""
    for mapping in _MAPPINGS:
        if hasattr(mmap, "MADV_DONTNEED"):  # Linux/macOS; elsewhere the pages simply stay mapped
            mapping.madvise(mmap.MADV_DONTNEED)


@contextmanager
def entry_lock(key: str) -> Iterator[Path]:
    """Hold the lock of entry `key` (one builder at a time, across processes); yields the entry's folder."""
    from filelock import FileLock

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        yield root / key


class RowWriter:
    """Append canonical rows in record batches to a temporary entry; `commit(meta)` publishes it atomically."""

    def __init__(self, folder: Path, shape: RowShape) -> None:
        import pyarrow as pa

        self.folder = folder
        self.staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.tmp"
        self.staging.mkdir(parents=True)
        self.schema = arrow_schema(shape)
        self.columns = self.schema.names
        self._sink = pa.OSFile(str(self.staging / ROWS_FILE), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._buffer: dict[str, list[Any]] = {name: [] for name in self.columns}
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        buffer = self._buffer
        buffer["row_id"].append(self.rows)
        for name in self.columns[1:]:
            buffer[name].append(row[name])
        self.rows += 1
        if len(buffer["row_id"]) >= WRITE_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._buffer["row_id"]:
            self._writer.write_batch(pa.record_batch([self._buffer[n] for n in self.columns], schema=self.schema))
            self._buffer = {name: [] for name in self.columns}

    def commit(self, meta: dict[str, Any]) -> None:
        self._flush()
        self._writer.close()
        self._sink.close()
        (self.staging / META_FILE).write_text(json.dumps({**meta, "schema": ROW_SCHEMA_VERSION, "rows": self.rows}), encoding="utf-8")
        if self.folder.exists():  # a stale or incompatible entry under the same key
            shutil.rmtree(self.folder)
        os.replace(self.staging, self.folder)

    def abort(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        except Exception:  # noqa: BLE001 - cleanup after the real error, which is re-raised by the caller
            pass
        shutil.rmtree(self.staging, ignore_errors=True)


__all__ = ["CACHE_ENV", "RowWriter", "cache_root", "content_hash", "entry_key", "entry_lock", "open_entry", "release_mapped_pages"]
