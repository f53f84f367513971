"""Raw text for an `mlm` stage, in memory or streamed: the texts of a record, and `texts: [{streaming: true}]` shards striped over ranks and dataloader workers, tokenized and masked in the workers, resumable from a saved cursor.

The streamed reader shares `data.streaming`'s striping, shard order and cursors (see its docstring:
record *c* of a pass belongs to reader slot *c mod ranks × workers*, shards reshuffled each pass).
What it adds for masked-LM pre-training on corpora larger than memory:

* `.txt` shards (one text per line, blank lines skipped) beside `.jsonl`/`.parquet` records whose
  text fields are read as the in-memory mlm reader reads them;
* the texts of a record that does not fit the open batch wait in the cursor, so a resumed run
  continues mid-record and no text is trained twice or skipped;
* masks drawn from a generator seeded by (seed, rank, batch), so a resumed run masks the same
  tokens as an uninterrupted one (the collator is transformers' DataCollatorForLanguageModeling).

Unlike the in-memory stage, a streamed corpus is not de-duplicated (that needs every text at once).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from hybridembed.data.formats import canonical_fields, detect_format
from hybridembed.data.readers import read_records, text_problem
from hybridembed.data.streaming import SHARD_SUFFIXES, TRACE_ENV, Cursor, line_records, reader_role, record_reader, shard_files, slot_records
from hybridembed.errors import DataError
from hybridembed.recipe import DataFormat, TextsConfig

TEXT_FIELDS = ("query", "positive", "positives", "negative", "negatives", "text1", "text2", "text")
TEXT_SHARD_SUFFIXES = {".txt": "text", **SHARD_SUFFIXES}


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v.strip()]
    return []


def record_texts(fields: dict[str | int, Any], config: TextsConfig, fmt: DataFormat | None) -> tuple[list[str], str | None]:
    """The texts of one record of a `texts:` entry (its `text_fields`, else every text field of format `fmt`), or why it has none."""
    if config.text_fields:
        found = [t for key in config.text_fields for t in _strings(fields.get(key))]
    else:
        canonical = canonical_fields(fields, fmt, None) if fmt is not None else dict(fields)  # fmt is set without text_fields (text_format)
        found = [t for key in TEXT_FIELDS for t in _strings(canonical.get(key))]
    if not found:
        return [], "text_fields: no text in this record"
    bad = next((problem for text in found if (problem := text_problem(text))), None)
    return ([], f"text_fields: {bad}") if bad else (found, None)


def text_format(path: Path | str, line: int, fields: dict[str | int, Any], config: TextsConfig) -> DataFormat | None:
    """The format whose text fields a record's texts are in (None with `text_fields:`); a record of no known format is an error."""
    if config.text_fields:
        return None
    fmt = detect_format(fields, has_columns=False)
    if fmt is None and isinstance(fields.get("text"), str):
        fmt = DataFormat.HYBRIDEMBED  # {"text": …} (plus metadata): the usual pre-training record; its `text` is the text
    if fmt is None:
        raise DataError([f"{path}:{line}: text_fields: cannot tell which fields hold text; set `text_fields:`"])
    return fmt


def _text_line(path: str, number: int, text: str) -> str:
    return text.strip()


def _text_reader(path: str):
    return partial(line_records, parse=_text_line) if path.lower().endswith(".txt") else record_reader(path)


@dataclass
class TextSources:
    """The shards of a streamed mlm stage, checked up front; each shard's `texts:` entry and record format."""

    files: list[str]
    configs: list[TextsConfig]  # by shard
    formats: list[DataFormat | None]  # by shard (None: .txt or text_fields)

    def texts(self, shard: int, path: str, line: int, record: Any) -> list[str]:
        if isinstance(record, str):
            return [record]
        texts, problem = record_texts(record, self.configs[shard], self.formats[shard])
        if problem:
            raise DataError([f"{path}:{line}: {problem}"], summary=f"{path}: invalid record in a streamed mlm corpus; training stopped")
        return texts


