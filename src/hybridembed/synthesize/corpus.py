"""Read the passages to synthesize queries for (jsonl records or a BEIR folder) with a stable id each, and report bad lines as `file:line: field: problem`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from hybridembed.errors import DataError

ID_FIELDS = ("_id", "id", "passage_id", "docid")


@dataclass(frozen=True)
class Passage:
    id: str  # the record's id, or "sha1:<hex>" of its text when it has none (resume keys on this)
    text: str
    title: str | None = None
    position: int = 0  # 0-based order in the corpus: the prompt rotation follows it


def content_id(text: str) -> str:
    return "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()


def corpus_file(path: str | Path) -> Path:
    """The passages file: the path itself, or `corpus.jsonl` of a BEIR folder (its queries and qrels are never read)."""
    path = Path(path)
    if path.is_dir():
        for name in ("corpus.jsonl", "corpus.json"):
            if (path / name).is_file():
                return path / name
        raise DataError([f"{path}: folder without corpus.jsonl (expected a BEIR folder or a jsonl of passages)"])
    return path


def read_passages(path: str | Path, limit: int | None = None) -> list[Passage]:
    """Every passage, validated by the shared reader: `text` must be non-empty text, an id text or integer, a title text; ids must be unique."""
    from hybridembed.data.readers import iter_texts, text_problem

    source = corpus_file(path)
    passages: list[Passage] = []
    seen: dict[str, int] = {}
    stream = iter_texts(source, "text")
    for item in stream:
        if limit is not None and len(passages) >= limit:
            break
        fields = item.fields
        where = f"{source}:{item.line}"
        raw_id = next((fields[k] for k in ID_FIELDS if fields.get(k) not in (None, "")), None)
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
            stream.add_problem(f"{where}: id: expected text or an integer, got {type(raw_id).__name__}")
            continue
        passage_id = str(raw_id) if raw_id is not None else content_id(item.text)
        if passage_id in seen:
            if raw_id is None:
                continue  # the same text twice without ids: one passage
            stream.add_problem(f"{where}: id: duplicate id {passage_id!r} (first on line {seen[passage_id]})")
            continue
        title = fields.get("title")
        problem = None if title is None else text_problem(title, allow_blank=True)
        if problem is not None:
            stream.add_problem(f"{where}: title: {problem}")
            continue
        seen[passage_id] = item.line
        passages.append(Passage(passage_id, item.text, title or None, len(passages)))
    stream.check()  # also after stopping at `limit`
    return passages
