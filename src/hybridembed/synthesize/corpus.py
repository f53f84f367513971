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
    """Every passage, validated: `text` must be non-empty text, an id text or integer, a title text; ids must be unique."""
    from hybridembed.data.readers import read_records

    source = corpus_file(path)
    passages: list[Passage] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for record in read_records(source):
        if limit is not None and len(passages) >= limit:
            break
        fields = record.fields
        where = f"{source}:{record.line}"
        text = fields.get("text")
        if not isinstance(text, str) or not text.strip():
            problem = "missing field" if text is None else ("empty or whitespace-only text" if isinstance(text, str) else f"expected text, got {type(text).__name__}")
            problems.append(f"{where}: text: {problem}")
            continue
        raw_id = next((fields[k] for k in ID_FIELDS if fields.get(k) not in (None, "")), None)
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
            problems.append(f"{where}: id: expected text or an integer, got {type(raw_id).__name__}")
            continue
        passage_id = str(raw_id) if raw_id is not None else content_id(text)
        if passage_id in seen:
            if raw_id is None:
                continue  # the same text twice without ids: one passage
            problems.append(f"{where}: id: duplicate id {passage_id!r} (first on line {seen[passage_id]})")
            continue
        title = fields.get("title")
        if title is not None and not isinstance(title, str):
            problems.append(f"{where}: title: expected text, got {type(title).__name__}")
            continue
        seen[passage_id] = record.line
        passages.append(Passage(passage_id, text, title or None, len(passages)))
    if problems:
        raise DataError(problems[:200], summary=f"{source}: {len(problems)} invalid passage(s); nothing was generated")
    if not passages:
        raise DataError([f"{source}: no passages"])
    return passages