def open_text_sources(configs: list[TextsConfig]) -> TextSources:
    """Check every shard file of a streamed mlm stage and the first record of each entry's first shard of records; later records are checked as they arrive."""
    files, by_shard, formats, problems = [], [], [], []
    for config in configs:
        shards = [str(p) for p in shard_files(config.path, TEXT_SHARD_SUFFIXES)]
        fmt = None
        first_of_records = next((p for p in shards if not p.lower().endswith(".txt")), None)
        if first_of_records is not None:
            first = next(read_records(first_of_records, header=config.header), None)
            if first is None:
                raise DataError([f"{first_of_records}: no records"])
            fmt = text_format(first_of_records, first.line, first.fields, config)
            _, problem = record_texts(first.fields, config, fmt)
            if problem:
                problems.append(f"{first_of_records}:{first.line}: {problem}")
        for shard in shards:
            if shard in files:
                problems.append(f"{shard}: listed twice in this stage's texts:")
            files.append(shard)
            by_shard.append(config)
            formats.append(None if shard.lower().endswith(".txt") else fmt)
    if problems:
        raise DataError(problems)
    return TextSources(files, by_shard, formats)


def count_streamed_texts(config: TextsConfig) -> int:
    """`data check` of one streamed `texts:` entry: every record of every shard, as training reads them (stops at the first bad one)."""
    sources = open_text_sources([config])
    count = 0
    for shard, path in enumerate(sources.files):
        cursor = Cursor()
        count += sum(len(sources.texts(shard, path, line, record)) for line, record in _text_reader(path)(path, cursor, 0, 1))
    if not count:
        raise DataError([f"{config.path}: no texts"])
    return count


class StreamedTexts(IterableDataset):
    """Masked-LM batches of a streamed corpus for one rank; each dataloader worker reads its own stripe and tokenizes and masks its own batches."""

    def __init__(
        self, sources: TextSources, tokenizer: Any, collator: Any, max_length: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.sources = sources
        self.tokenizer = tokenizer
        self.collator = collator  # transformers' DataCollatorForLanguageModeling: pads, masks, sets labels
        self.max_length = max_length
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.resume: dict[str, Any] = {}  # worker id → the state of its last trained batch
        self._shard_of = {path: i for i, path in enumerate(sources.files)}

    def _records(self, cursor: Cursor, slot: int, slots: int) -> Iterator[list[str]]:
        for path, line, record in slot_records(self.sources.files, "mlm texts", cursor, slot, slots, self.seed, 0, reader=_text_reader):
            yield self.sources.texts(self._shard_of[path], path, line, record)

    def _batch(self, cursor: Cursor, records: Iterator[list[str]]) -> list[str]:
        batch = [item["text"] for item in cursor.waiting[: self.batch_size]]
        cursor.waiting = cursor.waiting[self.batch_size :]
        while len(batch) < self.batch_size:
            texts = next(records)
            room = self.batch_size - len(batch)
            batch.extend(texts[:room])
            cursor.waiting = [{"text": t} for t in texts[room:]]  # the rest of the record opens the next batch
        return batch

    def _masked(self, texts: list[str], batch_index: int) -> dict[str, Any]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, return_special_tokens_mask=True)
        features = [{key: encoded[key][i] for key in encoded} for i in range(len(texts))]
        seed = int(np.random.SeedSequence([self.seed, self.rank, batch_index]).generate_state(1)[0])
        self.collator.generator = self.collator.get_generator(seed)  # the masks of a batch: a pure function of (seed, rank, batch)
        return self.collator(features)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        worker, state = reader_role(self.resume, info.id if info is not None else 0, workers)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        cursor = Cursor(**state["cursor"]) if state else Cursor()
        records = self._records(cursor, slot, slots)
        batch_index = state["batch"] if state else worker
        trace = bool(os.environ.get(TRACE_ENV))  # only then do batches carry their texts
        try:
            while True:
                texts = self._batch(cursor, records)
                batch = self._masked(texts, batch_index)
                batch["stream_state"] = {"worker": worker, "batch": batch_index + workers, "cursor": asdict(cursor)}
                if trace:
                    batch["stream_rows"] = texts
                yield batch
                batch_index += workers
        except DataError as err:
            # A batch of the usual keys (labels all ignored) keeps the trainer's per-step bookkeeping, and its
            # collectives, the same on every rank; the trainer raises the error before the forward pass.
            batch = self._masked(["."], batch_index)
            batch["labels"].fill_(-100)
            yield {**batch, "stream_error": err.problems, "stream_error_summary": str(err).splitlines()[0]}


__all__ = ["StreamedTexts", "TextSources", "count_streamed_texts", "open_text_sources", "record_texts", "text_format"]
